"""NeuroBench's metrics (the `neurobench` package) against bioplaus's statistics on the same trained spiking model
and test batch: equal where the definitions agree, and where they differ, the difference is exactly the one
bioplaus.export.neurobench_metrics documents. Plus the command that writes neurobench.json beside stats.h5."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bioplaus.export.neurobench_metrics import DEFINITIONS, bioplaus_metrics, comparison, neurobench_metrics
from bioplaus.models import SpikingConvNet, SpikingMLP
from bioplaus.neurons import BaseNeuron
from bioplaus.rules.backprop import Backprop
from bioplaus.stats import collect, preset
from bioplaus.train import TrainConfig, train


def trained(model, digits, epochs, lr=3e-3):
    torch.manual_seed(0)
    train(Backprop(model), digits, TrainConfig(epochs=epochs, progress=False,
                                               optimizer=lambda p: torch.optim.Adam(p, lr=lr)))
    return model.eval()


@pytest.fixture(scope="module")
def mlp(digits):
    torch.manual_seed(0)
    return trained(SpikingMLP([1, 8, 8], 10, hidden=[64], T=4), digits, 3)


@pytest.fixture(scope="module")
def convnet(digits):
    torch.manual_seed(0)
    return trained(SpikingConvNet([1, 8, 8], 10, channels=[4, 8], T=2), digits, 2, lr=3e-2)


def inputs(model, x):
    """The input of every Linear / Conv per forward call (hooks), to count operations independently."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].detach()))) for m in model.modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_neurobench_agrees_with_bioplaus_on_a_trained_spiking_mlp(mlp, digits):
    x, y = digits.x_test, digits.y_test
    nb, bp = neurobench_metrics(mlp, x, y), bioplaus_metrics(mlp, x, y)
    layers = collect(mlp, x, preset("fp32_45nm"))
    assert nb["accuracy"] == bp["accuracy"] >= 0.7                        # a trained model, the same forward
    params = sum(p.numel() for p in mlp.parameters())
    assert nb["footprint_bytes"] == bp["footprint_bytes"] == 4 * params   # no buffers in an MLP
    assert nb["connection_sparsity"] == bp["connection_sparsity"] == 0.0
    rate = layers["layers.0"]["spike_counts"].sum() / (layers["layers.0"]["n_neurons"] * mlp.T)
    assert 0.02 < rate < 0.9
    assert nb["activation_sparsity"] == pytest.approx(bp["activation_sparsity"], rel=1e-12)
    assert bp["activation_sparsity"] == pytest.approx(1 - rate, rel=1e-12)
    # ACs: NB counts non-zero binary inputs x non-zero weights, bioplaus input spikes x fan-out: equal
    assert nb["effective_acs"] == pytest.approx(bp["effective_acs"], rel=1e-12) == float(
        sum(np.sum(r["sop"]) for r in layers.values()))
    # MACs: NB only counts non-zero analog inputs (blank pixels, silent neurons in the readout's rate input);
    # bioplaus counts dense MACs. Both checked against a count of our own
    seen = inputs(mlp, x)
    (l0, x0), (head, xh) = seen[0], seen[-1]
    assert l0 is mlp.layers[0].linear and head is mlp.head.linear
    assert bool((l0.weight != 0).all()) and bool((head.weight != 0).all())
    nonzero = float((x0 != 0).sum() * l0.out_features + (xh != 0).sum() * head.out_features) / len(x)
    assert nb["effective_macs"] == pytest.approx(nonzero, rel=1e-12)
    assert x0.shape == x.flatten(1).shape          # direct encoding: the first layer runs once, on one step
    dense = 64 * 64 + 64 * 10                      # ... and both count its connections once
    assert bp["effective_macs"] == dense and nb["effective_macs"] < dense
    # dense synops: every connection x every call, the same count for Linear layers
    assert nb["dense_synops"] == bp["dense_synops"] == dense
    assert {r["metric"] for r in comparison(nb, bp)} == set(DEFINITIONS)


