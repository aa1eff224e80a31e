"""LearningRule: the one interface every credit-assignment strategy implements, with every hook the engine calls.

A rule owns every trainable network it needs (the model, plus any feedback nets, embeddings or
dendrites) so `state_dict()` checkpoints all of it. The trainer owns the optimizer: it zeroes the
gradients, calls `assign_credit(x, y)`, then steps. A rule only *fills `.grad`* of its parameters —
backprop by `loss.backward()`, a local rule by writing its own update as -Δw into `.grad`.

    rule = MyRule(model, **hparams)
    logs = rule.assign_credit(x, y)     # dict of floats for logging, e.g. {"loss": 0.31}
    logits = rule.predict(x)            # [B, n_classes]
    rebuild = rule.on_epoch_end(epoch, metrics)   # True -> the parameter set changed

Everything else the engine reads is declared here with its default, so a new rule overrides only what it
changes:

    name                 the label in metrics and tables (default: the class name in snake_case)
    supported_models     model base classes the rule can train (None = any), checked at construction
    lr_scale             multiplies the trainer's learning rate for the rule's parameters (param_groups)
    param_groups()       optimizer groups; a group may carry its own "lr_scale"
    trainable_parameters()
    pass_probe()         the module whose calls count as one forward/backward pass of an update
    inference_layers()   the modules `predict` runs, for the per-layer statistics of inference
    extra_metrics()      what the rule reports about itself in metrics.json (e.g. dendrite growth)
    parallel_split       "batch" (data parallel: each rank a share of the batch) or "blocks" (each rank a
                         share of the rule's own blocks, set by `set_partition(rank, world)`)
    on_train_start(epochs) the epoch budget, once before the first epoch (also on resume), for schedules that
                         depend on it (no dendrite growth in the last epochs, reloading the best layer at the end)
    on_epoch_end(...)    True when the parameter set changed (the trainer rebuilds its optimizer)

`check_choice` and `check_positive` validate hyperparameters with one clear message. What an update costs
(ops, passes, saved activations, time, memory) is measured by the trainer the same way for every rule.
"""
from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from bioplaus.errors import ConfigError, UnsupportedModelError
from bioplaus.models.base import Layered, model_name, snake

SPLITS = ("batch", "blocks")


def check_choice(key: str, value, choices, rule: str | None = None):
    """`value` if it is one of `choices`, else a ConfigError: unknown rule.<key> '<value>' [for <rule>]:
    choose one of ..."""
    if value not in choices:
        where = f" for {rule}" if rule else ""
        raise ConfigError(f"unknown rule.{key} '{value}'{where}: choose one of {', '.join(map(str, choices))}")
    return value


def check_positive(key: str, value) -> float:
    """`value` as a finite float > 0, else a ConfigError naming rule.<key>."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v > 0 and math.isfinite(v)):
        raise ConfigError(f"rule.{key} must be a positive number, got {value}")
    return v


class LearningRule(nn.Module, metaclass=abc.ABCMeta):
    """Base class for learning rules. Subclasses implement `assign_credit` (see the module docstring)."""

    name: str = "learning_rule"
    supported_models: tuple[type, ...] | None = None
    lr_scale: float = 1.0
    parallel_split: str = "batch"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" not in cls.__dict__:           # every class its own label (a subclass of Backprop is not "backprop")
            cls.name = snake(cls.__name__)
        allowed = cls.supported_models
        if allowed is not None and not (isinstance(allowed, tuple) and all(isinstance(c, type) for c in allowed)):
            raise TypeError(f"{cls.__name__}.supported_models must be a tuple of model classes (e.g. (MLP, ConvNet) "
                            f"from bioplaus.models), got {allowed!r}")

    def __init__(self, model: nn.Module):
        super().__init__()
        allowed = self.supported_models
        if allowed is not None and not isinstance(model, allowed):
            raise UnsupportedModelError(
                f"rule {self.name} cannot train model {model_name(model)}: it supports "
                f"{', '.join(model_name(c) for c in allowed)}; pick one of those with model=...")
        self.model = model

    @abc.abstractmethod
    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Fill .grad of this rule's parameters for one batch (x [B, ...], y [B]); never step."""

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Logits [B, n_classes]. Rules with a special inference procedure override this."""
        return self.model(x)

    def inference_layers(self) -> dict[str, nn.Module]:
        """The modules `predict` runs, by name, for the statistics layer's per-layer account of inference
        (ops run outside them are reported as "other"). Default: the model's layers and head. Rules that
        infer through their own networks (NoProp's denoising blocks) override this."""
        return {**{f"layers.{i}": m for i, m in enumerate(self.model.layers)}, "head": self.model.head}

    def pass_probe(self) -> nn.Module | None:
        """The module whose forward (and backward) calls the trainer counts as one pass of an update
        (`passes_per_update`). Default: the model's first layer (None for a model without layers). A rule whose
        passes do not run that module as a whole (EP's relaxation steps) returns the module that runs once per
        pass."""
        return self.model.layers[0] if isinstance(self.model, Layered) else None

    def on_train_start(self, epochs: int) -> None:
        """Called by the trainer once before the first epoch (and again when a run resumes) with the run's epoch
        budget, so a schedule can plan for the end of the run. Default: nothing."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """Called after each epoch's evaluation; return True if the parameter set changed."""
        return False

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups; each carries "lr_scale", multiplying the trainer's lr. Default: every
        trainable parameter at the rule's `lr_scale`."""
        return [self.group(self.trainable_parameters(), self.lr_scale)]

    @staticmethod
    def group(params, lr_scale: float = 1.0) -> dict:
        """One optimizer group: {"params": [...], "lr_scale": lr_scale}."""
        return {"params": list(params), "lr_scale": float(lr_scale)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer should update (those that require grad)."""
        return [p for p in self.parameters() if p.requires_grad]

    def extra_metrics(self) -> dict:
        """What the rule reports about itself, merged into metrics.json (default: nothing)."""
        return {}

    def set_partition(self, rank: int, world: int) -> None:
        """parallel_split = "blocks": train only this rank's share of the rule's blocks. Rules that split by
        batch (the default) have nothing to partition."""
        raise ConfigError(f"rule {self.name} splits data-parallel work by batch (parallel_split='batch'); "
                          "only block-parallel rules take a partition")


class GreedyLayers:
    """Mixin for a layer-wise greedy schedule: `self.stage` is the highest layer being trained, and
    `_set_trainable()` (the rule's own) freezes the others. `advance_stage` moves to the next layer after
    every `epochs_per_layer` epochs; a rule's `on_epoch_end` returns its result (True = rebuild)."""

    stage: int

    def advance_stage(self, epoch: int, greedy: bool, epochs_per_layer: int) -> bool:
        if not greedy or self.stage >= len(self.model.layers) - 1 or (epoch + 1) % epochs_per_layer:
            return False
        self.stage += 1
        self._set_trainable()
        return True


__all__ = ["GreedyLayers", "LearningRule", "SPLITS", "check_choice", "check_positive"]
