"""SpikingJelly and snnTorch neurons behind bioplaus's neuron interface (same config key `neuron.kind`).

Every adapter is a `bioplaus.neurons.native.BaseNeuron`: multi-step x [T, B, ...] -> spikes [T, B, ...]
(step_mode="m", default; "s" keeps the membrane across calls until `.reset()`), the last membrane
in `.v`, and spikes per step added to `.spike_counts` when the statistics layer sets it, so
`bioplaus.stats.collect` counts them like native neurons. Only the charge/fire/reset is delegated.

    kind             wraps                                                      keys (besides the shared ones)
    sj_if            spikingjelly.activation_based.neuron.IFNode(step_mode='m')           -
    sj_lif           spikingjelly.activation_based.neuron.LIFNode(step_mode='m')          tau, decay_input
    sj_plif          spikingjelly.activation_based.neuron.ParametricLIFNode('m')          init_tau (or tau), decay_input
    snntorch_leaky   snntorch.Leaky, looped over T                                        tau, decay_input

Shared keys: v_threshold, v_reset (null = soft reset), detach_reset, surrogate, alpha, step_mode,
backend (must stay "auto": the library picks its own kernel). Surrogates: atan and sigmoid map to
SpikingJelly's ATan / Sigmoid; snnTorch also takes fast_sigmoid (its slope = alpha).

snnTorch's Leaky, for LIF(tau, decay_input, v_reset=0 or None):

    mem_t = beta * mem_{t-1} + b * x_t,  beta = 1 - 1/tau,  b = 1/tau (decay_input) or 1
    spk_t = H(mem_t - v_threshold)   (snnTorch fires on mem > threshold, strictly: the two differ only
                                      on exact ties)
    hard reset (v_reset=0)   -> reset_mechanism="zero"; detach_reset=True -> reset_delay=True (snnTorch
                                zeroes the membrane at the next step with a detached reset signal),
                                detach_reset=False -> reset_delay=False (reset through the spike)
    soft reset (v_reset=None) -> snnTorch's own reset_mechanism="subtract" (reset_delay=True, detached):
                                mem_t = beta * mem_{t-1} + b * x_t - v_threshold * spk_{t-1}, i.e. the
                                threshold is subtracted *after* the decay. This is not LIF's soft reset
                                (v_t = h_t - v_threshold * s_t, decayed at the next step), and snnTorch's
                                immediate variant (reset_delay=False) skips a reset whenever the membrane
                                stays above threshold after one, so neither matches; needs detach_reset=true.

so with matching settings (hard reset) each adapter gives the spikes of `bioplaus.neurons.LIFNode`
(the sj_* adapters also with soft reset); tests check it. Adapters are not `pure_step`: their library runs
the dynamics, so rules that replay the charge themselves (TESS) refuse them.
A missing library gives one ConfigError naming the install command.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bioplaus.errors import ConfigError, require
from bioplaus.neurons.native import BaseNeuron

INSTALL = {"spikingjelly": "pip install --no-deps spikingjelly==2.0.0 loguru tqdm",
           "snntorch": "pip install snntorch"}


def _require(module: str, kind: str):
    return require(module, f"neuron kind '{kind}' needs", f"{INSTALL[module.split('.')[0]]} (or pick a native neuron: "
                   "if, lif, plif, gated_lif)")


class _Adapter(BaseNeuron):
    """Shared plumbing: mode handling and spike counting around a library's multi-step `_run`."""

    kind = "?"
    pure_step = False

    def __init__(self, backend: str = "auto", **kw):
        if backend != "auto":
            raise ConfigError(f"neuron kind '{self.kind}' runs its library's own kernel: set neuron.backend=auto "
                              f"(got '{backend}')")
        super().__init__(backend="auto", **kw)

    def _run(self, seq: Tensor, fresh: bool) -> tuple[Tensor, Tensor]:
        """seq [T, ...] -> (spikes [T, ...], last membrane [...]); fresh: start from the rest state.
        The interface each adapter implements (_SpikingJelly, _SnnTorch); never called on _Adapter itself."""
        raise TypeError(f"{type(self).__name__} must implement _run (see _SpikingJelly, _SnnTorch)")

    def forward(self, x: Tensor) -> Tensor:
        multi = self.step_mode == "m"
        seq = x if multi else x.unsqueeze(0)
        s, self.v = self._run(seq, fresh=multi or self.v is None)
        counts = self._counts()
        if counts is not None:
            counts += s.detach().flatten(1).sum(1).to(counts)
        return s if multi else s[0]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, " + super().extra_repr()


class _SpikingJelly(_Adapter):
    """A SpikingJelly multi-step node in `.node`; `.node.reset()` starts a sequence."""

    SURROGATES = ("atan", "sigmoid")
    node_class = "?"

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0, detach_reset: bool = False,
                 surrogate: str = "atan", alpha: float | None = None, step_mode: str = "m", backend: str = "auto",
                 **node_kw):
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate,
                         alpha=alpha, step_mode=step_mode, backend=backend)
        neuron = _require("spikingjelly.activation_based.neuron", self.kind)
        sg = _require("spikingjelly.activation_based.surrogate", self.kind)
        if self.surrogate not in self.SURROGATES:
            raise ConfigError(f"neuron kind '{self.kind}' supports surrogates {', '.join(self.SURROGATES)}, "
                              f"got '{self.surrogate}'")
        fn = {"atan": sg.ATan, "sigmoid": sg.Sigmoid}[self.surrogate](alpha=self.alpha)
        self.node = getattr(neuron, self.node_class)(**node_kw, v_threshold=self.v_threshold, v_reset=v_reset,
                                                     surrogate_function=fn, detach_reset=self.detach_reset,
                                                     step_mode="m")

    def _run(self, seq, fresh):
        if fresh:
            self.node.reset()
        return self.node(seq), self.node.v

    def reset(self) -> None:
        super().reset()
        self.node.reset()


