"""stats: exact spike counts on a hand-built network, the HDF5 schema round trip, atomic writes."""
import os

import h5py
import numpy as np
import pytest
import torch

from bioplaus import stats
from bioplaus.models import MLP, SpikingMLP


def hand_built():
    """IF neurons, identity weights: input [2, 0, 2, 0] -> currents [2, 0, 2] -> spikes [1, 0, 1] each step."""
    m = SpikingMLP([4], 2, hidden=[3], T=3, neuron={"kind": "if"})
    with torch.no_grad():
        m.layers[0].linear.weight.copy_(torch.eye(3, 4))
        m.layers[0].linear.bias.zero_()
    return m


def test_spike_counts_are_exact():
    x = torch.tensor([[2.0, 0, 2, 0]]).repeat(5, 1)
    layers = stats.collect(hand_built(), x, batch_size=2)              # batching must not change counts
    rec = layers["layers.0"]
    np.testing.assert_array_equal(rec["spike_counts"], [10.0, 10.0, 10.0])   # 2 neurons x 5 samples per step
    assert rec["n_neurons"] == 3 and rec["firing_rate"] == pytest.approx(30 / (3 * 3 * 5))
    assert rec["params"] == 3 * 4 + 3 and rec["out_size"] == 3
    assert layers["head"]["params"] == 3 * 2 + 2 and "spike_counts" not in layers["head"]
    assert stats.summary(layers)["total_spikes"] == 30.0


def test_static_model_has_sizes_but_no_spikes():
    layers = stats.collect(MLP([1, 8, 8], 10, hidden=[16]), torch.rand(7, 1, 8, 8))
    assert layers["layers.0"] == {"params": 64 * 16 + 16, "out_size": 16}


def test_h5_round_trip(tmp_path):
    layers = stats.collect(hand_built(), torch.tensor([[2.0, 0, 2, 0]]))
    path = tmp_path / "stats.h5"
    stats.write_h5(path, layers, {"rule": "backprop", "seed": 3, "versions": {"torch": "x"}})
    with h5py.File(path, "r") as f:                                     # plain h5py opens it
        assert f["layers/layers.0/spike_counts"].attrs["units"] == "spikes"
        assert f.attrs["seed"] == 3
    back = stats.load(path)
    np.testing.assert_array_equal(back["layers"]["layers.0"]["spike_counts"], [2, 2, 2])
    assert back["summary"]["total_spikes"] == 6 and back["attrs"]["rule"] == "backprop"


def test_a_crash_mid_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "stats.h5"
    layers = stats.collect(hand_built(), torch.tensor([[2.0, 0, 2, 0]]))
    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def crash_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-write")
        return real(self, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        stats.write_h5(path, layers, {"rule": "x"})
    assert os.listdir(tmp_path) == []                                   # neither the target nor a temp file
    monkeypatch.undo()
    stats.write_h5(path, layers, {"rule": "x"})
    assert stats.load(path)["attrs"]["rule"] == "x"
