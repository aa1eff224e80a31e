"""Perforated dendrites (rules/perforated.py) on the bottleneck MLP 64-4-10 (digits), where plain backprop underfits.

Correlation-trained dendrites correlate with their neuron's residual error far more than random ones; growth
lifts test accuracy over the plain net at the same epoch budget (cascor and gd); attaching a dendrite leaves
the network's outputs exactly unchanged (w = 0); the trainer rebuilds its optimizer on every structural change;
a checkpoint taken after growth loads into a fresh rule and resumes bit for bit; both switch modes fire when
they should and never read test_acc; bad settings and models get one clear error; bioplaus-run reports growth."""
import copy
import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bioplaus.errors import ConfigError, UnsupportedModelError
from bioplaus.models import MLP, ConvNet
from bioplaus.rules.backprop import Backprop
from bioplaus.rules.perforated import Perforated, correlation
from bioplaus.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: tiny nets run fastest on one thread


def bottleneck() -> MLP:
    return MLP([1, 8, 8], 10, hidden=[4])


def config_hparams() -> dict:
    """The hyperparameters of configs/rule/perforated.yaml, as bioplaus-run passes them."""
    text = (resources.files("bioplaus.configs") / "rule" / "perforated.yaml").read_text()
    cfg = OmegaConf.to_container(OmegaConf.create(text))
    assert cfg.pop("_target_") == "bioplaus.rules.perforated.Perforated"
    return cfg


def constant(epochs: int, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, progress=False, lr_schedule="constant", **kw)


def test_trained_dendrites_correlate_5x_more_than_random_ones(digits):
    """The shipped config, seed 2: validation plateau at epoch 53, 5 p-mode epochs, attachment at epoch 58, the
    run's last. As w = 0 the network is unchanged, so its residual error now is the one the candidates were
    trained on. Over the whole training set, mean |corr| of the attached dendrites with it against random
    dendrites of the same size (same init, mean of 10 draws), live neurons. Measured: hidden layer 0.42 vs 0.06
    (7.5x), head 0.29 vs 0.06 (4.8x: its input is the 4-d code, which random ridges already correlate with);
    mean over the two layers 6.1x (the in-run figure, over the last p-epoch: 6.9x)."""
    torch.manual_seed(2)
    rule = Perforated(bottleneck(), **{**config_hparams(), "max_dendrites": 1})
    train(rule, digits, constant(59, val_fraction=0.1), seed=2)
    assert rule.n_dendrites == 1 and rule.dendrite_log()[0]["epoch"] == 58
    us, es, _ = rule.residual_errors(digits.x_train, digits.y_train)
    trained, random = [], []
    for layer, u, e in zip(rule.wrapped().values(), us, es):
        live = e.std(0) > 0                                     # a dead ReLU's error is 0 everywhere
        with torch.no_grad():
            trained.append(correlation(layer.g(layer.dendrites[0].linear(u)), e).abs()[live].mean())
            random.append(torch.stack([correlation(layer.g(layer.new_dendrite().linear(u)), e).abs()[live]
                                       for _ in range(10)]).mean())
    ratios = [float(t / r) for t, r in zip(trained, random)]
    assert ratios[0] >= 6.0 and ratios[1] >= 4.0, ratios       # hidden layer, head
    assert sum(trained) / sum(random) >= 5.0, ratios
    assert rule.correlation_report()["corr_ratio"] >= 5.0, rule.correlation_report()


def test_growth_beats_the_plain_net(digits):
    """Seeds 1 and 2, 100 epochs each (cascor's 2 x 5 p-mode epochs included), constant lr, 10% validation
    split for the history switch, the shipped config. Measured test acc: plain 0.875 / 0.881, cascor 0.944 /
    0.881, gd 0.936 / 0.925: mean gain +3.5 (cascor), +5.3 points (gd)."""
    acc = {"plain": [], "cascor": [], "gd": []}
    for seed in (1, 2):
        for name in acc:
            torch.manual_seed(seed)
            rule = Backprop(bottleneck()) if name == "plain" else Perforated(bottleneck(), **{**config_hparams(),
                                                                                                 "mode": name})
            acc[name].append(train(rule, digits, constant(100, val_fraction=0.1), seed=seed)["test_acc"])
            if name != "plain":
                assert rule.n_dendrites >= 1, (name, seed)
    gain = {k: sum(acc[k]) / 2 - sum(acc["plain"]) / 2 for k in ("cascor", "gd")}
    assert gain["cascor"] >= 0.015 and gain["gd"] >= 0.03, (acc, gain)


