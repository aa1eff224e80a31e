"""A run's hold on its directory: a run never deletes anything it did not create in this invocation.

    prepare(path)                      before Hydra writes anything (bioplaus.sweep.Guard.on_run_start): the dir
                                       must be a writable directory or creatable; records what was in it
    with RunDir(path, cfg) as rd:      the lock, stale temp files removed, the previous run's record checked
        if rd.finished: ...            the same config already finished here: its metrics, nothing to do
        rd.write_config(cfg)           .hydra/config.yaml, hydra.yaml, overrides.yaml (after every check passed)
        ... train, write outputs ...
        rd.finish(keep_checkpoint)     checkpoint.pt removed unless kept; an old failed.json removed

Lock: `.bioplaus.lock` (fcntl.flock, non-blocking): a second run in the same dir fails at once with one line;
the lock file is removed when the run ends (a killed run's is reused and removed by the next run).

Previous run: the config in `.hydra/config.yaml` (or a sweep job's `failed.json`) is compared with this run's.
Any difference is refused, naming the keys, except `trainer.epochs` upwards and the bookkeeping keys in
`IGNORED` (progress bar, epoch log lines, checkpoint switches, `sweep.*`). Same config: a checkpoint resumes, a
finished run is not run again (its metrics are returned), a finished run with more epochs asked goes on only from
a kept checkpoint (`trainer.keep_checkpoint=true`). Outputs without a recorded config are another run's: refused.

On failure (an exception inside the `with`) the outputs this invocation created are removed (names in OUTPUTS
that were not there before, our temporary files, the job log Hydra opened), pre-existing files are never
touched, and a run dir this invocation created is removed when it is left empty. A sweep job instead leaves
`failed.json` (status, error line, labels, config, overrides) for the comparison table. KeyboardInterrupt and
SystemExit only release the lock and leave everything in place, like a kill: a checkpoint stays resumable.
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bioplaus.atomic import atomic_write, clean_stale
from bioplaus.errors import ConfigError, DivergedError

LOCK = ".bioplaus.lock"
FAILED = "failed.json"
OUTPUTS = ("metrics.json", "stats.h5", "stats.json", "stats.csv", "checkpoint.pt", FAILED, ".hydra")
IGNORED = ("trainer.progress", "trainer.log_every", "trainer.checkpoint", "trainer.keep_checkpoint",
           "sweep.")                                                              # prefixes


@dataclass(frozen=True)
class Before:
    """What a directory held before this invocation touched it."""

    existed: bool
    created: Path | None            # the topmost directory this invocation created (None: it existed)
    entries: frozenset[str]


_BEFORE: dict[str, Before] = {}


def prepare(path: str | Path, what: str = "run dir", record: bool = True) -> Before:
    """Check (and create) a run or sweep dir before anything is written: an existing one must be a writable
    directory; a missing one is created here, so a path that cannot exist fails as one ConfigError. With `record`,
    what was there is kept for the RunDir of this path in this process."""
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise ConfigError(f"{what} {path} exists and is not a directory: choose another hydra.run.dir")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {path} is not writable: choose a directory you can write to")
        before = Before(True, None, frozenset(os.listdir(path)))
    else:
        top = path
        while top.parent != top and not top.parent.exists():
            top = top.parent
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise ConfigError(f"cannot create {what} {path}: {e.strerror or e}; choose a writable location") from None
        before = Before(False, top, frozenset())
    if record:
        _BEFORE[str(path)] = before
    return before


def flatten(node, prefix: str = "") -> dict:
    """{dotted.key: leaf} of a nested config (lists are leaves)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def ignored(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in IGNORED)


