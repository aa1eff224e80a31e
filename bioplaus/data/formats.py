"""Writers of the benchmark sets' own file formats, byte for byte as their publishers lay them out, so tests and
benchmarks run the real readers offline (and so you can bring your own recordings into a format the loaders
read). The readers are in `cifar`, `heidelberg` and `events`; the layouts are described there.

- `write_cifar(folder, name, x_train, y_train, x_test, y_test)`: CIFAR-10 data_batch_1..5 / test_batch /
  batches.meta, or CIFAR-100 train / test / meta (y = (fine, coarse)); pickles with bytes keys, images as
  uint8 rows [n, 3072] channel-major (R 1024, G 1024, B 1024).
- `write_heidelberg(path, times, units, labels)`: an SHD/SSC HDF5 file: spikes/times (variable-length
  float16, seconds), spikes/units (variable-length uint16), labels (uint16), extra/speaker, extra/keys.
- `nmnist_bytes(x, y, t, p)` / `write_nmnist(root, split, digit, name, ...)`: N-MNIST's 40-bit events.
- `aedat31_bytes(x, y, t, p)` / `write_gesture(folder, ...)`: an AEDAT 3.1 polarity recording (header lines,
  28-byte packet headers, 8-byte events), its _labels.csv and the trials_to_*.txt lists.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from bioplaus.data.cifar import LAYOUT


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(folder: str | Path, name: str, x_train: np.ndarray, y_train, x_test: np.ndarray, y_test) -> Path:
    """Write CIFAR-10 (name "cifar10": y arrays of labels) or CIFAR-100 ("cifar100": y = (fine, coarse)) python
    files into folder; x uint8 [n, 3, 32, 32]. CIFAR-10's training set is split over 5 equal batches."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lay = LAYOUT[name]

    def batch(label: str, x: np.ndarray, ys: dict) -> dict:
        d = {b"batch_label": label.encode(), b"data": np.ascontiguousarray(x, dtype=np.uint8).reshape(len(x), 3072),
             b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(x))]}
        d.update({k: [int(v) for v in y] for k, y in ys.items()})
        return d

    if name == "cifar10":
        parts = np.array_split(np.arange(len(x_train)), len(lay["train"]))
        for i, (file, idx) in enumerate(zip(lay["train"], parts)):
            labels = {b"labels": np.asarray(y_train)[idx]}
            _dump(folder / file, batch(f"training batch {i + 1} of 5", x_train[idx], labels))
        _dump(folder / "test_batch", batch("testing batch 1 of 1", x_test, {b"labels": y_test}))
        _dump(folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)],
                                        b"num_cases_per_batch": 10000, b"num_vis": 3072})
    else:
        for file, x, (fine, coarse) in (("train", x_train, y_train), ("test", x_test, y_test)):
            _dump(folder / file, batch(file, x, {b"fine_labels": fine, b"coarse_labels": coarse}))
        _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return folder


def write_heidelberg(path: str | Path, times: list, units: list, labels, speakers=None) -> Path:
    """An SHD/SSC-layout HDF5 file: times[i] seconds (stored float16), units[i] channels 0..699 (uint16)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float16))
        u = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
        for i in range(n):
            t[i] = np.asarray(times[i], dtype=np.float16)
            u[i] = np.asarray(units[i], dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        f.create_dataset("extra/speaker", data=np.asarray(speakers if speakers is not None else np.zeros(n), np.uint16))
        f.create_dataset("extra/keys", data=np.array([f"key{i}".encode() for i in range(35)]))
    return path


def nmnist_bytes(x, y, t, p) -> bytes:
    """N-MNIST events as bytes: per event x, y, then (p << 23 | t) as 3 big-endian bytes; t < 2**23 us."""
    x, y, t, p = (np.asarray(a, dtype=np.uint32) for a in (x, y, t, p))
    if len(t) and t.max() >= 2 ** 23:
        raise ValueError("N-MNIST timestamps are 23 bits (< 8388608 us)")
    out = np.zeros((len(x), 5), dtype=np.uint8)
    out[:, 0], out[:, 1] = x, y
    word = (p << 23) | t
    out[:, 2], out[:, 3], out[:, 4] = (word >> 16) & 0xFF, (word >> 8) & 0xFF, word & 0xFF
    return out.tobytes()


def write_nmnist(root: str | Path, split: str, digit: int, name: str, x, y, t, p) -> Path:
    """root/<Train|Test>/<digit>/<name>.bin with those events."""
    path = Path(root) / {"train": "Train", "test": "Test"}[split] / str(int(digit)) / f"{name}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nmnist_bytes(x, y, t, p))
    return path


def aedat31_bytes(x, y, t, p, packet: int = 4096) -> bytes:
    """An AEDAT 3.1 recording of polarity events: the header, then packets of at most `packet` events, each a
    28-byte header (type 1, source 1, size 8, ts offset 4, ts overflow 0, capacity, number, valid) and 8-byte
    events (uint32 x << 17 | y << 2 | p << 1 | 1 valid, int32 timestamp in us), little-endian."""
    x, y, t, p = (np.asarray(a, dtype=np.int64) for a in (x, y, t, p))
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n",
           b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n", b"#!END-HEADER\r\n"]
    for i in range(0, len(t), packet):
        sl = slice(i, i + packet)
        n = len(t[sl])
        ev = np.zeros(n, dtype=[("data", "<u4"), ("ts", "<i4")])
        ev["data"] = (x[sl] << 17) | (y[sl] << 2) | (p[sl] << 1) | 1
        ev["ts"] = t[sl]
        out.append(struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, n, n, n) + ev.tobytes())
    return b"".join(out)


def write_gesture(folder: str | Path, trial: str, x, y, t, p, rows, split: str | None = None) -> Path:
    """folder/<trial>.aedat and <trial>_labels.csv (rows: (class 1..11, start us, end us)); with split, the
    trial is appended to trials_to_<split>.txt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rec = folder / f"{trial}.aedat"
    rec.write_bytes(aedat31_bytes(x, y, t, p))
    lines = ["class,startTime_usec,endTime_usec", *(f"{int(c)},{int(s)},{int(e)}" for c, s, e in rows)]
    (folder / f"{trial}_labels.csv").write_text("\r\n".join(lines) + "\r\n")
    if split is not None:
        with open(folder / f"trials_to_{split}.txt", "a") as f:
            f.write(f"{trial}.aedat\n")
    return rec


__all__ = ["aedat31_bytes", "nmnist_bytes", "write_cifar", "write_gesture", "write_heidelberg", "write_nmnist"]
