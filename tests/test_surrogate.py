"""Surrogates: autograd of each smooth primitive equals its hand-written derivative; spike() is a step."""
import pytest
import torch

from bioplaus.errors import ConfigError
from bioplaus.neurons.surrogate import SURROGATES, Surrogate, get, spike


@pytest.mark.parametrize("name", list(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 0.7, 5.0])
def test_primitive_gradient_equals_handwritten(name, alpha):
    spec = get(name)
    a = spec.alpha if alpha is None else alpha
    x = torch.linspace(-3, 3, 1001, dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(spec.primitive(x, a).sum(), x)
    torch.testing.assert_close(g, spec.grad(x.detach(), a), atol=1e-12, rtol=1e-10)
    assert spec.grad(torch.zeros(1, dtype=torch.float64), a).item() > 0   # peaks at the threshold


@pytest.mark.parametrize("name", list(SURROGATES))
def test_spike_is_heaviside_forward_surrogate_backward(name):
    x = torch.tensor([-1.0, -1e-6, 0.0, 0.3], requires_grad=True)
    s = spike(x, name)
    assert s.tolist() == [0.0, 0.0, 1.0, 1.0]
    s.sum().backward()
    torch.testing.assert_close(x.grad, get(name).grad(x.detach(), get(name).alpha))


def test_matches_spikingjelly_atan_and_sigmoid():
    from spikingjelly.activation_based import surrogate as sjs

    x = torch.linspace(-2, 2, 101, requires_grad=True)
    pairs = [(Surrogate("atan", 2.0), sjs.ATan(alpha=2.0)), (Surrogate("sigmoid", 4.0), sjs.Sigmoid(alpha=4.0))]
    for ours, theirs in pairs:
        (g1,) = torch.autograd.grad(ours(x).sum(), x)
        (g2,) = torch.autograd.grad(theirs(x).sum(), x)
        torch.testing.assert_close(g1, g2)


def test_unknown_surrogate_names_the_choices():
    with pytest.raises(ConfigError, match="atan, sigmoid, fast_sigmoid, triangle"):
        get("relu")
