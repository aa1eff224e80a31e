"""`bioplaus-run`: the Hydra entry point. One job = data + model + rule + trainer -> metrics.json, stats.h5.

    bioplaus-run rule=backprop model=mlp data=digits trainer.epochs=5 seed=0
    bioplaus-run -m experiment=quickstart            # a sweep; comparison.{md,csv,png} at the end

Each job writes into its Hydra output dir (runs/... or multirun/.../<n>_<rule>_<model>_s<seed>):
`stats.h5`, `stats.json`, `stats.csv` (bioplaus.stats, energy model from the `stats` preset) and then
`metrics.json` (bioplaus.train.train's metrics plus rule, model, data, seed, device, versions, the
stats summary and the training energy per step, and whatever the rule's optional `extra_metrics()` returns),
all atomically, so a metrics.json means a finished run.

For language-modelling data (`data.task == "lm"`) the job also prints one line: test loss in nats per
token and bits, beside the unigram baseline.

User mistakes (unknown config names, a rule paired with a model it cannot train, a model whose task
is not the data's, missing data files, bad values) print one line `bioplaus-run: error: ...` and exit
with status 2; the failed job's output dir is removed so nothing half-written remains.

Under torchrun (`torchrun --nproc_per_node=N -m bioplaus.run ...`, trainer.ddp=auto|true) the job trains
data parallel (bioplaus.distributed): rank 0's run dir is the job's, only rank 0 writes (other ranks get
no Hydra output dir or log), evaluation and statistics are summed over the ranks' shards.
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from bioplaus import __version__
from bioplaus.errors import ConfigError

GROUPS = ("rule", "model", "data", "trainer", "stats", "experiment", "arm")


def snake(name: str) -> str:
    """'SpikingMLP' -> 'spiking_mlp', 'LocalClassifiers' -> 'local_classifiers'."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def label(obj) -> str:
    """Short name of a rule/model for tables: its `name` attribute, else its class name in snake_case."""
    return getattr(obj, "name", None) or snake(type(obj).__name__)


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
    from bioplaus.stats import atomic_write

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
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        if "Error locating target" in msg:
            raise ConfigError(f"cannot import {what}._target_ '{target}': check the module is importable "
                              "(on PYTHONPATH) and the class name is spelled right") from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"bad {what} settings for {target}: {cause}") from None
        raise


def run(cfg, out_dir: str | Path) -> dict:
    """Run one job from a composed config; write stats.h5 and metrics.json into out_dir; return metrics.
    Launched by torchrun, the job trains data parallel and only rank 0 writes, into rank 0's out_dir."""
    from bioplaus import distributed

    with distributed.process_group(cfg.trainer.get("ddp", "auto"), cfg.device):
        return _run(cfg, out_dir)


