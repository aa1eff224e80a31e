"""Neurons: IF/LIF/PLIF agree with SpikingJelly (spikes, membrane, input and parameter gradients), and
single-step mode reproduces multi-step mode."""
import pytest
import torch
from spikingjelly.activation_based import neuron as sjn
from spikingjelly.activation_based import surrogate as sjs

from bioplaus.errors import ConfigError
from bioplaus.neurons import IFNode, LIFNode, PLIFNode, make_neuron

SJ_SURROGATE = {"atan": lambda a: sjs.ATan(alpha=a), "sigmoid": lambda a: sjs.Sigmoid(alpha=a)}
CASES = [
    {},                                              # SpikingJelly defaults: tau 2, hard reset to 0
    {"v_reset": None},                               # soft reset
    {"detach_reset": True},
    {"decay_input": False, "tau": 4.0},
    {"v_reset": -0.3, "v_threshold": 0.7, "tau": 3.0},
]


def _probe(s):
    return (s * torch.arange(s.numel(), dtype=s.dtype).reshape(s.shape).sin()).sum()


def _compare(ours, theirs, x):
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    s1, s2 = ours(x1), theirs(x2)
    assert s1.sum() > 0 and s1.mean() < 0.9                    # the test exercises firing and silence
    torch.testing.assert_close(s1, s2, atol=0, rtol=0)
    torch.testing.assert_close(ours.v, theirs.v, atol=1e-5, rtol=1e-5)
    _probe(s1).backward()
    _probe(s2).backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("surrogate,alpha", [("atan", 2.0), ("sigmoid", 4.0)])
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_lif_matches_spikingjelly(kw, surrogate, alpha, backend):
    x = torch.randn(12, 5, 37, generator=torch.Generator().manual_seed(0)) * 2
    ours = LIFNode(surrogate=surrogate, alpha=alpha, backend=backend, **kw)
    theirs = sjn.LIFNode(step_mode="m", surrogate_function=SJ_SURROGATE[surrogate](alpha), **kw)
    _compare(ours, theirs, x)


def test_if_matches_spikingjelly():
    x = torch.randn(7, 3, 2, 11, generator=torch.Generator().manual_seed(1))
    _compare(IFNode(), sjn.IFNode(step_mode="m", surrogate_function=sjs.ATan()), x)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_plif_matches_spikingjelly_including_tau_gradient(backend):
    x = torch.randn(10, 4, 21, generator=torch.Generator().manual_seed(2)) * 2
    ours = PLIFNode(init_tau=3.0, surrogate="sigmoid", alpha=4.0, backend=backend)
    theirs = sjn.ParametricLIFNode(init_tau=3.0, step_mode="m", surrogate_function=sjs.Sigmoid())
    _compare(ours, theirs, x)
    assert ours.tau == pytest.approx(3.0)
    torch.testing.assert_close(ours.w.grad, theirs.w.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls", [IFNode, LIFNode, PLIFNode])
def test_single_step_equals_multi_step(cls):
    x = torch.randn(6, 3, 9, generator=torch.Generator().manual_seed(3)) * 2
    multi = cls()
    single = cls(step_mode="s")
    s_multi = multi(x)
    s_single = torch.stack([single(x[t]) for t in range(len(x))])
    torch.testing.assert_close(s_multi, s_single)
    torch.testing.assert_close(multi.v, single.v)
    single.reset()
    assert single.v is None
    torch.testing.assert_close(single(x[0]), s_multi[0])


def test_multi_step_calls_are_independent():
    n = LIFNode()
    x = torch.rand(4, 2, 3) * 3
    torch.testing.assert_close(n(x), n(x))


def test_bad_neuron_settings_are_config_errors():
    with pytest.raises(ConfigError, match="unknown neuron 'lifx'.*if, lif, plif"):
        make_neuron("lifx")
    with pytest.raises(ConfigError, match="tau must be > 1"):
        LIFNode(tau=0.5)
    with pytest.raises(ConfigError, match="step_mode"):
        LIFNode(step_mode="x")
    with pytest.raises(ConfigError, match="backend 'gpu'"):
        LIFNode(backend="gpu")
    with pytest.raises(ConfigError, match="neuron 'lif'"):
        make_neuron("lif", taus=2.0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gated_lif_starts_as_lif_and_its_gate_gets_the_reference_gradient(backend):
    from bioplaus.kernels import leaky_scan_naive

    x = torch.randn(7, 3, 2, 5, 4, generator=torch.Generator().manual_seed(4)) * 2     # [T, B, C, H, W]
    n = make_neuron("gated_lif", size=2, tau=2.0, backend=backend)
    torch.testing.assert_close(n(x), LIFNode()(x))
    with torch.no_grad():
        n.w.copy_(torch.tensor([0.7, -0.4]))
    s = n(x)
    _probe(s).backward()
    w, c = n.w.detach().clone().requires_grad_(), n.c.detach().clone().requires_grad_()
    a = torch.sigmoid(w.view(-1, 1, 1) * x + c.view(-1, 1, 1))
    ref, _ = leaky_scan_naive(x, a, 1 - a, threshold=1.0, reset="hard")
    torch.testing.assert_close(s, ref)
    _probe(ref).backward()
    torch.testing.assert_close(n.w.grad, w.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(n.c.grad, c.grad, atol=1e-5, rtol=1e-4)


def test_spiking_mlp_trains_with_gated_lif(digits):
    from bioplaus.models import SpikingMLP
    from bioplaus.rules.backprop import Backprop
    from bioplaus.train import TrainConfig, train

    torch.manual_seed(0)
    model = SpikingMLP([1, 8, 8], 10, neuron={"kind": "gated_lif", "tau": 2.0})
    m = train(Backprop(model), digits, TrainConfig(epochs=10, progress=False))
    assert m["test_acc"] >= 0.93 and model.layers[0].neuron.w.abs().sum() > 0      # the gate learned


@pytest.mark.parametrize("cls", [LIFNode, PLIFNode])
def test_spike_counts_accumulate_in_kernel_in_both_step_modes(cls):
    x = torch.randn(5, 4, 9, generator=torch.Generator().manual_seed(6)) * 2
    multi, single = cls(), cls(step_mode="s")
    multi.spike_counts = torch.zeros(5, dtype=torch.float64)
    single.spike_counts = torch.zeros(5, dtype=torch.float64)
    s = multi(x)
    for t in range(5):
        single(x[t])
    expected = s.reshape(5, -1).sum(1).double()
    torch.testing.assert_close(multi.spike_counts, expected)
    torch.testing.assert_close(single.spike_counts, expected)
