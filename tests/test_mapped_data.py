"""Memory-mapped datasets and batch augmentation: MappedArray indexes like a tensor and stays lazy, the cache
builds once per key and never leaves a half-written entry, crop/flip augmentation is the documented window of
the padded batch (seeded, any device, any leading axes), and the trainer augments training batches only."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bioplaus.data import Dataset, batches
from bioplaus.data.augment import Augment
from bioplaus.data.cache import MappedArray, Normalize, cached, open_array, write_array
from bioplaus.models import MLP
from bioplaus.rules.backprop import Backprop
from bioplaus.train import TrainConfig, split_validation, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _mapped(tmp_path, n=50):
    arr = write_array(tmp_path, "x", (n, 3, 4, 4), np.uint8)
    arr[:] = np.arange(n * 48).reshape(n, 3, 4, 4) % 251
    arr.flush()
    return MappedArray(open_array(tmp_path, "x"), convert=Normalize(1 / 255, [0.1, 0.2, 0.3], [0.5, 1.0, 2.0]))


def test_mapped_array_indexes_like_a_tensor(tmp_path):
    m = _mapped(tmp_path)
    full = (torch.from_numpy(np.load(tmp_path / "x.npy")).float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) \
        / torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1)
    assert isinstance(m.array, np.memmap) and len(m) == 50 and m.shape == (50, 3, 4, 4) and m.dtype == torch.float32
    for idx in (7, -1, slice(3, 9), slice(None, None, 7), [4, 2, 2, 49], np.array([1, 0]), torch.tensor([9, 3, 3, 0])):
        assert torch.allclose(m[idx], full[idx], atol=1e-6), idx
    sub = m.index_select(0, torch.tensor([40, 2, 11]))                  # lazy: another MappedArray
    assert isinstance(sub, MappedArray) and sub.shape == (3, 3, 4, 4)
    assert torch.allclose(sub[:], full[[40, 2, 11]], atol=1e-6)
    assert torch.allclose(sub[torch.tensor([2, 0])], full[[11, 40]], atol=1e-6)


def test_trainer_split_keeps_mapped_data_lazy(tmp_path):
    m, y = _mapped(tmp_path), torch.arange(50) % 5
    xt, yt, xv, yv = split_validation(m, y, 0.2, seed=0)
    tx, ty, vx, vy = split_validation(m[:], y, 0.2, seed=0)           # the same split of the in-memory tensor
    assert isinstance(xt, MappedArray) and isinstance(xv, MappedArray) and len(xv) == 10
    assert torch.equal(xt[:], tx) and torch.equal(xv[:], vx) and torch.equal(yt, ty) and torch.equal(yv, vy)
    seen = torch.cat([xb for xb, _ in batches(xt, yt, 16, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(seen.sort(0).values, tx.sort(0).values)         # every training row once


def test_cache_builds_once_per_key_and_atomically(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        np.save(tmp / "a.npy", np.arange(3))

    e1 = cached(tmp_path, "set", {"k": 1}, build)
    e2 = cached(tmp_path, "set", {"k": 1}, build)
    e3 = cached(tmp_path, "set", {"k": 2}, build)
    assert e1 == e2 != e3 and len(calls) == 2 and open_array(e1, "a").tolist() == [0, 1, 2]

    def broken(tmp):
        np.save(tmp / "a.npy", np.arange(3))
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cached(tmp_path, "set", {"k": 3}, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([e1.name, e3.name])   # no entry, no temp dir


def _reference_crop(x, p, dy, dx, flip):
    """The documented window: zero-pad the last two axes by p, keep rows dy..dy+H-1, cols dx..dx+W-1, mirror."""
    H, W = x.shape[-2:]
    out = []
    for i in range(len(x)):
        win = F.pad(x[i], (p, p, p, p))[..., dy[i]:dy[i] + H, dx[i]:dx[i] + W]
        out.append(win.flip(-1) if flip[i] else win)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(6, 3, 8, 10), (8, 4, 2, 7, 7)])    # images [B, C, H, W]; frames [B, T, C, H, W]
def test_augment_is_the_padded_window_and_seeded(device, shape):
    x = torch.randn(shape, device=device)
    aug = Augment(padding=3, flip=True)
    dy, dx, flip = aug.draw(shape[0], torch.Generator().manual_seed(0))
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.device == x.device
    assert torch.equal(out.cpu(), _reference_crop(x.cpu(), 3, dy, dx, flip))
    assert flip.any() and (~flip).any() and (dy != 3).any()             # the draws vary (else nothing is tested)
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), out)
    assert torch.equal(Augment(padding=0, flip=False)(x, torch.Generator().manual_seed(1)), x)


def test_trainer_augments_training_batches_only(digits):
    calls = []

    def spy(xb, gen):
        calls.append(len(xb))
        return Augment(padding=1, flip=True)(xb, gen)

    n = 96
    base = dict(name="d", x_train=digits.x_train[:n], y_train=digits.y_train[:n], x_test=digits.x_test[:40],
                y_test=digits.y_test[:40], n_classes=10)
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False)

    def run(augment, seed=0):
        torch.manual_seed(seed)
        rule = Backprop(MLP([1, 8, 8], 10, hidden=[16]))
        return train(rule, Dataset(**base, augment=augment), cfg, seed=seed), rule

    m1, r1 = run(spy)
    assert calls == [32] * 6                                           # 2 epochs x 3 training batches, no eval batch
    m2, r2 = run(spy)
    m0, r0 = run(None)
    w = [r.model.layers[0].linear.weight for r in (r1, r2, r0)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])      # seeded, and it changes what is learned
    assert m1["history"][-1]["test_acc"] == m2["history"][-1]["test_acc"]
