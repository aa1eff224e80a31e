"""Models are layered (encode -> layers -> head), give [B, C] logits, and spiking layers emit binary
spikes [T, B, ...] time-major."""
import pytest
import torch

from bioplaus.errors import ConfigError
from bioplaus.models import MLP, ConvNet, Layered, SpikingConvNet, SpikingMLP


@pytest.mark.parametrize("cls,kw", [(MLP, {}), (ConvNet, {}), (SpikingMLP, {"T": 5}),
                                    (SpikingConvNet, {"T": 3}), (SpikingMLP, {"T": 4, "encoding": "rate"}),
                                    (SpikingMLP, {"neuron": {"kind": "plif"}})])
def test_layered_skeleton(cls, kw):
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    m = cls([1, 8, 8], 10, **kw)
    assert isinstance(m, Layered) and len(m.layers) == len(m.dims) == 2
    torch.manual_seed(1)                         # rate encoding samples spikes
    h = m.encode(x)
    for layer, d in zip(m.layers, m.dims):
        h = layer(h)
        assert m.pool(h).shape == (6, d)
        if m.spiking:
            assert h.shape[:2] == (m.T, 6)
            assert set(h.unique().tolist()) <= {0.0, 1.0}
    logits = m.head(h)
    assert logits.shape == (6, 10)
    torch.manual_seed(1)
    torch.testing.assert_close(logits, m(x))


def test_spiking_mlp_fires_at_init_in_every_layer(digits):
    """Otherwise the readout_only control on a spiking net is at chance and proves nothing."""
    m = SpikingMLP([1, 8, 8], 10)
    h = m.encode(digits.x_test)
    for layer in m.layers:
        h = layer(h)
        assert 0.02 < h.mean().item() < 0.5


def test_bad_model_settings():
    with pytest.raises(ConfigError, match="hidden"):
        MLP([1, 8, 8], 10, hidden=[])
    with pytest.raises(ConfigError, match="too many conv blocks"):
        ConvNet([1, 8, 8], 10, channels=[4, 4, 4, 4])
    with pytest.raises(ConfigError, match=r"image data \[C, H, W\]"):
        ConvNet([64], 10)
    with pytest.raises(ConfigError, match="encoding 'poisson'"):
        SpikingMLP([64], 10, encoding="poisson")
