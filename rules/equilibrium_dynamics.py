"""The dynamics of equilibrium propagation (rules/equilibrium.py): bounded activations, synapses, one relaxation step.

A `Synapse` is one energy term <s_out, P(W * s_in + b)> of the primitive function Phi (dense: W s_in + b; conv: the
layer's conv then its 2x2 max-pool P): `drive` is dPhi/ds_out, `feedback` dPhi/ds_in = W^T P^T s_out. With
asymmetric (vector-field) weights a layer's feedback comes through its own backward synapse B (shaped like W, no
bias), so the step is no longer the gradient of one Phi:

    s_l <- rho(P_l(W_{l-1} s_{l-1} + b) + F_l^T P^T s_{l+1} [+ nudge])      F = W (symmetric) | B (vector field)

(conv B: its own max-pool indices, from B's drive of s_l). `RelaxationStep` is one synchronous update of every
layer, a module so the trainer counts relaxation steps as passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {   # bounded rho; the names follow the official code (Laborieux-Axel/Equilibrium-Propagation)
    "hard_sigmoid": lambda u: (1 + F.hardtanh(u - 1)) * 0.5,        # clip(u / 2, 0, 1)
    "ctrd_hard_sig": lambda u: (1 + F.hardtanh(u)) * 0.5,           # clip((u + 1) / 2, 0, 1)
    "my_sigmoid": lambda u: torch.sigmoid(4 * (u - 0.5)),
    "my_hard_sig": lambda u: 0.5 * (torch.sigmoid(4 * (u - 0.5)) + (1 + F.hardtanh(u - 1)) * 0.5),
    "clip": lambda u: u.clamp(0, 1),
}
LOSSES = ("mse", "ce")


class Synapse:
    """One energy term <s_out, P(W * s_in)>: `drive` is its dPhi/ds_out, `feedback` its dPhi/ds_in."""

    def __init__(self, module: nn.Module, pool: bool):
        self.module, self.pool, self.conv = module, pool, isinstance(module, nn.Conv2d)

    def drive(self, s_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """P(W * s_in + b) and the pooling indices (None for dense)."""
        if not self.conv:
            return self.module(s_in.flatten(1)), None
        z = self.module(s_in)
        return (F.max_pool2d(z, 2, return_indices=True) if self.pool else (z, None))

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample shape of s_out for an s_in of per-sample shape in_shape."""
        m = self.module
        if not self.conv:
            return (m.out_features,)
        hw = [(n + 2 * p - d * (k - 1) - 1) // st + 1
              for n, p, d, k, st in zip(in_shape[-2:], m.padding, m.dilation, m.kernel_size, m.stride)]
        return (m.out_channels, *[n // 2 for n in hw]) if self.pool else (m.out_channels, *hw)

    def feedback(self, s_out: Tensor, idx: Tensor | None, in_shape: torch.Size) -> Tensor:
        """W^T P^T s_out, shaped like s_in (the pooling routes s_out back to the maxima's positions)."""
        w = self.module.weight
        if not self.conv:
            return (s_out @ w).view(in_shape)
        if idx is not None:
            s_out = F.max_unpool2d(s_out, idx, 2, output_size=in_shape[-2:])
        return F.conv_transpose2d(s_out, w, padding=self.module.padding)

    def phi(self, s_in: Tensor, s_out: Tensor) -> Tensor:
        """<s_out, P(W * s_in + b)> per sample [B] (with autograd, for the weight update)."""
        return (self.drive(s_in)[0] * s_out).flatten(1).sum(1)


class RelaxationStep(nn.Module):
    """One synchronous update of every layer's state; a module so the trainer counts steps as passes."""

    def forward(self, rule, drives: list[Tensor], states: list[Tensor],
                nudge) -> tuple[list[Tensor], list[Tensor | None]]:
        """rule: the EquilibriumPropagation rule (its synapses, feedback synapses, rho and clamped-input pooling)."""
        syn, back, L = rule.synapses, rule.feedback_synapses, len(states)
        total = [drives[0]]
        idx = [rule._idx0]
        for k in range(1, L):                              # forward drives of layers 2..L from the current states
            d, i = syn[k].drive(states[k - 1])
            total.append(d)
            idx.append(i)
        for k in range(L - 1):                             # feedback from the layer above
            fb = back[k]
            i = idx[k + 1] if fb is syn[k + 1] else (fb.drive(states[k])[1] if fb.conv and fb.pool else None)
            total[k] = total[k] + fb.feedback(states[k + 1], i, states[k].shape)
        if nudge is not None:
            total[-1] = total[-1] + nudge(states[-1])
        return [rule.rho(u) for u in total], idx


__all__ = ["ACTIVATIONS", "RelaxationStep", "Synapse"]
