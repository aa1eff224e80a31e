"""TESS on convolutional SNNs (the paper's VGG layout, weight standardisation, no BatchNorm): the causal term is
the exact gradient of each layer's local losses through the pooled learning-signal generator (plain and
weight-standardised convs, max-pooled or not), any time chunk gives the same update, BatchNorm is refused, and
a small conv SNN learns digits above its frozen control."""
import pytest
import torch
import torch.nn.functional as F

from bioplaus.data import digits
from bioplaus.errors import ConfigError
from bioplaus.models import SpikingConvNet
from bioplaus.models.vision import SEWResNet, SpikingVGG
from bioplaus.rules.readout_only import ReadoutOnly
from bioplaus.rules.tess import TESS
from bioplaus.train import TrainConfig, train

SOFT_DETACHED = {"kind": "lif", "tau": 2.0, "v_reset": None, "detach_reset": True, "v_threshold": 0.6}


def _vgg(norm="ws", T=5, encoding="direct", seed=0):
    torch.manual_seed(seed)
    m = SpikingVGG([2, 8, 8], 4, channels=[6, 5, "M", 7, "M"], T=T, encoding=encoding, neuron=SOFT_DETACHED,
                   norm=norm, ws_gain=3.0)
    if norm == "none":                                   # PyTorch's default init: too quiet to spike
        with torch.no_grad():
            for layer in m.layers:
                layer.conv[0].weight.mul_(4.0)
    return m


def _params(layer):
    return [p for n, p in layer.named_parameters() if "neuron" not in n]


@pytest.mark.parametrize("norm", ["ws", "none"])
@pytest.mark.parametrize("lsg_pool", [1, 2])
def test_causal_term_is_the_exact_gradient_of_the_local_losses(norm, lsg_pool, one_thread):
    """lam_pre = the LIF decay, alpha_post = 0, soft reset with detached reset gradient: TESS's update of every
    conv parameter (kernel, bias, and the weight-standardisation gain) equals autograd's BPTT gradient of the
    layer's local losses mean_t CE(pool_k(maxpool(s_t)) B_l / tau, y), the layer's input detached."""
    model = _vgg(norm)
    rule = TESS(model, lam_pre=0.5, alpha_post=0.0, temperature=0.3, lsg_pool=lsg_pool).double()
    model.double()
    x, y = torch.rand(6, 2, 8, 8, dtype=torch.float64) * 2, torch.tensor([0, 1, 2, 3, 0, 1])
    rule.assign_credit(x, y)
    got = [[p.grad.clone() for p in _params(layer)] for layer in model.layers]
    model.zero_grad(set_to_none=True)
    h = model.encode(x)
    for i, layer in enumerate(model.layers):
        o = layer(h.detach())                                        # [T, B, C, H, W], BPTT inside the layer
        z = F.adaptive_avg_pool2d(o.flatten(0, 1), lsg_pool).flatten(1).unflatten(0, o.shape[:2])
        logits = z @ rule.projection(i) / 0.3
        torch.stack([F.cross_entropy(lt, y) for lt in logits]).mean().backward()
        assert o.sum() > 0                                           # spikes (and resets) happen
        h = o
    for g_layer, layer in zip(got, model.layers):
        for g, p in zip(g_layer, _params(layer)):
            assert p.grad.abs().max() > 0
            torch.testing.assert_close(g, p.grad, rtol=1e-7, atol=1e-10)
    if norm == "ws":                                                 # the gain learns too
        assert model.layers[0].conv[0].gain.grad.abs().max() > 0


