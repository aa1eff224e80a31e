"""bioplaus.runtime: a run's rule label (config name or the user's class), torch threads per job under joblib, the
progress bar's row, and the final line every run prints (with trainer.progress=false too)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bioplaus.errors import ConfigError
from bioplaus.runtime import bar_position, final_line, find_control, rule_label, threads

JOBLIB = SimpleNamespace(launcher=SimpleNamespace(_target_="hydra_plugins.hydra_joblib_launcher.joblib_launcher."
                                                           "JoblibLauncher", n_jobs=2))
BASIC = SimpleNamespace(launcher=SimpleNamespace(_target_="hydra._internal.core_plugins.basic_launcher.BasicLauncher"))


def test_rule_label_is_the_config_name_for_shipped_rules_and_the_class_name_for_a_users():
    assert rule_label("ep_paper", "bioplaus.rules.equilibrium.EquilibriumPropagation") == "ep_paper"
    assert rule_label("backprop", "bioplaus.rules.feedback_alignment.SignSymmetry") == "backprop"
    assert rule_label("backprop", "bioplaus.rules.backprop.Backprop") == "backprop"
    assert rule_label("backprop", "no_such_module.MyGreatRule") == "my_great_rule"        # not importable here
    assert rule_label(None, "bioplaus.rules.readout_only.ReadoutOnly") == "readout_only"


def test_threads_one_per_job_under_joblib_torch_default_otherwise():
    assert threads("auto", None) is None and threads("auto", BASIC) is None
    assert threads("auto", JOBLIB, cpus=2) == 1
    assert threads("auto", JOBLIB, cpus=16) == 8
    minus_one = SimpleNamespace(launcher=SimpleNamespace(_target_=JOBLIB.launcher._target_, n_jobs=-1))
    assert threads("auto", minus_one, cpus=16) == 1
    assert threads(3, JOBLIB) == 3 and threads("2") == 2
    for bad in ("abc", 0, -1, "1.5"):
        with pytest.raises(ConfigError, match="threads=.* use auto or a positive integer"):
            threads(bad)


def test_parallel_jobs_get_their_own_progress_bar_rows():
    assert [bar_position(JOBLIB, n) for n in range(4)] == [0, 1, 0, 1]
    assert bar_position(BASIC, 3) is None and bar_position(None, 0) is None


def _metrics(folder, rule, acc, hidden=64, seed=0):
    rec = {"rule": rule, "data": "digits", "model": "mlp", "seed": seed, "variant": "default", "test_acc": acc,
           "config": {"model": {"hidden": [hidden]}, "data": {}, "trainer": {"epochs": 2, "batch_size": 64}}}
    if folder is not None:
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(rec))
    return rec


def test_final_line_gives_the_margin_only_over_a_matching_control(tmp_path):
    mine = _metrics(None, "backprop", 0.97)
    assert final_line("bp", mine, tmp_path / "bp") == f"bp: test_acc 0.9700 -> {tmp_path / 'bp'}"
    _metrics(tmp_path / "wide_ctrl", "readout_only", 0.90, hidden=128)                   # another width: no control
    _metrics(tmp_path / "other_seed", "readout_only", 0.90, seed=1)
    assert find_control(tmp_path / "bp", mine) is None
    _metrics(tmp_path / "ctrl", "readout_only", 0.93)
    assert final_line("bp", mine, tmp_path / "bp") == (
        f"bp: test_acc 0.9700, +0.0400 over readout_only (0.9300) -> {tmp_path / 'bp'}")


def test_a_run_ends_with_its_line_and_a_user_rule_names_the_default_run_dir(tmp_path):
    (tmp_path / "my_rules.py").write_text("from bioplaus.rules.backprop import Backprop\n\n"
                                          "class MyBackprop(Backprop):\n    '''A user's rule.'''\n")
    r = subprocess.run([sys.executable, "-m", "bioplaus.run", "rule._target_=my_rules.MyBackprop", "model=mlp",
                        "model.hidden=[16]", "trainer.epochs=1", "trainer.progress=false", "stats.enabled=false",
                        "threads=1"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    (run_dir,) = list((tmp_path / "runs").glob("*/*"))
    assert run_dir.name.endswith("_my_backprop_mlp_digits")                    # not "_backprop_mlp_digits"
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("my_backprop/mlp/digits s0: test_acc ") and last.endswith(str(run_dir.relative_to(tmp_path)))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["rule_config"] == "my_backprop" and metrics["threads"] == 1 and metrics["variant"] == "default"
    assert metrics["params"] == 64 * 16 + 16 + 16 * 10 + 10 == metrics["trained_params"]
    bad = subprocess.run([sys.executable, "-m", "bioplaus.run", "threads=zero", "trainer.epochs=1"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "bioplaus-run: error: threads=zero is not a thread count: use auto or a positive integer (e.g. threads=1)"]
