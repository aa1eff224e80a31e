"""How one job runs inside its launcher: the name it is filed under, its torch thread count, where its progress
bar sits, and the one line it ends with.

- `rule_label(choice, target)`: a run's rule label, for its run dir and its comparison row. A shipped rule
  config is labelled by its config name (`rule=ep_paper` -> "ep_paper", though its class is the one behind
  `rule=ep`), a user's class (`rule._target_=my.Rule`) by the class's own `name` (rules/base.py: snake_case of the
  class unless it declares one). Registered as the OmegaConf resolver `bioplaus_rule`, which the default
  `hydra.run.dir` / `hydra.sweep.subdir` use.
- `threads(setting, launcher)`: torch's intra-op thread count. `threads: auto` (configs/config.yaml) gives each job
  of a joblib sweep cores // n_jobs threads (at least 1; 1 per job when n_jobs fills the machine or is -1), since
  torch's threads spin-wait and k jobs of all-core threads on a small machine run many times slower than k jobs
  of one thread each; a single run or a sequential sweep keeps torch's default. An integer sets it.
- `bar_position(launcher, job_num)`: under joblib, the row of a job's progress bar (its job number modulo
  n_jobs), so parallel jobs' bars do not overwrite one another.
- `final_line(...)`: the job's last line, printed with or without progress bars: test accuracy, the margin over the
  `readout_only` control where one finished beside it (the same data, model config, variant and seed in a sibling
  run dir), and the run dir.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from bioplaus.errors import ConfigError

CONTROL = "readout_only"


def rule_label(choice: str | None, target: str | None) -> str:
    """The label of a run's rule: its config name for a shipped rule class, else the user class's `name`."""
    target = str(target or "")
    if choice and (not target or target.startswith("bioplaus.")):
        return str(choice)
    module, _, cls = target.rpartition(".")
    try:
        return str(getattr(importlib.import_module(module), cls).name)
    except (ImportError, AttributeError, ValueError):
        from bioplaus.models.base import snake

        return snake(cls) if cls else str(choice or "rule")


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("bioplaus_rule", rule_label, replace=True)


def _launcher(hydra_cfg) -> tuple[bool, int]:
    """(the jobs run in parallel under joblib, its n_jobs) from Hydra's config (None outside Hydra)."""
    if hydra_cfg is None:
        return False, 1
    launcher = getattr(hydra_cfg, "launcher", None)
    target = str(getattr(launcher, "_target_", "") or "")
    if "joblib" not in target.lower():
        return False, 1
    n_jobs = int(getattr(launcher, "n_jobs", -1) or -1)
    return True, n_jobs


def threads(setting, hydra_cfg=None, cpus: int | None = None) -> int | None:
    """The torch thread count a job should use (None: keep torch's default); see the module docstring."""
    cpus = cpus or os.cpu_count() or 1
    if setting is None or str(setting) == "auto":
        parallel, n_jobs = _launcher(hydra_cfg)
        if not parallel:
            return None
        return 1 if n_jobs <= 0 else max(1, cpus // n_jobs)
    try:
        n = int(setting)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(setting).strip() != str(n):
        raise ConfigError(f"threads={setting} is not a thread count: use auto or a positive integer (e.g. threads=1)")
    return n


def apply_threads(setting, hydra_cfg=None) -> int:
    """Set torch's intra-op thread count per `threads`; return the count in use."""
    import torch

    n = threads(setting, hydra_cfg)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def bar_position(hydra_cfg=None, job_num: int | None = None) -> int | None:
    """The progress bar's row under a parallel joblib sweep (None otherwise: tqdm's own placement)."""
    parallel, n_jobs = _launcher(hydra_cfg)
    if not parallel or job_num is None:
        return None
    width = n_jobs if n_jobs > 0 else (os.cpu_count() or 1)
    return int(job_num) % max(width, 1)


def _same_setting(a: dict, b: dict) -> bool:
    """Two runs' configs agree on model, data and budget (epochs, batch size): a control of another width or
    budget is no control."""
    ca, cb = a.get("config"), b.get("config")
    if not isinstance(ca, dict) or not isinstance(cb, dict):
        return True
    ta, tb = ca.get("trainer") or {}, cb.get("trainer") or {}
    return all(ca.get(k) == cb.get(k) for k in ("model", "data")) and all(
        ta.get(k) == tb.get(k) for k in ("epochs", "batch_size"))


def find_control(out_dir: Path, metrics: dict) -> dict | None:
    """The finished readout_only run beside out_dir (a sibling dir) on the same data, model config, variant and
    seed, or None."""
    parent = Path(out_dir).parent
    if metrics.get("rule") == CONTROL or not parent.is_dir():
        return None
    for p in sorted(parent.glob("*/metrics.json")):
        if p.parent == Path(out_dir):
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(rec, dict) and rec.get("rule") == CONTROL
                and all(rec.get(k) == metrics.get(k) for k in ("data", "model", "seed", "variant"))
                and _same_setting(rec, metrics)):
            return rec
    return None


def final_line(desc: str, metrics: dict, out_dir: Path) -> str:
    """`<desc>: test_acc 0.9722, +0.0417 over readout_only (0.9306) -> <out_dir>` (the margin only where a
    control finished beside it)."""
    text = f"{desc}: test_acc {metrics['test_acc']:.4f}"
    if "val_acc" in metrics:
        text += f" (val_acc {metrics['val_acc']:.4f})"
    control = find_control(out_dir, metrics)
    if control is not None:
        text += f", {metrics['test_acc'] - control['test_acc']:+.4f} over {CONTROL} ({control['test_acc']:.4f})"
    return f"{text} -> {out_dir}"


__all__ = ["CONTROL", "apply_threads", "bar_position", "final_line", "find_control", "register_resolvers",
           "rule_label", "threads"]
