"""stats: exact spikes, SOPs, MACs and energy on a hand-built network with fixed spikes; the op counter
on convolutions and training steps; the HDF5 schema round trip; atomic writes; preset errors."""
import os

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bioplaus import stats
from bioplaus.errors import ConfigError
from bioplaus.models import MLP, SpikingMLP
from bioplaus.stats import EnergyModel, MemoryModel
from bioplaus.stats.opcount import OpCounter

COMPUTE_ONLY = EnergyModel(name="test", bits=32, mac_pj=4.6, ac_pj=0.9, memory=None)


def hand_built():
    """IF neurons, T=3. Input [2, 0, 2, 0] (analog) -> identity -> currents [2, 0, 2] -> spikes [1, 0, 1] at
    every step; layer 1: weights 0.6 -> current 1.2 -> both neurons spike every step; head 2 -> 2."""
    m = SpikingMLP([4], 2, hidden=[3, 2], T=3, neuron={"kind": "if"})
    with torch.no_grad():
        m.layers[0].linear.weight.copy_(torch.eye(3, 4))
        m.layers[1].linear.weight.fill_(0.6)
        for layer in m.layers:
            layer.linear.bias.zero_()
    return m


X = torch.tensor([[2.0, 0, 2, 0]]).repeat(5, 1)


def test_spikes_sops_macs_are_exact_per_step():
    layers = stats.collect(hand_built(), X, COMPUTE_ONLY, batch_size=2)   # batching must not change counts
    l0, l1, head = layers["layers.0"], layers["layers.1"], layers["head"]
    np.testing.assert_array_equal(l0["spike_counts"], [2, 2, 2])          # per sample, per step
    np.testing.assert_array_equal(l0["mac"], [12, 0, 0])                  # direct input: 4 x 3 MACs once, held
    np.testing.assert_array_equal(l0["sop"], [0, 0, 0])
    np.testing.assert_array_equal(l1["sop"], [4, 4, 4])                   # 2 input spikes x fan-out 2
    np.testing.assert_array_equal(l1["mac"], [0, 0, 0])
    np.testing.assert_array_equal(l1["spike_counts"], [2, 2, 2])
    assert head["sop"].sum() == 4 and head["mac"].sum() == 0              # time-mean of always-on spikes is 0/1
    assert l0["firing_rate"] == pytest.approx(2 / 3) and l1["firing_rate"] == 1.0
    np.testing.assert_array_equal(l0["neuron_updates"], [3, 3, 3])
    assert (l0["params"], l0["in_size"], l0["out_size"], head["out_size"]) == (15, 4, 3, 2)


def test_energy_is_exact():
    layers = stats.collect(hand_built(), X, COMPUTE_ONLY)
    update = 4.6 + 0.9                                                    # one MAC + one AC per membrane update
    assert layers["layers.0"]["energy_compute_pj"] == pytest.approx(12 * 4.6 + 9 * update)
    assert layers["layers.1"]["energy_compute_pj"] == pytest.approx(12 * 0.9 + 6 * update)
    assert layers["head"]["energy_compute_pj"] == pytest.approx(4 * 0.9)
    s = stats.summary(layers)
    assert s["energy_pj_per_sample"] == pytest.approx(12 * 4.6 + 15 * update + 16 * 0.9)
    assert (s["sop_per_sample"], s["mac_per_sample"], s["spikes_per_sample"]) == (16, 12, 12)


def test_memory_model_prices_by_buffer_size_and_width():
    mem = MemoryModel()
    assert mem.access_pj(100, 32) == 5.0                                  # below the first SRAM point
    assert mem.access_pj(8192, 64) == 10.0
    assert mem.access_pj((8192 + 32768) / 2, 32) == 7.5                   # linear between points
    assert mem.access_pj(2**21, 16) == 1300.0 / 4                         # beyond SRAM: DRAM
    e = EnergyModel(name="m", bits=32, mac_pj=0, ac_pj=0, neuron_update={"macs": 0, "acs": 0})
    l0 = stats.collect(hand_built(), X, e)["layers.0"]
    small = mem.access_pj(60, 32)                                         # every buffer here is tiny: 5 pJ
    accesses = 12 + 4 + 3 * 3 + 2 * 9                                     # weights, input (once), outputs, state
    assert l0["energy_memory_pj"] == pytest.approx(accesses * small)


def test_presets_and_bad_names():
    assert {"fp32_45nm", "fp16_45nm", "int8_45nm"} <= set(stats.presets())
    int8 = stats.preset("int8_45nm")
    assert (int8.bits, int8.mac_pj, int8.ac_pj) == (8, 0.23, 0.03)
    with pytest.raises(ConfigError, match="unknown energy preset 'fp64'.*fp16_45nm, fp32_45nm, int8_45nm"):
        stats.preset("fp64")
    with pytest.raises(ConfigError, match="mac_pj must be >= 0"):
        EnergyModel(name="x", bits=32, mac_pj=-1, ac_pj=0)
    with pytest.raises(ConfigError, match="bad stats.energy settings"):
        EnergyModel.from_config({"name": "x", "bits": 32, "mac_pj": 1, "ac_pj": 1, "typo": 3})


