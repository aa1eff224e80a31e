"""Sweeps on Hydra's launchers: the quickstart (a few arms, short budget) run sequentially, with joblib
(local worker processes), with submitit_local (what SLURM runs, on this machine) and with Ray (a local
instance the launcher starts and stops) gives the same
comparison table: same rows, same accuracies, same operation counts (times and memory differ)."""
import csv
import subprocess
import sys

import pytest

RUN = [sys.executable, "-m", "bioplaus.run"]
SWEEP = ["-m", "experiment=quickstart", "+arm=bp_mlp,readout_only_mlp,fa_mlp", "trainer.epochs=2",
         "trainer.progress=false", "stats.n_samples=64", "threads=1"]   # one thread count for every launcher
SAME = ("data", "model", "rule", "seeds", "test_acc", "margin_vs_control", "train_acc", "sop_per_sample",
        "mac_per_sample", "energy_uj_per_sample", "epochs")
LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                       "hydra.launcher.cpus_per_task=1"],
    "ray": ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"],       # a local Ray instance
}


def _table(out, *extra):
    r = subprocess.run(RUN + SWEEP + list(extra) + [f"hydra.sweep.dir={out}"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out / "comparison.csv") as f:
        rows = [{k: row[k] for k in SAME} for row in csv.DictReader(f)]
    return sorted(rows, key=lambda row: (row["model"], row["rule"]))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return _table(tmp_path_factory.mktemp("sequential"))


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launcher_gives_the_sequential_table(launcher, sequential, tmp_path):
    rows = _table(tmp_path, *LAUNCHERS[launcher])
    assert len(rows) == 3 and {r["rule"] for r in rows} == {"backprop", "readout_only", "fa"}
    for got, ref in zip(rows, sequential):
        for key in SAME:
            if key in ("test_acc", "train_acc", "margin_vs_control", "energy_uj_per_sample"):
                assert float(got[key]) == pytest.approx(float(ref[key]), abs=1e-9), (launcher, key)
            else:
                assert got[key] == ref[key], (launcher, key)
