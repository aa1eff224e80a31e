"""Rules: the LearningRule contract for every rule x model, the control's mechanism, learning floors on
digits, and the margin over readout_only on Fashion-MNIST (where the control is far behind)."""
import copy
from functools import partial

import pytest
import torch
from bioplaus.rules.backprop import Backprop
from bioplaus.rules.base import LearningRule
from bioplaus.rules.readout_only import ReadoutOnly

from bioplaus.data import fashion
from bioplaus.errors import UnsupportedModelError
from bioplaus.models import MLP, ConvNet, SpikingConvNet, SpikingMLP
from bioplaus.train import TrainConfig, train

RULES = [Backprop, ReadoutOnly]
MODELS = [partial(MLP, hidden=[32, 16]), partial(ConvNet, channels=[4, 8]),
          partial(SpikingMLP, hidden=[32, 16], T=3), partial(SpikingConvNet, channels=[4, 8], T=2)]


@pytest.mark.parametrize("rule_cls", RULES)
@pytest.mark.parametrize("make_model", MODELS, ids=["mlp", "convnet", "spiking_mlp", "spiking_convnet"])
def test_contract(rule_cls, make_model, digits):
    torch.manual_seed(0)
    rule = rule_cls(make_model([1, 8, 8], 10))
    x, y = digits.x_train[:16], digits.y_train[:16]
    before = {k: v.clone() for k, v in rule.state_dict().items() if v.is_floating_point()}
    own = {id(p) for p in rule.trainable_parameters()}
    logs = rule.assign_credit(x, y)
    assert isinstance(logs, dict) and all(isinstance(v, float) for v in logs.values())
    filled = 0
    for name, p in rule.named_parameters():
        if id(p) in own:
            filled += p.grad is not None
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, f"{name} is not the rule's to train but got a gradient"
    assert filled > 0, "assign_credit filled no gradient"
    after = rule.state_dict()
    for k, v in before.items():
        if "running" not in k:                              # BatchNorm statistics move in forward
            assert torch.equal(v, after[k]), f"assign_credit changed {k}: it must never step"
    clone = rule_cls(make_model([1, 8, 8], 10))
    clone.load_state_dict(copy.deepcopy(rule.state_dict()))
    rule.eval(), clone.eval()
    torch.manual_seed(1)
    p1 = rule.predict(x)
    torch.manual_seed(1)
    assert p1.shape == (16, 10) and torch.equal(p1, clone.predict(x))
    assert not p1.requires_grad


def test_readout_only_trains_only_the_head(digits):
    torch.manual_seed(0)
    model = MLP([1, 8, 8], 10)
    hidden = copy.deepcopy(model.layers.state_dict())
    rule = ReadoutOnly(model)
    head_before = model.head.linear.weight.clone()
    train(rule, digits, TrainConfig(epochs=2, progress=False))
    for k, v in model.layers.state_dict().items():
        assert torch.equal(v, hidden[k]), f"hidden {k} moved"
    assert not torch.equal(model.head.linear.weight, head_before)
    assert rule.param_groups()[0]["lr_scale"] == 10.0


def test_unsupported_model_names_the_supported_ones():
    class ConvOnly(LearningRule):
        supported_models = ("ConvNet", "SpikingConvNet")

        def assign_credit(self, x, y):
            return {}

    with pytest.raises(UnsupportedModelError, match="cannot train model MLP: it supports ConvNet, SpikingConvNet"):
        ConvOnly(MLP([64], 10))


@pytest.mark.parametrize("make_model,floor", [(MLP, 0.96), (SpikingMLP, 0.95)], ids=["bp_mlp", "bptt_spiking_mlp"])
def test_backprop_learns_digits(make_model, floor, digits):
    torch.manual_seed(0)
    m = train(Backprop(make_model([1, 8, 8], 10)), digits, TrainConfig(epochs=30, progress=False))
    assert m["test_acc"] >= floor
    assert m["train_acc"] >= m["test_acc"] - 0.01


def test_backprop_beats_the_control_on_fashion():
    """Fashion-MNIST subset: a trained MLP must clearly beat the same net with frozen hidden layers."""
    data = fashion(n_train=4000, n_test=2000)
    acc = {}
    for rule_cls in (Backprop, ReadoutOnly):
        torch.manual_seed(0)
        rule = rule_cls(MLP(list(data.in_shape), 10, hidden=[256, 256]))
        acc[rule_cls.name] = train(rule, data, TrainConfig(epochs=8, batch_size=128, progress=False))["test_acc"]
    assert acc["backprop"] >= 0.82
    assert acc["backprop"] - acc["readout_only"] >= 0.04, acc
