"""The one pure single-step neuron update: charge -> fire -> reset, in the shifted membrane u = v - v_reset.

    h      = a * u + b * x                  charge (pre-reset membrane); u = None is the rest state (h = b x)
    s      = H(h - threshold)               fire, with the surrogate derivative g'(h - threshold) backward
    u_next = h * (1 - s)                    reset="hard" (to v_reset)
           = h - threshold * s              reset="soft" (by subtraction)
           = h                              reset="none"

`a` and `b` are floats or tensors broadcastable to x (per-channel PLIF decay, per-element gated LIF).
detach_reset treats the spike inside the reset as a constant (no gradient through it).

Every single-step user calls this function: the neurons' step mode (`BaseNeuron.step`, `step_mode="s"`),
the recurrent LIF layer that e-prop trains, and TESS's online layers. The multi-step path is the fused
kernel `bioplaus.kernels.leaky_scan` (the same recurrence over T steps); tests check that T calls of this
function give its spikes, membranes and gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bioplaus.neurons.surrogate import spike

RESETS = {                                  # (charge h, spike r, threshold) -> membrane after the step
    "hard": lambda h, r, th: h * (1 - r),
    "soft": lambda h, r, th: h - th * r,
    "none": lambda h, r, th: h,
}


def neuron_step(u: Tensor | None, x: Tensor, a: float | Tensor, b: float | Tensor, threshold: float,
                reset: str = "hard", detach_reset: bool = False, surrogate: str = "atan",
                alpha: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One step for x [B, ...]: returns (spikes s, next membrane u_next, charge h), each shaped like x."""
    if u is None:
        h = b * x
    elif isinstance(b, Tensor):
        h = a * u + b * x
    else:                                      # one rounding for b x + (a u), as torch.add(..., alpha=b) does
        h = torch.add(a * u, x, alpha=b)
    s = spike(h - threshold, surrogate, alpha)
    return s, RESETS[reset](h, s.detach() if detach_reset else s, threshold), h


__all__ = ["RESETS", "neuron_step"]
