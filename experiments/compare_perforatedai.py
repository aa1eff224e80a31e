"""bioplaus' perforated dendrites beside the PerforatedAI package's own, on the bottleneck MLP 64-4-10 (digits).

The package (PyPI `perforatedai`, Apache-2.0, Cython-compiled; its open part trains dendrites by gradient descent,
the correlation-trained PB being the closed `perforatedbp` add-on) is not a dependency of bioplaus: its declared
requirements pull torchvision (a CUDA torch) and a dashboard stack. Install it beside bioplaus without them:

    pip install --no-deps perforatedai==3.2.9 pandas safetensors pytz tzdata

Every arm gets the same split (bioplaus' seeded 10% validation hold-out, which the growth triggers read), the same
net, Adam 1e-3 at a constant lr, batch 64 and 150 epochs (the package's run ends earlier when its tracker says the
training is complete). The package runs with its defaults (history switch after 10 epochs, improvement thresholds,
sigmoid dendrites at init 0.01, best-model reloads, learning-rate search after each switch) and max_dendrites 3 as
in bioplaus' config; its files go to a temporary folder. Prints one row per arm and seed, and the means.

    OMP_NUM_THREADS=1 python experiments/compare_perforatedai.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from importlib import resources

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bioplaus.data import digits
from bioplaus.models import MLP
from bioplaus.rules.perforated import Perforated
from bioplaus.train import TrainConfig, split_validation, train


def run_package(data, seed: int, epochs: int) -> dict:
    """The PerforatedAI package's GD dendrites on a plain 64-4-10 net, its own tracker deciding growth."""
    from perforatedai import globals_perforatedai as GPA
    from perforatedai import utils_perforatedai as UPA

    xtr, ytr, xva, yva = split_validation(data.x_train, data.y_train, 0.1, seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.ReLU(), torch.nn.Linear(4, 10))
    for setting in ("silent", "unwrapped_modules_confirmed", "weight_decay_accepted", "configuration_confirmed"):
        getattr(GPA.pc, f"set_{setting}")(True)
    GPA.pc.set_testing_dendrite_capacity(False)
    GPA.pc.set_max_dendrites(3)
    with contextlib.redirect_stdout(io.StringIO()):
        model = UPA.perforate_model(model, save_name=f"PAI_s{seed}", making_graphs=False)
    GPA.pai_tracker.set_optimizer(torch.optim.Adam)
    opt, _ = GPA.pai_tracker.setup_optimizer(model, {"params": model.parameters(), "lr": 1e-3}, {})
    gen = torch.Generator().manual_seed(seed)

    def acc(x, y):
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()

    start, ran = time.perf_counter(), 0
    for _ in range(epochs):
        ran += 1
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        model.eval()
        with contextlib.redirect_stdout(io.StringIO()):
            model, restructured, complete = GPA.pai_tracker.add_validation_score(acc(xva, yva), model)
        if restructured:
            opt, _ = GPA.pai_tracker.setup_optimizer(model, {"params": model.parameters(), "lr": 1e-3}, {})
        if complete:
            break
    model.eval()
    return {"test_acc": acc(data.x_test, data.y_test), "params": sum(p.numel() for p in model.parameters()),
            "dendrites": GPA.pai_tracker.member_vars.get("num_dendrites_added"), "epochs": ran,
            "time_s": time.perf_counter() - start}


def run_bioplaus(data, seed: int, epochs: int, config: str) -> dict:
    """bioplaus' Perforated rule with configs/rule/<config>.yaml, through the trainer."""
    def load(name: str):
        return OmegaConf.create((resources.files("bioplaus.configs") / "rule" / f"{name}.yaml").read_text())

    cfg = load(config)
    if "defaults" in cfg:                                   # perforated_gd / _paper: perforated.yaml + overrides
        cfg = OmegaConf.merge(load("perforated"), {k: v for k, v in cfg.items() if k != "defaults"})
    kw = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    torch.manual_seed(seed)
    rule = Perforated(MLP([1, 8, 8], 10, hidden=[4]), **kw)
    start = time.perf_counter()
    m = train(rule, data, TrainConfig(epochs=epochs, progress=False, lr_schedule="constant", val_fraction=0.1),
              seed=seed)
    rep = rule.parameter_report()
    return {"test_acc": m["test_acc"], "params": rep["base_params"] + rep["dendrite_params"],
            "dendrites": rep["n_dendrites"], "epochs": epochs, "time_s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=150)
    args = ap.parse_args()
    try:
        import perforatedai  # noqa: F401
    except ImportError:
        raise SystemExit("compare_perforatedai: the perforatedai package is not installed; see this script's "
                         "docstring for the install line") from None
    data = digits()
    arms = {"perforatedai (gd)": lambda s: run_package(data, s, args.epochs)}
    for config in ("perforated_paper", "perforated_gd", "perforated"):
        arms[f"bioplaus {config}"] = lambda s, c=config: run_bioplaus(data, s, args.epochs, c)
    results = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)                                       # the package writes its checkpoints to the cwd
        for seed in args.seeds:
            for name, run in arms.items():
                r = run(seed)
                results[name].append(r)
                print(f"{name:28s} seed {seed}: test {r['test_acc']:.4f}  params {r['params']}  dendrites "
                      f"{r['dendrites']}  epochs {r['epochs']}  {r['time_s']:.1f} s", flush=True)
    print("\n| arm | test acc (" + " / ".join(f"s{s}" for s in args.seeds) + ") | mean | params |\n|---|---|---|---|")
    for name, rows in results.items():
        accs = [r["test_acc"] for r in rows]
        print(f"| {name} | {' / '.join(f'{a:.4f}' for a in accs)} | {sum(accs) / len(accs):.4f} | "
              f"{' / '.join(str(r['params']) for r in rows)} |")


if __name__ == "__main__":
    main()
