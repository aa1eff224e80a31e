"""Comparison tables and plots from a sweep directory; the multirun callback and `bioplaus-compare`.

`compare(sweep_dir)` reads every `**/metrics.json` below sweep_dir, groups runs by (data, model, rule),
averages over seeds (mean ± std), adds each group's margin over the `readout_only` control on the same
model and data, and writes (atomically) into sweep_dir:

    comparison.md   the table (also printed)
    comparison.csv  one row per group, plain numbers
    comparison.png  test accuracy vs training time and vs inference energy per sample (error bars over seeds)

    bioplaus-compare multirun/2026-11-23/12-00-00
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from pathlib import Path

from bioplaus.atomic import atomic_write
from bioplaus.errors import ConfigError

CONTROL = "readout_only"
COLUMNS = ["data", "model", "rule", "seeds", "test_acc", "test_acc_std", "margin_vs_control", "train_acc",
           "train_time_s", "time_per_step_ms", "peak_mem_mb", "saved_for_backward_mb", "energy_uj_per_sample",
           "sop_per_sample", "mac_per_sample", "firing_rate", "train_energy_mj_per_step", "epochs"]


def load_runs(sweep_dir: str | Path) -> list[dict]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a directory: give the sweep dir of a multirun")
    runs = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("metrics.json"))]
    if not runs:
        raise ConfigError(f"no metrics.json under {sweep_dir}: did the runs finish? (each run writes one)")
    return runs


def _stat(run: dict, key: str) -> float:
    return float(run.get("stats", {}).get(key, float("nan")))


def _mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def table(runs: list[dict]) -> list[dict]:
    """One row per (data, model, rule), averaged over seeds, with the margin over the control."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["data"], r["model"], r["rule"]), []).append(r)
    rows = []
    for (data, model, rule), rs in groups.items():
        acc = [r["test_acc"] for r in rs]
        rows.append({
            "data": data, "model": model, "rule": rule, "seeds": len(rs),
            "test_acc": _mean(acc), "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "train_acc": _mean([r["train_acc"] for r in rs]),
            "train_time_s": _mean([r["train_time_s"] for r in rs]),
            "time_per_step_ms": _mean([r.get("time_per_step_ms", float("nan")) for r in rs]),
            "peak_mem_mb": _mean([r["peak_mem_mb"] for r in rs]),
            "saved_for_backward_mb": _mean([r.get("saved_for_backward_mb", float("nan")) for r in rs]),
            "energy_uj_per_sample": _mean([_stat(r, "energy_pj_per_sample") * 1e-6 for r in rs]),
            "sop_per_sample": _mean([_stat(r, "sop_per_sample") for r in rs]),
            "mac_per_sample": _mean([_stat(r, "mac_per_sample") for r in rs]),
            "firing_rate": _mean([_stat(r, "mean_firing_rate") for r in rs]),
            "train_energy_mj_per_step": _mean([r.get("train_energy_pj_per_step", float("nan")) * 1e-9 for r in rs]),
            "epochs": rs[0]["epochs"],
        })
    control = {(r["data"], r["model"]): r["test_acc"] for r in rows if r["rule"] == CONTROL}
    for r in rows:
        c = control.get((r["data"], r["model"]))
        r["margin_vs_control"] = r["test_acc"] - c if c is not None else float("nan")
    rows.sort(key=lambda r: (r["data"], r["model"], r["rule"] == CONTROL, -r["test_acc"]))
    return rows


def _si(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.0f}"


def to_markdown(rows: list[dict]) -> str:
    head = ("| data | model | rule | seeds | test acc | vs readout_only | train acc | train time (s) "
            "| ms/step | peak mem (MB) | saved for bwd (MB) | energy/sample (µJ) | SOP/sample | MAC/sample "
            "| firing rate | train energy/step (mJ) | epochs |")
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        margin = "—" if r["margin_vs_control"] != r["margin_vs_control"] or r["rule"] == CONTROL \
            else f"{r['margin_vs_control']:+.4f}"
        std = f" ± {r['test_acc_std']:.4f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['data']} | {r['model']} | {r['rule']} | {r['seeds']} | {r['test_acc']:.4f}{std} "
                     f"| {margin} | {r['train_acc']:.4f} | {r['train_time_s']:.1f} | {r['time_per_step_ms']:.2f} "
                     f"| {r['peak_mem_mb']:.1f} | {r['saved_for_backward_mb']:.2f} | {r['energy_uj_per_sample']:.3f} "
                     f"| {_si(r['sop_per_sample'])} | {_si(r['mac_per_sample'])} | {r['firing_rate']:.3f} "
                     f"| {r['train_energy_mj_per_step']:.3f} | {r['epochs']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Two panels: test accuracy vs training time and vs inference energy per sample (log x), one
    point per (model, rule) with error bars over seeds; x marks the readout_only control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, xlabel in ((axes[0], "train_time_s", "training time (s)"),
                            (axes[1], "energy_uj_per_sample", "inference energy per sample (µJ)")):
        for r in rows:
            if not r[key] == r[key] or r[key] <= 0:          # NaN or zero: nothing to place on a log axis
                continue
            ax.errorbar(r[key], r["test_acc"], yerr=r["test_acc_std"], fmt="x" if r["rule"] == CONTROL else "o",
                        capsize=3)
            ax.annotate(f"{r['rule']}\n{r['model']}/{r['data']}", (r[key], r["test_acc"]),
                        textcoords="offset points", xytext=(5, 3), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(xlabel + ", log scale")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy vs training time (x = readout_only control)")
    axes[1].set_title("accuracy vs inference energy")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def compare(sweep_dir: str | Path, echo: bool = True) -> list[dict]:
    """Write comparison.{md,csv,png} into sweep_dir from its runs; print the table; return the rows."""
    sweep_dir = Path(sweep_dir)
    rows = table(load_runs(sweep_dir))
    md = to_markdown(rows)
    atomic_write(sweep_dir / "comparison.md", lambda tmp: Path(tmp).write_text(md))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows({k: r[k] for k in COLUMNS} for r in rows)
    atomic_write(sweep_dir / "comparison.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    plot(rows, sweep_dir / "comparison.png")
    if echo:
        print(f"\nComparison ({sweep_dir}):\n\n{md}")
    return rows


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


class CompareCallback(Callback):
    """Hydra callback: at the end of a multirun, write and print the comparison of its sweep dir."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            compare(config.hydra.sweep.dir)
        except ConfigError as e:
            print(f"bioplaus-compare: {e}", file=sys.stderr)


def cli(argv: list[str] | None = None) -> None:
    """Console script `bioplaus-compare SWEEP_DIR`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: bioplaus-compare SWEEP_DIR   (writes comparison.md/.csv/.png there)", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    try:
        compare(argv[0])
    except ConfigError as e:
        print(f"bioplaus-compare: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
