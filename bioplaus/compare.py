"""Comparison tables and plots from a sweep directory; the multirun callback and `bioplaus-compare`.

`compare(sweep_dir)` reads every `**/metrics.json` below sweep_dir (and every failed job's `failed.json`),
groups runs by (data, model, rule label, variant, model/data/trainer config), aggregates over seeds
(bioplaus.aggregate: mean ± std, n, 95% t interval), adds each group's margin over the `readout_only` control on
the same data, model config and trainer (paired by seed, with its interval), a rank that states an order only where
intervals separate (overlapping rows share a rank: tied), capacity (params, trained params, inference MACs / SOPs
per sample, training MACs per update) and costs, and writes (atomically) into sweep_dir:

    comparison.md   the table (also printed)
    comparison.csv  one row per group, plain numbers
    comparison.png  test accuracy vs training time and vs inference energy per sample (bars: 95% intervals)

    bioplaus-compare multirun/2026-11-23/12-00-00

Failed jobs get a row each with their status (diverged, error, crashed) and error line (`status`, `error`
columns). The rule label is the rule's config name (`ep_paper` beside `ep`) or a user class's name. The variant of
a run is the config's `variant` (tuned, paper; nothing for default) plus the values of the swept keys other than
seeds and the labels (rule, model, data, arm, experiment), e.g. `trainer.optimizer.lr=0.01`. Nothing is selected
on test data: each run reports its last epoch's test accuracy.
Runs are never mixed silently: runs whose command-line overrides differ in a key the sweep did not sweep
(`multirun.yaml`; without one, in anything but a config group; `arm`, a comparison's unit, may always differ: one
sweep per arm, as experiments/pipeline.py runs them, is one comparison), runs with the same overrides but different
configs, and one config and seed found twice are each refused with one ConfigError naming the keys and dirs.
A damaged metrics.json or failed.json is refused naming the file.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from pathlib import Path

from bioplaus.aggregate import margin, rank_groups, summarise
from bioplaus.atomic import atomic_write
from bioplaus.errors import ConfigError
from bioplaus.rundir import FAILED, config_diff, describe
from bioplaus.sweep import GROUPS, override_map

CONTROL = "readout_only"
COLUMNS = ["data", "model", "rule", "variant", "seeds", "metric", "test_acc", "test_acc_std", "test_acc_lo",
           "test_acc_hi", "margin_vs_control", "margin_lo", "margin_hi", "rank", "params", "trained_params",
           "mac_per_sample", "sop_per_sample", "train_mac_per_step", "train_acc", "train_time_s", "time_per_step_ms",
           "peak_mem_mb", "saved_for_backward_mb", "energy_uj_per_sample", "firing_rate", "train_energy_mj_per_step",
           "epochs", "status", "error"]
REQUIRED = ("data", "model", "rule", "test_acc", "train_acc", "train_time_s", "peak_mem_mb", "epochs")
LABELS = ("rule", "model", "data", "arm", "experiment")     # override keys the row labels already show
NAN = float("nan")


def _read(path: Path) -> dict:
    """One run record (metrics.json / failed.json), or a ConfigError naming the file and what is wrong."""
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): the file is "
                          "damaged or cut short; rerun that job or move it away") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read ({e}): rerun that job or move it away") from None
    if not isinstance(rec, dict):
        raise ConfigError(f"{path} holds no JSON object: not a bioplaus-run record")
    return rec


def load_runs(sweep_dir: str | Path) -> list[dict]:
    """Every run record below sweep_dir: finished runs (status ok) and failed jobs (their failed.json), each with
    its dir under `_path`."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a directory: give the sweep dir of a multirun")
    runs = []
    for p in sorted(sweep_dir.rglob("metrics.json")):
        rec = _read(p)
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise ConfigError(f"{p} lacks {', '.join(missing)}: not a bioplaus-run metrics.json")
        runs.append({**rec, "status": "ok", "error": "", "_path": p.parent})
    for p in sorted(sweep_dir.rglob(FAILED)):
        if not (p.parent / "metrics.json").exists():
            rec = _read(p)
            runs.append({"data": "?", "model": "?", "rule": "?", **rec, "status": str(rec.get("status", "error")),
                         "error": str(rec.get("error", "")), "_path": p.parent})
    if not runs:
        raise ConfigError(f"no metrics.json under {sweep_dir}: did the runs finish? (each run writes one)")
    return runs


