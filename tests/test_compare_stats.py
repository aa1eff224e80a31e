"""bioplaus-compare's seed statistics and capacity columns: 95% t intervals for accuracy and for the paired margin
over readout_only, ranks that tie overlapping intervals, paper presets in rows of their own, controls matched on
model config and budget (never another width), and a plot whose error bars are the intervals."""
import csv
import json
import math
from pathlib import Path

import pytest
from scipy import stats as st

from bioplaus.compare import compare, table
from bioplaus.errors import ConfigError

T2 = st.t.ppf(0.975, 2)                    # three seeds


def _record(folder: Path, rule: str, seed: int, acc: float, *, label: str | None = None, variant: str = "default",
            hidden=(64,), epochs: int = 20, lr: float = 1e-3, params: int = 1000) -> dict:
    config = {"seed": seed, "variant": variant, "model": {"hidden": list(hidden)}, "data": {"n_train": 10000},
              "trainer": {"epochs": epochs, "batch_size": 128, "optimizer": {"lr": lr}}}
    rec = {"data": "fashion", "model": "mlp", "rule": rule, "rule_config": label or rule, "variant": variant,
           "seed": seed, "test_acc": acc, "train_acc": acc, "train_time_s": 1.0 + seed, "peak_mem_mb": 1.0,
           "epochs": epochs, "params": params, "trained_params": 2 * params, "train_mac_per_step": 5e6,
           "stats": {"mac_per_sample": 1e5, "sop_per_sample": 0.0, "energy_pj_per_sample": 1e6}, "config": config}
    if folder is not None:
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(rec))
    return rec


def test_intervals_margins_and_ranks_follow_the_t_distribution():
    bp, fa, ctrl = [0.86, 0.87, 0.88], [0.862, 0.866, 0.873], [0.78, 0.79, 0.785]
    runs = [_record(None, r, s, a) for r, accs in (("backprop", bp), ("fa", fa), ("readout_only", ctrl))
            for s, a in enumerate(accs)]
    rows = {r["rule"]: r for r in table(runs)}
    b = rows["backprop"]
    sd = st.tstd(bp)
    assert b["seeds"] == 3 and b["test_acc"] == pytest.approx(0.87) and b["test_acc_std"] == pytest.approx(sd)
    assert b["test_acc_hi"] - b["test_acc"] == pytest.approx(T2 * sd / math.sqrt(3))
    diffs = [a - c for a, c in zip(bp, ctrl)]                                     # paired by seed
    assert b["margin_vs_control"] == pytest.approx(sum(diffs) / 3)
    assert b["margin_hi"] - b["margin_vs_control"] == pytest.approx(T2 * st.tstd(diffs) / math.sqrt(3))
    # backprop and fa overlap: tied at rank 1; the control's interval lies wholly below both: rank 3
    assert (b["rank"], rows["fa"]["rank"], rows["readout_only"]["rank"]) == (1, 1, 3)
    assert b["params"] == 1000 and b["trained_params"] == 2000 and b["train_mac_per_step"] == 5e6
    assert b["mac_per_sample"] == 1e5


def test_a_paper_preset_is_its_own_row_and_a_control_of_another_width_is_no_control():
    runs = [_record(None, "ep", 0, 0.80), _record(None, "ep", 0, 0.70, label="ep_paper", variant="paper",
                                                   hidden=(512,)),
            _record(None, "readout_only", 0, 0.75)]
    rows = {(r["rule"], r["variant"]): r for r in table(runs)}
    assert set(rows) == {("ep", ""), ("ep_paper", "paper"), ("readout_only", "")}       # never averaged together
    assert rows[("ep", "")]["margin_vs_control"] == pytest.approx(0.05)
    assert math.isnan(rows[("ep_paper", "paper")]["margin_vs_control"])              # 512 wide: no 512-wide control


def test_tuned_rows_take_the_tuned_control_and_learning_rates_may_differ():
    runs = [_record(None, "fa", 0, 0.85, variant="tuned", lr=3e-3), _record(None, "readout_only", 0, 0.80,
                                                                             variant="tuned", lr=1e-2),
            _record(None, "readout_only", 0, 0.70)]
    rows = {(r["rule"], r["variant"]): r for r in table(runs)}
    assert rows[("fa", "tuned")]["margin_vs_control"] == pytest.approx(0.05)