def config_diff(old, new) -> dict[str, tuple]:
    """{key: (old, new)} for every config leaf that differs, bookkeeping keys (IGNORED) left out."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, "<unset>"), b.get(k, "<unset>")) for k in sorted(set(a) | set(b))
            if not ignored(k) and a.get(k, "<unset>") != b.get(k, "<unset>")}


def describe(diff: dict[str, tuple], limit: int = 6) -> str:
    items = [f"{k} {o!r} -> {n!r}" for k, (o, n) in diff.items()]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def status_of(err: BaseException) -> str:
    """A failed job's status: diverged, error (a ConfigError: the user's to fix) or crashed (a bug)."""
    return "diverged" if isinstance(err, DivergedError) else "error" if isinstance(err, ConfigError) else "crashed"


def error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, ConfigError) else f"{type(err).__name__}: {text}"


class Lock:
    """An exclusive, non-blocking flock on `folder/.bioplaus.lock`; the file is removed on release."""

    def __init__(self, folder: Path, what: str = "run dir"):
        self.path, self.what, self.fd = Path(folder) / LOCK, what, None

    def acquire(self) -> None:
        for _ in range(5):                         # the file may be removed by a finishing holder meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise ConfigError(f"{self.what} {self.path.parent} is in use by another run (pid {other or '?'}): "
                                  "wait for it to end, or choose another hydra.run.dir") from None
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return
            os.close(fd)
        raise ConfigError(f"could not lock {self.what} {self.path.parent}: it keeps changing; try again")

    def release(self) -> None:
        if self.fd is not None:
            Path(self.path).unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


class RunDir:
    """One job's hold on its run dir (see the module docstring). `active` False (a data-parallel rank other than
    0) does nothing but share rank 0's verdict. `record_failure`: leave failed.json (sweep jobs)."""

    def __init__(self, path: str | Path, cfg, active: bool = True, record_failure: bool = False,
                 overrides: list[str] | None = None, hydra_cfg=None, job_log: str | None = None):
        self.path = Path(path).absolute()
        self.cfg, self.active, self.record_failure = cfg, active, record_failure
        self.overrides, self.hydra_cfg, self.job_log = overrides, hydra_cfg, job_log
        self.finished: dict | None = None
        self.labels: dict = {}
        self.lock = Lock(self.path)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    # -- entering: lock, clean, check the previous run ------------------------------------------------------
    def __enter__(self) -> RunDir:
        from bioplaus import distributed  # (imported here: the config helpers above need no torch)

        err, finished = None, None
        if self.active:
            try:
                self._enter()
                finished = self.finished
            except ConfigError as e:
                err = str(e)
        err, finished = distributed.broadcast_object((err, finished))
        if err is not None:
            raise ConfigError(err)
        self.finished = finished
        return self

    def _enter(self) -> None:
        self.before = _BEFORE.pop(str(self.path), None)
        if self.before is None:                    # not prepared by the Guard (a sweep job, or run() called directly)
            self.before = prepare(self.path, record=False)
        try:
            self.lock.acquire()
        except ConfigError:                        # another run's dir: drop only the empty log Hydra just opened
            log = self.path / self.job_log if self.job_log else None
            if log and self.job_log not in self.before.entries and log.is_file() and log.stat().st_size == 0:
                log.unlink()
            self._remove_created_dirs()
            raise
        try:
            for folder in (self.path, self.path / ".hydra"):
                clean_stale(folder)
            self.check_previous()
        except BaseException:
            self._clean_up()
            self._remove_created_dirs()
            self.lock.release()
            raise

    def stored_config(self) -> dict | None:
        """The config of the run that used this dir before: .hydra/config.yaml, else a failed job's record."""
        rec = self.path / ".hydra" / "config.yaml"
        if rec.is_file():
            try:
                return OmegaConf.to_container(OmegaConf.load(rec), resolve=False)
            except Exception as e:                 # noqa: BLE001 - any parse error: name the file
                raise ConfigError(f"{rec} cannot be read ({str(e).splitlines()[0]}): this dir holds a damaged "
                                  "run record; choose another hydra.run.dir") from None
        failed = self.path / FAILED
        if failed.is_file():
            try:
                return json.loads(failed.read_text()).get("config")
            except (json.JSONDecodeError, AttributeError):
                return None
        return None

    def check_previous(self) -> None:
        """Refuse another run's outputs; same config: resume, or note that it already finished."""
        here = [n for n in ("metrics.json", "checkpoint.pt", "stats.h5") if (self.path / n).exists()]
        stored = self.stored_config()
        if stored is None:
            if here:
                raise ConfigError(f"{self.path} holds another run's outputs ({', '.join(here)}) and no record of its "
                                  "config (.hydra/config.yaml): choose another hydra.run.dir")
            return
        diff = config_diff(stored, self.cfg)
        epochs = diff.pop("trainer.epochs", None)
        if epochs is not None and not (isinstance(epochs[0], int) and isinstance(epochs[1], int)
                                       and epochs[1] > epochs[0]):
            diff["trainer.epochs"] = epochs        # fewer epochs (or a non-number) is a difference like any other
        if diff:
            kind = "finished run" if "metrics.json" in here else "run"
            raise ConfigError(f"{self.path} holds a {kind} with another config ({describe(diff)}): rerun with its "
                              "settings to resume (only trainer.epochs may grow), or choose another hydra.run.dir")
        if "metrics.json" not in here:
            return                                 # unfinished: resume from the checkpoint, or start again
        if epochs is None:
            self.finished = self._read_metrics()
        elif "checkpoint.pt" not in here:
            raise ConfigError(f"{self.path} holds a run that finished after {epochs[0]} epochs and kept no checkpoint "
                              f"to go on to {epochs[1]} (trainer.keep_checkpoint=true keeps one): choose another "
                              "hydra.run.dir")

    def _read_metrics(self) -> dict:
        path = self.path / "metrics.json"
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): a damaged finished run; "
                              "choose another hydra.run.dir") from None

    # -- during the run ---------------------------------------------------------------------------------------
    def provenance(self) -> dict:
        """What metrics.json records about how the run was made: its config and command-line overrides."""
        return {"config": OmegaConf.to_container(self.cfg, resolve=False) if isinstance(self.cfg, DictConfig)
                else self.cfg, "overrides": self.overrides}

    def write_config(self) -> None:
        """.hydra/config.yaml (+ hydra.yaml and overrides.yaml under Hydra), atomically, once every check passed."""
        if not self.active:
            return
        folder = self.path / ".hydra"
        folder.mkdir(exist_ok=True)
        docs = {"config.yaml": OmegaConf.to_yaml(self.cfg)}
        if self.hydra_cfg is not None:
            docs["hydra.yaml"] = OmegaConf.to_yaml({"hydra": OmegaConf.to_container(self.hydra_cfg, resolve=False)})
        if self.overrides is not None:
            docs["overrides.yaml"] = OmegaConf.to_yaml(list(self.overrides))
        for name, text in docs.items():
            atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text))

    def finish(self, keep_checkpoint: bool = False) -> None:
        """The run's outputs are written: drop the checkpoint (unless kept) and an old failure record."""
        if self.active:
            if not keep_checkpoint:
                self.checkpoint.unlink(missing_ok=True)
            (self.path / FAILED).unlink(missing_ok=True)

    # -- leaving ----------------------------------------------------------------------------------------------
    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.active or self.lock.fd is None:
            return False
        try:
            if exc is not None and isinstance(exc, Exception):
                self._clean_up()
                if self.record_failure:
                    self._record(exc)
                else:
                    self._remove_created_dirs()
        finally:
            self.lock.release()
        return False

    def _clean_up(self) -> None:
        """Remove what this invocation created: our outputs that were not here before, and temporary files."""
        names = list(OUTPUTS) + ([self.job_log] if self.job_log else [])
        for name in names:
            p = self.path / name
            if name in self.before.entries or not (p.exists() or p.is_symlink()):
                continue
            if p.is_dir() and not p.is_symlink():
                for child in p.iterdir():
                    child.unlink(missing_ok=True)
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
        for folder in (self.path, self.path / ".hydra"):
            clean_stale(folder)

    def _remove_created_dirs(self) -> None:
        """rmdir the directories this invocation created, deepest first, while they are empty (but for our lock)."""
        if self.before.created is None:
            return
        folder = self.path
        while True:
            ours = {LOCK} if folder == self.path and self.lock.fd is not None else set()
            if set(os.listdir(folder)) - ours:
                return
            if ours:
                self.lock.release()
            folder.rmdir()
            if folder == self.before.created:
                return
            folder = folder.parent

    def _record(self, err: Exception) -> None:
        """failed.json: status, the error line, the job's labels, its config and overrides."""
        choices = OmegaConf.select(self.hydra_cfg, "runtime.choices", default=None) if self.hydra_cfg else None
        labels = {k: str((choices or {}).get(k, "?")) for k in ("data", "model", "rule")}
        labels["seed"] = self.cfg.get("seed") if hasattr(self.cfg, "get") else None
        rec = {"status": status_of(err), "error": error_line(err), **labels, **self.labels, **self.provenance()}
        atomic_write(self.path / FAILED, lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=2, default=str)))
