"""The Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC) from their HDF5 files in `data.root`.

Files (Cramer et al. 2020, "The Heidelberg spiking data sets for the systematic evaluation of spiking neural
networks", IEEE TNNLS; https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/, decompressed):

    SHD  shd_train.h5 (8156 utterances), shd_test.h5 (2264)         20 classes (digits 0-9, English and German)
    SSC  ssc_train.h5 (75466), ssc_valid.h5 (9981), ssc_test.h5 (20382)      35 classes (speech commands)

Each file holds, per utterance i: `spikes/times[i]` (variable-length float array: spike times in seconds),
`spikes/units[i]` (variable-length integer array, same length: the cochlea channel 0..699 of each spike),
`labels[i]` (the class), plus `extra/` (speaker, keys, meta_info) which is not read. Read with h5py.

Binning: with dt = max_time / T, spike (t, u) of utterance i adds 1 to x[i, floor(t / dt), u]; spikes at
t >= max_time are dropped. x [N, T, 700] spike counts (stored uint8, saturating at 255; SHD at the default
dt = 14 ms never comes close), sample-major as every spike-train Dataset: models read it with
model.encoding=given model.T=T (`Dataset.spike_train` is True). The binned counts are cached once per (file,
T, max_time) as .npy and served memory-mapped (`bioplaus.data.cache`), so SSC's 75k training utterances never
sit in RAM as floats. `bin_spikes` bins a list of utterances (what the cache build runs;
experiments/bench_data.py times it).

n_train / n_test keep a fixed random subset (numpy seed 0, taken in file order) of each split. SSC's
validation file is checked for presence but not read: hold out part of training with trainer.val_fraction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bioplaus.data.base import Dataset, subset_rows
from bioplaus.data.cache import MappedArray, cache_root, cached, file_key, open_array, to_float, write_array
from bioplaus.errors import ConfigError

N_UNITS = 700
FILES = {"shd": {"train": "shd_train.h5", "test": "shd_test.h5"},
         "ssc": {"train": "ssc_train.h5", "valid": "ssc_valid.h5", "test": "ssc_test.h5"}}
N_CLASSES = {"shd": 20, "ssc": 35}
WHERE = ("download the files from https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/ (mirror: "
         "https://compneuro.net/datasets/), decompress them (gunzip) and set data.root to their folder")


def read_h5(path: str | Path, start: int = 0, stop: int | None = None):
    """(times: list of float64 arrays [seconds], units: list of int64 arrays, labels int64 [n]) of utterances
    start..stop of one SHD/SSC file; a ConfigError naming the file when it is corrupt or not in that layout."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("spikes/times", "spikes/units", "labels") if k not in f]
            if missing:
                raise ConfigError(f"{path} lacks {', '.join(missing)}: not an SHD/SSC file; {WHERE}")
            n = len(f["labels"])
            if len(f["spikes/times"]) != n or len(f["spikes/units"]) != n:
                raise ConfigError(f"{path}: {len(f['spikes/times'])} spike-time lists and {len(f['spikes/units'])} "
                                  f"unit lists for {n} labels; the file is corrupt")
            sl = slice(start, n if stop is None else min(stop, n))
            times = [np.asarray(t, dtype=np.float64) for t in f["spikes/times"][sl]]
            units = [np.asarray(u, dtype=np.int64) for u in f["spikes/units"][sl]]
            labels = np.asarray(f["labels"][sl], dtype=np.int64)
    except ConfigError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"{path} is not a readable SHD/SSC HDF5 file ({type(e).__name__}: {e}); the file is "
                          f"corrupt or truncated: {WHERE}") from None
    for i, (t, u) in enumerate(zip(times, units)):
        if t.shape != u.shape or (len(u) and (u.min() < 0 or u.max() >= N_UNITS)):
            raise ConfigError(f"{path}: utterance {start + i} has {len(t)} times and {len(u)} units (units must be "
                              f"0..{N_UNITS - 1}); the file is corrupt")
    return times, units, labels


