"""The benchmark readers against files in their publishers' formats: CIFAR python pickles, SHD/SSC HDF5, N-MNIST
40-bit events, DVS128 Gesture AEDAT 3.1 + label CSVs. Values round-trip exactly; each layout is also checked
against bytes built by hand from the format's documentation (not only against our own writer); a corrupt,
truncated or missing file is one ConfigError naming it and the fix."""
import pickle
import shutil
import struct
import sys

import numpy as np
import pytest
import torch

from bioplaus.data import formats as F
from bioplaus.data.cifar import cifar10, cifar100, read_batch
from bioplaus.data.events import dvs_gesture, framer, nmnist, read_aedat31, read_gesture, read_nmnist
from bioplaus.data.heidelberg import bin_spikes, read_h5, shd, ssc
from bioplaus.errors import ConfigError


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("bioplaus-cache"))
    return dst


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# ------------------------------------------------------------------------------------------------------- CIFAR
def test_cifar_channel_major_rows_by_hand(tmp_path):
    """A data row is R (1024 values, row by row), then G, then B: built here by hand, not by our writer."""
    row = np.concatenate([np.arange(1024) % 256, np.full(1024, 7), np.full(1024, 200)]).astype(np.uint8)
    with open(tmp_path / "batch", "wb") as f:
        pickle.dump({b"data": row[None], b"labels": [3], b"batch_label": b"x", b"filenames": [b"a.png"]}, f, protocol=2)
    x, (y,) = read_batch(tmp_path / "batch", (b"labels",))
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [3]
    assert x[0, 0, 0, :5].tolist() == [0, 1, 2, 3, 4] and x[0, 0, 1, 0] == 32      # red, row-major
    assert (x[0, 1] == 7).all() and (x[0, 2] == 200).all()


