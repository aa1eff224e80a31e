"""Spike-train datasets: samples that already are spike trains, x [N, T, ...] sample-major (spiking models
read them with model.encoding=given, model.T = T; `Dataset.spike_train` is True).

- `spike_timing(...)`: a generated task whose label is carried by spike *timing* only: every channel fires
  exactly once per sample, at a class-specific time (jittered), so spike counts are the same for every class
  and a model of rates alone is at chance. x [N, T, F].
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


__all__ = ["spike_timing"]