class SJIFNode(_SpikingJelly):
    """SpikingJelly IFNode: h_t = v_{t-1} + x_t."""

    kind, node_class = "sj_if", "IFNode"

    def coefficients(self, x=None):
        return 1.0, 1.0


class SJLIFNode(_SpikingJelly):
    """SpikingJelly LIFNode(tau, decay_input)."""

    kind, node_class = "sj_lif", "LIFNode"

    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kw):
        if tau <= 1.0:
            raise ConfigError(f"LIF tau must be > 1 time step, got {tau}")
        super().__init__(tau=float(tau), decay_input=bool(decay_input), **kw)

    def coefficients(self, x=None):
        k = 1.0 / self.node.tau
        return 1.0 - k, (k if self.node.decay_input else 1.0)


class SJPLIFNode(_SpikingJelly):
    """SpikingJelly ParametricLIFNode: 1/tau = sigmoid(w), w learnable (`.node.w`)."""

    kind, node_class = "sj_plif", "ParametricLIFNode"

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, tau: float | None = None, **kw):
        init_tau = init_tau if tau is None else tau
        if init_tau <= 1.0:
            raise ConfigError(f"PLIF init_tau must be > 1 time step, got {init_tau}")
        super().__init__(init_tau=float(init_tau), decay_input=bool(decay_input), **kw)

    def coefficients(self, x=None):
        k = torch.sigmoid(self.node.w)
        return 1.0 - k, (k if self.node.decay_input else 1.0)


class SnnTorchLeaky(_Adapter):
    """snnTorch `Leaky` looped over T (see the module docstring for the parameter mapping)."""

    kind = "snntorch_leaky"
    SURROGATES = ("atan", "sigmoid", "fast_sigmoid")

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, detach_reset: bool = False, surrogate: str = "atan",
                 alpha: float | None = None, step_mode: str = "m", backend: str = "auto"):
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate,
                         alpha=alpha, step_mode=step_mode, backend=backend)
        snn = _require("snntorch", self.kind)
        sg = _require("snntorch.surrogate", self.kind)
        if tau <= 1.0:
            raise ConfigError(f"LIF tau must be > 1 time step, got {tau}")
        if v_reset not in (None, 0.0):
            raise ConfigError(f"snntorch_leaky resets to 0 (v_reset=0.0) or by subtraction (v_reset=null), "
                              f"got v_reset={v_reset}")
        if v_reset is None and not self.detach_reset:
            raise ConfigError("snntorch_leaky's subtract reset (v_reset=null) always detaches the reset: "
                              "set detach_reset=true, or v_reset=0.0 for a hard reset")
        if self.surrogate not in self.SURROGATES:
            raise ConfigError(f"neuron kind '{self.kind}' supports surrogates {', '.join(self.SURROGATES)}, "
                              f"got '{self.surrogate}'")
        fn = {"atan": lambda a: sg.atan(alpha=a), "sigmoid": lambda a: sg.sigmoid(slope=a),
              "fast_sigmoid": lambda a: sg.fast_sigmoid(slope=a)}[self.surrogate](self.alpha)
        self.tau, self.decay_input = float(tau), bool(decay_input)
        self.delayed = self.detach_reset
        self.leaky = snn.Leaky(beta=1.0 - 1.0 / self.tau, threshold=self.v_threshold, spike_grad=fn,
                               reset_mechanism="subtract" if v_reset is None else "zero",
                               reset_delay=self.delayed)
        self._mem: Tensor | None = None

    def coefficients(self, x=None):
        return 1.0 - 1.0 / self.tau, (1.0 / self.tau if self.decay_input else 1.0)

    def _run(self, seq, fresh):
        b = self.coefficients()[1]
        mem = torch.zeros_like(seq[0]) if fresh or self._mem is None else self._mem
        spikes = []
        for x_t in seq.unbind(0):
            s_t, mem = self.leaky(x_t * b, mem)
            spikes.append(s_t)
        self.leaky.mem = torch.zeros(0, device=seq.device)     # drop snnTorch's reference to the graph
        self._mem = mem
        s = torch.stack(spikes)
        if self.delayed:                                      # the membrane after the pending reset
            mem = mem * (1 - s[-1]) if self.v_reset is not None else mem - self.v_threshold * s[-1]
        return s, mem

    def reset(self) -> None:
        super().reset()
        self._mem = None


ADAPTERS: dict[str, type[BaseNeuron]] = {"sj_if": SJIFNode, "sj_lif": SJLIFNode, "sj_plif": SJPLIFNode,
                                         "snntorch_leaky": SnnTorchLeaky}
