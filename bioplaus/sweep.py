"""Sweeps that survive one bad job: the Hydra callback that guards run and sweep dirs, and the job wrapper.

`Guard` (a Hydra callback, configs/config.yaml) acts before Hydra writes anything:
- `on_run_start`: the run dir must be a writable directory or creatable (bioplaus.rundir.prepare);
- `on_multirun_start`: the same for the sweep dir, and a reused sweep dir resumes only the same sweep: its
  `multirun.yaml` (what Hydra records of a sweep) must have the same overrides, sweeper params and config, or
  the sweep is refused naming the keys; the sweep dir is locked for the sweep's lifetime;
- `on_multirun_end`: the sweep's exit status (`EXIT`, which `bioplaus-run` exits with): non-zero only if every
  job failed, or with `sweep.fail_fast=true` if any did.

`run_job` wraps one job of a multirun: a job that fails (a ConfigError, a divergence, or any exception) is
recorded in its dir as `failed.json` (bioplaus.rundir), printed as one line (plus the traceback for a crash,
which is a bug) and the sweep goes on, so every other job runs and the comparison lists the failure. Hydra's
own launchers would instead stop at a SystemExit, or skip the comparison after an exception.
With `sweep.fail_fast=true` the sweep stops at the first failed job when the jobs run in the sweep's own process
(Hydra's default launcher); parallel launchers finish their jobs and the sweep exits non-zero.
"""
from __future__ import annotations

import atexit
import os
import sys
import traceback
from pathlib import Path

from omegaconf import OmegaConf

from bioplaus import rundir
from bioplaus.atomic import clean_stale
from bioplaus.errors import ConfigError

GROUPS = ("rule", "model", "data", "trainer", "stats", "logger", "experiment", "arm")
EXIT = 0                          # the multirun's exit status, decided in Guard.on_multirun_end
_MAIN_PID: int | None = None      # the process that started the multirun (where fail_fast can stop it)
_LOCK: rundir.Lock | None = None  # the sweep dir's lock, held by that process

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


def fail(err: Exception, code: int = 2) -> None:
    """Print one line `bioplaus-run: error: ...` and exit."""
    print(f"bioplaus-run: error: {err}", file=sys.stderr, flush=True)
    sys.exit(code)


def override_map(overrides) -> dict[str, str]:
    """{key: value} of Hydra override strings, prefixes (+, ++, ~) dropped, Hydra's own keys and the bookkeeping
    keys of bioplaus.rundir.IGNORED left out."""
    out = {}
    for o in overrides or []:
        key, _, value = str(o).partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra") or rundir.ignored(key):
            continue
        out[key] = value
    return out


def _map_diff(a: dict, b: dict) -> dict[str, tuple]:
    return {k: (a.get(k, "<unset>"), b.get(k, "<unset>")) for k in sorted(set(a) | set(b))
            if a.get(k, "<unset>") != b.get(k, "<unset>")}


def sweep_diff(old, new) -> dict[str, tuple]:
    """How two multirun configs (multirun.yaml and this one) differ: overrides, sweeper params and the config."""
    def parts(cfg):
        params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
        params = {} if params is None else OmegaConf.to_container(params, resolve=False)
        body = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
        return override_map(OmegaConf.select(cfg, "hydra.overrides.task", default=[])), override_map(
            [f"{k}={v}" for k, v in params.items()]), body

    (oa, pa, ba), (ob, pb, bb) = parts(old), parts(new)
    return {**_map_diff(oa, ob), **_map_diff(pa, pb), **rundir.config_diff(ba, bb)}


