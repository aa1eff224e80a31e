"""Equilibrium propagation (Scellier & Bengio 2017; Laborieux et al. 2021's discrete-time form), with symmetric or
asymmetric (vector-field) weights.

The layered model is read as an energy-based network. States s_1..s_L (s_0 = x, clamped) settle to a fixed
point of the primitive function

    Phi(x, s) = sum_l < s_{l+1}, P_l(W_l * s_l + b_l) >  -  beta * L(s, y)

(dense layers: W_l s_l; conv layers: the layer's 3x3 conv then its 2x2 max-pool P_l), by the synchronous
iteration s_l <- rho(dPhi/ds_l) = rho(P_l(W_{l-1} s_{l-1}) + W_l^T P_l^T s_{l+1} [+ nudge]), with a bounded
activation rho (rules/equilibrium_dynamics.py). Phases per batch (states start at zero):

    free    beta = 0,      T1 steps -> s^0        (also what `predict` runs)
    nudged  beta = +beta,  T2 steps from s^0 -> s^+
            beta = -beta,  T2 steps from s^0 -> s^-   (symmetric nudging, Laborieux's --thirdphase)

and the update of every weight is the contrast of dPhi/dW between two phases,

    grad W = -(dPhi/dW(s^b2, b2) - dPhi/dW(s^b1, b1)) / (b2 - b1),    (b1, b2) = (-beta, +beta) or (0, beta)

which tends to dL/dW through the free fixed point as beta -> 0 (the recurrent-backprop gradient). Dense
layers give the local, contrastive-Hebbian rule grad W_l = -(s_{l+1} s_l^T |b2 - s_{l+1} s_l^T |b1)/(b2 - b1).

`asymmetric` (vector-field EP, Scellier et al. 2018; Laborieux's VF_MLP / VF_CNN): the feedback into layer l comes
through its own weights B_l (shaped like W_l, no bias, initialised independently), so the dynamics have no energy.
Each weight moves by the change of its postsynaptic state between the two phases times its presynaptic state in the
free phase (Laborieux's VF_CNN update):

    grad W_l = -(s_{l+1}^b2 - s_{l+1}^b1) (s_l^0)^T / (b2 - b1)
    grad B_l = -(s_l^b2 - s_l^b1) (s_{l+1}^0)^T / (b2 - b1)

(conv: the same contrast through the layer's conv and pool, by autograd). `same_update` gives W_l and B_l the mean
of the two (Laborieux's --same-update), which aligns them over training.

Loss variants (`loss`):

    mse  the head is the last layer of the energy; its states s_L [B, C] are the prediction;
         L = 1/2 ||s_L - onehot(y)||^2, so the nudge on s_L is beta (onehot(y) - s_L)
    ce   the head sits outside the energy (Laborieux's --softmax): logits = head(s_L) and L = CE(head(s_L), y),
         whose gradient pulls s_L by -beta W_head^T (softmax - onehot); the head learns the CE gradient.

Relaxation runs without autograd (explicit dPhi/ds, vectorised over the batch; the input's drive is computed
once per phase, not per step). With `tol` it is adaptive: a phase stops at the first step whose residual
max |s_t - s_(t-1)| (over layers and batch) is below tol, T1 / T2 / T_inference being the caps; the steps taken
are reported (`extra_metrics`: mean steps per phase). `track_gradient` = N: every N-th update (not the first, whose
passes the trainer counts), the cosine between the update and the true gradient on that batch (recurrent backprop:
the loss backpropagated through T1 steps of the free dynamics started at the free fixed point; for asymmetric
weights the gradient of the loss at the fixed point of the actual, non-gradient dynamics) is recorded, per epoch in
`extra_metrics()["grad_cosine"]`, overall and for the forward weights alone.
A non-finite state stops training with the phase, step and layer where it first appeared. Models: MLP, and
ConvNet with model.norm=none (BatchNorm has no place in an energy). Shapes: x [B, ...]; dense states [B, D];
conv states [B, C, H, W] (after pooling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import MLP, ConvNet
from bioplaus.rules.base import LearningRule, check_choice, check_positive
from bioplaus.rules.equilibrium_dynamics import ACTIVATIONS, LOSSES, RelaxationStep, Synapse


class EquilibriumPropagation(LearningRule):
    """EP on MLP / ConvNet(norm=none): free phase, (symmetric) nudged phases, contrastive update of dPhi/dW; with
    asymmetric weights, the vector-field form."""

    name = "ep"
    supported_models = (MLP, ConvNet)

    def __init__(self, model, beta: float = 0.5, T1: int = 20, T2: int = 8, symmetric: bool = True,
                 random_sign: bool = False, loss: str = "mse", activation: str = "my_hard_sig",
                 T_inference: int | None = None, lr_scales: list[float] | None = None, asymmetric: bool = False,
                 same_update: bool = False, tol: float | None = None, track_gradient: int = 0):
        super().__init__(model)
        check_choice("loss", loss, LOSSES, "ep")
        check_choice("activation", activation, ACTIVATIONS, "ep")
        if not float(beta) > 0:
            raise ConfigError(f"rule.beta must be > 0 (the nudging strength), got {beta}")
        if int(T1) < 1 or int(T2) < 1:
            raise ConfigError(f"rule.T1 and rule.T2 (relaxation steps) must be >= 1, got T1={T1}, T2={T2}")
        if symmetric and random_sign:
            raise ConfigError("rule.symmetric and rule.random_sign are alternatives: set one of them to false")
        if same_update and not asymmetric:
            raise ConfigError("rule.same_update ties the backward weights to the forward ones: it needs "
                              "rule.asymmetric=true")
        if int(track_gradient) < 0:
            raise ConfigError(f"rule.track_gradient must be >= 0 (0 = off), got {track_gradient}")
        if isinstance(model, ConvNet) and model.norm != "none":
            raise ConfigError("ep needs a ConvNet without BatchNorm (it is not part of an energy): "
                              "use model=convnet model.norm=none")
        self.beta, self.T1, self.T2 = float(beta), int(T1), int(T2)
        self.symmetric, self.random_sign, self.loss = bool(symmetric), bool(random_sign), loss
        self.activation, self.rho = activation, ACTIVATIONS[activation]
        self.T_inference = int(T_inference) if T_inference is not None else self.T1
        self.tol = None if tol is None else check_positive("tol", tol)
        self.asymmetric, self.same_update = bool(asymmetric), bool(same_update)
        self.track_gradient = int(track_gradient)
        if self.asymmetric:
            self.name = "ep_vf"
        layers = list(model.layers)
        conv = isinstance(model, ConvNet)
        self.synapses = [Synapse(m.conv if conv else m.linear, pool=conv) for m in layers]
        self.head = model.head.linear
        if loss == "mse":                                  # the head is the energy's last layer
            self.synapses.append(Synapse(self.head, pool=False))
        # feedback into layer k (k = 0 .. L-2) from synapse k + 1: its own weights, or B_k (vector field)
        self.backward_weights = nn.ModuleList(self._mirror(s.module) for s in self.synapses[1:]) if asymmetric \
            else nn.ModuleList()
        self.feedback_synapses = ([Synapse(b, pool=s.pool) for b, s in zip(self.backward_weights, self.synapses[1:])]
                                  if asymmetric else self.synapses[1:])
        n_groups = len(layers) + 1
        if lr_scales is not None and len(lr_scales) != n_groups:
            raise ConfigError(f"rule.lr_scales needs one factor per layer plus the head ({n_groups}), got "
                              f"{len(lr_scales)}")
        self.lr_scales = [float(s) for s in lr_scales] if lr_scales is not None else None
        self.step = RelaxationStep()
        self._idx0 = None
        self.updates = 0
        # steps taken: [phases, steps] for free / nudged / inference phases (a statistic, not checkpointed);
        # the gradient cosines of this epoch
        self.register_buffer("steps_taken", torch.zeros(3, 2, dtype=torch.float64), persistent=False)
        self.cosines: list[list[float]] = []
        self.cosine_history: list[dict] = []

    @staticmethod
    def _mirror(module: nn.Module) -> nn.Module:
        """A backward weight shaped like `module`'s, without bias, initialised independently (PyTorch default)."""
        if isinstance(module, nn.Conv2d):
            return nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, padding=module.padding,
                             bias=False).to(module.weight.device)
        return nn.Linear(module.in_features, module.out_features, bias=False).to(module.weight.device)

    # ---- relaxation ---------------------------------------------------------------------------------
    def pass_probe(self) -> nn.Module:
        return self.step

    def _nudge(self, y: Tensor, beta: float):
        if beta == 0.0:
            return None
        if self.loss == "mse":
            target = F.one_hot(y, self.model.n_classes).to(torch.get_default_dtype())
            return lambda s: beta * (target - s)
        w, target = self.head.weight, F.one_hot(y, self.model.n_classes)

        def ce_nudge(s: Tensor) -> Tensor:
            p = torch.softmax(self.head(s.flatten(1)), -1)
            return (-beta * (p - target) @ w).view(s.shape)
        return ce_nudge

    def _zero_states(self, x: Tensor) -> list[Tensor]:
        """States at rest, shaped from the synapses (no pass through the network: it would cost ops)."""
        shapes, shape = [], tuple(x.shape[1:])
        for syn in self.synapses:
            shape = syn.out_shape(shape)
            shapes.append(shape)
        return [x.new_zeros(len(x), *s) for s in shapes]

    @torch.no_grad()
    def relax(self, x: Tensor, states: list[Tensor], steps: int, y: Tensor | None = None, beta: float = 0.0,
              phase: str = "free", check_every_step: bool = False) -> list[Tensor]:
        """Run up to `steps` synchronous updates from `states` (fewer with tol, once the residual is below it);
        returns the settled states (new tensors)."""
        first, self._idx0 = self.synapses[0].drive(x)      # the clamped input's drive: once per phase
        nudge = self._nudge(y, beta) if y is not None else None
        start, taken = states, steps
        for t in range(steps):
            new, _ = self.step(self, [first], states, nudge)
            if check_every_step:
                self._check(new, phase, t + 1)
            settled = self.tol is not None and max(float((a - b).abs().max()) for a, b in zip(new, states)) < self.tol
            states = new
            if settled:
                taken = t + 1
                break
        if not check_every_step and not all(torch.isfinite(s).all() for s in states):
            self.relax(x, start, steps, y, beta, phase, check_every_step=True)   # raises where it first broke
        row = 0 if phase == "free" else (2 if phase == "inference" else 1)
        self.steps_taken[row] += torch.tensor([1.0, taken], dtype=torch.float64)
        return states

    @staticmethod
    def _check(states: list[Tensor], phase: str, step: int) -> None:
        for k, s in enumerate(states):
            if not torch.isfinite(s).all():
                raise ConfigError(f"equilibrium propagation diverged: non-finite state in layer {k + 1} at step "
                                  f"{step} of the {phase} phase; lower the learning rate (trainer.optimizer.lr) "
                                  "or rule.beta, and check the input for NaN/inf")

    # ---- update ---------------------------------------------------------------------------------------
    def phi(self, x: Tensor, states: list[Tensor], y: Tensor, beta: float, pre: list[Tensor] | None = None) -> Tensor:
        """Phi(x, s) - beta L(s, y), mean over the batch (autograd flows to the weights only). pre (vector field):
        the presynaptic states (the free phase's), `states` then being the postsynaptic ones; the backward
        weights' terms <s_l(post), B_l^T P^T s_{l+1}(pre)> join."""
        pre = states if pre is None else pre
        phi = sum(syn.phi(i, o) for syn, i, o in zip(self.synapses, [x, *pre[:-1]], states))
        if self.asymmetric:
            phi = phi + sum(b.phi(s_in, s_out) for b, s_in, s_out in zip(self.feedback_synapses, states[:-1], pre[1:]))
        if beta != 0.0:
            phi = phi - beta * self.sample_loss(states[-1], y)
        return phi.mean()

    def sample_loss(self, s_last: Tensor, y: Tensor) -> Tensor:
        """L(s, y) per sample [B]: 1/2 ||s_L - onehot||^2 (mse) or CE(head(s_L), y) (ce)."""
        if self.loss == "mse":
            return 0.5 * ((s_last - F.one_hot(y, self.model.n_classes)) ** 2).sum(1)
        return F.cross_entropy(self.head(s_last.flatten(1)), y, reduction="none")

    def free_phase(self, x: Tensor) -> list[Tensor]:
        return self.relax(x, self._zero_states(x), self.T1)

    def ep_update(self, x: Tensor, y: Tensor, free: list[Tensor] | None = None) -> list[Tensor]:
        """Nudged phase(s) from the free fixed point and the contrastive update into .grad; returns s^0."""
        free = self.free_phase(x) if free is None else free
        beta = self.beta
        if self.random_sign and torch.rand(()) < 0.5:
            beta = -beta
        plus = self.relax(x, free, self.T2, y, beta, phase=f"nudged (beta={beta:+g})")
        if self.symmetric:
            minus = self.relax(x, free, self.T2, y, -beta, phase=f"nudged (beta={-beta:+g})")
            (b1, s1), (b2, s2) = (-beta, minus), (beta, plus)
        else:
            (b1, s1), (b2, s2) = (0.0, free), (beta, plus)
        pre = free if self.asymmetric else None
        delta = -(self.phi(x, s2, y, b2, pre) - self.phi(x, s1, y, b1, pre)) / (b2 - b1)
        delta.backward()
        if self.same_update:
            with torch.no_grad():
                for s, b in zip(self.synapses[1:], self.backward_weights):
                    w = s.module.weight
                    if w.grad is not None and b.weight.grad is not None:
                        w.grad.add_(b.weight.grad).mul_(0.5)
                        b.weight.grad.copy_(w.grad)
        return free

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        free = self.free_phase(x)
        with torch.no_grad():                              # how settled the free phase is: one more step's change
            first, self._idx0 = self.synapses[0].drive(x)
            again, _ = self.step(self, [first], free, None)
            residual = max(float((a - f).abs().max()) for a, f in zip(again, free))
            loss = float(self.sample_loss(free[-1], y).mean())
        self.ep_update(x, y, free)
        logs = {"loss": loss, "residual": residual}
        if self.track_gradient and self.updates and self.updates % self.track_gradient == 0:
            self.cosines.append(self.gradient_cosine(x, y, free))
            logs["grad_cosine"] = self.cosines[-1][0]
        self.updates += 1
        return logs

    def true_gradient(self, x: Tensor, y: Tensor, free: list[Tensor]) -> list[Tensor | None]:
        """d loss / d parameter by recurrent backprop: T1 steps of the free dynamics with autograd from the free
        fixed point (detached), the loss at their end backpropagated. One entry per trainable parameter."""
        params = self.trainable_parameters()
        with torch.enable_grad():
            s = [t.detach() for t in free]
            for _ in range(self.T1):
                first, self._idx0 = self.synapses[0].drive(x)
                s, _ = self.step(self, [first], s, None)
            loss = self.sample_loss(s[-1], y).mean()
            return list(torch.autograd.grad(loss, params, allow_unused=True))

    def gradient_cosine(self, x: Tensor, y: Tensor, free: list[Tensor]) -> list[float]:
        """[cosine over every trainable parameter, over the forward weights and biases only] between the update in
        .grad and the true gradient on this batch."""
        params = self.trainable_parameters()
        true = self.true_gradient(x, y, free)
        backward = {id(p) for p in self.backward_weights.parameters()}
        out = []
        for keep in (lambda p: True, lambda p: id(p) not in backward):
            pairs = [(p.grad, g) for p, g in zip(params, true) if keep(p) and p.grad is not None and g is not None]
            a = torch.cat([u.flatten() for u, _ in pairs])
            b = torch.cat([g.flatten() for _, g in pairs])
            out.append(float(F.cosine_similarity(a, b, 0)))
        return out

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """Close the epoch's record of gradient cosines."""
        if self.cosines:
            n = len(self.cosines)
            self.cosine_history.append({"epoch": epoch, "cosine": sum(c[0] for c in self.cosines) / n,
                                        "cosine_forward": sum(c[1] for c in self.cosines) / n, "n": n})
            self.cosines = []
        return False

    def extra_metrics(self) -> dict:
        """Mean relaxation steps per phase (free, nudged, inference), and with track_gradient the per-epoch cosines
        of the update with the true gradient."""
        out = {f"steps_{k}": float(r[1] / r[0]) for k, r in zip(("free", "nudged", "inference"), self.steps_taken)
               if r[0] > 0}
        if self.cosine_history:
            out["grad_cosine"] = self.cosine_history
        return out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Free phase (T_inference steps, or fewer with tol); logits = the output states (mse) or head(s_L) (ce)."""
        s = self.relax(x, self._zero_states(x), self.T_inference, phase="inference")[-1]
        return s if self.loss == "mse" else self.head(s.flatten(1))

    def inference_layers(self) -> dict[str, nn.Module]:
        names = {f"layers.{i}": syn.module for i, syn in enumerate(self.synapses[:len(self.model.layers)])}
        return {**names, "head": self.head}

    def param_groups(self) -> list[dict]:
        if self.lr_scales is None:
            return super().param_groups()
        mods = [*self.model.layers, self.model.head]
        groups = [[p for p in m.parameters() if p.requires_grad] for m in mods]
        for i, b in enumerate(self.backward_weights):       # B_k mirrors synapse k + 1: its layer's group
            groups[i + 1] += [p for p in b.parameters() if p.requires_grad]
        out = [self.group(g, s) for g, s in zip(groups, self.lr_scales)]
        return [g for g in out if g["params"]]
