"""Checkpoint and resume: a run killed mid-training (SIGKILL) and rerun in the same directory ends with
exactly the metrics of an uninterrupted run with the same seed, and with exactly its files (no stale lock, temporary
file or checkpoint left); checkpoints are written atomically."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from bioplaus import checkpoint as ckpt

RUN = [sys.executable, "-m", "bioplaus.run"]
ARGS = ["model=spiking_mlp", "model.encoding=rate", "trainer.epochs=8", "trainer.checkpoint=true",
        "trainer.progress=false", "seed=4", "stats.enabled=false"]


def _run(out, **kw):
    return subprocess.run(RUN + ARGS + [f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300, **kw)


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    whole = _run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    ref = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    out = tmp_path / "killed"
    proc = subprocess.Popen(RUN + ARGS + [f"hydra.run.dir={out}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None:                                   # until a checkpoint exists (or the run ends)
        ck = ckpt.load(out / "checkpoint.pt") if (out / "checkpoint.pt").exists() else None
        if ck is not None and ck["epoch"] >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "metrics.json").exists()
    killed_at = ckpt.load(out / "checkpoint.pt")["epoch"]
    assert 1 <= killed_at < 7

    again = _run(out)
    assert again.returncode == 0, again.stderr
    assert f"resuming after epoch {killed_at}" in again.stdout
    got = json.loads((out / "metrics.json").read_text())
    assert got["history"] == ref["history"]                      # every epoch's loss and accuracy, exactly
    assert (got["test_acc"], got["train_acc"], got["steps"]) == (ref["test_acc"], ref["train_acc"], ref["steps"])
    assert got["saved_for_backward_mb"] == ref["saved_for_backward_mb"] > 0
    # no orphans: the same files as the uninterrupted run; the finished run's checkpoint, the killed run's lock and
    # any temporary file it left are gone
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert files == sorted(str(p.relative_to(tmp_path / "whole")) for p in (tmp_path / "whole").rglob("*"))
    assert "checkpoint.pt" not in files and not any(f.endswith((".tmp", ".lock")) for f in files)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save(path, {"epoch": 0, "w": torch.ones(3)})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(path, {"epoch": 1, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert ckpt.load(path)["epoch"] == 0 and torch.equal(ckpt.load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]      # no temporary file left behind