def test_pruned_weights_lower_neurobench_acs_but_not_bioplaus_sops(digits):
    """bioplaus prices every synapse a spike reaches; NeuroBench skips exactly-zero weights."""
    x, y = digits.x_test, digits.y_test
    deep = trained(SpikingMLP([1, 8, 8], 10, hidden=[64, 32], T=4), digits, 2)
    w = deep.layers[1].linear.weight                                # the spiking layer after the first one
    with torch.no_grad():
        mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.3
        w[mask] = 0.0
    nb, bp = neurobench_metrics(deep, x, y), bioplaus_metrics(deep, x, y)
    synapses = sum(m.weight.numel() for m in deep.modules() if isinstance(m, torch.nn.Linear))
    assert bp["connection_sparsity"] == int(mask.sum()) / synapses
    assert nb["connection_sparsity"] == pytest.approx(bp["connection_sparsity"], abs=1e-4)   # NB rounds to 4 places
    # bioplaus: input spikes x fan-out; NeuroBench: each input spike x its non-zero outgoing weights
    spikes = [s for m, s in inputs(deep, x) if m is deep.layers[1].linear][0]          # [T, B, 64], binary
    full = float(spikes.sum()) * w.shape[0] / len(x)
    kept = float((spikes.reshape(-1, 64) @ (w != 0).float().T).sum()) / len(x)
    assert bp["effective_acs"] == pytest.approx(full, rel=1e-12)
    assert nb["effective_acs"] == pytest.approx(kept, rel=1e-12) and kept < 0.8 * full


def test_convnet_footprint_counts_buffers_and_dense_counts_only_in_bounds_taps(convnet, digits):
    x, y = digits.x_test, digits.y_test
    nb, bp = neurobench_metrics(convnet, x, y), bioplaus_metrics(convnet, x, y)
    buffers = sum(b.numel() * b.element_size() for b in convnet.buffers())
    assert buffers > 0 and nb["footprint_bytes"] - bp["footprint_bytes"] == buffers      # BatchNorm statistics
    assert nb["activation_sparsity"] == pytest.approx(bp["activation_sparsity"], rel=1e-12)
    assert bp["activation_sparsity"] < 1 and bp["effective_acs"] > 0
    assert nb["effective_acs"] == pytest.approx(bp["effective_acs"], rel=1e-12)      # both exact at conv borders
    # dense: bioplaus's formula counts the zero-padded taps at the borders, NeuroBench only in-bounds ones
    padded = 0.0
    for m, a in inputs(convnet, x[:1]):
        if isinstance(m, torch.nn.Conv2d):
            ones = torch.ones_like(a)
            inside = F.conv2d(ones, torch.ones_like(m.weight), None, m.stride, m.padding).sum()
            padded += float(m.weight[0].numel() * m.out_channels * a.shape[0] * a.shape[2] * a.shape[3] - inside)
    assert padded > 0 and bp["dense_synops"] - nb["dense_synops"] == pytest.approx(padded, rel=1e-12)
    assert nb["accuracy"] == bp["accuracy"] > 0.5


def test_activation_sparsity_is_neuron_weighted_unlike_the_mean_firing_rate(mlp, digits):
    deep = SpikingMLP([1, 8, 8], 10, hidden=[64, 16], T=4)
    layers = collect(deep, digits.x_test, preset("fp32_45nm"))
    rates = [layers[n]["firing_rate"] for n in ("layers.0", "layers.1")]
    weighted = (64 * rates[0] + 16 * rates[1]) / 80
    bp = bioplaus_metrics(deep, digits.x_test, digits.y_test)
    assert bp["activation_sparsity"] == pytest.approx(1 - weighted, rel=1e-9)
    assert abs(weighted - np.mean(rates)) > 1e-4                      # the stats summary's unweighted mean differs
    assert sum(isinstance(m, BaseNeuron) for m in deep.modules()) == 2


def test_the_command_writes_neurobench_json_beside_stats_h5(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bioplaus.run", "model=spiking_mlp", "model.T=3", "model.hidden=[32]",
                        "trainer.epochs=2", "trainer.progress=false", "trainer.checkpoint=true",
                        "trainer.keep_checkpoint=true",
                        f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "bioplaus.export.neurobench_metrics", str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "neurobench.json").read_text())
    stats = json.loads((out / "stats.json").read_text())["summary"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert doc["run"]["n_samples"] == 360 and {row["metric"] for row in doc["comparison"]} == set(DEFINITIONS)
    # the rebuilt model is the trained one: the run's own stats and accuracy are reproduced
    assert doc["bioplaus"]["effective_acs"] == pytest.approx(stats["sop_per_sample"], rel=1e-9)
    assert doc["neurobench"]["effective_acs"] == pytest.approx(stats["sop_per_sample"], rel=1e-9)
    assert doc["neurobench"]["accuracy"] == pytest.approx(metrics["test_acc"])
    assert "effective_macs" in r.stdout
    # a run without its weights on disk: one line, exit 2
    (out / "checkpoint.pt").unlink()
    r = subprocess.run([sys.executable, "-m", "bioplaus.export.neurobench_metrics", str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "trainer.checkpoint=true" in r.stderr
