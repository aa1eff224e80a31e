"""Benchmark: one whole training step (forward, loss, backward, Adam step) of the same spiking network in bioplaus,
SpikingJelly and snnTorch, interleaved in one process; medians and ratios.

Networks (direct encoding, LIF tau 2 without input decay, hard reset detached, ATan(2), cross-entropy on the
time-averaged logits, torch.optim.Adam(lr=1e-3) for every implementation):

- mlp         SpikingMLP 784-256-256-10, T = 8, batch 128, input 1x28x28
- conv        SpikingConvNet channels 16-32 (conv3x3-BN-LIF-maxpool2 each), T = 4, batch 128, input 1x28x28
- spikformer  Spikformer-tiny as in configs/model/spikformer.yaml (dim 32, depth 1, 1 head, MLP x4, patch 2,
              T = 4), batch 128, input 1x8x8 (the digits it is configured for)

Implementations: bioplaus (the model + rule=backprop, i.e. `Backprop.assign_credit` then the optimizer, exactly
what `bioplaus.train` runs per step), SpikingJelly (multi-step modules, as its tutorials), snnTorch's tutorial
loop over T and the same loop with the first layer hoisted out of it (see train_step_peers.py). Before timing,
the logits of every implementation that computes the same function are checked against bioplaus's.

Each round times one step of every implementation in turn (so load on a shared machine hits all alike); the
table gives the median over rounds and each peer's median divided by bioplaus's (> 1: bioplaus is faster).

    OMP_NUM_THREADS=1 python experiments/bench_train_step.py                 # all three, ~2 min
    OMP_NUM_THREADS=1 python experiments/bench_train_step.py --models mlp --repeat 40
    OMP_NUM_THREADS=1 python experiments/bench_train_step.py --clock cpu      # on a machine shared with other jobs
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
import train_step_peers as peers

NEURON = {"kind": "lif", "tau": 2.0, "decay_input": False, "v_threshold": 1.0, "v_reset": 0.0, "detach_reset": True,
          "surrogate": "atan", "alpha": 2.0}


def stepper(net, params, x, y, loss_of=None):
    """One training step of `net` on (x, y) with its own Adam: zero_grad, forward, CE, backward, step."""
    opt = torch.optim.Adam(params, lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        if loss_of is not None:
            loss_of(x, y)
        else:
            F.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def bioplaus_impl(model, x, y):
    from bioplaus.rules.backprop import Backprop

    rule = Backprop(model)
    return stepper(model, rule.parameters(), x, y, loss_of=rule.assign_credit), model


def build(name: str, batch: int):
    """{impl: (step function, net whose logits are compared or None)} for one network."""
    from bioplaus.models import SpikingConvNet, SpikingMLP
    from bioplaus.models.spikformer import Spikformer

    torch.manual_seed(0)
    if name == "mlp":
        T, widths = 8, [784, 256, 256, 10]
        model = SpikingMLP((1, 28, 28), 10, hidden=widths[1:-1], T=T, neuron=NEURON)
        x = torch.rand(batch, 1, 28, 28)
        nets = {"spikingjelly": peers.sj_mlp(T, widths), "snntorch tutorial": peers.SnnMLP(T, widths, hoist=False),
                "snntorch hoisted": peers.SnnMLP(T, widths, hoist=True)}
        same = set(nets)
    elif name == "conv":
        T, chans = 4, [1, 16, 32]
        model = SpikingConvNet((1, 28, 28), 10, channels=chans[1:], T=T, neuron=NEURON)
        x = torch.rand(batch, 1, 28, 28)
        flat = model.dims[-1]
        nets = {"spikingjelly": peers.sj_convnet(T, chans, flat, 10),
                "snntorch tutorial": peers.SnnConvNet(T, chans, flat, 10, hoist=False),
                "snntorch hoisted": peers.SnnConvNet(T, chans, flat, 10, hoist=True)}
        same = {"spikingjelly"}
    elif name == "spikformer":
        cfg = {"dim": 32, "depth": 1, "heads": 1, "mlp_ratio": 4.0, "patch": 2, "T": 4}
        model = Spikformer((1, 8, 8), 10, **cfg, neuron=NEURON)
        x = torch.rand(batch, 1, 8, 8) * 2
        kw = {"c_in": 1, "dim": 32, "depth": 1, "heads": 1, "mlp_hidden": 128, "patch": 2, "n_classes": 10, "T": 4}
        nets = {"spikingjelly": peers.sj_spikformer(**kw), "snntorch tutorial": peers.snn_spikformer(False, **kw),
                "snntorch hoisted": peers.snn_spikformer(True, **kw)}
        same = {"spikingjelly"}
    else:
        raise SystemExit(f"unknown model '{name}': choose mlp, conv or spikformer")
    y = torch.randint(0, 10, (batch,))
    src = [p.detach().clone() for p in model.parameters()]
    impls = {"bioplaus": bioplaus_impl(model, x, y)}
    for impl, net in nets.items():
        peers.copy_params(net, src)
        impls[impl] = (stepper(net, net.parameters(), x, y), net)
    check(impls, same, x)
    return {k: fn for k, (fn, _) in impls.items()}


def check(impls, same, x):
    """Logits of the implementations in `same` equal bioplaus's (before any step); the others: shape only."""
    with torch.no_grad():
        ref = impls["bioplaus"][1](x)
        for name, (_, net) in impls.items():
            out = net(x)
            assert out.shape == ref.shape, (name, out.shape)
            if name in same:
                torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, msg=f"{name}: logits differ from bioplaus")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved(fns: dict, repeat: int, warmup: int, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlp", "conv", "spikformer"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: the process's CPU time (on a machine shared with other jobs, "
                         "time-slicing does not count; one thread only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import snntorch
    import spikingjelly

    sj_version = getattr(spikingjelly, "__version__", "2.0.0")
    print(f"# {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
          f"spikingjelly {sj_version}, snntorch {snntorch.__version__}, batch {args.batch}, median of {args.repeat}, "
          f"{args.clock} clock")
    print("| network | implementation | ms / step | / bioplaus |")
    print("|---|---|---|---|")
    for name in args.models:
        fns = build(name, args.batch)
        ms = {k: 1000 * v for k, v in interleaved(fns, args.repeat, args.warmup, CLOCKS[args.clock]).items()}
        for impl, v in ms.items():
            print(f"| {name} | {impl} | {v:.1f} | {v / ms['bioplaus']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
