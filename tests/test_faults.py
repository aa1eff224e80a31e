"""Run safety, as a hostile user meets it: every bad invocation exits non-zero with one line and no traceback and
leaves every file that was there byte-identical (a snapshot of each run dir, with a user's own files in it, is
compared byte for byte); a crash leaves them too; resumes with another config are refused naming the keys; sweeps
survive a diverging and a crashing job; readers name the file and what is wrong.

The CLI cases run `bioplaus.run.cli`, exactly as the console script does, each in its own process: a driver
process imports torch and Hydra once and forks one child per case (a fresh interpreter costs ~4 s a case).
"""
import fcntl
import gzip
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

DRIVER = r'''
import json, os, sys, traceback
cases = json.load(open(sys.argv[1]))
import bioplaus.run as R
codes = []
for i, c in enumerate(cases):
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(os.path.join(sys.argv[2], f"{i}.{name}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        os.chdir(c["cwd"])
        sys.path[:0] = c.get("path", [])
        if "umask" in c:
            os.umask(c["umask"])
        if c.get("uid") is not None:           # another user cannot read root's Python: load what runs first
            import argparse, logging.config, hydra._internal.utils, hydra.core.hydra_config, hydra.types
            from hydra import compose, initialize_config_module
            with initialize_config_module(config_module="bioplaus.configs", version_base="1.3"):
                compose(config_name="config", overrides=c["args"])
            os.setuid(c["uid"])
        sys.argv = ["bioplaus-run"] + c["args"]
        code = 0
        try:
            R.cli()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        import atexit
        atexit._run_exitfuncs()                # what the interpreter does at exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
'''
BASE = ["trainer.epochs=1", "trainer.progress=false", "data.n_train=200", "stats.n_samples=50", "model.hidden=[32]"]
FINISHED = ["trainer.epochs=2", "trainer.progress=false", "data.n_train=200", "stats.n_samples=50",
            "model.hidden=[32]", "trainer.checkpoint=true"]
KEPT = FINISHED + ["trainer.keep_checkpoint=true"]
PLUGIN = textwrap.dedent("""
    from bioplaus.rules.backprop import Backprop
    class Crash(Backprop):
        def assign_credit(self, x, y):
            raise RuntimeError("boom in assign_credit")
""")


@dataclass
class Result:
    rc: int
    out: str
    err: str


def cli_many(cases: list[dict], work: Path) -> list[Result]:
    """Run bioplaus-run once per case ({"args": [...], "cwd": dir, optional path/umask/uid}), in order."""
    logs = Path(tempfile.mkdtemp(prefix="cli-", dir=work))
    (logs / "cases.json").write_text(json.dumps(cases))
    r = subprocess.run([sys.executable, "-c", DRIVER, str(logs / "cases.json"), str(logs)], capture_output=True,
                       text=True, timeout=900, cwd=work, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    return [Result(c, (logs / f"{i}.out").read_text(), (logs / f"{i}.err").read_text()) for i, c in enumerate(codes)]


def snapshot(folder: Path) -> dict:
    """Every path under folder with its bytes (files) or None (dirs)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def user_dir(path: Path) -> Path:
    """A directory holding a user's own files."""
    (path / "keep").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes, not bioplaus's\n")
    (path / "keep" / "data.bin").write_bytes(bytes(range(256)))
    return path


def write_idx(path: Path, arr: np.ndarray, cut: int | None = None) -> None:
    raw = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw[:cut] if cut is not None else raw)


