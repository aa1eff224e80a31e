"""Run loggers: a run's epochs and report in TensorBoard or MLflow, chosen by the `logger` config group.

    bioplaus-run ... logger=tensorboard     # <run dir>/tensorboard      (tensorboard --logdir runs/, or a sweep dir)
    bioplaus-run ... logger=mlflow          # file store ./mlruns (MLflow's default), one run per job
                                            # (mlflow ui --backend-store-uri ./mlruns)
    bioplaus-run ... logger=none            # the default: nothing

One logger object per job, like bioplaus.distributed's hooks: `RunLogger` does nothing, its subclasses write.
The runner builds it before training (a missing package is a ConfigError then, not after the run), hands
`logger.epoch` to the training loop (called with each epoch's history row) and calls
`logger.finish(metrics, report, run_dir)` once metrics.json and stats.h5 are written:

    what                     TensorBoard                                MLflow
    the config               text "config" (YAML), at the start         params (flattened keys), artifact config.yaml
    each epoch's row         scalars epoch/<key> at step = epoch        metrics epoch/<key> at step = epoch
    the final metrics        scalars final/<key>                         metrics final/<key>
    per layer (the report)   scalars layers/<name>/firing_rate and      metrics layers/<name>/...
                             layers/<name>/energy_pj (pJ per sample)
    files                    -                                          artifacts metrics.json, stats.h5/.json/.csv
    a sweep's comparison     -                                          comparison.png/.md/.csv in a run "comparison"
                                                                        (MLflowSweepCallback, a Hydra callback)

MLflow's file store is in maintenance mode since MLflow 3.7 and refuses to open unless MLFLOW_ALLOW_FILE_STORE=true:
for file: URIs the MLflow logger sets that variable in its own process. Any other tracking URI (sqlite:///...,
http://...) is used as given. The store sits beside runs/ and multirun/ (in the working directory), not inside a
run or sweep dir: its copies of metrics.json would otherwise be read back as runs by bioplaus-compare. Only the
main process of a data-parallel run logs. A job that fails after its logger started leaves what was logged so far
(its MLflow run stays RUNNING).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bioplaus.errors import ConfigError, require

LAYER_KEYS = ("firing_rate", "energy_pj")             # per-layer quantities logged from the stats report
ARTIFACTS = ("metrics.json", "stats.h5", "stats.json", "stats.csv")
SWEEP_ARTIFACTS = ("comparison.png", "comparison.md", "comparison.csv")


def scalars(d: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(key, value) for every finite number in a nested dict, keys joined by '/' (lists and strings skipped)."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from scalars(v, key + "/")
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            if math.isfinite(float(v)):
                yield key, float(v)


def flat_params(d: dict, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Config values as MLflow params: nested keys joined by '.', values as strings."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flat_params(v, key + ".")
        else:
            yield key, str(v)


def layer_scalars(report) -> Iterator[tuple[str, float]]:
    """layers/<name>/<quantity> of the stats report (nothing when statistics were not collected)."""
    for name, rec in (getattr(report, "layers", None) or {}).items():
        for q in LAYER_KEYS:
            if q in rec:
                yield f"layers/{name}/{q}", float(np.sum(rec[q]))


class RunLogger:
    """No logger (logger=none): the hooks the runner calls, doing nothing."""

    def __init__(self, run_dir: str | Path = ".", config_yaml: str = "", run_name: str = "run"):
        """run_dir: the job's output dir; config_yaml: its composed config (YAML); run_name: its label."""
        self.run_dir, self.config_yaml, self.run_name = Path(run_dir), config_yaml, run_name

    def epoch(self, row: dict) -> None:
        """One epoch's history row (epoch, loss, test_acc, ...)."""

    def finish(self, metrics: dict, report, run_dir: str | Path) -> None:
        """The run's final metrics, its statistics report and its written files."""


