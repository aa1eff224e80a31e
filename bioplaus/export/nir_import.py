"""Import a NIR graph as a bioplaus spiking model: `from_nir`.

    model = from_nir("model.nir")              # a path or a nir.NIRGraph; T, encoding, dt from bioplaus metadata
    model = from_nir(graph, T=8)               # a graph written by another tool (snnTorch, Norse, SpikingJelly)
    logits = model(x)                          # x [B, *input shape] -> [B, n_out], over model.T steps

The graph must be a chain Input -> ... -> Output (no branches, recurrent edges or nested graphs). Each neuron
node closes one layer of the returned `NIRModel`, a bioplaus spiking `Layered` model (so statistics, rules and
the trainer take it): the nodes before the neuron (synapses, pooling, flatten) run on every step of the
layer's input [T, B, ...], then the neuron runs over the T steps. The nodes after the last neuron form the
head, which, like bioplaus's Readout, averages its input over the T steps first and then applies them; every
non-neuron node imported here is affine, so that equals the time average of their per-step output. A graph
that ends in a neuron reads out its firing rate.

    Affine / Linear -> nn.Linear        Conv1d / Conv2d -> nn.Conv1d / nn.Conv2d    Scale -> elementwise product
    Flatten -> flatten of one sample's dims start..end (NIR's dims exclude the batch axis)
    SumPool2d -> window sums            AvgPool2d -> nn.AvgPool2d
    IF, LIF -> NIRNeuron                CubaLIF -> NIRCubaLIF
    anything else (LI, I, Threshold, Delay, nested graphs) -> one ConfigError naming the node

Neurons step with forward Euler at dt seconds, the inverse of `bioplaus.export.to_nir` (u = v - v_reset):

    IF       u_h = u + b x,        b = R dt
    LIF      u_h = a u + b x,      a = 1 - dt / tau,  b = R dt / tau              (needs v_leak = v_reset)
    CubaLIF  I_t = c I_{t-1} + w x_t,  c = 1 - dt / tau_syn,  w = w_in dt / tau_syn, then the LIF charge on I_t
             with tau_mem (snnTorch's Synaptic: syn = alpha syn + x; mem = beta mem + syn)

then fire on u_h >= v_threshold - v_reset and reset hard to v_reset. Uniform parameters become floats (the
fused CPU kernel); per-neuron ones run as tensors; v_threshold and v_reset must be uniform within a layer.
dt comes from the argument, else the graph's metadata, else 1e-4 (what snnTorch's exporter assumes).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.export.nir_export import DT, _nir
from bioplaus.kernels.leaky_scan import leaky_scan
from bioplaus.models.classic import SpikingLayered
from bioplaus.neurons import BaseNeuron


def _param(p) -> float | Tensor:
    """A uniform parameter as a float, else a float32 tensor of its shape."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.size and np.all(arr == arr.flat[0]):
        return float(arr.flat[0])
    return torch.tensor(arr, dtype=torch.float32)


def _ints(v, n: int) -> tuple[int, ...]:
    return tuple(int(d) for d in np.broadcast_to(np.asarray(v), (n,)))


def _store(module: nn.Module, name: str, value: float | Tensor) -> None:
    """A coefficient as a float attribute, or a buffer (it moves with the model) when it varies per neuron."""
    if isinstance(value, Tensor):
        module.register_buffer(name, value)
    else:
        setattr(module, name, float(value))


class NIRNeuron(BaseNeuron):
    """A neuron given by its charge coefficients: u_h = a u + b x in u = v - v_reset, hard reset, fire on
    u_h >= v_threshold - v_reset. a, b: floats, or tensors of one sample's neuron shape."""

    def __init__(self, a: float | Tensor, b: float | Tensor, v_threshold: float = 1.0, v_reset: float = 0.0, **kw):
        super().__init__(v_threshold=v_threshold, v_reset=v_reset, **kw)
        _store(self, "_a", a)
        _store(self, "_b", b)

    def coefficients(self, x=None):
        return self._a, self._b

    def extra_repr(self) -> str:
        show = lambda c: f"{c:.6g}" if isinstance(c, float) else f"tensor{list(c.shape)}"    # noqa: E731
        return f"a={show(self._a)}, b={show(self._b)}, " + super().extra_repr()


class NIRCubaLIF(NIRNeuron):
    """Current-based LIF: a synaptic current I_t = c I_{t-1} + w x_t (leaky_scan without threshold) drives the
    LIF charge u_h = a u + b I_t. Multi-step only (two states)."""

    pure_step = False

    def __init__(self, c: float | Tensor, w: float | Tensor, a: float | Tensor, b: float | Tensor, **kw):
        super().__init__(a, b, **kw)
        if self.step_mode != "m":
            raise ConfigError("an imported CubaLIF neuron runs multi-step only (step_mode='m')")
        _store(self, "_c", c)
        _store(self, "_w", w)

    def forward(self, x: Tensor) -> Tensor:
        current, _ = leaky_scan(x, self._c, self._w, backend=self.backend)
        return super().forward(current)