@pytest.mark.parametrize("time_chunk", [1, 3, 10])
def test_time_chunks_give_the_same_conv_update(time_chunk, one_thread):
    model = _vgg(T=10, encoding="rate")
    model.double()
    x, y = torch.rand(5, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    grads = {}
    for chunk in (time_chunk, 10):
        rule = TESS(model, time_chunk=chunk).double()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)                                         # the same Bernoulli input spikes
        rule.assign_credit(x, y)
        grads[chunk] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert all(g.abs().sum() > 0 for g in grads[10][:3])
    for a, b in zip(grads[time_chunk], grads[10]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_spiking_convnet_ws_is_trained_too_and_batchnorm_is_refused(one_thread):
    torch.manual_seed(0)
    net = SpikingConvNet([1, 8, 8], 3, channels=[4, 6], T=3, norm="ws", neuron=SOFT_DETACHED)
    TESS(net).assign_credit(torch.rand(4, 1, 8, 8) * 3, torch.tensor([0, 1, 2, 0]))
    assert net.layers[1].conv.weight.grad.abs().sum() > 0 and net.layers[1].conv.gain.grad is not None
    with pytest.raises(ConfigError, match="without BatchNorm.*model.norm=ws"):
        TESS(SpikingConvNet([1, 8, 8], 3, channels=[4], norm="batch"))
    with pytest.raises(ConfigError, match="without BatchNorm"):
        TESS(SpikingVGG([1, 8, 8], 3, channels=[4, "M"], norm="batch"))
    with pytest.raises(ConfigError, match="layer 1 is SEWBlock"):
        TESS(SEWResNet([1, 8, 8], 3, stem=4, channels=[4], norm="ws"))
    with pytest.raises(ConfigError, match="by max"):
        TESS(SpikingVGG([1, 8, 8], 3, channels=[4, "M"], norm="ws", pool="avg"))
    with pytest.raises(ConfigError, match="lsg_pool must be a whole number"):
        TESS(SpikingVGG([1, 8, 8], 3, channels=[4, "M"], norm="ws"), lsg_pool=0)


def test_learns_digits_above_the_frozen_control(one_thread):
    """A small conv SNN of the paper's kind (weight standardisation, leak 0.5, threshold 0.6, soft reset,
    triangle surrogate) on digits: TESS trains every layer; the control trains the readout of the same net
    frozen at init, at the same lr. Measured 0.956 vs 0.911 (8 epochs)."""
    data = digits()
    nrn = {"kind": "lif", "tau": 2.0, "decay_input": False, "v_threshold": 0.6, "v_reset": None,
           "detach_reset": True, "surrogate": "triangle", "alpha": 1.0}
    acc = {}
    for name, make in (("tess", lambda m: TESS(m, temperature=0.1)), ("readout", ReadoutOnly)):
        torch.manual_seed(0)
        model = SpikingVGG(data.in_shape, 10, channels=[16, "M", 32, "M"], T=4, neuron=nrn, norm="ws", ws_gain=1.0)
        acc[name] = train(make(model), data, TrainConfig(epochs=8, progress=False), seed=0,
                          device=torch.device("cpu"))["test_acc"]
    assert acc["tess"] >= 0.93 and acc["tess"] >= acc["readout"] + 0.03, acc


def test_conv_memory_does_not_grow_with_T(one_thread):
    """On the conv SNN, too: saved for backward (the readout and the kernel standardisation only), the carried
    state and the peak of all live tensors are the same at T = 16 and T = 48; BPTT's grow with T."""
    from bioplaus.rules.backprop import Backprop
    from bioplaus.stats.memory import LiveTensors, SavedTensors
    x, y = torch.rand(8, 2, 8, 8) * 2, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    held, live = {}, {}
    for rule_cls in (TESS, Backprop):
        for T in (16, 48):
            rule = rule_cls(_vgg(T=T, encoding="rate"))
            with LiveTensors() as probe, SavedTensors(exclude=rule.parameters()) as saved:
                rule.assign_credit(x, y)
            held[rule_cls.__name__, T] = (saved.bytes, getattr(rule, "state_bytes", 0))
            live[rule_cls.__name__, T] = probe.peak
    assert held["TESS", 16] == held["TESS", 48] and live["TESS", 16] == live["TESS", 48], (held, live)
    assert held["Backprop", 48][0] > 2.5 * held["Backprop", 16][0] and live["Backprop", 48] > 2 * live["Backprop", 16]