def swept_keys(sweep_dir: str | Path) -> set[str] | None:
    """The keys the sweep(s) under sweep_dir swept (comma lists, ranges, sweeper params in multirun.yaml), or None
    where no multirun.yaml says."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    files = [sweep_dir / "multirun.yaml"] if (sweep_dir / "multirun.yaml").is_file() else \
        sorted(sweep_dir.rglob("multirun.yaml"))
    if not files:
        return None
    parser, keys = OverridesParser.create(), set()
    for f in files:
        try:
            cfg = OmegaConf.load(f)
            task = list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])
            params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
            parsed = parser.parse_overrides(task + [f"{k}={v}" for k, v in params.items()])
        except Exception as e:                     # noqa: BLE001 - a damaged record: name it
            raise ConfigError(f"{f} cannot be read ({str(e).splitlines()[0]}): the sweep's record is damaged") from None
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys


def check_mix(runs: list[dict], swept: set[str] | None) -> list[str]:
    """Refuse runs that must not share one table (see the module docstring); return the variant keys: the
    swept keys that vary besides seeds and labels. Runs without a recorded config and overrides are let be."""
    recs = [r for r in runs if r.get("overrides") is not None and r.get("config") is not None]
    maps = [override_map(r["overrides"]) for r in recs]
    varying = sorted(k for k in set().union(*maps) if len({m.get(k, "<unset>") for m in maps}) > 1)
    allowed = {"seed", "arm"} | (set(GROUPS) if swept is None else swept)    # an arm is a comparison's unit
    bad = [k for k in varying if k not in allowed]
    if bad:
        k, v0 = bad[0], maps[0].get(bad[0], "<unset>")
        i = next(i for i, m in enumerate(maps) if m.get(k, "<unset>") != v0)
        why = "the sweep did not sweep" if swept is not None else "no multirun.yaml says were swept"
        raise ConfigError(f"runs differ in {', '.join(bad)}, which {why} (e.g. {k}={v0} in {recs[0]['_path']} vs "
                          f"{k}={maps[i].get(k, '<unset>')} in {recs[i]['_path']}): two sweeps in one dir are not one "
                          "comparison; compare them separately")
    groups: dict[tuple, list[dict]] = {}
    for r, m in zip(recs, maps):
        groups.setdefault(tuple(sorted((k, v) for k, v in m.items() if k != "seed")), []).append(r)
    for rs in groups.values():
        seen: dict = {}
        for r in rs:
            diff = {k: v for k, v in config_diff(rs[0]["config"], r["config"]).items() if k != "seed"}
            if diff:
                raise ConfigError(f"{rs[0]['_path']} and {r['_path']} have the same overrides but different configs "
                                  f"({describe(diff)}): they were made by different versions; compare them "
                                  "separately")
            seed = r["config"].get("seed")
            if seed in seen:
                raise ConfigError(f"{seen[seed]} and {r['_path']} are the same config and seed {seed}: one run would "
                                  "count twice; move one away")
            seen[seed] = r["_path"]
    return [k for k in varying if k != "seed" and k not in LABELS]


def _variant(run: dict, keys: list[str]) -> str:
    """The row's variant: the config's `variant` (tuned, paper, ...; nothing for default) and the values of the
    swept keys other than seeds and labels."""
    parts = [str(run["variant"])] if run.get("variant") not in (None, "", "default") else []
    if keys and run.get("overrides") is not None:
        m = override_map(run["overrides"])
        parts += [f"{k}={m.get(k, '<unset>')}" for k in keys]
    return " ".join(parts)


def label(run: dict) -> str:
    """The rule column: the rule's config name (rule_config: `ep_paper`, not the class's `ep`) or its name."""
    return str(run.get("rule_config") or run["rule"])


def score(run: dict) -> float:
    """The number a run is ranked by: its metrics.json `metric` key (test_auc for link prediction; runs written
    before the key existed: test_acc). The table's test_acc columns hold it, and its `metric` column names it."""
    key = run.get("metric") or "test_acc"
    if not isinstance(run.get(key), (int, float)):
        raise ConfigError(f"{run.get('_path', 'a run')} names metric '{key}' but has no number for it")
    return float(run[key])


