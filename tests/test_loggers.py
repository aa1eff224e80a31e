"""The `logger` config group (bioplaus.loggers): logger=tensorboard and logger=mlflow runs, read back with the
libraries' own readers (TensorBoard's EventAccumulator, MLflow's client); the default writes nothing extra; a
missing package fails before training."""
import csv
import json
import os
import subprocess
import sys

import h5py
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bioplaus import loggers
from bioplaus.errors import ConfigError
from bioplaus.run import run
from bioplaus.stats import load

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")       # reading a file store back (the logger sets it too)
from mlflow.tracking import MlflowClient  # noqa: E402

QUICK = ["model=spiking_mlp", "model.T=3", "model.hidden=[32]", "trainer.epochs=2", "trainer.progress=false"]


def test_tensorboard_run_is_read_back(compose, tmp_path):
    out = tmp_path / "run"
    metrics = run(compose(*QUICK, "logger=tensorboard"), out)
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    acc = ea.Scalars("epoch/test_acc")
    assert [e.step for e in acc] == [0, 1]
    assert [e.value for e in acc] == pytest.approx([r["test_acc"] for r in metrics["history"]])
    assert [e.value for e in ea.Scalars("epoch/loss")] == pytest.approx([r["loss"] for r in metrics["history"]])
    assert ea.Scalars("final/test_acc")[0].value == pytest.approx(metrics["test_acc"])
    assert ea.Scalars("final/stats/energy_pj_per_sample")[0].value == pytest.approx(
        metrics["stats"]["energy_pj_per_sample"], rel=1e-6)
    stats = load(out / "stats.h5")["layers"]
    for layer in ("layers.0", "head"):
        assert ea.Scalars(f"layers/{layer}/energy_pj")[0].value == pytest.approx(stats[layer]["energy_pj"], rel=1e-6)
    rate = ea.Scalars("layers/layers.0/firing_rate")[0].value
    assert 0 < rate < 1 and rate == pytest.approx(stats["layers.0"]["firing_rate"], rel=1e-6)
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "SpikingMLP" in text and "epochs: 2" in text


def test_mlflow_run_is_read_back(compose, tmp_path):
    out, store = tmp_path / "run", tmp_path / "mlruns"
    metrics = run(compose(*QUICK, "logger=mlflow", f"logger.tracking_uri={store.as_uri()}",
                          "logger.experiment=interop"), out)
    client = MlflowClient(tracking_uri=store.as_uri())
    (r,) = client.search_runs([client.get_experiment_by_name("interop").experiment_id])
    assert r.info.status == "FINISHED" and r.info.run_name == "backprop_spiking_mlp_digits_s0"
    p = r.data.params
    assert p["model.hidden"] == "[32]" and p["trainer.epochs"] == "2" and p["model.neuron.tau"] == "2.0"
    hist = client.get_metric_history(r.info.run_id, "epoch/test_acc")
    assert sorted((m.step, m.value) for m in hist) == [(i, pytest.approx(row["test_acc"]))
                                                       for i, row in enumerate(metrics["history"])]
    assert r.data.metrics["final/test_acc"] == pytest.approx(metrics["test_acc"])
    stats = load(out / "stats.h5")["layers"]
    assert r.data.metrics["layers/layers.0/firing_rate"] == pytest.approx(stats["layers.0"]["firing_rate"])
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"stats.h5", "stats.json", "stats.csv", "metrics.json", "config.yaml"} <= names
    local = client.download_artifacts(r.info.run_id, "stats.h5", str(tmp_path))
    with h5py.File(local, "r") as f:
        assert f["summary/sop_per_sample"][()] == pytest.approx(metrics["stats"]["sop_per_sample"])
    assert json.loads(open(client.download_artifacts(r.info.run_id, "metrics.json", str(tmp_path))).read())[
        "test_acc"] == metrics["test_acc"]


def test_mlflow_sweep_logs_the_comparison_and_counts_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "bioplaus.run", "-m", "rule=backprop,readout_only", "model=mlp",
                        "model.hidden=[16]", "trainer.epochs=1", "trainer.progress=false", "logger=mlflow",
                        f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())        # the default store: ./mlruns
    runs = client.search_runs([client.get_experiment_by_name("bioplaus").experiment_id])
    by_name = {x.info.run_name: x for x in runs}
    assert set(by_name) == {"backprop_mlp_digits_s0", "readout_only_mlp_digits_s0", "comparison"}
    assert {a.path for a in client.list_artifacts(by_name["comparison"].info.run_id)} == {
        "comparison.png", "comparison.md", "comparison.csv"}
    with open(sweep / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(row["seeds"] == "1" for row in rows)           # one seed each, not re-counted


def test_no_logger_by_default(compose, tmp_path):
    cfg = compose(*QUICK)
    assert cfg.logger._target_ == "bioplaus.loggers.RunLogger"
    run(cfg, tmp_path / "run")
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert "metrics.json" in written and not written & {"tensorboard", "mlruns"}


def test_a_missing_package_fails_before_training(compose, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)                         # import mlflow -> ImportError
    with pytest.raises(ConfigError, match="mlflow-skinny"):
        run(compose(*QUICK, "logger=mlflow", f"logger.tracking_uri={(tmp_path / 'ml').as_uri()}"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_scalars_flatten_nested_metrics():
    got = dict(loggers.scalars({"a": 1, "b": {"c": 2.5, "d": "x"}, "e": [1], "f": float("nan"), "g": True}))
    assert got == {"a": 1.0, "b/c": 2.5}