class TensorBoardLogger(RunLogger):
    """TensorBoard event files in log_dir (default <run dir>/tensorboard); see the module docstring."""

    def __init__(self, log_dir: str | None = None, **kw):
        super().__init__(**kw)
        require("tensorboard", "logger=tensorboard needs", "pip install tensorboard (or pip install -e '.[log]')")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir) if log_dir else self.run_dir / "tensorboard"
        self.writer = SummaryWriter(str(self.log_dir))
        self.writer.add_text("config", f"```yaml\n{self.config_yaml}\n```")
        self.step = 0

    def epoch(self, row: dict) -> None:
        self.step = int(row.get("epoch", self.step))
        for k, v in scalars({k: v for k, v in row.items() if k != "epoch"}, "epoch/"):
            self.writer.add_scalar(k, v, self.step)
        self.writer.flush()

    def finish(self, metrics: dict, report, run_dir) -> None:
        final = {k: v for k, v in metrics.items() if k != "history"}
        for k, v in [*scalars(final, "final/"), *layer_scalars(report)]:
            self.writer.add_scalar(k, v, self.step)
        self.writer.close()


def _mlflow_client(tracking_uri: str | None):
    """An MlflowClient on tracking_uri (default: the file store ./mlruns, MLflow's own default)."""
    require("mlflow", "logger=mlflow needs", "pip install mlflow-skinny (or pip install -e '.[log]')")
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or Path("mlruns").resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri), uri


def _experiment_id(client, name: str) -> str:
    """The experiment's id, created if new (jobs of a sweep may race to create it: the loser looks it up)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:                           # noqa: BLE001 - created meanwhile by another job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class MLflowLogger(RunLogger):
    """An MLflow run per job in experiment `experiment` (see the module docstring)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "bioplaus", **kw):
        super().__init__(**kw)
        if not experiment:
            raise ConfigError("logger.experiment must name an MLflow experiment, got an empty name")
        self.client, self.uri = _mlflow_client(tracking_uri)
        from mlflow.entities import Param

        run = self.client.create_run(_experiment_id(self.client, experiment), run_name=self.run_name)
        self.run_id = run.info.run_id
        import yaml

        config = yaml.safe_load(self.config_yaml) if self.config_yaml else {}
        params = [Param(k, v[:6000]) for k, v in flat_params(config or {})]
        for i in range(0, len(params), 100):                  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        if self.config_yaml:
            self.client.log_text(self.run_id, self.config_yaml, "config.yaml")

    def _log(self, items, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, step) for k, v in items]
        for i in range(0, len(ms), 1000):                     # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def epoch(self, row: dict) -> None:
        self._log(scalars({k: v for k, v in row.items() if k != "epoch"}, "epoch/"), int(row.get("epoch", 0)))

    def finish(self, metrics: dict, report, run_dir) -> None:
        final = {k: v for k, v in metrics.items() if k != "history"}
        self._log([*scalars(final, "final/"), *layer_scalars(report)], int(metrics.get("epochs", 0)))
        for name in ARTIFACTS:
            if (Path(run_dir) / name).is_file():
                self.client.log_artifact(self.run_id, str(Path(run_dir) / name))
        self.client.set_terminated(self.run_id)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


class MLflowSweepCallback(Callback):
    """Hydra callback (configs/logger/mlflow.yaml): at the end of a multirun, log the sweep's comparison.{png,md,csv}
    to an MLflow run named "comparison" in the jobs' store and experiment. Hydra calls end-of-run callbacks in
    reverse order, so this one runs before bioplaus.compare.CompareCallback: it writes the comparison first."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from bioplaus.compare import compare

        sweep = Path(config.hydra.sweep.dir)
        try:
            compare(sweep, echo=False)
        except ConfigError:
            return                                            # no finished job: nothing to compare or log
        node = config.get("logger", {})
        client, _ = _mlflow_client(node.get("tracking_uri"))
        run = client.create_run(_experiment_id(client, node.get("experiment", "bioplaus")), run_name="comparison")
        for name in SWEEP_ARTIFACTS:
            if (sweep / name).is_file():
                client.log_artifact(run.info.run_id, str(sweep / name))
        client.set_terminated(run.info.run_id)


__all__ = ["MLflowLogger", "MLflowSweepCallback", "RunLogger", "TensorBoardLogger", "flat_params", "scalars"]
