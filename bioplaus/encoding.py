"""Static input -> spike train (or current) over T steps, time-major [T, B, ...].

- direct: the analog input repeated every step, x_t = x (the first layer turns it into spikes).
- rate:   Bernoulli spikes with p = clamp(x, 0, 1) at every step (snnTorch `spikegen.rate`).
"""
from __future__ import annotations

from torch import Tensor, nn

from bioplaus.errors import ConfigError

ENCODINGS = ("direct", "rate")


def encode(x: Tensor, T: int, kind: str = "direct") -> Tensor:
    """x [B, ...] -> [T, B, ...]."""
    if kind == "direct":
        return x.unsqueeze(0).expand(T, *x.shape)
    if kind == "rate":
        from snntorch import spikegen

        return spikegen.rate(x.clamp(0, 1), num_steps=T)
    raise ConfigError(f"unknown encoding '{kind}': choose one of {', '.join(ENCODINGS)}")


class Encoder(nn.Module):
    """Module shell over `encode`: Encoder(T=8, kind='rate')(x [B, ...]) -> [T, B, ...]."""

    def __init__(self, T: int, kind: str = "direct"):
        super().__init__()
        if kind not in ENCODINGS:
            raise ConfigError(f"unknown encoding '{kind}': choose one of {', '.join(ENCODINGS)}")
        if T < 1:
            raise ConfigError(f"number of time steps T must be >= 1, got {T}")
        self.T, self.kind = int(T), kind

    def forward(self, x: Tensor) -> Tensor:
        return encode(x, self.T, self.kind)

    def extra_repr(self) -> str:
        return f"T={self.T}, kind={self.kind}"