def _uniform(node, field: str, name: str) -> float:
    arr = np.asarray(getattr(node, field), dtype=np.float64)
    if arr.size == 0 or not np.all(arr == arr.flat[0]):
        raise ConfigError(f"NIR node {name}: {field} differs between neurons; bioplaus neurons take one "
                          f"{field} per layer")
    return float(arr.flat[0])


def _hard_reset(node, name: str) -> dict:
    v_reset = _uniform(node, "v_reset", name)
    if hasattr(node, "v_leak") and not np.allclose(np.asarray(node.v_leak, dtype=np.float64), v_reset):
        raise ConfigError(f"NIR node {name}: v_leak differs from v_reset; bioplaus neurons leak towards v_reset")
    return {"v_threshold": _uniform(node, "v_threshold", name), "v_reset": v_reset}


def _if(node, name: str, dt: float) -> nn.Module:
    return NIRNeuron(1.0, _param(np.asarray(node.r, dtype=np.float64) * dt), **_hard_reset(node, name))


def _lif(node, name: str, dt: float) -> nn.Module:
    tau, r = (np.asarray(v, dtype=np.float64) for v in (node.tau, node.r))
    return NIRNeuron(_param(1 - dt / tau), _param(r * dt / tau), **_hard_reset(node, name))


def _cuba_lif(node, name: str, dt: float) -> nn.Module:
    ts, tm, r, w_in = (np.asarray(v, dtype=np.float64) for v in (node.tau_syn, node.tau_mem, node.r, node.w_in))
    return NIRCubaLIF(_param(1 - dt / ts), _param(w_in * dt / ts), _param(1 - dt / tm), _param(r * dt / tm),
                      **_hard_reset(node, name))


class SumPool2d(nn.Module):
    """Sum over pooling windows: [N, C, H, W] -> [N, C, H', W']."""

    def __init__(self, kernel_size, stride, padding):
        super().__init__()
        self.k, self.s, self.p = _ints(kernel_size, 2), _ints(stride, 2), _ints(padding, 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.k, self.s, self.p, divisor_override=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.k}, stride={self.s}, padding={self.p}"


