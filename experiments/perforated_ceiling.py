"""How well can one dendrite correlate with its neuron's residual error at all? The ceiling behind perforated
dendrites' correlation ratio on the bottleneck MLP 64-W-10 (digits; --width W, 4 by default).

A dendrite of a layer sees that layer's input u (the head: the W-d code after ReLU, some units dead at W=4) and is one
unit g(v . u + c). After `--epochs` of plain backprop (Adam 1e-3, constant lr) the residual error e_j = dL/dz_j of
every neuron is fixed; the script then fits, per neuron, `--restarts` tanh units to maximise |Pearson corr(g, e_j)|
over the whole training set (full batch, Adam, `--steps` steps), far more optimisation than a p-phase gets, and
reports the best |corr| reached (mean over the neurons) beside the mean |corr| of random units of the same init
(PyTorch's Linear init, as the candidates start). Their quotient bounds the ratio any candidate score can reach for
a single dendrite on that layer. Prints one line per layer and seed.

    OMP_NUM_THREADS=1 python experiments/perforated_ceiling.py --seeds 0 1 2 [--width 8]
"""
from __future__ import annotations

import argparse

import torch

from bioplaus.data import digits
from bioplaus.models import MLP
from bioplaus.rules.dendrites import correlation
from bioplaus.rules.perforated import Perforated
from bioplaus.train import TrainConfig, train


def ceiling(u: torch.Tensor, e: torch.Tensor, restarts: int, steps: int) -> tuple[float, float, int]:
    """(mean over neurons of the best |corr| of a fitted tanh unit, mean |corr| of random units, live input dims)."""
    n, d_in = e.shape[1], u.shape[1]
    live = e.std(0) > 0
    lin = torch.nn.Linear(d_in, restarts * n)
    with torch.no_grad():
        random = correlation(torch.tanh(lin(u)), e.repeat(1, restarts)).abs().view(restarts, n)[:, live].mean()
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(steps):
        c = correlation(torch.tanh(lin(u)), e.repeat(1, restarts)).abs().view(restarts, n)[:, live]
        opt.zero_grad()
        (-c.mean()).backward()
        opt.step()
    best = c.detach().max(0).values.mean()
    return float(best), float(random), int((u.std(0) > 0).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--restarts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--width", type=int, default=4, help="bottleneck units (experiment=perforated: 4, _wide: 8)")
    args = ap.parse_args()
    data = digits()
    print("| seed | layer | live input dims | best fitted |corr| | random |corr| | ceiling ratio |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        torch.manual_seed(seed)
        rule = Perforated(MLP([1, 8, 8], 10, hidden=[args.width]), max_dendrites=0)          # the plain net, wrapped
        train(rule, data, TrainConfig(epochs=args.epochs, progress=False, lr_schedule="constant"), seed=seed)
        us, es, _ = rule.residual_errors(data.x_train, data.y_train)
        for name, u, e in zip(("layers.0", "head"), us, es):
            torch.manual_seed(seed)
            best, random, dims = ceiling(u, e, args.restarts, args.steps)
            print(f"| {seed} | {name} | {dims} | {best:.3f} | {random:.3f} | {best / random:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
