"""Perforated dendrites, the published mechanisms (rules/dendrites.py, rules/perforated.py): covariance and Pearson
scores pick different candidate units; each dendrite sees the earlier ones of its neuron (the cascade); the best
model is reloaded at each growth decision; no growth starts in the last epochs; conv layers get one dendrite per
channel whose candidates learn the residual."""
import copy
import warnings

import pytest
import torch
from torch import nn

from bioplaus.models import MLP, ConvNet
from bioplaus.models.classic import Dense
from bioplaus.rules.dendrites import PerforatedLayer
from bioplaus.rules.perforated import Perforated
from bioplaus.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def bottleneck() -> MLP:
    return MLP([1, 8, 8], 10, hidden=[4])


def test_covariance_and_pearson_pick_different_units():
    """One neuron, two candidates: a small-amplitude unit that follows the error closely (high corr, low cov) and a
    saturated unit that follows it loosely (low corr, high cov). The covariance score attaches the second, Pearson
    the first; the attached set copies the chosen unit's weights."""
    torch.manual_seed(0)
    layer = PerforatedLayer(Dense(2, 1))
    layer.start_candidates(2)
    with torch.no_grad():
        layer.candidate.op.weight.copy_(torch.tensor([[0.05, 0.0], [0.0, 3.0]]))
        layer.candidate.op.bias.zero_()
    u = torch.randn(4000, 2)
    e = (u[:, 0] + 0.6 * u[:, 1])[:, None]
    layer.candidate_step(u, e, 0.9, "covariance")
    s = layer.epoch_scores()
    assert s["corr"].argmax() == 0 and s["cov"].argmax() == 1
    for select, unit in ((s["cov"], 1), (s["corr"], 0)):
        clone = copy.deepcopy(layer)
        clone.attach(select)
        assert torch.equal(clone.dendrites[0].op.weight, layer.candidate.op.weight[unit:unit + 1])
        assert clone.candidate is None and clone.dendrites[0].w.abs().max() == 0


