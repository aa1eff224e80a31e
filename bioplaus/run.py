"""`bioplaus-run`: the Hydra entry point. One job = data + model + rule + trainer -> metrics.json, stats.h5.

    bioplaus-run rule=backprop model=mlp data=digits trainer.epochs=5 seed=0
    bioplaus-run -m experiment=quickstart            # a sweep; comparison.{md,csv,png} at the end

Each job writes into its Hydra output dir (runs/... or multirun/.../<n>_<rule>_<model>_s<seed>):
`stats.h5`, `stats.json`, `stats.csv` (bioplaus.stats, energy model from the `stats` preset) and then
`metrics.json` (bioplaus.train.train's metrics plus rule, model, data, seed, device, versions, the
stats summary and the training energy per step, and whatever the rule's optional `extra_metrics()` returns),
all atomically, so a metrics.json means a finished run. `logger=tensorboard|mlflow` also logs each epoch and the
report there (bioplaus.loggers).

For language-modelling data (`data.task == "lm"`) the job also prints one line: test loss in nats per
token and bits, beside the unigram baseline.

User mistakes (unknown config names, a rule paired with a model it cannot train, a model whose task
is not the data's, missing or damaged data files, bad values, a device this machine lacks, a run dir that
cannot be written or holds another run) print one line `bioplaus-run: error: ...` and exit with status 2, all
before training starts; so does a run that diverges. A run never deletes what it did not create: its run dir
is guarded by bioplaus.rundir (lock, resume check, cleanup of only its own outputs) and, in a sweep, a failed
job is recorded and the others run (bioplaus.sweep).

Under torchrun (`torchrun --nproc_per_node=N -m bioplaus.run ...`, trainer.ddp=auto|true) the job trains
data parallel (bioplaus.distributed): rank 0's run dir is the job's, only rank 0 writes (other ranks get
no Hydra output dir or log), evaluation and statistics are summed over the ranks' shards.
"""
from __future__ import annotations

import atexit
import inspect
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bioplaus import __version__, checks, distributed, loggers, runtime, stats, sweep
from bioplaus.atomic import atomic_write
from bioplaus.data import Dataset
from bioplaus.errors import ConfigError
from bioplaus.models.base import Layered, model_name
from bioplaus.neurons.encoding import Encoder
from bioplaus.rules.base import LearningRule
from bioplaus.rundir import RunDir
from bioplaus.stats.energy import EnergyModel
from bioplaus.train import TrainConfig, train

GROUPS = sweep.GROUPS
runtime.register_resolvers()            # ${bioplaus_rule:...} in the default run / sweep dir names


def versions() -> dict[str, str]:
    import hydra

    return {"bioplaus": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "hydra": hydra.__version__, "numpy": np.__version__}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (temp file in the same dir, then rename)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=float)))


def _instantiate(node, what: str, **kw):
    """hydra.utils.instantiate, with its wrapped errors turned into one-line ConfigErrors."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all", **kw)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, ConfigError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        msg = str(e).splitlines()[0]
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        if "Error locating target" in msg:
            raise ConfigError(f"cannot import {what}._target_ '{target}': check the module is importable "
                              "(on PYTHONPATH) and the class name is spelled right") from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"bad {what} settings for {target}: {cause}") from None
        raise


@dataclass
class Job:
    """Everything one run is built from, checked before any training starts."""

    seed: int
    device: torch.device
    trainer: TrainConfig
    data: Dataset
    model: nn.Module
    rule: LearningRule
    energy: EnergyModel

    @property
    def names(self) -> dict[str, str]:
        """The run's labels in metrics and tables: rule, model and data names."""
        return {"rule": self.rule.name, "model": model_name(self.model), "data": self.data.name}

    @property
    def desc(self) -> str:
        n = self.names
        return f"{n['rule']}/{n['model']}/{n['data']} s{self.seed}"


