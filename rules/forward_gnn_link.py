"""ForwardGNN for link prediction (Park et al., ICLR 2024, Sec. 4.4; the authors' linkpred/gnn_forward.py).

A mixin of `bioplaus.rules.forward_gnn.ForwardGNN` for link data (bioplaus.data.links: x [B, 2] node pairs, y [B]
1 = edge, 0 = sampled non-edge; the model's graph holds the training edges only). No virtual nodes: every layer
embeds the nodes from its own normalised, detached input over the training graph and scores a pair by its
embeddings' Hadamard product o = z_l[u] * z_l[v], of shape [B, d_l]:

    sf (the authors' "FL-CE"):  s_l = sum_j o_j            loss_l = BCE-with-logits(s_l, y)
    ff (Forward-Forward):       s_l = sum_j o_j^2 - theta  loss_l = mean_pos BCE(s_l, 1) + mean_neg BCE(s_l, 0)

Inference: p(edge) = mean over layers of sigmoid(s_l) (the authors' accumulated edge score); logits
[log(1 - p), log p], so the trainer's AUC (of logit[1] - logit[0], monotone in p) is the AUC of p.
Backprop on the same model (rules/backprop.py) trains the model's head on h_L[u] * h_L[v] end to end; the
`readout_only` control trains that head on frozen random embeddings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.rules.forward_gnn_topdown import l2_normalise


class LinkForward:
    """Link prediction (mixed into ForwardGNN): `_step_sf_link` / `_step_ff_link`, `link_logits`."""

    def pair_score(self, z: Tensor, pairs: Tensor) -> Tensor:
        """s_l [B] of node embeddings z [V, d] for pairs [B, 2] (see the module docstring)."""
        o = z[pairs[:, 0]] * z[pairs[:, 1]]
        return o.sum(1) if self.variant == "sf" else o.pow(2).sum(1) - self.theta

    def pair_loss(self, s: Tensor, y: Tensor) -> Tensor:
        t = y.to(s.dtype)
        if self.variant == "sf":
            return F.binary_cross_entropy_with_logits(s, t)
        bce = F.binary_cross_entropy_with_logits(s, t, reduction="none")
        pos, neg = y == 1, y == 0
        return sum(bce[m].mean() for m in (pos, neg) if m.any())

    def _step_link(self, x: Tensor, y: Tensor) -> dict[int, float]:
        h, edges, out = self.model.x, self.model.edge_index, {}
        for i, layer, train, score in self._layers():
            with torch.set_grad_enabled(train):
                h = layer(l2_normalise(h), edges)
                if score:
                    out[i] = self._learn(self.pair_loss(self.pair_score(h, x), y), train)
            h = h.detach()
        return out

    _step_sf_link = _step_link
    _step_ff_link = _step_link

    @torch.no_grad()
    def link_logits(self, x: Tensor) -> Tensor:
        """[B, 2] = [log(1 - p), log p], p the mean over layers (up to the current stage) of sigmoid(s_l)."""
        h, edges, p = self.model.x, self.model.edge_index, []
        for _, layer, _, _ in self._layers():
            h = layer(l2_normalise(h), edges)
            p.append(torch.sigmoid(self.pair_score(h, x)))
        p = torch.stack(p).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.stack([(1 - p).log(), p.log()], 1)
