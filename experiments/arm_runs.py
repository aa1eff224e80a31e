"""Shared by the paper-variant scripts (variants1.py, variants1_online.py): one `bioplaus-run` per arm and seed
into `<out>/<group>/<label>_s<seed>`, resumable, and the per-group arm table read back from those run dirs.

RUNS maps a group to its arms: [(label, overrides, seeds)]. A run whose metrics.json exists is skipped; a run
that fails is reported and the next one starts.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path

Runs = dict[str, list[tuple[str, list[str], list[int]]]]


def command(overrides: list[str], seed: int, run_dir: Path) -> list[str]:
    return ["bioplaus-run", *overrides, f"seed={seed}", "trainer.progress=false", f"hydra.run.dir={run_dir}"]


def jobs(runs: Runs, groups):
    """(group, label, seed, overrides) of every run of the groups."""
    for group in groups:
        for label, overrides, seeds in runs[group]:
            for seed in seeds:
                yield group, label, seed, overrides


def commands(runs: Runs, out: Path, groups) -> list[str]:
    return [f"OMP_NUM_THREADS=1 {' '.join(command(o, seed, out / g / f'{label}_s{seed}'))}"
            for g, label, seed, o in jobs(runs, groups)]


def run(runs: Runs, out: Path, groups) -> None:
    """Every run not finished yet, one at a time with one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for group, label, seed, overrides in jobs(runs, groups):
        run_dir = out / group / f"{label}_s{seed}"
        if (run_dir / "metrics.json").exists():
            continue
        print(" ".join(command(overrides, seed, run_dir)), flush=True)
        done = subprocess.run(command(overrides, seed, run_dir), env=env)
        if done.returncode:
            print(f"  failed (exit {done.returncode}); going on", flush=True)


def arm_table(runs: Runs, out: Path, group: str, mb_digits: int = 2) -> list[str]:
    """The group's markdown table (arms in RUNS order; seeds, mean ± std, margin over readout_only, train acc,
    memory held / saved for backward, peak RSS growth, train time), or [] when none of its runs finished."""
    rows: dict[str, list[dict]] = {}
    for _, label, seed, _ in jobs(runs, [group]):
        path = out / group / f"{label}_s{seed}" / "metrics.json"
        if path.exists():
            rows.setdefault(label, []).append(json.loads(path.read_text()))
    if not rows:
        return []
    control = statistics.fmean(r["test_acc"] for r in rows["readout_only"]) if "readout_only" in rows else None
    lines = [f"\n### {group}\n", "| arm | seeds | test acc | vs readout_only | train acc | held for backward "
             "(MB, 1st update) | saved for backward (MB) | peak RSS growth (MB) | train time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, rs in rows.items():
        acc = [r["test_acc"] for r in rs]
        sd = f" ± {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        mean = statistics.fmean(acc)
        margin = "—" if control is None or label == "readout_only" else f"{mean - control:+.4f}"
        per = ", ".join(f"{a:.4f}" for a in acc)
        lines.append(f"| {label} | {len(rs)} ({per}) | **{mean:.4f}**{sd} | {margin} | "
                     f"{statistics.fmean(r['train_acc'] for r in rs):.4f} | "
                     f"{statistics.fmean(r['held_for_backward_peak_mb'] for r in rs):.{mb_digits}f} | "
                     f"{statistics.fmean(r['saved_for_backward_mb'] for r in rs):.{mb_digits}f} | "
                     f"{statistics.fmean(r['peak_mem_mb'] for r in rs):.0f} | "
                     f"{statistics.fmean(r['train_time_s'] for r in rs):.0f} |")
    return lines
