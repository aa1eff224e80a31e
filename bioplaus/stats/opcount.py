"""Exact operation counts of any forward or backward pass: dense MACs and spike-driven accumulates.

`OpCounter` is a TorchDispatchMode: it sees every aten op below autograd, so it counts what actually
runs, for every model family (Linear, Conv, attention products, gated mixers) and for every rule's
training step (forward and backward), with no per-layer code. For each matrix product and
convolution it counts

    MAC  multiply-accumulates when both operands are dense:  mm [n,k]@[k,m] -> n*k*m;
         conv -> out.numel() * C_in/groups * kh * kw; convolution_backward -> the same per input or
         weight gradient it computes
    AC   accumulates when one operand is binary (0/1 spikes): only the spikes do work, so
         mm -> nnz(spikes) * (the other operand's free dim), i.e. input spikes x fan-out = SOPs;
         conv -> C_out/groups * sum over output positions of the spikes in each receptive field
         (exact at the borders: a spike near the edge reaches fewer outputs)

Message passing (graph models, PyG): every scatter-add / index-add / scatter-reduce of a source [E, d] into
the nodes (aggregating the messages, and the backward of a gather) is E*d accumulates, counted as AC (adds
only; the per-edge weight a GCN multiplies in first is an elementwise op, not counted, like the others below).
A sparse-dense product A @ X (torch.sparse / SparseTensor propagation) is nnz(A) * X.shape[1] MACs, or ACs
when A's values are all 0/1 (an unweighted adjacency). Gathers and index_select move data and are not counted.

Operands backed by the storage of `weights` (the model's parameters) are never taken for spikes,
even when they hold only 0s and 1s. Bias adds, normalisation and elementwise ops are not counted
(membrane updates are counted by the statistics layer from the neurons).

Counts go to the current `scope` (a name such as "layers.0", set by `attribute` hooks) and, when `T`
is given, to time steps: inside a time-major layer the leading dim of every operand is [T * ...]
flattened, so rows split into T equal chunks in order (t = 0 first). Ops outside a time-major scope,
or whose leading dim is not a multiple of T, are spread evenly over the steps.

Time-invariant inputs are counted once. A direct-encoded model feeds its first layer the same input at every
step, and computes that layer's current once and holds it for all T steps
(`bioplaus.neurons.encoding.per_step`); while it does, `once_over_time()` is True and the counter books those
ops once, at step 0 -- not T times. So the first layer of a direct-encoded spiking MLP costs d_in * d_out MACs
per sample, not T * d_in * d_out (the counts of earlier versions, which multiplied the analog input at every step).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from bioplaus.neurons.encoding import once_over_time

aten = torch.ops.aten
SCATTERS = (aten.scatter_add, aten.scatter_add_, aten.index_add, aten.index_add_, aten.scatter_reduce,
            aten.scatter_reduce_, aten.index_reduce, aten.index_reduce_)      # (self, dim, index, src, ...)


def is_binary(t: Tensor) -> bool:
    """True for a floating tensor whose every element is 0 or 1 (a spike tensor)."""
    return t.is_floating_point() and t.numel() > 0 and bool(((t == 0) | (t == 1)).all())


class OpCounter(TorchDispatchMode):
    """Count MACs and ACs per scope (and per time step when T is set); see the module docstring.

    counter.counts[scope] = {"mac": Tensor[T], "ac": Tensor[T]} float64 (T = 1 when not time-resolved).
    """

    def __init__(self, T: int | None = None, weights=()):
        super().__init__()
        self.T = int(T or 1)
        self._weights = {p.untyped_storage().data_ptr() for p in weights}
        self.scope = "other"
        self.time_major = True        # the current scope's tensors carry [T * ...] leading rows
        self.counts: dict[str, dict[str, Tensor]] = defaultdict(self._zeros)

    def _zeros(self) -> dict[str, Tensor]:
        return {"mac": torch.zeros(self.T, dtype=torch.float64), "ac": torch.zeros(self.T, dtype=torch.float64)}

    def totals(self) -> dict[str, float]:
        return {k: float(sum(c[k].sum() for c in self.counts.values())) for k in ("mac", "ac")}

    def _steps(self, per_row: Tensor) -> Tensor:
        """Per-leading-row amounts [R] -> per time step [T] (time-major rows; else spread evenly)."""
        per_row = per_row.double()
        if self.T > 1 and self.time_major and per_row.numel() % self.T == 0:
            return per_row.reshape(self.T, -1).sum(1).cpu()
        return torch.full((self.T,), float(per_row.sum()) / self.T, dtype=torch.float64)

    def _add(self, kind: str, per_step: Tensor) -> None:
        if once_over_time():                 # one computation for all T steps: booked once, at step 0
            per_step = torch.zeros_like(per_step).index_fill_(0, torch.tensor([0]), float(per_step.sum()))
        self.counts[self.scope][kind] += per_step

    def _dense(self, total: float) -> None:
        self._add("mac", torch.full((self.T,), total / self.T, dtype=torch.float64))

    def _spikes(self, t: Tensor) -> bool:
        """A binary activation; weights that happen to be 0/1 are still weights."""
        return t.untyped_storage().data_ptr() not in self._weights and is_binary(t)

    def _sparse(self, a: Tensor, m: int) -> None:
        """A sparse [n, k] @ a dense [k, m]: nnz * m, MACs (ACs for 0/1 values)."""
        values = a.coalesce().values() if a.layout == torch.sparse_coo else a.values()
        self._add("ac" if is_binary(values) else "mac", torch.full((self.T,), values.numel() * m / self.T,
                                                                    dtype=torch.float64))

    def _matmul(self, a: Tensor, b: Tensor) -> None:
        """a [n, k] @ b [k, m], or batched [bt, n, k] @ [bt, k, m]."""
        n, k, m = a.shape[-2], a.shape[-1], b.shape[-1]
        if a.layout != torch.strided:
            self._sparse(a, m)
        elif self._spikes(a):                     # each input spike meets m weights: spikes x fan-out
            self._add("ac", self._steps((a != 0).reshape(a.shape[0], -1).sum(1)) * m)
        elif self._spikes(b):
            self._add("ac", self._steps((b != 0).reshape(b.shape[0], -1).sum(1)) * n)
        else:
            self._dense(float(a.shape[0] if a.dim() == 3 else 1) * n * k * m)

    def _conv_ac(self, x: Tensor, w: Tensor, stride, padding, dilation, groups: int) -> Tensor:
        """Exact spike-driven accumulates of a conv with binary input x, per time step."""
        ones = torch.ones(groups, w.shape[1], *w.shape[2:], dtype=x.dtype, device=x.device)
        conv = (F.conv1d, F.conv2d, F.conv3d)[x.dim() - 3]
        reach = conv(x, ones, None, stride, padding, dilation, groups)   # spikes in each receptive field
        return self._steps(reach.reshape(x.shape[0], -1).sum(1)) * (w.shape[0] // groups)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten.mm, aten.bmm):
            self._matmul(args[0], args[1])
        elif packet in (aten.addmm, aten.baddbmm):
            self._matmul(args[1], args[2])
        elif packet in SCATTERS:                                         # message aggregation
            self._add("ac", torch.full((self.T,), args[3].numel() / self.T, dtype=torch.float64))
        elif packet in (aten._sparse_mm, aten._sparse_addmm):              # (a sparse addmm / mm: _matmul)
            a, b = (args[0], args[1]) if packet is aten._sparse_mm else (args[1], args[2])
            self._sparse(a, b.shape[-1])
        elif packet is aten.convolution:
            x, w, _, stride, padding, dilation, transposed, _, groups = args[:9]
            if transposed:
                self._dense(float(x.numel() * w.shape[1] * w[0, 0].numel()))
            elif self._spikes(x):
                self._add("ac", self._conv_ac(x, w, stride, padding, dilation, groups))
            else:
                self._dense(float(out.numel() * w.shape[1] * w[0, 0].numel()))
        elif packet is aten.convolution_backward:
            grad_out, x, w, _, stride, padding, dilation, transposed, _, groups, mask = args[:11]
            dense = float(grad_out.numel() * w.shape[1] * w[0, 0].numel())
            if mask[0]:                                                  # grad wrt input: dense x dense
                self._dense(dense)
            if mask[1]:                                                  # grad wrt weight: x meets grad_out
                if self._spikes(x) and not transposed:
                    self._add("ac", self._conv_ac(x, w, stride, padding, dilation, groups))
                else:
                    self._dense(dense)
        return out


@contextmanager
def attribute(counter: OpCounter, scopes: dict[str, nn.Module], time_major: set[str] = frozenset()):
    """While active, ops run inside scopes[name] (a module's forward) are counted under `name`;
    names in `time_major` have time-major [T * ...] leading rows (others are spread evenly over T)."""
    handles = []
    for name, mod in scopes.items():
        def pre(_m, _inp, name=name):
            _m._opcount_prev = (counter.scope, counter.time_major)
            counter.scope, counter.time_major = name, name in time_major

        def post(_m, _inp, _out):
            counter.scope, counter.time_major = getattr(_m, "_opcount_prev", ("other", True))

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()
