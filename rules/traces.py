"""Eligibility-trace algebra of the online rules (TESS, e-prop) over a chunk of c time steps.

Within one update the weights do not change, so every trace an online rule keeps is a linear filter of what
the network did: a presynaptic trace pre_t = lam pre_{t-1} + x_t is `leaky_scan` without spikes, over a chunk
one product with the filter's c x c impulse response (`decay`). A rule's
weight update is then a sum over steps of outer products g_t^T pre_t (g_t [B, m]: the rule's per-neuron
factor, e.g. learning signal x surrogate derivative; pre_t [B, n]), and over a chunk of c steps that sum is
one matrix product over c * B rows instead of c products over B rows, without ever forming the trace:

    sum_t g_t^T pre_t  =  sum_t gr_t^T x_t  +  lam gr_0^T pre_carry                          (*)

    gr_t = g_t + lam gr_{t+1}   (gr_c = 0)    the reverse-time filter of g (`decay_reverse`)
    pre_carry                                   the trace before the chunk (the carry between chunks)

because pre_t = lam^(t+1) pre_carry + sum_{s<=t} lam^(t-s) x_s. Time is axis 0 everywhere ([c, B, ...]); a
chunk of the whole sequence (c = T) is the offline form, c = 1 the step-by-step one. All functions take a
time-invariant x (a broadcast view repeating one step, e.g. direct encoding) without materialising it.
Nothing here keeps a graph: the rules call them under torch.no_grad().
"""
from __future__ import annotations

import torch
from torch import Tensor

from bioplaus.errors import ConfigError
from bioplaus.neurons.encoding import time_invariant


def check_chunk(value) -> int:
    """rule.time_chunk as an int >= 1 (the steps an online rule runs at once), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"rule.time_chunk must be a whole number of time steps >= 1, got {value!r}")
    return value


def _response(c: int, lam: float, dtype: torch.dtype, device) -> Tensor:
    """The c x c impulse response of y_t = lam y_{t-1} + x_t: R[t, s] = lam^(t-s) for s <= t, else 0."""
    k = torch.arange(c, device=device)
    d = (k.view(c, 1) - k.view(1, c)).to(torch.float64)
    return torch.where(d >= 0, lam ** d.clamp(min=0), 0.0).to(dtype)


def decay(x: Tensor, lam: float, carry: Tensor | None = None) -> Tensor:
    """y_t = lam y_{t-1} + x_t with y_{-1} = carry (None: 0): x [c, ...] -> y [c, ...]. This is leaky_scan
    without spikes; over a chunk it is one product with the filter's c x c impulse response (rows t = 0..c-1),
    plus lam^(t+1) carry."""
    c = x.shape[0]
    y = torch.tensordot(_response(c, lam, x.dtype, x.device), x, dims=1)
    if carry is not None and lam:
        w = lam ** torch.arange(1, c + 1, dtype=torch.float64)
        y.addcmul_(w.to(x.dtype).view(c, *([1] * (x.dim() - 1))), carry)
    return y


def decay_reverse(g: Tensor, lam: float) -> Tensor:
    """gr_t = g_t + lam gr_{t+1} within the chunk (gr_c = 0): g [c, ...] -> gr [c, ...], the adjoint of `decay`
    (the transposed impulse response)."""
    if not lam:
        return g
    return torch.tensordot(_response(g.shape[0], lam, g.dtype, g.device).t(), g, dims=1)


def decay_last(x: Tensor, lam: float, carry: Tensor | None = None) -> Tensor:
    """The last step of `decay` alone: lam^c carry + sum_t lam^(c-1-t) x_t, x [c, B, ...] -> [B, ...] (one
    weighted sum; for a time-invariant x, (sum_k lam^k) x_0)."""
    c = x.shape[0]
    w = lam ** torch.arange(c - 1, -1, -1, dtype=torch.float64)
    y = x[0] * float(w.sum()) if time_invariant(x) else torch.tensordot(w.to(x.dtype), x, dims=1)
    return y if carry is None else y + lam ** c * carry


def outer_sum(g: Tensor, x: Tensor) -> Tensor:
    """sum_t g_t^T x_t over a chunk: g [c, B, m], x [c, B, n] -> [m, n], one product over c * B rows (a
    time-invariant x: (sum_t g_t)^T x_0, over B rows)."""
    if time_invariant(x):
        return g.sum(0).t() @ x[0]
    return g.flatten(0, 1).t() @ x.flatten(0, 1)


def trace_outer_sum(g: Tensor, x: Tensor, lam: float, carry: Tensor | None, gr: Tensor | None = None) -> Tensor:
    """sum_t g_t^T pre_t for the presynaptic trace pre_t = lam pre_{t-1} + x_t (pre_{-1} = carry), by (*) in
    the module docstring; `gr` may pass decay_reverse(g, lam) when the caller has it already."""
    gr = decay_reverse(g, lam) if gr is None else gr
    out = outer_sum(gr, x)
    return out if carry is None or not lam else out.addmm_(gr[0].t(), carry, alpha=lam)


def shift(x: Tensor, first: Tensor) -> Tensor:
    """x delayed by one step within the chunk: [first, x_0, ..., x_{c-2}] ([c, B, ...])."""
    return torch.cat([first.unsqueeze(0), x[:-1]])


__all__ = ["check_chunk", "decay", "decay_last", "decay_reverse", "outer_sum", "shift", "trace_outer_sum"]
