"""NeuroBench's metrics on a trained bioplaus spiking model, computed by the `neurobench` package, beside
bioplaus's own statistics on the same model and test batch.

    nb = neurobench_metrics(model, x, y)        # NeuroBench: footprint, connection sparsity, activation sparsity,
                                                # synaptic operations (effective MACs / ACs, dense), accuracy
    bp = bioplaus_metrics(model, x, y)          # the same quantities from bioplaus.stats.collect
    rows = comparison(nb, bp)                   # one row per metric: both values and how the definitions differ
    python -m bioplaus.export.neurobench_metrics RUN_DIR     # -> RUN_DIR/neurobench.json beside stats.h5

NeuroBench sees the model through hooks: every nn.Linear / nn.Conv* is a connection layer, every bioplaus neuron
(registered as an activation module) an activation layer; it runs the model's own forward on x. How its
definitions relate to bioplaus's (`DEFINITIONS` holds the same text for neurobench.json):

    footprint_bytes      NB: bytes of all parameters and buffers. bioplaus counts parameters (stats `params`),
                         not bytes and not buffers: NB = params x 4 (float32) + buffer bytes (a BatchNorm's
                         running mean / var, float32, and its int64 batch counter).
    connection_sparsity  NB: the fraction of exactly-zero weights of the connection layers (no biases, no neuron
                         parameters). bioplaus has no such statistic and its SOPs count every synapse, zero or not:
                         bioplaus's side here is the same fraction counted from the model.
    activation_sparsity  NB: 1 - non-zero outputs / outputs of all neuron layers over every step and sample, i.e.
                         1 - the neuron-weighted firing rate. bioplaus: 1 - sum(spike_counts) / sum(n_neurons T);
                         its summary `mean_firing_rate` is the unweighted mean over layers instead.
    effective_acs        NB: accumulates from binary inputs: per call, the non-zero inputs times their non-zero
                         weights. bioplaus `sop`: input spikes x fan-out (exact at conv borders). Equal while no
                         weight is exactly zero; with pruned weights NB counts fewer (bioplaus prices every synapse).
    effective_macs       NB: multiply-accumulates from non-binary inputs, counting only non-zero inputs and non-zero
                         weights. bioplaus `mac`: dense MACs, every input and weight (what a dense accelerator
                         runs). NB <= bioplaus; here the zeros are blank pixels of the direct-encoded input and
                         silent neurons in the time-averaged readout input.
    dense_synops         NB: every connection times every call, zeros included. bioplaus: its dense MAC formula
                         (bioplaus.stats.opcount) applied to every layer, spiking ones too: Linear rows x in x
                         out, conv outputs x C_in x taps. Equal for Linear layers; at conv borders bioplaus
                         counts the zero-padded taps and NB does not, so for ConvNets NB < bioplaus.
    accuracy             NB's ClassificationAccuracy of argmax(model(x)); bioplaus: the same on the same batch.

Both sides are per inference sample, summed over the T steps. The `neurobench` package is optional: install it with
`pip install --no-deps neurobench==2.3.0` (its torchaudio requirement would replace a CPU torch).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from bioplaus.atomic import atomic_write
from bioplaus.errors import ConfigError, require
from bioplaus.models.base import Layered
from bioplaus.neurons import BaseNeuron
from bioplaus.stats.collect import collect
from bioplaus.stats.energy import preset

INSTALL = "pip install --no-deps neurobench==2.3.0 (its torchaudio requirement would replace a CPU torch)"
CONNECTIONS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)        # NeuroBench's connection (synapse) layers

DEFINITIONS = {
    "footprint_bytes": "NB: bytes of parameters + buffers; bioplaus: parameters x element size (buffers such as "
                       "BatchNorm statistics are not counted)",
    "connection_sparsity": "both: fraction of exactly-zero weights in Linear/Conv layers (bioplaus's SOPs count "
                           "every synapse regardless)",
    "activation_sparsity": "both: 1 - spikes / (neurons x steps) over all neuron layers (neuron-weighted; "
                           "bioplaus's mean_firing_rate averages layers unweighted)",
    "effective_acs": "NB: non-zero binary inputs x non-zero weights; bioplaus sop: input spikes x fan-out "
                     "(equal unless weights are exactly zero)",
    "effective_macs": "NB: non-zero analog inputs x non-zero weights; bioplaus mac: dense, every input and weight",
    "dense_synops": "NB: all in-bounds connections x calls; bioplaus: its dense MAC formula on every layer "
                    "(zero-padded conv taps included)",
    "accuracy": "both: argmax accuracy of the model's forward on the same batch",
}


def _nb():
    return require("neurobench", "NeuroBench metrics need", INSTALL)


@torch.no_grad()
def neurobench_metrics(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> dict[str, float]:
    """NeuroBench 2.x's static and workload metrics of `model` (its forward, eval mode) on x [N, ...], y [N]."""
    _nb()
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations
    from neurobench.models import TorchModel

    wrapped = TorchModel(model)
    wrapped.add_activation_module(BaseNeuron)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    bench = Benchmark(wrapped, loader, [], [lambda preds: preds.argmax(-1)],
                      [[Footprint, ConnectionSparsity], [ActivationSparsity, SynapticOperations,
                                                         ClassificationAccuracy]])
    try:
        res = bench.run(quiet=True, device=str(next(model.parameters()).device))
    finally:
        wrapped.cleanup_hooks()
    ops = res["SynapticOperations"]
    return {"footprint_bytes": float(res["Footprint"]), "connection_sparsity": float(res["ConnectionSparsity"]),
            "activation_sparsity": float(res["ActivationSparsity"]), "effective_acs": float(ops["Effective_ACs"]),
            "effective_macs": float(ops["Effective_MACs"]), "dense_synops": float(ops["Dense"]),
            "accuracy": float(res["ClassificationAccuracy"])}


