"""Training memory of ForwardGNN-SF vs backprop on the same GCN, 1-4 layers: one full-batch update each.

The claim (Park et al. 2024, Table 4): SF's training memory is flat in the number of layers, backprop's grows.
Per (rule, L), in a fresh subprocess (so the resident memory is that job's alone), on an SBM graph
(node-major features [V, F], 20% of the nodes labelled = the batch), after one warm-up update:
- live_peak_mb: the most bytes autograd holds for backward at any one moment of the update (a storage counts
  from the moment it is saved until autograd frees it; parameters excluded). SF runs each layer's backward
  before the next layer's forward, so this is one layer's worth; backprop keeps every layer's until the end.
- saved_total_mb: every byte saved for backward over the whole update, each storage once, parameters
  excluded: what the trainer reports as `saved_for_backward_mb` (bioplaus.stats.memory.SavedTensors). SF's is
  the sum over its layers, although they are never held together.
- peak_heap_mb: the most heap bytes in use during the update above the level just before it (glibc's
  mallinfo2: bytes handed out by malloc, sampled every 0.5 ms; unlike resident memory it drops as soon as a
  tensor is freed; repeated runs give the same figure to 0.1 MB): every tensor counts here, also those
  not saved for backward (the message tensors [E, d] of each propagation, gradients, GCN normalisation).
  Without glibc: growth of resident memory instead (bioplaus.stats.memory.PeakMemory), a coarser measure.
Prints a table with the BP / SF ratios and each rule's L=4 / L=1 growth. No test asserts these figures
(tests/test_rule_forward_gnn.py checks the flat live peak on a small graph); results/rules.md records them.

    python experiments/bench_graph_memory.py                       # 10000 nodes, 128 features, width 128
    python experiments/bench_graph_memory.py --nodes 20000 --hidden 256
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys


class HeapPeak:
    """Peak growth of malloc's bytes in use (glibc mallinfo2: small blocks + mmapped blocks), sampled."""

    def __init__(self, interval_s: float = 0.0005):
        import ctypes

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

        self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        self._mallinfo2.restype = Info
        self.interval, self.peak_mb = interval_s, 0.0

    def in_use(self) -> int:
        m = self._mallinfo2()
        return m.uordblks + m.hblkhd

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self.in_use())

    def __enter__(self):
        import threading

        self._base = self._peak = self.in_use()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = (max(self._peak, self.in_use()) - self._base) / 2**20
        return False


def heap_meter():
    """HeapPeak where glibc has mallinfo2, else resident-memory growth (bioplaus.stats.memory.PeakMemory)."""
    try:
        return HeapPeak(), "peak heap"
    except (OSError, AttributeError):
        import torch

        from bioplaus.stats.memory import PeakMemory

        return PeakMemory(torch.device("cpu")), "peak RSS growth"


def one(rule_name: str, L: int, a) -> dict:
    import time

    import torch

    from bioplaus.data.graphs import sbm
    from bioplaus.models import GCN
    from bioplaus.rules.backprop import Backprop
    from bioplaus.rules.forward_gnn import ForwardGNN
    from bioplaus.stats.memory import SavedTensors

    torch.set_num_threads(a.threads)
    C = 5
    data = sbm(n_nodes=a.nodes, n_classes=C, n_features=a.features, p_in=a.degree_in * C / a.nodes,
               p_out=a.degree_out * C / (a.nodes * (C - 1)), seed=0)
    torch.manual_seed(0)
    model = GCN([], C, graph=data.graph, hidden=[a.hidden] * L)
    rule = ForwardGNN(model) if rule_name == "sf" else Backprop(model)
    x, y = data.x_train, data.y_train
    params = list(rule.parameters())

    def update():
        for p in params:
            p.grad = None
        rule.assign_credit(x, y)

    update()                                                      # warm-up (allocator, PyG caches)
    with SavedTensors(exclude=params) as saved:                   # total saved and peak held at once
        update()
    for p in params:
        p.grad = None
    meter, meter_name = heap_meter()
    t0 = time.perf_counter()
    with meter:
        rule.assign_credit(x, y)
    dt = time.perf_counter() - t0
    mb = 2**20
    return {"rule": rule_name, "L": L, "live_peak_mb": saved.peak / mb, "saved_total_mb": saved.bytes / mb,
            "peak_heap_mb": meter.peak_mb, "meter": meter_name, "update_s": dt, "nodes": data.graph.num_nodes,
            "edges": data.graph.num_edges, "batch": len(x)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--degree-in", type=float, default=4.0, help="expected same-class neighbours per node")
    p.add_argument("--degree-out", type=float, default=1.6, help="expected other-class neighbours per node")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)          # internal: rule L, in a subprocess
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a)))
        return
    import torch
    import torch_geometric

    args = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("one", "layers")]
    rows = {}
    for L in a.layers:
        for rule in ("bp", "sf"):
            out = subprocess.run([sys.executable, __file__, "--one", rule, str(L), *args], capture_output=True,
                                 text=True, check=True)
            rows[rule, L] = json.loads(out.stdout.strip().splitlines()[-1])
    r0 = rows["bp", a.layers[0]]
    print(f"# {platform.machine()} CPU, {a.threads} thread(s), torch {torch.__version__}, torch_geometric "
          f"{torch_geometric.__version__}; SBM {r0['nodes']} nodes, {r0['edges']} directed edges, {a.features} "
          f"features, batch = {r0['batch']} training nodes (full batch); GCN width {a.hidden}")
    heap = r0["meter"]
    print(f"| layers | BP live peak MB | SF live peak MB | BP/SF | BP saved total MB | SF saved total MB "
          f"| BP {heap} MB | SF {heap} MB | BP/SF heap | BP s/update | SF s/update |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for L in a.layers:
        b, s = rows["bp", L], rows["sf", L]
        ratio = b["live_peak_mb"] / s["live_peak_mb"]
        print(f"| {L} | {b['live_peak_mb']:.2f} | {s['live_peak_mb']:.2f} | {ratio:.2f} "
              f"| {b['saved_total_mb']:.2f} | {s['saved_total_mb']:.2f} | {b['peak_heap_mb']:.1f} | "
              f"{s['peak_heap_mb']:.1f} | {b['peak_heap_mb'] / max(s['peak_heap_mb'], 1e-9):.2f} | "
              f"{b['update_s']:.3f} | {s['update_s']:.3f} |")
    lo, hi = a.layers[0], a.layers[-1]
    for rule, name in (("bp", "backprop"), ("sf", "ForwardGNN-SF")):
        g = {k: rows[rule, hi][k] / max(rows[rule, lo][k], 1e-9) for k in ("live_peak_mb", "saved_total_mb",
                                                                             "peak_heap_mb")}
        print(f"{name}: L={hi} / L={lo}: live peak x{g['live_peak_mb']:.2f}, saved total x{g['saved_total_mb']:.2f}, "
              f"{heap} x{g['peak_heap_mb']:.2f}")


if __name__ == "__main__":
    main()
