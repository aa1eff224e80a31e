"""Spiking VGG and SEW-ResNet (bioplaus.models.vision) and the CIFAR-size transformer / SHD-size recurrent
configs: shapes and dims, the SEW ADD block, the no-BatchNorm forms (a sample's output does not depend on its
batch), and every rule that trains a spiking ConvNet runs on both nets with gradients reaching the first conv."""
import pytest
import torch
from hydra.utils import instantiate

from bioplaus.errors import ConfigError
from bioplaus.models import SEWResNet, SpikingConvNet, SpikingVGG
from bioplaus.models.vision import VGG11, WSConv2d
from bioplaus.rules.backprop import Backprop
from bioplaus.rules.feedback_alignment import DirectFeedbackAlignment, FeedbackAlignment, SignSymmetry
from bioplaus.rules.noprop import NoProp
from bioplaus.rules.readout_only import ReadoutOnly


def test_vgg11_layers_dims_and_logits(one_thread):
    torch.manual_seed(0)
    m = SpikingVGG([3, 32, 32], 10, channels=VGG11, T=1)
    assert isinstance(m, SpikingConvNet) and len(m.layers) == 8
    assert m.dims == [64 * 16 * 16, 128 * 8 * 8, 256 * 8 * 8, 256 * 4 * 4, 512 * 4 * 4, 512 * 2 * 2, 512 * 2 * 2, 512]
    h = m.encode(torch.randn(2, 3, 32, 32))
    for layer, d in zip(m.layers, m.dims):
        h = layer(h)
        assert h[0, 0].numel() == d and set(h.unique().tolist()) <= {0.0, 1.0}     # binary spikes per layer
    assert m.head(h).shape == (2, 10)


@pytest.mark.parametrize("channels, message", [(["M", 8], "starting with a width"), ([8, "M", "M"], "one 'M'"),
                                               ([8, "M", 8, "M", 8, "M", 8, "M"], "too many 2x2 pools")])
def test_vgg_refuses_bad_channel_specs(channels, message):
    with pytest.raises(ConfigError, match=message):
        SpikingVGG([3, 8, 8], 10, channels=channels)


def test_sew_block_adds_the_shortcut():
    torch.manual_seed(0)
    m = SEWResNet([2, 16, 16], 11, stem=4, channels=[4, 8], T=3, encoding="direct")
    assert m.dims == [4 * 16 * 16, 4 * 8 * 8, 8 * 4 * 4] and m.layers[1].shortcut is None
    s = m.layers[0](m.encode(torch.rand(2, 2, 16, 16) * 3))
    a = m.layers[1].branch[1](m.layers[1].branch[0](s))
    out = m.layers[1](s)
    expect = torch.nn.functional.max_pool2d((a + s).flatten(0, 1), 2).unflatten(0, (3, 2))
    assert torch.equal(out, expect) and set(out.unique().tolist()) <= {0.0, 1.0, 2.0}
    assert m.layers[2].shortcut is not None                          # width 4 -> 8: conv1x1-norm-SN shortcut
    assert m(torch.rand(2, 2, 16, 16)).shape == (2, 11)


@pytest.mark.parametrize("model", [lambda n: SpikingVGG([3, 16, 16], 10, channels=[8, "M", 8], norm=n),
                                   lambda n: SEWResNet([3, 16, 16], 10, stem=8, channels=[8], norm=n)])
def test_no_batchnorm_forms_are_per_sample(model):
    x = torch.rand(4, 3, 16, 16) * 2
    for norm, independent in (("batch", False), ("ws", True), ("none", True)):
        torch.manual_seed(0)
        m = model(norm).train()
        assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules()) == (norm == "batch")
        same = torch.allclose(m.features(x[:1]), m.features(x)[:, :1])
        assert same == independent, norm


def test_weight_standardisation():
    conv = WSConv2d(3, 5, 3, padding=1, gain=2.0)
    w = conv.standardized_weight()
    assert torch.allclose(w.mean((1, 2, 3)), torch.zeros(5), atol=1e-6)
    assert torch.allclose(w.pow(2).sum((1, 2, 3)), torch.full((5,), 4.0), atol=1e-3)   # ||W_o||^2 = gain^2


@pytest.mark.parametrize("rule", [Backprop, ReadoutOnly, FeedbackAlignment, DirectFeedbackAlignment, SignSymmetry,
                                  NoProp])
@pytest.mark.parametrize("model", [lambda: SpikingVGG([3, 16, 16], 10, channels=[8, "M", 16, "M"], T=2),
                                   lambda: SEWResNet([3, 16, 16], 10, stem=8, channels=[8, 16], T=2)])
def test_rules_for_spiking_convnets_train_both(rule, model, one_thread):
    torch.manual_seed(0)
    r = rule(model())
    logs = r.assign_credit(torch.rand(8, 3, 16, 16) * 2, torch.arange(8))
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values() if isinstance(v, float))
    first = r.model.layers[0].conv[0].weight
    if rule is ReadoutOnly:
        assert first.grad is None and r.model.head.linear.weight.grad is not None
    elif rule is not NoProp:                                             # NoProp trains copies of the layers
        assert first.grad is not None and first.grad.abs().sum() > 0
    assert r.predict(torch.rand(3, 3, 16, 16)).shape == (3, 10)


@pytest.mark.parametrize("name, dim, tokens", [("spikformer_cifar", 384, 64), ("spike_driven_cifar", 512, 64)])
def test_transformer_configs_fit_cifar(compose, name, dim, tokens, one_thread):
    cfg = compose(f"model={name}", "model.T=1")
    m = instantiate(cfg.model, in_shape=[3, 32, 32], n_classes=10, _convert_="all")
    h = m.layers[0](m.encode(torch.randn(1, 3, 32, 32)))
    assert h.shape == (1, 1, tokens, dim) and m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_recurrent_config_sized_for_shd(compose):
    cfg = compose("model=recurrent_spiking_shd")
    m = instantiate(cfg.model, in_shape=[100, 700], n_classes=20, _convert_="all")
    assert m.T == 100 and m.encoder.kind == "given" and tuple(m.layers[0].input.weight.shape) == (256, 700)
