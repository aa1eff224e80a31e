"""Rules: the LearningRule contract for every rule x model, the control's mechanism, learning floors on
digits, and the margin over readout_only on Fashion-MNIST (where the control is far behind)."""
import copy
from functools import partial

import pytest
import torch

from bioplaus.data import fashion
from bioplaus.errors import ConfigError, UnsupportedModelError
from bioplaus.models import MLP, ConvNet, RecurrentSpikingNet, SpikingConvNet, SpikingMLP
from bioplaus.rules.backprop import Backprop
from bioplaus.rules.base import LearningRule
from bioplaus.rules.counter_current import CounterCurrent
from bioplaus.rules.eprop import EProp
from bioplaus.rules.equilibrium import EquilibriumPropagation
from bioplaus.rules.feedback_alignment import DirectFeedbackAlignment, FeedbackAlignment, SignSymmetry
from bioplaus.rules.forward_forward import ForwardForward
from bioplaus.rules.noprop import NoProp
from bioplaus.rules.perforated import Perforated
from bioplaus.rules.readout_only import ReadoutOnly
from bioplaus.rules.tess import TESS
from bioplaus.train import TrainConfig, train

# Every rule (and every variant with its own code path), small enough for a contract check.
RULES = {
    "backprop": Backprop, "readout_only": ReadoutOnly,
    "fa": FeedbackAlignment, "dfa": DirectFeedbackAlignment, "sign_symmetry": SignSymmetry,
    "sign_symmetry_frsf": partial(SignSymmetry, mode="frsf"), "sign_symmetry_brsf": partial(SignSymmetry, mode="brsf"),
    "ccl": CounterCurrent, "ccl_autoencode": partial(CounterCurrent, task="autoencode"),
    "noprop_dt": partial(NoProp, T=3, width=16), "noprop_ct": partial(NoProp, variant="ct", width=16,
                                                                       inference_steps=4),
    "noprop_fm": partial(NoProp, variant="fm", width=16, inference_steps=4),
    "noprop_learned": partial(NoProp, T=2, width=16, embedding="learned"),
    "ff": ForwardForward, "ff_readout": partial(ForwardForward, inference="readout"),
    "eprop": EProp, "eprop_random": partial(EProp, feedback="random"), "eprop_kappa": partial(EProp, kappa=0.8),
    "eprop_rate_reg": partial(EProp, rate_reg=1.0, kappa=0.5),
    "tess": TESS, "tess_causal": partial(TESS, alpha_post=0.0, surrogate="fast_sigmoid"),
    "ep": partial(EquilibriumPropagation, T1=4, T2=3), "ep_ce_onesided": partial(
        EquilibriumPropagation, T1=4, T2=2, loss="ce", symmetric=False, random_sign=True),
    "perforated": Perforated, "perforated_gd": partial(Perforated, mode="gd"),
}
MODELS = {"mlp": partial(MLP, hidden=[32, 16]), "convnet": partial(ConvNet, channels=[4, 8]),
          "spiking_mlp": partial(SpikingMLP, hidden=[32, 16], T=3),
          "spiking_convnet": partial(SpikingConvNet, channels=[4, 8], T=2),
          "spiking_convnet_ws": partial(SpikingConvNet, channels=[4, 8], T=2, norm="ws"),
          "recurrent_spiking": partial(RecurrentSpikingNet, hidden=16, T=3),
          "recurrent_spiking_alif": partial(RecurrentSpikingNet, hidden=16, T=3, adaptation=0.5)}


def _rule_class(make_rule):
    return make_rule.func if isinstance(make_rule, partial) else make_rule


# Variants that refuse a model their class supports (checked with the variant's own message).
VARIANT_REFUSES = {("ccl_autoencode", "spiking_mlp"): "rule.task=autoencode supports mlp and convnet",
                   ("ep", "convnet"): "model.norm=none", ("ep_ce_onesided", "convnet"): "model.norm=none",
                   ("tess", "spiking_convnet"): "without BatchNorm.*model.norm=ws",
                   ("tess_causal", "spiking_convnet"): "without BatchNorm.*model.norm=ws"}


def _pairs(supported: bool):
    """(rule id, model id) pairs the rule declares it supports (or refuses, with supported=False)."""
    out = []
    for r, make_rule in RULES.items():
        allowed = _rule_class(make_rule).supported_models
        for m, make_model in MODELS.items():
            ok = (allowed is None or issubclass(make_model.func, allowed)) and (r, m) not in VARIANT_REFUSES
            if ok == supported:
                out.append(pytest.param(r, m, id=f"{r}-{m}"))
    return out


@pytest.mark.parametrize("rule_id,model_id", _pairs(supported=True))
def test_contract(rule_id, model_id, digits):
    """Fills .grad only for its own parameters, never steps, state_dict round-trips, predict is [B, C]."""
    rule_cls, make_model = RULES[rule_id], MODELS[model_id]
    torch.manual_seed(0)
    rule = rule_cls(make_model([1, 8, 8], 10))
    x, y = digits.x_train[:16], digits.y_train[:16]
    before = {k: v.clone() for k, v in rule.state_dict().items() if v.is_floating_point()}
    own = {id(p) for p in rule.trainable_parameters()}
    logs = rule.assign_credit(x, y)
    assert isinstance(logs, dict) and all(isinstance(v, float) for v in logs.values())
    empty = []
    for name, p in rule.named_parameters():
        if id(p) in own:
            if p.grad is None or not bool(p.grad.abs().sum() > 0):
                empty.append(name)
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, f"{name} is not the rule's to train but got a gradient"
    # every parameter the rule says it trains gets a non-zero update from one batch: a layer the rule's credit
    # never reaches (or a rule that does nothing) fails here
    assert not empty, f"assign_credit left {empty} without a gradient: those parameters would never learn"
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


@pytest.mark.parametrize("rule_id,model_id", _pairs(supported=False))
def test_refused_models_get_one_clear_error(rule_id, model_id):
    if (rule_id, model_id) in VARIANT_REFUSES:
        with pytest.raises(ConfigError, match=VARIANT_REFUSES[rule_id, model_id]):
            RULES[rule_id](MODELS[model_id]([1, 8, 8], 10))
        return
    name = MODELS[model_id].func.name                      # the model's config name (variants share it)
    with pytest.raises(UnsupportedModelError, match=f"cannot train model {name}: it supports"):
        RULES[rule_id](MODELS[model_id]([1, 8, 8], 10))


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
        supported_models = (ConvNet, SpikingConvNet)

        def assign_credit(self, x, y):
            return {}

    with pytest.raises(UnsupportedModelError, match="rule conv_only cannot train model mlp: it supports convnet, "
                                                    "spiking_convnet"):
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
