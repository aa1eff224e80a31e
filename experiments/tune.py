"""Tune every arm of a comparison with the same budget, and write each winner as a config.

    python experiments/tune.py --protocol fashion                 # every arm of the protocol, 12 trials each
    python experiments/tune.py --protocol digits --arms bp_mlp,fa_mlp --trials 12 --jobs 2

For each arm (configs/arm/<arm>.yaml) this runs one Optuna study (Hydra's Optuna sweeper, TPE, seed 0):

    bioplaus-run -m experiment=tune +protocol=<protocol> +arm=<arm> +search=<rule> hydra.sweeper.n_trials=<N>

The space is experiment=tune's shared one (the trainer's lr, log-uniform) plus the rule's own hyperparameters
in configs/search/<rule>.yaml (at most two); the objective is the accuracy on a held-out 10% of the training set
(`val_acc`; a protocol may name another key, e.g. sbm_link's val_auc), never the test set. Every arm gets the
same number of trials, backprop and the readout_only control included. The winner is written to
configs/arm/tuned/<protocol>/<arm>.yaml (the arm's own config plus the best values and `variant: tuned`), which
the comparison experiments use, and the search (trials, best values, cost) to
experiments/results/tuning_<protocol>.md. Studies go to multirun/tune/<protocol>/<arm>/; a study whose
optimization_results.yaml exists is read, not rerun (delete that folder to search again).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

RUN = [sys.executable, "-m", "bioplaus.run"]    # bioplaus-run of this interpreter (whatever PATH says)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ARMS = {   # the arms of each protocol's comparison (the paper presets are compared untuned, beside these)
    "digits": ["bp_mlp", "readout_only_mlp", "fa_mlp", "dfa_mlp", "sign_symmetry_mlp", "ccl_mlp", "noprop_mlp",
               "ff_mlp", "ep_mlp", "bptt_spiking_mlp", "readout_only_spiking_mlp", "tess_spiking_mlp",
               "eprop_recurrent_spiking", "bptt_recurrent_spiking", "readout_only_recurrent_spiking",
               "noprop_bp_mlp", "bp_wide_mlp", "perforated_mlp", "readout_only_recurrent_alif"],
}
ARMS["fashion"] = list(ARMS["digits"])
ARMS["sbm_link"] = ["bp_gcn", "readout_only_gcn", "forward_gnn_gcn", "forward_gnn_ff_gcn"]
ARMS["sbm"] = ["bp_gcn", "readout_only_gcn", "forward_gnn_gcn", "forward_gnn_top2input_gcn", "forward_gnn_top2loss_gcn",
               "forward_gnn_la_gcn", "forward_gnn_vn_gcn"]


OBJECTIVE = {"sbm_link": "val_auc"}    # what a protocol's studies maximise where it is not val_acc


def objective(protocol: str) -> str:
    """The metrics.json key a protocol's studies maximise (passed to each study as `objective=`): val_acc, or the
    protocol's entry in OBJECTIVE (link prediction: val_auc). Only studies return it; comparison runs return nothing."""
    return OBJECTIVE.get(protocol, "val_acc")


def arm_rule(arm: str) -> str:
    """The rule an arm selects (its `override /rule: <name>` line)."""
    text = (CONFIGS / "arm" / f"{arm}.yaml").read_text()
    m = re.search(r"override /rule:\s*([a-z_0-9]+)", text)
    if m is None:
        raise SystemExit(f"tune.py: configs/arm/{arm}.yaml selects no rule (override /rule: ...)")
    return m.group(1)


def study(protocol: str, arm: str, trials: int, out: Path, extra: list[str] = ()) -> dict:
    """Run (or read) one arm's study; return its trials and best values."""
    result = out / "optimization_results.yaml"
    rule = arm_rule(arm)
    search = [f"+search={rule}"] if (CONFIGS / "search" / f"{rule}.yaml").exists() else []
    cmd = [*RUN, "-m", "experiment=tune", f"+protocol={protocol}", f"+arm={arm}", *search,
           f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={out}", "~hydra.callbacks.compare",
           f"objective={objective(protocol)}", *extra]
    wall = None
    if not result.exists():
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
        if r.returncode != 0 or not result.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"arm": arm, "rule": rule, "error": tail[0], "command": " ".join(cmd)}
    best = yaml.safe_load(result.read_text())
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*/metrics.json"))]
    return {"arm": arm, "rule": rule, "best_params": best["best_params"], "best_value": best["best_value"],
            "trials": len(rows) + len(list(out.glob("*/failed.json"))),        # a diverged trial counts too
            "finished": sum(objective(protocol) in m for m in rows),
            "train_time_s": sum(m.get("train_time_s", 0.0) for m in rows), "wall_s": wall,
            "command": " ".join(cmd)}