class Scale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.tensor(np.asarray(scale), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tensor(a) -> Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def _linear(node, name, dt) -> nn.Module:
    w = np.asarray(node.weight)
    has_bias = hasattr(node, "bias")
    lin = nn.Linear(w.shape[-1], w.shape[-2], bias=has_bias)
    with torch.no_grad():
        lin.weight.copy_(_tensor(w))
        if has_bias:
            lin.bias.copy_(_tensor(node.bias))
    return lin


def _conv(node, name, dt) -> nn.Module:
    w = np.asarray(node.weight)
    nd = w.ndim - 2
    pad = node.padding if isinstance(node.padding, str) else _ints(node.padding, nd)
    conv = (nn.Conv2d if nd == 2 else nn.Conv1d)(
        w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_ints(node.stride, nd), padding=pad,
        dilation=_ints(node.dilation, nd), groups=int(node.groups))
    with torch.no_grad():
        conv.weight.copy_(_tensor(w))
        conv.bias.copy_(_tensor(node.bias))
    return conv


def _flatten(node, name, dt) -> nn.Module:
    end = int(node.end_dim)
    return nn.Flatten(int(node.start_dim) + 1, end + 1 if end >= 0 else end)


def _avg_pool(node, name, dt) -> nn.Module:
    return nn.AvgPool2d(_ints(node.kernel_size, 2), _ints(node.stride, 2), _ints(node.padding, 2))


def _importers() -> tuple[dict[type, Callable], dict[type, Callable]]:
    """(synapse and pooling nodes, neuron nodes) -> builders, keyed by NIR node class."""
    nir = _nir()
    ops = {nir.Affine: _linear, nir.Linear: _linear, nir.Conv1d: _conv, nir.Conv2d: _conv, nir.Flatten: _flatten,
           nir.SumPool2d: lambda n, name, dt: SumPool2d(n.kernel_size, n.stride, n.padding),
           nir.AvgPool2d: _avg_pool, nir.Scale: lambda n, name, dt: Scale(n.scale)}
    neurons = {nir.IF: _if, nir.LIF: _lif, nir.CubaLIF: _cuba_lif}
    return ops, neurons


class NIRLayer(nn.Module):
    """One imported layer: per-step ops on [T*B, ...], then the neuron over time: [T, B, ...] -> spikes."""

    def __init__(self, ops: list[nn.Module], neuron: BaseNeuron):
        super().__init__()
        self.ops, self.neuron = nn.Sequential(*ops), neuron

    def forward(self, h: Tensor) -> Tensor:
        T, B = h.shape[:2]
        return self.neuron(self.ops(h.flatten(0, 1)).unflatten(0, (T, B)))


class NIRReadout(nn.Module):
    """The head: the time average of the last layer's spikes [T, B, ...], then the trailing affine ops."""

    def __init__(self, ops: list[nn.Module]):
        super().__init__()
        self.ops = nn.Sequential(*ops)

    def forward(self, h: Tensor) -> Tensor:
        return self.ops(h.mean(0)).flatten(1)


class NIRModel(SpikingLayered):
    """A spiking model read from a NIR graph (see the module docstring): encoder -> NIRLayer ... -> NIRReadout."""

    name = "nir_model"

    def __init__(self, layers: list[NIRLayer], head: NIRReadout, in_shape, out_shape, dims: list[int], T: int,
                 encoding: str, dt: float, metadata: dict):
        super().__init__()
        self._setup_time(T, encoding, None)
        self.in_shape = tuple(int(d) for d in in_shape)
        self.layers, self.head = nn.ModuleList(layers), head
        self.dims, self.n_classes = list(dims), int(math.prod(out_shape))
        self.dt, self.metadata = float(dt), dict(metadata)


def _chain(graph, nir) -> list[str]:
    """The node names from Input to Output, or a ConfigError naming what breaks the chain."""
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
        pred.setdefault(b, []).append(a)
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise ConfigError(f"NIR import needs one Input node, found {len(inputs)}")
    order, name = [], inputs[0]
    while True:
        order.append(name)
        if isinstance(graph.nodes[name], nir.NIRGraph):
            raise ConfigError(f"NIR node {name} is a nested graph (a recurrent layer): bioplaus imports "
                              "feed-forward chains only")
        if len(pred.get(name, [])) > (0 if name == inputs[0] else 1) or len(succ.get(name, [])) > 1:
            raise ConfigError(f"NIR node {name} has {len(pred.get(name, []))} inputs and {len(succ.get(name, []))} "
                              "outputs: bioplaus imports feed-forward chains only (no branches or recurrent edges)")
        nxt = succ.get(name, [])
        if not nxt:
            break
        name = nxt[0]
        if name in order:
            raise ConfigError(f"NIR node {name} closes a cycle: bioplaus imports feed-forward chains only")
    if not isinstance(graph.nodes[order[-1]], nir.Output):
        raise ConfigError(f"the NIR chain from the Input ends at {order[-1]}, not at an Output node")
    if len(order) != len(graph.nodes):
        raise ConfigError(f"NIR nodes {sorted(set(graph.nodes) - set(order))} are off the Input -> Output chain")
    return order


def _metadata(graph) -> dict:
    meta = getattr(graph, "metadata", None)
    if not isinstance(meta, dict):
        return {}
    return {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
            for k, v in meta.items()}


def from_nir(graph, T: int | None = None, encoding: str | None = None, dt: float | None = None) -> NIRModel:
    """A bioplaus spiking model from a NIR graph (or a path to a .nir file); see the module docstring.
    T (steps) and encoding default to the graph's metadata (graphs from bioplaus carry them), else T must be
    given and the encoding is 'direct'. An unsupported node or a non-chain graph is one ConfigError."""
    nir = _nir()
    if isinstance(graph, (str, Path)):
        if not Path(graph).is_file():
            raise ConfigError(f"NIR file {graph} does not exist")
        graph = nir.read(str(graph))
    meta = _metadata(graph)
    T = int(T if T is not None else meta.get("T", 0))
    if T < 1:
        raise ConfigError("from_nir needs the number of time steps: pass T=... (the graph's metadata has no T)")
    encoding = str(encoding or meta.get("encoding", "direct"))
    dt = float(dt if dt is not None else meta.get("dt", DT))
    ops_map, neuron_map = _importers()
    order = _chain(graph, nir)
    in_shape = tuple(int(d) for d in np.atleast_1d(graph.nodes[order[0]].input_type["input"]))
    out_shape = tuple(int(d) for d in np.atleast_1d(graph.nodes[order[-1]].output_type["output"]))
    layers, dims, pending = [], [], []
    for name in order[1:-1]:
        node = graph.nodes[name]
        kind = type(node)
        if kind in neuron_map:
            layers.append(NIRLayer(pending, neuron_map[kind](node, name, dt)))
            dims.append(int(np.prod(node.output_type["output"])))
            pending = []
        elif kind in ops_map:
            pending.append(ops_map[kind](node, name, dt))
        else:
            raise ConfigError(f"NIR node {name} ({kind.__name__}) has no bioplaus counterpart: import covers "
                              f"{', '.join(sorted(c.__name__ for c in [*ops_map, *neuron_map]))}")
    if not layers:
        raise ConfigError("the NIR graph has no spiking neuron (IF, LIF or CubaLIF): nothing for a spiking model")
    if encoding == "given":
        in_shape = (T, *in_shape)
    return NIRModel(layers, NIRReadout(pending), in_shape, out_shape, dims, T, encoding, dt,
                    {**meta, "dt": dt})


__all__ = ["NIRCubaLIF", "NIRLayer", "NIRModel", "NIRNeuron", "NIRReadout", "from_nir"]