def build(cfg) -> Job:
    """Seed, device, trainer settings, energy model, data, model and rule from the composed config, every
    pairing checked (`check_fit`): a ConfigError before any training when something does not fit."""
    seed = checks.seed(cfg.seed)
    seed_everything(seed)
    device = distributed.local_device(checks.device(cfg.device))
    trainer = TrainConfig(**_instantiate(cfg.trainer, "trainer"))
    checks.stats(cfg.stats)
    energy = EnergyModel.from_config(cfg.stats.energy)
    data = _instantiate(cfg.data, "data")
    if data.holds_validation and trainer.val_fraction > 0:
        data.hold_out(trainer.val_fraction, seed)     # link data: validation edges leave the graph the model gets
    model = _instantiate(cfg.model, "model", **model_kwargs(cfg.model, data))
    check_fit(model, data)
    rule = _instantiate(cfg.rule, "rule", model=model)
    return Job(seed, device, trainer, data, model, rule, energy)


def model_kwargs(model_cfg, data: Dataset) -> dict:
    """What the data offer the model (`Dataset.model_kwargs()`: in_shape, n_classes, and the graph for graph data),
    narrowed to the arguments the configured model class takes; the model takes what it needs."""
    from hydra.utils import get_class

    offered = data.model_kwargs()
    try:
        params = inspect.signature(get_class(model_cfg.get("_target_", ""))).parameters
    except Exception:                            # an unimportable target: instantiate reports it
        return offered
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    return {k: v for k, v in offered.items() if k in params}


def check_fit(model: nn.Module, data: Dataset) -> None:
    """The model must fit the data: graph models (`model.graph_model`) go with graph data (`data.graph_data`:
    samples are node ids) and only with it; the model's task (`model.task`) is the data's (per-token logits for
    lm data); spike-train data are read as given (model.encoding=given), not encoded again."""
    name = model_name(model)
    graph_model = isinstance(model, Layered) and model.graph_model
    if data.graph_data and not graph_model:
        raise ConfigError(f"data {data.name} is a graph (samples are node ids) but model {name} is not a graph model: "
                          "use model=gcn or model=sage")
    if graph_model and not data.graph_data:
        raise ConfigError(f"model {name} is a graph model and needs graph data: use data=sbm, data=karate or "
                          "data=pyg")
    encoder = model.encoder if isinstance(model, Layered) else None
    if data.spike_train and isinstance(encoder, Encoder) and encoder.kind != "given":
        T = data.in_shape[0]
        raise ConfigError(f"data {data.name} already is spike trains [T={T}, ...] but model {name} "
                          f"encodes its input ({encoder.kind}): use model.encoding=given model.T={T}")
    task = model.task if isinstance(model, Layered) else "classify"
    if task != data.task:
        raise ConfigError(f"model {name} does {task} but data {data.name} is a {data.task} task: "
                          + ("use a sequence model (model=gated_lm or model=spiking_rwkv)" if data.task == "lm"
                             else "pick classification data for it (e.g. data=digits_seq) or another model"))


def run(cfg, out_dir: str | Path, record_failure: bool = False, **context) -> dict:
    """Run one job from a composed config; write stats.h5 and metrics.json into out_dir; return metrics.
    Launched by torchrun, the job trains data parallel and only rank 0 writes, into rank 0's out_dir.
    record_failure: leave failed.json on failure (sweep jobs); context: Hydra's overrides, hydra_cfg and job_log
    for bioplaus.rundir.RunDir."""
    with distributed.process_group(cfg.trainer.get("ddp", "auto"), cfg.device):
        return _run(cfg, out_dir, record_failure, **context)


def _run(cfg, out_dir: str | Path, record_failure: bool = False, **context) -> dict:
    """The job inside its run dir's guard (bioplaus.rundir: lock, previous-run check, cleanup on failure)."""
    out_dir = Path(distributed.broadcast_object(str(out_dir)))
    with RunDir(out_dir, cfg, active=distributed.is_main(), record_failure=record_failure, **context) as rd:
        if rd.finished is not None:
            print(f"{out_dir}: this run already finished with the same config (metrics.json): nothing to do",
                  flush=True)
            return rd.finished
        return _job(cfg, out_dir, rd)


