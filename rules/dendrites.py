"""Dendrites for perforated backpropagation (rules/perforated.py): a wrapper that gives a layer's neurons dendrites.

A `PerforatedLayer` wraps a dense layer (bioplaus.models Dense, or the Readout head: a Linear on the flattened
input) or a conv block (ConvBlock: conv -> norm -> activation -> max-pool). Its neurons are the Linear's outputs
(n = out_features) or the conv's channels (n = C_out, "dendrites per channel" as in the PerforatedAI package:
one set of dendrite weights per channel, shared over positions). With u the layer's input ([B, in] dense,
[B, C_in, H, W] conv), dendrite set k is a copy-shaped map V_k (Linear(in, n) / Conv2d(C_in, n, 3, padding 1))
whose unit j belongs to neuron j alone, and it also receives the earlier sets' outputs of the same neuron
(the cascade, `dendrites_to_dendrites` in the package; per-neuron weights c_k [k, n]):

    d_k = g(V_k u + sum_{i<k} c_k[i] * d_i)                  [B, n] or [B, n, H, W]
    z = main(u) + sum_k w_k * d_k                             main = W u + b (dense) | norm(conv(u)) (conv)
    h' = post(z)                                              act(z) | pool(act(z)) | z (the head: logits)

w_k [n] is the per-neuron weight onto the neuron (zero at attachment: the outputs are exactly unchanged); the
per-neuron vectors broadcast over positions for conv. For statistics a conv tensor [B, n, H, W] is read as
B*H*W samples of n units (`units`).

Candidates (cascor p-mode): a pool of K candidate sets held as one map with K*n units (unit k*n + j belongs to
neuron j and sees neuron j's earlier dendrites), trained to maximise a score of each unit's output against its
neuron's remaining error e_j = dL/dz_j over the samples p:

    covariance (Fahlman's cascade-correlation S, the default):  S_j = | sum_p (d_jp - mean d_j)(e_jp - mean e_j) |
    pearson:   the same divided by |d_j - mean| |e_j - mean| (scale-free)

Per batch the loss is -mean_j sigma_j score_batch(d_j, e_j), sigma_j the sign of an EMA of the batch covariance
held fixed (Fahlman's derivative). Over each p-epoch the wrapper accumulates the moments of the pool, of a
frozen copy of the pool's random initial weights (random dendrites of the same size: the control) and of the
error, so the epoch's score and |Pearson corr| of every unit, trained and random, come out exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.models import Readout
from bioplaus.models.classic import ConvBlock

DENDRITE_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": F.relu}
SCORES = ("covariance", "pearson")


def correlation(d: Tensor, e: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-column Pearson correlation over the rows: d, e [N, n] -> [n] (0 for a constant column)."""
    dc, ec = d - d.mean(0), e - e.mean(0)
    return (dc * ec).sum(0) / (dc.norm(dim=0) * ec.norm(dim=0) + eps)


def covariance(d: Tensor, e: Tensor) -> Tensor:
    """Per-column covariance over the rows (mean of the centred products): d, e [N, n] -> [n]."""
    return ((d - d.mean(0)) * (e - e.mean(0))).mean(0)


def units(t: Tensor) -> Tensor:
    """Per-unit samples: [B, n] as is, [B, n, H, W] -> [B*H*W, n]."""
    return t if t.dim() == 2 else t.movedim(1, -1).reshape(-1, t.shape[1])


def per_neuron(v: Tensor, like: Tensor) -> Tensor:
    """A per-neuron vector [n] shaped to broadcast over like [B, n, ...]."""
    return v.view(-1, *[1] * (like.dim() - 2))


class Dendrite(nn.Module):
    """One dendrite set (or a candidate pool): map V [in -> n_units], cascade weights c [k_prev, n_units] from the
    k_prev earlier sets, weight onto the neuron w [n_units] (zero)."""

    def __init__(self, op: nn.Module, k_prev: int, init_scale: float = 1.0):
        super().__init__()
        self.op = op
        n = op.out_features if isinstance(op, nn.Linear) else op.out_channels
        with torch.no_grad():
            op.weight.mul_(init_scale)
            op.bias.mul_(init_scale)
        bound = init_scale / math.sqrt(k_prev + 1)
        self.cascade = nn.Parameter(torch.empty(k_prev, n).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.zeros(n))

    def pre(self, u: Tensor, earlier: list[Tensor]) -> Tensor:
        """V u + sum_i c[i] * d_i; `earlier` are the earlier sets' outputs, each tiled to this map's units."""
        a = self.op(u)
        for c, d in zip(self.cascade, earlier):
            a = a + per_neuron(c, a) * d
        return a


