"""Spiking transformer blocks: Spikformer's SSA (Zhou et al. 2023), the spike-driven SDSA (Yao et al.
2023) and their spiking MLPs, on time-major tokens X [T, B, N, D] (T steps, N tokens, D channels).

SN(.) is any neuron from `bioplaus.neurons.make_neuron` (native or an adapter), multi-step over T; every
Linear has no bias and is followed by BatchNorm over D on the merged [T * B * N] rows (`LinearBN`).

Spikformer (SSA), heads H of width d = D / H, scale s (0.125):

    Q, K, V  = SN(BN(X W_q)), SN(BN(X W_k)), SN(BN(X W_v))        binary, split into heads [T, B, H, N, d]
    A        = SN_attn( (Q K^T) V * s )                           no softmax; SN_attn fires at 0.5; binary
    SSA(X)   = SN(BN(A W_o))                                      binary
    block:   X' = X + SSA(X);   X'' = X' + MLP(X'),  MLP(X) = SN(BN(SN(BN(X W_1)) W_2))

The residual stream carries integer sums of spikes. Q K^T and (Q K^T) V are batched matmuls with a
spike operand, so `bioplaus.stats.opcount` counts them as synaptic ops (Q spikes x N keys, V spikes x N queries).

Spike-driven Transformer (SDSA), membrane shortcut (the residual stream U is real-valued, each branch
starts with a neuron):

    S        = SN(U)
    Q, K, V  = SN(BN(S W_q)), SN(BN(S W_k)), SN(BN(S W_v))        binary [T, B, N, D]
    KV       = SN_kv( sum_n K_n * V_n )                           column-wise token sum; SN_kv fires at 0.5;
                                                                  binary [T, B, 1, D]
    SDSA(U)  = BN((Q * KV) W_o)                                   Q * KV: a binary mask over tokens
    block:   U' = U + SDSA(U);  U'' = U' + MLP(U'),  MLP(U) = BN(SN(BN(SN(U) W_1)) W_2)

K * V and Q * KV are masks (AND of spikes, no arithmetic). The token sum is written as the product
(K * V)^T @ 1_N so that the op counter sees it: nnz(K * V) accumulates, one per spike. Cost is linear in N.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.neurons import KINDS, make_neuron


def token_neuron(neuron: dict, **override) -> nn.Module:
    """A neuron for [T, B, N, D] tokens (elementwise). Neurons with per-channel parameters on dim 2 would
    see the token axis there, so they are refused."""
    cfg = {**neuron, **override}
    kind = cfg.get("kind", "lif")
    if kind in KINDS and KINDS[kind].needs_size:
        raise ConfigError(f"neuron '{kind}' keeps per-channel parameters on dim 2, which is the token axis in "
                          "spiking transformers [T, B, N, D]: choose if, lif, plif or an adapter (sj_lif, ...)")
    return make_neuron(**cfg)


class LinearBN(nn.Module):
    """Linear (no bias) then BatchNorm over the last axis: [..., D_in] -> [..., D_out]."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=False)
        self.bn = nn.BatchNorm1d(d_out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return self.bn(y.flatten(0, -2)).view_as(y)


def ssa_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """(Q K^T) V * scale, no softmax: q, k, v [..., N, d] -> [..., N, d] (the input of SN_attn)."""
    return (q @ k.transpose(-2, -1)) @ v * scale


def sdsa_attention(q: Tensor, k: Tensor, v: Tensor, kv_neuron: nn.Module) -> Tensor:
    """Q * SN_kv(sum_n K_n * V_n): q, k, v [T, B, N, D] spikes -> [T, B, N, D] spikes."""
    kv = k * v
    ones = torch.ones(kv.shape[-2], 1, dtype=kv.dtype, device=kv.device)
    col = (kv.transpose(-2, -1) @ ones).transpose(-2, -1)        # [T, B, 1, D]: spikes per channel
    return q * kv_neuron(col)


def _heads(x: Tensor, h: int) -> Tensor:
    """[T, B, N, D] -> [T, B, H, N, D / H]."""
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)


