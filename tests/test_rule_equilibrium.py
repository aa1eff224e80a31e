"""Equilibrium propagation: the EP update is the gradient through the free fixed point (dense, CE and conv),
EP alone assigns credit to a hidden layer under a frozen readout, learning floors on digits (the CLI's
config) and a margin over readout_only on Fashion-MNIST, divergence and config errors."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from bioplaus.data import fashion
from bioplaus.errors import ConfigError
from bioplaus.models import MLP, ConvNet
from bioplaus.rules.equilibrium import EquilibriumPropagation as EP
from bioplaus.rules.readout_only import ReadoutOnly
from bioplaus.train import TrainConfig, train

CONFIG = Path(__file__).resolve().parents[1] / "configs"


def _rbp_grads(rule: EP, x, y, steps: int = 100) -> dict[str, torch.Tensor]:
    """Recurrent backprop: settle without a graph, then backprop the loss through `steps` more steps of the
    same dynamics started at the fixed point (the gradient through the free fixed point)."""
    rule.zero_grad()
    s = [t.detach() for t in rule.free_phase(x)]
    for _ in range(steps):
        first, rule._idx0 = rule.synapses[0].drive(x)
        s, _ = rule.step(rule, [first], s, None)
    rule.sample_loss(s[-1], y).mean().backward()
    return {n: p.grad.clone() for n, p in rule.named_parameters()}


def _pool_winners(rule: EP, x, states) -> list[torch.Tensor]:
    """Max-pool argmax of every conv synapse at these states."""
    ins = [x, *states[:-1]]
    return [syn.drive(i)[1] for syn, i in zip(rule.synapses, ins) if syn.conv]


@pytest.mark.parametrize("make_model,loss,seed", [
    (lambda: MLP([1, 8, 8], 10, hidden=[64, 32]), "mse", 0),
    (lambda: MLP([1, 8, 8], 10, hidden=[64, 32]), "ce", 0),
    (lambda: ConvNet([1, 8, 8], 10, channels=[8, 16], norm="none"), "mse", 1),
], ids=["dense-mse", "dense-ce", "conv-mse"])
def test_ep_update_matches_the_gradient_through_the_fixed_point(make_model, loss, seed, digits):
    """beta = 0.01, symmetric: cosine >= 0.99 and norm within 10% for every parameter, dense and conv.
    Max-pooling routes feedback to the window's winner, a discontinuity: where the +-beta nudge flips a
    winner the finite difference jumps (seed 0's conv net at T1=150 does: cosine 0.73 in its conv layers),
    so the conv case first checks that no winner changes between the two nudged phases."""
    torch.manual_seed(seed)
    rule = EP(make_model(), beta=0.01, T1=100, T2=100, loss=loss)
    x, y = digits.x_train[:64], digits.y_train[:64]
    rule.zero_grad()
    free = rule.ep_update(x, y)
    plus = rule.relax(x, free, rule.T2, y, rule.beta)
    minus = rule.relax(x, free, rule.T2, y, -rule.beta)
    for a, b in zip(_pool_winners(rule, x, plus), _pool_winners(rule, x, minus)):
        assert torch.equal(a, b), "a max-pool winner flipped between the nudged phases: pick another seed"
    ep = {n: p.grad.clone() for n, p in rule.named_parameters()}
    rbp = _rbp_grads(rule, x, y)
    for name, g in rbp.items():
        cos = F.cosine_similarity(ep[name].flatten(), g.flatten(), 0).item()
        assert cos >= 0.99, (name, cos)
        assert 0.9 <= ep[name].norm() / g.norm() <= 1.1, name


def test_symmetric_nudging_removes_the_finite_beta_bias(digits):
    """At a finite beta (0.3) the one-sided estimate (0, beta) is biased (cosine 0.84 with the gradient
    through the fixed point); the +beta/-beta estimate is unbiased to second order (0.95)."""
    x, y = digits.x_train[:64], digits.y_train[:64]
    cos = {}
    for symmetric in (True, False):
        torch.manual_seed(0)
        rule = EP(MLP([1, 8, 8], 10, hidden=[64]), beta=0.3, T1=100, T2=100, symmetric=symmetric)
        rule.zero_grad()
        rule.ep_update(x, y)
        ep = torch.cat([p.grad.flatten() for p in rule.parameters()])
        rbp = torch.cat([g.flatten() for g in _rbp_grads(rule, x, y).values()])
        cos[symmetric] = F.cosine_similarity(ep, rbp, 0).item()
    assert cos[True] >= 0.94 and cos[True] - cos[False] >= 0.05, cos


def test_ep_alone_trains_the_hidden_layer_under_a_frozen_readout(digits):
    """64-256-10 with the head frozen at random init: only EP's credit to the hidden layer can help."""
    torch.manual_seed(0)
    model = MLP([1, 8, 8], 10, hidden=[256])
    for p in model.head.parameters():
        p.requires_grad_(False)
    rule = EP(model)
    before = (rule.predict(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    head = model.head.linear.weight.clone()
    metrics = train(rule, digits, TrainConfig(epochs=10, progress=False))
    assert torch.equal(model.head.linear.weight, head)
    assert before <= 0.3 and metrics["test_acc"] >= 0.90, (before, metrics["test_acc"])


def test_ep_with_the_cli_config_learns_digits(digits):
    """configs/rule/ep.yaml + the default trainer (20 epochs, Adam 1e-3, batch 64): the issue's >= 0.955."""
    cfg = yaml.safe_load((CONFIG / "rule" / "ep.yaml").read_text())
    cfg.pop("_target_")
    arm = yaml.safe_load((CONFIG / "arm" / "ep_mlp.yaml").read_text())
    torch.manual_seed(0)
    rule = EP(MLP([1, 8, 8], 10, hidden=arm["model"]["hidden"]), **cfg)
    metrics = train(rule, digits, TrainConfig(epochs=20, progress=False), seed=0)
    assert metrics["test_acc"] >= 0.955, metrics["test_acc"]
    assert metrics["passes_per_update"]["forward"] == cfg["T1"] + 1 + 2 * cfg["T2"]   # relaxation steps


def test_ep_beats_the_control_on_fashion():
    data = fashion(n_train=3000, n_test=2000)
    acc = {}
    for make in (EP, ReadoutOnly):
        torch.manual_seed(0)
        rule = make(MLP(list(data.in_shape), 10, hidden=[256]))
        acc[rule.name] = train(rule, data, TrainConfig(epochs=5, batch_size=128, progress=False))["test_acc"]
    assert acc["ep"] >= 0.79 and acc["ep"] - acc["readout_only"] >= 0.02, acc


def test_divergence_names_the_phase_step_and_layer(digits):
    torch.manual_seed(0)
    rule = EP(MLP([1, 8, 8], 10, hidden=[32, 16]), T1=5, T2=2)
    with torch.no_grad():
        rule.model.layers[1].linear.bias[3] = float("nan")
    with pytest.raises(ConfigError, match=r"non-finite state in layer 2 at step 1 of the free phase"):
        rule.assign_credit(digits.x_train[:8], digits.y_train[:8])
    with pytest.raises(ConfigError, match="diverged"):
        train(rule, digits, TrainConfig(epochs=1, progress=False))


@pytest.mark.parametrize("kw,match", [
    (dict(loss="hinge"), "unknown rule.loss 'hinge'"), (dict(activation="relu"), "unknown rule.activation"),
    (dict(beta=0.0), "rule.beta must be > 0"), (dict(T2=0), "must be >= 1"),
    (dict(random_sign=True), "alternatives"), (dict(lr_scales=[1.0]), "one factor per layer"),
])
def test_bad_hyperparameters_give_one_clear_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        EP(MLP([1, 8, 8], 10, hidden=[16]), **kw)


def test_convnet_needs_no_batchnorm_and_then_learns(digits):
    with pytest.raises(ConfigError, match="model.norm=none"):
        EP(ConvNet([1, 8, 8], 10, channels=[8, 16]))
    torch.manual_seed(0)
    rule = EP(ConvNet([1, 8, 8], 10, channels=[8, 16], norm="none"))
    before = (rule.predict(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    adam = lambda p: torch.optim.Adam(p, lr=1e-2)  # noqa: E731
    metrics = train(rule, digits, TrainConfig(epochs=3, progress=False, optimizer=adam))
    assert before <= 0.3 and metrics["test_acc"] >= 0.8, (before, metrics["test_acc"])   # measured 0.88


def test_layerwise_learning_rates_reach_the_optimizer():
    rule = EP(MLP([1, 8, 8], 10, hidden=[16, 8]), lr_scales=[1.0, 0.5, 0.25])
    assert [g["lr_scale"] for g in rule.param_groups()] == [1.0, 0.5, 0.25]
    assert sum(len(g["params"]) for g in rule.param_groups()) == len(rule.trainable_parameters())
