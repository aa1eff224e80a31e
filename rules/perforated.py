"""Perforated backpropagation (Brenner & Itti, arXiv 2501.18018): neurons grow dendrites when training stalls.

A growth baseline, not a local rule: the neurons always learn by backprop. Every hidden Dense layer of an MLP
(and the head, include_head) is wrapped in a `PerforatedLayer`. For a layer with input u [B, in] (h flattened)
and n neurons, dendrite set k is a Linear V_k [n, in], c_k [n] whose unit j belongs to neuron j alone, with
activation g (tanh), and a per-neuron scalar weight w_k [n] onto its neuron:

    z = W u + b + sum_k w_k * g(V_k u + c_k)        [B, n]   pre-activation;  h' = act(z) (head: z = logits)

`model.layers[i]` / `model.head` are replaced by the wrappers (the rule changes the model it is given), so
`model(x)`, `rule.predict` and the statistics layer run the grown network unchanged. Two modes alternate:

    n-mode: cross-entropy backprop on the neurons (W, b) and every w_k (at dendrite_lr_scale x the lr); the
            input weights V_k, c_k stay frozen (mode=cascor) or are trained too (mode=gd).
    p-mode: (cascor only, `p_epochs` epochs) neurons and w frozen. Per wrapped layer a pool of n_candidates
            candidate sets (one Linear(in, K*n)) learns, at candidate_lr_scale x the lr, to maximise the
            cascade-correlation score of each unit with its neuron's remaining error e_j = dL/dz_j (per
            sample, by autograd in the frozen n-mode network, detached):

            S_j = |corr_p(d_jp, e_jp)| = |sum_p (d_jp - mean d_j)(e_jp - mean e_j)| / (|d_j - mean| |e_j - mean|)

            Per batch the loss is -mean_j sigma_j corr_batch(d_j, e_j), with sigma_j the sign of an EMA of the
            batch covariance held fixed (Fahlman's cascor derivative; plain |corr_batch| flips sign from batch
            to batch: |corr| 0.15 instead of 0.23 in one measured p-phase). Correlation, not covariance:
            scale-free and the same for every neuron. At the end, per neuron the pool unit with the highest
            epoch |corr| is attached with frozen input weights and w = 0, so the outputs are exactly unchanged
            at attachment; back to n-mode.

mode=gd (what the open-source PerforatedAI package does): no p-mode; at each switch a fresh random set is
attached with w = 0 and trained jointly with the network by backprop.

Switching (n-mode -> growth), at most `max_dendrites` times. The score is row["val_acc"] when the trainer
holds out a validation split (trainer.val_fraction > 0), else minus the mean training loss; never test_acc.
    switch=history: when epoch - epoch_last_improved >= n_epochs_to_switch (an improvement: a score above the
                    best by more than improvement_threshold) and >= n_epochs_to_switch n-mode epochs have
                    passed since the last switch. (With the loss as score, which falls a little every epoch,
                    this rarely fires unless improvement_threshold > 0: hold out a validation split.)
    switch=fixed:   every fixed_switch_num n-mode epochs.
With trainer.lr_schedule=cosine the plateau at the end of the run comes from lr -> 0 and dendrites added
there never learn: use lr_schedule=constant (configs/experiment/perforated.yaml does).
`on_epoch_end` returns True at every structural or mode change, so the trainer rebuilds its optimizer.

The switch tracker and the growth log are buffers and the dendrites submodules, so `state_dict()` checkpoints
everything; `load_state_dict` first grows (or shrinks) the wrappers to the saved number of dendrites and
candidates. In p-mode each wrapper accumulates, over the epoch, the correlation moments of its pool and of a
frozen copy of the pool's random initial weights (random dendrites of the same size: the control);
`dendrite_log()` gives both |corr| figures per growth and layer, `parameter_report()` the parameter growth,
`extra_metrics()` (merged into metrics.json by bioplaus-run) both. Supported model: MLP.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import MLP, Readout
from bioplaus.rules.base import LearningRule, check_choice

MODES = ("cascor", "gd")
SWITCHES = ("history", "fixed")
DENDRITE_ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": F.relu}
# tracker buffer slots
PHASE, BEST, LAST_IMPROVED, IN_PHASE = range(4)


def correlation(d: Tensor, e: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-column Pearson correlation over the batch: d, e [B, n] -> [n] (0 for a constant column)."""
    dc, ec = d - d.mean(0), e - e.mean(0)
    return (dc * ec).sum(0) / (dc.norm(dim=0) * ec.norm(dim=0) + eps)


