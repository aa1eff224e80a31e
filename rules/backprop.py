"""Backprop (BP for static models, BPTT through the surrogate spikes for spiking ones).

The reference every other rule is compared with: cross-entropy on the model's logits and one
`loss.backward()` through every layer (and, for spiking models, every time step).
"""
from __future__ import annotations

import torch.nn.functional as F
from bioplaus.rules.base import LearningRule
from torch import Tensor


class Backprop(LearningRule):
    """loss = CE(model(x), y); loss.backward(). Trains any model."""

    name = "backprop"

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        return {"loss": loss.item()}
