"""Benchmark: one training step of the online rules (TESS, e-prop) against BPTT on the same net, interleaved in
one process; medians, ratios and the ops of one update.

- TESS vs BPTT on the spiking MLP 784-256-256-10 (LIF tau 2, hard reset, ATan(2); the shipped configs), rate
  coding, T = 10, batch 128 (the Fashion-10k shape of experiments/results/rules.md)
- e-prop vs BPTT on the recurrent spiking net 784 -> 128 (configs/model/recurrent_spiking.yaml), rate coding,
  T = 10, batch 128
- e-prop as the paper runs it (ALIF eligibility, rate regulariser; configs/rule/eprop_paper.yaml) vs BPTT on the
  same net with ALIF neurons (configs/model/recurrent_spiking_alif.yaml)

Each rule runs in its time-chunked form (the rule's default `time_chunk`) and in the step-by-step form
(`time_chunk=1`). A step is what `bioplaus.train` runs: zero_grad, `rule.assign_credit(x, y)`, Adam step. The
ops of one update are counted by bioplaus.stats (`UpdateCost`: MACs with dense operands, ACs driven by
binary spikes), priced with the fp32 45 nm preset (4.6 pJ / MAC, 0.9 pJ / AC). Each round times one step of
every arm in turn; the table gives medians and each arm's time divided by BPTT's (<= 1.5 is the issue's bar).

    OMP_NUM_THREADS=1 python experiments/bench_online_rules.py                # ~1 min
    OMP_NUM_THREADS=1 python experiments/bench_online_rules.py --clock cpu    # on a machine shared with other jobs
"""
from __future__ import annotations

import argparse
import platform

import torch
from bench_train_step import CLOCKS, interleaved  # the same round-robin timing as the step benchmark


def arm(rule, x, y):
    """(step function, ops of one update) for a rule: what the trainer runs per batch."""
    from bioplaus.stats.cost import UpdateCost

    opt = torch.optim.Adam(rule.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        rule.assign_credit(x, y)
        opt.step()

    with UpdateCost(rule) as cost:
        rule.assign_credit(x, y)
    opt.zero_grad(set_to_none=True)
    return step, cost.ops


def arms(batch: int, T: int) -> dict[str, dict]:
    """{network: {arm: (step, ops)}}; every arm of a network starts from the same weights."""
    from bioplaus.models import RecurrentSpikingNet, SpikingMLP
    from bioplaus.rules.backprop import Backprop
    from bioplaus.rules.eprop import EProp
    from bioplaus.rules.tess import TESS

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def fresh(make_model, make_rule):
        torch.manual_seed(0)
        return arm(make_rule(make_model()), x, y)

    mlp = lambda: SpikingMLP((1, 28, 28), 10, hidden=[256, 256], T=T, encoding="rate")          # noqa: E731
    rnn = lambda: RecurrentSpikingNet((1, 28, 28), 10, hidden=128, T=T, encoding="rate")       # noqa: E731
    alif = lambda: RecurrentSpikingNet((1, 28, 28), 10, hidden=128, T=T, encoding="rate",      # noqa: E731
                                       adaptation=1.0, tau_adapt=40.0)
    paper = lambda m: EProp(m, rate_reg=1.0, target_rate=0.02)                                # noqa: E731
    return {
        "spiking MLP 784-256-256-10": {"BPTT": fresh(mlp, Backprop), "TESS": fresh(mlp, TESS),
                                       "TESS step by step": fresh(mlp, lambda m: TESS(m, time_chunk=1))},
        "recurrent spiking 784-128": {"BPTT": fresh(rnn, Backprop), "e-prop": fresh(rnn, EProp),
                                      "e-prop step by step": fresh(rnn, lambda m: EProp(m, time_chunk=1))},
        "recurrent ALIF 784-128": {"BPTT": fresh(alif, Backprop), "e-prop (eprop_paper)": fresh(alif, paper),
                                   "e-prop (eprop_paper) step by step":
                                       fresh(alif, lambda m: EProp(m, rate_reg=1.0, target_rate=0.02, time_chunk=1))},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: the process's CPU time (one thread on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
          f"batch {args.batch}, T {args.T}, rate coding, median of {args.repeat}, {args.clock} clock")
    print("| network | rule | ms / step | / BPTT | MAC / update | AC / update | compute energy / update (fp32) |")
    print("|---|---|---|---|---|---|---|")
    for net, rules in arms(args.batch, args.T).items():
        ms = interleaved({k: fn for k, (fn, _) in rules.items()}, args.repeat, args.warmup, CLOCKS[args.clock])
        for name, (_, ops) in rules.items():
            mj = (ops["mac"] * 4.6 + ops["ac"] * 0.9) * 1e-9
            print(f"| {net} | {name} | {1000 * ms[name]:.1f} | {ms[name] / ms['BPTT']:.2f}x | {ops['mac'] / 1e6:.1f} M "
                  f"| {ops['ac'] / 1e6:.1f} M | {mj:.3f} mJ |", flush=True)


if __name__ == "__main__":
    main()
