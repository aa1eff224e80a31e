"""Triton backend of leaky_scan: one program per block of N, the time loop in registers.

Same op and semantics as `bioplaus.kernels.leaky_scan` (see its docstring): x [T, N] (N = all but time,
flattened), h_t = a_t * v_{t-1} + b_t * x_t, optional spike s_t = H(h_t - threshold) with hard / soft /
no reset and detach_reset, surrogate gradient in the backward kernel.

Layout of the decay/gain operands (each of a, b), chosen by a constexpr MODE:
    0  a Python float (passed as a scalar)
    1  one value per element of N (a scalar or per-channel tensor, expanded to [N] on the host)
    2  per element and time step, [T, N] (data-dependent gates)

Forward saves h [T, N] (fp32 math, stored in x's dtype); backward is one reverse-time kernel that
recomputes s and v_{t-1} from h and writes grad x, grad a / grad b ([T, N] for mode 2, [N] partial
sums for mode 1, reduced on the host to the operand's shape), and grad v0.

On CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1; set before triton is
imported), which is how the tests execute them without a GPU.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a Linux dependency
    triton = None

RESET_ID = {"hard": 0, "soft": 1, "none": 2}


def available(device: torch.device) -> str | None:
    """None if the Triton backend can run on `device`, else the reason it cannot."""
    if triton is None:
        return "triton is not installed"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "it needs a CUDA device (or TRITON_INTERPRET=1 set before triton is imported, for CPU tests)"


if triton is not None:

    @triton.jit
    def _surrogate(z, alpha, SG: tl.constexpr):
        if SG == 0:      # atan
            u = 1.5707963267948966 * alpha * z
            g = alpha / 2 / (1 + u * u)
        elif SG == 1:    # sigmoid
            sig = 1 / (1 + tl.exp(-alpha * z))
            g = alpha * sig * (1 - sig)
        elif SG == 2:    # fast_sigmoid
            d = 1 + alpha * tl.abs(z)
            g = 1 / (d * d)
        else:            # triangle
            g = alpha * tl.maximum(1 - alpha * tl.abs(z), 0.0)
        return g

    @triton.jit
    def _operand(P, p_val, t, offs, mask, N, MODE: tl.constexpr):
        if MODE == 0:
            return p_val
        elif MODE == 1:
            return tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            return tl.load(P + t * N + offs, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _reset(h, th, SPIKE: tl.constexpr, RESET: tl.constexpr):
        if SPIKE:
            s = (h >= th).to(tl.float32)
            if RESET == 0:
                v = h * (1 - s)
            elif RESET == 1:
                v = h - th * s
            else:
                v = h
        else:
            v = h
        return v

    @triton.jit
    def _fwd_kernel(X, A, B, V0, OUT, H, VT, C, a_val, b_val, th, T, N,
                    A_MODE: tl.constexpr, B_MODE: tl.constexpr, HAS_V0: tl.constexpr, SPIKE: tl.constexpr,
                    RESET: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        if HAS_V0:
            v = tl.load(V0 + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            v = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(T):
            x = tl.load(X + t * N + offs, mask=mask, other=0.0).to(tl.float32)
            a = _operand(A, a_val, t, offs, mask, N, A_MODE)
            b = _operand(B, b_val, t, offs, mask, N, B_MODE)
            h = a * v + b * x
            tl.store(H + t * N + offs, h.to(H.dtype.element_ty), mask=mask)
            if SPIKE:
                fired = tl.where(mask, (h >= th).to(tl.float32), 0.0)
                tl.store(OUT + t * N + offs, fired.to(OUT.dtype.element_ty), mask=mask)
                if COUNT:
                    tl.atomic_add(C + t, tl.sum(fired, axis=0).to(tl.float64))
            v = _reset(h, th, SPIKE, RESET)
        tl.store(VT + offs, v.to(VT.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_kernel(G_OUT, G_VT, H, X, A, B, V0, GX, GA, GB, GV0, a_val, b_val, th, alpha, T, N,
                    A_MODE: tl.constexpr, B_MODE: tl.constexpr, HAS_V0: tl.constexpr, HAS_GVT: tl.constexpr,
                    SPIKE: tl.constexpr, RESET: tl.constexpr, DETACH: tl.constexpr, SG: tl.constexpr,
                    NEED_A: tl.constexpr, NEED_B: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        if HAS_GVT:
            gv = tl.load(G_VT + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            gv = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_V0:
            v0 = tl.load(V0 + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            v0 = tl.zeros([BLOCK], dtype=tl.float32)
        ga_acc = tl.zeros([BLOCK], dtype=tl.float32)
        gb_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(T):
            t = T - 1 - i
            h = tl.load(H + t * N + offs, mask=mask, other=0.0).to(tl.float32)
            go = tl.load(G_OUT + t * N + offs, mask=mask, other=0.0).to(tl.float32)
            if SPIKE:
                sg = _surrogate(h - th, alpha, SG)
                gh = go * sg
                if RESET == 0:
                    dvdh = 1 - (h >= th).to(tl.float32)
                    if not DETACH:
                        dvdh = dvdh - h * sg
                elif RESET == 1:
                    if DETACH:
                        dvdh = tl.full([BLOCK], 1.0, tl.float32)
                    else:
                        dvdh = 1 - th * sg
                else:
                    dvdh = tl.full([BLOCK], 1.0, tl.float32)
                gh = gh + gv * dvdh
            else:
                gh = go + gv
            b = _operand(B, b_val, t, offs, mask, N, B_MODE)
            tl.store(GX + t * N + offs, (gh * b).to(GX.dtype.element_ty), mask=mask)
            if NEED_A:
                h_prev = tl.load(H + tl.maximum(t - 1, 0) * N + offs, mask=mask, other=0.0).to(tl.float32)
                v_prev = tl.where(t > 0, _reset(h_prev, th, SPIKE, RESET), v0)
                if A_MODE == 2:
                    tl.store(GA + t * N + offs, gh * v_prev, mask=mask)
                else:
                    ga_acc += gh * v_prev
            if NEED_B:
                x = tl.load(X + t * N + offs, mask=mask, other=0.0).to(tl.float32)
                if B_MODE == 2:
                    tl.store(GB + t * N + offs, gh * x, mask=mask)
                else:
                    gb_acc += gh * x
            a = _operand(A, a_val, t, offs, mask, N, A_MODE)
            gv = gh * a
        tl.store(GV0 + offs, gv, mask=mask)
        if NEED_A:
            if A_MODE != 2:
                tl.store(GA + offs, ga_acc, mask=mask)
        if NEED_B:
            if B_MODE != 2:
                tl.store(GB + offs, gb_acc, mask=mask)


def _block(N: int) -> int:
    return max(16, min(1024, triton.next_power_of_2(N)))


def _as_operand(p, x: Tensor):
    """(mode, tensor or None, scalar): float -> mode 0; broadcast tensor -> [N] mode 1; [T, ...] -> mode 2."""
    T, N = x.shape[0], x[0].numel()
    if not isinstance(p, Tensor):
        return 0, None, float(p)
    if p.dim() == x.dim():
        return 2, p.detach().reshape(T, N).contiguous(), 0.0
    return 1, p.detach().expand(x.shape[1:]).reshape(N).contiguous(), 0.0


class LeakyScanTriton(torch.autograd.Function):
    """Forward and backward as Triton kernels; saves h (and x when b needs a gradient)."""

    @staticmethod
    def forward(ctx, x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None):
        T, N = x.shape[0], x[0].numel()
        x2 = x.reshape(T, N).contiguous()
        a_mode, a2, a_val = _as_operand(a, x)
        b_mode, b2, b_val = _as_operand(b, x)
        v02 = None if v0 is None else v0.detach().expand(x.shape[1:]).reshape(N).contiguous()
        spike = threshold is not None
        h = torch.empty_like(x2)
        out = torch.empty_like(x2) if spike else h
        vT = torch.empty(N, dtype=x.dtype, device=x.device)
        block = _block(N)
        dummy = x2
        _fwd_kernel[(triton.cdiv(N, block),)](
            x2, a2 if a2 is not None else dummy, b2 if b2 is not None else dummy, v02 if v02 is not None else dummy,
            out, h, vT, counts if counts is not None else vT, a_val, b_val, float(threshold or 0.0), T, N,
            A_MODE=a_mode, B_MODE=b_mode, HAS_V0=v02 is not None, SPIKE=spike, RESET=RESET_ID[reset],
            COUNT=counts is not None and spike, BLOCK=block)
        needs_x = isinstance(b, Tensor) and ctx.needs_input_grad[2]
        ctx.save_for_backward(h, x2 if needs_x else None, a2, b2, v02)
        ctx.cfg = (threshold, reset, detach_reset, spec, alpha, a_mode, b_mode, a_val, b_val, x.shape,
                   a.shape if isinstance(a, Tensor) else None, b.shape if isinstance(b, Tensor) else None,
                   v0.shape if v0 is not None else None)
        return out.reshape(x.shape), vT.reshape(x.shape[1:])

    @staticmethod
    def backward(ctx, g_out, g_v):
        h, x2, a2, b2, v02 = ctx.saved_tensors
        (threshold, reset, detach, spec, alpha, a_mode, b_mode, a_val, b_val, shape,
         a_shape, b_shape, v0_shape) = ctx.cfg
        need_a, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        T, N = h.shape
        g_out = torch.zeros_like(h) if g_out is None else g_out.reshape(T, N).contiguous()
        g_vt = None if g_v is None else g_v.reshape(N).contiguous()
        gx = torch.empty_like(h)
        f32 = dict(dtype=torch.float32, device=h.device)
        ga = (torch.empty(T, N, **f32) if a_mode == 2 else torch.empty(N, **f32)) if need_a else None
        gb = (torch.empty(T, N, **f32) if b_mode == 2 else torch.empty(N, **f32)) if need_b else None
        gv0 = torch.empty(N, **f32)
        block, dummy = _block(N), h
        _bwd_kernel[(triton.cdiv(N, block),)](
            g_out, g_vt if g_vt is not None else dummy, h, x2 if x2 is not None else dummy,
            a2 if a2 is not None else dummy, b2 if b2 is not None else dummy, v02 if v02 is not None else dummy,
            gx, ga if ga is not None else gv0, gb if gb is not None else gv0, gv0,
            a_val, b_val, float(threshold or 0.0), float(alpha), T, N,
            A_MODE=a_mode, B_MODE=b_mode, HAS_V0=v02 is not None, HAS_GVT=g_vt is not None,
            SPIKE=threshold is not None, RESET=RESET_ID[reset], DETACH=bool(detach), SG=spec.id,
            NEED_A=bool(need_a), NEED_B=bool(need_b), BLOCK=block)
        ga_out = gb_out = None
        if need_a:
            ga_out = ga.reshape(shape) if a_mode == 2 else ga.reshape(shape[1:]).sum_to_size(a_shape)
        if need_b:
            gb_out = gb.reshape(shape) if b_mode == 2 else gb.reshape(shape[1:]).sum_to_size(b_shape)
        gv0_out = gv0.reshape(shape[1:]).sum_to_size(v0_shape) if ctx.needs_input_grad[3] else None
        dt = h.dtype
        return (gx.reshape(shape), None if ga_out is None else ga_out.to(dt), None if gb_out is None else gb_out.to(dt),
                None if gv0_out is None else gv0_out.to(dt), None, None, None, None, None, None)


def scan_triton(x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None):
    return LeakyScanTriton.apply(x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts)
