"""GatedMLP: patches in raster order, the layered API (embedding + one layer per GLU block), the GLU
kind reaching the blocks, config errors, statistics, and backprop learning digits."""
import pytest
import torch
import torch.nn.functional as F

from bioplaus import stats
from bioplaus.errors import ConfigError
from bioplaus.models.gated import GatedMLP, patchify
from bioplaus.rules.backprop import Backprop
from bioplaus.rules.readout_only import ReadoutOnly
from bioplaus.train import TrainConfig, train


def test_patchify_is_raster_order_of_p_by_p_patches():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)   # C=2, 4x4
    t = patchify(x, 2)
    assert t.shape == (1, 4, 8)
    # patch 1 = rows 0-1, cols 2-3; features = channel 0's 2x2 block, then channel 1's
    assert t[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    assert t[0, 2].tolist() == [8, 9, 12, 13, 24, 25, 28, 29]
    assert patchify(x, None).shape == (1, 1, 32)


@pytest.mark.parametrize("patch", [None, 2])
def test_layered_skeleton(patch):
    torch.manual_seed(0)
    m = GatedMLP([1, 8, 8], 10, dim=24, depth=3, patch=patch)
    assert len(m.layers) == len(m.dims) == 4 and not m.spiking
    x = torch.rand(5, 1, 8, 8)
    h = m.encode(x)
    n = 1 if patch is None else 16
    for layer in m.layers:
        h = layer(h)
        assert h.shape == (5, n, 24) and m.pool(h).shape == (5, 24)
    torch.testing.assert_close(m.head(h), m(x))


@pytest.mark.parametrize("kind,act", [("swiglu", F.silu), ("geglu", F.gelu), ("glu", torch.sigmoid)])
def test_glu_kind_is_used_by_every_block(kind, act):
    torch.manual_seed(0)
    m = GatedMLP([64], 10, dim=8, depth=2, kind=kind)
    block = m.layers[1]
    x = torch.randn(3, 1, 8)
    gate, up = block.mixer.gate_up(block.norm(x)).chunk(2, -1)
    torch.testing.assert_close(block(x), x + block.mixer.down(act(gate) * up))
    assert all(b.mixer.kind == kind for b in m.layers[1:])


def test_bad_settings():
    with pytest.raises(ConfigError, match="patch=3 must be >= 1 and divide the image size 8x8"):
        GatedMLP([1, 8, 8], 10, patch=3)
    with pytest.raises(ConfigError, match="unknown GLU kind 'relu'"):
        GatedMLP([1, 8, 8], 10, kind="relu")
    with pytest.raises(ConfigError, match="dim and model.depth must be >= 1"):
        GatedMLP([1, 8, 8], 10, depth=0)
    with pytest.raises(ConfigError, match=r"needs image data \[C, H, W\]"):
        GatedMLP([64], 10, patch=2)


def test_stats_count_dense_macs_per_layer(digits):
    m = GatedMLP([1, 8, 8], 10, dim=16, depth=1, hidden=32)
    e = stats.EnergyModel(name="t", bits=32, mac_pj=4.6, ac_pj=0.9, memory=None)
    layers = stats.collect(m, digits.x_test[:20], e)
    assert layers["layers.0"]["mac"].sum() == 64 * 16                     # embedding
    assert layers["layers.1"]["mac"].sum() == 16 * 64 + 32 * 16           # gate_up, down
    assert layers["head"]["mac"].sum() == 16 * 10
    assert all(r["sop"].sum() == 0 and "spike_counts" not in r for r in layers.values())


def test_backprop_learns_digits_beyond_the_frozen_control(digits, one_thread):
    cfg = TrainConfig(epochs=8, progress=False)
    torch.manual_seed(0)
    bp = train(Backprop(GatedMLP([1, 8, 8], 10, dim=64)), digits, cfg)["test_acc"]
    torch.manual_seed(0)
    control = train(ReadoutOnly(GatedMLP([1, 8, 8], 10, dim=64)), digits, cfg)["test_acc"]
    assert bp >= 0.95 and bp > control
