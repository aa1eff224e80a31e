"""The control: hidden layers frozen at their random initialisation, only the head trained.

On easy data this already scores well (sklearn digits: ~0.88-0.98 depending on the network), so
every comparison carries it and learning claims are margins over it. Hidden features are computed
under no_grad with the model in its current mode (BatchNorm statistics still adapt in train mode).

Training only the head is a convex problem; at the shared learning rate it is still far from
converged when the other rules finish (Fashion-10k, Adam 1e-3, 20 epochs: 0.70 vs 0.79 at 10x), and
an under-trained control would inflate every margin. So its head learns at `lr_scale` (10) times
the trainer's learning rate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.rules.base import LearningRule, check_positive


class ReadoutOnly(LearningRule):
    """Freeze `model.layers`; train `model.head` by cross-entropy on the frozen features."""

    name = "readout_only"

    def __init__(self, model, lr_scale: float = 10.0):
        super().__init__(model)
        self.lr_scale = check_positive("lr_scale", lr_scale)
        for p in model.layers.parameters():
            p.requires_grad_(False)

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        with torch.no_grad():
            h = self.model.features(x)
        loss = F.cross_entropy(self.model.head(h), y)
        loss.backward()
        return {"loss": loss.item()}
