"""Tune, then compare over seeds, arm by arm: the whole of a protocol's comparison as one resumable job.

    python experiments/pipeline.py --protocol fashion --trials 8 --workers 2 --out /work/runs
    python experiments/tables.py experiments/results/rules.md fashion=/work/runs/cmp/fashion

Each worker takes the next arm from the queue (cheapest first, so results arrive early) and, with one torch thread:
1. tunes it, unless it is a paper preset (compared untuned):
   `python experiments/tune.py --protocol P --arms ARM --trials N --out OUT/tune` (writes configs/arm/tuned/P/ARM.yaml);
2. runs it for every seed on the protocol as it is:
   `bioplaus-run -m +protocol=P +arm=tuned/P/ARM seed=0,1,2 threads=1 hydra.sweep.dir=OUT/cmp/P/ARM`.
A step whose output is complete (the study's optimization_results.yaml; a metrics.json per seed) is skipped, so the
job resumes where it stopped. One arm failing never stops the others; failures are listed at the end and the exit
status is non-zero. Logs go to OUT/logs/P/ARM.log.
"""
from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from tune import ARMS, RUN  # noqa: E402

PAPER = {"digits": ["fa_paper_mlp", "dfa_paper_mlp", "sign_symmetry_paper_mlp", "ccl_paper_mlp", "ff_paper_mlp",
                    "ep_paper_mlp", "perforated_paper_mlp", "tess_paper_spiking_mlp", "eprop_paper_recurrent_alif",
                    "noprop_paper_mlp"]}
PAPER["fashion"] = list(PAPER["digits"])
PAPER["sbm"] = ["forward_gnn_paper_gcn"]
COST = ["readout_only_mlp", "fa_mlp", "dfa_mlp", "sign_symmetry_mlp", "bp_mlp", "fa_paper_mlp", "dfa_paper_mlp",
        "sign_symmetry_paper_mlp", "perforated_paper_mlp", "perforated_mlp", "ccl_mlp", "ccl_paper_mlp", "ff_mlp",
        "ff_paper_mlp", "readout_only_spiking_mlp", "readout_only_recurrent_spiking", "readout_only_recurrent_alif",
        "bptt_recurrent_spiking", "eprop_recurrent_spiking", "bptt_spiking_mlp", "tess_spiking_mlp",
        "tess_paper_spiking_mlp", "ep_mlp", "ep_paper_mlp", "bp_wide_mlp", "noprop_mlp", "noprop_bp_mlp",
        "eprop_paper_recurrent_alif", "noprop_paper_mlp", "readout_only_gcn", "bp_gcn", "forward_gnn_gcn",
        "forward_gnn_top2input_gcn", "forward_gnn_top2loss_gcn", "forward_gnn_la_gcn", "forward_gnn_vn_gcn",
        "forward_gnn_paper_gcn"]


def order(arms: list[str]) -> list[str]:
    """arms sorted by the measured cost ranking above (unknown arms last, in their given order)."""
    rank = {a: i for i, a in enumerate(COST)}
    return sorted(arms, key=lambda a: rank.get(a, len(COST)))


def run_arm(protocol: str, arm: str, trials: int, seeds: str, out: Path) -> str | None:
    """Tune (unless a paper preset) and compare one arm; return an error line, or None."""
    log = out / "logs" / protocol / f"{arm}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("a") as fh:
        def step(cmd: list[str]) -> bool:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode == 0

        tuned = arm not in PAPER.get(protocol, [])
        if tuned and not step([sys.executable, "experiments/tune.py", "--protocol", protocol, "--arms", arm,
                               "--trials", str(trials), "--out", str(out / "tune")]):
            return f"{arm}: tuning failed (see {log})"
        name = f"tuned/{protocol}/{arm}" if tuned else arm
        sweep = out / "cmp" / protocol / arm
        n_seeds = len(seeds.split(","))
        if len(list(sweep.glob("*/metrics.json"))) >= n_seeds:
            return None
        if not step([*RUN, "-m", f"+protocol={protocol}", f"+arm={name}", f"seed={seeds}", "threads=1",
                     "trainer.progress=false", f"hydra.sweep.dir={sweep}"]):
            return f"{arm}: comparison failed (see {log})"
    return None


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, choices=sorted(ARMS))
    ap.add_argument("--arms", default=None, help="comma list (default: the protocol's tuned arms and paper presets)")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2, help="arms at once (one torch thread each)")
    ap.add_argument("--out", type=Path, default=Path("multirun"))
    args = ap.parse_args(argv)
    arms = args.arms.split(",") if args.arms else ARMS[args.protocol] + PAPER.get(args.protocol, [])
    unknown = [a for a in arms if not (ROOT / "configs" / "arm" / f"{a}.yaml").exists()]
    if unknown:
        raise SystemExit(f"pipeline.py: no configs/arm/{unknown[0]}.yaml; pick arms from configs/arm/")
    todo: queue.Queue[str] = queue.Queue()
    for a in order(arms):
        todo.put(a)
    errors: list[str] = []

    def worker() -> None:
        while True:
            try:
                arm = todo.get_nowait()
            except queue.Empty:
                return
            err = run_arm(args.protocol, arm, args.trials, args.seeds, args.out.resolve())
            print(err or f"{arm}: done", flush=True)
            if err:
                errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("pipeline.py: " + "; ".join(errors))


if __name__ == "__main__":
    main(sys.argv[1:])
