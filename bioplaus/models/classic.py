"""Layered networks: `model.layers` (ModuleList, each h_{l-1} -> h_l) and `model.head` (h_L -> logits).

Every model has the same skeleton so layer-local rules can work on any of them:

    h_0 = model.encode(x)               x [B, C, H, W] (or [B, F])
    h_l = model.layers[l-1](h_{l-1})    static: [B, ...];  spiking: spikes [T, B, ...] (time-major)
    logits = model.head(h_L)            [B, n_classes]; the head pools first: model.pool(h) -> [B, D]

`model.in_shape` is the input shape of one sample (without the batch axis).
`model.dims[l]` is the pooled width of h_{l+1} (what `pool` returns), so a rule can attach its own
per-layer classifiers or feedback weights. Spiking models read out the time-average of a linear
head on the spikes (logits = mean_t W s_t + c).

Models: MLP, ConvNet (static, ReLU), SpikingMLP, SpikingConvNet (LIF-family neurons between layers,
T steps; encoding direct, rate or latency from static data, or 'given' for data that already are spike
trains [B, T, ...], e.g. `data=spike_timing`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from bioplaus.encoding import Encoder, step_shape
from bioplaus.errors import ConfigError
from bioplaus.neurons import make_neuron

NORMS = {"batch": nn.BatchNorm2d, "none": lambda c: nn.Identity()}
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{name}': choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_widths(name: str, widths: Sequence[int]) -> list[int]:
    widths = [int(w) for w in widths]
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"model.{name} must be a non-empty list of positive sizes, got {widths}")
    return widths


class Readout(nn.Module):
    """Head: pool h (flatten; spiking: mean over T first) then one Linear -> logits [B, C]."""

    def __init__(self, in_dim: int, n_classes: int, spiking: bool):
        super().__init__()
        self.spiking = spiking
        self.linear = nn.Linear(in_dim, n_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(pool(h, self.spiking))


def pool(h: Tensor, spiking: bool) -> Tensor:
    """Layer output -> [B, D]: flatten (static) or time-average then flatten (spiking, [T, B, ...])."""
    return (h.mean(0) if spiking else h).flatten(1)


class Layered(nn.Module):
    """Base class: subclasses fill `layers`, `head`, `dims`, `n_classes`, `spiking`."""

    layers: nn.ModuleList
    head: nn.Module
    spiking: bool = False

    def encode(self, x: Tensor) -> Tensor:
        """Input [B, ...] -> h_0 (static: x itself; spiking: [T, B, ...] from the encoder)."""
        return x

    def pool(self, h: Tensor) -> Tensor:
        return pool(h, self.spiking)

    def features(self, x: Tensor) -> Tensor:
        h = self.encode(x)
        for layer in self.layers:
            h = layer(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class Dense(nn.Module):
    """Flatten -> Linear -> activation: [B, ...] -> [B, out]."""

    def __init__(self, d_in: int, d_out: int, activation: str = "relu"):
        super().__init__()
        self.linear, self.act = nn.Linear(d_in, d_out), _activation(activation)

    def forward(self, h: Tensor) -> Tensor:
        return self.act(self.linear(h.flatten(1)))


class SpikingDense(nn.Module):
    """Linear -> spiking neuron over time: [T, B, ...] -> spikes [T, B, out].

    Weights start uniform with variance weight_gain^2 / d_in, so the input current has std
    ~ weight_gain * rms(input): with gain 3 a random net fires 5-20% of steps in every layer (with
    PyTorch's default init, gain ~0.6, the second layer of a random spiking MLP stays silent and the
    readout_only control is left at chance)."""

    def __init__(self, d_in: int, d_out: int, neuron: dict, weight_gain: float = 3.0):
        super().__init__()
        self.linear, self.neuron = nn.Linear(d_in, d_out), make_neuron(size=d_out, **neuron)
        nn.init.uniform_(self.linear.weight, -weight_gain * math.sqrt(3 / d_in), weight_gain * math.sqrt(3 / d_in))

    def forward(self, h: Tensor) -> Tensor:
        return self.neuron(self.linear(h.flatten(2)))


class ConvBlock(nn.Module):
    """Conv3x3 (same padding) -> BatchNorm -> activation or neuron -> 2x2 max-pool.
    norm="none": no BatchNorm and the conv gets a bias (what an energy-based rule such as EP needs).

    Static: [B, C, H, W] -> [B, C', H/2, W/2]. Spiking: [T, B, C, H, W] -> spikes [T, B, C', H/2, W/2]
    (conv and norm run on the merged [T*B] axis; pooling spikes keeps them binary)."""

    def __init__(self, c_in: int, c_out: int, activation: str = "relu", neuron: dict | None = None,
                 norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown model.norm '{norm}': choose one of {', '.join(NORMS)}")
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none")
        self.norm = NORMS[norm](c_out)
        self.spiking = neuron is not None
        self.act = make_neuron(size=c_out, **neuron) if self.spiking else _activation(activation)
        self.pool = nn.MaxPool2d(2)

    def forward(self, h: Tensor) -> Tensor:
        if not self.spiking:
            return self.pool(self.act(self.norm(self.conv(h))))
        T, B = h.shape[:2]
        z = self.norm(self.conv(h.flatten(0, 1)))
        s = self.act(z.unflatten(0, (T, B)))
        return self.pool(s.flatten(0, 1)).unflatten(0, (T, B))


def _flat(in_shape: Sequence[int]) -> int:
    return int(math.prod(in_shape))


class MLP(Layered):
    """x [B, ...] -> Dense(hidden[0]) -> ... -> Linear(n_classes)."""

    name = "mlp"

    def __init__(self, in_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu"):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        widths = [_flat(in_shape), *_check_widths("hidden", hidden)]
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
        chans = _check_widths("channels", channels)
        c, self.dims = _conv_dims(in_shape, chans)
        self.norm = norm
        self.layers = nn.ModuleList(ConvBlock(i, o, activation, norm=norm) for i, o in zip([c, *chans], chans))
        self.n_classes = int(n_classes)
        self.head = Readout(self.dims[-1], self.n_classes, spiking=False)


class _Spiking(Layered):
    spiking = True

    def _setup_time(self, T: int, encoding: str, neuron: dict | None) -> dict:
        self.encoder = Encoder(T, encoding)
        self.T = self.encoder.T
        return {"kind": "lif", **(dict(neuron) if neuron else {})}

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class SpikingMLP(_Spiking):
    """Encoder -> SpikingDense(hidden[0]) -> ... -> time-averaged Linear readout."""

    name = "spiking_mlp"

    def __init__(self, in_shape: Sequence[int], n_classes: int, hidden: Sequence[int] = (256, 256),
                 T: int = 8, encoding: str = "direct", neuron: dict | None = None, weight_gain: float = 3.0):
        super().__init__()
        nrn = self._setup_time(T, encoding, neuron)
        self.in_shape = tuple(int(d) for d in in_shape)
        widths = [_flat(step_shape(self.in_shape, self.T, encoding)), *_check_widths("hidden", hidden)]
        self.layers = nn.ModuleList(SpikingDense(i, o, nrn, weight_gain) for i, o in zip(widths, widths[1:]))
        self.dims, self.n_classes = widths[1:], int(n_classes)
        self.head = Readout(widths[-1], self.n_classes, spiking=True)


class SpikingConvNet(_Spiking):
    """Encoder -> spiking ConvBlock(channels[0]) -> ... -> time-averaged Linear readout."""

    name = "spiking_convnet"

    def __init__(self, in_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (16, 32),
                 T: int = 4, encoding: str = "direct", neuron: dict | None = None):
        super().__init__()
        nrn = self._setup_time(T, encoding, neuron)
        self.in_shape = tuple(int(d) for d in in_shape)
        chans = _check_widths("channels", channels)
        c, self.dims = _conv_dims(step_shape(self.in_shape, self.T, encoding), chans)
        self.layers = nn.ModuleList(ConvBlock(i, o, neuron=nrn) for i, o in zip([c, *chans], chans))
        self.n_classes = int(n_classes)
        self.head = Readout(self.dims[-1], self.n_classes, spiking=True)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "MLP",
    "ConvNet",
    "Layered",
    "Readout",
    "SpikingConvNet",
    "SpikingMLP",
    "count_parameters",
    "pool",
]
