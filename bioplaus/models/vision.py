"""Spiking ConvNets for CIFAR and event-camera data: a VGG-style net and a small SEW-ResNet.

Both are `SpikingConvNet`s (the Layered skeleton, `bioplaus.models.base`), so every rule that trains a spiking
ConvNet (backprop = BPTT, readout_only, FA / DFA / sign symmetry, NoProp) trains them; their layers are:

    h_0 = encode(x)                 x [B, C, H, W] (direct / rate / latency over T steps) or [B, T, C, H, W] (given)
    layers[l]                       [T, B, C, H, W] -> spikes [T, B, C', H', W']
    head                            time-averaged Linear on the flattened last map -> logits [B, n_classes]

`SpikingVGG` (Simonyan & Zisserman 2015, spiking as in Sengupta et al. 2019 / Rathi et al. 2020): `channels`
in VGG notation, an int per conv layer and "M" for a 2x2 pool after the layer before it; the default is
VGG-11's feature stack [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]. One layer per conv:
conv3x3 -> norm -> neuron [-> pool].

`SEWResNet` (Fang et al. 2021, "Deep residual learning in spiking neural networks", ADD connection): a stem
conv3x3 -> norm -> neuron (layer 0), then per entry c of `channels` one SEW block and a 2x2 max-pool:

    A(s)   = SN(norm(conv3x3(SN(norm(conv3x3(s))))))              the residual branch, spikes
    S(s)   = s (same width) or SN(norm(conv1x1(s)))              the shortcut
    out    = maxpool(A(s) + S(s))                                 integer spike sums 0..2 (ADD)

With stem 32 and channels [32] * 7 on 128 x 128 input this is the paper's 7B-Net for DVS128 Gesture.

`norm` (both): "batch" (BatchNorm2d, conv without bias), "none" (conv with bias, nothing else) or "ws" (weight
standardisation: each output channel's kernel W_o is replaced by g_o (W_o - mean W_o) / (std W_o sqrt(fan_in)),
a learnable gain g_o starting at `ws_gain`, plus a bias). With "none" or "ws" no batch statistics enter the
forward pass: a neuron's charge is the plain h_t = a v_{t-1} + b I_t with I_t = conv(s_t) + bias, the form
rules that reason about the membrane equation (e.g. temporally local traces) need, and a sample's output does
not depend on the rest of the batch. conv and norm run on the merged [T * B] axis.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models.base import Layered, Readout
from bioplaus.models.classic import NORMS, SpikingConvNet, WSConv2d
from bioplaus.neurons import make_neuron
from bioplaus.neurons.encoding import step_shape

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def conv_norm(c_in: int, c_out: int, kernel: int, norm: str, ws_gain: float) -> nn.Sequential:
    """conv (same padding) and its norm, as one module acting on [N, C, H, W]."""
    if norm not in NORMS:
        raise ConfigError(f"unknown model.norm '{norm}': choose one of {', '.join(NORMS)}")
    pad = kernel // 2
    if norm == "ws":
        return nn.Sequential(WSConv2d(c_in, c_out, kernel, pad, ws_gain))
    conv = nn.Conv2d(c_in, c_out, kernel, padding=pad, bias=norm == "none")
    return nn.Sequential(conv, nn.BatchNorm2d(c_out)) if norm == "batch" else nn.Sequential(conv)


def merged(module: nn.Module, h: Tensor) -> Tensor:
    """Apply a per-frame module to [T, B, ...] on the merged [T * B] axis."""
    return module(h.flatten(0, 1)).unflatten(0, h.shape[:2])


class SpikingConv(nn.Module):
    """conv -> norm -> neuron [-> 2x2 pool]: [T, B, C, H, W] -> spikes [T, B, C', H', W']."""

    def __init__(self, c_in: int, c_out: int, neuron: dict, norm: str = "batch", pool: str | None = None,
                 ws_gain: float = 2.0, kernel: int = 3):
        super().__init__()
        self.conv = conv_norm(c_in, c_out, kernel, norm, ws_gain)
        self.neuron = make_neuron(size=c_out, **neuron)
        self.pool = POOLS[pool](2) if pool else None

    def forward(self, h: Tensor) -> Tensor:
        s = self.neuron(merged(self.conv, h))
        return merged(self.pool, s) if self.pool is not None else s


class SEWBlock(nn.Module):
    """SEW residual block with ADD connection, then a 2x2 max-pool (module docstring)."""

    def __init__(self, c_in: int, c_out: int, neuron: dict, norm: str = "batch", ws_gain: float = 2.0):
        super().__init__()
        self.branch = nn.ModuleList([SpikingConv(c_in, c_out, neuron, norm, ws_gain=ws_gain),
                                     SpikingConv(c_out, c_out, neuron, norm, ws_gain=ws_gain)])
        self.shortcut = SpikingConv(c_in, c_out, neuron, norm, ws_gain=ws_gain, kernel=1) if c_in != c_out else None
        self.pool = nn.MaxPool2d(2)

    def forward(self, s: Tensor) -> Tensor:
        a = s
        for conv in self.branch:
            a = conv(a)
        return merged(self.pool, a + (s if self.shortcut is None else self.shortcut(s)))


def _image_shape(in_shape: Sequence[int], T: int, encoding: str) -> tuple[int, int, int]:
    shape = step_shape(tuple(int(d) for d in in_shape), T, encoding)
    if len(shape) != 3:
        raise ConfigError(f"spiking ConvNets need image data [C, H, W] per step, got {list(shape)}")
    return shape


def _halve(h: int, w: int, what: str, in_shape) -> tuple[int, int]:
    if h < 2 or w < 2:
        raise ConfigError(f"too many 2x2 pools in model.channels for {in_shape[-2]}x{in_shape[-1]} input ({what}); "
                          "use fewer 'M' entries / blocks")
    return h // 2, w // 2


class SpikingVGG(SpikingConvNet):
    """VGG-style spiking ConvNet: one SpikingConv per int of `channels`, "M" = pool after it (module docstring)."""

    name = "spiking_vgg"

    def __init__(self, in_shape: Sequence[int], n_classes: int, channels: Sequence = VGG11, T: int = 4,
                 encoding: str = "direct", neuron: dict | None = None, norm: str = "batch", pool: str = "max",
                 ws_gain: float = 2.0):
        Layered.__init__(self)                           # SpikingConvNet's own layers are not built
        nrn = self._setup_time(T, encoding, neuron)
        self.in_shape = tuple(int(d) for d in in_shape)
        if pool not in POOLS:
            raise ConfigError(f"unknown model.pool '{pool}': choose one of {', '.join(POOLS)}")
        spec = [str(c).upper() if str(c).upper() == "M" else int(c) for c in channels]
        if not spec or spec[0] == "M" or any(a == b == "M" for a, b in zip(spec, spec[1:])) or \
                any(c != "M" and c < 1 for c in spec):
            raise ConfigError(f"model.channels must list positive widths, each optionally followed by one 'M' "
                              f"(pool), starting with a width; got {list(channels)}")
        c, h, w = _image_shape(self.in_shape, self.T, encoding)
        layers, self.dims = [], []
        for i, width in enumerate(spec):
            if width == "M":
                continue
            pooled = i + 1 < len(spec) and spec[i + 1] == "M"
            if pooled:
                h, w = _halve(h, w, f"layer {len(layers)}", self.in_shape)
            layers.append(SpikingConv(c, width, nrn, norm, pool if pooled else None, ws_gain))
            self.dims.append(width * h * w)
            c = width
        _attach(self, layers, norm, n_classes)


def _attach(model: nn.Module, layers: list, norm: str, n_classes: int) -> None:
    """The layers, their norm, and the spiking readout on the last layer's pooled width (model.dims[-1])."""
    model.norm = norm
    model.layers = nn.ModuleList(layers)
    model.n_classes = int(n_classes)
    model.head = Readout(model.dims[-1], model.n_classes, spiking=True)


class SEWResNet(SpikingConvNet):
    """Small SEW-ResNet: stem SpikingConv, then one SEWBlock (+ 2x2 max-pool) per entry of `channels`."""

    name = "sew_resnet"

    def __init__(self, in_shape: Sequence[int], n_classes: int, stem: int = 32,
                 channels: Sequence[int] = (32, 32, 32, 32), T: int = 4, encoding: str = "direct",
                 neuron: dict | None = None, norm: str = "batch", ws_gain: float = 2.0):
        Layered.__init__(self)
        nrn = self._setup_time(T, encoding, neuron)
        self.in_shape = tuple(int(d) for d in in_shape)
        widths = [int(c) for c in channels]
        if int(stem) < 1 or any(c < 1 for c in widths):
            raise ConfigError(f"model.stem and model.channels must be positive widths, got {stem}, {list(channels)}")
        c, h, w = _image_shape(self.in_shape, self.T, encoding)
        layers = [SpikingConv(c, int(stem), nrn, norm, None, ws_gain)]
        self.dims = [int(stem) * h * w]
        c = int(stem)
        for i, width in enumerate(widths):
            h, w = _halve(h, w, f"block {i}", self.in_shape)
            layers.append(SEWBlock(c, width, nrn, norm, ws_gain))
            self.dims.append(width * h * w)
            c = width
        _attach(self, layers, norm, n_classes)


__all__ = ["NORMS", "SEWBlock", "SEWResNet", "SpikingConv", "SpikingVGG", "VGG11", "WSConv2d", "conv_norm"]
