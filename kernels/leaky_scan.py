"""leaky_scan: the one recurrence behind every neuron and gated RNN, with optional spiking.

    h_t = a_t * v_{t-1} + b_t * x_t                       (charge)
    s_t = H(h_t - threshold)                              (fire; only when threshold is given)
    v_t = h_t * (1 - s_t)        reset="hard"  (to 0)     (reset)
        = h_t - threshold * s_t  reset="soft"
        = h_t                    reset="none" or no threshold

Shapes: x [T, ...] (time-major; everything after T is "N"), v0 and the returned final state [...].
`a` and `b` are each a Python float, a tensor broadcastable to x.shape[1:] (scalar/per-channel,
e.g. PLIF's learnable decay), or a tensor of x's full shape (per-element, data-dependent decay).
Output: spikes s [T, ...] when `threshold` is set, else the states h [T, ...]; plus v_T.

Gradients: x, a, b (any of the forms above), v0, through the surrogate g' of `surrogate` with slope
`alpha` (see bioplaus.kernels.surrogate). With detach_reset the spike inside the reset is treated as a
constant. The backward is one reverse-time loop that saves only h [T, ...] (plus x when b needs a
gradient) and recomputes s and v from it (SpikingJelly's trick):

    gh_t   = gs_t * g'(h_t - th) + gv_t * dv_t/dh_t
    gx_t   = gh_t * b_t,   ga += gh_t * v_{t-1},   gb += gh_t * x_t,   gv_{t-1} = gh_t * a_t
    dv/dh  = (1 - s_t) - h_t * g'   (hard),   1 - th * g'   (soft),   1  (none / detach_reset: no g' term)

Backends, named in the table `BACKENDS`: "torch" (this file: the hand-written BPTT; every case, any
device), "cpu" (kernels/leaky_scan_cpu.py: a fused C++ loop, compiled on first use, for float32 spiking
scans with float a and b, i.e. IF and LIF) and "triton" (kernels/leaky_scan_triton.py: fused forward
and reverse-time backward kernels; CUDA, or CPU under TRITON_INTERPRET=1). "auto" picks triton on
CUDA, cpu on CPU where it fits and is built, torch otherwise.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bioplaus.kernels import leaky_scan_cpu, leaky_scan_triton
from bioplaus.kernels.surrogate import SurrogateSpec, lookup

RESETS = ("hard", "soft", "none")
Decay = float | Tensor


def _at(p: Decay, t: int, per_element: bool) -> Decay:
    return p[t] if per_element else p


def _reset(h: Tensor, threshold: float | None, reset: str) -> Tensor:
    if threshold is None or reset == "none":
        return h
    s = (h >= threshold).to(h.dtype)
    return h * (1 - s) if reset == "hard" else h - threshold * s


class LeakyScanTorch(torch.autograd.Function):
    """Autograd Function with a hand-written BPTT; saves h only (and x when b needs a gradient)."""

    @staticmethod
    def forward(ctx, x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None):
        T = x.shape[0]
        a_el = isinstance(a, Tensor) and a.dim() == x.dim()
        b_el = isinstance(b, Tensor) and b.dim() == x.dim()
        v = torch.zeros_like(x[0]) if v0 is None else v0.expand_as(x[0]).to(x.dtype)
        hs = torch.empty_like(x)
        out = hs if threshold is None else torch.empty_like(x)
        for t in range(T):
            h = torch.addcmul(_at(a, t, a_el) * v, _at(b, t, b_el), x[t]) if isinstance(b, Tensor) \
                else _at(a, t, a_el) * v + b * x[t]
            hs[t] = h
            if threshold is None:
                v = h
                continue
            s = (h >= threshold).to(x.dtype)
            out[t] = s
            v = h if reset == "none" else (h * (1 - s) if reset == "hard" else h - threshold * s)
        if counts is not None and threshold is not None:
            counts += out.reshape(T, -1).sum(1, dtype=counts.dtype)
        needs_x = isinstance(b, Tensor) and ctx.needs_input_grad[2]
        ctx.save_for_backward(hs, x if needs_x else None, *(p if isinstance(p, Tensor) else None
                                                            for p in (a, b, v0)))
        ctx.cfg = (threshold, reset, detach_reset, spec, alpha, a_el, b_el,
                   None if isinstance(a, Tensor) else a, None if isinstance(b, Tensor) else b)
        return out, v

    @staticmethod
    def backward(ctx, g_out, g_v):
        hs, x, a_t, b_t, v0 = ctx.saved_tensors
        threshold, reset, detach, spec, alpha, a_el, b_el, a_f, b_f = ctx.cfg
        a = a_t if a_t is not None else a_f
        b = b_t if b_t is not None else b_f
        need_x, need_a, need_b, need_v0 = ctx.needs_input_grad[:4]
        T = hs.shape[0]
        gv = torch.zeros_like(hs[0]) if g_v is None else g_v.to(hs.dtype).clone()
        g_out = torch.zeros_like(hs) if g_out is None else g_out
        gx = torch.empty_like(hs) if need_x else None
        ga = (torch.empty_like(hs) if a_el else torch.zeros_like(hs[0])) if need_a else None
        gb = (torch.empty_like(hs) if b_el else torch.zeros_like(hs[0])) if need_b else None
        for t in range(T - 1, -1, -1):
            h = hs[t]
            if threshold is None:
                gh = g_out[t] + gv
            else:
                sg = spec.grad(h - threshold, alpha)
                gh = g_out[t] * sg
                if reset == "hard":
                    dvdh = 1 - (h >= threshold).to(h.dtype)
                    if not detach:
                        dvdh = dvdh - h * sg
                elif reset == "soft":
                    dvdh = 1.0 if detach else 1 - threshold * sg
                else:
                    dvdh = 1.0
                gh = gh + gv * dvdh
            if need_x:
                gx[t] = gh * _at(b, t, b_el)
            if need_a:
                v_prev = (torch.zeros_like(h) if v0 is None else v0.expand_as(h)) if t == 0 \
                    else _reset(hs[t - 1], threshold, reset)
                if a_el:
                    ga[t] = gh * v_prev
                else:
                    ga += gh * v_prev
            if need_b:
                if b_el:
                    gb[t] = gh * x[t]
                else:
                    gb += gh * x[t]
            gv = gh * _at(a, t, a_el)
        if need_a and not a_el:
            ga = ga.sum_to_size(a.shape)
        if need_b and not b_el:
            gb = gb.sum_to_size(b.shape)
        gv0 = gv.sum_to_size(v0.shape) if need_v0 else None
        return gx, ga, gb, gv0, None, None, None, None, None, None


def _scan_torch(x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None):
    return LeakyScanTorch.apply(x.contiguous(), a, b, v0, threshold, reset, detach_reset, spec, alpha, counts)


BACKENDS: dict[str, Callable] = {"torch": _scan_torch, "cpu": leaky_scan_cpu.scan_cpu,
                                  "triton": leaky_scan_triton.scan_triton}


class BackendError(ValueError):
    """A backend that is unknown or cannot run these arguments on this device."""


def resolve_backend(backend: str, device: torch.device, fits_cpu: bool = False) -> str:
    """'auto' -> triton on CUDA, the fused C++ kernel on CPU where it fits (float32 spikes, float a and
    b: IF/LIF), else torch. A named backend is checked to be known and able to run (BackendError)."""
    if backend == "auto":
        if device.type == "cuda" and leaky_scan_triton.available(device) is None:
            return "triton"
        if device.type == "cpu" and fits_cpu and leaky_scan_cpu.available() is None:
            return "cpu"
        return "torch"
    if backend not in BACKENDS:
        raise BackendError(f"unknown leaky_scan backend '{backend}': choose one of {', '.join(['auto', *BACKENDS])}")
    if backend == "triton" and (why := leaky_scan_triton.available(device)) is not None:
        raise BackendError(f"leaky_scan backend 'triton' cannot run on {device.type}: {why}; use backend='torch'")
    if backend == "cpu":
        if not fits_cpu:
            raise BackendError("leaky_scan backend 'cpu' covers float32 CPU spiking scans with float a and b (IF, LIF);"
                               " use backend='torch' for tensor decays, no threshold or other dtypes")
        if (why := leaky_scan_cpu.available()) is not None:
            raise BackendError(f"leaky_scan backend 'cpu' is not built ({why}); use backend='torch'")
    return backend


def _check_param(name: str, p: Decay, x: Tensor) -> None:
    if not isinstance(p, Tensor):
        return
    if p.dim() == x.dim():
        if p.shape != x.shape:
            raise ValueError(f"leaky_scan: per-element {name} must have x's shape {tuple(x.shape)}, "
                             f"got {tuple(p.shape)}")
        return
    try:
        torch.broadcast_shapes(p.shape, x.shape[1:])
    except RuntimeError:
        raise ValueError(f"leaky_scan: {name} of shape {tuple(p.shape)} does not broadcast to "
                         f"x.shape[1:] = {tuple(x.shape[1:])}") from None


def leaky_scan(x: Tensor, a: Decay, b: Decay = 1.0, *, v0: Tensor | None = None,
               threshold: float | None = None, reset: str = "hard", detach_reset: bool = False,
               surrogate: str = "atan", alpha: float | None = None,
               backend: str = "auto", counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Run the leaky recurrence over time. Returns (s or h [T, ...], v_T [...]); see module docstring.

    counts: optional float64 tensor [T]; the number of spikes emitted at each step is added to it
    inside the kernel (the statistics layer's spike counts at no extra pass)."""
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"leaky_scan: x must be [T, ...] with T >= 1, got shape {tuple(x.shape)}")
    if reset not in RESETS:
        raise ValueError(f"leaky_scan: unknown reset '{reset}': choose one of {', '.join(RESETS)}")
    _check_param("a", a, x)
    _check_param("b", b, x)
    if v0 is not None:
        _check_param("v0", v0, x)
    if counts is not None and (counts.shape != (x.shape[0],) or counts.dtype != torch.float64):
        raise ValueError(f"leaky_scan: counts must be a float64 tensor of shape [T] = [{x.shape[0]}], "
                         f"got {counts.dtype} {tuple(counts.shape)}")
    spec: SurrogateSpec = lookup(surrogate)
    fits_cpu = leaky_scan_cpu.supports(x, a, b, v0, threshold)
    fn = BACKENDS[resolve_backend(backend, x.device, fits_cpu)]
    return fn(x, a, b, v0, None if threshold is None else float(threshold), reset,
              bool(detach_reset), spec, spec.alpha if alpha is None else float(alpha), counts)


