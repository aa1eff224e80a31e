"""Atomic export of statistics: stats.h5 (HDF5, h5py) plus a flat stats.json / stats.csv.

Every write goes to a temporary file in the target's directory and is renamed over the target only
when complete, so a crash mid-write never leaves a truncated file (nor the temporary one).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from bioplaus.atomic import atomic_write
from bioplaus.errors import ConfigError

UNITS = {
    "spike_counts": "spikes/sample/step", "n_neurons": "neurons", "firing_rate": "spikes/neuron/step",
    "neuron_updates": "updates/sample/step", "sop": "ops/sample/step", "mac": "ops/sample/step",
    "params": "parameters", "in_size": "elements/step", "out_size": "elements/step",
    "activation_bytes": "bytes/sample", "weight_reads": "accesses/sample", "act_reads": "accesses/sample",
    "act_writes": "accesses/sample", "state_accesses": "accesses/sample", "energy_compute_pj": "pJ/sample",
    "energy_memory_pj": "pJ/sample", "energy_pj": "pJ/sample",
}


def _attr(v):
    return v if isinstance(v, (int, float, str, bool, np.integer, np.floating)) else json.dumps(v, default=float)


def write_h5(path: str | Path, layers: dict[str, dict], summary: dict, attrs: dict) -> None:
    """stats.h5: root attrs, /layers/<name>/<quantity> (with attrs['units']), /summary/<total>."""
    import h5py

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = _attr(v)
            g = f.create_group("layers")
            for name, rec in layers.items():
                lg = g.create_group(name)
                for key, val in rec.items():
                    lg.create_dataset(key, data=val).attrs["units"] = UNITS.get(key, "")
            sg = f.create_group("summary")
            for key, val in summary.items():
                sg.create_dataset(key, data=val)

    atomic_write(path, write)


def load(path: str | Path) -> dict:
    """Read a stats.h5 into {"attrs": {...}, "layers": {name: {key: array|scalar}}, "summary": {...}}.
    A missing file, a file that is not HDF5 (or is cut short) and an HDF5 file without the `layers` and `summary`
    groups of a bioplaus stats.h5 each raise one ConfigError naming the file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (bioplaus-run writes stats.h5 into each run dir)")

    def read(group):
        return {k: (v[()] if v.shape == () else v[:]) for k, v in group.items()}

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConfigError(f"{path} is not a readable HDF5 file ({str(e).splitlines()[0]}): give a stats.h5 "
                          "written by bioplaus-run") from None
    with f:
        missing = [g for g in ("layers", "summary") if not isinstance(f.get(g), h5py.Group)]
        if missing:
            raise ConfigError(f"{path} is HDF5 but has no {' or '.join(missing)} group: not a bioplaus stats.h5")
        try:
            return {"attrs": dict(f.attrs), "layers": {n: read(g) for n, g in f["layers"].items()},
                    "summary": read(f["summary"])}
        except (OSError, AttributeError, KeyError) as e:
            raise ConfigError(f"{path} is damaged or not a bioplaus stats.h5 ({e})") from None


def write_flat(run_dir: str | Path, layers: dict[str, dict], summary: dict, attrs: dict) -> None:
    """stats.json (attrs, summary, per-layer scalars; arrays summed over steps) and stats.csv (a row per layer)."""
    run_dir = Path(run_dir)
    flat = {n: {k: float(np.sum(v)) for k, v in r.items()} for n, r in layers.items()}
    doc = {"attrs": {k: v for k, v in attrs.items() if k != "config"}, "summary": summary, "layers": flat}
    atomic_write(run_dir / "stats.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2, default=float)))
    keys = sorted({k for r in flat.values() for k in r})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layer", *keys])
    for n, r in flat.items():
        w.writerow([n, *(r.get(k, "") for k in keys)])
    atomic_write(run_dir / "stats.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
