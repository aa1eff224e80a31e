"""`bioplaus-run -m experiment=<cifar10|shd|nmnist|dvs_gesture> data.root=<fixture>` trains every arm end to end on
tiny copies of the benchmarks in their publishers' formats (tests/conftest.py), and without the files the run
stops with one line naming them and where to get them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = [sys.executable, "-m", "bioplaus.run"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Tiny settings for CI (the experiments' own sizes are for the real sets): overrides every arm's model takes.
TINY = {
    "cifar10": ["model.channels=[8,M,16,M]", "model.T=2", "data.n_train=40"],
    "shd": ["data.T=20", "model.hidden=16"],
    "nmnist": ["data.T=4", "model.hidden=[32]"],
    "dvs_gesture": ["data.T=4", "model.stem=8", "model.channels=[8,16]"],
}
N_TRAIN = {"cifar10": 40, "shd": 40, "nmnist": 30, "dvs_gesture": 22}


def arms(experiment):
    text = (CONFIGS / "experiment" / f"{experiment}.yaml").read_text()
    return text.split("+arm:")[1].split()[0].split(",")


@pytest.mark.parametrize("experiment", list(TINY))
def test_experiment_trains_every_arm_on_the_fixture(experiment, benchmark_roots, tmp_path):
    sweep = tmp_path / "sweep"
    r = subprocess.run(RUN + ["-m", f"experiment={experiment}", f"data.root={benchmark_roots[experiment]}",
                              *TINY[experiment], "trainer.epochs=1", "trainer.batch_size=16", "trainer.progress=false",
                              f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    expected = arms(experiment)
    assert len(runs) == len(expected) >= 3
    assert {m["rule"] for m in runs} >= {"backprop", "readout_only"}
    for m in runs:
        assert m["data"] == experiment and m["steps"] == -(-N_TRAIN[experiment] // 16)   # every training batch
        assert 0.0 <= m["test_acc"] <= 1.0 and m["stats"]["energy_pj_per_sample"] > 0
    assert "vs readout_only" in (sweep / "comparison.md").read_text()


@pytest.mark.parametrize("experiment, names", [("cifar10", r"data_batch_1.*cs\.toronto\.edu"),
                                               ("dvs_gesture", r"trials_to_train\.txt.*dvsgesture")])
def test_experiment_without_files_is_one_line(experiment, names, tmp_path):
    import re

    r = subprocess.run(RUN + [f"experiment={experiment}", f"data.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, timeout=600, env=ENV)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("bioplaus-run: error:"), r.stderr
    assert re.search(names, lines[0]) and not (tmp_path / "run").exists()
