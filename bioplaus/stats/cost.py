"""What training costs, measured the same way for every rule: the trainer's meter.

`TrainingMeter` is the one object the training loop calls for every measurement:

    meter = TrainingMeter(rule, device)
    with meter.run():                          # peak memory of the whole run (bioplaus.stats.memory.PeakMemory)
        for epoch ...:
            with meter.epoch():                # wall time of the training steps (no evaluation)
                for batch ...:
                    with meter.update(first=steps == 0):    # the first update: its ops, passes, saved bytes
                        rule.assign_credit(x, y)
    meter.metrics(steps, op_sum)               # -> the cost part of metrics.json

and its `state()` / `load_state()` go into checkpoints, so a resumed run reports what an uninterrupted one
would. The first update is measured by

- `UpdateCost`: MACs and ACs of every op `assign_credit` ran (forward and backward, whole batch;
  bioplaus.stats.opcount), and how many forward and backward passes went through the rule's `pass_probe()`
  (the model's first layer by default; EP returns the module that runs once per relaxation step);
- `SavedTensors` (bioplaus.stats.memory): the bytes autograd kept for backward (parameters excluded), in
  total and at the peak.

Metrics (units in the names): train_time_s (training steps only), time_per_step_ms, peak_mem_mb,
saved_for_backward_mb, held_for_backward_peak_mb, passes_per_update ({"forward", "backward"}),
train_mac_per_step, train_ac_per_step (whole batch, one update).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from bioplaus.stats.memory import PeakMemory, SavedTensors
from bioplaus.stats.opcount import OpCounter


class UpdateCost:
    """Ops and passes of one `assign_credit` (see the module docstring)."""

    def __init__(self, rule: nn.Module):
        self.layer = rule.pass_probe()
        self._weights = list(rule.parameters())
        self.passes = {"forward": 0, "backward": 0}
        self.ops = {"mac": 0.0, "ac": 0.0}

    def _on_forward(self, mod, inp, out):
        self.passes["forward"] += 1
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.passes["backward"] += 1

    def __enter__(self):
        self._counter = OpCounter(weights=self._weights)
        self._hook = self.layer.register_forward_hook(self._on_forward) if self.layer is not None else None
        self._counter.__enter__()
        return self

    def __exit__(self, *exc):
        self._counter.__exit__(*exc)
        if self._hook is not None:
            self._hook.remove()
        self.ops = self._counter.totals()
        return False


class TrainingMeter:
    """Time, peak memory and the first update's cost of one training run (see the module docstring)."""

    def __init__(self, rule: nn.Module, device: torch.device):
        self.rule, self.device = rule, torch.device(device)
        self.train_time, self.peak_mb = 0.0, 0.0
        self.saved, self.cost = SavedTensors(), UpdateCost(rule)

    @contextmanager
    def run(self):
        with PeakMemory(self.device) as mem:
            yield self
        self.peak_mb = mem.peak_mb

    @contextmanager
    def epoch(self):
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0

    @contextmanager
    def update(self, first: bool):
        """Measure this update's ops, passes and saved bytes when `first`; otherwise do nothing."""
        if not first:
            yield
            return
        self.cost = UpdateCost(self.rule)
        with SavedTensors(exclude=self.rule.parameters()) as self.saved, self.cost:
            yield

    def state(self) -> dict:
        return {"train_time_s": self.train_time, "cost": (self.saved.bytes, self.saved.peak, self.cost.passes,
                                                          self.cost.ops)}

    def load_state(self, state: dict) -> None:
        self.train_time = state["train_time_s"]
        self.saved.bytes, self.saved.peak, self.cost.passes, self.cost.ops = state["cost"]

    def metrics(self, steps: int, op_sum=None) -> dict:
        """The cost metrics after `steps` updates; op_sum(list) sums the first update's MACs and ACs over
        data-parallel ranks (None: this process's)."""
        ops = [self.cost.ops["mac"], self.cost.ops["ac"]]
        mac, ac = op_sum(ops) if op_sum is not None else ops
        return {
            "train_time_s": self.train_time,
            "time_per_step_ms": 1000 * self.train_time / max(steps, 1),
            "peak_mem_mb": self.peak_mb,
            "saved_for_backward_mb": self.saved.bytes / 2**20,
            "held_for_backward_peak_mb": self.saved.peak / 2**20,
            "passes_per_update": self.cost.passes,
            "train_mac_per_step": mac,
            "train_ac_per_step": ac,
        }


__all__ = ["TrainingMeter", "UpdateCost"]
