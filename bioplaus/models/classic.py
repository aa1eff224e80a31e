"""Classic layered networks: MLP, ConvNet (static, ReLU), SpikingMLP, SpikingConvNet.

The skeleton they share (`Layered`, `Readout`, `pool`) is `bioplaus.models.base`. Spiking models put
LIF-family neurons between layers and run T steps; their encoding is direct, rate or latency from static data,
or 'given' for data that already are spike trains [B, T, ...], e.g. `data=spike_timing`. They read out the
time-average of a linear head on the spikes (logits = mean_t W s_t + c).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models.base import Layered, Readout, check_widths, flat_size, linear_per_step, make_activation
from bioplaus.neurons import make_neuron
from bioplaus.neurons.encoding import Encoder, per_step, step_shape


class WSConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel: W_o -> g_o (W_o - mean) / (std sqrt(fan_in)),
    so a unit-variance input gives an output of variance ~g_o^2 whatever the width (g: learnable gain [C_out])."""

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int = 0, gain: float = 1.0, eps: float = 1e-5):
        super().__init__(c_in, c_out, kernel, padding=padding, bias=True)
        self.gain = nn.Parameter(torch.full((c_out,), float(gain)))
        self.eps = eps

    def standardized_weight(self) -> Tensor:
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean((1, 2, 3), keepdim=True)
        std = w.std((1, 2, 3), keepdim=True, unbiased=False)
        return self.gain.view(-1, 1, 1, 1) * (w - mean) / (std * math.sqrt(fan_in) + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


NORMS = ("batch", "none", "ws")


class Dense(nn.Module):
    """Flatten -> Linear -> activation: [B, ...] -> [B, out]."""

    def __init__(self, d_in: int, d_out: int, activation: str = "relu"):
        super().__init__()
        self.linear, self.act = nn.Linear(d_in, d_out), make_activation(activation)

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.linear(h.flatten(1)))


class SpikingDense(nn.Module):
    """Linear -> spiking neuron over time: [T, B, ...] -> spikes [T, B, out]. A time-invariant input (direct
    encoding) gets its current computed once and broadcast over T (`linear_per_step`).

    Weights start uniform with variance weight_gain^2 / d_in, so the input current has std
    ~ weight_gain * rms(input): with gain 3 a random net fires 5-20% of steps in every layer (with
    PyTorch's default init, gain ~0.6, the second layer of a random spiking MLP stays silent and the
    readout_only control is left at chance)."""

    def __init__(self, d_in: int, d_out: int, neuron: dict, weight_gain: float = 3.0):
        super().__init__()
        self.linear, self.neuron = nn.Linear(d_in, d_out), make_neuron(size=d_out, **neuron)
        nn.init.uniform_(self.linear.weight, -weight_gain * math.sqrt(3 / d_in), weight_gain * math.sqrt(3 / d_in))

    def forward(self, h: Tensor) -> Tensor:
        return self.neuron(linear_per_step(self.linear, h.flatten(2)))


class ConvBlock(nn.Module):
    """Conv3x3 (same padding) -> norm -> activation or neuron -> 2x2 max-pool.
    norm: "batch" (BatchNorm, conv without bias), "none" (no BatchNorm, the conv gets a bias: what an
    energy-based rule such as EP needs) or "ws" (weight standardisation, `WSConv2d`, with a bias). With "none"
    or "ws" no batch statistics stand between conv and neuron: the charge is h_t = a v_{t-1} + b I_t with
    I_t = conv(s_t) + bias, the form TESS's traces need.

    Static: [B, C, H, W] -> [B, C', H/2, W/2]. Spiking: [T, B, C, H, W] -> spikes [T, B, C', H/2, W/2]
    (conv and norm run on the merged [T*B] axis, the conv once when the input repeats one step (direct
    encoding, `per_step`); pooling spikes keeps them binary)."""

    def __init__(self, c_in: int, c_out: int, activation: str = "relu", neuron: dict | None = None,
                 norm: str = "batch", ws_gain: float = 2.0):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown model.norm '{norm}': choose one of {', '.join(NORMS)}")
        self.conv = WSConv2d(c_in, c_out, 3, 1, ws_gain) if norm == "ws" else \
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none")
        self.norm = nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity()
        self.spiking = neuron is not None
        self.act = make_neuron(size=c_out, **neuron) if self.spiking else make_activation(activation)
        self.pool = nn.MaxPool2d(2)

    def forward(self, h: Tensor) -> Tensor:
        if not self.spiking:
            return self.pool(self.act(self.norm(self.conv(h))))
        T, B = h.shape[:2]
        z = self.norm(per_step(self.conv, h).flatten(0, 1))
        s = self.act(z.unflatten(0, (T, B)))
        return self.pool(s.flatten(0, 1)).unflatten(0, (T, B))


