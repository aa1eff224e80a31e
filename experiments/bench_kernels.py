"""Kernel benchmark: ours vs the peers in one run, medians and ratios, plus the memory roofline fraction.

Workloads (fp32 on CPU; fp32 and bf16 on GPU), forward + backward of a fixed random projection:
- lif     multi-step LIF [T, B*N]: tau 2, no input decay, hard reset, detached reset, ATan(2).
          bioplaus (CPU: the fused C++ kernel and the torch path; GPU: the Triton kernels and the torch
          path) vs SpikingJelly LIFNode 'm' (CPU: its
          torch op; GPU: SJ_LIF_CUDA_IMPLEMENTATION=triton and =torch) vs snnTorch Leaky in a loop.
- gated   the data-dependent gated recurrence h_t = a_t * h_{t-1} + (1 - a_t) * x_t (HGRN-style)
          via leaky_scan (no spikes) vs flash-linear-attention's fused_recurrent_hgrn (GPU, if importable).
- gla     gated linear attention [T, B, H, K=V=64]: bioplaus recurrent (Triton on GPU, reference loop
          on CPU) and chunked vs fla's fused_recurrent_gla / chunk_gla (GPU, if importable).

Roofline: minimal bytes a fused fwd+bwd must move (LIF: read x, write s and h; read h and grad s,
write grad x = 6 words per element) / median time / peak memory bandwidth (--peak-gbs, or known
for H100/H200). Spikes of every LIF implementation are checked equal before timing.

    python experiments/bench_kernels.py                               # CPU sizes
    python experiments/bench_kernels.py --device cuda --dtype bf16    # GPU: T=4..64, B*N up to 2^24
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

PEAK_GBS = {"H100": 3350.0, "H200": 4800.0}


def timed(fn, repeat: int, device: torch.device) -> float:
    """Median wall time of fn() in ms (CUDA-synchronised)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def fwd_bwd(forward, *inputs):
    """Closure running forward(*leaves) and a backward of a fixed projection of its first output."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        for t in leaves:
            t.grad = None
        out = forward(*leaves)
        out = out[0] if isinstance(out, tuple) else out
        (out.float() * proj(out)).sum().backward()
        return out
    return run


_PROJ: dict = {}


def proj(out):
    key = (tuple(out.shape), out.device)
    if key not in _PROJ:
        _PROJ[key] = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
    return _PROJ[key]


def lif_impls(device: torch.device):
    from bioplaus.neurons import LIFNode

    impls = {}
    for backend in (["triton", "torch"] if device.type == "cuda" else ["cpu", "torch"]):
        n = LIFNode(tau=2.0, decay_input=False, detach_reset=True, backend=backend)
        impls[f"bioplaus-{backend}"] = n
    try:
        from spikingjelly.activation_based import neuron as sjn
        from spikingjelly.activation_based import surrogate as sjs

        for impl in (["triton", "torch"] if device.type == "cuda" else ["cpu"]):
            sj = sjn.LIFNode(tau=2.0, decay_input=False, v_reset=0.0, detach_reset=True,
                             surrogate_function=sjs.ATan(alpha=2.0), step_mode="m").to(device)

            def run_sj(x, sj=sj, impl=impl):
                if impl != "cpu":
                    os.environ["SJ_LIF_CUDA_IMPLEMENTATION"] = impl
                sj.reset()
                return sj(x)
            impls[f"spikingjelly-{impl}"] = run_sj
    except ImportError:
        print("# spikingjelly not installed: skipped")
    try:
        import snntorch as snn
        from snntorch import surrogate as snns

        leaky = snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero", spike_grad=snns.atan(alpha=2.0))

        def run_snn(x):
            mem, out = leaky.init_leaky(), []
            for t in range(x.shape[0]):
                s, mem = leaky(x[t], mem)
                out.append(s)
            return torch.stack(out)
        impls["snntorch"] = run_snn
    except ImportError:
        print("# snntorch not installed: skipped")
    return impls


def bench_lif(args, device, dtype):
    impls = lif_impls(device)
    names = list(impls)
    print(f"\n## lif (fwd+bwd, {dtype}); ratio = peer / {names[0]}; roofline = 6 words/element")
    print("| T | B*N | " + " | ".join(f"{n} ms" for n in names) + " | " +
          " | ".join(f"{n} ratio" for n in names[1:]) + f" | {names[0]} GB/s | roofline |")
    print("|" + "---|" * (3 + 2 * len(names)))
    for T, BN in args.lif_sizes:
        x = (torch.randn(T, BN, generator=torch.Generator().manual_seed(0)) * 1.5).to(device, dtype)
        ref = impls[names[0]](x)
        for n in names[1:]:
            assert torch.equal(impls[n](x).to(ref.dtype), ref), f"{n}: spikes differ"
        ms = {n: timed(fwd_bwd(impls[n], x), args.repeat, device) for n in names}
        gbs = 6 * x.numel() * x.element_size() / (ms[names[0]] / 1000) / 1e9
        roof = f"{gbs / args.peak_gbs:.0%}" if args.peak_gbs else "—"
        print(f"| {T} | {BN} | " + " | ".join(f"{ms[n]:.2f}" for n in names) + " | " +
              " | ".join(f"{ms[n] / ms[names[0]]:.2f}x" for n in names[1:]) + f" | {gbs:.0f} | {roof} |",
              flush=True)


def bench_gated(args, device, dtype):
    from bioplaus.kernels import leaky_scan

    impls = {f"bioplaus-{b}": (lambda x, a, b=b: leaky_scan((1 - a) * x, a, 1.0, backend=b)[0])
             for b in (["torch", "triton"] if device.type == "cuda" else ["torch"])}
    if device.type == "cuda":
        try:
            from fla.ops.hgrn import fused_recurrent_hgrn

            def run_fla(x, a):          # fla is batch-major [B, T, D] with log-space gates
                return fused_recurrent_hgrn((1 - a).mul(x).transpose(0, 1).unsqueeze(0),
                                            a.log().transpose(0, 1).unsqueeze(0))[0]
            impls["fla-hgrn"] = run_fla
        except ImportError:
            print("# flash-linear-attention not importable: its HGRN skipped")
    names = list(impls)
    print(f"\n## gated recurrence h_t = a_t h_(t-1) + (1 - a_t) x_t (fwd+bwd, {dtype})")
    print("| T | B*N | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|" + "---|" * (2 + len(names)))
    for T, BN in args.gated_sizes:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(T, BN, generator=g).to(device, dtype)
        a = torch.rand(T, BN, generator=g).mul(0.9).add(0.05).to(device, dtype)
        ms = {n: timed(fwd_bwd(f, x, a), args.repeat, device) for n, f in impls.items()}
        print(f"| {T} | {BN} | " + " | ".join(f"{ms[n]:.2f}" for n in names) + " |", flush=True)


def bench_gla(args, device, dtype):
    from bioplaus.kernels import gla

    backend = "triton" if device.type == "cuda" else "torch"
    impls = {f"bioplaus-recurrent-{backend}": lambda q, k, v, g: gla(q, k, v, g, backend=backend),
             "bioplaus-chunk-torch": lambda q, k, v, g: gla(q, k, v, g, form="chunk")}
    if device.type == "cuda":
        try:
            from fla.ops.gla import chunk_gla, fused_recurrent_gla

            def bt(f):                  # fla is batch-major [B, T, H, K]
                return lambda q, k, v, g: f(*(t.transpose(0, 1) for t in (q, k, v, g)))[0]
            impls["fla-fused_recurrent"] = bt(fused_recurrent_gla)
            impls["fla-chunk"] = bt(chunk_gla)
        except ImportError:
            print("# flash-linear-attention not importable: its GLA skipped")
    names = list(impls)
    print(f"\n## gla, K = V = 64 (fwd+bwd, {dtype})")
    print("| T | B | H | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|" + "---|" * (3 + len(names)))
    for T, B, H in args.gla_sizes:
        g = torch.Generator().manual_seed(2)
        q, k = (torch.randn(T, B, H, 64, generator=g).to(device, dtype) for _ in range(2))
        v = torch.randn(T, B, H, 64, generator=g).to(device, dtype)
        gate = torch.nn.functional.logsigmoid(torch.randn(T, B, H, 64, generator=g)).to(device, dtype)
        ms = {n: timed(fwd_bwd(f, q, k, v, gate), args.repeat, device) for n, f in impls.items()}
        print(f"| {T} | {B} | {H} | " + " | ".join(f"{ms[n]:.2f}" for n in names) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth for the roofline")
    ap.add_argument("--only", nargs="*", default=["lif", "gated", "gla"])
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    gpu = device.type == "cuda"
    if gpu and args.peak_gbs is None:
        name = torch.cuda.get_device_name()
        args.peak_gbs = next((v for k, v in PEAK_GBS.items() if k in name), None)
    args.lif_sizes = [(T, n) for T in (4, 16, 64) for n in (2**20, 2**24)] if gpu else \
        [(8, 2**16), (32, 2**16), (64, 2**15)]
    args.gated_sizes = [(T, 2**22) for T in (16, 64)] if gpu else [(32, 2**16)]
    args.gla_sizes = [(2048, 4, 8)] if gpu else [(64, 2, 2)]
    print(f"# device {torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, python {platform.python_version()}, threads {torch.get_num_threads()}")
    for name in args.only:
        {"lif": bench_lif, "gated": bench_gated, "gla": bench_gla}[name](args, device, dtype)


if __name__ == "__main__":
    main()