def n_samples(path: str | Path) -> int:
    """Utterances in one SHD/SSC file (its number of labels)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return len(f["labels"])
    except (OSError, KeyError) as e:
        raise ConfigError(f"{path} is not a readable SHD/SSC HDF5 file ({type(e).__name__}: {e}); the file is "
                          f"corrupt or truncated: {WHERE}") from None


def bin_spikes(times: list[np.ndarray], units: list[np.ndarray], T: int, max_time: float,
               n_units: int = N_UNITS) -> np.ndarray:
    """Spike counts uint8 [n, T, n_units]: x[i, floor(t / dt), u] += 1 per spike, dt = max_time / T, spikes at
    t >= max_time (or t < 0) dropped, counts saturating at 255. One bincount over T * n_units bins per utterance
    (3x faster than one bincount over the whole batch's bins, whose int64 counts outgrow the cache)."""
    out = np.zeros((len(times), T, n_units), dtype=np.uint8)
    dt = max_time / T
    for i, (t, u) in enumerate(zip(times, units)):
        b = np.floor(np.asarray(t, dtype=np.float64) / dt).astype(np.int64)
        keep = (b >= 0) & (b < T)
        counts = np.bincount(b[keep] * n_units + np.asarray(u, dtype=np.int64)[keep], minlength=T * n_units)
        np.minimum(counts, 255, out=counts)
        out[i] = counts.reshape(T, n_units)
    return out


def find_files(name: str, root: str | Path | None) -> dict[str, Path]:
    """{split: path} of the dataset's files in data.root, or a ConfigError naming every expected file."""
    files = FILES[name]
    if root is None:
        raise ConfigError(f"data={name} reads {', '.join(files.values())} from data.root: add data.root=DIR; {WHERE}")
    root = Path(root).expanduser()
    paths = {split: root / f for split, f in files.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        packed = [m for m in missing if (root / f"{m}.gz").is_file() or (root / f"{m}.zip").is_file()]
        hint = f"decompress {', '.join(p + '.gz/.zip' for p in packed)} first; " if packed else ""
        raise ConfigError(f"data={name}: missing {', '.join(missing)} in {root}; {hint}{WHERE}")
    return paths


def _build(paths: dict[str, Path], T: int, max_time: float, chunk: int = 512):
    def build(tmp: Path) -> None:
        for split in ("train", "test"):
            n = n_samples(paths[split])
            x = write_array(tmp, f"x_{split}", (n, T, N_UNITS), np.uint8)
            labels = []
            for i in range(0, n, chunk):
                times, units, y = read_h5(paths[split], i, i + chunk)
                x[i:i + len(y)] = bin_spikes(times, units, T, max_time)
                labels.append(y)
            x.flush()
            del x
            np.save(tmp / f"y_{split}.npy", np.concatenate(labels) if labels else np.zeros(0, np.int64))
    return build


def heidelberg(name: str, root: str | Path | None, T: int = 100, max_time: float = 1.4, n_train: int | None = None,
               n_test: int | None = None, cache_dir: str | None = None) -> Dataset:
    """SHD or SSC as binned spike trains x [N, T, 700] (module docstring), memory-mapped from the cache."""
    if int(T) < 1 or not float(max_time) > 0:
        raise ConfigError(f"data.T must be >= 1 and data.max_time > 0 (seconds), got T={T}, max_time={max_time}")
    T, max_time = int(T), float(max_time)
    paths = find_files(name, root)
    used = [paths["train"], paths["test"]]
    entry = cached(cache_root(paths["train"].parent, cache_dir), name,
                   {"name": name, "T": T, "max_time": max_time, "files": file_key(used)}, _build(paths, T, max_time))
    xtr, xte = open_array(entry, "x_train"), open_array(entry, "x_test")
    ytr, yte = open_array(entry, "y_train", mmap=False), open_array(entry, "y_test", mmap=False)
    rtr, rte = subset_rows(n_train, len(xtr), "data.n_train"), subset_rows(n_test, len(xte), "data.n_test")
    y_all = np.concatenate([ytr, yte])
    if len(y_all) and (y_all.min() < 0 or y_all.max() >= N_CLASSES[name]):
        raise ConfigError(f"{paths['train'].parent}: labels must be 0..{N_CLASSES[name] - 1} for {name}, found "
                          f"{y_all.min()}..{y_all.max()}; are these {name.upper()} files?")
    return Dataset(name, MappedArray(xtr, rtr, to_float), torch.from_numpy(ytr[rtr]), MappedArray(xte, rte, to_float),
                   torch.from_numpy(yte[rte]), N_CLASSES[name], spike_train=True)


def shd(root: str | None = None, T: int = 100, max_time: float = 1.4, n_train: int | None = None,
        n_test: int | None = None, cache_dir: str | None = None) -> Dataset:
    """Spiking Heidelberg Digits: x [N, T, 700] spike counts over max_time seconds, 20 classes."""
    return heidelberg("shd", root, T, max_time, n_train, n_test, cache_dir)


def ssc(root: str | None = None, T: int = 100, max_time: float = 1.0, n_train: int | None = None,
        n_test: int | None = None, cache_dir: str | None = None) -> Dataset:
    """Spiking Speech Commands: x [N, T, 700] spike counts over max_time seconds, 35 classes."""
    return heidelberg("ssc", root, T, max_time, n_train, n_test, cache_dir)


__all__ = ["FILES", "N_CLASSES", "N_UNITS", "bin_spikes", "find_files", "heidelberg", "read_h5", "shd", "ssc"]
