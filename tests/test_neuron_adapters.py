"""Neuron adapters: SpikingJelly / snnTorch neurons behind make_neuron give the native neurons' spikes
(and input gradients), count spikes for the statistics layer, work in every spiking model, and fail
with one clear error when misconfigured or when their library is missing."""
import sys

import numpy as np
import pytest
import torch

from bioplaus import stats
from bioplaus.errors import ConfigError
from bioplaus.models import SpikingConvNet, SpikingMLP
from bioplaus.models.spikformer import SpikeDrivenTransformer, Spikformer
from bioplaus.neurons import BaseNeuron, make_neuron
from bioplaus.neurons.adapters import ADAPTERS
from bioplaus.stats import EnergyModel

NATIVE = {"sj_lif": "lif", "sj_plif": "plif", "sj_if": "if", "snntorch_leaky": "lif"}
CASES = [
    {},                                                          # tau 2, decay_input, hard reset, atan(2)
    {"detach_reset": True},
    {"decay_input": False, "tau": 4.0, "v_threshold": 0.5},
    {"surrogate": "sigmoid", "alpha": 4.0},
    {"v_reset": None},                                           # soft reset (SpikingJelly adapters only)
]


def _probe(s):
    return (s * torch.arange(s.numel(), dtype=s.dtype).reshape(s.shape).sin()).sum()


def _case_id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


# snnTorch's subtract reset is a different neuron: it has its own test (test_snntorch_subtract_reset).
PAIRS = [pytest.param(kind, kw, id=f"{kind}-{_case_id(kw)}") for kind in ADAPTERS for kw in CASES
         if not (kind == "snntorch_leaky" and "v_reset" in kw)]


@pytest.mark.parametrize("kind,kw", PAIRS)
def test_adapter_spikes_equal_native_lif(kind, kw):
    if kind == "sj_if":
        kw = {k: v for k, v in kw.items() if k not in ("tau", "decay_input")}
    x = torch.randn(10, 4, 33, generator=torch.Generator().manual_seed(0)) * 2
    ours, theirs = make_neuron(NATIVE[kind], backend="torch", **kw), make_neuron(kind, **kw)
    assert isinstance(theirs, BaseNeuron)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    s1, s2 = ours(x1), theirs(x2)
    assert 0 < s1.mean() < 0.9
    torch.testing.assert_close(s2, s1, atol=0, rtol=0)
    torch.testing.assert_close(theirs.v, ours.v, atol=1e-5, rtol=1e-5)
    _probe(s1).backward()
    _probe(s2).backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=1e-4)


def test_snntorch_subtract_reset():
    """v_reset=null maps to snnTorch's own subtract reset: mem_t = beta mem_{t-1} + x_t / tau - th s_{t-1}."""
    x = torch.randn(12, 3, 7, generator=torch.Generator().manual_seed(1)) * 2
    n = make_neuron("snntorch_leaky", tau=2.0, v_reset=None, detach_reset=True)
    mem, s_prev, want = torch.zeros(3, 7), torch.zeros(3, 7), []
    for x_t in x:
        mem = 0.5 * mem + 0.5 * x_t - s_prev
        s_prev = (mem > 1.0).float()
        want.append(s_prev)
    torch.testing.assert_close(n(x), torch.stack(want), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["sj_lif", "snntorch_leaky"])
def test_single_step_mode_reproduces_multi_step(kind):
    x = torch.randn(6, 2, 9, generator=torch.Generator().manual_seed(2)) * 2
    multi = make_neuron(kind)(x)
    single = make_neuron(kind, step_mode="s")
    torch.testing.assert_close(torch.stack([single(x_t) for x_t in x]), multi, atol=0, rtol=0)
    single.reset()
    torch.testing.assert_close(single(x[0]), multi[0], atol=0, rtol=0)


MODELS = {
    "spiking_mlp": lambda nrn: SpikingMLP([1, 8, 8], 10, hidden=[24, 16], T=4, neuron=nrn),
    "spiking_convnet": lambda nrn: SpikingConvNet([1, 8, 8], 10, channels=[4, 6], T=3, neuron=nrn),
    "spikformer": lambda nrn: Spikformer([1, 8, 8], 10, dim=16, T=3, neuron=nrn),
    "spike_driven": lambda nrn: SpikeDrivenTransformer([1, 8, 8], 10, dim=16, T=3, neuron=nrn),
}


@pytest.mark.parametrize("kind", ["sj_lif", "snntorch_leaky"])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_spiking_model_takes_an_adapter_and_counts_its_spikes(model, kind, digits):
    nrn = {"tau": 2.0, "decay_input": False, "detach_reset": True}
    torch.manual_seed(0)
    native = MODELS[model]({"kind": "lif", "backend": "torch", **nrn}).eval()
    adapted = MODELS[model]({"kind": kind, **nrn}).eval()
    adapted.load_state_dict(native.state_dict(), strict=False)       # adapters add only library buffers
    x = digits.x_test[:40]
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), native(x), atol=1e-5, rtol=1e-5)
    e = EnergyModel(name="t", bits=32, mac_pj=4.6, ac_pj=0.9, memory=None)
    ours, theirs = stats.collect(native, x, e), stats.collect(adapted, x, e)
    for name in ours:
        if "spike_counts" in ours[name]:
            np.testing.assert_allclose(theirs[name]["spike_counts"], ours[name]["spike_counts"])
            assert theirs[name]["n_neurons"] == ours[name]["n_neurons"]
    assert ours["layers.0"]["spike_counts"].sum() > 0
    assert theirs["layers.1"]["sop"].sum() == pytest.approx(ours["layers.1"]["sop"].sum())


def test_bad_adapter_settings():
    with pytest.raises(ConfigError, match="unknown neuron 'lifx'.*lif.*sj_lif.*snntorch_leaky"):
        make_neuron("lifx")
    with pytest.raises(ConfigError, match="set neuron.backend=auto"):
        make_neuron("sj_lif", backend="torch")
    with pytest.raises(ConfigError, match="supports surrogates atan, sigmoid"):
        make_neuron("sj_lif", surrogate="triangle")
    with pytest.raises(ConfigError, match="v_reset=0.0.*v_reset=null"):
        make_neuron("snntorch_leaky", v_reset=-0.3)
    with pytest.raises(ConfigError, match="set detach_reset=true"):
        make_neuron("snntorch_leaky", v_reset=None)
    with pytest.raises(ConfigError, match="tau must be > 1"):
        make_neuron("sj_lif", tau=0.5)
    with pytest.raises(ConfigError, match="neuron 'sj_if'.*tau"):
        make_neuron("sj_if", tau=2.0)


@pytest.mark.parametrize("kind,module", [("sj_lif", "spikingjelly.activation_based.neuron"),
                                         ("snntorch_leaky", "snntorch")])
def test_missing_library_names_the_install_command(kind, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)                   # import now raises ImportError
    with pytest.raises(ConfigError, match=f"'{kind}' needs .*not installed: pip install"):
        make_neuron(kind)