def test_cifar10_round_trips_pixels_labels_and_statistics(benchmark_roots, tmp_path):
    d = cifar10(str(benchmark_roots["cifar10"]), cache_dir=str(tmp_path))     # root holds cifar-10-batches-py/
    files = benchmark_roots["cifar10"] / "cifar-10-batches-py"
    parts = [read_batch(files / f"data_batch_{i}", (b"labels",)) for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1][0] for p in parts])
    assert d.x_train.shape == (60, 3, 32, 32) and d.n_classes == 10 and d.augment is not None
    assert np.array_equal(d.x_train.array, x) and torch.equal(d.y_train, torch.from_numpy(y))   # exact uint8
    pix = x.astype(np.float64) / 255
    mean, std = pix.mean((0, 2, 3)), pix.std((0, 2, 3))
    expect = (pix - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(d.x_train[:], torch.from_numpy(expect).float(), atol=1e-5)
    idx = torch.tensor([5, 0, 59, 5])                                            # any order, repeats
    assert torch.equal(d.x_train[idx], d.x_train[:][idx])
    xt, (yt,) = read_batch(files / "test_batch", (b"labels",))
    assert np.array_equal(d.x_test.array, xt) and d.y_test.tolist() == yt.tolist()
    small = cifar10(str(files), n_train=7, n_test=3, augment=False, cache_dir=str(tmp_path))   # the folder itself
    assert len(small.x_train) == 7 and small.y_train.tolist() == y[:7].tolist() and small.augment is None


def test_cifar100_fine_and_coarse_labels(benchmark_roots, tmp_path):
    fine = cifar100(str(benchmark_roots["cifar100"]), cache_dir=str(tmp_path))
    coarse = cifar100(str(benchmark_roots["cifar100"]), labels="coarse", cache_dir=str(tmp_path))
    base = torch.arange(60) % 10
    assert fine.n_classes == 100 and torch.equal(fine.y_train, base * 10 + 3)
    assert coarse.n_classes == 20 and torch.equal(coarse.y_train, base * 2) and coarse.name == "cifar100_coarse"
    with pytest.raises(ConfigError, match="choose one of fine, coarse"):
        cifar100(str(benchmark_roots["cifar100"]), labels="medium", cache_dir=str(tmp_path))


def test_cifar_missing_corrupt_and_hostile_files(benchmark_roots, tmp_path):
    with pytest.raises(ConfigError, match=r"missing data_batch_1.*test_batch.*cs\.toronto\.edu"):
        cifar10(str(tmp_path))
    with pytest.raises(ConfigError, match="data.root=DIR"):
        cifar10(None)
    root = _copy(benchmark_roots["cifar10"] / "cifar-10-batches-py", tmp_path)
    _truncate(root / "data_batch_3")
    with pytest.raises(ConfigError, match=r"data_batch_3 is not a readable CIFAR python batch .*corrupt or truncated"):
        cifar10(str(root))
    assert not list((root / "bioplaus-cache").glob("cifar10-*")), "a failed build left a cache entry"
    with open(root / "data_batch_3", "wb") as f:                    # a pickle that would run a command
        f.write(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(ConfigError, match="data_batch_3 .*unexpected global os.system"):
        cifar10(str(root))
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------------------------ SHD/SSC
def test_shd_round_trips_events_and_bins_them(benchmark_roots, tmp_path):
    import h5py

    path = benchmark_roots["shd"] / "shd_train.h5"
    with h5py.File(path) as f:                                   # the publisher's layout, read here directly
        assert f["spikes/times"].dtype.metadata["vlen"] == np.float16
        assert f["spikes/units"].dtype.metadata["vlen"] == np.uint16
        raw_t, raw_u, raw_y = list(f["spikes/times"][:]), list(f["spikes/units"][:]), f["labels"][:]
    times, units, labels = read_h5(path)
    assert all(np.array_equal(a, b.astype(np.float64)) for a, b in zip(times, raw_t))
    assert all(np.array_equal(a, b) for a, b in zip(units, raw_u)) and np.array_equal(labels, raw_y)
    d = shd(str(benchmark_roots["shd"]), T=20, max_time=1.4, cache_dir=str(tmp_path))
    assert d.spike_train and d.x_train.shape == (40, 20, 700) and d.n_classes == 20
    ref = np.zeros((40, 20, 700))
    for i, (t, u) in enumerate(zip(times, units)):                # the binning rule, one spike at a time
        for tt, uu in zip(t, u):
            if int(np.floor(tt / (1.4 / 20))) < 20:
                ref[i, int(np.floor(tt / (1.4 / 20))), uu] += 1
    assert torch.equal(d.x_train[:], torch.from_numpy(ref).float()) and torch.equal(d.y_train, torch.from_numpy(labels))
    sub = shd(str(benchmark_roots["shd"]), T=20, n_train=10, cache_dir=str(tmp_path))
    rows = sub.x_train.rows
    assert len(rows) == 10 and (np.diff(rows) > 0).all() and rows.tolist() != list(range(10))   # a fixed random subset
    assert torch.equal(sub.x_train[:], d.x_train[torch.from_numpy(rows)])


def test_bin_spikes_edges_drops_and_saturation():
    t = [np.array([0.0, 0.0999, 0.1, 0.45, 0.5, -0.01]), np.full(300, 0.2)]
    u = [np.array([0, 1, 1, 699, 3, 4]), np.full(300, 5)]
    x = bin_spikes(t, u, T=5, max_time=0.5)                      # dt = 0.1 s; t = 0.5 and t < 0 fall outside
    assert x.dtype == np.uint8 and x.shape == (2, 5, 700)
    assert x[0, 0, 0] == 1 and x[0, 0, 1] == 1 and x[0, 1, 1] == 1 and x[0, 4, 699] == 1 and x[0].sum() == 4
    assert x[1, 2, 5] == 255                                     # 300 spikes in one bin saturate


def test_shd_missing_corrupt_and_wrong_layout(benchmark_roots, tmp_path):
    (tmp_path / "shd_train.h5.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"missing shd_train.h5, shd_test.h5 .*decompress shd_train.h5.gz.*zenkelab"):
        shd(str(tmp_path))
    with pytest.raises(ConfigError, match="ssc_train.h5, ssc_valid.h5, ssc_test.h5"):
        ssc(None)
    root = _copy(benchmark_roots["shd"], tmp_path)
    _truncate(root / "shd_test.h5")
    with pytest.raises(ConfigError, match="shd_test.h5 is not a readable SHD/SSC HDF5 file"):
        shd(str(root))
    import h5py

    with h5py.File(root / "shd_test.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(3, np.uint16))
    with pytest.raises(ConfigError, match="shd_test.h5 lacks spikes/times, spikes/units"):
        shd(str(root))


# ------------------------------------------------------------------------------------------------------ N-MNIST
def test_nmnist_event_bytes_by_hand(tmp_path):
    """One event is 40 bits: x, y, then polarity (bit 23) and a 23-bit microsecond timestamp, big-endian."""
    (tmp_path / "e.bin").write_bytes(bytes([5, 7, 0x81, 0x23, 0x45, 33, 0, 0x00, 0x00, 0x09]))
    ev = read_nmnist(tmp_path / "e.bin")
    assert ev["x"].tolist() == [5, 33] and ev["y"].tolist() == [7, 0]
    assert ev["p"].tolist() == [1, 0] and ev["t"].tolist() == [0x012345, 9]
    assert F.nmnist_bytes([5, 33], [7, 0], [0x012345, 9], [1, 0]) == (tmp_path / "e.bin").read_bytes()


def test_nmnist_round_trip_and_frames(benchmark_roots, tmp_path):
    import tonic

    rng = np.random.default_rng(1)
    x, y, t, p = rng.integers(0, 34, 500), rng.integers(0, 34, 500), np.sort(rng.integers(0, 2**23, 500)), \
        rng.integers(0, 2, 500)
    path = F.write_nmnist(tmp_path, "train", 4, "00001", x, y, t, p)
    ev = read_nmnist(path)
    assert [ev[k].tolist() for k in "xytp"] == [a.tolist() for a in (x, y, t, p)]
    d = nmnist(str(benchmark_roots["nmnist"]), T=5, cache_dir=str(tmp_path / "cache"))
    assert d.spike_train and d.x_train.shape == (30, 5, 2, 34, 34) and d.n_classes == 10
    files = sorted((benchmark_roots["nmnist"] / "Train").glob("*/*.bin"), key=lambda q: (q.stem, q.parent.name))
    assert d.y_train.tolist() == [int(q.parent.name) for q in files]
    to_frame = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_time_bins=5)
    for i in (0, 17):                                            # the cached frames are tonic's frames of the file
        assert torch.equal(d.x_train[i], torch.from_numpy(to_frame(read_nmnist(files[i])).astype(np.float32)))


def test_nmnist_missing_truncated_and_no_tonic(benchmark_roots, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"no Train/<digit>/\*.bin files .*garrickorchard"):
        nmnist(str(tmp_path))
    root = _copy(benchmark_roots["nmnist"], tmp_path)
    bad = sorted((root / "Test").glob("*/*.bin"))[3]
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(ConfigError, match=f"{bad.name} is truncated or corrupt"):
        nmnist(str(root))
    monkeypatch.setitem(sys.modules, "tonic", None)                  # as if the events extra were not installed
    with pytest.raises(ConfigError, match=r"with tonic, which is not installed: pip install -e \"\.\[events\]\""):
        nmnist(str(root))


# -------------------------------------------------------------------------------------------------- DVS Gesture
def test_aedat31_bytes_by_hand(tmp_path):
    """Header lines end in CR LF; a packet is a 28-byte header then 8-byte events: data word x << 17 | y << 2 |
    p << 1 | valid, then the int32 timestamp (little-endian)."""
    word = (100 << 17) | (27 << 2) | (1 << 1) | 1
    raw = (b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 2, 2, 2)
           + struct.pack("<Ii", word, 1234) + struct.pack("<Ii", (3 << 17) | (127 << 2) | 1, 99999))
    (tmp_path / "r.aedat").write_bytes(raw)
    ev = read_aedat31(tmp_path / "r.aedat")
    assert ev["x"].tolist() == [100, 3] and ev["y"].tolist() == [27, 127]
    assert ev["p"].tolist() == [1, 0] and ev["t"].tolist() == [1234, 99999]
    ours = F.aedat31_bytes([100, 3], [27, 127], [1234, 99999], [1, 0])
    assert ours.startswith(b"#!AER-DAT3.1\r\n") and ours.endswith(raw[-2 * 8 - 28:])


def test_dvs_gesture_samples_round_trip(benchmark_roots, tmp_path):
    folder = benchmark_roots["dvs_gesture"] / "DvsGesture"
    d = dvs_gesture(str(benchmark_roots["dvs_gesture"]), T=4, size=32, cache_dir=str(tmp_path))
    assert d.x_train.shape == (22, 4, 2, 32, 32) and d.x_test.shape == (11, 4, 2, 32, 32) and d.n_classes == 11
    assert d.y_train.tolist() == list(range(11)) * 2                # one sample per CSV row, class - 1
    samples = read_gesture(folder / "user01_fluorescent.aedat", folder / "user01_fluorescent_labels.csv")
    assert [len(ev) for ev, _ in samples] == [400] * 11            # each gesture keeps exactly its events
    frames = framer((128, 128, 2), 4, None, 32)
    for i in (0, 6):
        assert torch.equal(d.x_train[i], torch.from_numpy(frames(samples[i][0]).astype(np.float32)))


def test_dvs_gesture_missing_truncated_and_bad_labels(benchmark_roots, tmp_path):
    with pytest.raises(ConfigError, match=r"missing trials_to_train.txt, trials_to_test.txt .*dvsgesture"):
        dvs_gesture(str(tmp_path))
    root = _copy(benchmark_roots["dvs_gesture"], tmp_path)
    rec = root / "DvsGesture" / "user02_fluorescent.aedat"
    _truncate(rec, 0.7)
    with pytest.raises(ConfigError, match="user02_fluorescent.aedat is truncated"):
        dvs_gesture(str(root))
    rec.write_bytes(b"#!AER-DAT2.0\r\n" + b"\0" * 16)
    with pytest.raises(ConfigError, match="user02_fluorescent.aedat is not an AEDAT 3.1 recording"):
        dvs_gesture(str(root))
    shutil.copy(benchmark_roots["dvs_gesture"] / "DvsGesture" / rec.name, rec)
    (root / "DvsGesture" / "user03_fluorescent_labels.csv").write_text("class,startTime_usec,endTime_usec\n12,5,9\n")
    with pytest.raises(ConfigError, match="user03_fluorescent_labels.csv is corrupt"):
        dvs_gesture(str(root))
    (root / "DvsGesture" / "user03_fluorescent.aedat").unlink()
    with pytest.raises(ConfigError, match="trials_to_test.txt lists files missing .*user03_fluorescent.aedat"):
        dvs_gesture(str(root))