def _run(cfg, out_dir: str | Path) -> dict:
    from omegaconf import OmegaConf

    from bioplaus import distributed
    from bioplaus import stats as stats_mod
    from bioplaus.models.graph import graph_kwargs
    from bioplaus.train import TrainConfig, train

    out_dir, main = Path(distributed.broadcast_object(str(out_dir))), distributed.is_main()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    seed_everything(seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto"
                          else cfg.device)
    device = distributed.local_device(device)
    tcfg = TrainConfig(**_instantiate(cfg.trainer, "trainer"))
    data = _instantiate(cfg.data, "data")
    model = _instantiate(cfg.model, "model", in_shape=list(data.in_shape), n_classes=data.n_classes,
                         **graph_kwargs(cfg.model, data))       # graph data: the model is built with the graph
    check_task(model, data)
    rule = _instantiate(cfg.rule, "rule", model=model)
    names = {"rule": label(rule), "model": label(model), "data": data.name}
    metrics = train(rule, data, tcfg, seed=seed, device=device,
                    desc=f"{names['rule']}/{names['model']}/{data.name} s{seed}",
                    checkpoint=str(out_dir / "checkpoint.pt") if tcfg.checkpoint else None)
    metrics.update(names, seed=seed, device=str(device), versions=versions())
    if hasattr(rule, "extra_metrics"):            # optional: what a rule reports about itself (dendrite growth)
        metrics.update(rule.extra_metrics())
    if distributed.active(tcfg.ddp):
        metrics["world_size"] = distributed.world_size()
    energy = stats_mod.EnergyModel.from_config(cfg.stats.energy)
    train_cost = {"mac_per_step": metrics["train_mac_per_step"], "ac_per_step": metrics["train_ac_per_step"],
                  "energy_pj_per_step": energy.compute_pj(metrics["train_mac_per_step"], metrics["train_ac_per_step"]),
                  "passes_per_update": metrics["passes_per_update"], "batch_size": int(tcfg.batch_size)}
    metrics["train_energy_pj_per_step"] = train_cost["energy_pj_per_step"]
    if cfg.stats.enabled:
        n = cfg.stats.n_samples or len(data.x_test)
        xs, reduce = data.x_test[:n], None
        if distributed.active(tcfg.ddp) and len(xs) >= distributed.world_size():   # shards, totals summed
            xs, reduce = distributed.shard(xs), distributed.stats_reducer()
        layers = stats_mod.collect(model, xs, energy, batch_size=int(cfg.stats.batch_size), rule=rule,
                                   reduce=reduce)
        summary = {**stats_mod.summary(layers), "train_mac_per_step": train_cost["mac_per_step"],
                   "train_ac_per_step": train_cost["ac_per_step"],
                   "train_energy_pj_per_step": train_cost["energy_pj_per_step"]}
        attrs = {**names, "seed": seed, "n_samples": int(n), "energy": energy.as_dict(),
                 "train_cost": train_cost, "config": OmegaConf.to_yaml(cfg), "versions": versions()}
        if main:
            stats_mod.write_h5(out_dir / "stats.h5", layers, summary, attrs)
            stats_mod.write_flat(out_dir, layers, summary, attrs)
        metrics["stats"] = summary
    if main:
        write_json(out_dir / "metrics.json", metrics)
    if data.task == "lm" and main:
        print(f"{names['rule']}/{names['model']}/{data.name} s{seed}: test_loss {metrics['test_loss']:.4f} nats/token "
              f"({metrics['bits_per_char']:.3f} bits) vs unigram {metrics['unigram_loss']:.4f}; "
              f"test_acc {metrics['test_acc']:.4f}", flush=True)
    return metrics


def check_task(model, data) -> None:
    """A model's task (`model.task`, default "classify") must be the data's: per-token logits for lm data;
    spike-train data must be read as given (model.encoding=given), not encoded again; graph models
    (`model.graph_model`) go with graph data (`data.graph`, node ids as samples) and only with it."""
    encoder = getattr(model, "encoder", None)
    if data.spike_train and encoder is not None and encoder.kind != "given":
        T = data.in_shape[0]
        raise ConfigError(f"data {data.name} already is spike trains [T={T}, ...] but model {label(model)} "
                          f"encodes its input ({encoder.kind}): use model.encoding=given model.T={T}")
    if bool(getattr(model, "graph_model", False)) != (getattr(data, "graph", None) is not None):
        raise ConfigError(f"model {label(model)} and data {data.name} do not fit: graph models (model=gcn, model=sage) "
                          "need graph data (data=sbm, data=karate, data=pyg) and graph data needs a graph model")
    task = getattr(model, "task", "classify")
    if task != data.task:
        raise ConfigError(f"model {label(model)} does {task} but data {data.name} is a {data.task} task: "
                          + ("use a sequence model (model=gated_lm or model=spiking_rwkv)" if data.task == "lm"
                             else "pick classification data for it (e.g. data=digits_seq) or another model"))


def _available(group: str) -> list[str]:
    root = resources.files("bioplaus.configs") / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


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


def _fail(err: Exception, out_dir: Path | None = None) -> None:
    print(f"bioplaus-run: error: {err}", file=sys.stderr, flush=True)
    if out_dir is not None and out_dir.exists():
        shutil.rmtree(out_dir, ignore_errors=True)
    sys.exit(2)


def _hydra_main():
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import MissingMandatoryValue

    @hydra.main(version_base="1.3", config_path="pkg://bioplaus.configs", config_name="config")
    def main(cfg) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            run(cfg, out_dir)
        except MissingMandatoryValue as e:
            _fail(ConfigError(f"{e.full_key} must be set (add {e.full_key}=... to the command)"), out_dir)
        except ConfigError as e:
            _fail(e, out_dir)

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
        _fail(e)
    sys.argv[1:] = quiet_rank_overrides(sys.argv[1:])
    _hydra_main()()


if __name__ == "__main__":
    cli()
