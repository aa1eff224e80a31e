"""Perforated dendrites (rules/perforated.py) on the bottleneck MLP 64-4-10 (digits), where plain backprop underfits
(and 64-8-10 for the correlation ratio).

Candidates trained on the cascade-correlation score correlate with their neuron's residual error far more than
random dendrites; growth lifts accuracy over the plain net and over frozen random dendrites (the control) at the
same epoch budget; attaching leaves the outputs exactly unchanged; the optimizer is rebuilt on every structural
change; a checkpoint resumes bit for bit; both switch modes fire when they should and never read test_acc; bad
settings and models get one clear error; bioplaus-run reports growth. The published mechanisms (score, cascade,
best-model reload, end-of-run guard, conv) are tested in tests/test_dendrites.py."""
import copy
import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bioplaus.errors import ConfigError, UnsupportedModelError
from bioplaus.models import GCN, MLP
from bioplaus.rules.backprop import Backprop
from bioplaus.rules.perforated import Perforated
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


@pytest.mark.parametrize("score,kw,low,high", [("covariance", {}, 5.0, None), ("pearson", {}, 5.0, None),
                                              ("covariance", {"candidate_lr_scale": 0.0}, None, 2.5)])
def test_trained_candidates_correlate_far_more_than_random_ones(score, kw, low, high, digits):
    """The shipped config on the 8-unit bottleneck (experiment=perforated_wide), seed 0, 150 epochs: every growth
    logs the |corr| of the attached units and of the pool's random initial copy with the residual error over the
    last p-epoch; per layer, summed over its growths, the attached correlate >= 5x better. Measured min over the two
    layers: covariance 5.96x (seeds 0-5: 5.5-6.8x), pearson 7.07x; with 5 p-epochs 4.67x, with 1 2.38x. Candidates
    that never train (candidate_lr_scale=0: the score only picks among random units) reach 1.82x. On the 4-unit net
    no score reaches 5x on the head: its input has 2-4 live units (experiments/perforated_ceiling.py)."""
    torch.manual_seed(0)
    rule = Perforated(MLP([1, 8, 8], 10, hidden=[8]), **{**config_hparams(), "score": score, **kw})
    train(rule, digits, constant(150, val_fraction=0.1), seed=0)
    assert rule.n_dendrites >= 2
    ratio = rule.correlation_report()["min_layer_ratio"]
    assert (low is None or ratio >= low) and (high is None or ratio < high), rule.dendrite_log()


def test_growth_beats_the_plain_net_and_frozen_random_dendrites(digits):
    """Seeds 1 and 2, 100 epochs (cascor's p-epochs included), constant lr, 10% validation split, the shipped
    config. Measured test acc: plain 0.875 / 0.881, frozen random dendrites 0.894 / 0.875, cascor 0.917 / 0.892."""
    acc = {"plain": [], "cascor": [], "random": []}
    for seed in (1, 2):
        for name in acc:
            torch.manual_seed(seed)
            rule = Backprop(bottleneck()) if name == "plain" else Perforated(bottleneck(), **{**config_hparams(),
                                                                                                 "mode": name})
            acc[name].append(train(rule, digits, constant(100, val_fraction=0.1), seed=seed)["test_acc"])
            if name != "plain":
                assert rule.n_dendrites >= 1, (name, seed)
    mean = {k: sum(v) / 2 for k, v in acc.items()}
    assert mean["cascor"] >= mean["plain"] + 0.015, acc
    assert all(c > r for c, r in zip(acc["cascor"], acc["random"])), acc


