"""Equilibrium propagation (Scellier & Bengio 2017; Laborieux et al. 2021's discrete-time form).

The layered model is read as an energy-based network. States s_1..s_L (s_0 = x, clamped) settle to a fixed
point of the primitive function

    Phi(x, s) = sum_l < s_{l+1}, P_l(W_l * s_l + b_l) >  -  beta * L(s, y)

(dense layers: W_l s_l; conv layers: the layer's 3x3 conv then its 2x2 max-pool P_l), by the synchronous
iteration s_l <- rho(dPhi/ds_l) = rho(P_l(W_{l-1} s_{l-1}) + W_l^T P_l^T s_{l+1} [+ nudge]), with a bounded
activation rho. Phases per batch (states start at zero):

    free    beta = 0,      T1 steps -> s^0        (also what `predict` runs)
    nudged  beta = +beta,  T2 steps from s^0 -> s^+
            beta = -beta,  T2 steps from s^0 -> s^-   (symmetric nudging, Laborieux's --thirdphase)

and the update of every weight is the contrast of dPhi/dW between two phases,

    grad W = -(dPhi/dW(s^b2, b2) - dPhi/dW(s^b1, b1)) / (b2 - b1),    (b1, b2) = (-beta, +beta) or (0, beta)

which tends to dL/dW through the free fixed point as beta -> 0 (the recurrent-backprop gradient). Dense
layers give the local, contrastive-Hebbian rule grad W_l = -(s_{l+1} s_l^T |b2 - s_{l+1} s_l^T |b1)/(b2 - b1).
Loss variants (`loss`):

    mse  the head is the last layer of the energy; its states s_L [B, C] are the prediction;
         L = 1/2 ||s_L - onehot(y)||^2, so the nudge on s_L is beta (onehot(y) - s_L)
    ce   the head sits outside the energy (Laborieux's --softmax): logits = head(s_L) and L = CE(head(s_L), y),
         whose gradient pulls s_L by -beta W_head^T (softmax - onehot); the head learns the CE gradient.

Relaxation runs without autograd (explicit dPhi/ds, vectorised over the batch; the input's drive is computed
once per phase, not per step); the weight update is one autograd backward through Phi at the settled states.
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
from bioplaus.rules.base import LearningRule, check_choice

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

    def forward(self, rule: EquilibriumPropagation, drives: list[Tensor], states: list[Tensor],
                nudge) -> tuple[list[Tensor], list[Tensor | None]]:
        syn, L = rule.synapses, len(states)
        total = [drives[0]]
        idx = [rule._idx0]
        for k in range(1, L):                              # forward drives of layers 2..L from the current states
            d, i = syn[k].drive(states[k - 1])
            total.append(d)
            idx.append(i)
        for k in range(L - 1):                             # feedback from the layer above
            total[k] = total[k] + syn[k + 1].feedback(states[k + 1], idx[k + 1], states[k].shape)
        if nudge is not None:
            total[-1] = total[-1] + nudge(states[-1])
        return [rule.rho(u) for u in total], idx


class EquilibriumPropagation(LearningRule):
    """EP on MLP / ConvNet(norm=none): free phase, (symmetric) nudged phases, contrastive update of dPhi/dW."""

    name = "ep"
    supported_models = (MLP, ConvNet)

    def __init__(self, model, beta: float = 0.5, T1: int = 20, T2: int = 8, symmetric: bool = True,
                 random_sign: bool = False, loss: str = "mse", activation: str = "my_hard_sig",
                 T_inference: int | None = None, lr_scales: list[float] | None = None):
        super().__init__(model)
        check_choice("loss", loss, LOSSES, "ep")
        check_choice("activation", activation, ACTIVATIONS, "ep")
        if not float(beta) > 0:
            raise ConfigError(f"rule.beta must be > 0 (the nudging strength), got {beta}")
        if int(T1) < 1 or int(T2) < 1:
            raise ConfigError(f"rule.T1 and rule.T2 (relaxation steps) must be >= 1, got T1={T1}, T2={T2}")
        if symmetric and random_sign:
            raise ConfigError("rule.symmetric and rule.random_sign are alternatives: set one of them to false")
        if isinstance(model, ConvNet) and model.norm != "none":
            raise ConfigError("ep needs a ConvNet without BatchNorm (it is not part of an energy): "
                              "use model=convnet model.norm=none")
        self.beta, self.T1, self.T2 = float(beta), int(T1), int(T2)
        self.symmetric, self.random_sign, self.loss = bool(symmetric), bool(random_sign), loss
        self.activation, self.rho = activation, ACTIVATIONS[activation]
        self.T_inference = int(T_inference) if T_inference is not None else self.T1
        layers = list(model.layers)
        conv = isinstance(model, ConvNet)
        self.synapses = [Synapse(m.conv if conv else m.linear, pool=conv) for m in layers]
        self.head = model.head.linear
        if loss == "mse":                                  # the head is the energy's last layer
            self.synapses.append(Synapse(self.head, pool=False))
        n_groups = len(layers) + 1
        if lr_scales is not None and len(lr_scales) != n_groups:
            raise ConfigError(f"rule.lr_scales needs one factor per layer plus the head ({n_groups}), got "
                              f"{len(lr_scales)}")
        self.lr_scales = [float(s) for s in lr_scales] if lr_scales is not None else None
        self.step = RelaxationStep()
        self._idx0 = None

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
        """Run `steps` synchronous updates from `states`; returns the settled states (new tensors)."""
        first, self._idx0 = self.synapses[0].drive(x)      # the clamped input's drive: once per phase
        nudge = self._nudge(y, beta) if y is not None else None
        start = states
        for t in range(steps):
            states, _ = self.step(self, [first], states, nudge)
            if check_every_step:
                self._check(states, phase, t + 1)
        if not check_every_step and not all(torch.isfinite(s).all() for s in states):
            self.relax(x, start, steps, y, beta, phase, check_every_step=True)   # raises where it first broke
        return states

    @staticmethod
    def _check(states: list[Tensor], phase: str, step: int) -> None:
        for k, s in enumerate(states):
            if not torch.isfinite(s).all():
                raise ConfigError(f"equilibrium propagation diverged: non-finite state in layer {k + 1} at step "
                                  f"{step} of the {phase} phase; lower the learning rate (trainer.optimizer.lr) "
                                  "or rule.beta, and check the input for NaN/inf")

    # ---- update ---------------------------------------------------------------------------------------
    def phi(self, x: Tensor, states: list[Tensor], y: Tensor, beta: float) -> Tensor:
        """Phi(x, s) - beta L(s, y), mean over the batch (autograd flows to the weights only)."""
        ins = [x, *states[:-1]]
        phi = sum(syn.phi(i, o) for syn, i, o in zip(self.synapses, ins, states))
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
        delta = -(self.phi(x, s2, y, b2) - self.phi(x, s1, y, b1)) / (b2 - b1)
        delta.backward()
        return free

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        free = self.free_phase(x)
        with torch.no_grad():                              # how settled the free phase is: one more step's change
            again = self.relax(x, free, 1)
            residual = max(float((a - f).abs().max()) for a, f in zip(again, free))
            loss = float(self.sample_loss(free[-1], y).mean())
        self.ep_update(x, y, free)
        return {"loss": loss, "residual": residual}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Free phase (T_inference steps); logits = the output states (mse) or head(s_L) (ce)."""
        s = self.relax(x, self._zero_states(x), self.T_inference)[-1]
        return s if self.loss == "mse" else self.head(s.flatten(1))

    def inference_layers(self) -> dict[str, nn.Module]:
        names = {f"layers.{i}": syn.module for i, syn in enumerate(self.synapses[:len(self.model.layers)])}
        return {**names, "head": self.head}

    def param_groups(self) -> list[dict]:
        if self.lr_scales is None:
            return super().param_groups()
        mods = [*self.model.layers, self.model.head]
        groups = [self.group([p for p in m.parameters() if p.requires_grad], s) for m, s in zip(mods, self.lr_scales)]
        return [g for g in groups if g["params"]]
