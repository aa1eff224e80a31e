"""experiment=tune: Hydra's Optuna sweeper searches the shared space plus the rule's own, maximising val_acc (never
test_acc), and experiments/tune.py writes the winner as a config that composes into the same run."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _tune_module():
    spec = importlib.util.spec_from_file_location("tune", ROOT / "experiments" / "tune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_study_maximises_val_acc_over_the_declared_space(tmp_path):
    out = tmp_path / "study"
    r = subprocess.run([sys.executable, "-m", "bioplaus.run", "-m", "experiment=tune", "+protocol=digits",
                        "+arm=ep_mlp", "+search=ep", "hydra.sweeper.n_trials=3", "trainer.epochs=1", "data.n_train=300",
                        "rule.T2=2", f"hydra.sweep.dir={out}", "~hydra.callbacks.compare"],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr
    trials = [json.loads(p.read_text()) for p in sorted(out.glob("*/metrics.json"))]
    best = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert len(trials) == 3 and best["best_value"] == max(t["val_acc"] for t in trials)
    assert set(best["best_params"]) == {"trainer.optimizer.lr", "rule.beta", "rule.T1"}     # shared + the rule's
    lrs = {json.dumps(t["history"][0]) for t in trials}
    assert len(lrs) == 3                                                   # three different trials ran
    tune = _tune_module()
    res = {"arm": "ep_mlp", "trials": 3, "best_value": best["best_value"], "best_params": best["best_params"]}
    tune.CONFIGS = tmp_path / "configs"                                    # write beside a copy of the arm
    (tune.CONFIGS / "arm").mkdir(parents=True)
    (tune.CONFIGS / "arm" / "ep_mlp.yaml").write_text((ROOT / "configs" / "arm" / "ep_mlp.yaml").read_text())
    path = tune.write_tuned("digits", res)
    written = yaml.safe_load(path.read_text())
    assert written["rule"]["beta"] == best["best_params"]["rule.beta"] and written["variant"] == "tuned"
    assert written["model"]["hidden"] == [256] and written["defaults"] == [{"override /rule": "ep"},
                                                                          {"override /model": "mlp"}]


def test_a_failed_trial_is_the_worst_value_not_a_crash_of_the_study():
    """A diverged or crashed trial returns -inf (maximise) / +inf (minimise): Optuna 2.10 refuses NaN, and a
    refused value would abort the study (as a diverging FA trial at lr 3e-2 x 3 did)."""
    from omegaconf import OmegaConf

    from bioplaus.run import objective

    cfg = OmegaConf.create({"objective": "val_acc"})
    assert objective(cfg, None, "maximize") == float("-inf")
    assert objective(cfg, None, "MINIMIZE") == float("inf") == objective(cfg, None, "StudyDirection.MINIMIZE")
    assert objective(cfg, {"val_acc": 0.5}) == 0.5 and objective(OmegaConf.create({"objective": None}), {}) is None


def test_each_protocol_has_an_objective_and_known_arms():
    """A protocol's studies maximise its `objective` (link prediction: val_auc; node and image tasks: val_acc), and
    every arm a protocol lists, tuned or paper preset, has a config."""
    tune = _tune_module()
    assert tune.objective("sbm_link") == "val_auc" and tune.objective("fashion") == tune.objective("sbm") == "val_acc"
    spec = importlib.util.spec_from_file_location("pipeline", ROOT / "experiments" / "pipeline.py")
    pipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipe)
    for protocol, arms in tune.ARMS.items():
        assert (ROOT / "configs" / "protocol" / f"{protocol}.yaml").exists()
        for arm in arms + pipe.PAPER.get(protocol, []):
            assert (ROOT / "configs" / "arm" / f"{arm}.yaml").exists(), arm


def test_tuned_arms_are_known_options_of_the_arm_group():
    """configs/arm/tuned/<protocol>/<arm>.yaml is selected as +arm=tuned/<protocol>/<arm>; a typo is one line."""
    import pytest

    from bioplaus.errors import ConfigError
    from bioplaus.run import _available, check_overrides

    assert "tuned/digits/bp_mlp" in _available("arm") and "bp_mlp" in _available("arm")
    check_overrides(["+arm=tuned/digits/bp_mlp,bp_mlp", "seed=0,1"])
    with pytest.raises(ConfigError, match="unknown arm 'tuned/digits/bp_mpl'"):
        check_overrides(["+arm=tuned/digits/bp_mpl"])


def test_pipeline_orders_arms_by_cost_resumes_and_names_unknown_arms(tmp_path, monkeypatch):
    """experiments/pipeline.py: cheapest arms first, a comparison whose seeds all have metrics.json is not rerun
    (paper presets are never tuned), an unknown arm is one line before anything runs."""
    spec = importlib.util.spec_from_file_location("pipeline", ROOT / "experiments" / "pipeline.py")
    pipe = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "experiments"))
    spec.loader.exec_module(pipe)
    assert pipe.order(["noprop_mlp", "zz_new_arm", "bp_mlp", "readout_only_mlp"]) == [
        "readout_only_mlp", "bp_mlp", "noprop_mlp", "zz_new_arm"]
    assert set(pipe.PAPER["fashion"]) <= set(pipe.COST) and set(pipe.ARMS["fashion"]) <= set(pipe.COST)
    calls = []
    monkeypatch.setattr(pipe, "subprocess", type("Fake", (), {"run": staticmethod(lambda c, **kw: calls.append(c))}))
    for s in (0, 1):
        (tmp_path / "cmp" / "fashion" / "fa_paper_mlp" / str(s)).mkdir(parents=True)
        (tmp_path / "cmp" / "fashion" / "fa_paper_mlp" / str(s) / "metrics.json").write_text("{}")
    assert pipe.run_arm("fashion", "fa_paper_mlp", 8, "0,1", tmp_path) is None and calls == []
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "pipeline.py"), "--protocol", "digits", "--arms",
                        "bp_mlp,no_such_arm", "--out", str(tmp_path / "new")], capture_output=True, text=True,
                       env=ENV)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1] == (
        "pipeline.py: no configs/arm/no_such_arm.yaml; pick arms from configs/arm/")
    assert not (tmp_path / "new").exists()