@pytest.mark.parametrize("mode", ["cascor", "gd", "random"])
def test_attachment_leaves_outputs_exactly_unchanged(mode, digits):
    """w starts at 0: the logits right after attachment equal those right before; w then learns, and the dendrites'
    inputs learn only in gd."""
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
        # the loss falls every epoch, so the best epoch is this one and the reload at a decision changes nothing
        if rule.on_epoch_end(epoch, {"epoch": epoch, "loss": 1.0 - epoch / 100, "test_acc": 0.0}):
            opt = torch.optim.Adam(rule.param_groups(), lr=1e-2)
        assert torch.equal(before, rule.predict(x)), epoch
        if rule.n_dendrites > n_before:
            attached += 1
            assert all(d.w.abs().max() == 0 for layer in rule.wrapped().values() for d in layer.dendrites[-1:])
    assert attached == 2 and rule.n_dendrites == 2
    dendrites = [d for layer in rule.wrapped().values() for d in layer.dendrites]
    assert any(d.w.abs().max() > 0 for d in dendrites)                                 # w learned
    assert all(d.op.weight.requires_grad == (mode == "gd") for d in dendrites)


def test_structural_changes_rebuild_the_optimizer(digits):
    """fixed_switch_num=2, p_epochs=1: growth starts after epochs 1 and 4. Every True from on_epoch_end gives a
    new optimizer over exactly the trainable set: the candidates alone in p-mode; the neurons and every w, but
    not the frozen dendrite inputs (map and cascade), in n-mode."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), switch="fixed", fixed_switch_num=2, p_epochs=1, max_dendrites=2,
                      min_epochs_after_growth=0)
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
    inputs = {id(p) for layer in rule.wrapped().values() for d in layer.dendrites
              for p in (*d.op.parameters(), d.cascade)}
    assert len(ws) == 4 and ws <= seen[-1] and not inputs & seen[-1]
    assert not ws & seen[1] and len(seen[1]) == 4               # p-mode: two pools (map weight and bias) ...
    assert len(seen[3]) == 6                                     # ... and, from the second set on, cascade weights


def test_checkpoint_after_growth_loads_into_a_fresh_rule_and_resumes_exactly(digits, tmp_path):
    """A run checkpointed after epoch 9 (one dendrite attached, the second one's candidates mid p-mode) and resumed
    by a fresh rule ends with exactly the metrics and weights of the uninterrupted run."""
    def make():
        torch.manual_seed(0)
        return Perforated(bottleneck(), switch="fixed", fixed_switch_num=3, p_epochs=3, max_dendrites=2,
                          min_epochs_after_growth=0)

    full = make()
    ref = train(full, digits, constant(14), seed=0)
    path = str(tmp_path / "ck.pt")
    first = make()
    first.on_train_start = lambda epochs: Perforated.on_train_start(first, 14)    # a 14-epoch run killed after 10
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
    """val_acc rises until epoch 4 then stalls: growth at epoch 4 + n_epochs_to_switch = 7; the best restarts with
    the grown net (epoch 8), so the next growth is at 11. test_acc rising all along is ignored. Without val_acc the
    training loss decides: a falling loss never triggers growth."""
    rule = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=3)
    val = [0.1, 0.2, 0.3, 0.4, 0.5] + [0.5] * 15
    changed = [e for e in range(20) if rule.on_epoch_end(e, row(e, val_acc=val[e], test_acc=e / 20))]
    assert changed == [7, 11, 15]                                # then every 4 epochs, up to the cap
    by_loss = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=3)
    assert not any(by_loss.on_epoch_end(e, row(e, loss=1.0 - e / 100, test_acc=0.0)) for e in range(10))
    assert [e for e in range(10, 22) if by_loss.on_epoch_end(e, row(e, loss=0.9))] == [13, 17, 21]
    thresh = Perforated(bottleneck(), mode="gd", n_epochs_to_switch=3, improvement_threshold=0.05)
    assert [e for e in range(8) if thresh.on_epoch_end(e, row(e, loss=1.0 - e / 100))][0] == 3


def test_gd_mode_trains_its_dendrites_jointly(digits):
    """gd: no p-mode, the dendrites' maps learn by backprop too."""
    torch.manual_seed(0)
    rule = Perforated(bottleneck(), mode="gd", switch="fixed", fixed_switch_num=5, max_dendrites=1,
                      min_epochs_after_growth=0)
    train(rule, digits, constant(5), seed=0)
    assert rule.n_dendrites == 1 and not rule.in_p_mode
    d = rule.model.layers[0].dendrites[0]
    v0 = d.op.weight.detach().clone()
    assert d.op.weight.requires_grad and d.w.requires_grad
    rule.zero_grad()
    rule.assign_credit(digits.x_train[:64], digits.y_train[:64])
    assert d.w.grad.abs().max() > 0
    train(rule, digits, constant(5), seed=0)
    assert (d.op.weight - v0).abs().max() > 1e-3


def test_parameter_report_counts_the_growth():
    rule = Perforated(bottleneck(), mode="gd", switch="fixed", fixed_switch_num=1, max_dendrites=2)
    base = 64 * 4 + 4 + 4 * 10 + 10
    assert rule.parameter_report() == {"base_params": base, "dendrite_params": 0, "n_dendrites": 0, "growth_ratio": 1.0}
    for e in range(3):
        rule.on_epoch_end(e, row(e))
    first = (64 * 4 + 4 + 4) + (4 * 10 + 10 + 10)                # hidden: V, b, w; head: V, b, w
    second = first + 4 + 10                                      # + the cascade weights from the first set
    rep = rule.parameter_report()
    assert rep["n_dendrites"] == 2 and rep["dendrite_params"] == first + second
    assert rep["growth_ratio"] == pytest.approx((base + first + second) / base)
    assert rep["base_params"] + rep["dendrite_params"] == sum(p.numel() for p in rule.model.parameters())


@pytest.mark.parametrize("kw,message", [
    ({"mode": "pb"}, "unknown rule.mode 'pb': choose one of cascor, gd, random"),
    ({"score": "mutual_info"}, "unknown rule.score 'mutual_info': choose one of covariance, pearson"),
    ({"switch": "plateau"}, "unknown rule.switch 'plateau': choose one of history, fixed"),
    ({"tie_break": "last"}, "unknown rule.tie_break 'last': choose one of val_loss, first"),
    ({"p_epochs": 0}, r"rule.p_epochs must be an integer >= 1, got 0"),
    ({"max_dendrites": -1}, r"rule.max_dendrites must be an integer >= 0, got -1"),
    ({"min_epochs_after_growth": -2}, r"rule.min_epochs_after_growth must be an integer >= 0"),
    ({"n_epochs_to_switch": 2.5}, r"rule.n_epochs_to_switch must be an integer >= 1"),
    ({"candidate_lr_scale": -1.0}, r"rule.candidate_lr_scale must be a finite number >= 0"),
])
def test_bad_settings_are_one_clear_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        Perforated(bottleneck(), **kw)


def test_unsupported_model_is_one_clear_error(small_graph):
    with pytest.raises(UnsupportedModelError, match="cannot train model gcn: it supports mlp, convnet"):
        Perforated(GCN([], 5, graph=small_graph.graph))


@pytest.fixture
def small_graph():
    from bioplaus.data.graphs import sbm

    return sbm(n_nodes=60, n_features=8)


def test_bioplaus_run_writes_the_growth_figures(compose, tmp_path):
    from bioplaus.run import run

    cfg = compose("rule=perforated", "model=bottleneck_mlp", "trainer.epochs=6", "trainer.progress=false",
                  "trainer.lr_schedule=constant", "rule.switch=fixed", "rule.fixed_switch_num=2", "rule.p_epochs=2",
                  "rule.min_epochs_after_growth=0", "stats.n_samples=50")
    run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rule"] == "perforated" and metrics["n_dendrites"] == 1 and metrics["base_params"] == 310
    assert metrics["growth_ratio"] > 1.5 and metrics["corr_ratio"] > 1.0 and "min_layer_ratio" in metrics
    assert [r["layer"] for r in metrics["dendrite_log"]] == ["layers.0", "head"]
    for name, mode in (("perforated_random", "random"), ("perforated_paper", "gd")):
        assert compose(f"rule={name}").rule.mode == mode


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
