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

`linear_per_step(linear, h)` is a Linear on time-major h [T, B, ..., d] that computes the current once when h
repeats one step (direct encoding; see `bioplaus.neurons.encoding.per_step`); the Linear's hooks still see
that call (`as_call`), with its one-step input [B, ..., d].
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.neurons.encoding import per_step, time_invariant

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


def linear_per_step(linear: nn.Linear, h: Tensor) -> Tensor:
    """linear(h) for h [T, B, ..., d_in] -> [T, B, ..., d_out]. A time-invariant h (a broadcast view repeating
    one step) is multiplied once, [B, ...] rows instead of [T * B, ...], and broadcast over T. The product and
    the bias are added in two steps, as nn.Linear itself does for such a (non-contiguous) input, so the values
    are bit for bit those of `linear(h)` (tests/test_time_invariant.py)."""
    if not time_invariant(h):
        return linear(h)

    def once(z: Tensor) -> Tensor:
        y = F.linear(z, linear.weight)
        return y if linear.bias is None else y + linear.bias

    return per_step(lambda z: as_call(linear, once, z), h)


def as_call(module: nn.Module, fn, z: Tensor) -> Tensor:
    """fn(z) run as the call module(z) would be seen: the module's forward pre-hooks and hooks (and the global
    ones, with or without kwargs) run around it, so tools that observe modules by hooks (NeuroBench, profilers)
    see the layer even where the product is taken by hand."""
    from torch.nn.modules import module as mod
    args, kwargs = (z,), {}
    pre = [(h, False) for h in mod._global_forward_pre_hooks.values()] + [
        (h, module._forward_pre_hooks_with_kwargs.get(k, False)) for k, h in module._forward_pre_hooks.items()]
    for hook, with_kwargs in pre:
        r = hook(module, args, kwargs) if with_kwargs else hook(module, args)
        if r is not None:
            if with_kwargs:
                args, kwargs = r
            else:
                args = r if isinstance(r, tuple) else (r,)
    y = fn(*args, **kwargs)
    post = [(h, False) for h in mod._global_forward_hooks.values()] + [
        (h, module._forward_hooks_with_kwargs.get(k, False)) for k, h in module._forward_hooks.items()]
    for hook, with_kwargs in post:
        r = hook(module, args, kwargs, y) if with_kwargs else hook(module, args, y)
        if r is not None:
            y = r
    return y


class Readout(nn.Module):
    """Head: pool h (flatten; spiking: mean over T first) then one Linear -> logits [B, C]. `last` (spiking
    only): average only the last `last` steps of h [T, B, ...] (a decision window read after a delay); None:
    all T steps."""

    def __init__(self, in_dim: int, n_classes: int, spiking: bool, last: int | None = None):
        super().__init__()
        self.spiking, self.last = spiking, (int(last) if last else None)
        self.linear = nn.Linear(in_dim, n_classes)

    def forward(self, h: Tensor) -> Tensor:
        if self.spiking and self.last is not None:
            h = h[-self.last:]
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
           "linear_per_step", "model_name", "pool", "snake"]
