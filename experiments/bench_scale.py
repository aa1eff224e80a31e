"""Scale-out on one machine: NoProp-DT trained sequentially (one process), data parallel (torchrun, the
global batch split over ranks) and block parallel (torchrun, each rank trains T/world blocks on the whole
batch), same data, seed and budget. Prints test accuracy, training time and the ratios to sequential.

Every arm gets the same cores: the single process runs with `--threads` x nproc torch threads, each rank
of the parallel arms with `--threads`. Training time is the trainer's own (no start-up or evaluation).

    python experiments/bench_scale.py                                  # digits, 2 processes
    python experiments/bench_scale.py --data fashion --n-train 10000 --nproc 2 --epochs 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, a, out: Path) -> dict:
    args = ["rule=noprop", "model=mlp", f"data={a.data}", f"trainer.epochs={a.epochs}", f"seed={a.seed}",
            "trainer.progress=false", "stats.enabled=false", f"hydra.run.dir={out}"]
    if a.n_train:
        args.append(f"data.n_train={a.n_train}")
    env = dict(os.environ)
    if kind == "sequential":
        env["OMP_NUM_THREADS"] = str(a.threads * a.nproc)
        cmd = [sys.executable, "-m", "bioplaus.run", *args, "trainer.ddp=false"]
    else:
        env["OMP_NUM_THREADS"] = str(a.threads)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={a.nproc}",
               f"--master_port={free_port()}", "-m", "bioplaus.run", *args, "trainer.ddp=true",
               f"rule.block_parallel={'true' if kind == 'block_parallel' else 'false'}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    m = json.loads((out / "metrics.json").read_text())
    return {"test_acc": m["test_acc"], "train_time_s": m["train_time_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import torch

    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; NoProp-DT (T=10) on "
          f"{a.data}{f' n_train={a.n_train}' if a.n_train else ''}, {a.epochs} epochs, seed {a.seed}, "
          f"{a.nproc} processes x {a.threads} thread(s)")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sequential", "data_parallel", "block_parallel"):
            rows[kind] = launch(kind, a, Path(tmp) / kind)
    base = rows["sequential"]["train_time_s"]
    print("| arm | test acc | train time (s) | speed-up vs sequential |")
    print("|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['test_acc']:.4f} | {r['train_time_s']:.1f} | {base / r['train_time_s']:.2f}x |")


if __name__ == "__main__":
    main()
