"""bioplaus-run / bioplaus-compare end to end, as a user runs them (subprocesses): outputs of a run and a
sweep, and one-line errors with exit status 2 and no half-written run dir for each user mistake."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

RUN = [sys.executable, "-m", "bioplaus.run"]
COMPARE = [sys.executable, "-m", "bioplaus.compare"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_single_run_writes_metrics_and_stats(tmp_path):
    out = tmp_path / "run"
    r = sh(RUN + ["model=spiking_mlp", "model.T=3", "trainer.epochs=2", "seed=3", f"hydra.run.dir={out}"])
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test_acc", "train_acc", "train_time_s", "peak_mem_mb", "epochs", "rule", "model", "data", "seed"):
        assert key in m
    assert (m["rule"], m["model"], m["data"], m["seed"], m["epochs"]) == ("backprop", "spiking_mlp", "digits", 3, 2)
    assert 0.5 < m["test_acc"] <= 1 and len(m["history"]) == 2
    with h5py.File(out / "stats.h5", "r") as f:
        assert set(f["layers"]) == {"layers.0", "layers.1", "head"}
        for name in ("layers.0", "layers.1"):
            for q in ("spike_counts", "firing_rate", "sop", "mac", "neuron_updates", "params", "activation_bytes",
                      "energy_pj", "energy_compute_pj", "energy_memory_pj"):
                assert q in f["layers"][name], (name, q)
        counts = f["layers/layers.0/spike_counts"][:]
        assert counts.shape == (3,) and counts.sum() > 0
        assert f["layers/layers.1/sop"][:].sum() > 0
        assert list(f["layers/layers.0/mac"][:]) == [64 * 256, 0, 0]       # direct input: computed once, at t = 0
        assert f["layers/layers.1/spike_counts"].attrs["units"] == "spikes/sample/step"
        assert f.attrs["rule"] == "backprop" and "trainer" in f.attrs["config"]
        assert json.loads(f.attrs["energy"])["mac_pj"] == 4.6
        assert f["summary/train_energy_pj_per_step"][()] > 0
    flat = json.loads((out / "stats.json").read_text())
    assert flat["summary"]["energy_pj_per_sample"] == pytest.approx(m["stats"]["energy_pj_per_sample"])
    assert (out / "stats.csv").read_text().startswith("layer,")
    assert m["passes_per_update"] == {"forward": 1, "backward": 1} and m["train_mac_per_step"] > 0


def _plugin(tmp_path):
    (tmp_path / "convonly.py").write_text(textwrap.dedent("""
        from bioplaus.models import ConvNet
        from bioplaus.rules.base import LearningRule
        class ConvOnly(LearningRule):
            supported_models = (ConvNet,)
            def assign_credit(self, x, y):
                return {}
    """))
    return {"PYTHONPATH": str(tmp_path), **__import__("os").environ}


ERRORS = [
    (["rule=backpropp"], "unknown rule 'backpropp': choose one of "),
    (["model=mlp,transformer"], "unknown model 'transformer'"),
    (["data=cifar"], "unknown data 'cifar'"),
    (["stats=fp64_45nm"], "unknown stats 'fp64_45nm': choose one of fp16_45nm, fp32_45nm, int8_45nm"),
    (["stats.energy.ac_pj=-1"], "stats.energy.ac_pj must be >= 0"),
    (["data=fashion", "data.root=/nonexistent"], "missing train-images-idx3-ubyte[.gz]"),
    (["data=mnist"], "data.root must be set"),
    (["trainer.epochs=-1"], "trainer.epochs must be >= 0"),
    (["rule._target_=convonly.ConvOnly"], "rule conv_only cannot train model mlp: it supports convnet"),
    (["rule._target_=nowhere.Rule"], "cannot import rule._target_ 'nowhere.Rule'"),
    (["model.hidden=[]"], "model.hidden must be a non-empty list"),
    (["trainer.optimizer._target_=torch.optim.SGD", "trainer.optimizer.lr=1e20", "trainer.epochs=1"],
     "training diverged at epoch 0"),
]


@pytest.mark.parametrize("args,message", ERRORS, ids=[e[1][:24] for e in ERRORS])
def test_bad_input_is_one_line_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "run"
    r = sh(RUN + args + [f"hydra.run.dir={out}", "trainer.progress=false"], env=_plugin(tmp_path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bioplaus-run: error:"), r.stderr
    assert message in lines[0]
    assert not out.exists(), "a failed run must not leave a half-written run dir"


def test_multirun_writes_and_prints_the_comparison(tmp_path):
    sweep = tmp_path / "sweep"
    r = sh(RUN + ["-m", "experiment=quickstart", "trainer.epochs=1", "model.hidden=[32]",
                  "trainer.progress=false", f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0, r.stderr
    table = (sweep / "comparison.md").read_text()
    assert table in r.stdout
    rows = [line for line in table.splitlines() if line.startswith("| digits")]
    arms = (CONFIGS / "experiment" / "quickstart.yaml").read_text().split("+arm:")[1].split()[0].split(",")
    assert len(rows) == len(arms) >= 10 and sum("readout_only" in row for row in rows) == 2
    csv = (sweep / "comparison.csv").read_text().splitlines()
    assert csv[0].startswith("data,model,rule,variant,seeds,metric,test_acc") and len(csv) == len(arms) + 1
    assert "energy_uj_per_sample" in csv[0] and "energy/sample (µJ)" in table
    assert (sweep / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    (sweep / "comparison.md").unlink()
    r2 = sh(COMPARE + [str(sweep)])
    assert r2.returncode == 0 and (sweep / "comparison.md").read_text() == table


def test_energy_preset_changes_the_energy_not_the_ops(tmp_path):
    out = {}
    for preset in ("fp32_45nm", "int8_45nm"):
        r = sh(RUN + [f"stats={preset}", "trainer.epochs=1", "trainer.progress=false",
                      f"hydra.run.dir={tmp_path / preset}"])
        assert r.returncode == 0, r.stderr
        out[preset] = json.loads((tmp_path / preset / "metrics.json").read_text())["stats"]
    assert out["fp32_45nm"]["mac_per_sample"] == out["int8_45nm"]["mac_per_sample"]
    assert out["int8_45nm"]["energy_compute_pj_per_sample"] == pytest.approx(
        out["fp32_45nm"]["energy_compute_pj_per_sample"] * 0.23 / 4.6)


def test_compare_on_a_dir_without_runs(tmp_path):
    r = sh(COMPARE + [str(tmp_path)])
    assert r.returncode == 2 and "no metrics.json" in r.stderr
