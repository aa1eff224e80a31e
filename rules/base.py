"""LearningRule: the one interface every credit-assignment strategy implements.

A rule owns every trainable network it needs (the model, plus any feedback nets, embeddings or
dendrites) so `state_dict()` checkpoints all of it. The trainer owns the optimizer: it zeroes the
gradients, calls `assign_credit(x, y)`, then steps. A rule only *fills `.grad`* of its parameters —
backprop by `loss.backward()`, a local rule by writing its own update as -Δw into `.grad`.

    rule = MyRule(model, **hparams)
    logs = rule.assign_credit(x, y)     # dict of floats for logging, e.g. {"loss": 0.31}
    logits = rule.predict(x)            # [B, n_classes]
    rebuild = rule.on_epoch_end(epoch, metrics)   # True -> the parameter set changed

`supported_models` (tuple of model class names, None = any) is checked at construction, so pairing
a rule with a model it cannot train fails with one clear error naming the models it supports.
What an update costs (ops, passes, saved activations, time, memory) is measured by the trainer the
same way for every rule; a rule declares nothing.
"""
from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from bioplaus.errors import UnsupportedModelError


class LearningRule(nn.Module, metaclass=abc.ABCMeta):
    """Base class for learning rules. Subclasses implement `assign_credit`."""

    supported_models: tuple[str, ...] | None = None

    def __init__(self, model: nn.Module):
        super().__init__()
        kind = type(model).__name__
        if self.supported_models is not None and kind not in self.supported_models:
            raise UnsupportedModelError(
                f"rule {type(self).__name__} cannot train model {kind}: it supports "
                f"{', '.join(self.supported_models)}; pick one of those with model=...")
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

    def pass_probe(self) -> nn.Module:
        """The module whose forward (and backward) calls the trainer counts as one pass of an update
        (`passes_per_update`). Default: the model's first layer. A rule whose passes do not run that module
        as a whole (EP's relaxation steps) returns the module that runs once per pass."""
        return self.model.layers[0]

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """Called after each epoch's evaluation; return True if the parameter set changed."""
        return False

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups. A group may carry "lr_scale", multiplying the trainer's lr."""
        return [{"params": self.trainable_parameters()}]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer should update (those that require grad)."""
        return [p for p in self.parameters() if p.requires_grad]


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
