"""gla: gated linear attention with a matrix state (Yang et al. 2024), time-major.

    S_t = diag(exp g_t) S_{t-1} + k_t^T v_t          S [K, V] per (batch, head), g <= 0 (log-space decay)
    o_t = scale * q_t S_t

Shapes: q, k, g [T, B, H, K]; v [T, B, H, V]; initial_state S_0 [B, H, K, V] (optional).
Returns (o [T, B, H, V], S_T [B, H, K, V]). scale defaults to K^-1/2 (flash-linear-attention's default).

Implementations, in the table `IMPLS` keyed by (form, backend):
- ("recurrent", "torch"): `gla_naive`, the reference — a plain autograd loop over t (the spec).
- ("recurrent", "triton"): fused recurrent Triton kernels (kernels/gla_triton.py): one program per
  (batch, head) with S in registers; backward recomputes the states for dq, then runs in reverse for
  dk, dv, dS_0; dg from the identity below.
- ("chunk", "torch"): `gla_chunked`, the chunked form with log-space gates: inside a chunk of C steps,
  with b_i = sum_{r<=i} g_r (cumulative log gates within the chunk),
      o_i = scale * [ (q_i * exp(b_i)) S_prev + sum_{j<=i} (sum_k q_i,k k_j,k exp(b_i,k - b_j,k)) v_j ]
      S_next = exp(b_C) S_prev + sum_j (k_j * exp(b_C - b_j))^T v_j
  every exponent is <= 0, so nothing overflows however strong the decay; chunks run in parallel
  except the state hand-over. Gradients by autograd.

Gate gradient identity (with G_t = sum_{r<=t} g_r): o depends on g only through q_t exp(G_t) and
k_s exp(-G_s), and S_T through exp(G_T), so
      dg_r = sum_{t>=r} (q_t * dq_t - k_t * dk_t) + sum_v (dS_T * S_T)      (the last term for every r)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from bioplaus.kernels import gla_triton


def _check(q, k, v, g, initial_state):
    if q.dim() != 4 or k.shape != q.shape or g.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError("gla: q, k, g must be [T, B, H, K] and v [T, B, H, V] with the same T, B, H; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, g {tuple(g.shape)}, v {tuple(v.shape)}")
    T, B, H, K = q.shape
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(f"gla: initial_state must be [B, H, K, V] = {(B, H, K, v.shape[-1])}, "
                         f"got {tuple(initial_state.shape)}")


def gla_naive(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None = None,
              initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: the recurrence step by step, differentiated by autograd. Math in float32 (or float64)."""
    T, B, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    ct = torch.promote_types(q.dtype, torch.float32)
    S = q.new_zeros(B, H, K, v.shape[-1], dtype=ct) if initial_state is None else initial_state.to(ct)
    outs = []
    for t in range(T):
        S = S * g[t].to(ct).exp()[..., None] + k[t].to(ct)[..., None] * v[t].to(ct)[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[t].to(ct) * scale, S))
    return torch.stack(outs).to(v.dtype), S


def gla_chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None = None,
                initial_state: Tensor | None = None, chunk_size: int = 16) -> tuple[Tensor, Tensor]:
    """Chunked form with log-space gates (see module docstring). Any T (the last chunk is padded)."""
    T, B, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    C = int(chunk_size)
    n = -(-T // C)
    pad = n * C - T

    ct = torch.promote_types(q.dtype, torch.float32)

    def chunks(x):                                      # [T, B, H, D] -> [B, H, n, C, D], float32 or float64
        x = torch.nn.functional.pad(x.to(ct), (0, 0, 0, 0, 0, 0, 0, pad))
        return x.reshape(n, C, B, H, -1).permute(2, 3, 0, 1, 4)

    qc, kc, vc, gc = chunks(q) * scale, chunks(k), chunks(v), chunks(g)   # padded steps: g = 0, k = v = 0
    b = gc.cumsum(-2)                                                      # [B, H, n, C, K]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (b[..., :, None, :] - b[..., None, :, :]).masked_fill(~causal[..., None], float("-inf")).exp()
    attn = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", qc, kc, decay)        # intra-chunk, [B, H, n, C, C]
    intra = attn @ vc                                                      # [B, H, n, C, V]
    k_to_end = kc * (b[..., -1:, :] - b).exp()                             # k_j exp(b_C - b_j)
    chunk_state = k_to_end.transpose(-1, -2) @ vc                          # [B, H, n, K, V]
    chunk_decay = b[..., -1, :].exp()                                      # [B, H, n, K]
    S = q.new_zeros(B, H, K, V, dtype=ct) if initial_state is None else initial_state.to(ct)
    starts = []
    for c in range(n):                                                     # state hand-over between chunks
        starts.append(S)
        S = chunk_decay[:, :, c, :, None] * S + chunk_state[:, :, c]
    S_prev = torch.stack(starts, 2)                                        # [B, H, n, K, V]
    inter = (qc * b.exp()) @ S_prev                                        # [B, H, n, C, V]
    o = (intra + inter).permute(2, 3, 0, 1, 4).reshape(n * C, B, H, V)[:T]
    return o.to(v.dtype), S


IMPLS: dict[tuple[str, str], Callable] = {
    ("recurrent", "torch"): gla_naive,
    ("recurrent", "triton"): gla_triton.gla_recurrent_triton,
    ("chunk", "torch"): gla_chunked,
}


def gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None = None,
        initial_state: Tensor | None = None, form: str = "recurrent", backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Gated linear attention; returns (o [T, B, H, V], S_T [B, H, K, V]). See the module docstring."""
    _check(q, k, v, g, initial_state)
    if backend == "auto":
        backend = "triton" if (form, "triton") in IMPLS and gla_triton.available(q.device) is None \
            and q.device.type == "cuda" else "torch"
    if (form, backend) not in IMPLS:
        raise ValueError(f"gla: no implementation for form='{form}', backend='{backend}': choose one of "
                         + ", ".join(f"{f}/{b}" for f, b in IMPLS))
    if backend == "triton" and (why := gla_triton.available(q.device)) is not None:
        raise ValueError(f"gla backend 'triton' cannot run on {q.device.type}: {why}; use backend='torch'")
    return IMPLS[(form, backend)](q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), scale,
                                  initial_state)