def test_each_dendrite_sees_the_earlier_ones_of_its_neuron(digits):
    """d_2 = g(V_2 u + c_2 * d_1) per neuron; the candidates for the second set see d_1 too."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), mode="gd", switch="fixed", fixed_switch_num=1, max_dendrites=2)
    for e in range(2):
        rule.on_epoch_end(e, {"epoch": e, "loss": 1.0})
    layer = rule.model.layers[0]
    d1, d2 = layer.dendrites
    assert d1.cascade.shape == (0, 4) and d2.cascade.shape == (1, 4)
    with torch.no_grad():
        d2.cascade.fill_(0.7)
        u = digits.x_train[:16].flatten(1)
        first = torch.tanh(d1.op(u))
        assert torch.allclose(layer.dendrite_outputs(u)[1], torch.tanh(d2.op(u) + 0.7 * first), atol=1e-6)
    cascor = Perforated(bottleneck(), switch="fixed", fixed_switch_num=1, p_epochs=1, max_dendrites=2)
    for e in range(3):
        cascor.on_epoch_end(e, {"epoch": e, "loss": 1.0})                  # grow once, then p-mode again
    assert cascor.in_p_mode and cascor.model.layers[0].candidate.cascade.shape == (1, 4 * 4)
    cascor.zero_grad()
    cascor.assign_credit(digits.x_train[:64], digits.y_train[:64])
    assert cascor.model.layers[0].candidate.cascade.grad.abs().sum() > 0    # trained with the pool


def test_the_best_model_is_reloaded_at_each_growth_decision():
    """history switch, gd: the parameters at the decision are those of the best validation epoch since the last
    growth (the package's best_model reload); after growth the best restarts with the new structure."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=2, max_dendrites=2)
    val = [0.5, 0.7, 0.6, 0.6, 0.6, 0.8, 0.7, 0.7]
    snaps, grown = {}, []
    for epoch, v in enumerate(val):
        with torch.no_grad():                                  # stand-in for an epoch of training
            for p in rule.trainable_parameters():
                p.add_(0.01 * (epoch + 1))
        snaps[epoch] = [p.detach().clone() for p in rule.model.layers[0].base.parameters()]
        if rule.on_epoch_end(epoch, {"epoch": epoch, "loss": 1.0, "val_acc": v}):
            grown.append(epoch)
            reloaded = [p.detach().clone() for p in rule.model.layers[0].base.parameters()]
            best = 1 if len(grown) == 1 else 5
            assert all(torch.equal(a, b) for a, b in zip(reloaded, snaps[best])), epoch
    assert grown == [3, 7] and rule.n_dendrites == 2


@pytest.mark.parametrize("tie_break,best", [("val_loss", 3), ("first", 1)])
def test_ties_in_the_score_reload_the_epoch_with_the_lowest_validation_loss(tie_break, best):
    """val_acc 0.7 at epochs 1-3 (a tie) while val_loss falls: tie_break=val_loss reloads epoch 3 (the dendrites
    trained longest at the same accuracy), first reloads epoch 1 (the package's strict improvement). Either way
    the tie is no improvement: the history switch still fires n_epochs_to_switch epochs after epoch 1."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=3, max_dendrites=1, tie_break=tie_break)
    rows = [(0.5, 1.0), (0.7, 0.9), (0.7, 0.8), (0.7, 0.7), (0.6, 0.6)]
    snaps, grown = {}, []
    for epoch, (acc, loss) in enumerate(rows):
        with torch.no_grad():
            for p in rule.trainable_parameters():
                p.add_(0.01 * (epoch + 1))
        snaps[epoch] = [p.detach().clone() for p in rule.model.head.base.parameters()]
        if rule.on_epoch_end(epoch, {"epoch": epoch, "loss": 1.0, "val_acc": acc, "val_loss": loss}):
            grown.append(epoch)
            assert all(torch.equal(a, b) for a, b in zip(rule.model.head.base.parameters(), snaps[best]))
    assert grown == [4]


def test_a_budget_too_short_for_any_growth_warns_once():
    rule = Perforated(bottleneck())                            # history: first decision after 10 epochs, 15 + 10
    with pytest.warns(UserWarning, match=r"rule=perforated: a 30-epoch run leaves no room for a growth"):
        rule.on_train_start(30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rule.on_train_start(36)                                # decision at 9, 9 + 1 + 15 + 10 = 35 <= 36
        Perforated(bottleneck(), mode="gd").on_train_start(30)


def test_no_growth_starts_in_the_last_epochs():
    """Budget 30 epochs: a growth decided at epoch e needs e + 1 + p_epochs + min_epochs_after_growth <= 30."""
    rule = Perforated(bottleneck(), switch="fixed", fixed_switch_num=4, p_epochs=2, max_dendrites=10,
                      min_epochs_after_growth=5)
    def decisions(rule) -> list[int]:
        out = []
        for e in range(30):
            was = rule.in_p_mode
            if rule.on_epoch_end(e, {"epoch": e, "loss": 1.0}) and not was:
                out.append(e)
        return out

    rule.on_train_start(30)
    assert decisions(rule) == [3, 9, 15, 21] and rule.n_dendrites == 4   # the next one (27) would leave no time
    unbounded = Perforated(bottleneck(), switch="fixed", fixed_switch_num=4, p_epochs=2, max_dendrites=10)
    assert decisions(unbounded) == [3, 9, 15, 21, 27]


def test_conv_dendrites_are_per_channel_and_learn_the_residual(digits):
    """ConvNet: a dendrite set is a 3x3 conv with one weight w per channel; residual errors are [B, C, H, W] and the
    statistics read B*H*W samples per channel. After a short p-phase the candidates correlate with the residual
    far more than their random copy (measured 0.24 vs 0.03 on the conv layers); attaching leaves the outputs
    exactly unchanged."""
    torch.manual_seed(0)
    model = ConvNet([1, 8, 8], 10, channels=[4, 4])
    rule = Perforated(model, switch="fixed", fixed_switch_num=2, p_epochs=2, max_dendrites=1,
                      min_epochs_after_growth=0)
    train(rule, digits, TrainConfig(epochs=4, progress=False, lr_schedule="constant"), seed=0)
    conv = rule.model.layers[0]
    assert rule.n_dendrites == 1 and isinstance(conv.dendrites[0].op, nn.Conv2d)
    assert conv.dendrites[0].w.shape == (4,) and conv.dendrites[0].op.out_channels == 4
    us, es, _ = rule.residual_errors(digits.x_train[:32], digits.y_train[:32])
    assert es[0].shape == (32, 4, 8, 8) and es[2].shape == (32, 10)
    log = {r["layer"]: r for r in rule.dendrite_log()}
    assert log["layers.0"]["ratio"] > 3 and log["layers.1"]["ratio"] > 3, log
    before = rule.predict(digits.x_test)
    conv.attach()                                                        # a second set, w = 0: nothing changes
    assert conv.dendrites[1].cascade.shape == (1, 4) and torch.equal(before, rule.predict(digits.x_test))
    with torch.no_grad():
        conv.dendrites[1].w.fill_(0.5)
    assert not torch.allclose(before, rule.predict(digits.x_test))      # the dendrites do act once w != 0


