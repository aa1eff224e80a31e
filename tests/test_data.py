"""Offline data: the digits protocol, the IDX loader on files the test writes, the Fashion-10k protocol
from the Debian package, and clear errors for missing files."""
import gzip
import struct

import numpy as np
import pytest
import torch

from bioplaus.data import IDX_FILES, batches, digits, fashion, idx_dataset, mnist, read_idx
from bioplaus.errors import ConfigError


def test_digits_protocol(digits):
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.max() == 1.0 and digits.x_train.min() == 0.0
    assert torch.bincount(digits.y_test).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]  # stratified


def _write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    (gzip.open if gz else open)(path, "wb").write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_what_was_written(tmp_path, gz):
    rng = np.random.default_rng(0)
    arrays = {"train_x": rng.integers(0, 256, (7, 5, 4)), "train_y": rng.integers(0, 3, 7),
              "test_x": rng.integers(0, 256, (3, 5, 4)), "test_y": np.array([0, 1, 2])}
    for k, a in arrays.items():
        _write_idx(tmp_path / (IDX_FILES[k] + (".gz" if gz else "")), a, gz)
    d = idx_dataset("tiny", tmp_path, n_train=5)
    assert d.x_train.shape == (5, 1, 5, 4) and d.n_classes == 10          # MNIST-format: 10 classes, not inferred
    np.testing.assert_allclose(d.x_train[:, 0].numpy() * 255, arrays["train_x"][:5], atol=1e-4)
    assert d.y_test.tolist() == [0, 1, 2]
    assert read_idx(tmp_path / (IDX_FILES["test_y"] + (".gz" if gz else ""))).tolist() == [0, 1, 2]


def test_missing_files_name_every_expected_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        mnist(str(tmp_path))
    for stem in IDX_FILES.values():
        assert stem in str(e.value)
    assert "data.root" in str(e.value)
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        fashion(root=str(tmp_path))


def test_bad_subset_and_bad_magic(tmp_path):
    with pytest.raises(ConfigError, match="n_train=5000 is out of range"):
        digits(n_train=5000)
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ConfigError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "x")


def test_fashion_10k_protocol():
    d = fashion(n_train=10000)
    assert d.x_train.shape == (10000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.n_classes == 10 and d.x_train.max() == 1.0
    assert d.y_train[:5].tolist() == [9, 0, 0, 3, 0]       # the first training images, in file order


def test_batches_cover_everything_once():
    x, y = torch.arange(10).float(), torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
