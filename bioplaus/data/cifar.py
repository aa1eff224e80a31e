"""CIFAR-10 and CIFAR-100 from the publishers' python batches in `data.root` (nothing downloads).

Files (Krizhevsky 2009; https://www.cs.toronto.edu/~kriz/cifar.html, "CIFAR-10 python version" and
"CIFAR-100 python version"), read from data.root or its `cifar-10-batches-py/` / `cifar-100-python/` subfolder:

    CIFAR-10   data_batch_1 .. data_batch_5 (10000 images each), test_batch (10000), batches.meta
    CIFAR-100  train (50000), test (10000), meta

Each batch is a pickled dict (written by Python 2; read with encoding="bytes"): b"data" a uint8 array
[n, 3072] whose row is one 32x32 image stored channel-major (1024 red values row by row, then green, then
blue), b"labels" (CIFAR-10) or b"fine_labels" / b"coarse_labels" (CIFAR-100; 100 / 20 classes) lists of n ints,
b"filenames", b"batch_label". The meta file lists the class names (b"label_names"; b"fine_label_names",
b"coarse_label_names"). Batches are unpickled with only numpy's array constructors allowed, so a file that is
not a CIFAR batch cannot run code; a corrupt or truncated file is one ConfigError naming it.

The decoded images are cached once as uint8 [N, 3, 32, 32] .npy files (`bioplaus.data.cache`) and served
memory-mapped: x_train / x_test are MappedArrays whose batches come out as float32 (x / 255 - mean_c) / std_c,
with the per-channel mean and std of the full training set (CIFAR-10: about (0.491, 0.482, 0.447) and
(0.247, 0.243, 0.262)). `augment=True` (the default for training) adds the standard random crop with 4-pixel
padding and horizontal flip (`bioplaus.data.augment.Augment`) to training batches only.
n_train / n_test keep the first n images of each split (the batches are in random order).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from bioplaus.data.augment import make_augment
from bioplaus.data.base import Dataset, subset
from bioplaus.data.cache import MappedArray, Normalize, cache_root, cached, file_key, open_array, write_array
from bioplaus.errors import ConfigError

WHERE = ("get the 'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and set "
         "data.root to the folder that holds its files")
LAYOUT = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "labels": {"fine": b"labels"}},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "labels": {"fine": b"fine_labels", "coarse": b"coarse_labels"}},
}
_ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch: only numpy's array constructors (and the latin-1 codec) may be looked up."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        if module == "numpy.core.multiarray" and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def read_pickle(path: str | Path) -> dict:
    """One CIFAR pickle as a dict with bytes keys; a ConfigError naming the file when it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, ImportError) as e:
        raise ConfigError(f"{path} is not a readable CIFAR python batch ({type(e).__name__}: {e}); the file is "
                          f"corrupt or truncated: {WHERE}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} is not a CIFAR python batch (holds a {type(obj).__name__}, not a dict); {WHERE}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def read_batch(path: str | Path, label_keys: tuple[bytes, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(images uint8 [n, 3, 32, 32], one int64 label array [n] per key) from one batch file."""
    d = read_pickle(path)
    data = d.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ConfigError(f"{path}: b'data' must be a uint8 array [n, 3072] (32x32x3 images), got {got}; {WHERE}")
    labels = []
    for key in label_keys:
        if key not in d:
            raise ConfigError(f"{path} has no {key!r} entry (keys: {sorted(d)}): is it a file of the other CIFAR?")
        y = np.asarray(d[key], dtype=np.int64)
        if y.shape != (len(data),):
            raise ConfigError(f"{path}: {len(y)} labels for {len(data)} images; the file is corrupt")
        labels.append(y)
    return data.reshape(-1, 3, 32, 32), labels


def find_folder(name: str, root: str | Path | None) -> Path:
    """The folder holding the CIFAR files (data.root or its standard subfolder), or a ConfigError naming every
    expected file and where to get them."""
    lay = LAYOUT[name]
    files = [*lay["train"], *lay["test"], lay["meta"]]
    if root is None:
        raise ConfigError(f"data={name} reads {', '.join(files)} from data.root: add data.root=DIR; {WHERE}")
    root = Path(root).expanduser()
    for folder in (root, root / lay["folder"]):
        if all((folder / f).is_file() for f in files):
            return folder
    missing = [f for f in files if not (root / f).is_file() and not (root / lay["folder"] / f).is_file()]
    raise ConfigError(f"data={name}: missing {', '.join(missing)} in {root} (or {root / lay['folder']}); {WHERE}")


def _channel_stats(x: np.ndarray, chunk: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of x / 255, x uint8 [N, 3, H, W] (population std, chunked float64 sums)."""
    s = np.zeros(3)
    s2 = np.zeros(3)
    for i in range(0, len(x), chunk):
        b = x[i:i + chunk].astype(np.float64) / 255.0
        s += b.sum((0, 2, 3))
        s2 += (b * b).sum((0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    return mean, np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))


def _build(name: str, folder: Path, label_key: bytes):
    lay = LAYOUT[name]

    def build(tmp: Path) -> None:
        for split in ("train", "test"):
            parts = [read_batch(folder / f, (label_key,)) for f in lay[split]]
            n = sum(len(p[0]) for p in parts)
            x = write_array(tmp, f"x_{split}", (n, 3, 32, 32), np.uint8)
            i = 0
            for data, _ in parts:
                x[i:i + len(data)] = data
                i += len(data)
            x.flush()
            np.save(tmp / f"y_{split}.npy", np.concatenate([p[1][0] for p in parts]))
            if split == "train":
                mean, std = _channel_stats(x)
                np.save(tmp / "stats.npy", np.stack([mean, std]))
            del x
        read_pickle(folder / lay["meta"])               # a corrupt meta file is reported, not ignored
    return build


def load_cifar(name: str, root: str | Path | None, n_train: int | None = None, n_test: int | None = None,
               augment: bool = True, crop_padding: int = 4, flip: bool = True, labels: str = "fine",
               cache_dir: str | None = None) -> Dataset:
    """CIFAR-10 / CIFAR-100 as a memory-mapped Dataset (module docstring). labels: CIFAR-100's "fine" (100
    classes) or "coarse" (20 superclasses)."""
    lay = LAYOUT[name]
    if labels not in lay["labels"]:
        raise ConfigError(f"data.labels='{labels}' is not offered by {name}: choose one of {', '.join(lay['labels'])}")
    folder = find_folder(name, root)
    files = [folder / f for f in (*lay["train"], *lay["test"], lay["meta"])]
    entry = cached(cache_root(folder, cache_dir), name, {"name": name, "labels": labels, "files": file_key(files)},
                   _build(name, folder, lay["labels"][labels]))
    mean, std = open_array(entry, "stats", mmap=False)
    convert = Normalize(1 / 255.0, mean, std)
    xtr, xte = open_array(entry, "x_train"), open_array(entry, "x_test")
    ytr, yte = open_array(entry, "y_train", mmap=False), open_array(entry, "y_test", mmap=False)
    a, b = subset(n_train, len(xtr), "data.n_train"), subset(n_test, len(xte), "data.n_test")
    n_classes = 10 if name == "cifar10" else (100 if labels == "fine" else 20)
    return Dataset(name if labels == "fine" else f"{name}_{labels}", MappedArray(xtr[:a], convert=convert),
                   torch.from_numpy(ytr[:a].copy()), MappedArray(xte[:b], convert=convert),
                   torch.from_numpy(yte[:b].copy()), n_classes, augment=make_augment(augment, crop_padding, flip))


def cifar10(root: str | None = None, n_train: int | None = None, n_test: int | None = None, augment: bool = True,
            crop_padding: int = 4, flip: bool = True, cache_dir: str | None = None) -> Dataset:
    """CIFAR-10 (10 classes, 50000 / 10000) from the python batches in `root`."""
    return load_cifar("cifar10", root, n_train, n_test, augment, crop_padding, flip, "fine", cache_dir)


def cifar100(root: str | None = None, n_train: int | None = None, n_test: int | None = None, augment: bool = True,
             crop_padding: int = 4, flip: bool = True, labels: str = "fine", cache_dir: str | None = None) -> Dataset:
    """CIFAR-100 (100 fine or 20 coarse classes, 50000 / 10000) from the python files in `root`."""
    return load_cifar("cifar100", root, n_train, n_test, augment, crop_padding, flip, labels, cache_dir)


__all__ = ["LAYOUT", "cifar10", "cifar100", "find_folder", "load_cifar", "read_batch", "read_pickle"]
