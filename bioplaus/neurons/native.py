"""Spiking neurons IF, LIF, PLIF: charge -> fire -> reset, with SpikingJelly's semantics by default.

Charge (v: membrane, x: input current, tau: time constant, v_r: reset potential):

    IF                    h_t = v_{t-1} + x_t
    LIF, decay_input      h_t = v_{t-1} + (x_t - (v_{t-1} - v_r)) / tau
    LIF, not decay_input  h_t = v_{t-1} - (v_{t-1} - v_r) / tau + x_t
    PLIF                  as LIF with 1/tau = sigmoid(w), w learnable (init_tau = 2 -> w = 0)

Fire s_t = H(h_t - v_threshold) with a surrogate gradient (bioplaus.neurons.surrogate). Reset: hard to v_r
(`v_reset=0.0`, default) or soft (`v_reset=None`: v_t = h_t - v_threshold * s_t); `detach_reset`
drops the reset's gradient path. Defaults: tau=2, v_threshold=1, v_reset=0, decay_input=True, ATan(2).

GatedLIFNode adds a leak gated per element by the input itself (a_t = sigmoid(w x_t + c)).

Every neuron works in the shifted variable u = v - v_r (u_h = a u + b x, hard reset u = 0, threshold
`shifted_threshold` = v_threshold - v_r). Multi-step it is the kernel `bioplaus.kernels.leaky_scan` (on
CPU one autograd Function with a hand-written BPTT that saves only the pre-reset membrane h); one step is
`step(u, x)`, the pure function `bioplaus.neurons.step.neuron_step` with the neuron's own (a, b), threshold
and reset, which online rules (TESS, e-prop's recurrent layer) call directly.

Modes: step_mode="m" (default) takes x [T, B, ...] and returns spikes [T, B, ...], starting from
v = v_r each call; step_mode="s" takes x [B, ...], returns spikes [B, ...] and keeps the membrane in
`.v` across calls until `.reset()` (for online rules). The last membrane is always in `.v`.

`pure_step` (class attribute) says that the neuron's dynamics are exactly `step` with input-independent
(a, b): true for IF, LIF and PLIF; false for the gated LIF (its leak depends on the input) and for the
SpikingJelly / snnTorch adapters (their library runs the dynamics). Online rules that replay the charge
themselves (TESS) require it.
"""
from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.kernels.leaky_scan import BACKENDS, BackendError, leaky_scan
from bioplaus.neurons.step import neuron_step
from bioplaus.neurons.surrogate import get as get_surrogate


