"""wkv: RWKV-4's time-mixing recurrence (Peng et al. 2023; SpikeGPT's token mixer), time-major.

Per channel c, with decay w_c > 0 and bonus u_c (k, v [T, B, C]; w, u [C]):

    wkv_t = ( sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t ) / ( sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t} )

i.e. a softmax-weighted average of v_0..v_t with logits -(t-1-i) w + k_i (and u + k_t for i = t).

- `wkv_naive`: the formula as written, plain exponentials over a [T, T] logit table per channel: the spec
  for small inputs (it overflows once k reaches ~88 in float32).
- `wkv`: the recurrence in its numerically stable form. The state (p, q, o) holds the running sums scaled
  by their largest exponent, P = p e^o and Q = q e^o (p, q = 0, o = -1e38 at the start):

      n = max(o, u + k_t);      y_t = (e^{o-n} p + e^{u+k_t-n} v_t) / (e^{o-n} q + e^{u+k_t-n})
      n' = max(o - w, k_t);     p <- e^{o-w-n'} p + e^{k_t-n'} v_t;   q <- e^{o-w-n'} q + e^{k_t-n'};   o <- n'

  every exponent is <= 0, so nothing overflows however large k gets; exponents are clipped at -40
  (e^-40 ~ 4e-18, far below float32 resolution, and q >= 1 after the first step) so no subnormal numbers
  arise, which would make CPU arithmetic many times slower. The running maxima are taken as
  constants for autograd (y does not depend on them: they cancel between numerator and denominator),
  so the gradient is that of the exact formula. O(T) time, O(B C) state; a plain autograd loop over t
  (torch backend only; SpikeGPT's CUDA kernel does the same in one thread per (batch, channel)).

Returns y [T, B, C] in the dtype of v (math in float32 or float64).
"""
from __future__ import annotations

import torch
from torch import Tensor

CLIP = -40.0        # smallest exponent of the stable form (see the module docstring)


def _check(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> None:
    if k.dim() != 3 or v.shape != k.shape or w.shape != k.shape[-1:] or u.shape != k.shape[-1:]:
        raise ValueError(f"wkv: k and v must be [T, B, C] and w, u [C]; got k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"w {tuple(w.shape)}, u {tuple(u.shape)}")


def wkv(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> Tensor:
    """Stable recurrent WKV (see the module docstring): k, v [T, B, C], w > 0, u [C] -> y [T, B, C]."""
    _check(k, v, w, u)
    ct = torch.promote_types(v.dtype, torch.float32)
    k, v, w, u = k.to(ct), v.to(ct), w.to(ct), u.to(ct)
    p = torch.zeros_like(k[0])
    q = torch.zeros_like(k[0])
    o = torch.full_like(k[0], -1e38)
    out = []

    def e(z):
        return torch.exp(z.clamp_min(CLIP))

    for t in range(k.shape[0]):
        kt, vt = k[t], v[t]
        uk = u + kt
        n = torch.maximum(o, uk).detach()
        a, b = e(o - n), e(uk - n)
        out.append((a * p + b * vt) / (a * q + b))
        ow = o - w
        n = torch.maximum(ow, kt).detach()
        a, b = e(ow - n), e(kt - n)
        p, q, o = a * p + b * vt, a * q + b, n
    return torch.stack(out).to(v.dtype)


def wkv_naive(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> Tensor:
    """The formula with plain exponentials (the spec; overflows for large k): y [T, B, C]."""
    _check(k, v, w, u)
    T = k.shape[0]
    t = torch.arange(T, device=k.device)
    lag = (t[:, None] - 1 - t[None, :]).to(k.dtype)                 # [T(t), T(i)]: t - 1 - i
    logit = -lag[..., None, None] * w + k[None]                      # [T, T, B, C]
    logit = torch.where((t[:, None] == t[None, :])[..., None, None], u + k[None], logit)
    e = torch.exp(logit.masked_fill((t[None, :] > t[:, None])[..., None, None], float("-inf")))
    return (e * v[None]).sum(1) / e.sum(1)
