"""Spike-train data: latency and rate encodings, step-by-step encoding equal to the whole train, the
spike-timing task (seeded, balanced, counts carry nothing), and one-line errors for mismatched T/encoding."""
import pytest
import torch

from bioplaus.data import cue_accumulation, digits, spike_timing
from bioplaus.errors import ConfigError
from bioplaus.models import RecurrentSpikingNet, SpikingMLP
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


def test_cue_accumulation_needs_the_cue_count_after_the_delay():
    """Evidence accumulation: the label is the side with more cues; cues fire only in their cue slots on their
    side's channels, the recall population only in the last recall_steps, so the readout window sees no cue.
    Seeded; bad settings are one clear error."""
    d = cue_accumulation(n_train=64, n_test=16, n_cues=5, cue_steps=2, gap_steps=1, delay=7, recall_steps=3,
                         channels=4, rate=1.0, noise_rate=0.0)
    T = 5 * 3 + 7 + 3
    x = d.x_train.view(64, T, 4, 4)
    assert d.x_train.shape == (64, T, 16) and d.n_classes == 2 and d.spike_train
    left = x[:, :15:3, 0, 0] + x[:, 1:15:3, 0, 0]                      # rate 1: both steps of each left cue
    right = x[:, :15:3, 1, 0] + x[:, 1:15:3, 1, 0]
    assert torch.equal(((left + right) == 2).all(1), torch.ones(64, dtype=torch.bool))   # every cue on one side
    assert torch.equal(d.y_train, ((right > 0).sum(1) > 2).long())          # majority of 5
    assert x[:, 2:15:3, :2].sum() == 0 and x[:, 15:, :2].sum() == 0        # gaps, delay, recall: no cue
    assert x[:, -3:, 2].sum() == 64 * 3 * 4 and x[:, :-3, 2].sum() == 0     # recall only in the window
    assert 0.3 < d.y_train.float().mean() < 0.7
    again = cue_accumulation(n_train=64, n_test=16, n_cues=5, cue_steps=2, gap_steps=1, delay=7, recall_steps=3,
                             channels=4, rate=1.0, noise_rate=0.0)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    with pytest.raises(ConfigError, match="odd n_cues"):
        cue_accumulation(n_cues=4)
    with pytest.raises(ConfigError, match="delay=-1"):
        cue_accumulation(delay=-1)


def test_recurrent_readout_window_averages_the_last_steps():
    """model.readout_steps=K: the head averages the last K steps only (later steps decide; the cue period does
    not reach the logits); out of range is one clear error."""
    torch.manual_seed(0)
    m = RecurrentSpikingNet([6], 2, hidden=8, T=5, encoding="direct", readout_steps=2)
    z = torch.rand(5, 3, 8)
    torch.testing.assert_close(m.head(z), m.head.linear(z[-2:].mean(0)))
    assert RecurrentSpikingNet([6], 2, hidden=8, T=5).readout_steps == 5
    with pytest.raises(ConfigError, match="model.readout_steps must be in 1..T=5"):
        RecurrentSpikingNet([6], 2, hidden=8, T=5, readout_steps=6)