def _job(cfg, out_dir: Path, rd: RunDir) -> dict:
    """build -> check -> train -> report -> write."""
    from omegaconf.errors import MissingMandatoryValue

    main = distributed.is_main()
    try:
        job = build(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} must be set (add {e.full_key}=... to the command)") from None
    rd.labels = {**job.names, "seed": job.seed}
    rd.write_config()
    hc = rd.hydra_cfg
    label = runtime.rule_label(OmegaConf.select(hc, "runtime.choices.rule", default=None) if hc else None,
                               OmegaConf.select(cfg, "rule._target_", default=None)) if hc else job.rule.name
    desc = f"{label}/{job.names['model']}/{job.names['data']} s{job.seed}"
    log = make_logger(cfg, job, out_dir) if main else loggers.RunLogger()
    metrics = train(job.rule, job.data, job.trainer, seed=job.seed, device=job.device, desc=desc,
                    checkpoint=str(out_dir / "checkpoint.pt") if job.trainer.checkpoint else None,
                    on_epoch=log.epoch, bar_position=runtime.bar_position(
                        hc, OmegaConf.select(hc, "job.num", default=None) if hc else None))
    metrics.update(job.names, seed=job.seed, device=str(job.device), versions=versions(), **job.rule.extra_metrics())
    metrics.update(rule_config=label, variant=str(cfg.get("variant", "default")), threads=torch.get_num_threads(),
                   **capacity(job))
    rep = _report(cfg, job, metrics)
    metrics.update(rep.metrics(), **rd.provenance())
    if main:
        rep.write(out_dir)
        write_json(out_dir / "metrics.json", metrics)
        log.finish(metrics, rep, out_dir)
        if job.data.task == "lm":
            print(f"{desc}: test_loss {metrics['test_loss']:.4f} nats/token ({metrics['bits_per_char']:.3f} bits) "
                  f"vs unigram {metrics['unigram_loss']:.4f}; test_acc {metrics['test_acc']:.4f} -> {out_dir}",
                  flush=True)
        else:
            print(runtime.final_line(desc, metrics, out_dir), flush=True)
    rd.finish(job.trainer.keep_checkpoint)
    return metrics


def capacity(job: Job) -> dict[str, int]:
    """params: the model's parameters (what inference uses); trained_params: every parameter the rule trains
    (the model's plus its own: feedback matrices, local classifiers, NoProp's blocks, ...)."""
    def count(ps) -> int:
        return sum(p.numel() for p in {id(p): p for p in ps}.values())
    return {"params": count(job.model.parameters()), "trained_params": count(job.rule.parameters())}


def make_logger(cfg, job: Job, out_dir: Path) -> loggers.RunLogger:
    """The job's run logger from the `logger` group (bioplaus.loggers; none when the config has no logger node),
    built before training so that a missing package fails first."""
    node = cfg.get("logger")
    if node is None:
        return loggers.RunLogger()
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:                            # noqa: BLE001 - an unresolvable interpolation: log it as written
        text = OmegaConf.to_yaml(cfg)
    return _instantiate(node, "logger", run_dir=str(out_dir), config_yaml=text,
                        run_name=f"{job.names['rule']}_{job.names['model']}_{job.names['data']}_s{job.seed}")


def _report(cfg, job: Job, metrics: dict) -> stats.Report:
    """The statistics of the trained model's inference on the test set (stats.enabled) and the priced training
    cost; under data parallel each rank collects its shard and the totals are summed."""
    par = distributed.for_training(job.rule, job.trainer.ddp)
    if par.active:
        metrics["world_size"] = distributed.world_size()
    x_stats, reduce = None, None
    n = 0
    if cfg.stats.enabled:
        n = min(cfg.stats.n_samples or len(job.data.x_test), len(job.data.x_test))
        x_stats, reduce = par.stats_split(job.data.x_test[:n])
    attrs = {**job.names, "seed": job.seed, "n_samples": int(n), "config": OmegaConf.to_yaml(cfg),
             "versions": versions()}
    return stats.report(job.rule, x_stats, job.energy, metrics, job.trainer.batch_size,
                        stats_batch_size=int(cfg.stats.batch_size), attrs=attrs, reduce=reduce)


