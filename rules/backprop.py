"""Backprop (BP for static models, BPTT through the surrogate spikes for spiking ones).

The reference every other rule is compared with: cross-entropy on the model's logits and one
`loss.backward()` through every layer (and, for spiking models, every time step). Per-token targets
(language modelling: logits [B, L, V], y [B, L]) are flattened to [B*L, V] / [B*L]; targets equal to
-100 (IGNORE_INDEX) do not count.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from bioplaus.rules.base import LearningRule


class Backprop(LearningRule):
    """loss = CE(model(x), y); loss.backward(). Trains any model."""

    name = "backprop"

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        loss.backward()
        return {"loss": loss.item()}