class BaseNeuron(nn.Module, metaclass=abc.ABCMeta):
    """Shared charge/fire/reset plumbing; subclasses define the charge coefficients (a, b)."""

    pure_step = True          # dynamics are `step` with input-independent (a, b) (see the module docstring)
    needs_size = False        # built with the layer width (learnable per-channel parameters)

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0, detach_reset: bool = False,
                 surrogate: str = "atan", alpha: float | None = None, step_mode: str = "m",
                 backend: str = "auto"):
        super().__init__()
        if step_mode not in ("m", "s"):
            raise ConfigError(f"step_mode must be 'm' (multi-step [T, B, ...]) or 's' (single-step), "
                              f"got '{step_mode}'")
        if v_reset is not None and v_threshold <= v_reset:
            raise ConfigError(f"v_threshold ({v_threshold}) must exceed v_reset ({v_reset})")
        if backend not in ("auto", *BACKENDS):      # the device is checked when the neuron runs
            raise ConfigError(f"unknown neuron backend '{backend}': choose one of {', '.join(['auto', *BACKENDS])}")
        spec = get_surrogate(surrogate)
        self.v_threshold, self.v_reset, self.detach_reset = float(v_threshold), v_reset, bool(detach_reset)
        self.surrogate, self.alpha = spec.name, spec.alpha if alpha is None else float(alpha)
        self.step_mode, self.backend = step_mode, backend
        self.v: Tensor | None = None
        #: float64 [T] accumulator of spikes per step, filled inside the kernel when set (bioplaus.stats)
        self.spike_counts: Tensor | None = None
        self._step = 0

    @abc.abstractmethod
    def coefficients(self, x: Tensor | None = None) -> tuple[float | Tensor, float | Tensor]:
        """(a, b) of the shifted charge u_h = a * u + b * x; x [T, B, ...] is the input, read only by neurons
        whose leak depends on it (gated LIF)."""

    @property
    def _offset(self) -> float:
        return 0.0 if self.v_reset is None else float(self.v_reset)

    @property
    def shifted_threshold(self) -> float:
        """The threshold of the shifted membrane u = v - v_reset: v_threshold - v_reset."""
        return self.v_threshold - self._offset

    @property
    def reset_mode(self) -> str:
        """'hard' (to v_reset) or 'soft' (v_reset=None: subtract the threshold)."""
        return "soft" if self.v_reset is None else "hard"

    def step(self, u: Tensor | None, x: Tensor, a: float | Tensor | None = None,
             b: float | Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One step of this neuron from shifted membrane u (None = rest) and input x [B, ...]:
        (spikes, next shifted membrane, charge h), by `neuron_step`. Does not touch `.v`.
        a, b: the charge coefficients, default `coefficients()`."""
        if a is None or b is None:
            a, b = self.coefficients(x.unsqueeze(0))
            a, b = (c[0] if isinstance(c, Tensor) and c.dim() == x.dim() + 1 else c for c in (a, b))
        return neuron_step(u, x, a, b, self.shifted_threshold, self.reset_mode, self.detach_reset,
                           self.surrogate, self.alpha)

    def reset(self) -> None:
        """Forget the membrane state (start of a new sequence in single-step mode)."""
        self.v = None
        self._step = 0

    def _counts(self) -> Tensor | None:
        c = self.spike_counts
        if c is None or self.step_mode == "m":
            return c
        i = self._step % len(c)                      # single-step: this call's slot
        self._step += 1
        return c[i:i + 1]

    def forward(self, x: Tensor) -> Tensor:
        if self.step_mode == "s":
            return self._single_step(x)
        a, b = self.coefficients(x)
        try:
            s, u = leaky_scan(x, a, b, threshold=self.shifted_threshold, reset=self.reset_mode,
                              detach_reset=self.detach_reset, surrogate=self.surrogate, alpha=self.alpha,
                              backend=self.backend, counts=self._counts())
        except BackendError as e:
            raise ConfigError(str(e)) from None
        self.v = u + self._offset
        return s

    def _single_step(self, x: Tensor) -> Tensor:
        """step_mode="s": x [B, ...] -> spikes [B, ...], membrane carried in `.v`."""
        u = None if self.v is None else self.v - self._offset
        s, u, _ = self.step(u, x)
        counts = self._counts()
        if counts is not None:
            counts += s.detach().sum().to(counts)
        self.v = u + self._offset
        return s

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}, "
                f"surrogate={self.surrogate}({self.alpha}), step_mode={self.step_mode}, backend={self.backend}")


class IFNode(BaseNeuron):
    """Integrate-and-fire: h_t = v_{t-1} + x_t."""

    def coefficients(self, x=None):
        return 1.0, 1.0


class LIFNode(BaseNeuron):
    """Leaky integrate-and-fire with a fixed time constant tau (> 1, in time steps)."""

    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kw):
        super().__init__(**kw)
        if tau <= 1.0:
            raise ConfigError(f"LIF tau must be > 1 time step, got {tau}")
        self.tau, self.decay_input = float(tau), bool(decay_input)

    def coefficients(self, x=None):
        return 1.0 - 1.0 / self.tau, (1.0 / self.tau if self.decay_input else 1.0)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class PLIFNode(BaseNeuron):
    """Parametric LIF (Fang et al. 2021): 1/tau = sigmoid(w) with w a learnable scalar."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, tau: float | None = None, **kw):
        super().__init__(**kw)
        init_tau = init_tau if tau is None else tau      # `tau` (the LIF config key) sets the initial value
        if init_tau <= 1.0:
            raise ConfigError(f"PLIF init_tau must be > 1 time step, got {init_tau}")
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))
        self.decay_input = bool(decay_input)

    @property
    def tau(self) -> float:
        return float(1.0 / torch.sigmoid(self.w.detach()))

    def coefficients(self, x=None):
        k = torch.sigmoid(self.w)
        return 1.0 - k, (k if self.decay_input else 1.0)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.3f}, decay_input={self.decay_input}, " + super().extra_repr()


class GatedLIFNode(BaseNeuron):
    """LIF whose leak is gated by its own input, per element and step (a data-dependent decay):

        a_t = sigmoid(w * x_t + c)        w, c learnable per channel (channel = dim 2 of [T, B, C, ...])
        h_t = a_t * v_{t-1} + (1 - a_t) * x_t

    With w = 0 and c = log(init_tau - 1) it starts as LIF(tau=init_tau, decay_input). The gate's
    gradients come from leaky_scan's per-element decay gradient."""

    needs_size = True
    pure_step = False

    def __init__(self, size: int, init_tau: float = 2.0, tau: float | None = None, decay_input: bool = True, **kw):
        super().__init__(**kw)
        init_tau = init_tau if tau is None else tau      # `tau` (the LIF config key) sets the initial value
        if not decay_input:
            raise ConfigError("gated LIF always gates its input by (1 - a_t): set decay_input=true")
        if init_tau <= 1.0:
            raise ConfigError(f"gated LIF init_tau must be > 1 time step, got {init_tau}")
        self.w = nn.Parameter(torch.zeros(int(size)))
        self.c = nn.Parameter(torch.full((int(size),), math.log(init_tau - 1.0)))

    def coefficients(self, x: Tensor | None = None):
        """(a, 1 - a), a per element of the input x [T, B, C, ...]."""
        if x is None:
            raise ConfigError("the gated LIF's leak depends on its input: call coefficients(x) with x [T, B, C, ...]")
        shape = (-1,) + (1,) * (x.dim() - 3) if x.dim() > 3 else (-1,)
        a = torch.sigmoid(self.w.view(shape) * x + self.c.view(shape))
        return a, 1 - a


NEURONS: dict[str, type[BaseNeuron]] = {"if": IFNode, "lif": LIFNode, "plif": PLIFNode, "gated_lif": GatedLIFNode}