def _available(group: str) -> list[str]:
    """The options of a config group, nested ones by their path (arm=tuned/digits/bp_mlp)."""
    root = resources.files("bioplaus.configs") / group

    def walk(node, prefix: str) -> list[str]:
        out = []
        for p in node.iterdir():
            if p.is_dir() and not p.name.startswith(("_", ".")):
                out += walk(p, f"{prefix}{p.name}/")
            elif p.name.endswith(".yaml"):
                out.append(prefix + p.name[:-5])
        return out

    return sorted(walk(root, ""))


def check_overrides(argv: list[str]) -> None:
    """Reject unknown config-group names before Hydra creates any output directory."""
    if any(a.startswith(("hydra.searchpath", "--config-dir", "-cd")) for a in argv):
        return                                    # the user adds their own config dirs: let Hydra check
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or key not in GROUPS or "(" in value or value in ("null", ""):
            continue
        known = _available(key)
        for v in value.split(","):
            if v not in known:
                raise ConfigError(f"unknown {key} '{v}': choose one of {', '.join(known)} "
                                  f"(configs/{key}/*.yaml)")


def objective(cfg, metrics: dict | None, direction: str = "maximize") -> float | None:
    """What a job returns to an optimising sweeper (experiment=tune): metrics[cfg.objective], or None. A failed
    job (metrics None: diverged, crashed) returns the worst value for the study's direction (-inf when it
    maximises), so the study records the trial as the worst and goes on (Optuna 2.10 refuses NaN)."""
    key = cfg.get("objective")
    if not key:
        return None
    if metrics is None:
        return float("inf") if str(direction).lower().endswith("minimize") else float("-inf")
    if key not in metrics:
        raise ConfigError(f"objective '{key}' is not in metrics.json: use a key it has (e.g. val_acc with "
                          "trainer.val_fraction > 0)")
    return float(metrics[key])


def _hydra_main():
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    @hydra.main(version_base="1.3", config_path="pkg://bioplaus.configs", config_name="config")
    def main(cfg) -> None:
        hc = HydraConfig.get()
        out_dir = Path(hc.runtime.output_dir)
        try:
            runtime.apply_threads(cfg.get("threads", "auto"), hc)
        except ConfigError as e:
            sweep.fail(e)
        context = {"overrides": list(hc.overrides.task), "hydra_cfg": hc, "job_log": f"{hc.job.name}.log"}
        if hc.mode == RunMode.MULTIRUN:         # a failed job is recorded and the sweep goes on
            metrics = sweep.run_job(lambda c, d: run(c, d, record_failure=True, **context), cfg, out_dir)
            return objective(cfg, metrics, str(OmegaConf.select(hc, "sweeper.direction", default="maximize")))
        try:
            return objective(cfg, run(cfg, out_dir, **context))
        except ConfigError as e:
            sweep.fail(e)

    return main


def quiet_rank_overrides(argv: list[str]) -> list[str]:
    """torchrun ranks other than 0 write nothing: Hydra gets a throwaway run dir (removed at exit), no
    .hydra/ config copy and no log file; the job itself writes into rank 0's run dir (see `run`)."""
    if int(os.environ.get("RANK", "0")) == 0:
        return argv
    tmp = tempfile.mkdtemp(prefix=f"bioplaus-rank{os.environ['RANK']}-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    drop = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.output_subdir=", "hydra/job_logging=",
            "hydra/hydra_logging=")
    return [a for a in argv if not a.lstrip("+").startswith(drop)] + [
        f"hydra.run.dir={tmp}", f"hydra.sweep.dir={tmp}", "hydra.output_subdir=null",
        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def cli() -> None:
    """Console script `bioplaus-run`."""
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as e:
        sweep.fail(e)
    # bioplaus.rundir writes .hydra/ itself, once the run dir and the config passed every check
    sys.argv[1:] = quiet_rank_overrides(sys.argv[1:]) + ["hydra.output_subdir=null"]
    _hydra_main()()
    if sweep.EXIT:
        sys.exit(sweep.EXIT)


if __name__ == "__main__":
    cli()