def _dense_macs(model: nn.Module, x: Tensor) -> float:
    """bioplaus's dense count per sample: bioplaus.stats.opcount's MAC formulas with every operand taken as
    dense: Linear rows x in x out; conv out.numel() x C_in/groups x kernel taps (zero-padded taps included)."""
    total = 0.0

    def count(mod, inp, out):
        nonlocal total
        total += out.numel() * (mod.in_features if isinstance(mod, nn.Linear) else mod.weight[0].numel())

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, CONNECTIONS)]
    was = model.training
    model.eval()
    try:
        model(x[:1].to(next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return float(total)


@torch.no_grad()
def bioplaus_metrics(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> dict[str, float]:
    """bioplaus's counterparts of `neurobench_metrics` (see the module docstring), from bioplaus.stats.collect on
    the same model and batch."""
    layers = collect(model, x, preset("fp32_45nm"), batch_size=batch_size)
    spiking = [r for r in layers.values() if "spike_counts" in r]
    T = int(model.T) if isinstance(model, Layered) and model.spiking else 1
    weights = [m.weight for m in model.modules() if isinstance(m, CONNECTIONS)]
    zeros, synapses = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
    params = sum(float(r["params"]) for r in layers.values())
    elem = next(model.parameters()).element_size()
    mac = float(sum(np.sum(r["mac"]) for r in layers.values()))
    sop = float(sum(np.sum(r["sop"]) for r in layers.values()))
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    pred = torch.cat([model(x[i:i + batch_size].to(device)).argmax(-1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was)
    return {
        "footprint_bytes": params * elem,
        "connection_sparsity": zeros / max(1, synapses),
        "activation_sparsity": 1.0 - float(sum(r["spike_counts"].sum() for r in spiking))
        / max(1.0, float(sum(r["n_neurons"] * T for r in spiking))),
        "effective_acs": sop,
        "effective_macs": mac,
        "dense_synops": _dense_macs(model, x),
        "accuracy": float((pred.cpu() == y.cpu()).float().mean()),
    }


def comparison(nb: dict, bp: dict) -> list[dict]:
    """One row per metric: NeuroBench's value, bioplaus's, their ratio and how the definitions differ."""
    return [{"metric": k, "neurobench": nb[k], "bioplaus": bp[k],
             "ratio": nb[k] / bp[k] if bp[k] else (1.0 if nb[k] == 0 else math.inf), "definition": DEFINITIONS[k]}
            for k in DEFINITIONS]


def _load_job(run_dir: Path):
    """The run's job rebuilt from the config in its stats.h5, with the trained weights of its checkpoint.pt."""
    from omegaconf import OmegaConf

    from bioplaus import checkpoint
    from bioplaus.run import build
    from bioplaus.stats.export import load

    stats_file, ck_file = run_dir / "stats.h5", run_dir / "checkpoint.pt"
    if not stats_file.is_file():
        raise ConfigError(f"{run_dir} has no stats.h5: give the directory of a finished bioplaus-run job")
    if not ck_file.is_file():
        raise ConfigError(f"{run_dir} has no checkpoint.pt, so its trained weights are not on disk: rerun the job "
                          "with trainer.checkpoint=true trainer.keep_checkpoint=true")
    attrs = load(stats_file)["attrs"]
    cfg = OmegaConf.create(attrs["config"])
    job = build(cfg)
    job.rule.load_state_dict(checkpoint.load(ck_file)["rule"])
    n = int(attrs.get("n_samples") or len(job.data.x_test))
    return job, job.data.x_test[:n], job.data.y_test[:n]


def write(run_dir: str | Path, batch_size: int = 500) -> dict:
    """NeuroBench's metrics and bioplaus's counterparts of a finished run (its model, its stats samples), written
    atomically to RUN_DIR/neurobench.json; returns that document."""
    run_dir = Path(run_dir)
    job, x, y = _load_job(run_dir)
    model = job.rule.model.to(job.device)
    if not (isinstance(model, Layered) and model.spiking):
        raise ConfigError(f"model {job.names['model']} is not spiking: NeuroBench's synaptic operations and "
                          "activation sparsity compare against bioplaus's spike statistics")
    nb, bp = neurobench_metrics(model, x, y, batch_size), bioplaus_metrics(model, x, y, batch_size)
    doc = {"run": {**job.names, "seed": job.seed, "n_samples": len(x)},
           "versions": {"neurobench": _nb().__version__}, "neurobench": nb, "bioplaus": bp,
           "comparison": comparison(nb, bp)}
    atomic_write(run_dir / "neurobench.json", lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)))
    return doc


def cli(argv: list[str] | None = None) -> None:
    """`python -m bioplaus.export.neurobench_metrics RUN_DIR` (console script `bioplaus-neurobench`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: bioplaus-neurobench RUN_DIR   (a run made with trainer.checkpoint=true "
              "trainer.keep_checkpoint=true; writes RUN_DIR/neurobench.json)", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    try:
        doc = write(argv[0])
    except ConfigError as e:
        print(f"bioplaus-neurobench: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{'metric':<22}{'neurobench':>16}{'bioplaus':>16}")
    for row in doc["comparison"]:
        print(f"{row['metric']:<22}{row['neurobench']:>16.6g}{row['bioplaus']:>16.6g}")
    print(f"wrote {Path(argv[0]) / 'neurobench.json'}")


if __name__ == "__main__":
    cli()


__all__ = ["DEFINITIONS", "bioplaus_metrics", "comparison", "neurobench_metrics", "write"]