def test_compare_writes_intervals_capacity_and_a_plot(tmp_path):
    for rule, accs in (("backprop", [0.86, 0.87, 0.88]), ("readout_only", [0.78, 0.79, 0.785])):
        for s, a in enumerate(accs):
            _record(tmp_path / f"{rule}_{s}", rule, s, a)
    compare(tmp_path, echo=False)
    with open(tmp_path / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"test_acc_lo", "test_acc_hi", "margin_lo", "margin_hi", "rank", "params", "trained_params",
            "mac_per_sample", "sop_per_sample", "train_mac_per_step"} <= set(rows[0])
    assert "best_test_acc" not in rows[0]
    md = (tmp_path / "comparison.md").read_text()
    assert "[95% CI]" in md and "train MAC/update" in md and "| 1.00k | 2.00k |" in md
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_two_arms_of_one_rule_are_named_by_their_arm():
    """backprop on the default MLP and on a widened one (bp_mlp, bp_wide_mlp): two rows, each named by its arm."""
    runs = []
    for arm, hidden, acc in (("tuned/digits/bp_mlp", (64,), 0.97), ("tuned/digits/bp_wide_mlp", (1536,), 0.98)):
        r = _record(None, "backprop", 0, acc, hidden=hidden)
        r["overrides"] = [f"+arm={arm}", "seed=0"]
        runs.append(r)
    assert sorted(r["rule"] for r in table(runs)) == ["backprop [bp_mlp]", "backprop [bp_wide_mlp]"]


def test_arms_that_differ_only_in_a_rule_option_stay_apart():
    """forward_gnn_gcn and forward_gnn_top2loss_gcn select one rule config and set rule.variant: one row each."""
    runs = []
    for arm, accs in (("tuned/sbm/forward_gnn_gcn", [0.92, 0.921, 0.919]),
                      ("tuned/sbm/forward_gnn_top2loss_gcn", [0.90, 0.901, 0.899])):
        for s, a in enumerate(accs):
            r = _record(None, "forward_gnn", s, a)
            r["overrides"] = [f"+arm={arm}", f"seed={s}"]
            runs.append(r)
    rows = {r["rule"]: r for r in table(runs)}
    assert set(rows) == {"forward_gnn [forward_gnn_gcn]", "forward_gnn [forward_gnn_top2loss_gcn]"}
    assert rows["forward_gnn [forward_gnn_gcn]"]["seeds"] == 3
    assert rows["forward_gnn [forward_gnn_gcn]"]["test_acc"] == pytest.approx(0.92)


def test_link_runs_are_ranked_by_their_metric_the_test_auc(tmp_path):
    """A run's `metric` names what the table aggregates: link prediction's test_auc, not the pair accuracy at a
    fixed threshold (here the two disagree on the order); the csv names the metric, the markdown marks it."""
    auc = {"backprop": [0.61, 0.60, 0.62], "forward_gnn": [0.70, 0.69, 0.71], "readout_only": [0.52, 0.53, 0.51]}
    pair_acc = {"backprop": 0.60, "forward_gnn": 0.50, "readout_only": 0.50}
    for rule, aucs in auc.items():
        for s, a in enumerate(aucs):
            rec = _record(None, rule, s, pair_acc[rule])
            rec.update(metric="test_auc", test_auc=a)
            (tmp_path / f"{rule}_{s}").mkdir()
            (tmp_path / f"{rule}_{s}" / "metrics.json").write_text(json.dumps(rec))
    rows = {r["rule"]: r for r in compare(tmp_path, echo=False)}
    assert rows["forward_gnn"]["test_acc"] == pytest.approx(0.70) and rows["forward_gnn"]["metric"] == "test_auc"
    assert rows["forward_gnn"]["margin_vs_control"] == pytest.approx(0.18)
    assert (rows["forward_gnn"]["rank"], rows["backprop"]["rank"]) == (1, 2)
    with open(tmp_path / "comparison.csv") as f:
        assert {r["metric"] for r in csv.DictReader(f)} == {"test_auc"}
    assert "0.7000 ± 0.0100" in (tmp_path / "comparison.md").read_text()
    assert "(test_auc)" in (tmp_path / "comparison.md").read_text()


def test_a_run_naming_a_metric_it_lacks_is_refused():
    rec = _record(None, "backprop", 0, 0.9)
    rec.update(metric="test_auc", _path="runs/x/metrics.json")
    with pytest.raises(ConfigError, match=r"runs/x/metrics.json names metric 'test_auc' but has no number"):
        table([rec])