def idx_root(path: Path, spoil: str | None = None) -> Path:
    """Four small MNIST-format files (4x4 images, labels 0..9), one of them spoiled."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (200, 4, 4)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 200),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (50, 4, 4)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 50)}
    if spoil == "label255":
        arrays["train-labels-idx1-ubyte"][17] = 255
    if spoil == "count":
        arrays["train-labels-idx1-ubyte"] = rng.integers(0, 10, 300)
    for name, a in arrays.items():
        gz = spoil == "gz" and name.startswith("train-images")
        target = path / (name + (".gz" if gz else ""))
        write_idx(target, a, cut=10 if spoil == "header" and name.startswith("train-images") else
                  (len(gzip.compress(a.astype(np.uint8).tobytes())) // 2 if gz else None))
    return path


MESSAGES = {       # bad invocation -> a piece of its one-line message
    "ep_beta_0_in_cwd": "rule.beta must be > 0",
    "epochs_abc": "trainer.epochs must be an integer, got 'abc'",
    "seed_abc": "seed must be an integer, got 'abc'",
    "lr_negative": "Invalid learning rate",
    "device_cuda": "CUDA GPU",
    "device_bogus": "device=bogus is not a device",
    "n_samples_negative": "stats.n_samples must be >= 1",
    "energy_field": "stats.energy.mac_pj must be a number",
    "energy_preset": "unknown stats 'fp64'",
    "idx_label_255": "label 255 at index 17 is out of range for 10 classes",
    "idx_300_labels_200_images": "has 200 images but",
    "idx_cut_header": "train-images-idx3-ubyte is truncated inside its header",
    "idx_truncated_gz": "train-images-idx3-ubyte.gz cannot be read",
    "adam_lr_1e6_diverges": "training diverged",
    "dir_under_a_file": "cannot create run dir",
    "dir_read_only": "is not writable",
    "dir_in_use": "is in use by another run (pid 4242)",
    "resume_other_seed": "another config (seed 0 -> 1)",
    "resume_other_lr": "trainer.optimizer.lr 0.001 -> 0.01",
    "resume_other_width": "model.hidden [32] -> [16]",
    "resume_fewer_epochs": "trainer.epochs 2 -> 1",
    "killed_run_other_seed": "holds a run with another config (seed 0 -> 1)",
    "outputs_without_config": "no record of its config",
}


def bad_args(root: Path) -> dict[str, tuple[list[str], str | None]]:
    """name -> (args, where it runs: None = a fresh user dir of its own, or a named prepared dir)."""
    data = {k: idx_root(root / "idx" / k, k) for k in ("label255", "count", "header", "gz")}
    cuda = "device=cuda" if not __import__("torch").cuda.is_available() else "device=cuda:63"
    return {
        "ep_beta_0_in_cwd": (["rule=ep", "rule.beta=0", "hydra.run.dir=."], None),
        "epochs_abc": (BASE + ["trainer.epochs=abc"], None),
        "seed_abc": (BASE + ["seed=abc"], None),
        "lr_negative": (BASE + ["trainer.optimizer.lr=-1"], None),
        "device_cuda": (BASE + [cuda], None),
        "device_bogus": (BASE + ["device=bogus"], None),
        "n_samples_negative": (BASE + ["stats.n_samples=-300"], None),
        "energy_field": (BASE + ["stats.energy.mac_pj=abc"], None),
        "energy_preset": (BASE + ["stats=fp64"], None),
        "idx_label_255": (["data=mnist", f"data.root={data['label255']}", "trainer.epochs=1"], None),
        "idx_300_labels_200_images": (["data=mnist", f"data.root={data['count']}", "trainer.epochs=1"], None),
        "idx_cut_header": (["data=mnist", f"data.root={data['header']}", "trainer.epochs=1"], None),
        "idx_truncated_gz": (["data=mnist", f"data.root={data['gz']}", "trainer.epochs=1"], None),
        "adam_lr_1e6_diverges": (BASE + ["trainer.optimizer.lr=1e6", "trainer.checkpoint=true"], None),
        "dir_under_a_file": (BASE, "file"),
        "dir_read_only": (BASE, "ro"),
        "dir_in_use": (BASE, None),
        "resume_other_seed": (FINISHED + ["seed=1"], "finished"),
        "resume_other_lr": (FINISHED + ["trainer.optimizer.lr=0.01"], "finished"),
        "resume_other_width": (FINISHED + ["model.hidden=[16]"], "finished"),
        "resume_fewer_epochs": (FINISHED + ["trainer.epochs=1"], "finished"),
        "killed_run_other_seed": (FINISHED + ["seed=1"], "killed"),
        "outputs_without_config": (FINISHED, "norecord"),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every bad invocation, a crash and the good reruns, each run once; snapshots of each run dir before."""
    root = tmp_path_factory.mktemp("faults")
    (root / "plugin").mkdir()
    (root / "plugin" / "crashing.py").write_text(PLUGIN)
    first, kept = user_dir(root / "finished"), user_dir(root / "kept")
    setup = cli_many([{"args": FINISHED + [f"hydra.run.dir={first}"], "cwd": str(root)},
                      {"args": KEPT + [f"hydra.run.dir={kept}"], "cwd": str(root)}], root)
    assert setup[0].rc == 0, setup[0].err
    assert (first / "metrics.json").exists()
    for name, drop in (("killed", ("metrics.json", "stats.h5", "stats.json", "stats.csv")), ("norecord", (".hydra",)),
                       ("again", ())):
        shutil.copytree(first, root / name)
        for d in drop:
            shutil.rmtree(root / name / d) if (root / name / d).is_dir() else (root / name / d).unlink()
    (root / "afile").write_text("a file, not a directory\n")
    ro_parent = Path(tempfile.mkdtemp())                  # in world-traversable /tmp, so another uid reaches it
    ro_parent.chmod(0o755)

    names, cases, dirs = [], [], {}
    for name, (args, where) in bad_args(root).items():
        run_dir = {"finished": first, "killed": root / "killed", "norecord": root / "norecord",
                   "file": root / "afile" / "run", "ro": ro_parent / "ro"}.get(where) or root / "cases" / name
        if where in (None, "ro"):
            user_dir(run_dir)
        case = {"args": args if "hydra.run.dir=." in args else args + [f"hydra.run.dir={run_dir}"],
                "cwd": str(run_dir if where in (None, "ro") else root), "path": [str(root / "plugin")]}
        if where == "ro":
            run_dir.chmod(0o555)
            case["uid"] = 65534 if os.geteuid() == 0 else None      # root may write anywhere: be nobody
        names.append(name)
        cases.append(case)
        dirs[name] = root / "afile" if where == "file" else run_dir
    crash = user_dir(root / "cases" / "crash")
    names.append("crash")
    cases.append({"args": BASE + ["rule._target_=crashing.Crash", "trainer.checkpoint=true",
                                  f"hydra.run.dir={crash}"], "cwd": str(root), "path": [str(root / "plugin")]})
    dirs["crash"] = crash
    fd = os.open(dirs["dir_in_use"] / ".bioplaus.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)               # "a run that is still training" holds it
    snaps = {n: snapshot(d) if d.is_dir() else d.read_bytes() for n, d in dirs.items()}

    stale = user_dir(root / "stale")
    (stale / ".metrics.json.ab_3xY9z.bioplaus.tmp").write_text("half a file from a killed writer")
    (stale / ".checkpoint.pt.0123abcd.bioplaus.tmp").write_bytes(b"half a checkpoint")
    (stale / "mine.tmp").write_text("a user's temp file")
    (stale / ".notes.txt.12345678.tmp").write_text("another program's temp file")
    good = {"same_config_again": {"args": FINISHED + ["trainer.log_every=1", f"hydra.run.dir={root / 'again'}"],
                                  "cwd": str(root)},                          # a bookkeeping key may change
            "more_epochs": {"args": KEPT + ["trainer.epochs=3", f"hydra.run.dir={kept}"], "cwd": str(root)},
            "stale_tmp_umask": {"args": BASE + ["trainer.checkpoint=true", f"hydra.run.dir={stale}"],
                                "cwd": str(root), "umask": 0o027}}
    snaps["again"] = snapshot(root / "again")
    try:
        results = cli_many(cases + list(good.values()), root)
    finally:
        os.close(fd)
        (ro_parent / "ro").chmod(0o755)
    yield {"root": root, "results": dict(zip(names + list(good), results)), "dirs": dirs, "snaps": snaps}
    shutil.rmtree(ro_parent, ignore_errors=True)


@pytest.mark.parametrize("name", list(MESSAGES))
def test_bad_invocation_is_one_line_and_leaves_files_byte_identical(world, name):
    r = world["results"][name]
    assert r.rc == 2, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bioplaus-run: error:"), r.err
    assert MESSAGES[name] in lines[0], lines[0]
    d = world["dirs"][name]
    assert (snapshot(d) if d.is_dir() else d.read_bytes()) == world["snaps"][name], "a pre-existing file changed"


def test_divergence_names_the_fix(world):
    line = world["results"]["adam_lr_1e6_diverges"].err
    assert "over 1000x the first update's" in line and "trainer.optimizer.lr" in line and "grad_clip" in line


def test_a_crash_keeps_its_traceback_and_removes_only_what_it_created(world):
    r = world["results"]["crash"]
    assert r.rc == 1 and "boom in assign_credit" in r.err
    assert snapshot(world["dirs"]["crash"]) == world["snaps"]["crash"]


def test_same_config_again_does_nothing(world):
    r = world["results"]["same_config_again"]
    assert r.rc == 0, r.err
    assert "already finished with the same config" in r.out
    assert snapshot(world["root"] / "again") == world["snaps"]["again"]


def test_more_epochs_go_on_from_the_kept_checkpoint(world):
    r = world["results"]["more_epochs"]
    assert r.rc == 0, r.err
    assert "resuming after epoch 1" in r.out
    kept = world["root"] / "kept"
    m = json.loads((kept / "metrics.json").read_text())
    assert m["epochs"] == 3 and [h["epoch"] for h in m["history"]] == [0, 1, 2]
    assert m["config"]["trainer"]["epochs"] == 3
    assert (kept / "checkpoint.pt").exists()                               # trainer.keep_checkpoint=true
    assert (kept / "notes.txt").read_text() == "my notes, not bioplaus's\n"
    assert not (world["root"] / "finished" / "checkpoint.pt").exists()     # by default a finished run drops it


def test_stale_temp_files_go_and_outputs_follow_the_umask(world):
    r = world["results"]["stale_tmp_umask"]
    assert r.rc == 0, r.err
    stale = world["root"] / "stale"
    names = sorted(p.name for p in stale.iterdir())
    assert names == [".hydra", ".notes.txt.12345678.tmp", "keep", "metrics.json", "mine.tmp", "notes.txt",
                     "run.log", "stats.csv", "stats.h5", "stats.json"]          # no checkpoint, no lock, no .tmp
    for name in ("metrics.json", "stats.h5", "stats.csv", ".hydra/config.yaml"):
        assert stat.S_IMODE((stale / name).stat().st_mode) == 0o640, name


# ---------------------------------------------------------------------------------------------- sweeps
ARMS = {"diverge_mlp": "trainer:\n  optimizer:\n    lr: 1.0e6\n", "crash_mlp": "rule:\n  _target_: crashing.Crash\n"}
GOOD_ARMS = "bp_mlp,readout_only_mlp,fa_mlp,dfa_mlp"
SAME = ("data", "model", "rule", "seeds", "test_acc", "test_acc_std", "margin_vs_control", "train_acc",
        "energy_uj_per_sample", "sop_per_sample", "mac_per_sample", "firing_rate", "epochs", "variant", "status")


def _sweep(root: Path, arms: str, out: str, *extra) -> dict:
    return {"args": ["-m", f"+arm={arms}", *BASE, f"hydra.searchpath=[file://{root / 'conf'}]", *extra,
                     f"hydra.sweep.dir={root / out}"], "cwd": str(root), "path": [str(root / "plugin")]}


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    (root / "plugin").mkdir()
    (root / "plugin" / "crashing.py").write_text(PLUGIN)
    (root / "conf" / "arm").mkdir(parents=True)
    for name, body in ARMS.items():
        (root / "conf" / "arm" / f"{name}.yaml").write_text(
            "# @package _global_\ndefaults:\n  - override /rule: backprop\n  - override /model: mlp\n" + body)
    first = cli_many([_sweep(root, GOOD_ARMS + ",diverge_mlp,crash_mlp", "six"), _sweep(root, GOOD_ARMS, "four")],
                     root)
    before = snapshot(root / "four")
    second = cli_many([_sweep(root, GOOD_ARMS, "four"), _sweep(root, "diverge_mlp,bp_mlp", "fast",
                                                               "sweep.fail_fast=true"),
                       _sweep(root, "diverge_mlp,crash_mlp", "bad")], root)
    resumed = snapshot(root / "four")
    other = cli_many([_sweep(root, GOOD_ARMS, "four", "trainer.epochs=2")], root)[0]
    return {"root": root, "six": first[0], "four": first[1], "again": second[0], "other": other,
            "fail_fast": second[1], "all_bad": second[2], "four_before": before, "four_resumed": resumed}


def test_a_sweep_survives_a_diverging_and_a_crashing_job(sweeps):
    """Done when: 6 jobs, one diverging and one raising -> a comparison of all 6, the two failures marked, the
    four good rows equal to those of the sweep without the bad jobs; exit status 0."""
    six, root = sweeps["six"], sweeps["root"]
    assert six.rc == 0 and sweeps["four"].rc == 0, six.err
    rows = _rows(root / "six" / "comparison.csv")
    assert len(rows) == 6
    failed = {r["status"]: r for r in rows if r["status"] != "ok"}
    assert set(failed) == {"diverged", "crashed"}
    assert "training diverged" in failed["diverged"]["error"] and failed["diverged"]["rule"] == "backprop"
    assert failed["crashed"]["error"] == "RuntimeError: boom in assign_credit" and failed["crashed"]["rule"] == "crash"
    good = [{k: r[k] for k in SAME} for r in rows if r["status"] == "ok"]
    assert good == [{k: r[k] for k in SAME} for r in _rows(root / "four" / "comparison.csv")]
    assert len(good) == 4 and {r["rule"] for r in good} == {"backprop", "readout_only", "fa", "dfa"}
    table = (root / "six" / "comparison.md").read_text()
    assert "**DIVERGED**: training diverged" in table and "**CRASHED**: RuntimeError: boom" in table
    assert "2 of 6 jobs failed" in six.err
    for job in ("4_backprop_mlp_s0", "5_crash_mlp_s0"):          # a user rule names its job dir
        assert sorted(p.name for p in (root / "six" / job).iterdir()) == ["failed.json", "run.log"]


def test_a_reused_sweep_dir_resumes_the_same_sweep_or_refuses_another(sweeps):
    again, other, root = sweeps["again"], sweeps["other"], sweeps["root"]
    assert again.rc == 0, again.err
    assert "resuming the sweep" in again.out and again.out.count("already finished with the same config") == 4
    for job in sorted((root / "four").glob("*_s0")):
        assert (job / "metrics.json").read_bytes() == sweeps["four_before"][f"{job.name}/metrics.json"]
    assert other.rc == 2
    lines = other.err.strip().splitlines()
    assert len(lines) == 1 and "holds another sweep (trainer.epochs 1 -> 2)" in lines[0], other.err
    assert snapshot(root / "four") == sweeps["four_resumed"]


def test_fail_fast_stops_at_the_first_failed_job(sweeps):
    r, root = sweeps["fail_fast"], sweeps["root"]
    assert r.rc == 2 and "sweep.fail_fast=true" in r.err
    assert (root / "fast" / "0_backprop_mlp_s0" / "failed.json").exists()
    assert not (root / "fast" / "1_backprop_mlp_s0").exists()
    assert not (root / "fast" / ".bioplaus.lock").exists()


def test_a_sweep_where_every_job_failed_exits_non_zero_with_its_table(sweeps):
    r, root = sweeps["all_bad"], sweeps["root"]
    assert r.rc == 2 and "all 2 jobs of the sweep failed" in r.err
    assert sorted(row["status"] for row in _rows(root / "bad" / "comparison.csv")) == ["crashed", "diverged"]


# --------------------------------------------------------------------------------------------- readers
def _record(folder: Path, overrides: list[str], epochs: int = 1, seed: int = 0, rule: str = "backprop",
            acc: float = 0.5) -> None:
    folder.mkdir(parents=True)
    config = {"seed": seed, "trainer": {"epochs": epochs}, "rule": {"name": rule}}
    rec = {"data": "digits", "model": "mlp", "rule": rule, "seed": seed, "test_acc": acc, "train_acc": acc,
           "train_time_s": 1.0, "peak_mem_mb": 1.0, "epochs": epochs, "config": config, "overrides": overrides}
    (folder / "metrics.json").write_text(json.dumps(rec))


def test_compare_refuses_two_sweeps_in_one_dir_naming_the_key(tmp_path):
    from bioplaus.compare import compare
    from bioplaus.errors import ConfigError

    _record(tmp_path / "a" / "0", ["rule=backprop", "seed=0"], epochs=1)
    _record(tmp_path / "b" / "0", ["rule=backprop", "seed=1", "trainer.epochs=2"], epochs=2, seed=1)
    with pytest.raises(ConfigError, match=r"runs differ in trainer.epochs, which no multirun.yaml"):
        compare(tmp_path, echo=False)
    assert not (tmp_path / "comparison.md").exists()


def test_compare_takes_one_sweep_per_arm_as_one_comparison(tmp_path):
    """experiments/pipeline.py runs one seed sweep per arm (arm not swept in any multirun.yaml): the arms form one
    table; a key other than arm that differs between those sweeps is still refused."""
    from bioplaus.compare import compare
    from bioplaus.errors import ConfigError

    for arm in ("bp_mlp", "readout_only_mlp"):
        (tmp_path / arm).mkdir()
        (tmp_path / arm / "multirun.yaml").write_text(f"hydra:\n  overrides:\n    task:\n    - +arm={arm}\n"
                                                      "    - seed=0,1\n")
        for s in (0, 1):
            _record(tmp_path / arm / str(s), [f"+arm={arm}", f"seed={s}"], seed=s,
                    rule="backprop" if arm == "bp_mlp" else "readout_only", acc=0.8 + 0.05 * (arm == "bp_mlp"))
    rows = compare(tmp_path, echo=False)
    assert sorted((r["rule"], r["seeds"]) for r in rows) == [("backprop", 2), ("readout_only", 2)]
    _record(tmp_path / "bp_mlp" / "2", ["+arm=bp_mlp", "seed=2", "trainer.epochs=2"], epochs=2, seed=2)
    with pytest.raises(ConfigError, match=r"runs differ in trainer.epochs, which the sweep did not sweep"):
        compare(tmp_path, echo=False)


def test_compare_groups_a_swept_key_as_variants_not_seeds(tmp_path):
    from bioplaus.compare import compare

    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - trainer.epochs=1,2\n"
                                            "    - rule=backprop,readout_only\n")
    for i, (rule, ep) in enumerate([("backprop", 1), ("backprop", 2), ("readout_only", 1), ("readout_only", 2)]):
        _record(tmp_path / str(i), [f"rule={rule}", f"trainer.epochs={ep}"], epochs=ep, rule=rule,
                acc=0.5 + 0.1 * ep + 0.01 * (rule == "backprop"))
    rows = compare(tmp_path, echo=False)
    assert [(r["rule"], r["variant"], r["seeds"]) for r in rows] == [
        ("backprop", "trainer.epochs=1", 1), ("readout_only", "trainer.epochs=1", 1),
        ("backprop", "trainer.epochs=2", 1), ("readout_only", "trainer.epochs=2", 1)]
    assert rows[0]["margin_vs_control"] == pytest.approx(0.01) and rows[2]["margin_vs_control"] == pytest.approx(0.01)
    assert "| backprop | trainer.epochs=2 |" in (tmp_path / "comparison.md").read_text()


