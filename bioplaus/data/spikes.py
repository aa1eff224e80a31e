"""Spike-train datasets: samples that already are spike trains, x [N, T, ...] sample-major (spiking models
read them with model.encoding=given, model.T = T; `Dataset.spike_train` is True).

- `spike_timing(...)`: a generated task whose label is carried by spike *timing* only: every channel fires
  exactly once per sample, at a class-specific time (jittered), so spike counts are the same for every class
  and a model of rates alone is at chance. x [N, T, F].
- `cue_accumulation(...)`: evidence accumulation over a delay (Bellec et al. 2020, Fig. 3): left/right cues,
  a silent delay, then a recall cue; the label is the side that gave more cues. Read in a decision window after
  the delay (model.readout_steps), it needs a memory longer than the delay. x [N, T, 4 * channels].
"""
from __future__ import annotations

import torch
from torch import Tensor

from bioplaus.data.base import Dataset
from bioplaus.errors import ConfigError


def spike_timing(n_train: int = 2000, n_test: int = 500, T: int = 10, channels: int = 16, n_classes: int = 10,
                 jitter: int = 2, seed: int = 0) -> Dataset:
    """Spike-timing task: class c has a template t_c [channels] of firing steps drawn uniformly from 0..T-1;
    a sample of class c fires channel i once, at clip(t_c[i] + u, 0, T-1) with u uniform in -jitter..jitter.
    x [N, T, channels] float32 in {0, 1} with x.sum(1) == 1 everywhere (counts carry no label), y [N] in
    0..n_classes-1 (balanced). Seeded: the same arguments give the same data."""
    if T < 2 or channels < 1 or n_classes < 2 or jitter < 0 or n_train < 1 or n_test < 1:
        raise ConfigError(f"spike_timing needs T >= 2, channels >= 1, n_classes >= 2, jitter >= 0 and n_train, "
                          f"n_test >= 1; got T={T}, channels={channels}, n_classes={n_classes}, jitter={jitter}, "
                          f"n_train={n_train}, n_test={n_test}")
    gen = torch.Generator().manual_seed(int(seed))
    templates = torch.randint(0, T, (n_classes, channels), generator=gen)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % n_classes
        y = y[torch.randperm(n, generator=gen)]
        shift = torch.randint(-jitter, jitter + 1, (n, channels), generator=gen)
        t = (templates[y] + shift).clamp(0, T - 1)                          # [n, channels] firing steps
        x = torch.zeros(n, T, channels)
        x.scatter_(1, t.unsqueeze(1), 1.0)
        return x, y

    (xtr, ytr), (xte, yte) = make(int(n_train)), make(int(n_test))
    return Dataset("spike_timing", xtr, ytr, xte, yte, int(n_classes), spike_train=True)


def cue_accumulation(n_train: int = 2000, n_test: int = 500, n_cues: int = 7, cue_steps: int = 2,
                     gap_steps: int = 1, delay: int = 60, recall_steps: int = 5, channels: int = 10,
                     rate: float = 0.5, noise_rate: float = 0.01, seed: int = 0) -> Dataset:
    """Evidence accumulation (Bellec et al. 2020, Fig. 3, after Morcos & Harvey 2016), in steps:

        [cue, gap] x n_cues | delay | recall          T = n_cues (cue_steps + gap_steps) + delay + recall_steps

    Four populations of `channels` input channels: left cue, right cue, recall, background. Each cue comes from
    the left or the right (a fair coin per cue); during its cue_steps the population of its side fires
    Bernoulli(rate) per channel and step. The recall population fires at `rate` during the last recall_steps;
    the background population fires at noise_rate throughout. Label: 0 if more cues came from the left, else 1
    (n_cues is odd: no ties). x [N, T, 4 * channels] float32 in {0, 1} (channels: left, right, recall,
    background), y [N]. A readout of the last recall_steps (model.readout_steps=recall_steps) sees no cue: it
    needs the count held over the delay. Seeded: the same arguments give the same data."""
    ints = {"n_train": n_train, "n_test": n_test, "n_cues": n_cues, "cue_steps": cue_steps,
            "recall_steps": recall_steps, "channels": channels}
    bad = [f"{k}={v}" for k, v in ints.items() if int(v) < 1] + [f"{k}={v}" for k, v in
                                                                (("gap_steps", gap_steps), ("delay", delay))
                                                                if int(v) < 0]
    if bad or int(n_cues) % 2 == 0 or not 0 < float(rate) <= 1 or not 0 <= float(noise_rate) <= 1:
        raise ConfigError(f"cue_accumulation needs an odd n_cues (no ties), n_train, n_test, cue_steps, recall_steps, "
                          f"channels >= 1, gap_steps, delay >= 0, rate in (0, 1] and noise_rate in [0, 1]; got "
                          f"n_cues={n_cues}, rate={rate}, noise_rate={noise_rate}" + (f", {', '.join(bad)}" if bad
                                                                                       else ""))
    n_cues, cue, gap, ch = int(n_cues), int(cue_steps), int(gap_steps), int(channels)
    T = n_cues * (cue + gap) + int(delay) + int(recall_steps)
    gen = torch.Generator().manual_seed(int(seed))

    def make(n: int) -> tuple[Tensor, Tensor]:
        sides = torch.randint(0, 2, (n, n_cues), generator=gen)                  # 0 left, 1 right
        y = (sides.sum(1) > n_cues // 2).long()
        x = torch.zeros(n, T, 4, ch)
        fire = (torch.rand(n, T, ch, generator=gen) < float(rate)).float()
        for k in range(n_cues):
            t0 = k * (cue + gap)
            rows = torch.arange(n)
            x[rows, t0:t0 + cue, sides[:, k]] = fire[:, t0:t0 + cue]
        x[:, T - int(recall_steps):, 2] = fire[:, T - int(recall_steps):]
        x[:, :, 3] = (torch.rand(n, T, ch, generator=gen) < float(noise_rate)).float()
        return x.flatten(2), y

    (xtr, ytr), (xte, yte) = make(int(n_train)), make(int(n_test))
    return Dataset("cue_accumulation", xtr, ytr, xte, yte, 2, spike_train=True)


__all__ = ["cue_accumulation", "spike_timing"]