class PerforatedLayer(nn.Module):
    """A Dense / Readout / ConvBlock with dendrites (see the module docstring)."""

    def __init__(self, base: nn.Module, activation: str = "tanh", init_scale: float = 1.0):
        super().__init__()
        self.base, self.activation, self.init_scale = base, activation, float(init_scale)
        self.conv = isinstance(base, ConvBlock)
        self.dendrites = nn.ModuleList()
        self.register_module("candidate", None)        # p-mode only: a Dendrite with K*n units
        self.register_buffer("ref_weight", None)       # p-mode only: the pool's random initial map and cascade
        self.register_buffer("ref_bias", None)
        self.register_buffer("ref_cascade", None)
        self.register_buffer("running_cov", None)      # p-mode only: EMA of the batch covariance [K*n]
        self.moments: Tensor | None = None             # p-mode: sums over this epoch [9, K*n] (see candidate_step)

    @property
    def n(self) -> int:
        """Neurons: the Linear's outputs or the conv's channels."""
        return self.base.conv.out_channels if self.conv else self.base.linear.out_features

    def g(self, a: Tensor) -> Tensor:
        return DENDRITE_ACTIVATIONS[self.activation](a)

    def prepare(self, h: Tensor) -> Tensor:
        """The layer's input u: [B, in] (flattened) or [B, C, H, W]."""
        return h if self.conv else h.flatten(1)

    def main(self, u: Tensor) -> Tensor:
        return self.base.norm(self.base.conv(u)) if self.conv else self.base.linear(u)

    def post(self, z: Tensor) -> Tensor:
        """Pre-activation -> output (the head has no activation)."""
        if self.conv:
            return self.base.pool(self.base.act(z))
        return z if isinstance(self.base, Readout) else self.base.act(z)

    def dendrite_outputs(self, u: Tensor) -> list[Tensor]:
        """[d_1, ..., d_K], each shaped like the pre-activation, computed in cascade order."""
        out: list[Tensor] = []
        for d in self.dendrites:
            out.append(self.g(d.pre(u, out)))
        return out

    def pre_activation(self, u: Tensor) -> Tensor:
        """u -> z, dendrites included (the candidates never are)."""
        z = self.main(u)
        for d, out in zip(self.dendrites, self.dendrite_outputs(u)):
            z = z + per_neuron(d.w, out) * out
        return z

    def forward(self, h: Tensor) -> Tensor:
        return self.post(self.pre_activation(self.prepare(h)))

    def new_dendrite(self, n_units: int | None = None) -> Dendrite:
        """A fresh random set (PyTorch's default init of a copy-shaped map, times init_scale)."""
        ref = self.base.conv.weight if self.conv else self.base.linear.weight
        n_units = n_units or self.n
        op = (nn.Conv2d(self.base.conv.in_channels, n_units, 3, padding=1) if self.conv
              else nn.Linear(self.base.linear.in_features, n_units))
        return Dendrite(op, len(self.dendrites), self.init_scale).to(ref.device, ref.dtype)

    # ---- candidates (cascor p-mode) --------------------------------------------------------------
    def start_candidates(self, n_candidates: int) -> None:
        cand = self.new_dendrite(n_candidates * self.n)
        self.candidate = cand
        self.ref_weight, self.ref_bias = cand.op.weight.detach().clone(), cand.op.bias.detach().clone()
        self.ref_cascade = cand.cascade.detach().clone()
        self.running_cov = torch.zeros_like(cand.op.bias.detach())
        self.moments = None

    @property
    def n_candidates(self) -> int:
        return len(self.ref_bias) // self.n

    def _pool(self, u: Tensor, weight: Tensor, bias: Tensor, cascade: Tensor, earlier: list[Tensor]) -> Tensor:
        fn = (lambda x: F.conv2d(x, weight, bias, padding=1)) if self.conv else (lambda x: F.linear(x, weight, bias))
        a = fn(u)
        for c, d in zip(cascade, earlier):
            a = a + per_neuron(c, a) * d
        return self.g(a)

    def candidate_step(self, u: Tensor, e: Tensor, momentum: float, score: str) -> tuple[Tensor, float]:
        """Objective -mean_units sign * score(d, e) of the pool on one batch (u the layer input, e = dL/dz), and the
        batch's mean |corr|; accumulates the epoch's moments of the pool and of its random initial copy."""
        K = self.n_candidates
        tile = [1, K] + [1] * (e.dim() - 2)
        with torch.no_grad():
            earlier = [d.repeat(*tile) for d in self.dendrite_outputs(u)]    # neuron j's earlier sets, per unit
        d = units(self.g(self.candidate.pre(u, earlier)))
        ee = units(e.repeat(*tile))                                               # [N, K*n]
        stat = covariance(d, ee) if score == "covariance" else correlation(d, ee)
        with torch.no_grad():
            cov = covariance(d, ee)
            self.running_cov.mul_(momentum).add_((1 - momentum) * cov)
            sign = torch.where(self.running_cov == 0, cov.sign(), self.running_cov.sign())
            d0 = units(self._pool(u, self.ref_weight, self.ref_bias, self.ref_cascade, earlier))
            d1 = d.detach()
            rows = [torch.ones_like(ee), d1, d0, ee, d1 * d1, d0 * d0, ee * ee, d1 * ee, d0 * ee]
            m = torch.stack(rows).double().sum(1)                                # [9, K*n]
            self.moments = m if self.moments is None else self.moments + m
            batch_corr = correlation(d1, ee).abs().mean().item()
        return -(sign * stat).mean(), batch_corr

    def epoch_scores(self) -> dict[str, Tensor] | None:
        """Over this epoch, per pool unit [K*n]: |cov| and |corr| with its neuron's error, trained and random copy,
        and `live` (the neuron's error varied at all: a dead ReLU's is 0); resets the moments. None if no batch. A
        unit (or error) whose variance is below 1e-10 per sample (a saturated tanh) gets 0, not rounding noise."""
        if self.moments is None:
            return None
        n, sd, sr, se, sdd, srr, see, sde, sre = self.moments
        ve = see - se * se / n
        out = {"live": ve > 1e-10 * n}
        for name, (sx, sxx, sxe) in (("", (sd, sdd, sde)), ("random_", (sr, srr, sre))):
            cov, vx = sxe - sx * se / n, sxx - sx * sx / n
            ok = (vx > 1e-10 * n) & out["live"]
            out[f"{name}cov"] = torch.where(ok, cov.abs() / n, 0.0)
            out[f"{name}corr"] = torch.where(ok, cov.abs() / (vx * ve).clamp_min(1e-300).sqrt(), 0.0).clamp_max(1.0)
        self.moments = None
        return out

    def attach(self, select: Tensor | None = None, trainable: bool = False) -> None:
        """Append a dendrite set with w = 0: per neuron the pool unit with the highest `select` score [K*n]
        (cascor), or a fresh random set (gd, random: no pool). trainable: its map and cascade learn (gd)."""
        d = self.new_dendrite()
        if self.candidate is not None:
            n, k = self.n, self.n_candidates
            best = select.view(k, n).argmax(0) if select is not None else torch.zeros(n, dtype=torch.long)
            rows = best.to(self.ref_bias.device) * n + torch.arange(n, device=self.ref_bias.device)
            with torch.no_grad():
                d.op.weight.copy_(self.candidate.op.weight[rows])
                d.op.bias.copy_(self.candidate.op.bias[rows])
                d.cascade.copy_(self.candidate.cascade[:, rows])
        d.op.requires_grad_(trainable)
        d.cascade.requires_grad_(trainable)
        self.dendrites.append(d)
        self.clear_candidates()

    def clear_candidates(self) -> None:
        """Back to n-mode: no pool, no control copy, no statistics."""
        self.candidate = None
        self.ref_weight = self.ref_bias = self.ref_cascade = self.running_cov = None
        self.moments = None

    def dendrite_params(self) -> int:
        return sum(p.numel() for p in self.dendrites.parameters())