def leaky_scan_naive(x: Tensor, a: Decay, b: Decay = 1.0, *, v0: Tensor | None = None,
                     threshold: float | None = None, reset: str = "hard", detach_reset: bool = False,
                     surrogate: str = "atan", alpha: float | None = None) -> tuple[Tensor, Tensor]:
    """The spec: a plain autograd loop (surrogate spikes via the smooth primitive's gradient)."""
    spec = lookup(surrogate)
    alpha = spec.alpha if alpha is None else float(alpha)
    a_el = isinstance(a, Tensor) and a.dim() == x.dim()
    b_el = isinstance(b, Tensor) and b.dim() == x.dim()
    v = torch.zeros_like(x[0]) if v0 is None else v0.expand_as(x[0])
    outs = []
    for t in range(x.shape[0]):
        h = _at(a, t, a_el) * v + _at(b, t, b_el) * x[t]
        if threshold is None:
            outs.append(h)
            v = h
            continue
        z = h - threshold
        p = spec.primitive(z, alpha)
        s = p + ((z >= 0).to(x.dtype) - p).detach()      # H(z) forward, g'(z) backward
        outs.append(s)
        sr = s.detach() if detach_reset else s
        v = h if reset == "none" else (h * (1 - sr) if reset == "hard" else h - threshold * sr)
    return torch.stack(outs), v
