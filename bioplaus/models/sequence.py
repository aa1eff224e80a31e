"""Sequence models on the layered skeleton: `GatedLM` (dense gated blocks with an HGRN or GLA token
mixer) and the pieces every sequence model shares (`SequenceEncoder`, `SequenceHead`, `sequence_task`).

The task follows the data's input shape (in_shape without the batch axis):

    in_shape [L]     token ids     -> task "lm":       logits [B, L, V] (V = n_classes = vocabulary size)
    in_shape [L, P]  patch vectors -> task "classify": logits [B, C] from the token-averaged features

GatedLM, batch first like the other static models (the mixers run their ops over the token axis, which
is the ops' time axis):

    h_0 = encode(x)                     Embedding(V, D)(x) [B, L, D]   or   Linear(P, D)(x) [B, L, D]
    h_l = layers[l-1](h_{l-1})          GatedBlock: h + mixer(RMSNorm(h)), then h + GLU(RMSNorm(h))  [B, L, D]
    logits = head(h_L)                  Linear(RMSNorm(h_L)) [B, L, V]   or   Linear(mean_L RMSNorm(h_L)) [B, C]

Runs are labelled `gated_lm_hgrn` / `gated_lm_gla` (metrics.json's "model", comparison tables).
`pool(h)` gives what the head reads, so a layer-local rule's per-layer readout matches the targets:
per-token features [B, L, D] for lm, token-averaged [B, D] for classify; `dims` = [D] * n_layers.
The embedding lives in `encode` (as the spiking models' encoders), so rules that train only
`layers` and `head` keep it at its initialisation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bioplaus.blocks.common import GLU, PreNormResidual, make_norm
from bioplaus.blocks.gla_mixer import GLAMixer
from bioplaus.blocks.hgrn import HGRNMixer
from bioplaus.errors import ConfigError
from bioplaus.models.base import Layered

MIXERS = {"hgrn": HGRNMixer, "gla": GLAMixer}


def sequence_task(name: str, in_shape: Sequence[int]) -> str:
    """'lm' for token ids [L], 'classify' for patch sequences [L, P]; ConfigError otherwise."""
    if len(in_shape) == 1:
        return "lm"
    if len(in_shape) == 2:
        return "classify"
    raise ConfigError(f"model {name} needs sequence data: token ids [L] (data=text or data=mqar) or patch "
                      f"sequences [L, P] (data=digits_seq or data=fashion_seq), got input shape {list(in_shape)}")


class SequenceEncoder(nn.Module):
    """Token ids [B, L] -> Embedding [B, L, D], or patches [B, L, P] -> Linear [B, L, D];
    time_major: [L, B, D] instead."""

    def __init__(self, task: str, in_shape: Sequence[int], n_classes: int, dim: int, time_major: bool = False):
        super().__init__()
        self.task, self.time_major = task, time_major
        self.embed = nn.Embedding(n_classes, dim) if task == "lm" else nn.Linear(int(in_shape[-1]), dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.task == "lm" and x.is_floating_point():
            x = x.long()
        h = self.embed(x)
        return h.transpose(0, 1) if self.time_major else h


class SequenceHead(nn.Module):
    """Final norm then Linear: per token [B, L, n_out] (lm) or on the token average [B, n_out] (classify).
    Input [B, L, D], or [L, B, D] when time_major."""

    def __init__(self, task: str, dim: int, n_out: int, norm: str = "rms", time_major: bool = False):
        super().__init__()
        self.task, self.time_major = task, time_major
        self.norm = make_norm(norm, dim)
        self.linear = nn.Linear(dim, n_out)

    def pool(self, h: Tensor) -> Tensor:
        """[B, L, D] (or time-major [L, B, D]) -> per-token [B, L, D] (lm) or token mean [B, D] (classify)."""
        h = h.transpose(0, 1) if self.time_major else h
        return h if self.task == "lm" else h.mean(1)

    def forward(self, h: Tensor) -> Tensor:
        h = self.norm(h.transpose(0, 1) if self.time_major else h)
        return self.linear(h if self.task == "lm" else h.mean(1))


class GatedBlock(nn.Module):
    """One layer: token mixing then channel mixing, each pre-norm residual. [B, L, D] -> [B, L, D]."""

    def __init__(self, dim: int, mixer: nn.Module, glu: str = "swiglu", glu_hidden: int | None = None,
                 norm: str = "rms"):
        super().__init__()
        self.token = PreNormResidual(dim, mixer, norm)
        self.channel = PreNormResidual(dim, GLU(dim, glu_hidden, glu), norm)

    def forward(self, h: Tensor) -> Tensor:
        return self.channel(self.token(h))


def _lower_bound(value, layer: int, n_layers: int) -> float:
    if value == "depth":
        return layer / n_layers
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model.hgrn.lower_bound must be 'depth' or a number in [0, 1), got {value}") from None


class GatedLM(Layered):
    """Embedding -> n_layers x GatedBlock(hgrn | gla mixer + GLU) -> norm -> linear head (see module docstring)."""

    name = "gated_lm"

    def __init__(self, in_shape: Sequence[int], n_classes: int, dim: int = 128, n_layers: int = 2,
                 mixer: str = "hgrn", glu: str = "swiglu", glu_hidden: int | None = None, norm: str = "rms",
                 hgrn: dict | None = None, gla: dict | None = None):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        self.task = sequence_task(self.name, self.in_shape)
        if mixer not in MIXERS:
            raise ConfigError(f"unknown model.mixer '{mixer}': choose one of {', '.join(MIXERS)}")
        if int(dim) < 1 or int(n_layers) < 1:
            raise ConfigError(f"model.dim and model.n_layers must be >= 1, got {dim}, {n_layers}")
        dim, n_layers = int(dim), int(n_layers)
        self.name = f"gated_lm_{mixer}"                 # the label in metrics and comparison tables
        self.mixer, self.n_classes, self.dims = mixer, int(n_classes), [dim] * n_layers
        self.encoder = SequenceEncoder(self.task, self.in_shape, self.n_classes, dim)
        blocks = []
        for layer in range(n_layers):
            if mixer == "hgrn":
                kw = dict(hgrn or {})
                kw["lower_bound"] = _lower_bound(kw.get("lower_bound", "depth"), layer, n_layers)
            else:
                kw = dict(gla or {})
            try:
                mix = MIXERS[mixer](dim, **kw)
            except TypeError as e:
                raise ConfigError(f"bad model.{mixer} settings: {e}") from None
            blocks.append(GatedBlock(dim, mix, glu, glu_hidden, norm))
        self.layers = nn.ModuleList(blocks)
        self.head = SequenceHead(self.task, dim, self.n_classes, norm)

    def pool(self, h: Tensor) -> Tensor:
        return self.head.pool(h)


@torch.no_grad()
def generate(model: nn.Module, prompt: Tensor, n_new: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> Tensor:
    """Sample n_new tokens after prompt [B, L0] from an lm model (recomputes the whole prefix each step):
    returns [B, L0 + n_new]. temperature 0 = greedy."""
    x = prompt
    for _ in range(int(n_new)):
        logits = model(x)[:, -1]
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
        x = torch.cat([x, nxt], 1)
    return x