class MLP(Layered):
    """x [B, ...] -> Dense(hidden[0]) -> ... -> Linear(n_classes)."""

    name = "mlp"

    def __init__(self, in_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu"):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        widths = [flat_size(in_shape), *check_widths("hidden", hidden)]
        self.layers = nn.ModuleList(Dense(i, o, activation) for i, o in zip(widths, widths[1:]))
        self.dims, self.n_classes = widths[1:], int(n_classes)
        self.head = Readout(widths[-1], self.n_classes, spiking=False)


def _conv_dims(in_shape: Sequence[int], channels: Sequence[int]) -> tuple[int, list[int]]:
    if len(in_shape) != 3:
        raise ConfigError(f"conv models need image data [C, H, W], got input shape {list(in_shape)}")
    c, h, w = in_shape
    dims = []
    for ch in channels:
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(f"too many conv blocks ({len(channels)}) for {in_shape[1]}x{in_shape[2]} "
                              "images: each block halves the size; use fewer model.channels")
        dims.append(ch * h * w)
    return c, dims


class ConvNet(Layered):
    """ConvBlock(channels[0]) -> ... -> Linear(n_classes) on the flattened last feature map."""

    name = "convnet"

    def __init__(self, in_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (16, 32),
                 activation: str = "relu", norm: str = "batch"):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        chans = check_widths("channels", channels)
        c, self.dims = _conv_dims(in_shape, chans)
        self.norm = norm
        self.layers = nn.ModuleList(ConvBlock(i, o, activation, norm=norm) for i, o in zip([c, *chans], chans))
        self.n_classes = int(n_classes)
        self.head = Readout(self.dims[-1], self.n_classes, spiking=False)


class SpikingLayered(Layered):
    """Base of spiking models that encode static input over T steps (the encoder sets `T`)."""

    spiking = True

    def _setup_time(self, T: int, encoding: str, neuron: dict | None) -> dict:
        self.encoder = Encoder(T, encoding)
        self.T = self.encoder.T
        return {"kind": "lif", **(dict(neuron) if neuron else {})}


class SpikingMLP(SpikingLayered):
    """Encoder -> SpikingDense(hidden[0]) -> ... -> time-averaged Linear readout."""

    name = "spiking_mlp"

    def __init__(self, in_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (256, 256),
                 T: int = 8, encoding: str = "direct", neuron: dict | None = None, weight_gain: float = 3.0):
        super().__init__()
        nrn = self._setup_time(T, encoding, neuron)
        self.in_shape = tuple(int(d) for d in in_shape)
        widths = [flat_size(step_shape(self.in_shape, self.T, encoding)), *check_widths("hidden", hidden)]
        self.layers = nn.ModuleList(SpikingDense(i, o, nrn, weight_gain) for i, o in zip(widths, widths[1:]))
        self.dims, self.n_classes = widths[1:], int(n_classes)
        self.head = Readout(widths[-1], self.n_classes, spiking=True)


class SpikingConvNet(SpikingLayered):
    """Encoder -> spiking ConvBlock(channels[0]) -> ... -> time-averaged Linear readout.
    norm="none": no BatchNorm, the convs get biases; "ws": weight-standardised convs (gain `ws_gain`) with
    biases (ConvBlock). Without BatchNorm TESS trains it (`bioplaus.rules.tess`)."""

    name = "spiking_convnet"

    def __init__(self, in_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (16, 32),
                 T: int = 4, encoding: str = "direct", neuron: dict | None = None, norm: str = "batch",
                 ws_gain: float = 2.0):
        super().__init__()
        nrn = self._setup_time(T, encoding, neuron)
        self.in_shape = tuple(int(d) for d in in_shape)
        chans = check_widths("channels", channels)
        c, self.dims = _conv_dims(step_shape(self.in_shape, self.T, encoding), chans)
        self.norm = norm
        self.layers = nn.ModuleList(ConvBlock(i, o, neuron=nrn, norm=norm, ws_gain=ws_gain)
                                    for i, o in zip([c, *chans], chans))
        self.n_classes = int(n_classes)
        self.head = Readout(self.dims[-1], self.n_classes, spiking=True)


__all__ = ["MLP", "NORMS", "ConvBlock", "ConvNet", "Dense", "SpikingConvNet", "SpikingDense", "SpikingLayered",
           "SpikingMLP", "WSConv2d"]