def _stat(run: dict, key: str) -> float:
    return float(run.get("stats", {}).get(key, float("nan")))


def _mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def _failed_row(r: dict, variant: str) -> dict:
    """A failed job's row: its labels, status and error line; every number NaN."""
    row = {k: NAN for k in COLUMNS}
    row.update(data=r["data"], model=r["model"], rule=label(r), seeds=1, epochs=r.get("config", {}).get(
        "trainer", {}).get("epochs", "") if isinstance(r.get("config"), dict) else "", variant=variant,
        status=r["status"], error=r["error"], seed=r.get("seed"), rank="", metric="")
    return row


def _setting(r: dict) -> str:
    """What a control must share with a row: the model and data config and the budget (epochs, batch size): a
    control of another width or budget is no control. Learning rates may differ (each arm's own tuning). The
    labels alone where no config was recorded."""
    c = r.get("config")
    if not isinstance(c, dict):
        return ""
    t = c.get("trainer") if isinstance(c.get("trainer"), dict) else {}
    return json.dumps({"model": c.get("model"), "data": c.get("data"), "epochs": t.get("epochs"),
                       "batch_size": t.get("batch_size")}, sort_keys=True, default=str)


def _control_for(key: tuple, setting: str, controls: dict) -> dict | None:
    """The control group for a row: same data, model and setting; the same variant first, else tuned, default."""
    data, model, variant = key
    for v in (variant, "tuned", ""):
        hit = controls.get((data, model, setting, v))
        if hit is not None:
            return hit
    return None


