"""A recurrent spiking network: one recurrent LIF (or ALIF) layer and a time-averaged linear readout.

The Layered skeleton (see `bioplaus.models.base`) with a single layer:

    h_0    = model.encode(x)                              [T, B, F]   (F = prod of one step's input shape)
    z      = model.layers[0](h_0)                         spikes [T, B, H]
    logits = model.head(z) = W_out mean_t(z_t) + b_out    [B, C]   (t over the last `readout_steps` steps;
                                                                    default all T: a decision window read
                                                                    after a delay, as in Bellec et al. 2020)

`RecurrentLIF` (H neurons, input weights W_in [H, F] with bias b [H], recurrent weights W_rec [H, H] with
zero diagonal; t = 0..T-1, z_{-1} = 0, v_{-1} = 0):

    I_t = W_in x_t + b + W_rec z_{t-1}                    input current            [B, H]
    h_t = a v_{t-1} + c I_t                               charge (pre-reset membrane)
    z_t = H(h_t - theta)                                  spike (surrogate gradient g' of the neuron's surrogate)
    v_t = h_t - theta z_t                                 soft reset, its gradient path detached

with a = 1 - 1/tau and c = 1 (default, e-prop's LIF) or 1/tau (decay_input=True, SpikingJelly's LIF).

ALIF (`adaptation` beta > 0; Bellec et al. 2020, "A solution to the learning dilemma for recurrent networks
of spiking neurons"): each spike raises the neuron's threshold, which relaxes back with time constant
`tau_adapt` (rho = exp(-1/tau_adapt)); q_{-1} = 0:

    A_t = theta + beta q_{t-1}                            adaptive threshold
    z_t = H(h_t - A_t)                                    spike (surrogate g'(h_t - A_t))
    v_t = h_t - theta z_t                                 soft reset by the base threshold, detached (as LIF)
    q_t = rho q_{t-1} + z_t                               adaptation variable (its path through z_t is kept)

The neuron stays `LIFNode` (spike statistics and kernels as for LIF): it runs on the shifted membrane
h'_t = h_t - beta q_{t-1} with threshold theta, which its own charge h'_t = a v'_{t-1} + c I'_t produces from the
input I'_t = I_t - (beta / c)(q_{t-1} - a q_{t-2}) (induction: v'_t = v_t - beta q_{t-1}). `on_chunk`'s h is
then h - beta q_{t-1}, so h - theta is the neuron's distance to its adaptive threshold either way.
The neuron is `bioplaus.neurons.LIFNode` in single-step mode (so the statistics layer counts its spikes
inside the kernel as for every spiking layer). Why soft reset with a detached reset path: it is e-prop's
LIF (Bellec et al. 2020), it keeps the pre-reset membrane recoverable from the state (h_t = v_t + theta z_t),
and it makes the membrane's own Jacobian dh_t/dh_{t-1} = a a constant, so e-prop's eligibility traces
factorise into presynaptic traces (see `bioplaus.rules.eprop`). A hard reset would zero the trace after
every spike and lose h_t from the state. The forward is differentiable through time (rule=backprop is BPTT on this net,
recurrent path included).

`forward(h, on_chunk=None)`: h [T, B, ...] -> spikes [T, B, H]. Online rules pass an iterable of chunks of
consecutive steps [c, B, ...] and a callback `on_chunk(t0, x [c, B, F], z [c, B, H], h [c, B, H])` called
after each chunk (t0 its first step; h the pre-reset membranes); nothing longer than a chunk is then built
and the last spikes z_{T-1} [B, H] are returned. Each chunk's input currents W_in x_t + b are one product over
its c * B rows (computed once when the input repeats one step, direct encoding); the recurrence runs step by
step.

Initialisation: W_in uniform with variance weight_gain^2 / F (input current std ~ weight_gain * rms(x_t)),
W_rec uniform with variance recurrent_gain^2 / H and zero diagonal. With the defaults (tau 4, gain 1.25) a
random net fires ~23% of its steps on rate-coded digits, ~21% on rate-coded Fashion-MNIST and ~4% on the
sparse `spike_timing` trains (one spike per channel per sample); tests/test_rule_eprop.py checks the range.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models.base import Layered, Readout, linear_per_step
from bioplaus.neurons import LIFNode
from bioplaus.neurons.encoding import Encoder, step_shape

ChunkCallback = Callable[[int, Tensor, Tensor, Tensor], None]


class RecurrentLIF(nn.Module):
    """Recurrent LIF layer (soft reset, reset path detached): [T, B, ...] -> spikes [T, B, H]."""

    def __init__(self, d_in: int, d_hidden: int, tau: float = 4.0, v_threshold: float = 1.0,
                 decay_input: bool = False, surrogate: str = "atan", alpha: float | None = None,
                 weight_gain: float = 1.25, recurrent_gain: float = 1.0, backend: str = "auto",
                 adaptation: float = 0.0, tau_adapt: float = 20.0):
        super().__init__()
        if adaptation < 0 or tau_adapt <= 0:
            raise ConfigError(f"model.adaptation must be >= 0 and model.tau_adapt > 0 (steps), got {adaptation}, "
                              f"{tau_adapt}")
        self.adaptation, self.tau_adapt = float(adaptation), float(tau_adapt)
        if d_in < 1 or d_hidden < 2:
            raise ConfigError(f"a recurrent LIF layer needs d_in >= 1 and hidden >= 2, got {d_in}, {d_hidden}")
        if weight_gain <= 0 or recurrent_gain < 0:
            raise ConfigError(f"model.weight_gain must be > 0 and model.recurrent_gain >= 0, got {weight_gain}, "
                              f"{recurrent_gain}")
        self.input = nn.Linear(d_in, d_hidden)
        self.recurrent = nn.Parameter(torch.empty(d_hidden, d_hidden))
        self.register_buffer("mask", 1 - torch.eye(d_hidden), persistent=False)
        self.neuron = LIFNode(tau=tau, decay_input=decay_input, v_threshold=v_threshold, v_reset=None,
                              detach_reset=True, surrogate=surrogate, alpha=alpha, step_mode="s", backend=backend)
        bound_in, bound_rec = weight_gain * math.sqrt(3 / d_in), recurrent_gain * math.sqrt(3 / d_hidden)
        with torch.no_grad():
            nn.init.uniform_(self.input.weight, -bound_in, bound_in)
            nn.init.uniform_(self.recurrent, -bound_rec, bound_rec)
            self.recurrent.mul_(self.mask)

    @property
    def threshold(self) -> float:
        return self.neuron.v_threshold

    def coefficients(self) -> tuple[float, float]:
        """(a, c) of the charge h_t = a v_{t-1} + c I_t."""
        a, c = self.neuron.coefficients()
        return float(a), float(c)

    @property
    def rho(self) -> float:
        """The adaptation variable's decay per step, exp(-1 / tau_adapt) (ALIF)."""
        return math.exp(-1.0 / self.tau_adapt)

    def recurrent_weight(self) -> Tensor:
        """W_rec [H, H] with its diagonal held at zero (no self-connection)."""
        return self.recurrent * self.mask

    def forward(self, h: Tensor | Iterable[Tensor], on_chunk: ChunkCallback | None = None) -> Tensor:
        W = self.recurrent_weight()
        self.neuron.reset()
        out, z, t0 = [], None, 0
        beta, (a, c) = self.adaptation, self.coefficients()
        q = q_prev = None                                 # ALIF: q_{t-1}, q_{t-2}
        for chunk in ([h] if isinstance(h, Tensor) else h):
            x = chunk.flatten(2)
            zs, hs = [], []
            for i_t in linear_per_step(self.input, x):   # the chunk's input currents in one product
                if z is not None:
                    i_t = torch.addmm(i_t, z, W.t())
                if beta and q is not None:                # the shifted membrane's input (module docstring)
                    i_t = i_t - (beta / c) * (q if q_prev is None else q - a * q_prev)
                z = self.neuron(i_t)
                if beta:
                    q, q_prev = (z if q is None else self.rho * q + z), q
                zs.append(z)
                if on_chunk is not None:
                    hs.append(self.neuron.v + self.threshold * z)
            if on_chunk is None:
                out += zs
            elif zs:
                on_chunk(t0, x, torch.stack(zs), torch.stack(hs))
            t0 += len(zs)
        if z is None:
            raise ConfigError("a recurrent LIF layer needs at least one time step of input")
        return torch.stack(out) if on_chunk is None else z

    def extra_repr(self) -> str:
        return f"in={self.input.in_features}, hidden={self.recurrent.shape[0]}"


