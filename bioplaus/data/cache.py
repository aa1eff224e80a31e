"""Memory-mapped datasets: a disk cache of decoded samples, and an array the trainer indexes like a tensor.

Large benchmark sets (CIFAR, SHD / SSC, N-MNIST, DVS128 Gesture) are decoded once from their publishers' files
into `.npy` arrays in a cache folder, then opened with numpy's `mmap_mode="r"`: only the rows a batch asks for
are read, so no set needs all of its frames in RAM.

- `MappedArray(array, rows=None, convert=...)`: rows of a (memory-mapped) array that index like a tensor.
  `x[idx]` (an int, slice, list, numpy array or LongTensor) reads those rows (in ascending file order, then
  back in the asked order) and returns `convert(rows)`, a torch tensor (float32 by default; `Normalize`
  scales and standardises per channel). `len(x)`, `x.shape` (torch.Size, the converted sample shape) and
  `x.index_select(0, idx)` (a lazy row subset, another MappedArray: how the trainer holds out validation
  samples) work as for a tensor. The stored dtype stays on disk (uint8 pixels, uint8 / int16 event counts).
- `cache_root(root, cache_dir)`: where caches live: `data.cache_dir`, else `<data.root>/bioplaus-cache` when
  data.root is writable, else `~/.cache/bioplaus/<hash of data.root>`.
- `cached(folder, name, key, build)`: the cache entry `<folder>/<name>-<hash of key>/`, built once by
  `build(tmp_dir)` (which writes .npy files into tmp_dir) and renamed into place atomically, so a killed
  build leaves nothing behind. The key names the source files (path, size, mtime) and every setting that
  changes the decoded values, so a changed file or setting builds a new entry.
- `open_array(entry, name)`: one cached array, memory-mapped read-only; `write_array(tmp, name, shape, dtype)`:
  a writable memory-mapped .npy to fill during a build.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CACHE_VERSION = 1          # bump when a decoder's output changes: every old cache entry is then rebuilt


class Normalize:
    """rows (any dtype) -> float32 tensor (x * scale - mean[c]) / std[c], c on axis `channel_axis` of a sample
    (mean/std None: only the scale). Broadcasts over the batch axis and the sample's other axes."""

    def __init__(self, scale: float = 1.0, mean=None, std=None, channel_axis: int = 0, sample_ndim: int = 3):
        self.scale = float(scale)
        self.mean = self.std = None
        if mean is not None:
            shape = [1] * (sample_ndim + 1)
            shape[channel_axis + 1] = -1
            self.mean = torch.tensor(np.asarray(mean, dtype=np.float32)).reshape(shape)
            self.std = torch.tensor(np.asarray(std, dtype=np.float32)).reshape(shape)

    def __call__(self, rows: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        if self.scale != 1.0:
            x.mul_(self.scale)
        if self.mean is not None:
            x.sub_(self.mean).div_(self.std)
        return x


def to_float(rows: np.ndarray) -> Tensor:
    """rows -> float32 tensor, values unchanged (spike or event counts)."""
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


class MappedArray:
    """Rows of a (memory-mapped) numpy array [N, ...] that the trainer indexes like a tensor (module docstring).
    rows: positions into `array` this view holds (None = all, in order)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray | None = None,
                 convert: Callable[[np.ndarray], Tensor] = to_float):
        self.array, self.convert = array, convert
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._sample_shape: torch.Size | None = None

    def __len__(self) -> int:
        return len(self.array) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        """(N, *converted sample shape)."""
        if self._sample_shape is None:
            self._sample_shape = self.convert(self.array[:1]).shape[1:]
        return torch.Size((len(self), *self._sample_shape))

    @property
    def dtype(self) -> torch.dtype:
        return self.convert(self.array[:1]).dtype

    def _positions(self, idx) -> np.ndarray:
        """Positions into self.array of the rows `idx` asks for (ints, slices, lists, arrays, tensors)."""
        if isinstance(idx, Tensor):
            idx = idx.cpu().numpy()
        pos = np.arange(len(self), dtype=np.int64)[idx]
        return pos if self.rows is None else self.rows[pos]

    def __getitem__(self, idx) -> Tensor:
        pos = self._positions(idx)
        if pos.ndim == 0:
            return self.convert(self.array[int(pos)][None])[0]
        if len(pos) and np.all(np.diff(pos) == 1):                   # a contiguous run: one slice read
            return self.convert(self.array[pos[0]:pos[-1] + 1])
        order = np.argsort(pos, kind="stable")                       # read in file order, hand back as asked
        rows = self.array[pos[order]]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return self.convert(rows[back])

    def index_select(self, dim: int, index) -> MappedArray:
        """The rows `index` as another (lazy) MappedArray; dim must be 0."""
        if dim != 0:
            raise ValueError("MappedArray.index_select selects rows only (dim=0)")
        return MappedArray(self.array, self._positions(index), self.convert)

    def __repr__(self) -> str:
        return f"MappedArray({tuple(self.shape)}, stored {self.array.dtype})"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def cache_root(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder that holds this data.root's cache entries (module docstring)."""
    if cache_dir is not None:
        path = Path(cache_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = Path(root).expanduser().resolve()
    if _writable(root / "bioplaus-cache"):
        return root / "bioplaus-cache"
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bioplaus" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_key(paths) -> list:
    """What identifies source files in a cache key: (name, size, mtime in ns) of each."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cached(folder: Path, name: str, key: dict, build: Callable[[Path], None]) -> Path:
    """The cache entry folder for (name, key), building it with build(tmp_dir) when absent (atomic rename)."""
    blob = json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True, default=str)
    entry = Path(folder) / f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"
    if (entry / "key.json").is_file():
        return entry
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=folder))
    try:
        build(tmp)
        (tmp / "key.json").write_text(blob)
        try:
            os.rename(tmp, entry)
        except OSError:                          # another process finished the same entry first
            if not (entry / "key.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def write_array(folder: Path, name: str, shape: tuple[int, ...], dtype) -> np.memmap:
    """A writable memory-mapped `<folder>/<name>.npy` of that shape and dtype (zero-filled), to fill in place."""
    return np.lib.format.open_memmap(Path(folder) / f"{name}.npy", mode="w+", dtype=dtype, shape=tuple(shape))


def open_array(entry: Path, name: str, mmap: bool = True) -> np.ndarray:
    """A cached array, memory-mapped read-only (mmap=False: loaded into memory; labels are small)."""
    return np.load(Path(entry) / f"{name}.npy", mmap_mode="r" if mmap else None)


__all__ = ["CACHE_VERSION", "MappedArray", "Normalize", "cache_root", "cached", "file_key", "open_array",
           "to_float", "write_array"]
