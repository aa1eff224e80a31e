"""Per-layer spike and size statistics of a trained model, and their HDF5 export (`stats.h5`).

`collect(model, x)` runs the model in eval mode over x [N, ...] with forward hooks on every spiking
neuron and on every layer of `model.layers`, and returns per layer:

    spike_counts   [T]  spikes emitted at each time step, summed over samples and neurons (spiking)
    n_neurons      neurons per sample (spiking)
    firing_rate    spikes / (n_neurons * T * N): mean probability that a neuron fires in a step
    out_size       elements of the layer's output per sample (per step for spiking layers)
    params         parameter count of the layer

stats.h5 schema (open with plain h5py; `load(path)` returns it as nested dicts):

    /                attrs: rule, model, data, seed, n_samples, config (YAML), versions (JSON)
    /layers/<name>/  one group per layer ("layers.0", "layers.1", ..., "head"); datasets above, each
                     with attrs["units"]
    /summary/        total_spikes, total_params, mean_firing_rate (scalars)

Writes are atomic: a temporary file in the same directory is renamed over the target on success.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bioplaus.neurons import BaseNeuron

UNITS = {"spike_counts": "spikes", "n_neurons": "neurons", "firing_rate": "spikes/neuron/step",
         "out_size": "elements", "params": "parameters"}


def _layer_of(name: str, layer_names: list[str]) -> str | None:
    for ln in layer_names:
        if name == ln or name.startswith(ln + "."):
            return ln
    return None


@torch.no_grad()
def collect(model: nn.Module, x: Tensor, batch_size: int = 1000) -> dict[str, dict]:
    """Per-layer statistics over inputs x [N, ...] (see module docstring)."""
    layers = {f"layers.{i}": m for i, m in enumerate(model.layers)}
    layers["head"] = model.head
    out: dict[str, dict] = {n: {"params": sum(p.numel() for p in m.parameters())} for n, m in layers.items()}
    hooks = []

    def spike_hook(layer_name):
        def hook(mod, inp, s):
            rec = out[layer_name]
            if mod.step_mode != "m":
                s = s.unsqueeze(0)
            counts = s.reshape(s.shape[0], -1).sum(1).double().cpu()
            rec["spike_counts"] = rec.get("spike_counts", 0) + counts
            rec["n_neurons"] = int(s[0, 0].numel())
        return hook

    def size_hook(layer_name):
        def hook(mod, inp, h):
            spiking = getattr(model, "spiking", False) and layer_name != "head"
            out[layer_name]["out_size"] = int(h[0, 0].numel() if spiking else h[0].numel())
        return hook

    for name, mod in model.named_modules():
        ln = _layer_of(name, list(layers))
        if ln is not None and isinstance(mod, BaseNeuron):
            hooks.append(mod.register_forward_hook(spike_hook(ln)))
    hooks += [m.register_forward_hook(size_hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for rec in out.values():
        if "spike_counts" in rec:
            rec["spike_counts"] = rec["spike_counts"].numpy()
            T = len(rec["spike_counts"])
            rec["firing_rate"] = float(rec["spike_counts"].sum() / (rec["n_neurons"] * T * max(len(x), 1)))
    return out


def summary(layers: dict[str, dict]) -> dict[str, float]:
    spiking = [r for r in layers.values() if "spike_counts" in r]
    return {
        "total_spikes": float(sum(r["spike_counts"].sum() for r in spiking)),
        "total_params": float(sum(r["params"] for r in layers.values())),
        "mean_firing_rate": float(np.mean([r["firing_rate"] for r in spiking])) if spiking else 0.0,
    }


def atomic_path(path: str | Path):
    """Temporary path beside `path`; caller writes it, then `os.replace(tmp, path)`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def write_h5(path: str | Path, layers: dict[str, dict], attrs: dict) -> None:
    """Write the schema above to `path` atomically (no truncated file is ever left behind)."""
    import h5py

    tmp = atomic_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
            g = f.create_group("layers")
            for name, rec in layers.items():
                lg = g.create_group(name)
                for key, val in rec.items():
                    ds = lg.create_dataset(key, data=val)
                    ds.attrs["units"] = UNITS.get(key, "")
            sg = f.create_group("summary")
            for key, val in summary(layers).items():
                sg.create_dataset(key, data=val)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """Read a stats.h5 into {"attrs": {...}, "layers": {name: {key: array|scalar}}, "summary": {...}}."""
    import h5py

    def read(group):
        return {k: (v[()] if v.shape == () else v[:]) for k, v in group.items()}

    with h5py.File(path, "r") as f:
        return {"attrs": dict(f.attrs), "layers": {n: read(g) for n, g in f["layers"].items()},
                "summary": read(f["summary"])}
