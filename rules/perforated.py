"""Perforated backpropagation (Brenner & Itti, arXiv 2501.18018): neurons grow dendrites when training stalls.

A growth baseline, not a local rule: the neurons always learn by backprop. Every hidden layer of an MLP or a ConvNet
(and the head, include_head) is wrapped in a `PerforatedLayer` (rules/dendrites.py: dense neurons, or conv channels
with one dendrite per channel; each new dendrite also sees the earlier ones of its neuron, the cascade):

    z = main(u) + sum_k w_k * g(V_k u + sum_{i<k} c_k[i] * d_i)      h' = post(z)

`model.layers[i]` / `model.head` are replaced by the wrappers (the rule changes the model it is given), so
`model(x)`, `rule.predict` and the statistics layer run the grown network unchanged. Modes (`mode`):

    cascor  n-mode: cross-entropy backprop on the neurons and every w (at dendrite_lr_scale x the lr); dendrite
            inputs frozen. p-mode (`p_epochs` epochs, neurons and w frozen): per wrapped layer a pool of n_candidates
            candidate sets learns, at candidate_lr_scale x the lr, to maximise the cascade-correlation `score` of
            each unit with its neuron's remaining error e = dL/dz (covariance S, Fahlman's, by default; pearson as
            an option; rules/dendrites.py). Per neuron the pool unit with the best epoch score is attached with
            frozen inputs and w = 0 (outputs exactly unchanged); back to n-mode.
    gd      what the open-source PerforatedAI package does: no p-mode; a fresh random set attached with w = 0 and
            trained (map, cascade and w) jointly with the network by backprop.
    random  the control: a fresh random set attached with frozen inputs (as cascor's are), only w trained. What
            cascor gains over it is what the correlation training adds.

Growth decisions, at most `max_dendrites` sets per neuron. The score is row["val_acc"] when the trainer holds out a
validation split (trainer.val_fraction > 0), else minus the mean training loss; never test_acc.
    switch=history: when epoch - epoch_last_improved >= n_epochs_to_switch (an improvement: a score above the
                    best since the last growth by more than improvement_threshold) and >= n_epochs_to_switch n-mode
                    epochs have passed since the last growth (the package's DOING_HISTORY).
    switch=fixed:   every fixed_switch_num n-mode epochs.
At each decision the parameters of the best-scoring n-mode epoch since the last growth are reloaded first (the
package loads its best_model at every switch), and the best score restarts with the new structure. Among epochs of
equal score (val_acc on a few hundred samples ties often) `tie_break=val_loss` keeps the one with the lowest
validation loss (else training loss): the first of them is often the epoch right after a growth, whose new dendrites
have not trained yet, and reloading it leaves the residual correlated with them, so the next candidates (and the
random ones, through the cascade) relearn the last set. `tie_break=first` keeps the first (the package's strict
`score > best`). No growth starts in the last epochs of the run (`min_epochs_after_growth`: it must leave, after
cascor's p-epochs, at least that many n-mode epochs for the new dendrites to learn; the budget comes from
`on_train_start`, which warns when it leaves room for no growth at all). With lr_schedule=cosine the end-of-run
plateau comes from lr -> 0: prefer lr_schedule=constant (configs/experiment/perforated.yaml does).
`on_epoch_end` returns True at every structural or mode change, so the trainer rebuilds its optimizer.

The switch tracker, the best snapshot and the growth log are buffers and the dendrites submodules, so
`state_dict()` checkpoints everything; `load_state_dict` first grows (or shrinks) the wrappers to the saved number
of dendrites and candidates. `dendrite_log()` gives, per growth and layer, the |Pearson corr| of the attached units,
of the whole pool and of the pool's random initial copy with the residual error over the last p-epoch;
`parameter_report()` the growth, `extra_metrics()` (merged into metrics.json) both. Models: MLP, ConvNet.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.errors import ConfigError
from bioplaus.models import MLP, ConvNet
from bioplaus.rules.base import LearningRule, check_choice
from bioplaus.rules.dendrites import DENDRITE_ACTIVATIONS, SCORES, PerforatedLayer, correlation

MODES = ("cascor", "gd", "random")
SWITCHES = ("history", "fixed")
NAMES = {"cascor": "perforated", "gd": "perforated_gd", "random": "perforated_random"}
TIE_BREAKS = ("val_loss", "first")
PHASE, BEST, LAST_IMPROVED, IN_PHASE, SNAP_SCORE, SNAP_LOSS = range(6)          # tracker buffer slots


class Perforated(LearningRule):
    """Perforated backprop: backprop neurons that grow correlation-trained (cascor), backprop (gd) or frozen random
    (random, the control) dendrites."""

    supported_models = (MLP, ConvNet)

    def __init__(self, model, mode: str = "cascor", switch: str = "history", n_epochs_to_switch: int = 10,
                 fixed_switch_num: int = 20, p_epochs: int = 15, max_dendrites: int = 3,
                 improvement_threshold: float = 0.0, dendrite_activation: str = "tanh", include_head: bool = True,
                 n_candidates: int = 4, init_scale: float = 1.0, candidate_lr_scale: float = 30.0,
                 dendrite_lr_scale: float = 10.0, score: str = "covariance", min_epochs_after_growth: int = 10,
                 tie_break: str = "val_loss"):
        super().__init__(model)
        for key, value, allowed in (("mode", mode, MODES), ("switch", switch, SWITCHES), ("score", score, SCORES),
                                    ("tie_break", tie_break, TIE_BREAKS),
                                    ("dendrite_activation", dendrite_activation, DENDRITE_ACTIVATIONS)):
            check_choice(key, value, allowed)
        for key, value, low in (("n_epochs_to_switch", n_epochs_to_switch, 1), ("p_epochs", p_epochs, 1),
                                ("fixed_switch_num", fixed_switch_num, 1), ("max_dendrites", max_dendrites, 0),
                                ("n_candidates", n_candidates, 1),
                                ("min_epochs_after_growth", min_epochs_after_growth, 0)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ConfigError(f"rule.{key} must be an integer >= {low}, got {value!r}")
        for key, value in (("improvement_threshold", improvement_threshold), ("init_scale", init_scale),
                           ("candidate_lr_scale", candidate_lr_scale), ("dendrite_lr_scale", dendrite_lr_scale)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"rule.{key} must be a finite number >= 0, got {value!r}")
        self.mode, self.switch, self.score, self.name = mode, switch, score, NAMES[mode]
        self.tie_break = tie_break
        self.n_epochs_to_switch, self.fixed_switch_num = int(n_epochs_to_switch), int(fixed_switch_num)
        self.p_epochs, self.max_dendrites, self.n_candidates = int(p_epochs), int(max_dendrites), int(n_candidates)
        self.improvement_threshold, self.candidate_lr_scale = float(improvement_threshold), float(candidate_lr_scale)
        self.dendrite_lr_scale, self.min_epochs_after_growth = float(dendrite_lr_scale), int(min_epochs_after_growth)
        self.sign_momentum = 0.9
        self.epochs: int | None = None                      # the run's budget (on_train_start)
        self.base_params = sum(p.numel() for p in model.parameters())
        for i, layer in enumerate(model.layers):
            model.layers[i] = PerforatedLayer(layer, dendrite_activation, init_scale)
        if include_head:
            model.head = PerforatedLayer(model.head, dendrite_activation, init_scale)
        # phase (0 = n, 1 = p), best score since the last growth, epoch of the last improvement, epochs in the phase,
        # and the score and loss of the best snapshot
        self.register_buffer("tracker", torch.tensor([0.0, -math.inf, -1.0, 0.0, -math.inf, math.inf],
                                                     dtype=torch.float64))
        # the model's parameters at the best-scoring n-mode epoch since the last growth (reloaded at a decision)
        self.register_buffer("best", self._flat())
        # one row per growth and wrapped layer: epoch, layer (index in wrapped()), n_dendrites after, and the mean
        # |corr| of the attached units, of the whole trained pool and of the random pool (gd / random: -1)
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

    def _model_params(self) -> list[Tensor]:
        """The model's parameters (neurons and attached dendrites; never the candidates)."""
        return [p for n, p in self.model.named_parameters() if ".candidate." not in n]

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().flatten() for p in self._model_params()]).clone()

    def _apply_phase(self) -> None:
        """requires_grad from the phase: p-mode trains only the candidates; n-mode all but frozen dendrite inputs."""
        for p in self.parameters():
            p.requires_grad_(not self.in_p_mode)
        for layer in self.wrapped().values():
            if layer.candidate is not None:
                layer.candidate.requires_grad_(True)
                layer.candidate.w.requires_grad_(False)                     # the pool is never added to z
            for d in layer.dendrites:
                for p in (*d.op.parameters(), d.cascade):
                    p.requires_grad_(self.mode == "gd" and not self.in_p_mode)
        for p in self.parameters():
            if not p.numel():                                               # the first set's empty cascade
                p.requires_grad_(False)

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
            del layer.dendrites[n:]
            while len(layer.dendrites) < n:
                layer.attach(trainable=self.mode == "gd")
            if f"{prefix}candidate.w" in state_dict:
                layer.start_candidates(len(state_dict[f"{prefix}candidate.w"]) // layer.n)
            else:
                layer.clear_candidates()
        for key in ("log", "best"):
            if key in state_dict:
                setattr(self, key, torch.zeros_like(state_dict[key], device=self.tracker.device))
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._apply_phase()
        return result

    # ---- credit assignment -----------------------------------------------------------------------------
    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        if self.in_p_mode:
            return self._candidate_step(x, y)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        return {"loss": loss.item()}

    def residual_errors(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor], float]:
        """Inputs u_l and remaining errors e_l = dL/dz_l (per sample: L is the batch sum; shaped like z_l) of every
        wrapped layer, in the current network (candidates excluded), both detached; and the mean CE loss."""
        h, us, zs = self.model.encode(x), [], []
        with torch.enable_grad():
            for m in [*self.model.layers, self.model.head]:
                if not isinstance(m, PerforatedLayer):
                    h = m(h)
                    continue
                u = m.prepare(h)
                z = m.pre_activation(u)
                if not z.requires_grad:
                    z = z.detach().requires_grad_(True)
                us.append(u.detach())
                zs.append(z)
                h = m.post(z)
            loss = F.cross_entropy(h, y, reduction="sum")
            es = torch.autograd.grad(loss, zs)
        return us, [e.detach() for e in es], loss.item() / len(y)

    def _candidate_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        us, es, loss = self.residual_errors(x, y)
        steps = [layer.candidate_step(u, e, self.sign_momentum, self.score)
                 for layer, u, e in zip(self.wrapped().values(), us, es)]
        objectives, corrs = zip(*steps)
        sum(objectives).backward()
        return {"loss": loss, "correlation": sum(corrs) / len(corrs)}

    # ---- growth decisions ------------------------------------------------------------------------------
    def on_train_start(self, epochs: int) -> None:
        """Keep the budget; warn (once, one line) when it leaves no room for a single growth."""
        self.epochs = int(epochs)
        first = self.fixed_switch_num if self.switch == "fixed" else self.n_epochs_to_switch
        if self.max_dendrites > 0 and not self._room_to_grow(first - 1):
            warnings.warn(f"rule={self.name}: a {epochs}-epoch run leaves no room for a growth (the first decision "
                          f"comes after {first} epochs, then {self._growth_epochs} p-epochs and "
                          f"min_epochs_after_growth={self.min_epochs_after_growth}); raise trainer.epochs or lower "
                          "those", stacklevel=2)

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """Track the score (val_acc if present, else -train loss), switch modes / grow; True if params changed."""
        t = self.tracker
        t[IN_PHASE] += 1
        if self.in_p_mode:
            scores = [layer.epoch_scores() for layer in self.wrapped().values()]
            if t[IN_PHASE] >= self.p_epochs:
                self._grow(epoch, scores)
                return True
            return False
        score = float(metrics["val_acc"]) if "val_acc" in metrics else -float(metrics["loss"])
        loss = float(metrics.get("val_loss", metrics["loss"])) if self.tie_break == "val_loss" else 0.0
        if score > float(t[BEST]) + self.improvement_threshold or t[LAST_IMPROVED] < 0:
            t[BEST], t[LAST_IMPROVED] = score, epoch
        if (score, -loss) > (float(t[SNAP_SCORE]), -float(t[SNAP_LOSS])):
            t[SNAP_SCORE], t[SNAP_LOSS] = score, loss
            self.best = self._flat()
        if self.n_dendrites >= self.max_dendrites or not self._room_to_grow(epoch):
            return False
        if self.switch == "fixed":
            due = t[IN_PHASE] >= self.fixed_switch_num
        else:
            due = t[IN_PHASE] >= self.n_epochs_to_switch and epoch - t[LAST_IMPROVED] >= self.n_epochs_to_switch
        if not due:
            return False
        self._reload_best()
        if self.mode != "cascor":
            self._grow(epoch, [None] * len(self.wrapped()))
        else:
            for layer in self.wrapped().values():
                layer.start_candidates(self.n_candidates)
            t[PHASE], t[IN_PHASE] = 1, 0
            self._apply_phase()
        return True

    def _room_to_grow(self, epoch: int) -> bool:
        """A growth decided now leaves, after cascor's p-epochs, >= min_epochs_after_growth epochs to train it."""
        if self.epochs is None:
            return True
        return epoch + 1 + self._growth_epochs + self.min_epochs_after_growth <= self.epochs

    @property
    def _growth_epochs(self) -> int:
        """Epochs a growth spends before n-mode resumes: cascor's p-epochs, none for gd and random."""
        return self.p_epochs if self.mode == "cascor" else 0

    def _reload_best(self) -> None:
        with torch.no_grad():
            i = 0
            for p in self._model_params():
                p.copy_(self.best[i:i + p.numel()].view_as(p))
                i += p.numel()

    def _grow(self, epoch: int, scores: list) -> None:
        """Attach one set per wrapped layer (cascor: the best pool unit per neuron), log the correlations, back to
        n-mode with the best score reset for the new structure."""
        rows = []
        for i, (layer, s) in enumerate(zip(self.wrapped().values(), scores)):
            figures = [-1.0, -1.0, -1.0]
            if s is not None:
                select = s["cov"] if self.score == "covariance" else s["corr"]
                chosen = s["corr"].view(-1, layer.n).gather(0, select.view(-1, layer.n).argmax(0, keepdim=True))[0]
                live = s["live"][: layer.n]
                if live.any():
                    figures = [chosen[live].mean().item(), s["corr"][s["live"]].mean().item(),
                               s["random_corr"][s["live"]].mean().item()]
                layer.attach(select)
            else:
                layer.attach(trainable=self.mode == "gd")
            rows.append([epoch, i, len(layer.dendrites), *figures])
        t = self.tracker
        t[PHASE], t[IN_PHASE], t[LAST_IMPROVED] = 0, 0, -1
        t[BEST], t[SNAP_SCORE], t[SNAP_LOSS] = -math.inf, -math.inf, math.inf
        self.log = torch.cat([self.log, torch.tensor(rows, dtype=self.log.dtype, device=self.log.device)])
        self.best = self._flat()
        self._apply_phase()

    # ---- reports ---------------------------------------------------------------------------------------
    def dendrite_log(self) -> list[dict]:
        """One dict per growth and wrapped layer ("layers.0", ..., "head"): epoch, n_dendrites, corr (mean |corr| of
        the attached units with their neuron's residual error over the last p-epoch), corr_pool (the whole trained
        pool), corr_random (the pool's untrained initial weights: random dendrites of the same size), ratio =
        corr / corr_random. Neurons whose error is constant (dead ReLUs) are left out. gd / random: -1 and None."""
        names = [prefix[len("model."):-1] for prefix in self.wrapped()]
        return [{"epoch": int(epoch), "layer": names[int(i)], "n_dendrites": int(n), "corr": c, "corr_pool": pool,
                 "corr_random": r, "ratio": c / r if r > 0 else None}
                for epoch, i, n, c, pool, r in self.log.tolist()]

    def parameter_report(self) -> dict:
        """base_params (the model before wrapping), dendrite_params (attached sets: V, c and w), n_dendrites (sets
        per neuron), growth_ratio = (base + dendrite) / base. Candidates in training are not counted."""
        dend = sum(layer.dendrite_params() for layer in self.wrapped().values())
        return {"base_params": self.base_params, "dendrite_params": dend, "n_dendrites": self.n_dendrites,
                "growth_ratio": (self.base_params + dend) / self.base_params}

    def correlation_report(self) -> dict:
        """Over every correlation-trained growth: mean |corr| of the attached dendrites with their neurons' residual
        error, the same for random dendrites, corr_ratio = their quotient, and the smallest per-layer ratio
        (min_layer_ratio, each layer's figures averaged over its growths). {} if none."""
        rows = [r for r in self.dendrite_log() if r["corr_random"] > 0]
        if not rows:
            return {}
        corr, rand = (sum(r[k] for r in rows) / len(rows) for k in ("corr", "corr_random"))
        per_layer = {}
        for r in rows:
            per_layer.setdefault(r["layer"], []).append((r["corr"], r["corr_random"]))
        ratios = [sum(c for c, _ in v) / sum(q for _, q in v) for v in per_layer.values()]
        return {"dendrite_corr": corr, "random_corr": rand, "corr_ratio": corr / rand, "min_layer_ratio": min(ratios)}

    def extra_metrics(self) -> dict:
        """What bioplaus-run adds to metrics.json: the parameter and correlation reports and the growth log."""
        return {**self.parameter_report(), **self.correlation_report(), "dendrite_log": self.dendrite_log()}


__all__ = ["MODES", "Perforated", "PerforatedLayer", "correlation"]
