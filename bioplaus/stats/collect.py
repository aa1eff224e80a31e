"""Per-layer, per-time-step account of one model's inference: spikes, synaptic ops, MACs, memory, energy.

`collect(model, x, energy)` runs the model in eval mode over x [N, ...] and returns, per layer
("layers.0", ..., "head"), quantities **per inference sample** (totals over x divided by N):

    spike_counts    [T]  spikes emitted at each step (spiking layers)
    n_neurons            neurons per sample (spiking layers)
    firing_rate          spikes / (n_neurons * T)
    neuron_updates  [T]  membrane updates (n_neurons per step)
    sop             [T]  synaptic operations: accumulates driven by binary input spikes
                         (= input spikes x fan-out, exact at conv borders; attention products too)
    mac             [T]  multiply-accumulates with dense operands
    params               parameters of the layer
    in_size, out_size    input / output elements per step
    activation_bytes     output elements over all steps x bits/8
    weight_reads, act_reads, act_writes, state_accesses   memory accesses (see below)
    energy_compute_pj    sop*ac + mac*mac + neuron_updates*(update cost)
    energy_memory_pj     each access priced by the size of the buffer it hits (energy.MemoryModel)
    energy_pj            their sum

Memory accesses (a simple, stated model): one weight read per op (sop + mac) from a buffer of the
layer's weights; each input element read once per step (once in all for a time-invariant input, e.g. a
direct-encoded image, whose first layer is computed once -- see `bioplaus.stats.opcount`); each output element
written once per step; membrane state read and written once per update. Every word is `energy.bits` wide.

Given the rule (`collect(model, x, energy, rule=rule)`, what `bioplaus-run` does), the account follows
the rule's own inference (`rule.predict`, per `rule.inference_layers()`): Forward-Forward's goodness
inference runs C label passes, NoProp's runs its T denoising blocks, and both cost what they cost.

Spikes are counted inside the neuron kernels (leaky_scan's `counts`), at no extra pass over the spikes.
Ops are counted by `bioplaus.stats.opcount.OpCounter` (every matmul/conv aten op, attributed to the layer
whose forward ran it), so any model family is covered without per-layer code.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bioplaus.neurons import BaseNeuron
from bioplaus.neurons.encoding import time_invariant
from bioplaus.stats.energy import EnergyModel
from bioplaus.stats.opcount import OpCounter, attribute


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    out = {f"layers.{i}": m for i, m in enumerate(model.layers)}
    out["head"] = model.head
    return out


def _first_tensor(obj):
    """The first tensor in a module's input tuple or output (blocks may take several inputs)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        return next((t for t in (_first_tensor(o) for o in obj) if t is not None), None)
    return None


def _per_sample(t, time_major: bool) -> int:
    if t is None or t.dim() == 0:
        return 0
    return int(t[0, 0].numel() if time_major and t.dim() > 1 else t[0].numel())


