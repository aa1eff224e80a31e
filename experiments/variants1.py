"""Paper variants I (issue 17): NoProp as the paper trains it and Forward-Forward (threshold loss, unsupervised),
each beside backprop and the readout_only control on the same net and budget, on digits and Fashion-10k.

Every run is one `bioplaus-run` command (listed by `commands`), run one at a time with OMP_NUM_THREADS=1 into
<out>/<label>_s<seed>; a run whose metrics.json exists is skipped, so the sweep resumes. `table` reads the
metrics back and prints the markdown tables of experiments/results/variants1.md (mean ± std over seeds, margin
over the group's readout_only arm, and the trainer's memory measurements).

For the noprop-memory group, `run` also measures one block's share in each NoProp run dir (block_share.json):
the rule rebuilt from the run's own .hydra/config.yaml, block 1's weighted loss and backward alone on one
training batch, the peak bytes autograd holds for it (`SavedTensors`, parameters excluded, as the trainer counts).
`table` then checks issue 17's Done-when from the run dirs: held(sequential) <= held(together) / T + share.

    python experiments/variants1.py commands                       # the exact commands
    python experiments/variants1.py run --out /tmp/v1 [--group ff-fashion]
    python experiments/variants1.py table --out /tmp/v1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arm_runs import arm_table, commands, jobs, run

FASHION = ["data=fashion", "data.n_train=10000", "trainer.epochs=20", "trainer.batch_size=128"]
FASHION_5 = [*FASHION[:2], "trainer.epochs=5", *FASHION[3:]]
ADAMW = ["trainer.optimizer._target_=torch.optim.AdamW", "+trainer.optimizer.weight_decay=1e-3"]  # Table 3's
DIGITS_B128 = ["data=digits", "trainer.batch_size=128"]                  # NoProp's Table 3 batch on digits too
NARROW = ["model=convnet", "model.channels=[8,16,32]", "rule.channels=[8,16,32]", "rule.width=64"]
WIDE = ["model=convnet", "model.channels=[32,64,128]"]
TUNED_LR = ["rule.lr_scale=3", "rule.classifier_lr_scale=10"]
HINTON_CODE = ["rule.norm=rms", "rule.threshold_per_unit=true", "rule.label_relative=false", "rule.label_value=1.0"]

# group -> [(label, overrides, seeds)]; the convnet arms take no rule.channels / rule.width
RUNS: dict[str, list[tuple[str, list[str], list[int]]]] = {
    "ff-digits": [(f"{r}", [f"rule={r}", "data=digits"], [0, 1])
                  for r in ("ff_paper", "ff_unsupervised", "ff", "backprop", "readout_only")],
    "ff-fashion": [(f"{r}", [f"rule={r}", *FASHION], [0, 1])
                   for r in ("ff_paper", "ff_unsupervised", "backprop", "readout_only")]
                  + [("ff_paper_hinton_code", ["rule=ff_paper", *HINTON_CODE, *FASHION], [0])],
    "noprop-memory": [(f"{name}_{s}", [*rule, f"rule.schedule={s}", "data=fashion", "data.n_train=10000",
                                        "data.n_test=1000", "trainer.epochs=1", "trainer.batch_size=128"], [0])
                      for name, rule in (("mlp_block", ["rule=noprop"]),
                                         ("paper_block", ["rule=noprop_paper", "model=convnet"]))
                      for s in ("together", "sequential")]
                     + [("noprop_bp_paper_block", ["rule=noprop_bp", "model=convnet", "data=fashion",
                                                   "data.n_train=10000", "data.n_test=1000", "trainer.epochs=1",
                                                   "trainer.batch_size=128"], [0])],
    "noprop-digits": [("noprop_paper", ["rule=noprop_paper", *DIGITS_B128, *WIDE, *ADAMW], [0, 1]),
                      ("noprop_paper_tuned_lr", ["rule=noprop_paper", *DIGITS_B128, *WIDE, *ADAMW, *TUNED_LR], [0, 1]),
                      ("noprop_bp", ["rule=noprop_bp", *DIGITS_B128, *WIDE, *ADAMW], [0]),
                      ("noprop_bp_tuned_lr", ["rule=noprop_bp", *DIGITS_B128, *WIDE, *ADAMW, *TUNED_LR], [0]),
                      ("backprop", ["rule=backprop", *DIGITS_B128, *WIDE, *ADAMW], [0, 1]),
                      ("readout_only", ["rule=readout_only", *DIGITS_B128, *WIDE, *ADAMW], [0, 1])],
    # cut to 5 epochs for every arm, one seed, and no noprop_bp arm (it is on digits): the 2-core machine was
    # shared (one noprop_paper epoch with its 10k-image test pass took ~60-80 s of wall time there)
    "noprop-fashion-narrow": [("noprop_paper", ["rule=noprop_paper", *FASHION_5, *NARROW, *ADAMW], [0]),
                              ("backprop", ["rule=backprop", *FASHION_5, *NARROW[:2], *ADAMW], [0]),
                              ("readout_only", ["rule=readout_only", *FASHION_5, *NARROW[:2], *ADAMW], [0]),
                              ("noprop_paper_tuned_lr", ["rule=noprop_paper", *FASHION_5, *NARROW, *ADAMW, *TUNED_LR],
                               [0])],
    "noprop-digits-100ep": [(label, [*overrides, "trainer.epochs=100"], [0, 1]) for label, overrides in (
        ("noprop_paper", ["rule=noprop_paper", *DIGITS_B128, *WIDE, *ADAMW]),
        ("backprop", ["rule=backprop", *DIGITS_B128, *WIDE, *ADAMW]),
        ("readout_only", ["rule=readout_only", *DIGITS_B128, *WIDE, *ADAMW]))],        # the paper's 100 epochs
    "noprop-fashion-paper": [("noprop_paper", ["rule=noprop_paper", *FASHION, *WIDE, *ADAMW], [0]),
                             ("backprop", ["rule=backprop", *FASHION, *WIDE, *ADAMW], [0]),
                             ("readout_only", ["rule=readout_only", *FASHION, *WIDE, *ADAMW], [0])],
}








def block_share(run_dir: Path) -> dict:
    """One NoProp block's share of the activations held for backward (MB): block 1's weighted loss and backward
    alone, on the first `trainer.batch_size` training images, the rule rebuilt (fresh weights, training mode)
    from the run's saved config. The held bytes depend on shapes only, not on the weights."""
    import torch
    from omegaconf import OmegaConf

    from bioplaus.data import batches
    from bioplaus.run import build
    from bioplaus.stats.memory import SavedTensors

    torch.set_num_threads(1)
    job = build(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    rule, bs = job.rule, int(job.trainer.batch_size)
    rule.train()
    # the trainer's way: an indexed copy (a slice would share, and count, the whole training set's storage)
    x, y = next(batches(job.data.x_train, job.data.y_train, bs))
    W = rule.embed.weight
    u = W[y]
    z = rule._q(u, rule.abar[0]).detach()
    with SavedTensors(exclude=rule.parameters()) as one:
        (rule.loss_weights[0] * rule._block_mse(rule.blocks[0], z, x, u, W)).backward()
    return {"block_share_mb": one.peak / 2**20, "T": int(rule.T), "batch_size": bs}


def measure_shares(out: Path) -> None:
    for _, label, seed, overrides in jobs(RUNS, ["noprop-memory"]):
        run_dir = out / "noprop-memory" / f"{label}_s{seed}"
        share = run_dir / "block_share.json"
        if "rule.schedule=sequential" in overrides and (run_dir / "metrics.json").exists() and not share.exists():
            share.write_text(json.dumps(block_share(run_dir), indent=1))


def memory_table(out: Path) -> str:
    """Issue 17's Done-when, from the noprop-memory run dirs: each sequential run against its together peer."""
    d = out / "noprop-memory"
    lines = ["\n### noprop-memory: the Done-when\n",
             "| blocks | held, together (MB) | held, sequential (MB) | sequential / together | one block's share (MB) "
             "| bound: together / T + share (MB) | holds | saved, together / sequential (MB) "
             "| test acc, together / sequential | peak RSS growth, together / sequential (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("mlp_block", "paper_block"):
        paths = [d / f"{name}_{s}_s0" / "metrics.json" for s in ("together", "sequential")]
        share_path = d / f"{name}_sequential_s0" / "block_share.json"
        if not all(p.exists() for p in paths) or not share_path.exists():
            continue
        tog, seq = (json.loads(p.read_text()) for p in paths)
        share = json.loads(share_path.read_text())
        ht, hs = tog["held_for_backward_peak_mb"], seq["held_for_backward_peak_mb"]
        bound = ht / share["T"] + share["block_share_mb"]
        lines.append(f"| {name} | {ht:.2f} | {hs:.2f} | **{hs / ht:.3f}** | {share['block_share_mb']:.2f} | "
                     f"{bound:.2f} | {'yes' if hs <= bound else '**no**'} | {tog['saved_for_backward_mb']:.2f} / "
                     f"{seq['saved_for_backward_mb']:.2f} | {tog['test_acc']:.4f} / {seq['test_acc']:.4f} | "
                     f"{tog['peak_mem_mb']:.0f} / {seq['peak_mem_mb']:.0f} |")
    return "\n".join(lines) if len(lines) > 3 else ""


def table(out: Path, groups) -> str:
    lines = []
    for group in groups:
        rows = arm_table(RUNS, out, group, mb_digits=2)
        lines += rows
        if group == "noprop-memory" and rows:
            lines.append(memory_table(out))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["commands", "run", "table"])
    p.add_argument("--out", type=Path, default=Path("runs/variants1"))
    p.add_argument("--group", action="append", choices=list(RUNS), help="only these groups (default: all)")
    a = p.parse_args(argv)
    groups = a.group or list(RUNS)
    if a.what == "commands":
        print("\n".join(commands(RUNS, a.out, groups)))
    elif a.what == "run":
        run(RUNS, a.out, groups)
        if "noprop-memory" in groups:
            measure_shares(a.out)
    else:
        print(table(a.out, groups))


if __name__ == "__main__":
    main(sys.argv[1:])
