"""Benchmark: the fused CPU LIF kernel's achieved memory bandwidth against a torch copy of the same bytes, in
the same run (the roofline fraction), at 1 and 2 threads.

Work: x [T, B*N] float32, LIF (a = 0.5, b = 1, threshold 1, hard reset detached, ATan(2)) through the public
`leaky_scan(..., backend="cpu")` with autograd, forward then `s.backward(g)`, as a training step runs it
(fresh output tensors each time). Bytes are what this kernel reads and writes (it saves its input x and
recomputes h in cache; see kernels/leaky_scan_cpu.py):

    forward   read x, write s                 8 bytes per element and step
    backward  read x and grad s, write grad x  12 bytes per element and step       (v_T, grad v0: 1/T of one more)

Copy: `dst.copy_(src)` with src of half those bytes (so it also reads and writes them in total), into a
preallocated dst: the machine's streaming bandwidth at this size. `clone()` (a copy that allocates its output,
as the kernel does) is shown beside it. Rounds interleave kernel and copies; medians of wall time (or, with
`--clock cpu`, of the process's CPU time: on a machine shared with other jobs the time-slicing does not count;
meaningful at one thread only).

    python experiments/bench_lif_roofline.py                        # T=32, B*N=65536, 1 and 2 threads, ~20 s
    python experiments/bench_lif_roofline.py --T 32 --elems 65536 --threads 1 2 --repeat 50
    python experiments/bench_lif_roofline.py --threads 1 --clock cpu
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def main():
    from bioplaus.kernels import leaky_scan, leaky_scan_cpu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--elems", type=int, default=65536, help="B*N, the neurons of the whole batch")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if (why := leaky_scan_cpu.available()) is not None:
        raise SystemExit(f"the fused CPU kernel is not available: {why}")
    T, M = args.T, args.elems
    g = torch.Generator().manual_seed(0)
    x0, gs = torch.randn(T, M, generator=g) * 1.5, torch.randn(T, M, generator=g)
    kernel_bytes = {"forward": 8 * T * M, "backward": 12 * T * M}
    kernel_bytes["forward + backward"] = kernel_bytes["forward"] + kernel_bytes["backward"]
    src = torch.randn(kernel_bytes["forward + backward"] // 8)
    dst = torch.empty_like(src)
    state = {}

    def fwd():
        state["x"] = x0.detach().requires_grad_()
        state["s"] = leaky_scan(state["x"], 0.5, 1.0, threshold=1.0, reset="hard", detach_reset=True,
                                surrogate="atan", alpha=2.0, backend="cpu")[0]

    def bwd():
        state["s"].backward(gs)

    def fwd_bwd():
        fwd()
        bwd()

    isa = torch.backends.cpu.get_cpu_capability()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__} (CPU capability {isa}), "
          f"kernel flags {' '.join(leaky_scan_cpu.CFLAGS)}; "
          f"T={T}, B*N={M}, {kernel_bytes['forward + backward'] / 1e6:.1f} MB moved per forward+backward, "
          f"median of {args.repeat}, {args.clock} clock")
    print("| threads | pass | ms | GB/s | copy_ GB/s | clone GB/s | fraction of copy_ |")
    print("|---|---|---|---|---|---|---|")
    for n in args.threads:
        torch.set_num_threads(n)
        times = {k: [] for k in ("forward", "backward", "forward + backward", "copy_", "clone")}
        for r in range(args.repeat + 3):
            rec = {}
            t0 = clock()
            fwd()
            rec["forward"] = clock() - t0
            t0 = clock()
            bwd()
            rec["backward"] = clock() - t0
            t0 = clock()
            fwd_bwd()
            rec["forward + backward"] = clock() - t0
            t0 = clock()
            dst.copy_(src)
            rec["copy_"] = clock() - t0
            t0 = clock()
            src.clone()
            rec["clone"] = clock() - t0
            if r >= 3:                                           # 3 warm-up rounds
                for k, v in rec.items():
                    times[k].append(v)
        med = {k: statistics.median(v) for k, v in times.items()}
        copy_bw = 2 * src.nbytes / med["copy_"] / 1e9
        clone_bw = 2 * src.nbytes / med["clone"] / 1e9
        for k in ("forward", "backward", "forward + backward"):
            bw = kernel_bytes[k] / med[k] / 1e9
            print(f"| {n} | {k} | {1000 * med[k]:.2f} | {bw:.1f} | {copy_bw:.1f} | {clone_bw:.1f} | "
                  f"{bw / copy_bw:.0%} |", flush=True)


if __name__ == "__main__":
    main()
