"""Feedback-alignment baselines: FA, DFA and sign symmetry (random or sign-only feedback instead of Wᵀ).

Notation for one synaptic op (nn.Linear or nn.Conv2d) a = W x + b, with δ = ∂L/∂a arriving from above:

- **FA** (Lillicrap et al. 2016, `FeedbackAlignment`): the error sent to the layer's input is
  B δ instead of Wᵀ δ, with B a fixed random matrix of W's shape (a buffer, never trained). Everything
  else is the usual backward: ∂L/∂W = δ ⊗ x, ∂L/∂b = Σ δ, activation derivatives, BatchNorm and
  max-pool gradients, surrogate spike gradients through time. So for an MLP
  δ_l = (B_{l+1}ᵀ δ_{l+1}) ⊙ f′(a_l) (PyTorch stores W, and B, as [out, in]: input error = δ @ B).
  Every synapse is replaced: each hidden Linear/Conv2d and the head's Linear.
- **Sign symmetry** (`SignSymmetry`, Liao et al. 2016 / Moskovitz et al. 2018): the same machinery with
  B built from the current W at every step: "usf" B = sign(W); "frsf" B = sign(W) ⊙ |R|, R fixed
  (a buffer); "brsf" B = sign(W) ⊙ |R|, R redrawn every batch (never stored).
- **DFA** (Nøkland 2016, `DirectFeedbackAlignment`): the output error e = softmax(z) − onehot(y) (divided
  by the batch size: ∂ mean-CE / ∂z) is sent straight to the output h_l of every hidden layer by a fixed
  random B_l [C, prod(h_l shape)] (ConvNet: C x (C_l·H_l·W_l), the pooled block output), i.e.
  ∂L/∂h_l := e B_l, and each layer is trained from that signal with its input detached (no error crosses
  layers; inside a layer autograd applies f′, BatchNorm, pooling). The head is trained by its own CE
  gradient on the detached h_L. Spiking models: the same signal (/ T, as the readout averages over
  time) is applied to the spikes at every time step and the layer's own surrogate BPTT does the rest.

How FA is wired (the model stays a plain layered model; model.layers / model.head are untouched):
each synapse gets a forward pre-hook that detaches its input x (so autograd computes ∂L/∂W and ∂L/∂b
as usual but sends nothing to x through W) and a forward hook that passes the output through
`_Tap` (a custom autograd.Function with a linear and a conv2d variant): identity forward; backward
returns δ unchanged to the output and δ @ B (linear) or conv2d_input(δ, B) (conv) to x. No op runs
twice; the only extra tensor kept for backward is B (sign symmetry: sign(W)[⊙|R|], one copy of W per
synapse). The hooks act only inside this rule's `assign_credit`; `predict`, the
statistics pass and any other rule see the model unmodified.

Feedback matrices are drawn at construction from torch's global RNG (seeded by the run's seed) or from
`feedback_seed`; they are persistent buffers, so a state_dict round-trip restores them exactly. Scale:
FA's B and DFA's B_l have the variance of W at initialisation (FA: Var(B) = Var(W₀); DFA:
Var(B_l) = 1/C) times `feedback_scale`; with Adam (per-parameter normalised steps) the scale hardly
matters, with plain SGD it sets the effective learning rate of the hidden layers.

Learning rate: FA and DFA move the hidden layers along directions only partly aligned with the gradient,
and at the shared Adam lr 1e-3 they under-fit within the default budget (digits MLP, 20 epochs: train
accuracy ~0.975, test 0.944-0.956 over seeds 0-3); at 3x (lr_scale 3, the default for FA and DFA) they
reach train ~0.99, test 0.964-0.972, and Fashion-10k improves too (0.84 -> 0.85). Sign symmetry tracks
the gradient closely and keeps lr_scale 1. Like readout_only's 10x, the scale is part of the rule.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import UnsupportedModelError
from bioplaus.models import MLP, ConvNet, SpikingConvNet, SpikingMLP
from bioplaus.rules.base import LearningRule, check_choice, check_positive

SUPPORTED = (MLP, ConvNet, SpikingMLP, SpikingConvNet)
SIGN_MODES = ("usf", "frsf", "brsf")


class _Tap(torch.autograd.Function):
    """out = a (identity); backward: ∂/∂a = δ, ∂/∂x = δ @ B (linear) or conv2d_input(δ, B) (conv).

    a is the synapse's output (computed from the detached x, so it carries ∂W, ∂b only); x is the
    synapse's real input. Linear: a [..., out], B [out, in], x [..., in]. Conv: a [N, C_out, H', W'],
    B [C_out, C_in/groups, kh, kw], x [N, C_in, H, W]; `conv` = (stride, padding, dilation, groups)."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor, B: Tensor, conv: tuple | None):
        ctx.save_for_backward(B)
        ctx.conv, ctx.x_shape = conv, x.shape
        return a.view_as(a)

    @staticmethod
    def backward(ctx, delta: Tensor):
        (B,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[1]:
            if ctx.conv is None:
                grad_x = delta @ B
            else:
                stride, padding, dilation, groups = ctx.conv
                grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, B, delta, stride, padding, dilation, groups)
        return delta, grad_x, None, None


