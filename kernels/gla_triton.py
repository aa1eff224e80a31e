"""Fused recurrent gated linear attention in Triton (forward and backward), time-major.

One program per (batch, head): the state S [K, V] lives in registers while the program walks over t.
    forward   S_t = exp(g_t)[:, None] * S_{t-1} + k_t[:, None] v_t[None, :];  o_t = scale * q_t S_t
    backward  pass 1 (forward order) recomputes S_t:  dq_t = scale * S_t dO_t
              pass 2 (reverse order):  dS_t = scale * q_t[:, None] dO_t[None, :] + exp(g_{t+1}) * dS_{t+1}
                                       dk_t = dS_t v_t,  dv_t = dS_t^T k_t;  dS_0 = exp(g_0) * dS_0-part
              dg on the host: dg_r = sum_{t>=r} (q_t dq_t - k_t dk_t) + sum_v dS_T * S_T
K and V are padded to powers of two inside the kernel (masked). Shapes as in bioplaus.kernels.gla.
"""
from __future__ import annotations

import torch

from bioplaus.kernels.leaky_scan_triton import available, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _offsets(BK: tl.constexpr, BV: tl.constexpr, K, V):
        ok = tl.arange(0, BK)
        ov = tl.arange(0, BV)
        return ok, ov, ok < K, ov < V

    @triton.jit
    def _fwd_kernel(Q, Kp, Vp, G, S0, Out, ST, scale, T, BH, K, V,
                    HAS_S0: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        bh = tl.program_id(0)
        ok, ov, mk, mv = _offsets(BK, BV, K, V)
        m2 = mk[:, None] & mv[None, :]
        s_ptr = bh * K * V + ok[:, None] * V + ov[None, :]
        if HAS_S0:
            S = tl.load(S0 + s_ptr, mask=m2, other=0.0).to(tl.float32)
        else:
            S = tl.zeros([BK, BV], dtype=tl.float32)
        for t in range(T):
            base_k = (t * BH + bh) * K
            base_v = (t * BH + bh) * V
            q = tl.load(Q + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            k = tl.load(Kp + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            g = tl.load(G + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            v = tl.load(Vp + base_v + ov, mask=mv, other=0.0).to(tl.float32)
            S = S * tl.exp(g)[:, None] + k[:, None] * v[None, :]
            o = tl.sum(q[:, None] * S, axis=0) * scale
            tl.store(Out + base_v + ov, o.to(Out.dtype.element_ty), mask=mv)
        tl.store(ST + s_ptr, S, mask=m2)

    @triton.jit
    def _bwd_dq_kernel(Kp, Vp, G, S0, DO, DQ, scale, T, BH, K, V,
                       HAS_S0: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        bh = tl.program_id(0)
        ok, ov, mk, mv = _offsets(BK, BV, K, V)
        m2 = mk[:, None] & mv[None, :]
        if HAS_S0:
            S = tl.load(S0 + bh * K * V + ok[:, None] * V + ov[None, :], mask=m2, other=0.0).to(tl.float32)
        else:
            S = tl.zeros([BK, BV], dtype=tl.float32)
        for t in range(T):
            base_k = (t * BH + bh) * K
            base_v = (t * BH + bh) * V
            k = tl.load(Kp + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            g = tl.load(G + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            v = tl.load(Vp + base_v + ov, mask=mv, other=0.0).to(tl.float32)
            do = tl.load(DO + base_v + ov, mask=mv, other=0.0).to(tl.float32)
            S = S * tl.exp(g)[:, None] + k[:, None] * v[None, :]
            dq = tl.sum(S * do[None, :], axis=1) * scale
            tl.store(DQ + base_k + ok, dq, mask=mk)

    @triton.jit
    def _bwd_dkv_kernel(Q, Kp, Vp, G, DO, DST, DK, DV, DS0, scale, T, BH, K, V,
                        HAS_DST: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
        bh = tl.program_id(0)
        ok, ov, mk, mv = _offsets(BK, BV, K, V)
        m2 = mk[:, None] & mv[None, :]
        s_ptr = bh * K * V + ok[:, None] * V + ov[None, :]
        if HAS_DST:
            dS = tl.load(DST + s_ptr, mask=m2, other=0.0).to(tl.float32)
        else:
            dS = tl.zeros([BK, BV], dtype=tl.float32)
        for i in range(T):
            t = T - 1 - i
            base_k = (t * BH + bh) * K
            base_v = (t * BH + bh) * V
            q = tl.load(Q + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            k = tl.load(Kp + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            g = tl.load(G + base_k + ok, mask=mk, other=0.0).to(tl.float32)
            v = tl.load(Vp + base_v + ov, mask=mv, other=0.0).to(tl.float32)
            do = tl.load(DO + base_v + ov, mask=mv, other=0.0).to(tl.float32)
            dS += (q * scale)[:, None] * do[None, :]
            tl.store(DK + base_k + ok, tl.sum(dS * v[None, :], axis=1), mask=mk)
            tl.store(DV + base_v + ov, tl.sum(dS * k[:, None], axis=0), mask=mv)
            dS = dS * tl.exp(g)[:, None]
        tl.store(DS0 + s_ptr, dS, mask=m2)


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


class GLARecurrentTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state):
        T, B, H, K = q.shape
        V = v.shape[-1]
        scale = K ** -0.5 if scale is None else float(scale)
        o = torch.empty_like(v)
        S_T = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
        s0 = None if initial_state is None else initial_state.detach().float().contiguous()
        _fwd_kernel[(B * H,)](q, k, v, g, s0 if s0 is not None else S_T, o, S_T, scale, T, B * H, K, V,
                              HAS_S0=s0 is not None, BK=_pow2(K), BV=_pow2(V))
        ctx.save_for_backward(q, k, v, g, s0, S_T)
        ctx.scale, ctx.has_s0 = scale, initial_state is not None
        ctx.s0_dtype = None if initial_state is None else initial_state.dtype
        return o, S_T

    @staticmethod
    def backward(ctx, do, dS_T):
        q, k, v, g, s0, S_T = ctx.saved_tensors
        T, B, H, K = q.shape
        V = v.shape[-1]
        do = torch.zeros_like(v) if do is None else do.contiguous()
        f32 = dict(dtype=torch.float32, device=q.device)
        dq, dk = torch.empty(T, B, H, K, **f32), torch.empty(T, B, H, K, **f32)
        dv, ds0 = torch.empty(T, B, H, V, **f32), torch.empty(B, H, K, V, **f32)
        blocks = dict(BK=_pow2(K), BV=_pow2(V))
        _bwd_dq_kernel[(B * H,)](k, v, g, s0 if s0 is not None else ds0, do, dq, ctx.scale, T, B * H, K, V,
                                 HAS_S0=s0 is not None, **blocks)
        dst = None if dS_T is None else dS_T.float().contiguous()
        _bwd_dkv_kernel[(B * H,)](q, k, v, g, do, dst if dst is not None else ds0, dk, dv, ds0, ctx.scale,
                                  T, B * H, K, V, HAS_DST=dst is not None, **blocks)
        dg = (q.float() * dq - k.float() * dk).flip(0).cumsum(0).flip(0)
        if dst is not None:
            dg = dg + (dst * S_T).sum(-1)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.to(g.dtype), None,
                ds0.to(ctx.s0_dtype) if ctx.has_s0 else None)


def gla_recurrent_triton(q, k, v, g, scale=None, initial_state=None):
    """Fused recurrent GLA (Triton); same contract as bioplaus.kernels.gla.gla_naive."""
    return GLARecurrentTriton.apply(q, k, v, g, scale, initial_state)


__all__ = ["available", "gla_recurrent_triton"]