def test_conv_sops_are_exact_at_the_borders():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = (torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    with torch.no_grad(), OpCounter(T=2) as c:
        conv(x)
    reach = F.conv2d(x, torch.ones(1, 2, 3, 3), padding=1)                 # spikes seen by each output position
    np.testing.assert_array_equal(c.counts["other"]["ac"].numpy(), 3 * reach.reshape(2, -1).sum(1).numpy())
    assert c.totals()["ac"] < x.sum() * 3 * 9                             # border spikes reach fewer outputs
    with torch.no_grad(), OpCounter() as c:
        conv(torch.randn(4, 2, 6, 6))
    assert c.totals() == {"mac": 4 * 3 * 36 * 2 * 9, "ac": 0.0}


def test_training_step_counts_forward_and_backward():
    m = MLP([4], 3, hidden=[5])
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    with OpCounter() as c:
        F.cross_entropy(m(x), y).backward()
    fwd = 7 * (4 * 5 + 5 * 3)
    bwd = 7 * (4 * 5) + 7 * (5 * 3) * 2                                   # no grad for the input itself
    assert c.totals() == {"mac": fwd + bwd, "ac": 0.0}


def test_h5_round_trip(tmp_path):
    layers = stats.collect(hand_built(), X[:1], COMPUTE_ONLY)
    path = tmp_path / "stats.h5"
    attrs = {"rule": "backprop", "seed": 3, "energy": COMPUTE_ONLY.as_dict()}
    stats.write_h5(path, layers, stats.summary(layers), attrs)
    with h5py.File(path, "r") as f:                                      # plain h5py opens it
        assert f["layers/layers.1/sop"].attrs["units"] == "ops/sample/step"
        assert f.attrs["seed"] == 3 and '"mac_pj": 4.6' in f.attrs["energy"]
    back = stats.load(path)
    np.testing.assert_array_equal(back["layers"]["layers.1"]["sop"], [4, 4, 4])
    assert back["summary"]["sop_per_sample"] == 16 and back["attrs"]["rule"] == "backprop"
    stats.write_flat(tmp_path, layers, stats.summary(layers), {"rule": "backprop"})
    assert "layers.1" in (tmp_path / "stats.csv").read_text() and (tmp_path / "stats.json").exists()


def test_a_crash_mid_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "stats.h5"
    layers = stats.collect(hand_built(), X[:1], COMPUTE_ONLY)
    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def crash_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-write")
        return real(self, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        stats.write_h5(path, layers, stats.summary(layers), {"rule": "x"})
    assert os.listdir(tmp_path) == []                                    # neither the target nor a temp file
    monkeypatch.undo()
    stats.write_h5(path, layers, stats.summary(layers), {"rule": "x"})
    assert stats.load(path)["attrs"]["rule"] == "x"


def _sj_counts(model, x):
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    syn, mac = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([syn, mac], strict=False):
        model(x)
    root = type(model).__name__

    def get(counter, scope):
        return float(sum(counter.get_counts().get(f"{root}.{scope}", {}).values()))

    return lambda scope: (get(syn, scope), get(mac, scope))


def test_spiking_mlp_counts_agree_with_hand_count_and_spikingjelly(digits):
    torch.manual_seed(0)
    model = SpikingMLP([1, 8, 8], 10, hidden=[32, 24], T=4).eval()
    x = digits.x_test[:50]
    ours = stats.collect(model, x, COMPUTE_ONLY)
    theirs = _sj_counts(model, x)
    n = len(x)
    # hand count: layer 0 sees analog pixels (dense), the same at all T = 4 steps: computed once, counted once;
    # layer 1 sees layer 0's spikes (input spikes x fan-out)
    assert ours["layers.0"]["mac"].sum() * n == n * 64 * 32 and ours["layers.0"]["mac"][1:].sum() == 0
    assert ours["layers.1"]["sop"].sum() == pytest.approx(ours["layers.0"]["spike_counts"].sum() * 24)
    for scope in ("layers.0", "layers.1", "head"):
        sop, mac = theirs(scope)
        assert ours[scope]["sop"].sum() * n == pytest.approx(sop, abs=1e-6), scope
        assert ours[scope]["mac"].sum() * n == pytest.approx(mac, abs=1e-6), scope


def test_spiking_conv_synops_agree_with_spikingjelly(digits):
    from bioplaus.models import SpikingConvNet

    torch.manual_seed(0)
    model = SpikingConvNet([1, 8, 8], 10, channels=[4, 6], T=3).eval()
    with torch.no_grad():
        model.layers[0].conv.weight.mul_(8)                 # fresh BatchNorm stats: drive layer 0 to spike
    x = digits.x_test[:20]
    ours = stats.collect(model, x, COMPUTE_ONLY)
    sop, _ = _sj_counts(model, x)("layers.1")
    assert sop > 0 and ours["layers.1"]["sop"].sum() * len(x) == pytest.approx(sop)


def test_attention_products_of_spikes_are_synaptic_ops():
    """Any model family is counted: a spiking self-attention product q k^T with binary q (a bmm)."""
    from bioplaus.stats.opcount import attribute

    class ToyAttention(torch.nn.Module):
        def forward(self, q, k):
            return q @ k.transpose(-1, -2)                  # [T*B, N, d] @ [T*B, d, N]

    g = torch.Generator().manual_seed(0)
    q = (torch.rand(2 * 3, 5, 4, generator=g) > 0.5).float()   # T=2, B=3, N=5 tokens, d=4
    k = torch.randn(2 * 3, 5, 4, generator=g)
    attn = ToyAttention()
    with torch.no_grad(), OpCounter(T=2) as c, attribute(c, {"attn": attn}, time_major={"attn"}):
        attn(q, k)
    per_step = (q != 0).reshape(2, -1).sum(1).double() * 5         # each query spike meets N=5 keys
    np.testing.assert_array_equal(c.counts["attn"]["ac"].numpy(), per_step.numpy())
    assert c.counts["attn"]["mac"].sum() == 0


def test_user_defined_preset_from_a_search_path(tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "mychip.yaml").write_text(
        "enabled: true\nn_samples: 50\nbatch_size: 50\nenergy:\n  name: mychip\n  bits: 8\n  mac_pj: 1.0\n"
        "  ac_pj: 0.5\n  neuron_update: {macs: 0, acs: 0}\n  memory: null\n")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bioplaus.run", f"hydra.searchpath=[file://{tmp_path}]", "stats=mychip",
                        "trainer.epochs=1", "trainer.progress=false", f"hydra.run.dir={out}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "metrics.json").read_text())["stats"]
    assert s["energy_pj_per_sample"] == pytest.approx(s["mac_per_sample"] * 1.0 + s["sop_per_sample"] * 0.5)


def test_inference_account_follows_the_rules_own_inference(digits):
    """With the rule, collect counts what rule.predict runs: FF's goodness inference is C label passes
    through the same layers; NoProp's is its T denoising blocks and classifier, not model.head."""
    from bioplaus.rules.backprop import Backprop
    from bioplaus.rules.forward_forward import ForwardForward
    from bioplaus.rules.noprop import NoProp

    x = digits.x_test[:8]
    torch.manual_seed(0)
    model = MLP([1, 8, 8], 10, hidden=[16, 12])
    plain = stats.collect(model, x, COMPUTE_ONLY)
    assert stats.collect(model, x, COMPUTE_ONLY, rule=Backprop(model))["layers.0"]["mac"].sum() == 64 * 16
    ff = stats.collect(model, x, COMPUTE_ONLY, rule=ForwardForward(model))
    for name in ("layers.0", "layers.1"):
        assert ff[name]["mac"].sum() == 10 * plain[name]["mac"].sum()          # one pass per candidate label
    assert ff["head"]["mac"].sum() == 0                                       # goodness inference skips the head
    noprop = stats.collect(MLP([1, 8, 8], 10, hidden=[16, 12]), x, COMPUTE_ONLY,
                           rule=NoProp(MLP([1, 8, 8], 10, hidden=[16, 12]), T=3, width=8))
    parts = ("image.layers.0", "image.layers.1", "image.fc", "latent", "fuse")
    assert set(noprop) == {f"blocks.{i}.{p}" for i in range(3) for p in parts} | {"classifier", "other"}
    assert noprop["other"]["mac"].sum() == 3 * 10 * 10        # û_t = softmax(logits) @ W_embed, outside the blocks
    for i in range(3):                                  # every block's image path and latent MLP run once
        image = sum(noprop[f"blocks.{i}.{p}"]["mac"].sum() for p in parts[:3])
        assert image == 64 * 16 + 16 * 12 + 12 * 8 and noprop[f"blocks.{i}.image.fc"]["params"] == 12 * 8 + 8
        # z_0 = 0 (no inference noise): block 0's first latent FC meets an all-zero input, which costs nothing
        assert noprop[f"blocks.{i}.latent"]["mac"].sum() == (10 * 8 if i else 0) + 8 * 8
    assert noprop["classifier"]["mac"].sum() == 10 * 10
