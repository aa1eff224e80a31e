"""HGRN-style gated recurrent token mixer (Qin et al. 2023, "Hierarchically Gated Recurrent Neural
Network"), real-valued, on the `leaky_scan` op with a per-element, data-dependent decay.

Input x [B, L, D] (batch first, as the static models); the recurrence runs over the token axis, which
is the kernel's time axis (x is transposed to [L, B, E] for it). With E = expand * D:

    f_t = gamma + (1 - gamma) * sigmoid(W_f x_t)       forget gate, lower bound gamma in [0, 1)
    i_t = silu(W_i x_t)                                input
    h_t = f_t * h_{t-1} + (1 - f_t) * i_t              leaky_scan(x=i, a=f, b=1-f), h_0 = 0
    y_t = W_o( RMSNorm(h_t) * silu(W_g x_t) )          output gate; y [B, L, D]

The lower bound keeps f_t >= gamma, so a layer cannot forget faster than gamma allows: HGRN raises it
with depth (lower layers short-range, upper layers long-range); `GatedLM` passes gamma_l = l / n_layers.
Backend: leaky_scan's table (`auto`: the fused Triton kernel on CUDA, the torch BPTT on CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.blocks.common import RMSNorm
from bioplaus.errors import ConfigError
from bioplaus.kernels.leaky_scan import BACKENDS, leaky_scan


class HGRNMixer(nn.Module):
    """Gated linear recurrence over tokens: [B, L, D] -> [B, L, D] (see the module docstring)."""

    def __init__(self, dim: int, expand: float = 1.0, lower_bound: float = 0.0, backend: str = "auto"):
        super().__init__()
        if not 0.0 <= float(lower_bound) < 1.0:
            raise ConfigError(f"hgrn lower_bound must be in [0, 1), got {lower_bound}")
        if backend not in ("auto", *BACKENDS):
            raise ConfigError(f"unknown hgrn backend '{backend}': choose one of {', '.join(['auto', *BACKENDS])}")
        if float(expand) <= 0:
            raise ConfigError(f"hgrn expand must be > 0, got {expand}")
        width = max(1, int(round(float(expand) * dim)))
        self.lower_bound, self.backend = float(lower_bound), backend
        self.in_proj = nn.Linear(dim, 3 * width, bias=False)       # i, f, g
        self.norm = RMSNorm(width)
        self.out_proj = nn.Linear(width, dim, bias=False)

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, D] -> time-major (input i, forget f, output-gate logits g), each [L, B, E]."""
        i, f, g = self.in_proj(x).transpose(0, 1).chunk(3, dim=-1)
        f = self.lower_bound + (1 - self.lower_bound) * torch.sigmoid(f)
        return F.silu(i), f, g

    def output(self, h: Tensor, g: Tensor) -> Tensor:
        """States h and gate logits g [L, B, E] -> y [B, L, D]."""
        return self.out_proj(self.norm(h) * F.silu(g)).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        i, f, g = self.gates(x)
        h, _ = leaky_scan(i, f, 1 - f, backend=self.backend)
        return self.output(h, g)