def test_compare_refuses_one_run_counted_twice_and_configs_that_differ_under_equal_overrides(tmp_path):
    from bioplaus.compare import compare
    from bioplaus.errors import ConfigError

    _record(tmp_path / "x" / "0", ["rule=backprop", "seed=0"])
    _record(tmp_path / "y" / "0", ["rule=backprop", "seed=0"])
    with pytest.raises(ConfigError, match="same config and seed 0: one run would count twice"):
        compare(tmp_path, echo=False)
    shutil.rmtree(tmp_path / "y")
    _record(tmp_path / "y" / "0", ["rule=backprop", "seed=1"], epochs=3, seed=1)
    with pytest.raises(ConfigError, match=r"same overrides but different configs \(trainer.epochs 1 -> 3\)"):
        compare(tmp_path, echo=False)


def test_bioplaus_compare_names_a_truncated_metrics_json(tmp_path):
    _record(tmp_path / "0", ["rule=backprop"])
    text = (tmp_path / "0" / "metrics.json").read_text()
    (tmp_path / "0" / "metrics.json").write_text(text[: len(text) // 2])
    r = subprocess.run([sys.executable, "-m", "bioplaus.compare", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"{tmp_path / '0' / 'metrics.json'} is not valid JSON" in lines[0]


def test_stats_load_names_the_file_and_what_is_wrong(tmp_path):
    import h5py

    from bioplaus.errors import ConfigError
    from bioplaus.stats import load

    (tmp_path / "notes.h5").write_text("not HDF5 at all")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("summary")
    for name, message in (("notes.h5", "is not a readable HDF5 file"), ("empty.h5", "has no layers group"),
                          ("absent.h5", "no such file")):
        with pytest.raises(ConfigError, match=message) as e:
            load(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)


def test_temp_files_follow_the_umask_and_stale_ones_are_recognised(tmp_path):
    from bioplaus.atomic import TMP_PATTERN, atomic_path, atomic_write, clean_stale

    old = os.umask(0o002)
    try:
        atomic_write(tmp_path / "a.json", lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664               # mkstemp alone gives 0600
    stale = Path(atomic_path(tmp_path / "b.json"))
    assert TMP_PATTERN.match(stale.name) and not TMP_PATTERN.match(".b.json.tmp")
    (tmp_path / ".b.json.tmp").write_text("not ours")
    assert clean_stale(tmp_path) == [stale.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.json.tmp", "a.json"]


# ------------------------------------------------------------------------------------------ divergence
def test_divergence_watch_growth_and_chance():
    from bioplaus.divergence import Divergence
    from bioplaus.errors import ConfigError, DivergedError

    w = Divergence.from_config({})
    w.update({"loss": 2.3}, 0, 0)
    w.update({"loss": 2.3e3 - 1}, 0, 1)                                     # under 1000x: fine
    with pytest.raises(DivergedError, match="loss 2.31e\\+03 is over 1000x the first update's 2.3"):
        w.update({"loss": 2.3e3 + 10}, 0, 2)
    w = Divergence.from_config({"chance_after": 2})
    w.update({"loss": 2.3}, 0, 0)
    w.epoch_end({"epoch": 0, "loss": 40.0, "test_acc": 0.1}, 1, 10, "classify")        # too early to judge
    w.epoch_end({"epoch": 1, "loss": 40.0, "test_acc": 0.5}, 2, 10, "classify")        # learns: fine
    w.epoch_end({"epoch": 1, "loss": 20.0, "test_acc": 0.1}, 2, 10, "classify")        # under 10x: fine
    with pytest.raises(DivergedError, match="test accuracy 0.100 is at chance"):
        w.epoch_end({"epoch": 1, "loss": 40.0, "test_acc": 0.1}, 2, 10, "classify")
    restored = Divergence.from_config({})
    restored.load_state(w.state())
    assert restored.ref == 2.3
    off = Divergence.from_config(None)
    off.update({"loss": 1.0}, 0, 0)
    off.update({"loss": 1e30}, 0, 1)
    for bad, msg in (({"factor": "x"}, "factor must be a number"), ({"factor": 0.5}, "factor must be >= 1"),
                     ({"chance_after": 1.5}, "chance_after must be a number"), ({"typo": 1}, "unknown")):
        with pytest.raises(ConfigError, match=msg):
            Divergence.from_config(bad)


def test_dataset_refuses_labels_outside_its_classes_and_count_mismatches():
    import torch

    from bioplaus.data import Dataset
    from bioplaus.errors import ConfigError

    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ConfigError, match="train labels span 0..3, outside 0..2"):
        Dataset("d", x, y, x, y.clamp(max=2), 3)
    with pytest.raises(ConfigError, match="4 test samples but 3 test labels"):
        Dataset("d", x, y, x, y[:3], 4)
