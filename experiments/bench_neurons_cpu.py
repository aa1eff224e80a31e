"""Benchmark: multi-step LIF forward + backward on CPU — bioplaus vs SpikingJelly vs snnTorch, in one run.

The same work for every implementation: x [T, B, N] float32, LIF with tau = 2 (beta = 0.5) charged
without input decay (h = v - v/tau + x), threshold 1, hard reset to 0 with the reset detached,
ATan(alpha=2) surrogate, loss = sum(s * w) with a fixed random w, one backward to x. Implementations:

- bioplaus   `bioplaus.neurons.LIFNode` (one autograd Function, hand-written BPTT, saves h only)
- naive      `bioplaus.kernels.leaky_scan_naive` (a plain autograd graph of the Python time loop)
- spikingjelly  `LIFNode(step_mode='m')` (its CPU path: torch reference + hand-written BPTT op)
- snntorch   `Leaky(beta=0.5, reset_mechanism='zero')` in a Python loop over T (its intended use)

Spikes of all four are checked equal before timing. Prints the median ms over --repeat runs and each
peer's time divided by bioplaus's (>1 = bioplaus faster).

    python experiments/bench_neurons_cpu.py                      # default sizes
    python experiments/bench_neurons_cpu.py --sizes 32x64x1024 --repeat 30
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def make_impls():
    from bioplaus.kernels import leaky_scan_naive
    from bioplaus.neurons import LIFNode

    impls = {}
    ours = LIFNode(tau=2.0, decay_input=False, detach_reset=True, surrogate="atan", alpha=2.0)
    impls["bioplaus"] = ours
    impls["naive"] = lambda x: leaky_scan_naive(x, 0.5, 1.0, threshold=1.0, reset="hard", detach_reset=True,
                                                surrogate="atan", alpha=2.0)[0]
    try:
        from spikingjelly.activation_based import neuron as sjn
        from spikingjelly.activation_based import surrogate as sjs

        sj = sjn.LIFNode(tau=2.0, decay_input=False, v_reset=0.0, detach_reset=True,
                         surrogate_function=sjs.ATan(alpha=2.0), step_mode="m")

        def run_sj(x):
            sj.reset()
            return sj(x)

        impls["spikingjelly"] = run_sj
    except ImportError:
        print("spikingjelly not installed: skipped")
    try:
        import snntorch as snn
        from snntorch import surrogate as snns

        leaky = snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero", spike_grad=snns.atan(alpha=2.0))

        def run_snn(x):
            mem = leaky.init_leaky()
            out = []
            for t in range(x.shape[0]):
                s, mem = leaky(x[t], mem)
                out.append(s)
            return torch.stack(out)

        impls["snntorch"] = run_snn
    except ImportError:
        print("snntorch not installed: skipped")
    return impls


def fwd_bwd(fn, x, w):
    x = x.detach().requires_grad_()
    s = fn(x)
    (s * w).sum().backward()
    return s.detach(), x.grad


def bench(fn, x, w, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fwd_bwd(fn, x, w)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fwd_bwd(fn, x, w)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["8x64x1024", "32x64x1024", "64x32x1024"],
                    help="TxBxN triples")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    impls = make_impls()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, python {platform.python_version()}")
    names = list(impls)
    print("| T x B x N | " + " | ".join(f"{n} (ms)" for n in names) + " | " +
          " | ".join(f"{n} / bioplaus" for n in names if n != "bioplaus") + " |")
    print("|" + "---|" * (2 * len(names)))
    for size in args.sizes:
        T, B, N = (int(v) for v in size.split("x"))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(T, B, N, generator=g) * 1.5
        w = torch.randn(T, B, N, generator=g)
        ref_s, ref_g = fwd_bwd(impls["bioplaus"], x, w)
        for name, fn in impls.items():
            s, gx = fwd_bwd(fn, x, w)
            assert torch.equal(s, ref_s), f"{name}: spikes differ from bioplaus"
            assert torch.allclose(gx, ref_g, atol=1e-5, rtol=1e-4), f"{name}: input gradient differs"
        ms = {name: bench(fn, x, w, args.repeat) for name, fn in impls.items()}
        print(f"| {size} | " + " | ".join(f"{ms[n]:.1f}" for n in names) + " | " +
              " | ".join(f"{ms[n] / ms['bioplaus']:.2f}x" for n in names if n != "bioplaus") + " |", flush=True)


if __name__ == "__main__":
    main()