def nested(params: dict) -> dict:
    """{"trainer.optimizer.lr": 1e-3} -> {"trainer": {"optimizer": {"lr": 1e-3}}}."""
    out: dict = {}
    for key, value in params.items():
        *path, last = key.split(".")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    """base with extra merged in, key by key (nested dicts merged, other values replaced)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_tuned(protocol: str, res: dict) -> Path:
    """configs/arm/tuned/<protocol>/<arm>.yaml: the arm's config, the best values and `variant: tuned`."""
    arm = res["arm"]
    src = (CONFIGS / "arm" / f"{arm}.yaml").read_text()
    notes = [ln for ln in src.splitlines() if ln.startswith("#") and not ln.startswith("# @package")]
    cfg = merge(yaml.safe_load(src) or {}, nested({**res["best_params"], "variant": "tuned"}))
    path = CONFIGS / "arm" / "tuned" / protocol / f"{arm}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["# @package _global_",
                               f"# Tuned for the {protocol} protocol by experiments/tune.py ({res['trials']} TPE "
                               f"trials, seed 0; objective {objective(protocol)} on trainer.val_fraction=0.1): best "
                               f"{res['best_value']:.4f}.",
                               f"# Regenerate: python experiments/tune.py --protocol {protocol} --arms {arm}", *notes])
                    + "\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def report(protocol: str, results: list[dict], trials: int, argv: list[str]) -> Path:
    import torch

    held = (" (edges and as many non-edges; the held-out edges leave the message-passing graph)"
            if objective(protocol) == "val_auc" else "")
    lines = [f"# Tuning: the {protocol} protocol, {trials} trials for every arm", "",
             f"Generated by `python experiments/tune.py {' '.join(argv)}` on {time.strftime('%Y-%m-%d')}: "
             f"{platform.node() or 'host'} ({os.cpu_count()} cores), Python {platform.python_version()}, "
             f"torch {torch.__version__}. Each arm: one Optuna study (TPE, seed 0, 5 random start-up trials), "
             f"objective {objective(protocol)} on a held-out 10% of the training set{held}; shared space "
             "trainer.optimizer.lr "
             "log-uniform in [1e-4, 3e-2] plus the rule's own (configs/search/<rule>.yaml). Jobs ran with "
             "OMP_NUM_THREADS=1.", "",
             f"| arm | rule | trials finished / run (a diverged trial scores worst) | best {objective(protocol)} "
             "| best values | training time of all trials (s) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['arm']} | {r['rule']} | — | failed: {r['error']} | — | — |")
            continue
        vals = ", ".join(f"{k.replace('trainer.optimizer.', '')}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in sorted(r["best_params"].items()))
        lines.append(f"| {r['arm']} | {r['rule']} | {r['finished']}/{r['trials']} | {r['best_value']:.4f} | {vals} "
                     f"| {r['train_time_s']:.0f} |")
    path = ROOT / "experiments" / "results" / f"tuning_{protocol}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, choices=sorted(ARMS))
    ap.add_argument("--arms", default=None, help="comma list (default: every arm of the protocol)")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=1, help="studies run at once (one thread each)")
    ap.add_argument("--out", default="multirun/tune")
    ap.add_argument("overrides", nargs="*", help="extra overrides for every trial (e.g. trainer.epochs=2 for a smoke "
                                                 "test; a real search uses the protocol as it is)")
    args = ap.parse_args(argv)
    arms = args.arms.split(",") if args.arms else ARMS[args.protocol]
    out = Path(args.out) / args.protocol
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda a: study(args.protocol, a, args.trials, out / a, args.overrides), arms))
    done = {r["arm"] for r in results}                      # the table also lists studies run earlier
    results += [study(args.protocol, a, args.trials, out / a) for a in ARMS[args.protocol]
                if a not in done and (out / a / "optimization_results.yaml").exists()]
    for r in results:
        if "error" not in r:
            path = write_tuned(args.protocol, r)
            print(f"{r['arm']}: best {objective(args.protocol)} {r['best_value']:.4f} {r['best_params']} -> {path}")
        else:
            print(f"{r['arm']}: FAILED ({r['error']})", file=sys.stderr)
    print(report(args.protocol, results, args.trials, argv))


if __name__ == "__main__":
    main(sys.argv[1:])