@pytest.mark.parametrize("mode", ["cascor", "gd"])
def test_attachment_leaves_outputs_exactly_unchanged(mode, digits):
    """w starts at 0: the logits (hence train accuracy) right after attachment equal those right before."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), mode=mode, switch="fixed", fixed_switch_num=3, p_epochs=2, max_dendrites=2)
    x, y = digits.x_train, digits.y_train
    opt = torch.optim.Adam(rule.param_groups(), lr=1e-2)
    attached = 0
    for epoch in range(12):
        for i in range(0, 512, 64):
            opt.zero_grad()
            rule.assign_credit(x[i:i + 64], y[i:i + 64])
            opt.step()
        before, n_before = rule.predict(x), rule.n_dendrites
        if rule.on_epoch_end(epoch, {"epoch": epoch, "loss": 1.0 - epoch / 100, "test_acc": 0.0}):
            opt = torch.optim.Adam(rule.param_groups(), lr=1e-2)
        after = rule.predict(x)
        assert torch.equal(before, after), epoch
        if rule.n_dendrites > n_before:
            attached += 1
            assert all(d.w.abs().max() == 0 for layer in rule.wrapped().values() for d in layer.dendrites[-1:])
    assert attached == 2 and rule.n_dendrites == 2
    assert any(d.w.abs().max() > 0 for layer in rule.wrapped().values() for d in layer.dendrites)   # w learned


def test_structural_changes_rebuild_the_optimizer(digits):
    """fixed_switch_num=2, p_epochs=1: growth starts after epochs 1 and 4. Every True from on_epoch_end gives a
    new optimizer over exactly the trainable set: the candidates alone in p-mode; the neurons and every w, but
    not the frozen dendrite input weights, in n-mode."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), switch="fixed", fixed_switch_num=2, p_epochs=1, max_dendrites=2)
    seen, returned = [], []
    on_epoch_end = rule.on_epoch_end

    def spy(epoch, row):
        returned.append(on_epoch_end(epoch, row))
        return returned[-1]

    def optimizer(groups):
        seen.append({id(p) for g in groups for p in g["params"]})
        return torch.optim.Adam(groups, lr=1e-3)

    rule.on_epoch_end = spy
    train(rule, digits, TrainConfig(epochs=7, progress=False, optimizer=optimizer), seed=0)
    assert returned == [False, True, True, False, True, True, False]
    assert len(seen) == 1 + sum(returned)
    assert seen[-1] == {id(p) for p in rule.trainable_parameters()}
    ws = {id(d.w) for layer in rule.wrapped().values() for d in layer.dendrites}
    inputs = {id(p) for layer in rule.wrapped().values() for d in layer.dendrites for p in d.linear.parameters()}
    assert len(ws) == 4 and ws <= seen[-1] and not inputs & seen[-1]
    assert not ws & seen[1] and len(seen[1]) == 4               # p-mode: two candidate pools (weight, bias)


def test_checkpoint_after_growth_loads_into_a_fresh_rule_and_resumes_exactly(digits, tmp_path):
    """A run checkpointed after epoch 9 (one dendrite attached, the second one's candidates mid p-mode) and resumed
    by a fresh rule ends with exactly the metrics and weights of the uninterrupted run."""
    def make():
        torch.manual_seed(0)
        return Perforated(bottleneck(), switch="fixed", fixed_switch_num=3, p_epochs=3, max_dendrites=2)

    full = make()
    ref = train(full, digits, constant(14), seed=0)
    path = str(tmp_path / "ck.pt")
    first = make()
    train(first, digits, constant(10), seed=0, checkpoint=path)
    assert first.n_dendrites == 1 and first.in_p_mode
    state = copy.deepcopy(first.state_dict())
    fresh = make()
    fresh.load_state_dict(state)                                 # grows to 1 dendrite + the candidate pools
    fresh.eval(), first.eval()
    assert fresh.n_dendrites == 1 and fresh.in_p_mode
    assert torch.equal(fresh.predict(digits.x_test), first.predict(digits.x_test))
    assert [p.requires_grad for p in fresh.parameters()] == [p.requires_grad for p in first.parameters()]
    resumed = make()
    out = train(resumed, digits, constant(14), seed=0, checkpoint=path)
    assert resumed.n_dendrites == full.n_dendrites == 2
    assert out["test_acc"] == ref["test_acc"] and out["history"] == ref["history"]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.dendrite_log() == full.dendrite_log()


def row(epoch: int, **kw) -> dict:
    return {"epoch": epoch, "loss": 1.0, "test_acc": 0.5, **kw}


def test_fixed_switching_grows_on_schedule_up_to_the_cap():
    rule = Perforated(bottleneck(), switch="fixed", fixed_switch_num=4, p_epochs=2, max_dendrites=2)
    changed = [e for e in range(20) if rule.on_epoch_end(e, row(e))]
    assert changed == [3, 5, 9, 11]                              # p-mode starts, attach, p-mode starts, attach
    assert rule.n_dendrites == 2 and [r["epoch"] for r in rule.dendrite_log()][::2] == [5, 11]
    gd = Perforated(bottleneck(), mode="gd", switch="fixed", fixed_switch_num=4, max_dendrites=3)
    assert [e for e in range(20) if gd.on_epoch_end(e, row(e))] == [3, 7, 11] and gd.n_dendrites == 3


