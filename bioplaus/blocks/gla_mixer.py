"""Gated linear attention token mixer (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training"), on the `gla` op.

Input x [B, L, D] (batch first); H heads with key width K = expand_k D / H and value width
V = expand_v D / H. Per token (time-major [L, B, H, .] inside, the token axis is the op's time axis):

    q = c_q(W_q x),  k = c_k(W_k x)                         [L, B, H, K]
    v = c_v(W_v x)                                          [L, B, H, V]
    g = logsigmoid(W_g2 W_g1 x + c) / gate_normalizer       [L, B, H, K], g <= 0 (log-space forget gate;
                                                            low-rank W_g2 W_g1, rank gate_rank)
    S_t = diag(exp g_t) S_{t-1} + k_t^T v_t,   o_t = K^-1/2 q_t S_t        (bioplaus.kernels.gla)
    y = W_o( RMSNorm_V(o) * silu(W_r x) )                   per-head norm, output gate; y [B, L, D]

c_* is a short causal depthwise convolution over the tokens followed by SiLU (kernel `short_conv`,
default 4; 0 = none, c = identity), as in flash-linear-attention's layers: it hands each position its
few predecessors, which associative recall needs (a key's value must meet the key in one state
update). The normaliser (16, as flash-linear-attention's layer) keeps the initial decays slow (g ~ -0.04).
Implementation picked by device like the other ops: `form`/`backend` "auto" -> the fused recurrent
Triton kernels on CUDA, the chunked log-space form in torch on CPU; any pair of the op's IMPLS table
may be named.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.blocks.common import RMSNorm
from bioplaus.errors import ConfigError
from bioplaus.kernels import gla_triton
from bioplaus.kernels.gla import IMPLS, gla

FORMS = sorted({f for f, _ in IMPLS})
GLA_BACKENDS = sorted({b for _, b in IMPLS})


def pick_impl(device: torch.device, form: str = "auto", backend: str = "auto") -> tuple[str, str]:
    """(form, backend) for this device: auto -> recurrent/triton on CUDA, chunk/torch elsewhere."""
    if form == "auto":
        form = "recurrent" if device.type == "cuda" and gla_triton.available(device) is None else "chunk"
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and (form, "triton") in IMPLS \
            and gla_triton.available(device) is None else "torch"
    return form, backend


class GLAMixer(nn.Module):
    """Multi-head gated linear attention over tokens: [B, L, D] -> [B, L, D] (see the module docstring)."""

    def __init__(self, dim: int, heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0, gate_rank: int = 16,
                 gate_normalizer: float = 16.0, short_conv: int = 4, form: str = "auto", backend: str = "auto"):
        super().__init__()
        if int(heads) < 1:
            raise ConfigError(f"gla heads must be >= 1, got {heads}")
        kdim, vdim = int(round(float(expand_k) * dim)), int(round(float(expand_v) * dim))
        if kdim < heads or vdim < heads or kdim % heads or vdim % heads:
            raise ConfigError(f"gla: key width {kdim} (expand_k * dim) and value width {vdim} (expand_v * dim) must "
                              f"be positive multiples of heads={heads}")
        if form not in ("auto", *FORMS):
            raise ConfigError(f"unknown gla form '{form}': choose one of {', '.join(['auto', *FORMS])}")
        if backend not in ("auto", *GLA_BACKENDS):
            raise ConfigError(f"unknown gla backend '{backend}': choose one of {', '.join(['auto', *GLA_BACKENDS])}")
        if int(gate_rank) < 1 or float(gate_normalizer) <= 0:
            raise ConfigError(f"gla gate_rank must be >= 1 and gate_normalizer > 0, got {gate_rank}, {gate_normalizer}")
        if int(short_conv) < 0:
            raise ConfigError(f"gla short_conv must be >= 0 (0 = none), got {short_conv}")
        self.heads, self.kdim, self.vdim = int(heads), kdim, vdim
        self.form, self.backend, self.gate_normalizer = form, backend, float(gate_normalizer)
        self.qkvr = nn.Linear(dim, 2 * kdim + 2 * vdim, bias=False)
        width = 2 * kdim + vdim                                               # q, k, v (not r)
        self.conv = nn.Conv1d(width, width, int(short_conv), padding=int(short_conv) - 1, groups=width) \
            if int(short_conv) > 0 else None
        self.gate = nn.Sequential(nn.Linear(dim, int(gate_rank), bias=False), nn.Linear(int(gate_rank), kdim))
        self.norm = RMSNorm(vdim // self.heads)
        self.out_proj = nn.Linear(vdim, dim, bias=False)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """x [B, L, D] -> time-major q, k, g [L, B, H, K], v [L, B, H, V] and output-gate logits r [L, B, H, V]."""
        qkv, r = self.qkvr(x).split([2 * self.kdim + self.vdim, self.vdim], dim=-1)
        if self.conv is not None:                                             # causal: keep the first L outputs
            qkv = F.silu(self.conv(qkv.transpose(1, 2))[..., :x.shape[1]].transpose(1, 2))
        q, k, v = qkv.transpose(0, 1).split([self.kdim, self.kdim, self.vdim], dim=-1)
        r = r.transpose(0, 1)
        g = F.logsigmoid(self.gate(x.transpose(0, 1))) / self.gate_normalizer

        def heads(t):
            return t.unflatten(-1, (self.heads, -1))

        return heads(q), heads(k), heads(v), heads(g), heads(r)

    def output(self, o: Tensor, r: Tensor) -> Tensor:
        """Attention output o and gate logits r [L, B, H, V] -> y [B, L, D]."""
        return self.out_proj((self.norm(o) * F.silu(r)).flatten(-2)).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v, g, r = self.project(x)
        form, backend = pick_impl(x.device, self.form, self.backend)
        o, _ = gla(q, k, v, g, form=form, backend=backend)
        return self.output(o, r)
