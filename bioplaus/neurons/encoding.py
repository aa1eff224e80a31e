"""Static input -> spike train (or current) over T steps, time-major [T, B, ...].

- direct:  the analog input repeated every step, x_t = x (the first layer turns it into spikes).
- rate:    Bernoulli spikes with p = clamp(x, 0, 1) at every step (snnTorch `spikegen.rate`); a fresh
           draw on every call.
- latency: time-to-first-spike, one spike per input: x in (0, 1] fires once at step
           t = round((1 - x) (T - 1)) (brightest first), x <= 0 never fires. Deterministic.
- given:   the data is already a spike train stored sample-major, x [B, T, ...]; it is only
           transposed to [T, B, ...] (T must match the data's second axis).

Time-invariant inputs. Direct encoding returns `x.expand(T, ...)`: a view that repeats one step (stride 0
along T), with no copy. `time_invariant(h)` recognises such a view, and `per_step(fn, h)` applies a per-step
map (a Linear, a conv) to a time-major h [T, B, ...] -- on the merged [T*B, ...] rows, or, when h repeats one
step, ONCE on that step [B, ...] with the result broadcast over T (again a stride-0 view). So a direct-encoded
model computes its first layer's input current once instead of T times; the values are the same (each row of
a matmul or conv does not depend on the other rows: tests check the spikes and logits bit for bit), and the
gradient of the broadcast is summed over T before the weight gradient (one [B]-row product instead of
[T*B]). While such a map runs, `once_over_time()` is True: the op counter reads it and counts those ops once
(at step 0), not T times.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from bioplaus.errors import ConfigError

ENCODINGS = ("direct", "rate", "latency", "given")


def _latency_step(x: Tensor, T: int) -> Tensor:
    """The step at which each input fires, round((1 - x)(T - 1)), or -1 for x <= 0 (never fires)."""
    x = x.clamp(0, 1)
    return torch.where(x > 0, torch.round((1 - x) * (T - 1)), torch.full_like(x, -1.0))


def latency(x: Tensor, T: int) -> Tensor:
    """x [B, ...] in [0, 1] -> [T, B, ...] with at most one spike per input (see module docstring)."""
    t = torch.arange(T, device=x.device, dtype=x.dtype).view(T, *([1] * x.dim()))
    return (t == _latency_step(x, T)).to(x.dtype)


def encode(x: Tensor, T: int, kind: str = "direct") -> Tensor:
    """x [B, ...] -> [T, B, ...] (kind 'given': x [B, T, ...] -> [T, B, ...])."""
    if kind == "direct":
        return x.unsqueeze(0).expand(T, *x.shape)
    if kind == "rate":
        from snntorch import spikegen

        return spikegen.rate(x.clamp(0, 1), num_steps=T)
    if kind == "latency":
        return latency(x, T)
    if kind == "given":
        if x.dim() < 2 or x.shape[1] != T:
            raise ConfigError(f"encoding 'given' expects spike trains [B, T={T}, ...], got {list(x.shape)}; "
                              "set model.T to the data's number of steps")
        return x.transpose(0, 1)
    raise ConfigError(f"unknown encoding '{kind}': choose one of {', '.join(ENCODINGS)}")


def encode_step(x: Tensor, t: int, T: int, kind: str = "direct") -> Tensor:
    """Step t of `encode(x, T, kind)` alone, [B, ...], for online rules that never hold the whole train
    (rate: a fresh Bernoulli draw; latency and given: exactly encode(...)[t])."""
    if kind == "direct":
        return x
    if kind == "rate":
        return torch.bernoulli(x.clamp(0, 1))
    if kind == "latency":
        return (_latency_step(x, T) == t).to(x.dtype)
    if kind == "given":
        return x[:, t]
    raise ConfigError(f"unknown encoding '{kind}': choose one of {', '.join(ENCODINGS)}")


_ONCE: ContextVar[bool] = ContextVar("bioplaus_once_over_time", default=False)


def time_invariant(h: Tensor) -> bool:
    """True when h [T, B, ...] (T > 1) repeats one step as a broadcast view (stride 0 along T), as direct
    encoding's output does."""
    return h.dim() >= 2 and h.shape[0] > 1 and h.stride(0) == 0


def once_over_time() -> bool:
    """True while `per_step` runs a map once for all T steps of a time-invariant input."""
    return _ONCE.get()


@contextmanager
def _once():
    token = _ONCE.set(True)
    try:
        yield
    finally:
        _ONCE.reset(token)


def per_step(fn: Callable[[Tensor], Tensor], h: Tensor) -> Tensor:
    """fn applied at every step of h [T, B, ...] -> [T, B, ...] (fn maps [N, ...] -> [N, ...] row by row, e.g.
    a Linear or a conv). A time-invariant h (see `time_invariant`) runs fn once, on h[0] (shape [B, ...]), and returns
    its output broadcast over T (a view); otherwise fn runs on the merged rows h.flatten(0, 1) [T*B, ...]."""
    T = h.shape[0]
    if time_invariant(h):
        with _once():
            y = fn(h[0])
        return y.unsqueeze(0).expand(T, *y.shape)
    return fn(h.flatten(0, 1)).unflatten(0, (T, h.shape[1]))


def encode_steps(x: Tensor, t0: int, c: int, T: int, kind: str = "direct") -> Tensor:
    """Steps t0 .. t0+c-1 of `encode(x, T, kind)`, [c, B, ...], for online rules that run a sequence in chunks
    (direct: x broadcast over the c steps, a view; rate: fresh Bernoulli draws; latency and given: exactly
    encode(...)[t0:t0+c])."""
    if kind == "direct":
        return x.unsqueeze(0).expand(c, *x.shape)
    if kind == "rate":
        return torch.bernoulli(x.clamp(0, 1).unsqueeze(0).expand(c, *x.shape))
    if kind == "latency":
        t = torch.arange(t0, t0 + c, device=x.device, dtype=x.dtype).view(c, *([1] * x.dim()))
        return (t == _latency_step(x, T)).to(x.dtype)
    if kind == "given":
        return x[:, t0:t0 + c].transpose(0, 1)
    raise ConfigError(f"unknown encoding '{kind}': choose one of {', '.join(ENCODINGS)}")


def step_shape(in_shape: tuple[int, ...], T: int, kind: str) -> tuple[int, ...]:
    """The shape of one sample at one step: in_shape itself, or in_shape[1:] for 'given' (checking T)."""
    if kind != "given":
        return tuple(in_shape)
    if len(in_shape) < 2 or in_shape[0] != T:
        raise ConfigError(f"encoding 'given' needs data of shape [T={T}, ...] per sample, got {list(in_shape)}: "
                          "use spike-train data (e.g. data=spike_timing) with model.T = its number of steps, "
                          "or encode static data with model.encoding=rate|latency|direct")
    return tuple(in_shape[1:])


class Encoder(nn.Module):
    """Module shell over `encode`: Encoder(T=8, kind='rate')(x [B, ...]) -> [T, B, ...]."""

    def __init__(self, T: int, kind: str = "direct"):
        super().__init__()
        if kind not in ENCODINGS:
            raise ConfigError(f"unknown encoding '{kind}': choose one of {', '.join(ENCODINGS)}")
        if T < 1:
            raise ConfigError(f"number of time steps T must be >= 1, got {T}")
        self.T, self.kind = int(T), kind

    def forward(self, x: Tensor) -> Tensor:
        return encode(x, self.T, self.kind)

    def extra_repr(self) -> str:
        return f"T={self.T}, kind={self.kind}"
