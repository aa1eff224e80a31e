"""How far healthy runs stay from the divergence watch's defaults (bioplaus.divergence): every shipped arm trained at
its default settings, recording the largest |loss| / first update's loss over all updates, over the epoch means, and
over the epochs (after the second) whose test accuracy sat at chance. The defaults stop a run at 1000 (any update)
and at 10 (at chance); a healthy run should stay near 1.

    OMP_NUM_THREADS=1 python experiments/divergence_margins.py [--epochs-scale 0.5] [--only quickstart,graph]

Prints one row per arm; the recorded figures are in experiments/results/divergence.md.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from hydra import compose, initialize_config_module

import bioplaus.train
from bioplaus import divergence
from bioplaus.run import build
from bioplaus.train import train

# (experiment, arms, epochs): the experiments' own budgets, shortened where one epoch takes minutes on a CPU
PLAN = [
    ("quickstart", "bp_mlp,readout_only_mlp,bptt_spiking_mlp,readout_only_spiking_mlp,fa_mlp,dfa_mlp,"
                   "sign_symmetry_mlp,ccl_mlp,noprop_mlp,ff_mlp,ep_mlp", 15),
    ("temporal", "tess_spiking_mlp,eprop_recurrent_spiking,bptt_recurrent_spiking,readout_only_recurrent_spiking", 4),
    ("graph", "bp_gcn,forward_gnn_gcn,forward_gnn_la_gcn,forward_gnn_vn_gcn,readout_only_gcn", 60),
    ("sequence", "bp_gated_lm_hgrn,bp_gated_lm_gla,bptt_spiking_rwkv", 1),
    ("perforated", "", 40),
]


class Recorder(divergence.Divergence):
    """The watch, recording the ratios its checks compare instead of raising."""

    peak = {}

    def update(self, logs, epoch, step):
        loss = logs.get("loss")
        if isinstance(loss, float) and math.isfinite(loss):
            self.ref = abs(loss) if self.ref is None else self.ref
            self._keep("update", abs(loss) / max(self.ref, divergence.FLOOR))

    def epoch_end(self, row, epochs_done, n_classes, task):
        loss, acc = row.get("loss"), row.get("test_acc")
        if isinstance(loss, float) and math.isfinite(loss) and self.ref is not None:
            ratio = abs(loss) / max(self.ref, divergence.FLOOR)
            self._keep("epoch", ratio)
            if epochs_done >= 2 and task == "classify" and acc <= 1 / n_classes + divergence.CHANCE_MARGIN:
                self._keep("at_chance", ratio)

    def _keep(self, key, ratio):
        Recorder.peak[key] = max(Recorder.peak.get(key, 0.0), ratio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma list of experiments to run (default: all)")
    ap.add_argument("--epochs-scale", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bioplaus.train.Divergence = Recorder                 # the trainer's watch records instead of stopping
    print("| experiment | arm | epochs | test acc | max update ratio | max epoch ratio | max at-chance ratio "
          "| time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for exp, arms, epochs in PLAN:
        if args.only and exp not in args.only.split(","):
            continue
        epochs = max(1, round(epochs * args.epochs_scale))
        for arm in arms.split(",") if arms else [None]:
            Recorder.peak = {}
            start = time.perf_counter()
            with initialize_config_module(config_module="bioplaus.configs", version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"experiment={exp}", f"trainer.epochs={epochs}",
                                                               "trainer.progress=false"]
                              + ([f"+arm={arm}"] if arm else []))
            job = build(cfg)
            m = train(job.rule, job.data, job.trainer, seed=job.seed, device=job.device)
            p = Recorder.peak
            chance = f"{p['at_chance']:.3g}" if "at_chance" in p else "—"
            print(f"| {exp} | {arm or '(its arm)'} | {epochs} | {m['test_acc']:.3f} | {p.get('update', math.nan):.3g} "
                  f"| {p.get('epoch', math.nan):.3g} | {chance} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