class RecurrentSpikingNet(Layered):
    """Encoder -> RecurrentLIF(hidden) -> time-averaged linear readout (see module docstring)."""

    name = "recurrent_spiking"
    spiking = True

    def __init__(self, in_shape: Sequence[int], n_classes: int, hidden: int = 128, T: int = 10,
                 encoding: str = "rate", tau: float = 4.0, v_threshold: float = 1.0, decay_input: bool = False,
                 surrogate: str = "atan", alpha: float | None = None, weight_gain: float = 1.25,
                 recurrent_gain: float = 1.0, backend: str = "auto", adaptation: float = 0.0,
                 tau_adapt: float = 20.0, readout_steps: int | None = None):
        super().__init__()
        if isinstance(hidden, (list, tuple)):
            if len(hidden) != 1:
                raise ConfigError(f"model.hidden is one width for the single recurrent layer, got {list(hidden)}")
            hidden = hidden[0]
        self.encoder = Encoder(T, encoding)
        self.T = self.encoder.T
        self.in_shape = tuple(int(d) for d in in_shape)
        d_in = int(math.prod(step_shape(self.in_shape, self.T, encoding)))
        self.layers = nn.ModuleList([RecurrentLIF(d_in, int(hidden), tau, v_threshold, decay_input, surrogate,
                                                  alpha, weight_gain, recurrent_gain, backend, adaptation,
                                                  tau_adapt)])
        self.dims, self.n_classes = [int(hidden)], int(n_classes)
        if readout_steps is not None and not 1 <= int(readout_steps) <= self.T:
            raise ConfigError(f"model.readout_steps must be in 1..T={self.T} (the last steps the readout averages) "
                              f"or null (all of them), got {readout_steps}")
        self.readout_steps = int(readout_steps) if readout_steps else self.T
        self.head = Readout(int(hidden), self.n_classes, spiking=True, last=self.readout_steps)



__all__ = ["RecurrentLIF", "RecurrentSpikingNet"]