def table(runs: list[dict], variant_keys: list[str] | None = None) -> list[dict]:
    """One row per (data, model, rule label, variant) of the finished runs, aggregated over seeds
    (bioplaus.aggregate: mean, std, n, 95% t interval), with the margin over the control paired by seed and its
    interval, a rank that ties rows whose intervals overlap (within each data set), capacity (parameters,
    inference MACs / SOPs per sample, training MACs per update) and costs; then one row per failed job."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:                                  # an arm is its own row even where its config merely sets a
        if r.get("status", "ok") == "ok":           # rule option (forward_gnn's variant): the arm is the unit
            arm = override_map(r.get("overrides") or []).get("arm") or ""
            key = (r["data"], r["model"], label(r), _variant(r, variant_keys or []), _setting(r), arm)
            groups.setdefault(key, []).append(r)
    controls = {(d, m, st, v): rs for (d, m, rule, v, st, _), rs in groups.items() if rule == CONTROL}
    rows = []
    for (data, model, rule, variant, setting, arm), rs in groups.items():
        acc = summarise([score(r) for r in rs])
        row = {"data": data, "model": model, "rule": rule, "variant": variant, "status": "ok", "error": "",
               "metric": rs[0].get("metric") or "test_acc",
               "arm": arm.rsplit("/", 1)[-1],
               "seeds": acc.n, "test_acc": acc.mean, "test_acc_std": acc.std, "test_acc_lo": acc.lo,
               "test_acc_hi": acc.hi, "_summary": acc}
        ctrl = _control_for((data, model, variant), setting, controls)      # the control: 0 against itself
        if ctrl is not None:
            m = margin({r.get("seed", i): score(r) for i, r in enumerate(rs)},
                       {r.get("seed", i): score(r) for i, r in enumerate(ctrl)})
            row.update(margin_vs_control=m.mean, margin_lo=m.lo, margin_hi=m.hi)
        else:
            row.update(margin_vs_control=NAN, margin_lo=NAN, margin_hi=NAN)
        row.update({
            "params": _mean([r.get("params", NAN) for r in rs]),
            "trained_params": _mean([r.get("trained_params", NAN) for r in rs]),
            "mac_per_sample": _mean([_stat(r, "mac_per_sample") for r in rs]),
            "sop_per_sample": _mean([_stat(r, "sop_per_sample") for r in rs]),
            "train_mac_per_step": _mean([r.get("train_mac_per_step", NAN) for r in rs]),
            "train_acc": _mean([r["train_acc"] for r in rs]),
            "train_time_s": _mean([r["train_time_s"] for r in rs]),
            "time_per_step_ms": _mean([r.get("time_per_step_ms", NAN) for r in rs]),
            "peak_mem_mb": _mean([r["peak_mem_mb"] for r in rs]),
            "saved_for_backward_mb": _mean([r.get("saved_for_backward_mb", NAN) for r in rs]),
            "energy_uj_per_sample": _mean([_stat(r, "energy_pj_per_sample") * 1e-6 for r in rs]),
            "firing_rate": _mean([_stat(r, "mean_firing_rate") for r in rs]),
            "train_energy_mj_per_step": _mean([r.get("train_energy_pj_per_step", NAN) * 1e-9 for r in rs]),
            "epochs": rs[0]["epochs"],
        })
        rows.append(row)
    for data in {r["data"] for r in rows}:
        same = [r for r in rows if r["data"] == data]
        for r, k in zip(same, rank_groups([r["_summary"] for r in same])):
            r["rank"] = k
    for r in rows:
        del r["_summary"]
    seen: dict[tuple, int] = {}
    for r in rows:                                  # two arms, one rule label (backprop on two widths): name the arm
        k = (r["data"], r["model"], r["rule"], r["variant"])
        seen[k] = seen.get(k, 0) + 1
    for r in rows:
        if seen[(r["data"], r["model"], r["rule"], r["variant"])] > 1 and r["arm"]:
            r["rule"] = f"{r['rule']} [{r['arm']}]"
    rows.sort(key=lambda r: (r["data"], r["model"], r["variant"], r["rule"] == CONTROL, -r["test_acc"]))
    failed = [_failed_row(r, _variant(r, variant_keys or [])) for r in runs if r.get("status", "ok") != "ok"]
    return rows + sorted(failed, key=lambda r: (r["data"], r["model"], r["rule"], str(r["seed"])))


def _si(x: float) -> str:
    if x != x:
        return "—"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}"
    return f"{x:.0f}"


def _interval(lo: float, hi: float, signed: bool = False) -> str:
    if lo != lo or lo == hi:
        return ""
    f = "{:+.4f}" if signed else "{:.4f}"
    return f" [{f.format(lo)}, {f.format(hi)}]"


HEAD = ("| data | model | rule | variant | seeds | test acc (mean ± std) [95% CI] | vs readout_only [95% CI] | rank "
        "| params | trained params | MAC/sample | SOP/sample | train MAC/update | train acc | train time (s) "
        "| ms/step | peak mem (MB) | saved for bwd (MB) | energy/sample (µJ) | firing rate | epochs | status |")


def _named(row: dict) -> str:
    """' (test_auc)' after a score that is not test accuracy, else ''."""
    return "" if row.get("metric", "test_acc") == "test_acc" else f" ({row['metric']})"


def to_markdown(rows: list[dict]) -> str:
    """The comparison table. Rank: 1 + the rows (same data) whose 95% interval lies wholly above this row's; equal
    ranks are ties (their intervals overlap), so an order is stated only where the intervals separate."""
    lines = [HEAD, "|" + "---|" * 22]
    for r in rows:
        if r.get("status", "ok") != "ok":
            error = str(r["error"]).replace("|", "\\|")
            lines.append(f"| {r['data']} | {r['model']} | {r['rule']} | {r['variant']} | seed {r['seed']} |"
                         + " — |" * 15 + f" {r['epochs']} | **{r['status'].upper()}**: {error} |")
            continue
        margin_ = "—" if r["margin_vs_control"] != r["margin_vs_control"] or r["rule"] == CONTROL \
            else f"{r['margin_vs_control']:+.4f}" + _interval(r["margin_lo"], r["margin_hi"], signed=True)
        std = f" ± {r['test_acc_std']:.4f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['data']} | {r['model']} | {r['rule']} | {r['variant'] or '—'} | {r['seeds']} "
                     f"| {r['test_acc']:.4f}{std}{_interval(r['test_acc_lo'], r['test_acc_hi'])}{_named(r)} "
                     f"| {margin_} "
                     f"| {r['rank']} | {_si(r['params'])} | {_si(r['trained_params'])} | {_si(r['mac_per_sample'])} "
                     f"| {_si(r['sop_per_sample'])} | {_si(r['train_mac_per_step'])} | {r['train_acc']:.4f} "
                     f"| {r['train_time_s']:.1f} | {r['time_per_step_ms']:.2f} | {r['peak_mem_mb']:.1f} "
                     f"| {r['saved_for_backward_mb']:.2f} | {r['energy_uj_per_sample']:.3f} | {r['firing_rate']:.3f} "
                     f"| {r['epochs']} | ok |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Two panels: test accuracy vs training time and vs inference energy per sample (log x), one point per
    row with its 95% interval over seeds as the error bar, each row a colour / marker named in one shared legend
    (no labels on the points, so none overlap); x marks the readout_only control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    colours = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    handles: dict[str, object] = {}
    for ax, key, xlabel in ((axes[0], "train_time_s", "training time (s)"),
                            (axes[1], "energy_uj_per_sample", "inference energy per sample (µJ)")):
        for i, r in enumerate(ok):
            if not r[key] == r[key] or r[key] <= 0:                   # NaN or zero: nothing to place
                continue
            lo, hi = r["test_acc_lo"], r["test_acc_hi"]
            yerr = [[r["test_acc"] - lo], [hi - r["test_acc"]]] if lo == lo else None
            name = " ".join(x for x in (r["rule"], f"({r['variant']})" if r["variant"] else "",
                                        f"{r['model']}/{r['data']}", f"n={r['seeds']}") if x)
            h = ax.errorbar(r[key], r["test_acc"], yerr=yerr, fmt="x" if r["rule"] == CONTROL else "os^Dv<>p"[i % 8],
                            color=colours[i % len(colours)], capsize=3, markersize=7, label=name)
            handles.setdefault(name, h)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(labelsize=9)
        ax.set_xlabel(xlabel + ", log scale")
        ax.set_ylabel("test accuracy (bars: 95% CI over seeds)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("accuracy vs training time (x = readout_only control)")
    axes[1].set_title("accuracy vs inference energy")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)),
                   fontsize=8, frameon=False)
    rows_of_legend = -(-len(handles) // 3) if handles else 0
    fig.tight_layout(rect=(0, min(0.5, 0.045 * rows_of_legend + 0.02), 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def compare(sweep_dir: str | Path, echo: bool = True) -> list[dict]:
    """Write comparison.{md,csv,png} into sweep_dir from its runs; print the table; return the rows."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    rows = table(runs, check_mix(runs, swept_keys(sweep_dir)))
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
        from bioplaus import sweep

        try:
            compare(config.hydra.sweep.dir)
        except ConfigError as e:
            print(f"bioplaus-compare: error: {e}", file=sys.stderr)
            sweep.EXIT = 2


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
