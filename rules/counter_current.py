"""Counter-Current Learning (CCL; Kao & Hariharan, NeurIPS 2024): a mirrored feedback net pulls every layer.

Two networks run in opposite directions. The forward net F is the model: a_l = f_l(a_{l-1}), a_0 = x,
logits = head(a_L). The feedback net G is owned by this rule, so `state_dict` checkpoints it. It starts
from the targets and runs top-down, c_{l-1} = g_l(c_l), with c_l shaped like a_l. Every layer's input
is detached in both nets. The loss on the pair (a_l, c_l) therefore reaches only the forward layer f_l
that made a_l and the feedback layer g_{l+1} that made c_l. No gradient crosses a layer in either net,
and one `backward()` on the summed losses fills every gradient.

task=classify: the official class-prototype loss, with the `T10` feedback input. G is fed all C
one-hot class vectors at once, so at every depth it gives C class prototypes C_l [C, D_l]. The
forward activity A_l [B, D_l] is the layer output, pooled (flattened; spiking: time-averaged first).
Y = onehot(y) [B, C], and ^ marks row-L2-normalised rows:

    normalize=feedback:             L_l = scale_c * MSE(A_l C^_l^T, Y)
    normalize=both (official CNN):  L_l = scale_c * MSE(A^_l C^_l^T, Y)
    normalize=none (official MLP):  L_l = scale_c * 256 / D_l * MSE(A_l C_l^T, Y)
    normalize=auto (default):       both for ConvNet, feedback otherwise
    normalize=official:             what the official code does per model: both for ConvNet, none otherwise
    scale_ssl > 0 adds scale_ssl * [MSE(C^ C^T, I_C) (+ MSE(A^ A^T, I_B) with normalize=both)]

The sum runs over l = 0..L. At l = 0 the pair is (x, c_0), which trains only the bottom feedback map.
Cross-entropy on head(a_L.detach()) trains the head. With filter_target > 0, a sample whose softmax
probability for its class is already within filter_target of 1 is dropped from the pair losses.
The official settings per model (`OFFICIAL`, from IandRover/CCL-NeurIPS24: yaml/mlp/*_ccl.yaml,
yaml/cnn/cifar10_ccl.yaml, utils/loss.py) fill scale_ssl, filter_target and grad_centralization when they are
null (configs/rule/ccl_paper.yaml): MLP 0 / 0 / off, ConvNet 0.5 / 0.2 / on. grad_centralization subtracts from
each weight gradient its mean over the output unit's inputs (the official `gradient_centralization`, on the
gradients this rule writes). The official code steps the two nets with two SGD optimisers at lr 1, each clipped to
its own norm: here the trainer's one optimizer sees two groups (forward, feedback; `param_groups`) and
trainer.grad_clip_groups clips each on its own (configs/trainer/ccl_paper.yaml).
Row normalisation matters. The scale of A C^T is shared between the two nets and drifts, and
normalising the prototypes pins it. Without it (normalize=none), the spiking MLP ends below the
readout_only control on digits (0.908 against 0.933; 0.950 with feedback). MLP on Fashion-10k: feedback
0.864, none 0.856, both 0.834. For the ConvNet, whose BatchNorm already sets the activity scale, both is
better: 0.857 against 0.799 with feedback (Fashion 4k subset, 8 epochs). The ssl term wants
A^ A^T = I, which non-negative (ReLU) activity cannot reach, and there it costs accuracy (digits MLP:
0.76 at scale_ssl 0.5). Inference runs the forward net alone.

task=autoencode: the official convolutional autoencoder. F is the model's layers followed by a mirrored
decoder that the rule owns: a_{L+k} is shaped like a_{L-k}, and a_{2L} = x_hat has no activation.
G mirrors all 2L maps. It is fed the input itself at the top (c_{2L} = x) and runs down to an
input-shaped c_0 (no activation), so both nets reconstruct. The loss is L_k = MSE(a_k, c_k) for
k = 0..2L. As in the official code, every map the rule owns normalises its units over the batch
(BatchNorm without affine) before its activation; without that, the pairs collapse to a constant.
The decoder's forward weights and the encoder's feedback weights start scaled by ae_init_scale
(official value: 0.001). The head is trained by cross-entropy on the detached code a_L, a linear
probe, so `predict` still returns logits. `reconstruct(x)` returns x_hat [B, *in_shape].

Feedback maps have no bias and use `feedback_activation`, except into depth 0. MLP layers and the head
are mirrored by Linear maps. ConvNet blocks are mirrored by nearest-upsampling to the paired
activity's size, then a 3x3 conv (the official CNN mirror). Supported models: MLP, ConvNet, and
SpikingMLP (classify only). For the spiking MLP the spike rates are paired, and the surrogate
gradient runs through each layer's own time steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import MLP, ConvNet, SpikingMLP
from bioplaus.rules.base import LearningRule, check_choice

TASKS = ("classify", "autoencode")
NORMALIZE = ("auto", "feedback", "both", "none", "official")
OFFICIAL = {   # per model: normalize, scale_ssl, filter_target, grad_centralization (the official yaml / loss code)
    "mlp": ("none", 0.0, 0.0, False),        # yaml/mlp/*_ccl.yaml: C2Loss_Classification, filter_target 0., GradC 0
    "convnet": ("both", 0.5, 0.2, True),     # yaml/cnn/cifar10_ccl.yaml: loss_scale_ssl 0.5, filter_target 0.2, GradC 1
}
ACTIVATIONS = {"elu": F.elu, "relu": F.relu, "tanh": torch.tanh, "identity": lambda z: z}


class _Map(nn.Module):
    """One step between two depths: [N, *s_in] -> [N, *s_out], with s_out given at call time.

    dense: flatten, Linear, [BatchNorm], act, reshape.
    up:    nearest-upsample to s_out, conv3x3, [BatchNorm], act.
    down:  conv3x3, [BatchNorm], act, 2x2 max-pool (the mirror of an up map).
    The BatchNorm has no affine part and is used only when norm=True and the map has an activation."""

    def __init__(self, kind: str, n_in: int, n_out: int, act: str, norm: bool = False):
        super().__init__()
        self.kind, self.act = kind, ACTIVATIONS[act]
        dense = kind == "dense"
        self.op = nn.Linear(n_in, n_out, bias=False) if dense else nn.Conv2d(n_in, n_out, 3, padding=1, bias=False)
        use_norm = norm and act != "identity"
        self.norm = (nn.BatchNorm1d if dense else nn.BatchNorm2d)(n_out, affine=False) if use_norm else nn.Identity()

    def forward(self, h: Tensor, shape: tuple[int, ...]) -> Tensor:
        if self.kind == "dense":
            return self.act(self.norm(self.op(h.flatten(1)))).view(-1, *shape)
        if self.kind == "up":
            return self.act(self.norm(self.op(F.interpolate(h, size=tuple(shape[-2:]), mode="nearest"))))
        out = F.max_pool2d(self.act(self.norm(self.op(h))), 2)
        return out if tuple(out.shape[-2:]) == tuple(shape[-2:]) else F.adaptive_max_pool2d(out, shape[-2:])


def _widths(model) -> tuple[str, list[int]]:
    """Map kind for model.layers ("dense" or "up"), and the channels or widths at depths 0..L."""
    if isinstance(model, ConvNet):
        return "up", [model.layers[0].conv.in_channels] + [b.conv.out_channels for b in model.layers]
    return "dense", [model.layers[0].linear.in_features] + [int(d) for d in model.dims]


class CounterCurrent(LearningRule):
    """CCL: the forward layers and a rule-owned mirrored feedback net pull each other's activity together."""

    name = "ccl"
    supported_models = (MLP, ConvNet, SpikingMLP)

    def __init__(self, model, task: str = "classify", normalize: str = "auto", scale_c: float = 1.0,
                 scale_ssl: float | None = 0.0, filter_target: float | None = 0.0, feedback_activation: str = "elu",
                 feedback_lr_scale: float = 1.0, ae_init_scale: float = 0.001,
                 grad_centralization: bool | None = False):
        super().__init__(model)
        for key, value, allowed in (("task", task, TASKS), ("normalize", normalize, NORMALIZE),
                                    ("feedback_activation", feedback_activation, ACTIVATIONS)):
            check_choice(key, value, allowed)
        official = OFFICIAL["convnet" if isinstance(model, ConvNet) else "mlp"]
        if normalize == "official":
            normalize = official[0]
        scale_ssl = official[1] if scale_ssl is None else scale_ssl
        filter_target = official[2] if filter_target is None else filter_target
        self.grad_centralization = official[3] if grad_centralization is None else bool(grad_centralization)
        if not 0.0 <= float(filter_target) < 1.0:
            raise ConfigError(f"rule.filter_target must be in [0, 1) (0 = off), got {filter_target}")
        if min(float(scale_c), float(scale_ssl), float(feedback_lr_scale), float(ae_init_scale)) < 0:
            raise ConfigError("rule.scale_c, scale_ssl, feedback_lr_scale and ae_init_scale must be >= 0")
        if task == "autoencode" and model.spiking:
            raise ConfigError(f"rule.task=autoencode supports mlp and convnet, not {model.name}; "
                              "use rule.task=classify, or model=mlp / model=convnet")
        if normalize == "auto":
            normalize = "both" if isinstance(model, ConvNet) else "feedback"
        self.task, self.normalize = task, normalize
        self.scale_c, self.scale_ssl, self.filter_target = float(scale_c), float(scale_ssl), float(filter_target)
        self.feedback_lr_scale = float(feedback_lr_scale)
        up, w = _widths(model)
        L, fb, ae = len(model.layers), feedback_activation, task == "autoencode"
        # feedback[d] maps depth d+1 -> depth d (depth 0 = the input: no activation into it)
        maps = [_Map(up, w[d + 1], w[d], fb if d else "identity", ae) for d in range(L)]
        self.decoder = nn.ModuleList()
        if not ae:
            maps.append(_Map("dense", int(model.n_classes), int(model.dims[-1]), fb))   # the head's mirror
        else:
            down = "dense" if up == "dense" else "down"
            # decoder[k] maps depth L+k (shaped like depth L-k) -> L+k+1; feedback[L+k] mirrors it
            self.decoder.extend(_Map(up, w[L - k], w[L - k - 1], fb if k < L - 1 else "identity", True)
                                for k in range(L))
            maps += [_Map(down, w[L - k - 1], w[L - k], fb, True) for k in range(L)]
            with torch.no_grad():
                for m in [*self.decoder, *maps[:L]]:
                    m.op.weight.mul_(float(ae_init_scale))
        self.feedback = nn.ModuleList(maps)

    def param_groups(self) -> list[dict]:
        fwd = [p for p in self.model.parameters() if p.requires_grad] + list(self.decoder.parameters())
        return [self.group(fwd), self.group(self.feedback.parameters(), self.feedback_lr_scale)]

    # ---- the two nets -------------------------------------------------------------------------------
    def _rate(self, h: Tensor) -> Tensor:
        """The activity paired with the feedback net, [B, *shape] (spiking: spikes averaged over time)."""
        return h.mean(0) if self.model.spiking else h

    def _forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Forward net with every layer's input detached: ([a_0, .., a_L (, .., a_2L)], h_L)."""
        h = self.model.encode(x)
        acts = [self._rate(h)]
        for layer in self.model.layers:
            h = layer(h.detach())
            acts.append(self._rate(h))
        L = len(self.model.layers)
        for k, m in enumerate(self.decoder):                                   # autoencode only
            acts.append(m(acts[-1].detach(), acts[L - k - 1].shape[1:]))
        return acts, h

    def _feedback(self, top: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
        """Feedback net fed `top`, every map's input detached: [c_0, ..., c_top], with c_top = top."""
        sig = [top]
        for d in reversed(range(len(self.feedback))):
            sig.insert(0, self.feedback[d](sig[0].detach(), shapes[d]))
        return sig

    # ---- losses -------------------------------------------------------------------------------------
    def _prototype_loss(self, a: Tensor, c: Tensor, y: Tensor, keep: Tensor | None) -> Tensor:
        """Loss at one depth: a [B, ...] forward activity, c [C, ...] class prototypes, y [B]."""
        a, c = a.flatten(1), c.flatten(1)
        if keep is not None:
            a = a * keep[:, None]
        target = F.one_hot(y, c.shape[0]).to(a.dtype)
        if self.normalize == "none":
            return self.scale_c * 256.0 / a.shape[1] * F.mse_loss(a @ c.T, target)
        c = F.normalize(c, dim=1, eps=1e-8)
        ssl = [c @ c.T]
        if self.normalize == "both":
            a = F.normalize(a, dim=1, eps=1e-8)
            ssl.append(a @ a.T)
        loss = self.scale_c * F.mse_loss(a @ c.T, target)
        if self.scale_ssl:
            loss = loss + self.scale_ssl * sum(F.mse_loss(g, torch.eye(len(g), device=g.device, dtype=g.dtype))
                                               for g in ssl)
        return loss

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        acts, code = self._forward(x)
        logits = self.model.head(code.detach())
        ce = F.cross_entropy(logits, y)
        shapes = [a.shape[1:] for a in acts]
        if self.task == "classify":
            onehots = torch.eye(self.model.n_classes, device=x.device, dtype=x.dtype)   # the `T10` input
            sig = self._feedback(onehots, shapes)[:-1]
            keep = None
            if self.filter_target:
                with torch.no_grad():
                    p_true = logits.softmax(-1).gather(1, y[:, None])[:, 0]
                    keep = (p_true < 1.0 - self.filter_target).to(x.dtype)
            pairs = [self._prototype_loss(a, c, y, keep) for a, c in zip(acts, sig)]
        else:
            sig = self._feedback(acts[0].detach(), shapes[:-1])
            pairs = [F.mse_loss(a, c) for a, c in zip(acts, sig)]
        total = sum(pairs) + ce
        total.backward()
        if self.grad_centralization:
            self._centralize()
        logs = {"loss": total.item(), "ce": ce.item(), "feedback_loss": sum(p.item() for p in pairs),
                "input_loss": pairs[0].item()}
        if self.task == "autoencode":
            logs["recon_loss"] = pairs[-1].item()
        return logs

    @torch.no_grad()
    def _centralize(self) -> None:
        """Every weight gradient (dense [out, in], conv [out, in, kh, kw]) minus its mean over each output unit's
        inputs; biases untouched (the official gradient_centralization)."""
        for p in self.trainable_parameters():
            if p.grad is not None and p.dim() in (2, 4):
                p.grad -= p.grad.mean(dim=tuple(range(1, p.dim())), keepdim=True)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """task=autoencode only: the forward net's reconstruction x_hat [B, *x.shape[1:]]."""
        if self.task != "autoencode":
            raise ConfigError("reconstruct() needs rule.task=autoencode")
        return self._forward(x)[0][-1].reshape(x.shape)