class Dendrite(nn.Module):
    """One dendrite set: d = g(V u + c) [B, n], added to the neurons' pre-activation as w * d (w [n], starts 0)."""

    def __init__(self, d_in: int, d_out: int, init_scale: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        with torch.no_grad():
            self.linear.weight.mul_(init_scale)
            self.linear.bias.mul_(init_scale)
        self.w = nn.Parameter(torch.zeros(d_out))


class PerforatedLayer(nn.Module):
    """A Dense layer (or the Readout head) with dendrites: forward(h) = act(W u + b + sum_k w_k * g(V_k u + c_k)).

    In p-mode it also holds a pool of `n_candidates` candidate sets as one Linear(in, K*n) (unit k*n + j belongs
    to neuron j), a frozen copy of the pool's random initial weights (the untrained control), the EMA of each
    unit's batch covariance with its neuron's error (its sign is the sign the objective pushes, as in Fahlman's
    cascor derivative) and, not checkpointed, the current epoch's correlation moments."""

    def __init__(self, base: nn.Module, activation: str = "tanh", init_scale: float = 1.0):
        super().__init__()
        self.base, self.activation, self.init_scale = base, activation, float(init_scale)
        self.dendrites = nn.ModuleList()
        self.register_module("candidate", None)        # p-mode only: Linear(in, K*n), trained by correlation
        self.register_buffer("ref_weight", None)       # p-mode only: the pool's random initial weights [K*n, in]
        self.register_buffer("ref_bias", None)
        self.register_buffer("running_cov", None)      # p-mode only: EMA of the batch covariance [K*n]
        self.moments: Tensor | None = None             # p-mode: sums over this epoch [9, K*n] (see observe)

    @property
    def in_features(self) -> int:
        return self.base.linear.in_features

    @property
    def out_features(self) -> int:
        return self.base.linear.out_features

    def g(self, a: Tensor) -> Tensor:
        return DENDRITE_ACTIVATIONS[self.activation](a)

    def post(self, z: Tensor) -> Tensor:
        """Pre-activation -> output (the head has no activation)."""
        return z if isinstance(self.base, Readout) else self.base.act(z)

    def pre_activation(self, u: Tensor) -> Tensor:
        """u [B, in] -> z [B, out], dendrites included (the candidates never are)."""
        z = self.base.linear(u)
        for d in self.dendrites:
            z = z + d.w * self.g(d.linear(u))
        return z

    def forward(self, h: Tensor) -> Tensor:
        return self.post(self.pre_activation(h.flatten(1)))

    def new_dendrite(self, n_units: int | None = None) -> Dendrite:
        ref = self.base.linear.weight
        return Dendrite(self.in_features, n_units or self.out_features, self.init_scale).to(ref.device, ref.dtype)

    def start_candidates(self, n_candidates: int) -> None:
        cand = self.new_dendrite(n_candidates * self.out_features).linear
        self.candidate = cand
        self.ref_weight, self.ref_bias = cand.weight.detach().clone(), cand.bias.detach().clone()
        self.running_cov = torch.zeros_like(cand.bias.detach())
        self.moments = None

    def candidate_step(self, u: Tensor, e: Tensor, momentum: float) -> tuple[Tensor, float]:
        """Objective -mean_units sign * corr(d, e) for the pool on one batch (u [B, in], e [B, n]), and the mean
        |corr|; accumulates the epoch's moments of the pool and of its random initial copy."""
        e = e.repeat(1, len(self.ref_bias) // self.out_features)                      # [B, K*n]
        d = self.g(self.candidate(u))
        corr = correlation(d, e)
        with torch.no_grad():
            cov = ((d - d.mean(0)) * (e - e.mean(0))).mean(0)
            self.running_cov.mul_(momentum).add_((1 - momentum) * cov)
            sign = torch.where(self.running_cov == 0, corr.sign(), self.running_cov.sign())
            d0, d1 = self.g(F.linear(u, self.ref_weight, self.ref_bias)), d.detach()
            rows = [torch.ones_like(e), d1, d0, e, d1 * d1, d0 * d0, e * e, d1 * e, d0 * e]
            m = torch.stack(rows).double().sum(1)                                      # [9, K*n]
            self.moments = m if self.moments is None else self.moments + m
        return -(sign * corr).mean(), corr.abs().mean().item()

    def epoch_correlations(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """|corr| of every pool unit with its neuron's error over this epoch: trained [K*n], random copy [K*n], and
        whether the neuron's error varied at all [K*n] (a dead ReLU's is 0); resets the moments. None if no batch.
        A unit (or error) whose variance is below 1e-10 per sample (a saturated tanh) gets 0, not rounding noise."""
        if self.moments is None:
            return None
        n, sd, sr, se, sdd, srr, see, sde, sre = self.moments
        ve = see - se * se / n
        out = []
        for sx, sxx, sxe in ((sd, sdd, sde), (sr, srr, sre)):
            cov, vx = sxe - sx * se / n, sxx - sx * sx / n
            ok = (vx > 1e-10 * n) & (ve > 1e-10 * n)
            out.append(torch.where(ok, cov.abs() / (vx * ve).clamp_min(1e-300).sqrt(), 0.0).clamp_max(1.0))
        self.moments = None
        return out[0], out[1], ve > 1e-10 * n

    def attach(self, corr: Tensor | None = None) -> None:
        """Append a dendrite set with w = 0: per neuron the pool unit with the highest |corr| (cascor), or a fresh
        random set (gd, no pool)."""
        d = self.new_dendrite()
        if self.candidate is not None:
            n, k = self.out_features, len(self.ref_bias) // self.out_features
            best = corr.view(k, n).argmax(0) if corr is not None else torch.zeros(n, dtype=torch.long)
            rows = best.to(self.ref_bias.device) * n + torch.arange(n, device=self.ref_bias.device)
            with torch.no_grad():
                d.linear.weight.copy_(self.candidate.weight[rows])
                d.linear.bias.copy_(self.candidate.bias[rows])
        self.dendrites.append(d)
        self.clear_candidates()

    def clear_candidates(self) -> None:
        """Back to n-mode: no pool, no control copy, no correlation statistics."""
        self.candidate, self.ref_weight, self.ref_bias, self.running_cov, self.moments = None, None, None, None, None

    def dendrite_params(self) -> int:
        return sum(p.numel() for p in self.dendrites.parameters())


class Perforated(LearningRule):
    """Perforated backprop: backprop neurons that grow correlation-trained (cascor) or backprop (gd) dendrites."""

    supported_models = (MLP,)

    def __init__(self, model, mode: str = "cascor", switch: str = "history", n_epochs_to_switch: int = 10,
                 fixed_switch_num: int = 20, p_epochs: int = 5, max_dendrites: int = 3,
                 improvement_threshold: float = 0.0, dendrite_activation: str = "tanh", include_head: bool = True,
                 n_candidates: int = 4, init_scale: float = 1.0, candidate_lr_scale: float = 30.0,
                 dendrite_lr_scale: float = 10.0):
        super().__init__(model)
        for key, value, allowed in (("mode", mode, MODES), ("switch", switch, SWITCHES),
                                    ("dendrite_activation", dendrite_activation, DENDRITE_ACTIVATIONS)):
            check_choice(key, value, allowed)
        for key, value, low in (("n_epochs_to_switch", n_epochs_to_switch, 1), ("p_epochs", p_epochs, 1),
                                ("fixed_switch_num", fixed_switch_num, 1), ("max_dendrites", max_dendrites, 0),
                                ("n_candidates", n_candidates, 1)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ConfigError(f"rule.{key} must be an integer >= {low}, got {value!r}")
        for key, value in (("improvement_threshold", improvement_threshold), ("init_scale", init_scale),
                           ("candidate_lr_scale", candidate_lr_scale), ("dendrite_lr_scale", dendrite_lr_scale)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"rule.{key} must be a finite number >= 0, got {value!r}")
        self.mode, self.switch = mode, switch
        self.name = "perforated" if mode == "cascor" else "perforated_gd"
        self.n_epochs_to_switch, self.fixed_switch_num = int(n_epochs_to_switch), int(fixed_switch_num)
        self.p_epochs, self.max_dendrites, self.n_candidates = int(p_epochs), int(max_dendrites), int(n_candidates)
        self.improvement_threshold, self.candidate_lr_scale = float(improvement_threshold), float(candidate_lr_scale)
        self.dendrite_lr_scale = float(dendrite_lr_scale)
        self.sign_momentum = 0.9
        self.base_params = sum(p.numel() for p in model.parameters())
        for i, layer in enumerate(model.layers):
            model.layers[i] = PerforatedLayer(layer, dendrite_activation, init_scale)
        if include_head:
            model.head = PerforatedLayer(model.head, dendrite_activation, init_scale)
        # phase (0 = n, 1 = p), best score, epoch of the last improvement, epochs spent in the current phase
        self.register_buffer("tracker", torch.tensor([0.0, -math.inf, -1.0, 0.0], dtype=torch.float64))
        # one row per growth and wrapped layer: epoch, layer (index in wrapped()), n_dendrites after, and the mean
        # |corr| of the attached units, of the whole trained pool and of the random pool (gd: -1)
        self.register_buffer("log", torch.zeros(0, 6, dtype=torch.float64))

    # ---- structure -------------------------------------------------------------------------------------
    def wrapped(self) -> dict[str, PerforatedLayer]:
        """The wrapped layers by state_dict prefix, bottom to top."""
        out = {f"model.layers.{i}.": m for i, m in enumerate(self.model.layers) if isinstance(m, PerforatedLayer)}
        if isinstance(self.model.head, PerforatedLayer):
            out["model.head."] = self.model.head
        return out

    @property
    def in_p_mode(self) -> bool:
        return bool(self.tracker[PHASE] == 1)

    @property
    def n_dendrites(self) -> int:
        return len(next(iter(self.wrapped().values())).dendrites)

    def _apply_phase(self) -> None:
        """requires_grad from the phase: p-mode trains only the candidates; n-mode all but frozen dendrite inputs."""
        for p in self.parameters():
            p.requires_grad_(not self.in_p_mode)
        for layer in self.wrapped().values():
            if layer.candidate is not None:
                layer.candidate.requires_grad_(True)
            for d in layer.dendrites:
                d.linear.requires_grad_(self.mode == "gd" and not self.in_p_mode)

    def param_groups(self) -> list[dict]:
        if self.in_p_mode:
            return [self.group(self.trainable_parameters(), self.candidate_lr_scale)]
        dend = {id(p) for layer in self.wrapped().values() for p in layer.dendrites.parameters()}
        params = self.trainable_parameters()
        groups = [self.group([p for p in params if id(p) not in dend]),
                  self.group([p for p in params if id(p) in dend], self.dendrite_lr_scale)]
        return [g for g in groups if g["params"]]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Grow (or shrink) every wrapper to the saved number of dendrites and candidates, then load."""
        for prefix, layer in self.wrapped().items():
            n = sum(1 for k in state_dict if k.startswith(f"{prefix}dendrites.") and k.endswith(".w"))
            while len(layer.dendrites) < n:
                layer.dendrites.append(layer.new_dendrite())
            del layer.dendrites[n:]
            if f"{prefix}candidate.weight" in state_dict:
                layer.start_candidates(len(state_dict[f"{prefix}candidate.bias"]) // layer.out_features)
            else:
                layer.clear_candidates()
        if "log" in state_dict:
            self.log = torch.zeros_like(state_dict["log"], device=self.tracker.device)
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._apply_phase()
        return result

    # ---- credit assignment -----------------------------------------------------------------------------
    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        if self.in_p_mode:
            return self._correlation_step(x, y)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        return {"loss": loss.item()}

    def residual_errors(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor], float]:
        """Inputs u_l [B, in] and remaining errors e_l = dL/dz_l [B, out] (per sample: L is the batch sum) of
        every wrapped layer, in the current network (candidates excluded), both detached; and the mean CE loss."""
        h, us, zs = self.model.encode(x), [], []
        with torch.enable_grad():
            for m in [*self.model.layers, self.model.head]:
                if not isinstance(m, PerforatedLayer):
                    h = m(h)
                    continue
                u = h.flatten(1)
                z = m.pre_activation(u)
                if not z.requires_grad:
                    z = z.detach().requires_grad_(True)
                us.append(u.detach())
                zs.append(z)
                h = m.post(z)
            loss = F.cross_entropy(h, y, reduction="sum")
            es = torch.autograd.grad(loss, zs)
        return us, [e.detach() for e in es], loss.item() / len(y)

    def _correlation_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        us, es, loss = self.residual_errors(x, y)
        steps = [layer.candidate_step(u, e, self.sign_momentum) for layer, u, e in zip(self.wrapped().values(), us, es)]
        objectives, scores = zip(*steps)
        sum(objectives).backward()
        return {"loss": loss, "correlation": sum(scores) / len(scores)}

    # ---- switching -------------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """Track the score (val_acc if present, else -train loss), switch modes / grow; True if params changed."""
        t = self.tracker
        t[IN_PHASE] += 1
        if self.in_p_mode:
            corrs = [layer.epoch_correlations() for layer in self.wrapped().values()]
            if t[IN_PHASE] >= self.p_epochs:
                self._grow(epoch, corrs)
                return True
            return False
        score = float(metrics["val_acc"]) if "val_acc" in metrics else -float(metrics["loss"])
        if score > float(t[BEST]) + self.improvement_threshold:
            t[BEST], t[LAST_IMPROVED] = score, epoch
        if self.n_dendrites >= self.max_dendrites:
            return False
        if self.switch == "fixed":
            due = t[IN_PHASE] >= self.fixed_switch_num
        else:
            due = t[IN_PHASE] >= self.n_epochs_to_switch and epoch - t[LAST_IMPROVED] >= self.n_epochs_to_switch
        if not due:
            return False
        if self.mode == "gd":
            self._grow(epoch, [None] * len(self.wrapped()))
        else:
            for layer in self.wrapped().values():
                layer.start_candidates(self.n_candidates)
            t[PHASE], t[IN_PHASE] = 1, 0
            self._apply_phase()
        return True

    def _grow(self, epoch: int, corrs: list) -> None:
        """Attach one set per wrapped layer (the best pool unit per neuron), log the correlations, back to n-mode."""
        rows = []
        for i, (layer, c) in enumerate(zip(self.wrapped().values(), corrs)):
            figures = [-1.0, -1.0, -1.0]
            if c is not None:
                trained, rand, live = c
                best = trained.view(-1, layer.out_features).max(0).values
                if live.any():
                    figures = [best[live[: layer.out_features]].mean().item(), trained[live].mean().item(),
                               rand[live].mean().item()]
            layer.attach(c[0] if c is not None else None)
            rows.append([epoch, i, len(layer.dendrites), *figures])
        t = self.tracker
        t[PHASE], t[IN_PHASE] = 0, 0
        self.log = torch.cat([self.log, torch.tensor(rows, dtype=self.log.dtype, device=self.log.device)])
        self._apply_phase()

    # ---- reports ---------------------------------------------------------------------------------------
    def dendrite_log(self) -> list[dict]:
        """One dict per growth and wrapped layer ("layers.0", ..., "head"): epoch, n_dendrites, corr (mean |corr|
        of the attached units with their neuron's residual error over the last p-epoch), corr_pool (the whole
        trained pool), corr_random (the pool's untrained initial weights: random dendrites of the same size),
        ratio = corr / corr_random. Neurons whose error is constant (dead ReLUs) are left out. gd (nothing is
        trained by correlation): -1 and None."""
        names = [prefix[len("model."):-1] for prefix in self.wrapped()]
        return [{"epoch": int(epoch), "layer": names[int(i)], "n_dendrites": int(n), "corr": c, "corr_pool": pool,
                 "corr_random": r, "ratio": c / r if r > 0 else None}
                for epoch, i, n, c, pool, r in self.log.tolist()]

    def parameter_report(self) -> dict:
        """base_params (the model before wrapping), dendrite_params (attached sets: V, c and w), n_dendrites
        (sets per neuron), growth_ratio = (base + dendrite) / base. Candidates in training are not counted."""
        dend = sum(layer.dendrite_params() for layer in self.wrapped().values())
        return {"base_params": self.base_params, "dendrite_params": dend, "n_dendrites": self.n_dendrites,
                "growth_ratio": (self.base_params + dend) / self.base_params}

    def correlation_report(self) -> dict:
        """Over every correlation-trained growth (all layers): mean |corr| of the attached dendrites with their
        neurons' residual error, the same for random dendrites, and corr_ratio = their quotient. {} if none."""
        rows = [r for r in self.dendrite_log() if r["corr_random"] > 0]
        if not rows:
            return {}
        corr, rand = (sum(r[k] for r in rows) / len(rows) for k in ("corr", "corr_random"))
        return {"dendrite_corr": corr, "random_corr": rand, "corr_ratio": corr / rand}

    def extra_metrics(self) -> dict:
        """What bioplaus-run adds to metrics.json: the parameter and correlation reports and the growth log."""
        return {**self.parameter_report(), **self.correlation_report(), "dendrite_log": self.dendrite_log()}
