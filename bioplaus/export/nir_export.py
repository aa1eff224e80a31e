"""Export a spiking MLP or ConvNet to NIR (the Neuromorphic Intermediate Representation): `to_nir`.

    graph = to_nir(model, dt=1e-4)          # a nir.NIRGraph (one time step of the network)
    nir.write("model.nir", graph)            # HDF5, readable by snnTorch, Norse, SpikingJelly, Lava, ...

NIR describes one time step of a network whose neurons are continuous-time ODEs. bioplaus steps them with
forward Euler at a step of `dt` seconds (dt = 1e-4 by default: what snnTorch's importer assumes and
SpikingJelly's exporter writes). A neuron with the shifted charge u_h = a u + b x (bioplaus.neurons; u = v - v_reset)
is written as

    IF  (a = 1)       nir.IF(r = b / dt, v_threshold, v_reset)         NIR: dv/dt = R I  ->  v += dt R I
    LIF (0 <= a < 1)  nir.LIF(tau = dt / (1 - a), r = b / (1 - a),     NIR: tau dv/dt = (v_leak - v) + R I
                              v_leak = v_reset, v_threshold, v_reset)       ->  v += dt / tau (v_leak - v + R I)

so a = 1 - dt / tau and b = R dt / tau: bioplaus's LIF(tau, decay_input) is tau_NIR = tau dt with R = 1
(decay_input) or R = tau (not), leaking towards v_reset; PLIF is written with its current tau. Every
parameter is an array of the layer's neuron shape (float64). Two conventions differ from NIR's text and are
stated here: bioplaus fires on v >= v_threshold, NIR on v > v_threshold (they differ only when the membrane
equals the threshold exactly), and only hard resets exist in NIR (v_reset=null, bioplaus's soft reset, is refused).

Synapses and the rest of the model:

    SpikingDense       [Flatten] -> Affine(weight, bias) -> neuron
    ConvBlock          Conv2d(weight, bias, stride, padding, input_shape) -> neuron -> max-pool (below);
                       an eval-mode BatchNorm is folded into the conv (w * g / sqrt(var + eps), NIR has no norm)
    MaxPool2d on spikes  SumPool2d(k, k) -> LIF(tau = 2 dt, r = 2, v_threshold = 0.5, v_reset = 0): NIR has no
                       max-pool, but on binary spikes the max is "at least one spike in the window", which this
                       pair computes exactly (the LIF sees the window's spike count, fires iff it is >= 1 and
                       starts every step from 0)
    Readout            [Flatten] -> Affine: bioplaus's logits are the time average of this node's output over
                       the T steps (graph metadata `readout: mean_over_steps`; an affine map commutes with it)

The graph's Input is one step of the encoded input (direct encoding: the analog image itself, every step;
rate / latency: the spikes); metadata carries `source: bioplaus`, the model name, `dt`, `T` and `encoding`,
which `bioplaus.export.from_nir` reads back. Everything else (attention, gated mixers, RWKV, graph layers,
static layers, neurons whose leak depends on their input, library adapters) is refused with one ConfigError
naming the module.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bioplaus.errors import ConfigError, require
from bioplaus.models.base import Layered, Readout, model_name
from bioplaus.models.classic import ConvBlock, SpikingDense
from bioplaus.neurons import BaseNeuron
from bioplaus.neurons.encoding import step_shape

DT = 1e-4                    # seconds per step: snnTorch's importer assumes it, SpikingJelly's exporter writes it
INSTALL = "pip install nir nirtorch"


def _nir():
    return require("nir", "NIR export and import need", INSTALL)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _Graph:
    """A chain of named NIR nodes, built in order, with the per-sample shape flowing through."""

    def __init__(self, shape: tuple[int, ...], dt: float):
        self.nir, self.dt, self.shape = _nir(), float(dt), tuple(int(d) for d in shape)
        self.nodes = {"input": self.nir.Input(input_type={"input": np.array(self.shape)})}
        self.order = ["input"]

    def add(self, name: str, node, shape: tuple[int, ...]) -> None:
        self.nodes[name] = node
        self.order.append(name)
        self.shape = tuple(int(d) for d in shape)

    def flatten(self, name: str) -> None:
        if len(self.shape) > 1:
            self.add(name, self.nir.Flatten(input_type={"input": np.array(self.shape)}, start_dim=0, end_dim=-1),
                     (math.prod(self.shape),))

    def neuron(self, name: str, neuron: nn.Module) -> None:
        self.add(name, neuron_node(neuron, self.shape, self.dt, name), self.shape)

    def finish(self, metadata: dict):
        nir = self.nir
        self.nodes["output"] = nir.Output(output_type={"output": np.array(self.shape)})
        self.order.append("output")
        edges = list(zip(self.order, self.order[1:]))
        return nir.NIRGraph(nodes=self.nodes, edges=edges, metadata=metadata)


def neuron_node(neuron: nn.Module, shape: tuple[int, ...], dt: float, name: str = "neuron"):
    """The NIR IF or LIF node of a bioplaus neuron of `shape` (one sample's neurons), by its charge
    coefficients (a, b) (see the module docstring)."""
    nir = _nir()
    if not isinstance(neuron, BaseNeuron) or not neuron.pure_step:
        kind = type(neuron).__name__
        raise ConfigError(f"cannot export {name} ({kind}) to NIR: only neurons whose dynamics are one charge "
                          "u = a u + b x with fixed a, b map to NIR's IF / LIF (native if, lif, plif); a leak that "
                          "depends on the input (gated_lif) or a library adapter (sj_*, snntorch_leaky) does not")
    if neuron.reset_mode != "hard":
        raise ConfigError(f"cannot export {name} to NIR: NIR neurons reset to v_reset, but this neuron resets by "
                          "subtraction (v_reset=null); use a hard reset (neuron.v_reset=0.0)")
    a, b = (np.broadcast_to(np.asarray(c.detach().cpu().double() if isinstance(c, torch.Tensor) else c,
                                       dtype=np.float64), shape).copy() for c in neuron.coefficients())
    if not (np.all(a >= 0) and np.all(a <= 1)):
        raise ConfigError(f"cannot export {name} to NIR: its decay a = 1 - dt/tau must lie in [0, 1]")
    full = lambda v: np.full(shape, float(v), dtype=np.float64)    # noqa: E731
    v_th, v_reset = full(neuron.v_threshold), full(neuron.v_reset)
    if np.all(a == 1.0):
        return nir.IF(r=b / dt, v_threshold=v_th, v_reset=v_reset)
    if np.any(a == 1.0):
        raise ConfigError(f"cannot export {name} to NIR: it mixes integrators (a = 1) and leaky neurons")
    return nir.LIF(tau=dt / (1 - a), r=b / (1 - a), v_leak=v_reset, v_threshold=v_th, v_reset=v_reset)


def _affine(g: _Graph, name: str, linear: nn.Linear) -> None:
    nir = g.nir
    node = (nir.Linear(weight=_np(linear.weight)) if linear.bias is None
            else nir.Affine(weight=_np(linear.weight), bias=_np(linear.bias)))
    g.add(name, node, (linear.out_features,))


def _dense(g: _Graph, name: str, layer: SpikingDense) -> None:
    g.flatten(f"{name}.flatten")
    _affine(g, f"{name}.linear", layer.linear)
    g.neuron(f"{name}.neuron", layer.neuron)


def _fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with an eval-mode BatchNorm folded in (running statistics)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    return conv.weight * scale.view(-1, 1, 1, 1), (bias - norm.running_mean) * scale + norm.bias


NORM_FOLDS: dict[type, Callable] = {
    nn.BatchNorm2d: _fold_batchnorm,
    nn.Identity: lambda conv, norm: (conv.weight, conv.bias if conv.bias is not None
                                     else torch.zeros(conv.out_channels)),
}


def _max_pool(g: _Graph, name: str, pool: nn.MaxPool2d) -> None:
    """MaxPool2d on spikes as SumPool2d -> a LIF that fires iff the window held a spike (module docstring)."""
    k, s = pool.kernel_size, pool.stride if pool.stride is not None else pool.kernel_size
    k, s = ((k, k) if isinstance(k, int) else tuple(k)), ((s, s) if isinstance(s, int) else tuple(s))
    if pool.padding not in (0, (0, 0)) or pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
        raise ConfigError(f"cannot export {name} to NIR: only max-pools without padding, dilation or ceil_mode map")
    c, h, w = g.shape
    out = (c, (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1)
    g.add(name, g.nir.SumPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array([0, 0])), out)
    full = lambda v: np.full(out, float(v), dtype=np.float64)     # noqa: E731
    g.add(f"{name}.fire", g.nir.LIF(tau=full(2 * g.dt), r=full(2.0), v_leak=full(0), v_threshold=full(0.5),
                                    v_reset=full(0)), out)


def _conv_block(g: _Graph, name: str, block: ConvBlock) -> None:
    if not block.spiking:
        raise ConfigError(f"cannot export {name} to NIR: it is a static (ReLU) conv block, not a spiking one")
    conv = block.conv
    fold = next((f for cls, f in NORM_FOLDS.items() if isinstance(block.norm, cls)), None)
    if fold is None:
        raise ConfigError(f"cannot export {name}.norm ({type(block.norm).__name__}) to NIR: NIR has no "
                          "normalisation node and only BatchNorm2d folds into the conv")
    weight, bias = fold(conv, block.norm)
    c, h, w = g.shape
    node = g.nir.Conv2d(input_shape=(h, w), weight=_np(weight), bias=_np(bias), stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    g.add(f"{name}.conv", node, tuple(int(d) for d in node.output_type["output"]))
    g.neuron(f"{name}.neuron", block.act)
    _max_pool(g, f"{name}.pool", block.pool)


def _readout(g: _Graph, name: str, head: Readout) -> None:
    g.flatten(f"{name}.flatten")
    _affine(g, f"{name}.linear", head.linear)


#: the modules NIR export covers, by class: a layer or head of any other class is refused, naming it
EXPORTERS: dict[type, Callable] = {SpikingDense: _dense, ConvBlock: _conv_block, Readout: _readout}


def _exporter(module: nn.Module) -> Callable | None:
    return next((fn for cls, fn in EXPORTERS.items() if isinstance(module, cls)), None)


def to_nir(model: nn.Module, dt: float = DT):
    """A trained spiking MLP / ConvNet as a nir.NIRGraph, one time step of it, with neurons discretised at step
    `dt` seconds (see the module docstring). A model or module NIR cannot express is one ConfigError naming it."""
    if dt <= 0:
        raise ConfigError(f"NIR export needs a positive time step dt (seconds), got {dt}")
    name = model_name(model)
    if not isinstance(model, Layered) or not model.spiking:
        raise ConfigError(f"cannot export model {name} ({type(model).__name__}) to NIR: it is not a spiking model; "
                          "NIR export covers spiking_mlp and spiking_convnet")
    parts = [(f"layers.{i}", layer) for i, layer in enumerate(model.layers)] + [("head", model.head)]
    missing = [f"{n} ({type(m).__name__})" for n, m in parts if _exporter(m) is None]
    if missing:
        raise ConfigError(f"cannot export model {name} to NIR: NIR has no node for {', '.join(missing)} (it has no "
                          "attention, gating, recurrence or normalisation primitives); NIR export covers the spiking "
                          "MLP and ConvNet (SpikingDense, spiking ConvBlock, Readout)")
    if model.encoder is None:
        raise ConfigError(f"cannot export model {name} to NIR: it has no input encoder over T steps")
    kind = model.encoder.kind
    g = _Graph(step_shape(model.in_shape, model.T, kind), dt)
    with torch.no_grad():
        for lname, module in parts:
            _exporter(module)(g, lname, module)
    return g.finish({"source": "bioplaus", "model": name, "dt": float(dt), "T": int(model.T), "encoding": kind,
                     "readout": "mean_over_steps"})


__all__ = ["DT", "EXPORTERS", "neuron_node", "to_nir"]
