"""Shared dense pieces: RMSNorm, the GLU-family channel mixer and the pre-norm residual wrapper.

Shapes: every module here acts on the last axis (features, D) and keeps any leading axes
([B, D], [B, L, D] or time-major [T, B, L, D] alike).

    RMSNorm(x)            = x / sqrt(mean_D(x^2) + eps) * weight
    GLU(x)                = W_down( act(W_gate x) * (W_up x) )      act: silu (SwiGLU) | gelu (GEGLU) | sigmoid (GLU)
    PreNormResidual(x)    = x + mixer(norm(x))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError

GLU_ACTIVATIONS = {"swiglu": F.silu, "geglu": F.gelu, "glu": torch.sigmoid}


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last axis (D)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    """'rms' -> RMSNorm, 'layer' -> nn.LayerNorm, 'none' -> Identity."""
    norms = {"rms": RMSNorm, "layer": nn.LayerNorm, "none": lambda d: nn.Identity()}
    if kind not in norms:
        raise ConfigError(f"unknown norm '{kind}': choose one of {', '.join(norms)}")
    return norms[kind](dim)


class GLU(nn.Module):
    """Gated channel mixer [..., D] -> [..., D_out]; hidden width defaults to 8/3 D (LLaMA's ratio)."""

    def __init__(self, dim: int, hidden: int | None = None, kind: str = "swiglu", dim_out: int | None = None,
                 bias: bool = False):
        super().__init__()
        if kind not in GLU_ACTIVATIONS:
            raise ConfigError(f"unknown GLU kind '{kind}': choose one of {', '.join(GLU_ACTIVATIONS)}")
        hidden = int(hidden or round(8 * dim / 3))
        self.kind, self.act = kind, GLU_ACTIVATIONS[kind]
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, dim_out or dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


class PreNormResidual(nn.Module):
    """x + mixer(norm(x)): the pre-norm residual wrapper of every dense gated block."""

    def __init__(self, dim: int, mixer: nn.Module, norm: str = "rms"):
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.mixer = mixer

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mixer(self.norm(x))
