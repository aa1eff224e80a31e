"""Image datasets from local files or bundled with a package (nothing downloads), as in-memory tensors.

- `digits()`: scikit-learn's bundled 8x8 digits, 80/20 stratified split (random_state=0), pixels/16.
  x [N, 1, 8, 8] float32 in [0, 1], y [N] int64, 10 classes. 1437 train / 360 test.
- `fashion(root, n_train, n_test)`: Fashion-MNIST from local IDX files (Debian package
  `dataset-fashion-mnist` -> /usr/share/datasets/fashion-mnist), pixels/255, x [N, 1, 28, 28].
  The Fashion-10k protocol is n_train=10000 (the first 10k training images), full test set.
- `mnist(root, ...)`: MNIST from local IDX files in the same format (no default location).

A missing file raises ConfigError naming every expected file and how to get them; a corrupt one (bad magic,
cut inside its header or data, a truncated .gz), image and label files whose counts differ, or a label outside
0..n_classes-1 raise ConfigError naming the file and what is wrong, before any training.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from bioplaus.data.base import Dataset, subset
from bioplaus.errors import ConfigError

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def digits(n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """sklearn digits, the 'digits' protocol: stratified 80/20 split with random_state=0, x / 16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data, d.target, test_size=0.2, stratify=d.target,
                                          random_state=0)
    a, b = subset(n_train, len(xtr), "data.n_train"), subset(n_test, len(xte), "data.n_test")

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
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ConfigError(f"{path} cannot be read ({e}): the file is damaged or cut short; "
                          "get a fresh copy of it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                          "point data.root at the original MNIST-format files")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"{path} is truncated inside its header ({len(raw)} bytes for {ndim} dimensions); "
                          "get a fresh copy of it")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ConfigError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def check_idx_pair(images: Path, labels: Path, x: np.ndarray, y: np.ndarray, n_classes: int) -> None:
    """Images [N, H, W] and labels [N] with every label in 0..n_classes-1, or a ConfigError naming the file."""
    if x.ndim != 3:
        raise ConfigError(f"{images} holds an array of shape {x.shape}, not images [N, H, W]")
    if y.ndim != 1:
        raise ConfigError(f"{labels} holds an array of shape {y.shape}, not labels [N]")
    if len(x) != len(y):
        raise ConfigError(f"{images} has {len(x)} images but {labels} has {len(y)} labels: the two files do not "
                          "belong together")
    if len(y) and int(y.max()) >= n_classes:
        bad = int(np.argmax(y >= n_classes))
        raise ConfigError(f"{labels}: label {int(y[bad])} at index {bad} is out of range for {n_classes} classes "
                          f"(0..{n_classes - 1}); the file is damaged or not this dataset's")


def idx_dataset(name: str, root: str | Path, n_train: int | None = None, n_test: int | None = None,
                hint: str = "", n_classes: int = 10) -> Dataset:
    """An MNIST-format dataset (4 IDX files, .gz or raw) from a local directory, pixels / 255, labels
    0..n_classes-1."""
    root = Path(root).expanduser()
    paths = {k: _find(root, stem) for k, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise ConfigError(f"data={name}: missing {', '.join(missing)} in {root}; "
                          f"{hint}or set data.root=DIR to a folder holding the four IDX files")
    arr = {k: read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        check_idx_pair(paths[f"{part}_x"], paths[f"{part}_y"], arr[f"{part}_x"], arr[f"{part}_y"], n_classes)
    a = subset(n_train, len(arr["train_x"]), "data.n_train")
    b = subset(n_test, len(arr["test_x"]), "data.n_test")

    def img(x):
        return torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)

    y_train = torch.from_numpy(arr["train_y"][:a].astype(np.int64))
    y_test = torch.from_numpy(arr["test_y"][:b].astype(np.int64))
    return Dataset(name, img(arr["train_x"][:a]), y_train, img(arr["test_x"][:b]), y_test, n_classes)


def fashion(root: str = FASHION_ROOT, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """Fashion-MNIST from local IDX files; n_train=10000 gives the Fashion-10k protocol."""
    hint = f"install them with `apt-get install dataset-fashion-mnist` (Debian; puts them in {FASHION_ROOT}) "
    return idx_dataset("fashion", root, n_train, n_test, hint)


def mnist(root: str, n_train: int | None = None, n_test: int | None = None, n_classes: int = 10) -> Dataset:
    """MNIST from local IDX files (no package ships MNIST offline: give data.root); another MNIST-format set
    with more classes (EMNIST letters: data.n_classes=27) reads the same way."""
    return idx_dataset("mnist", root, n_train, n_test, n_classes=int(n_classes))


