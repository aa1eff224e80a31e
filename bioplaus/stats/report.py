"""A run's report: the statistics of its trained model's inference and the cost of its training, built once.

    rep = report(rule, x_stats, energy, train_metrics, batch_size=64, attrs={...})
    metrics.update(rep.metrics())          # train_energy_pj_per_step, stats (the summary)
    rep.write(run_dir)                     # stats.h5, stats.json, stats.csv (atomically)

The training cost per step comes from the trainer's meter (bioplaus.stats.cost: MACs and ACs of the first
update, passes per update) and is priced once by the energy model; the same dict is the `train_cost`
attribute of stats.h5, the `train_*` entries of its summary, and `train_energy_pj_per_step` in metrics.json.
With `x_stats` None (stats.enabled=false) only the training cost is reported and nothing is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from bioplaus.stats.collect import collect, summary
from bioplaus.stats.energy import EnergyModel
from bioplaus.stats.export import write_flat, write_h5


def training_cost(train_metrics: dict, energy: EnergyModel, batch_size: int) -> dict:
    """Per training step (one update on a whole batch): MACs, ACs, their compute energy (pJ), the passes of
    one update and the batch size."""
    mac, ac = train_metrics["train_mac_per_step"], train_metrics["train_ac_per_step"]
    return {"mac_per_step": mac, "ac_per_step": ac, "energy_pj_per_step": energy.compute_pj(mac, ac),
            "passes_per_update": train_metrics["passes_per_update"], "batch_size": int(batch_size)}


@dataclass
class Report:
    """Per-layer inference statistics (`layers`, None when not collected), their `summary`, the `train_cost`
    per step, and the attributes stats.h5 carries."""

    train_cost: dict
    layers: dict | None = None
    summary: dict | None = None
    attrs: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """What metrics.json gets: the training energy per step, and the statistics summary if collected."""
        out = {"train_energy_pj_per_step": self.train_cost["energy_pj_per_step"]}
        if self.summary is not None:
            out["stats"] = self.summary
        return out

    def write(self, run_dir: str | Path) -> None:
        """stats.h5, stats.json and stats.csv into run_dir (nothing when statistics were not collected)."""
        if self.layers is None:
            return
        run_dir = Path(run_dir)
        write_h5(run_dir / "stats.h5", self.layers, self.summary, self.attrs)
        write_flat(run_dir, self.layers, self.summary, self.attrs)


def report(rule: nn.Module, x_stats: Tensor | None, energy: EnergyModel, train_metrics: dict, batch_size: int,
           stats_batch_size: int = 500, attrs: dict | None = None, reduce=None) -> Report:
    """Collect the statistics of `rule`'s inference over x_stats [N, ...] (bioplaus.stats.collect; `reduce` sums
    the raw totals over data-parallel ranks) and price the training cost from the trainer's metrics."""
    cost = training_cost(train_metrics, energy, batch_size)
    if x_stats is None:
        return Report(cost)
    layers = collect(rule.model, x_stats, energy, batch_size=int(stats_batch_size), rule=rule, reduce=reduce)
    summ = {**summary(layers), **{f"train_{k}": cost[k] for k in ("mac_per_step", "ac_per_step",
                                                                   "energy_pj_per_step")}}
    attrs = {**(attrs or {}), "energy": energy.as_dict(), "train_cost": cost}
    return Report(cost, layers, summ, attrs)


__all__ = ["Report", "report", "training_cost"]
