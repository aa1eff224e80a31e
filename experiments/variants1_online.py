"""Paper variants I, online rules (issue 17): TESS on the paper's conv SNN (weight standardisation, no BatchNorm)
beside BPTT and the frozen control on Fashion-10k, TESS's saved-for-backward bytes at T = 10 and T = 50, and
e-prop with ALIF neurons (threshold adaptation, rate regulariser) beside LIF e-prop, BPTT and frozen nets on the
spike-timing task.

Every run is one `bioplaus-run` command (listed by `commands`), run one at a time with OMP_NUM_THREADS=1 into
<out>/<group>/<label>_s<seed>; a run whose metrics.json exists is skipped, so the sweep resumes. `table` reads
the metrics back and prints the markdown tables of experiments/results/variants1_online.md (test accuracy,
margin over the group's readout_only arm, and the trainer's memory measurements).

    python experiments/variants1_online.py commands                  # the exact commands
    python experiments/variants1_online.py run --out runs/variants1_online [--group tess-fashion]
    python experiments/variants1_online.py table --out runs/variants1_online
    python experiments/variants1_online.py live                     # TESS vs BPTT live-tensor peak, T = 10 / 50

`live` measures one update (batch 64, Fashion images) of TESS and BPTT on model=spiking_vgg_tess in this process:
the bytes autograd keeps for backward, TESS's carried state, and the peak of all live tensors (the trainer's
peak RSS growth also holds the evaluation's multi-step forward, which grows with T for every rule).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arm_runs import arm_table, commands, run

# Fashion-10k at a budget two shared cores allow: 5 epochs, batch 64, a 2,000-image test subset
FASHION = ["data=fashion", "data.n_train=10000", "data.n_test=2000", "trainer.epochs=5"]
VGG = ["model=spiking_vgg_tess"]
MEMORY = ["data=fashion", "data.n_train=256", "data.n_test=100", "trainer.epochs=1"]      # one epoch = 4 updates
# spike timing, long sequences: 8 channels, each firing once in T = 40 steps (+-1 step jitter), 10 classes
TIMING40 = ["data=spike_timing", "data.T=40", "data.channels=8", "data.jitter=1", "model.encoding=given",
            "model.T=40", "trainer.epochs=5"]
TIMING10 = ["data=spike_timing", "model.encoding=given", "model.T=10", "trainer.epochs=5"]   # the data's defaults
LIF, ALIF = ["model=recurrent_spiking"], ["model=recurrent_spiking_alif"]


def timing(data: list[str], tau_adapt: int) -> list[tuple[str, list[str], list[int]]]:
    alif = [*ALIF, f"model.tau_adapt={tau_adapt}"]
    return [("eprop_paper_alif", ["rule=eprop_paper", *alif, *data], [0, 1]),
            ("eprop_paper_lif", ["rule=eprop_paper", *LIF, *data], [0, 1]),
            ("eprop_alif_no_reg", ["rule=eprop_paper", "rule.rate_reg=0", *alif, *data], [0]),
            ("eprop_lif_no_reg", ["rule=eprop", *LIF, *data], [0]),
            ("eprop_lif_kappa1", ["rule=eprop", "rule.kappa=1", *LIF, *data], [0]),
            ("backprop_alif", ["rule=backprop", *alif, *data], [0]),
            ("readout_only_alif", ["rule=readout_only", *alif, *data], [0]),
            ("readout_only", ["rule=readout_only", *LIF, *data], [0])]


# group -> [(label, overrides, seeds)]
RUNS: dict[str, list[tuple[str, list[str], list[int]]]] = {
    "tess-fashion": [(r, [f"rule={r}", *VGG, *FASHION], [0]) for r in ("tess_paper", "backprop", "readout_only")],
    "tess-memory": [(f"{r}_T{T}", [f"rule={r}", *VGG, f"model.T={T}", *MEMORY], [0])
                    for r in ("tess_paper", "backprop") for T in (10, 50)],
    "eprop-timing40": timing(TIMING40, 40),
    "eprop-timing10": timing(TIMING10, 10),
}








def table(out: Path, groups) -> str:
    lines = []
    for group in groups:
        lines += arm_table(RUNS, out, group, mb_digits=3)
    return "\n".join(lines)


def live() -> str:
    import torch
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from bioplaus.data import fashion
    from bioplaus.stats.memory import LiveTensors, SavedTensors

    torch.set_num_threads(1)
    data = fashion(n_train=64, n_test=10)
    x, y = data.x_train[:64], data.y_train[:64]
    lines = ["| rule | T | saved for backward (MB) | carried state (MB) | peak of live tensors (MB) |",
             "|---|---|---|---|---|"]
    with initialize_config_module("bioplaus.configs", version_base=None):
        for rule in ("tess_paper", "backprop"):
            for T in (10, 50):
                cfg = compose("config", [f"rule={rule}", *VGG, f"model.T={T}"])
                torch.manual_seed(0)
                model = instantiate(cfg.model, in_shape=list(data.in_shape), n_classes=10, _convert_="all")
                r = instantiate(cfg.rule, model, _convert_="all")
                with LiveTensors() as probe, SavedTensors(exclude=r.parameters()) as saved:
                    r.assign_credit(x, y)
                state = getattr(r, "state_bytes", 0)
                lines.append(f"| {rule} | {T} | {saved.bytes / 2**20:.3f} | {state / 2**20:.2f} | "
                             f"{probe.peak / 2**20:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["commands", "run", "table", "live"])
    p.add_argument("--out", type=Path, default=Path("runs/variants1_online"))
    p.add_argument("--group", action="append", choices=list(RUNS), help="only these groups (default: all)")
    a = p.parse_args(argv)
    groups = a.group or list(RUNS)
    if a.what == "commands":
        print("\n".join(commands(RUNS, a.out, groups)))
    elif a.what == "run":
        run(RUNS, a.out, groups)
    elif a.what == "live":
        print(live())
    else:
        print(table(a.out, groups))


if __name__ == "__main__":
    main(sys.argv[1:])