def test_history_switching_reads_validation_then_loss_never_test_acc():
    """val_acc rises until epoch 4 then stalls: growth at epoch 4 + n_epochs_to_switch = 7; test_acc rising all
    along is ignored. Without val_acc the training loss decides: a falling loss never triggers growth."""
    rule = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=3)
    val = [0.1, 0.2, 0.3, 0.4, 0.5] + [0.5] * 10
    changed = [e for e in range(15) if rule.on_epoch_end(e, row(e, val_acc=val[e], test_acc=e / 15))]
    assert changed == [7, 10, 13]                                # then every n_epochs_to_switch, up to the cap
    by_loss = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=3)
    assert not any(by_loss.on_epoch_end(e, row(e, loss=1.0 - e / 100, test_acc=0.0)) for e in range(10))
    assert [e for e in range(10, 20) if by_loss.on_epoch_end(e, row(e, loss=0.9))] == [13, 16, 19]
    thresh = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=3, improvement_threshold=0.05)
    assert [e for e in range(8) if thresh.on_epoch_end(e, row(e, loss=1.0 - e / 100))][0] == 3


def test_gd_mode_trains_its_dendrites_jointly(digits):
    """gd: no p-mode, the dendrites' input weights learn by backprop too."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), mode="gd", switch="fixed", fixed_switch_num=5, max_dendrites=1)
    train(rule, digits, constant(5), seed=0)
    assert rule.n_dendrites == 1 and not rule.in_p_mode
    d = rule.model.layers[0].dendrites[0]
    v0 = d.linear.weight.detach().clone()
    assert d.linear.weight.requires_grad and d.w.requires_grad
    rule.zero_grad()
    rule.assign_credit(digits.x_train[:64], digits.y_train[:64])
    assert d.w.grad.abs().max() > 0
    train(rule, digits, constant(5), seed=0)
    assert (d.linear.weight - v0).abs().max() > 1e-3


def test_parameter_report_counts_the_growth():
    rule = Perforated(bottleneck(), mode="gd", switch="fixed", fixed_switch_num=1, max_dendrites=2)
    base = 64 * 4 + 4 + 4 * 10 + 10
    assert rule.parameter_report() == {"base_params": base, "dendrite_params": 0, "n_dendrites": 0, "growth_ratio": 1.0}
    for e in range(3):
        rule.on_epoch_end(e, row(e))
    per_set = (64 * 4 + 4 + 4) + (4 * 10 + 10 + 10)             # hidden: V, c, w; head: V, c, w
    rep = rule.parameter_report()
    assert rep["n_dendrites"] == 2 and rep["dendrite_params"] == 2 * per_set
    assert rep["growth_ratio"] == pytest.approx((base + 2 * per_set) / base)
    assert rep["base_params"] + rep["dendrite_params"] == sum(p.numel() for p in rule.model.parameters())


@pytest.mark.parametrize("kw,message", [
    ({"mode": "pb"}, "unknown rule.mode 'pb': choose one of cascor, gd"),
    ({"switch": "plateau"}, "unknown rule.switch 'plateau': choose one of history, fixed"),
    ({"p_epochs": 0}, r"rule.p_epochs must be an integer >= 1, got 0"),
    ({"max_dendrites": -1}, r"rule.max_dendrites must be an integer >= 0, got -1"),
    ({"n_epochs_to_switch": 2.5}, r"rule.n_epochs_to_switch must be an integer >= 1"),
    ({"candidate_lr_scale": -1.0}, r"rule.candidate_lr_scale must be a finite number >= 0"),
])
def test_bad_settings_are_one_clear_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        Perforated(bottleneck(), **kw)


def test_unsupported_model_is_one_clear_error():
    with pytest.raises(UnsupportedModelError, match="cannot train model convnet: it supports mlp"):
        Perforated(ConvNet([1, 8, 8], 10, channels=[4, 8]))


def test_bioplaus_run_writes_the_growth_figures(compose, tmp_path):
    from bioplaus.run import run

    cfg = compose("rule=perforated", "model=bottleneck_mlp", "trainer.epochs=6", "trainer.progress=false",
                  "trainer.lr_schedule=constant", "rule.switch=fixed", "rule.fixed_switch_num=2", "rule.p_epochs=2",
                  "stats.n_samples=50")
    run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rule"] == "perforated" and metrics["n_dendrites"] == 1 and metrics["base_params"] == 310
    assert metrics["growth_ratio"] > 1.5 and metrics["corr_ratio"] > 1.0
    assert [r["layer"] for r in metrics["dendrite_log"]] == ["layers.0", "head"]


def test_dendrites_do_not_change_the_cross_entropy_used_by_the_neurons(digits):
    """n-mode is plain backprop on the grown net: its gradients equal autograd's on CE(model(x), y)."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), mode="gd", switch="fixed", fixed_switch_num=1, max_dendrites=1)
    rule.on_epoch_end(0, row(0))
    with torch.no_grad():
        for layer in rule.wrapped().values():
            layer.dendrites[0].w.fill_(0.5)
    x, y = digits.x_train[:32], digits.y_train[:32]
    rule.zero_grad()
    rule.assign_credit(x, y)
    ref = torch.autograd.grad(F.cross_entropy(rule.model(x), y), rule.trainable_parameters())
    for p, g in zip(rule.trainable_parameters(), ref):
        assert torch.allclose(p.grad, g)
