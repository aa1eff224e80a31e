"""SpikeGPT-style spiking RWKV block (Zhu et al. 2023, "SpikeGPT"): RWKV-4 time and channel mixing with
spiking neurons on the residual branches, the token axis as the SNN time axis.

Time-major throughout: x [T, B, C] with T = the sequence length. Token shift: x'_t = x_{t-1} (x'_0 = 0),
and each projection reads a learned per-channel mix of the two:  x_mu = mu * x_t + (1 - mu) * x'_t.

    TimeMix:     k = W_k x_mk,  v = W_v x_mv,  r = W_r x_mr
                 out = W_o( sigmoid(r) * wkv(k, v; w = exp(time_decay), u = time_first) )
                 (wkv: bioplaus.kernels.wkv, the stable running-max recurrence)
    ChannelMix:  out = sigmoid(W_r x_mr) * W_v( relu(W_k x_mk)^2 )            (hidden = ffn_mult * C)
    Block:       x = x + SN_1( TimeMix( LN_1(x) ) );   x = x + SN_2( ChannelMix( LN_2(x) ) )

SN is a multi-step spiking neuron over the tokens (bioplaus.neurons.make_neuron, LIF by default), so
each residual branch adds binary spikes [T, B, C] to the stream. The output projections start with
standard deviation `out_gain` / sqrt(fan-in): with the default 8 the branch currents have std ~1.2 and a
random block's LIF neurons fire on 6-10% of the tokens (text data, D = 128); with PyTorch's default
init (gain ~0.6) they fire on ~0.02% and the spikes carry nothing at the start.

Initialisation (RWKV-4's idea, own constants): per-channel decays time_decay spread from -6 to 1 over
the channels (memories from ~400 tokens down to ~1 token), time_first = log(0.3), and mixing
coefficients mu ramping over the channels, shallower in deeper layers.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bioplaus.blocks.common import make_norm
from bioplaus.kernels.wkv import wkv
from bioplaus.neurons import make_neuron


def token_shift(x: Tensor) -> Tensor:
    """x [T, B, C] -> x_{t-1} [T, B, C] (zeros at t = 0)."""
    return torch.cat([torch.zeros_like(x[:1]), x[:-1]], 0)


def _ramp(dim: int, power: float) -> Tensor:
    return (torch.arange(dim, dtype=torch.float32) / dim) ** power


class _Mix(nn.Module):
    """Learned token-shift mixes: one mu [C] per name; mix(x) -> {name: mu x_t + (1 - mu) x_{t-1}}."""

    def __init__(self, dim: int, names: tuple[str, ...], depth_ratio: float):
        super().__init__()
        power = 1.0 - 0.5 * depth_ratio                       # deeper layers mix in more of the current token
        self.mu = nn.ParameterDict({n: nn.Parameter(_ramp(dim, power * (0.5 + 0.5 * i)))
                                    for i, n in enumerate(names)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        prev = token_shift(x)
        return {n: prev + mu * (x - prev) for n, mu in self.mu.items()}


def _init_out(linear: nn.Linear, gain: float) -> None:
    nn.init.normal_(linear.weight, std=float(gain) / math.sqrt(linear.in_features))


class TimeMix(nn.Module):
    """RWKV-4 time mixing: [T, B, C] -> [T, B, C] (see the module docstring)."""

    def __init__(self, dim: int, depth_ratio: float = 0.0, out_gain: float = 8.0):
        super().__init__()
        self.mix = _Mix(dim, ("k", "v", "r"), depth_ratio)
        self.time_decay = nn.Parameter(torch.linspace(-6.0, 1.0, dim))
        self.time_first = nn.Parameter(torch.full((dim,), math.log(0.3)))
        self.key, self.value, self.receptance = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.output = nn.Linear(dim, dim, bias=False)
        _init_out(self.output, out_gain)

    def forward(self, x: Tensor) -> Tensor:
        m = self.mix(x)
        k, v, r = self.key(m["k"]), self.value(m["v"]), self.receptance(m["r"])
        return self.output(torch.sigmoid(r) * wkv(k, v, self.time_decay.exp(), self.time_first))


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing (SpikeGPT's SRFFN): [T, B, C] -> [T, B, C]."""

    def __init__(self, dim: int, ffn_mult: float = 4.0, depth_ratio: float = 0.0, out_gain: float = 8.0):
        super().__init__()
        hidden = max(1, int(round(float(ffn_mult) * dim)))
        self.mix = _Mix(dim, ("k", "r"), depth_ratio)
        self.key = nn.Linear(dim, hidden, bias=False)
        self.value = nn.Linear(hidden, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        _init_out(self.value, out_gain)

    def forward(self, x: Tensor) -> Tensor:
        m = self.mix(x)
        return torch.sigmoid(self.receptance(m["r"])) * self.value(torch.relu(self.key(m["k"])).square())


class SpikingRWKVBlock(nn.Module):
    """x + SN(TimeMix(LN x)), then x + SN(ChannelMix(LN x)): [T, B, C] -> [T, B, C]."""

    def __init__(self, dim: int, neuron: dict, ffn_mult: float = 4.0, depth_ratio: float = 0.0,
                 out_gain: float = 8.0, norm: str = "layer"):
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, dim), make_norm(norm, dim)
        self.time_mix = TimeMix(dim, depth_ratio, out_gain)
        self.channel_mix = ChannelMix(dim, ffn_mult, depth_ratio, out_gain)
        self.spike1 = make_neuron(size=dim, **neuron)
        self.spike2 = make_neuron(size=dim, **neuron)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.spike1(self.time_mix(self.norm1(x)))
        return x + self.spike2(self.channel_mix(self.norm2(x)))