class SSA(nn.Module):
    """Spikformer's spiking self-attention: [T, B, N, D] -> spikes [T, B, N, D] (see module docstring)."""

    def __init__(self, dim: int, neuron: dict, heads: int = 1, scale: float = 0.125, attn_threshold: float = 0.5):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ConfigError(f"model.heads ({heads}) must be >= 1 and divide model.dim ({dim})")
        self.heads, self.scale = int(heads), float(scale)
        self.q, self.k, self.v, self.proj = (LinearBN(dim, dim) for _ in range(4))
        self.q_sn, self.k_sn, self.v_sn, self.proj_sn = (token_neuron(neuron) for _ in range(4))
        self.attn_sn = token_neuron(neuron, v_threshold=float(attn_threshold))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_heads(sn(lin(x)), self.heads) for lin, sn in
                   ((self.q, self.q_sn), (self.k, self.k_sn), (self.v, self.v_sn)))
        a = ssa_attention(q, k, v, self.scale).transpose(-3, -2).flatten(-2)     # [T, B, N, D]
        return self.proj_sn(self.proj(self.attn_sn(a)))


class SpikingMLP(nn.Module):
    """Spikformer MLP: SN(BN(SN(BN(X W_1)) W_2)), [T, B, N, D] -> spikes [T, B, N, D]."""

    def __init__(self, dim: int, hidden: int, neuron: dict):
        super().__init__()
        self.fc1, self.sn1 = LinearBN(dim, hidden), token_neuron(neuron)
        self.fc2, self.sn2 = LinearBN(hidden, dim), token_neuron(neuron)

    def forward(self, x: Tensor) -> Tensor:
        return self.sn2(self.fc2(self.sn1(self.fc1(x))))


class SpikformerBlock(nn.Module):
    """X' = X + SSA(X); X'' = X' + MLP(X')."""

    def __init__(self, dim: int, neuron: dict, heads: int = 1, mlp_ratio: float = 4.0, scale: float = 0.125,
                 attn_threshold: float = 0.5):
        super().__init__()
        self.attn = SSA(dim, neuron, heads, scale, attn_threshold)
        self.mlp = SpikingMLP(dim, int(round(mlp_ratio * dim)), neuron)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class SDSA(nn.Module):
    """Spike-driven self-attention with the neuron at the branch start: real U [T, B, N, D] -> real [T, B, N, D]."""

    def __init__(self, dim: int, neuron: dict, kv_threshold: float = 0.5):
        super().__init__()
        self.shortcut_sn = token_neuron(neuron)
        self.q, self.k, self.v, self.proj = (LinearBN(dim, dim) for _ in range(4))
        self.q_sn, self.k_sn, self.v_sn = (token_neuron(neuron) for _ in range(3))
        self.kv_sn = token_neuron(neuron, v_threshold=float(kv_threshold))

    def forward(self, u: Tensor) -> Tensor:
        s = self.shortcut_sn(u)
        q, k, v = self.q_sn(self.q(s)), self.k_sn(self.k(s)), self.v_sn(self.v(s))
        return self.proj(sdsa_attention(q, k, v, self.kv_sn))


class MembraneMLP(nn.Module):
    """Spike-driven MLP: BN(SN(BN(SN(U) W_1)) W_2), real [T, B, N, D] -> real [T, B, N, D]."""

    def __init__(self, dim: int, hidden: int, neuron: dict):
        super().__init__()
        self.sn1, self.fc1 = token_neuron(neuron), LinearBN(dim, hidden)
        self.sn2, self.fc2 = token_neuron(neuron), LinearBN(hidden, dim)

    def forward(self, u: Tensor) -> Tensor:
        return self.fc2(self.sn2(self.fc1(self.sn1(u))))


class SpikeDrivenBlock(nn.Module):
    """U' = U + SDSA(U); U'' = U' + MLP(U') (membrane shortcut)."""

    def __init__(self, dim: int, neuron: dict, mlp_ratio: float = 4.0, kv_threshold: float = 0.5):
        super().__init__()
        self.attn = SDSA(dim, neuron, kv_threshold)
        self.mlp = MembraneMLP(dim, int(round(mlp_ratio * dim)), neuron)

    def forward(self, u: Tensor) -> Tensor:
        u = u + self.attn(u)
        return u + self.mlp(u)


__all__ = ["SDSA", "SSA", "LinearBN", "MembraneMLP", "SpikeDrivenBlock", "SpikformerBlock", "SpikingMLP",
           "sdsa_attention", "ssa_attention", "token_neuron"]
