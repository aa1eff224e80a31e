"""The layered skeleton every model shares, so layer-local rules can train any of them.

    h_0 = model.encode(x)               x [B, ...]   (spiking: spikes or currents [T, B, ...], time-major)
    h_l = model.layers[l-1](h_{l-1})    static: [B, ...];  spiking: spikes [T, B, ...]
    logits = model.head(h_L)            [B, n_classes] (per token [B, L, V] for language models)

A `Layered` model declares what it is, so rules and the engine ask it by attribute or base class, never by
class name:

    name         its config name (model=<name>): the label in metrics and tables; default the class name in
                 snake_case
    in_shape     one sample's input shape (no batch axis)
    dims         dims[l] = the pooled width of h_{l+1} (what `pool` returns): rules attach per-layer
                 classifiers or feedback weights of that width
    n_classes    outputs of the head
    spiking      True when h_l are spike trains [T, B, ...] (then `T` is the number of steps)
    encoder      the input encoder (bioplaus.neurons.encoding.Encoder) or None
    task         "classify" (logits [B, C]) or "lm" (per-token logits)
    graph_model  True for models built on one graph whose samples are node ids (bioplaus.models.graph)

`Readout` is the common head: pool (flatten; spiking: time average first), then one Linear.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

from torch import Tensor, nn

from bioplaus.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "elu": nn.ELU}


def snake(name: str) -> str:
    """'SpikingMLP' -> 'spiking_mlp', 'LocalClassifiers' -> 'local_classifiers'."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def make_activation(name: str) -> nn.Module:
    """An activation module by name (ACTIVATIONS); an unknown name is a ConfigError listing the known ones."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{name}': choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def check_widths(name: str, widths: Sequence[int]) -> list[int]:
    """model.<name> as a non-empty list of positive ints, or a ConfigError."""
    widths = [int(w) for w in widths]
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"model.{name} must be a non-empty list of positive sizes, got {widths}")
    return widths


def flat_size(in_shape: Sequence[int]) -> int:
    """Elements of one sample of shape in_shape."""
    return int(math.prod(in_shape))


def pool(h: Tensor, spiking: bool) -> Tensor:
    """Layer output -> [B, D]: flatten (static) or time-average then flatten (spiking, [T, B, ...])."""
    return (h.mean(0) if spiking else h).flatten(1)


class Readout(nn.Module):
    """Head: pool h (flatten; spiking: mean over T first) then one Linear -> logits [B, C]."""

    def __init__(self, in_dim: int, n_classes: int, spiking: bool):
        super().__init__()
        self.spiking = spiking
        self.linear = nn.Linear(in_dim, n_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(pool(h, self.spiking))


class Layered(nn.Module):
    """Base class: subclasses fill `layers`, `head`, `dims`, `n_classes`, `in_shape` (see module docstring)."""

    name: str = "layered"
    layers: nn.ModuleList
    head: nn.Module
    dims: list[int]
    n_classes: int
    in_shape: tuple[int, ...] = ()
    spiking: bool = False
    T: int = 1
    task: str = "classify"
    graph_model: bool = False

    def __init__(self):
        super().__init__()
        self.encoder: nn.Module | None = None    # an instance attribute: a class-level None would shadow the module

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" not in cls.__dict__:           # every class its own label, unless it declares one
            cls.name = snake(cls.__name__.lstrip("_"))

    def encode(self, x: Tensor) -> Tensor:
        """Input [B, ...] -> h_0 (static: x itself; with an encoder: its output, e.g. [T, B, ...])."""
        return x if self.encoder is None else self.encoder(x)

    def pool(self, h: Tensor) -> Tensor:
        return pool(h, self.spiking)

    def features(self, x: Tensor) -> Tensor:
        h = self.encode(x)
        for layer in self.layers:
            h = layer(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def model_name(model) -> str:
    """A model's (or model class's) label: its `name` (the config name) for Layered models, else its class name
    in snake_case."""
    if isinstance(model, Layered) or isinstance(model, type) and issubclass(model, Layered):
        return model.name
    return snake((model if isinstance(model, type) else type(model)).__name__)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["ACTIVATIONS", "Layered", "Readout", "make_activation", "check_widths", "count_parameters", "flat_size",
           "model_name", "pool", "snake"]
