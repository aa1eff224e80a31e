"""Offline datasets (nothing downloads) as in-memory tensors, and a seeded batch iterator.

- `digits()`: scikit-learn's bundled 8x8 digits, 80/20 stratified split (random_state=0), pixels/16.
  x [N, 1, 8, 8] float32 in [0, 1], y [N] int64, 10 classes. 1437 train / 360 test.
- `fashion(root, n_train, n_test)`: Fashion-MNIST from local IDX files (Debian package
  `dataset-fashion-mnist` -> /usr/share/datasets/fashion-mnist), pixels/255, x [N, 1, 28, 28].
  The Fashion-10k protocol is n_train=10000 (the first 10k training images), full test set.
- `mnist(root, ...)`: MNIST from local IDX files in the same format (no default location).
- `spike_timing(...)`: a generated spike-train task whose label is carried by spike *timing* only: every
  channel fires exactly once per sample, at a class-specific time (jittered), so spike counts are the same
  for every class and a model of rates alone is at chance. x [N, T, F] (sample-major; spiking models read
  it with model.encoding=given), `Dataset.spike_train` is True.
- sequence data (character text, multi-query associative recall, patch sequences): `bioplaus.seqdata`.

Tasks (`Dataset.task`): "classify" (y [N], one label per sample) or "lm" (y [N, L], one target per
token; IGNORE_INDEX = -100 where nothing is asked, e.g. non-query positions of MQAR).

A missing file raises ConfigError naming every expected file and how to get them.
"""
from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bioplaus.errors import ConfigError

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
TASKS = ("classify", "lm")
IGNORE_INDEX = -100          # target of a position that is not scored (cross-entropy's ignore_index)


@dataclass
class Dataset:
    """A dataset held in memory. classify: x [N, *in_shape] float32, y [N] int64 labels.
    lm: x [N, L] int64 token ids, y [N, L] int64 per-token targets (IGNORE_INDEX = not scored);
    n_classes is then the vocabulary size. `vocab`: the characters in id order (character text)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    task: str = "classify"
    vocab: str | None = None
    spike_train: bool = False        # x [N, T, ...] is already a spike train (read with encoding=given)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"unknown data task '{self.task}': choose one of {', '.join(TASKS)}")

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        what = f"{self.n_classes} classes" if self.task == "classify" else f"{self.task}, vocab {self.n_classes}"
        return f"Dataset({self.name}: train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, {what})"


def _subset(n: int | None, total: int, what: str) -> int:
    if n is None:
        return total
    if not 1 <= int(n) <= total:
        raise ConfigError(f"{what}={n} is out of range: choose 1..{total} (or null for all)")
    return int(n)


def digits(n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """sklearn digits, the 'digits' protocol: stratified 80/20 split with random_state=0, x / 16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data, d.target, test_size=0.2, stratify=d.target,
                                          random_state=0)
    a, b = _subset(n_train, len(xtr), "data.n_train"), _subset(n_test, len(xte), "data.n_test")

    def t(x):
        return torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0

    return Dataset("digits", t(xtr[:a]), torch.tensor(ytr[:a]), t(xte[:b]), torch.tensor(yte[:b]), 10)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): unsigned-byte data with its dimensions from the header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                          "point data.root at the original MNIST-format files")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ConfigError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def idx_dataset(name: str, root: str | Path, n_train: int | None = None, n_test: int | None = None,
                hint: str = "") -> Dataset:
    """An MNIST-format dataset (4 IDX files, .gz or raw) from a local directory, pixels / 255."""
    root = Path(root).expanduser()
    paths = {k: _find(root, stem) for k, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise ConfigError(f"data={name}: missing {', '.join(missing)} in {root}; "
                          f"{hint}or set data.root=DIR to a folder holding the four IDX files")
    arr = {k: read_idx(p) for k, p in paths.items()}
    a = _subset(n_train, len(arr["train_x"]), "data.n_train")
    b = _subset(n_test, len(arr["test_x"]), "data.n_test")

    def img(x):
        return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)

    y_train = torch.from_numpy(arr["train_y"][:a].astype(np.int64))
    y_test = torch.from_numpy(arr["test_y"][:b].astype(np.int64))
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, img(arr["train_x"][:a]), y_train, img(arr["test_x"][:b]), y_test, n_classes)


def fashion(root: str = FASHION_ROOT, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """Fashion-MNIST from local IDX files; n_train=10000 gives the Fashion-10k protocol."""
    hint = f"install them with `apt-get install dataset-fashion-mnist` (Debian; puts them in {FASHION_ROOT}) "
    return idx_dataset("fashion", root, n_train, n_test, hint)


def mnist(root: str, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """MNIST from local IDX files (no package ships MNIST offline: give data.root)."""
    return idx_dataset("mnist", root, n_train, n_test)


def spike_timing(n_train: int = 2000, n_test: int = 500, T: int = 10, channels: int = 16, n_classes: int = 10,
                 jitter: int = 2, seed: int = 0) -> Dataset:
    """Spike-timing task: class c has a template t_c [channels] of firing steps drawn uniformly from 0..T-1;
    a sample of class c fires channel i once, at clip(t_c[i] + u, 0, T-1) with u uniform in -jitter..jitter.
    x [N, T, channels] float32 in {0, 1} with x.sum(1) == 1 everywhere (counts carry no label), y [N] in
    0..n_classes-1 (balanced). Seeded: the same arguments give the same data."""
    if T < 2 or channels < 1 or n_classes < 2 or jitter < 0 or n_train < 1 or n_test < 1:
        raise ConfigError(f"spike_timing needs T >= 2, channels >= 1, n_classes >= 2, jitter >= 0 and n_train, "
                          f"n_test >= 1; got T={T}, channels={channels}, n_classes={n_classes}, jitter={jitter}, "
                          f"n_train={n_train}, n_test={n_test}")
    gen = torch.Generator().manual_seed(int(seed))
    templates = torch.randint(0, T, (n_classes, channels), generator=gen)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % n_classes
        y = y[torch.randperm(n, generator=gen)]
        shift = torch.randint(-jitter, jitter + 1, (n, channels), generator=gen)
        t = (templates[y] + shift).clamp(0, T - 1)                          # [n, channels] firing steps
        x = torch.zeros(n, T, channels)
        x.scatter_(1, t.unsqueeze(1), 1.0)
        return x, y

    (xtr, ytr), (xte, yte) = make(int(n_train)), make(int(n_test))
    return Dataset("spike_timing", xtr, ytr, xte, yte, int(n_classes), spike_train=True)


def batches(x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x [b, ...], y [b, ...]) mini-batches; the last one may be smaller."""
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