def check_sweep_dir(sweep_dir: Path, config) -> None:
    """A new sweep dir, or one holding the same sweep (resumed); anything else is refused naming the keys."""
    stored = sweep_dir / "multirun.yaml"
    if stored.is_file():
        try:
            old = OmegaConf.load(stored)
        except Exception as e:                     # noqa: BLE001 - any parse error: name the file
            raise ConfigError(f"{stored} cannot be read ({str(e).splitlines()[0]}): choose another "
                              "hydra.sweep.dir") from None
        diff = sweep_diff(old, config)
        if diff:
            raise ConfigError(f"sweep dir {sweep_dir} holds another sweep ({rundir.describe(diff)}): rerun it with "
                              "the same settings to resume it, or choose another hydra.sweep.dir")
        print(f"resuming the sweep in {sweep_dir}: finished jobs are kept, the others run", flush=True)
        return
    runs = [p for p in sweep_dir.rglob("*") if p.name in ("metrics.json", rundir.FAILED)]
    if runs:
        raise ConfigError(f"sweep dir {sweep_dir} holds runs ({runs[0].parent.name}, ...) but no multirun.yaml: "
                          "they are not this sweep's; choose another hydra.sweep.dir")


def job_statuses(sweep_dir: Path) -> list[str]:
    """The status of every job recorded under sweep_dir: ok (metrics.json) or that of its failed.json."""
    import json

    out = []
    for p in sorted(Path(sweep_dir).rglob("*")):
        if p.name == "metrics.json":
            out.append("ok")
        elif p.name == rundir.FAILED and not (p.parent / "metrics.json").exists():
            try:
                out.append(json.loads(p.read_text()).get("status", "error"))
            except (json.JSONDecodeError, AttributeError):
                out.append("error")
    return out


def run_job(fn, cfg, out_dir: Path) -> dict | None:
    """Run one multirun job `fn(cfg, out_dir)` and return its metrics; a failure is printed, recorded (by fn's
    RunDir) and survived (None)."""
    try:
        return fn(cfg, out_dir)
    except Exception as e:                         # noqa: BLE001 - one bad job never sinks the sweep
        if not isinstance(e, ConfigError):
            traceback.print_exc()
        print(f"bioplaus-run: error: job {Path(out_dir).name}: {rundir.error_line(e)}", file=sys.stderr, flush=True)
        if OmegaConf.select(cfg, "sweep.fail_fast", default=False) and os.getpid() == _MAIN_PID:
            print("bioplaus-run: error: the sweep stops at its first failed job (sweep.fail_fast=true)",
                  file=sys.stderr, flush=True)
            _release()
            sys.exit(2)


def _release() -> None:
    global _LOCK
    if _LOCK is not None:
        _LOCK.release()
        _LOCK = None


class Guard(Callback):
    """Hydra callback: check run and sweep dirs before Hydra writes into them; decide a sweep's exit status."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)       # the run dir's ${hydra:...} resolves (Hydra sets it later)
        try:
            rundir.prepare(config.hydra.run.dir)
        except ConfigError as e:
            fail(e)

    def on_multirun_start(self, config, **kwargs) -> None:
        global _MAIN_PID, EXIT, _LOCK
        _MAIN_PID, EXIT = os.getpid(), 0
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        try:
            lock = rundir.Lock(sweep_dir, "sweep dir")
            rundir.prepare(sweep_dir, "sweep dir", record=False)
            lock.acquire()
            try:
                check_sweep_dir(sweep_dir, config)
            except BaseException:
                lock.release()
                raise
        except ConfigError as e:
            fail(e)
        clean_stale(sweep_dir)
        _LOCK = lock
        atexit.register(_release)

    def on_multirun_end(self, config, **kwargs) -> None:
        global EXIT
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        statuses = job_statuses(sweep_dir)
        failed = sum(s != "ok" for s in statuses)
        if statuses and failed == len(statuses):
            print(f"bioplaus-run: error: all {failed} jobs of the sweep failed (see {sweep_dir})", file=sys.stderr)
            EXIT = 2
        elif failed and OmegaConf.select(config, "sweep.fail_fast", default=False):
            print(f"bioplaus-run: error: {failed} of {len(statuses)} jobs failed (sweep.fail_fast=true)",
                  file=sys.stderr)
            EXIT = 2
        elif failed:
            print(f"{failed} of {len(statuses)} jobs failed; the comparison marks them (sweep.fail_fast=true makes "
                  "that an error)", file=sys.stderr)
        _release()
