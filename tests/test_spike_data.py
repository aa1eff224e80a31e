"""Spike-train data: latency and rate encodings, step-by-step encoding equal to the whole train, the
spike-timing task (seeded, balanced, counts carry nothing), and one-line errors for mismatched T/encoding."""
import pytest
import torch

from bioplaus.data import digits, spike_timing
from bioplaus.errors import ConfigError
from bioplaus.models import SpikingMLP
from bioplaus.neurons.encoding import encode, encode_step
from bioplaus.run import check_fit


def test_latency_fires_once_brightest_first():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    s = encode(x, 5, "latency")                                   # [T=5, B=1, 4]
    assert s.shape == (5, 1, 4)
    assert s.sum(0).tolist() == [[0.0, 1.0, 1.0, 1.0]]             # zero never fires, others once
    assert s[:, 0].argmax(0)[1:].tolist() == [3, 2, 0]             # t = round((1 - x)(T - 1))


@pytest.mark.parametrize("kind", ["direct", "latency", "given"])
def test_encode_step_is_the_whole_train_one_step_at_a_time(kind):
    T = 6
    x = torch.rand(3, T, 4) if kind == "given" else torch.rand(3, 4)
    full = encode(x, T, kind)
    assert torch.equal(torch.stack([encode_step(x, t, T, kind) for t in range(T)]), full)


def test_rate_steps_fire_at_the_pixel_intensity():
    torch.manual_seed(0)
    x = torch.tensor([0.1, 0.5, 0.9]).repeat(4000, 1)
    assert torch.allclose(encode_step(x, 0, 10, "rate").mean(0), x[0], atol=0.03)


def test_spike_timing_is_seeded_balanced_and_rate_free():
    a, b = spike_timing(n_train=200, n_test=50), spike_timing(n_train=200, n_test=50)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.spike_train and a.in_shape == (10, 16) and a.n_classes == 10
    assert torch.bincount(a.y_train).tolist() == [20] * 10
    assert torch.equal(a.x_train.sum(1), torch.ones(200, 16))
    other = spike_timing(n_train=200, n_test=50, seed=1)
    assert not torch.equal(other.x_train, a.x_train)
    with pytest.raises(ConfigError, match="spike_timing needs T >= 2"):
        spike_timing(T=1)


def test_mismatched_encoding_or_T_is_one_clear_error():
    data = spike_timing(n_train=20, n_test=10)
    with pytest.raises(ConfigError, match="use model.encoding=given model.T=10"):
        check_fit(SpikingMLP(data.in_shape, 10, T=10, encoding="rate"), data)
    check_fit(SpikingMLP(data.in_shape, 10, T=10, encoding="given"), data)          # the right way: fine
    with pytest.raises(ConfigError, match="needs data of shape \\[T=8"):
        SpikingMLP(data.in_shape, 10, T=8, encoding="given")
    with pytest.raises(ConfigError, match="encoding 'given' needs data of shape"):
        SpikingMLP(digits(n_train=10, n_test=10).in_shape, 10, T=8, encoding="given")