def _synapses(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Linear / Conv2d of model.layers and model.head, in forward order, with its dotted path."""
    found = []
    for prefix, part in (("layers", model.layers), ("head", model.head)):
        for name, mod in part.named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                if isinstance(mod, nn.Conv2d) and (mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
                    raise UnsupportedModelError(
                        f"feedback alignment needs zero-padded convolutions with numeric padding; {prefix}.{name} "
                        f"has padding={mod.padding!r}, padding_mode={mod.padding_mode!r}")
                found.append((f"{prefix}.{name}", mod))
    return found


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


class _Scaled:
    """The two scales every FA-family rule takes: feedback_scale and lr_scale (the rule's parameters learn at
    lr_scale x the trainer's lr, through LearningRule.param_groups)."""

    def _scales(self, feedback_scale: float, lr_scale: float) -> None:
        self.feedback_scale = check_positive("feedback_scale", feedback_scale)
        self.lr_scale = check_positive("lr_scale", lr_scale)


class FeedbackAlignment(_Scaled, LearningRule):
    """FA: cross-entropy backward in which every synapse sends B δ (fixed random B) to its input."""

    name = "fa"
    supported_models = SUPPORTED

    def __init__(self, model: nn.Module, feedback_scale: float = 1.0, feedback_seed: int | None = None,
                 lr_scale: float = 3.0):
        super().__init__(model)
        self._scales(feedback_scale, lr_scale)
        self._synapses = _synapses(model)
        self.feedback = nn.Module()                       # buffers: one per synapse, named by its path
        gen = _generator(feedback_seed)
        for path, mod in self._synapses:
            self._init_feedback(path.replace(".", "_"), mod, gen)
        self._active, self._stash, self._handles = False, {}, []
        for path, mod in self._synapses:
            key = path.replace(".", "_")
            self._handles.append(mod.register_forward_pre_hook(self._pre_hook))
            self._handles.append(mod.register_forward_hook(self._make_hook(key)))

    def _init_feedback(self, key: str, mod: nn.Module, gen: torch.Generator | None) -> None:
        """B: W's shape, uniform with W's initial variance (x feedback_scale)."""
        W = mod.weight.detach()
        std = W.std().item() if W.numel() > 1 and W.std().item() > 0 else 1 / math.sqrt(W[0].numel())
        B = (torch.rand(W.shape, generator=gen) * 2 - 1) * math.sqrt(3) * std * self.feedback_scale
        self.feedback.register_buffer(key, B.to(W.device, W.dtype))

    def feedback_matrix(self, key: str, mod: nn.Module) -> Tensor:
        """The matrix used in place of W in this synapse's backward (FA: the fixed buffer)."""
        return self.feedback.get_buffer(key)

    def _pre_hook(self, mod: nn.Module, inputs: tuple):
        if not (self._active and torch.is_grad_enabled()):
            return None
        x = inputs[0]
        self._stash.setdefault(mod, []).append(x)
        return (x.detach(), *inputs[1:])

    def _make_hook(self, key: str):
        def hook(mod: nn.Module, inputs: tuple, out: Tensor):
            if not (self._active and torch.is_grad_enabled()):
                return None
            x = self._stash[mod].pop()
            if not x.requires_grad:                       # the network's input: no error to send
                return None
            conv = (mod.stride, mod.padding, mod.dilation, mod.groups) if isinstance(mod, nn.Conv2d) else None
            return _Tap.apply(out, x, self.feedback_matrix(key, mod).to(out.dtype), conv)
        return hook

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        self._active = True
        try:
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
        finally:
            self._active = False
            self._stash.clear()
        return {"loss": loss.item()}


class SignSymmetry(FeedbackAlignment):
    """FA with B built from the current W each step: usf sign(W), frsf sign(W)⊙|R| (R fixed), brsf (R per batch)."""

    name = "sign_symmetry"

    def __init__(self, model: nn.Module, mode: str = "usf", feedback_scale: float = 1.0,
                 feedback_seed: int | None = None, lr_scale: float = 1.0):
        check_choice("mode", mode, SIGN_MODES, "sign symmetry")
        self.mode = mode
        super().__init__(model, feedback_scale=feedback_scale, feedback_seed=feedback_seed, lr_scale=lr_scale)

    def _init_feedback(self, key: str, mod: nn.Module, gen: torch.Generator | None) -> None:
        if self.mode == "frsf":                           # R ~ N(0, 1), fixed; only |R| is used
            W = mod.weight.detach()
            self.feedback.register_buffer(key, torch.randn(W.shape, generator=gen).abs().to(W.device, W.dtype))

    def feedback_matrix(self, key: str, mod: nn.Module) -> Tensor:
        B = torch.sign(mod.weight.detach())
        if self.mode == "frsf":
            B = B * self.feedback.get_buffer(key)
        elif self.mode == "brsf":                         # a fresh R for every batch (one forward per batch)
            B = B * torch.randn_like(B).abs()
        return B * self.feedback_scale if self.feedback_scale != 1.0 else B


class DirectFeedbackAlignment(_Scaled, LearningRule):
    """DFA: every hidden layer gets e B_l at its output (e = ∂ mean-CE/∂logits), input detached; head by CE."""

    name = "dfa"
    supported_models = SUPPORTED

    def __init__(self, model: nn.Module, feedback_scale: float = 1.0, feedback_seed: int | None = None,
                 lr_scale: float = 3.0):
        super().__init__(model)
        self._scales(feedback_scale, lr_scale)
        gen, C = _generator(feedback_seed), int(model.n_classes)
        W = next(model.parameters())
        self.feedback = nn.Module()                       # feedback.l{i}: B_l [C, dims[i]], fixed
        for i, d in enumerate(model.dims):
            B = (torch.rand(C, int(d), generator=gen) * 2 - 1) * math.sqrt(3 / C) * self.feedback_scale
            self.feedback.register_buffer(f"l{i}", B.to(W.device, W.dtype))

    def feedback_matrices(self) -> list[Tensor]:
        return [self.feedback.get_buffer(f"l{i}") for i in range(len(self.model.layers))]

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        model = self.model
        h, outs = model.encode(x), []
        for layer in model.layers:
            h = layer(h.detach())
            outs.append(h)
        logits = model.head(h.detach())
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            e = (torch.softmax(logits, -1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)) / len(y)
            signals = []
            for h_l, B in zip(outs, self.feedback_matrices()):
                g = e @ B                                  # [B, prod(h_l shape per sample)]
                if model.spiking:                          # same signal at every step, /T like the readout
                    g = (g / h_l.shape[0]).view(h_l.shape[1:]).expand_as(h_l)
                signals.append(g.view(h_l.shape).to(h_l.dtype))
        torch.autograd.backward([loss, *outs], [torch.ones_like(loss), *signals])
        return {"loss": loss.item()}