@torch.no_grad()
def collect(model: nn.Module, x: torch.Tensor, energy: EnergyModel, batch_size: int = 500,
            rule: nn.Module | None = None, reduce=None) -> dict[str, dict]:
    """Per-layer statistics per inference sample over x [N, ...] (see module docstring).

    Without `rule`: runs model(x) and reports model.layers and model.head. With a rule: runs rule.predict(x)
    (its real inference: C goodness passes for Forward-Forward, the denoising chain for NoProp) and reports
    rule.inference_layers(); ops run outside those modules are reported under "other".
    reduce(spikes, counts, n) -> (spikes, counts, n), if given, maps the raw totals over x (spikes per layer
    [T], the op counter's counts per scope, the sample count) before per-sample quantities are formed: data
    parallel runs sum them over ranks (bioplaus.distributed.stats_reducer)."""
    layers = rule.inference_layers() if rule is not None else _layers(model)
    spiking = bool(model.spiking)
    T = int(model.T) if spiking else 1
    in_model = {id(m) for m in model.layers}
    time_layers = {n for n, m in layers.items() if id(m) in in_model} if spiking else set()
    rec: dict[str, dict] = {n: {"params": sum(p.numel() for p in m.parameters())} for n, m in layers.items()}
    hooks = []
    neurons: dict[str, list[BaseNeuron]] = {}
    sizes: dict[str, dict[int, int]] = {}   # layer -> {id(neuron): neurons per sample}; a block may hold several
    in_steps: dict[str, int] = {}            # layer -> steps its input is read (1: time-invariant, e.g. direct)

    def neuron_hook(name):
        def hook(mod, inp, s):          # spikes are counted inside the kernel; here only the layer's size
            sizes.setdefault(name, {})[id(mod)] = int(s[0, 0].numel() if mod.step_mode == "m" else s[0].numel())
            rec[name]["n_neurons"] = sum(sizes[name].values())
        return hook

    def size_hook(name):
        def hook(mod, inp, out):         # spiking models: every layer's input is [T, B, ...], the head's output not
            x = _first_tensor(inp)
            rec[name]["in_size"] = _per_sample(x, spiking and name in time_layers | {"head"})
            in_steps[name] = 1 if x is not None and spiking and time_invariant(x) else T
            rec[name]["out_size"] = _per_sample(_first_tensor(out), name in time_layers)
        return hook

    device = next(model.parameters()).device
    for name, layer in layers.items():
        for mod in layer.modules():
            if isinstance(mod, BaseNeuron):
                neurons.setdefault(name, []).append(mod)
                mod.spike_counts = torch.zeros(T, dtype=torch.float64, device=device)
                hooks.append(mod.register_forward_hook(neuron_hook(name)))
    hooks += [m.register_forward_hook(size_hook(n)) for n, m in layers.items()]
    net = rule if rule is not None else model
    weights = list(net.parameters()) + list(net.buffers())
    counter = OpCounter(T=T, weights=weights)
    forward = rule.predict if rule is not None else model
    was_training = net.training
    net.eval()
    try:
        with attribute(counter, layers, time_major=time_layers), counter:
            for i in range(0, len(x), batch_size):
                forward(x[i:i + batch_size].to(device))
        spikes = {name: sum(m.spike_counts.cpu().numpy() for m in mods) for name, mods in neurons.items()}
    finally:
        for h in hooks:
            h.remove()
        for mods in neurons.values():
            for m in mods:
                m.spike_counts = None
        net.train(was_training)
    n = len(x)
    if reduce is not None:
        for name in [*layers, "other"]:         # the same scopes on every rank
            counter.counts.setdefault(name, counter._zeros())
        spikes, counter.counts, n = reduce(spikes, counter.counts, n)
    other = counter.counts.get("other")
    if other is not None and float(other["mac"].sum() + other["ac"].sum()) > 0:
        rec["other"] = {"params": 0}
    n = max(n, 1)
    for name, r in rec.items():
        steps = T if name in time_layers else 1
        c = counter.counts.get(name) or counter._zeros()
        r["sop"] = (c["ac"] / n).numpy()
        r["mac"] = (c["mac"] / n).numpy()
        if name in spikes:
            r["spike_counts"] = spikes[name] / n
            r["firing_rate"] = float(r["spike_counts"].sum() / (r["n_neurons"] * T))
            r["neuron_updates"] = np.full(T, float(r["n_neurons"]))
        updates = float(r.get("neuron_updates", np.zeros(1)).sum())
        word = energy.bits / 8
        r["activation_bytes"] = float(r.get("out_size", 0) * steps * word)
        r["weight_reads"] = float(r["sop"].sum() + r["mac"].sum())
        r["act_reads"] = float(r.get("in_size", 0) * in_steps.get(name, T))
        r["act_writes"] = float(r.get("out_size", 0) * steps)
        r["state_accesses"] = 2 * updates
        r["energy_compute_pj"] = energy.compute_pj(float(r["mac"].sum()), float(r["sop"].sum()), updates)
        r["energy_memory_pj"] = (r["weight_reads"] * energy.access_pj(r["params"] * word)
                                 + r["act_reads"] * energy.access_pj(r.get("in_size", 0) * word)
                                 + r["act_writes"] * energy.access_pj(r.get("out_size", 0) * word)
                                 + r["state_accesses"] * energy.access_pj(r.get("n_neurons", 0) * word))
        r["energy_pj"] = r["energy_compute_pj"] + r["energy_memory_pj"]
    return rec


def summary(layers: dict[str, dict]) -> dict[str, float]:
    """Whole-model totals per inference sample."""
    spiking = [r for r in layers.values() if "spike_counts" in r]

    def total(key):
        return float(sum(np.sum(r.get(key, 0.0)) for r in layers.values()))

    return {
        "spikes_per_sample": float(sum(r["spike_counts"].sum() for r in spiking)),
        "mean_firing_rate": float(np.mean([r["firing_rate"] for r in spiking])) if spiking else 0.0,
        "sop_per_sample": total("sop"),
        "mac_per_sample": total("mac"),
        "params": total("params"),
        "energy_compute_pj_per_sample": total("energy_compute_pj"),
        "energy_memory_pj_per_sample": total("energy_memory_pj"),
        "energy_pj_per_sample": total("energy_pj"),
    }
