"""Training memory of TESS vs BPTT at T=10 and T=100 on the same spiking MLP: one update each.

Per (rule, T), in a fresh subprocess (so peak RSS is that job's alone):
- held_bytes: bytes autograd saves for backward (bioplaus.stats.memory.SavedTensors, parameters excluded)
  plus the state the rule carries between time chunks (TESS: traces, membranes and the running spike sum,
  `rule.state_bytes`).
- live_peak: the most bytes of tensors created during the update and alive at once
  (bioplaus.stats.memory.LiveTensors): everything above plus the working tensors (TESS: one time chunk's).
- peak_rss_mb: growth of the process's peak resident memory over the update (ru_maxrss after minus the
  resident size just before; the input batch and parameters exist before and are not counted).
Prints a table and the T=100 / T=10 growth per rule. No test asserts these; results/rules.md records them.

    python experiments/bench_tess_memory.py                       # 784-256-256-10, batch 64, rate coding
    python experiments/bench_tess_memory.py --batch 128 --hidden 512 512
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys


def one(rule_name: str, T: int, batch: int, hidden: list[int]) -> dict:
    import torch

    from bioplaus.models import SpikingMLP
    from bioplaus.rules.backprop import Backprop
    from bioplaus.rules.tess import TESS
    from bioplaus.stats.memory import LiveTensors, SavedTensors

    torch.manual_seed(0)
    model = SpikingMLP((1, 28, 28), 10, hidden=hidden, T=T, encoding="rate")
    rule = TESS(model) if rule_name == "tess" else Backprop(model)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    with open("/proc/self/statm") as f:
        base_mb = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    with LiveTensors() as live, SavedTensors(exclude=rule.parameters()) as saved:
        rule.assign_credit(x, y)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_mb
    return {"rule": rule_name, "T": T, "saved_bytes": saved.bytes, "state_bytes": getattr(rule, "state_bytes", 0),
            "held_bytes": saved.bytes + getattr(rule, "state_bytes", 0), "live_peak": live.peak,
            "peak_rss_mb": round(max(peak_mb, 0), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)          # internal: rule T, in a subprocess
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.batch, a.hidden)))
        return
    import torch

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, batch {a.batch}, "
          f"SpikingMLP 784-{'-'.join(map(str, a.hidden))}-10, rate coding")
    rows = {}
    for rule in ("tess", "bptt"):
        for T in (10, 100):
            out = subprocess.run([sys.executable, __file__, "--one", rule, str(T), "--batch", str(a.batch),
                                  "--hidden", *map(str, a.hidden)], capture_output=True, text=True, check=True)
            rows[rule, T] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| rule | T | saved for backward | rule state | held (sum) | peak of live tensors | peak RSS growth |")
    print("|---|---|---|---|---|---|---|")
    for (rule, T), r in rows.items():
        print(f"| {rule} | {T} | {r['saved_bytes'] / 1e6:.3f} MB | {r['state_bytes'] / 1e6:.3f} MB | "
              f"{r['held_bytes'] / 1e6:.3f} MB | {r['live_peak'] / 1e6:.3f} MB | {r['peak_rss_mb']:.1f} MB |")
    for rule in ("tess", "bptt"):
        lo, hi = rows[rule, 10], rows[rule, 100]
        rss = hi["peak_rss_mb"] / lo["peak_rss_mb"] if lo["peak_rss_mb"] > 0 else float("nan")
        print(f"{rule}: held x{hi['held_bytes'] / lo['held_bytes']:.2f}, "
              f"live tensors x{hi['live_peak'] / lo['live_peak']:.2f}, peak RSS x{rss:.2f} from T=10 to T=100")


if __name__ == "__main__":
    main()
