"""Event-camera benchmarks, N-MNIST and DVS128 Gesture, from their own files in `data.root`, read and framed by
tonic (the optional extra `events`: pip install -e ".[events]").

N-MNIST (Orchard et al. 2015; https://www.garrickorchard.com/datasets/n-mnist, Train.zip and Test.zip unpacked):
`Train/<digit>/<id>.bin` (60000) and `Test/<digit>/<id>.bin` (10000). Each event is 40 bits, big-endian: x (8
bits), y (8 bits), polarity (1 bit), timestamp in microseconds (23 bits); sensor 34 x 34, two polarities. Read
with `tonic.io.read_mnist_file`. Samples are ordered by file name (the MNIST index), so any prefix is
class-mixed; a file whose size is not a multiple of 5 bytes or whose coordinates leave the sensor is corrupt.

DVS128 Gesture (Amir et al. 2017; IBM, https://research.ibm.com/interactive/dvsgesture/, DvsGesture.tar.gz
unpacked): `trials_to_train.txt` / `trials_to_test.txt` list recordings `userXX_<lighting>.aedat` (AEDAT 3.1:
'#'-comment header lines ending in CR LF, then packets of a 28-byte header and 8-byte polarity events), each with
`userXX_<lighting>_labels.csv` (header `class,startTime_usec,endTime_usec`, one row per gesture, classes 1..11).
Read with tonic's AEDAT readers (`read_aedat31`); each CSV row becomes one sample, the events with start <= t < end
(class - 1 is the label, 11 classes). Packets are checked against the file size first, so a truncated
recording is one ConfigError naming it. Found in data.root or its `DvsGesture/` subfolder.

Frames (tonic's transforms, in this order): `Denoise(filter_time=denoise_us)` when denoise_us is set (drops
events with no neighbour within 1 pixel and that many microseconds; a slow per-event loop in tonic),
`Downsample(spatial_factor=size/128)` (DVS Gesture only: 128 x 128 -> size x size), then
`ToFrame(sensor_size, n_time_bins=T)`: T frames of per-pixel, per-polarity event counts over the sample's
duration. x [N, T, 2, H, W] (stored int16 as tonic returns them, served as float32 counts), sample-major like
every spike-train Dataset: models read it with model.encoding=given model.T=T. The frames are built once per
(files, settings) and cached as .npy, then served memory-mapped (`bioplaus.data.cache`).
n_train / n_test keep a fixed random subset (numpy seed 0, in file order) of each split.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bioplaus.data.base import Dataset, subset_rows
from bioplaus.data.cache import MappedArray, cache_root, cached, file_key, open_array, to_float, write_array
from bioplaus.errors import ConfigError, require

NMNIST_SENSOR = (34, 34, 2)                  # tonic's (x, y, polarity) order
GESTURE_SENSOR = (128, 128, 2)
NMNIST_WHERE = ("unzip Train.zip and Test.zip from https://www.garrickorchard.com/datasets/n-mnist into data.root "
                "(it then holds Train/0..9/*.bin and Test/0..9/*.bin)")
GESTURE_WHERE = ("unpack DvsGesture.tar.gz from https://research.ibm.com/interactive/dvsgesture/ and set data.root "
                 "to its DvsGesture folder (trials_to_train.txt, trials_to_test.txt, user*.aedat, user*_labels.csv)")
AEDAT_PACKET = struct.Struct("<hhiiiiii")    # type, source, size, ts offset, ts overflow, capacity, number, valid


def tonic():
    """The tonic package, or one ConfigError saying how to install the `events` extra."""
    return require("tonic", "data=nmnist and data=dvs_gesture read their files with", 'pip install -e ".[events]"')


# ----------------------------------------------------------------------------------------------------- N-MNIST
def nmnist_files(root: str | Path | None) -> dict[str, list[tuple[Path, int]]]:
    """{"train": [(path, digit)], "test": [...]}: every .bin file, ordered by file name then digit."""
    if root is None:
        raise ConfigError(f"data=nmnist reads Train/<digit>/*.bin and Test/<digit>/*.bin from data.root: add "
                          f"data.root=DIR; {NMNIST_WHERE}")
    root = Path(root).expanduser()
    out = {}
    for split, folder in (("train", "Train"), ("test", "Test")):
        files = [(p, int(p.parent.name)) for p in (root / folder).glob("[0-9]/*.bin")]
        if not files:
            raise ConfigError(f"data=nmnist: no {folder}/<digit>/*.bin files in {root}; {NMNIST_WHERE}")
        out[split] = sorted(files, key=lambda f: (f[0].stem, f[1]))
    return out


def read_nmnist(path: str | Path) -> np.ndarray:
    """The events of one N-MNIST .bin file (tonic's structured array x, y, t [us], p), checked."""
    tn = tonic()
    path = Path(path)
    size = path.stat().st_size
    if size % 5:
        raise ConfigError(f"{path} is truncated or corrupt: {size} bytes is not a whole number of 5-byte N-MNIST "
                          f"events; {NMNIST_WHERE}")
    events = tn.io.read_mnist_file(str(path), dtype=tn.datasets.NMNIST.dtype)
    if len(events) and (events["x"].max() >= NMNIST_SENSOR[0] or events["y"].max() >= NMNIST_SENSOR[1]):
        raise ConfigError(f"{path} is corrupt: event coordinates up to ({events['x'].max()}, {events['y'].max()}) "
                          f"leave the 34x34 sensor; {NMNIST_WHERE}")
    return events


# ------------------------------------------------------------------------------------------------ DVS Gesture
def gesture_folder(root: str | Path | None) -> Path:
    """The folder holding trials_to_train.txt / trials_to_test.txt (data.root or its DvsGesture/)."""
    if root is None:
        raise ConfigError(f"data=dvs_gesture reads trials_to_train.txt, trials_to_test.txt and the user*.aedat "
                          f"recordings with their *_labels.csv from data.root: add data.root=DIR; {GESTURE_WHERE}")
    root = Path(root).expanduser()
    for folder in (root, root / "DvsGesture"):
        if (folder / "trials_to_train.txt").is_file() and (folder / "trials_to_test.txt").is_file():
            return folder
    raise ConfigError(f"data=dvs_gesture: missing trials_to_train.txt, trials_to_test.txt in {root} (or "
                      f"{root / 'DvsGesture'}); {GESTURE_WHERE}")


def gesture_trials(folder: Path, split: str) -> list[tuple[Path, Path]]:
    """[(recording.aedat, its _labels.csv)] listed in trials_to_<split>.txt, each checked to exist."""
    names = [ln.strip() for ln in (folder / f"trials_to_{split}.txt").read_text().splitlines() if ln.strip()]
    out, missing = [], []
    for name in names:
        rec = folder / name
        csv = rec.with_name(rec.stem + "_labels.csv")
        missing += [p.name for p in (rec, csv) if not p.is_file()]
        out.append((rec, csv))
    if missing:
        raise ConfigError(f"data=dvs_gesture: trials_to_{split}.txt lists files missing from {folder}: "
                          f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}; {GESTURE_WHERE}")
    return out


def check_aedat31(path: Path) -> None:
    """A ConfigError naming the file unless it is AEDAT 3.x whose packets of 8-byte events fill it exactly."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if not f.readline().startswith(b"#!AER-DAT3"):
            raise ConfigError(f"{path} is not an AEDAT 3.1 recording (no '#!AER-DAT3.1' first line); {GESTURE_WHERE}")
        while (c := f.read(1)) == b"#":
            f.readline()
        pos = f.seek(-len(c), 1)                      # the first byte after the header
        while pos < size:
            head = f.read(AEDAT_PACKET.size)
            if len(head) < AEDAT_PACKET.size:
                raise ConfigError(f"{path} is truncated: a partial packet header at byte {pos}; {GESTURE_WHERE}")
            _, _, event_size, _, _, capacity, _, _ = AEDAT_PACKET.unpack(head)
            if event_size != 8 or capacity < 0:
                raise ConfigError(f"{path} is corrupt: a packet at byte {pos} declares {capacity} events of "
                                  f"{event_size} bytes (polarity events have 8); {GESTURE_WHERE}")
            pos = f.seek(capacity * 8, 1)
            if pos > size:
                raise ConfigError(f"{path} is truncated: the packet at byte {pos - capacity * 8 - AEDAT_PACKET.size}"
                                  f" needs {pos - size} more bytes; {GESTURE_WHERE}")


def read_aedat31(rec: Path) -> np.ndarray:
    """The polarity events of one DVS Gesture recording as tonic's structured array (x, y, t [us], p), through
    tonic's AEDAT readers. tonic 1.7's read_dvs_ibm unpacks its header reader's three values into two and
    fails, so its two readers are called here and the address decoded as read_dvs_ibm does: x = bits 17..29,
    y = bits 2..14, p = bit 1. Events off the 128 x 128 sensor are dropped."""
    io = tonic().io
    version, start, _ = io.read_aedat_header_from_file(str(rec))
    raw = io.get_aer_events_from_file(str(rec), version, start)
    addr = raw["address"].astype(np.int64)
    x, y, p = (addr >> 17) & 0x1FFF, (addr >> 2) & 0x1FFF, (addr >> 1) & 1
    keep = (x < GESTURE_SENSOR[0]) & (y < GESTURE_SENSOR[1])
    return io.make_structured_array(x[keep], y[keep], raw["timeStamp"][keep].astype(np.int64), p[keep])


def read_gesture_labels(csv: Path) -> np.ndarray:
    """int64 [k, 3] rows (class 1..11, start us, end us) of a _labels.csv, checked."""
    try:
        rows = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ConfigError(f"{csv} is not a DVS Gesture label file (class,startTime_usec,endTime_usec): {e}") from None
    if rows.shape[1] != 3 or len(rows) == 0 or rows[:, 0].min() < 1 or rows[:, 0].max() > 11 \
            or (rows[:, 2] <= rows[:, 1]).any():
        raise ConfigError(f"{csv} is corrupt: expected rows class (1..11), startTime_usec < endTime_usec")
    return rows


def read_gesture(rec: Path, csv: Path) -> list[tuple[np.ndarray, int]]:
    """[(events of one gesture, label 0..10)] of one recording (events from `read_aedat31`)."""
    check_aedat31(rec)
    rows = read_gesture_labels(csv)
    events = read_aedat31(rec)
    return [(events[(events["t"] >= s) & (events["t"] < e)], int(c) - 1) for c, s, e in rows]


# --------------------------------------------------------------------------------------------------- framing
def framer(sensor: tuple[int, int, int], T: int, denoise_us: float | None, size: int | None = None) -> Callable:
    """events -> int16 frames [T, P, H, W] through tonic's Denoise / Downsample / ToFrame (module docstring)."""
    tr = tonic().transforms
    steps = [tr.Denoise(filter_time=float(denoise_us))] if denoise_us else []
    if size is not None and size != sensor[0]:
        steps.append(tr.Downsample(spatial_factor=size / sensor[0]))
        sensor = (size, size, sensor[2])
    steps.append(tr.ToFrame(sensor_size=sensor, n_time_bins=int(T)))
    compose = tr.Compose(steps)
    shape = (int(T), sensor[2], sensor[1], sensor[0])

    def frames(events: np.ndarray) -> np.ndarray:
        out = compose(events) if len(events) else None
        if out is None or out.dtype.names is not None:            # no events (left): empty frames
            return np.zeros(shape, dtype=np.int16)
        return out.astype(np.int16)
    frames.shape = shape
    return frames


def _write_split(tmp: Path, split: str, samples, n: int, frames: Callable) -> None:
    """Fill x_<split>.npy [n, *frames.shape] and y_<split>.npy from an iterator of (events, label)."""
    x = write_array(tmp, f"x_{split}", (n, *frames.shape), np.int16)
    y = np.zeros(n, dtype=np.int64)
    for i, (events, label) in enumerate(samples):
        x[i], y[i] = frames(events), label
    x.flush()
    del x
    np.save(tmp / f"y_{split}.npy", y)


def _dataset(name: str, entry: Path, n_classes: int, n_train, n_test) -> Dataset:
    xtr, xte = open_array(entry, "x_train"), open_array(entry, "x_test")
    ytr, yte = open_array(entry, "y_train", mmap=False), open_array(entry, "y_test", mmap=False)
    rtr, rte = subset_rows(n_train, len(xtr), "data.n_train"), subset_rows(n_test, len(xte), "data.n_test")
    return Dataset(name, MappedArray(xtr, rtr, to_float), torch.from_numpy(ytr[rtr]), MappedArray(xte, rte, to_float),
                   torch.from_numpy(yte[rte]), n_classes, spike_train=True)


def _check_T(T: int) -> int:
    if int(T) < 1:
        raise ConfigError(f"data.T (frames per sample) must be >= 1, got {T}")
    return int(T)


def nmnist(root: str | None = None, T: int = 10, denoise_us: float | None = None, first_saccade_only: bool = False,
           n_train: int | None = None, n_test: int | None = None, cache_dir: str | None = None) -> Dataset:
    """N-MNIST as frames x [N, T, 2, 34, 34] (module docstring). first_saccade_only: keep events of the first
    of the three saccades (t < 100 ms), as tonic's option."""
    T = _check_T(T)
    files = nmnist_files(root)
    frames = framer(NMNIST_SENSOR, T, denoise_us)
    root = Path(root).expanduser()

    def samples(split):
        for path, digit in files[split]:
            ev = read_nmnist(path)
            yield (ev[ev["t"] < 100_000] if first_saccade_only else ev), digit

    def build(tmp: Path) -> None:
        for split in ("train", "test"):
            _write_split(tmp, split, samples(split), len(files[split]), frames)

    key = {"name": "nmnist", "T": T, "denoise_us": denoise_us, "first_saccade_only": bool(first_saccade_only),
           "files": file_key(p for split in files.values() for p, _ in split)}
    entry = cached(cache_root(root, cache_dir), "nmnist", key, build)
    return _dataset("nmnist", entry, 10, n_train, n_test)


def dvs_gesture(root: str | None = None, T: int = 16, size: int = 32, denoise_us: float | None = None,
                n_train: int | None = None, n_test: int | None = None, cache_dir: str | None = None) -> Dataset:
    """DVS128 Gesture as frames x [N, T, 2, size, size], 11 classes (module docstring); size must divide 128."""
    T = _check_T(T)
    if int(size) < 1 or GESTURE_SENSOR[0] % int(size):
        raise ConfigError(f"data.size must divide 128 (the sensor width), e.g. 32, 64 or 128; got {size}")
    folder = gesture_folder(root)
    trials = {split: gesture_trials(folder, split) for split in ("train", "test")}
    frames = framer(GESTURE_SENSOR, T, denoise_us, int(size))

    def build(tmp: Path) -> None:
        for split in ("train", "test"):
            n = sum(len(read_gesture_labels(csv)) for _, csv in trials[split])
            samples = (s for rec, csv in trials[split] for s in read_gesture(rec, csv))
            _write_split(tmp, split, samples, n, frames)

    key = {"name": "dvs_gesture", "T": T, "size": int(size), "denoise_us": denoise_us,
           "files": file_key(p for split in trials.values() for pair in split for p in pair)}
    entry = cached(cache_root(folder, cache_dir), "dvs_gesture", key, build)
    return _dataset("dvs_gesture", entry, 11, n_train, n_test)


__all__ = ["GESTURE_SENSOR", "NMNIST_SENSOR", "check_aedat31", "dvs_gesture", "framer", "gesture_folder",
           "gesture_trials", "nmnist", "nmnist_files", "read_aedat31", "read_gesture", "read_gesture_labels",
           "read_nmnist", "tonic"]
