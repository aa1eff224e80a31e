"""Forward-Forward (Hinton 2022): every layer learns on its own to tell positive from negative data.

Label embedding (supervised FF). The one-hot label overwrites the first C features of the flattened
input image (for an image [B, c, H, W]: the first C pixels of channel 0's top row, as Hinton does on
MNIST), so the model and its input size stay as they are. The label's value is v = label_value *
||x||_1 per sample (`label_relative`, default: the label's share of the image's total intensity, so
one setting suits 8x8 digits and 28x28 Fashion alike; measured optima were v ~ 0.3 on digits and
v ~ 10 on Fashion), else v = label_value. Positives carry the true label y; negatives the same
image with a wrong label drawn uniformly among the C-1 other classes (`wrong_labels`: y + o mod C,
o a random offset in 1..C-1, so never the true label; `n_negatives` distinct ones per image).

Per layer l (h_0 = model.encode(x_embedded)), with inputs detached so no error crosses layers:

    u_l    = norm(h_{l-1}).detach()      norm(h) = h / sqrt(mean(h^2) + eps) per sample (RMS 1)
    h_l    = layers[l](u_l)               [B, ...]  (SpikingMLP: spikes [T, B, D], norm per time step)
    G_l    = mean_j pool(h_l)_j^2         goodness [B] (`goodness: sum` sums; spiking: of the rates)
    loss_l = mean softplus(alpha (G_neg - G_pos))                          `loss: symba` (default)
           | mean softplus(-alpha (G_pos - theta)) + mean softplus(alpha (G_neg - theta))   `threshold`

`threshold` is the paper's loss: p(positive) = sigmoid(alpha (G - theta)) and its cross-entropy.
`symba` (Lee & Song 2023) compares each positive with the negatives of the same image; it is the
default because it reaches the accuracy bars within the default budget where the threshold loss
does not (digits 0.93-0.96 and Fashion-10k 0.81-0.83 with the threshold loss at its best settings
for each, never both; see configs/rule/ff.yaml). RMS 1 (not the paper's unit length h/||h||) keeps
the next layer's pre-activations O(1) whatever the width: unit length shrinks them by 1/sqrt(D) and
the layer barely trains. Only the direction passes upward; the layer below's goodness is removed.
Positives and negatives go through a layer as one batch [B (1 + k)].

Schedules (`mode`): `simultaneous` (default) trains all layers every step; `layer_greedy` trains
layer 1 for `epochs_per_layer` epochs, then layer 2, ... (`on_epoch_end` moves on and returns True so
the trainer rebuilds its optimizer; the last layer keeps training after its turn).

Inference (`predict` -> logits [B, C]):
- `goodness` (default): logits[:, c] = sum over layers of G_l(x with label c); C forward passes.
  `skip_first` leaves layer 1 out (the paper, with 4 hidden layers). layer_greedy scores only the
  layers trained so far. The model's head is frozen and unused.
- `readout`: one pass with the neutral label (every label entry v / C), then `model.head` on
  norm(h_L). The head is trained alongside by cross-entropy on that detached norm(h_L) (a one-layer
  delta rule at `head_lr_scale` x the lr; no error enters the layers). One pass instead of C.

Negatives (`negatives`): `random` (default, uniform as above) or `hard`: wrong classes drawn with
probability softmax(alpha * score / hard_temperature) over the wrong classes, score the summed
goodness (Hinton's hard negatives; C extra no-grad passes per batch).

Measured with configs/rule/ff.yaml: digits MLP 0.969 (seeds 0-2, CLI defaults; readout_only 0.920),
Fashion-10k MLP 0.844 (seeds 0-1; readout_only 0.786). SpikingMLP: digits 0.942 (readout_only 0.933),
Fashion subset 4k/2k 0.812 (readout_only 0.667); its layers see RMS-scaled, hence non-binary, spikes.

Conv models (`label_embedding: pattern`, the default for ConvNet via `auto`): the label in the first
pixels reaches only the top-left receptive fields of a 3x3 conv stack (FF scored 0.35 on a Fashion
subset against readout_only's 0.87), so there the label is spread over the whole image instead, as in
the "spatially-extended labeling" of Scodellaro et al. (2023): x + v P_y with P_c [c, H, W] a fixed
random +-1 pattern per class (seeded, a buffer) and v = pattern_value * rms(x) per sample; the
neutral label adds the mean pattern. Every conv receptive field then sees image and label together.

Supports MLP, ConvNet and SpikingMLP (SpikingConvNet is refused: untested here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.errors import ConfigError
from bioplaus.models import MLP, ConvNet, SpikingMLP
from bioplaus.rules.base import GreedyLayers, LearningRule, check_choice, check_positive

MODES = ("simultaneous", "layer_greedy")
INFERENCE = ("goodness", "readout")
GOODNESS = ("mean", "sum")
NEGATIVES = ("random", "hard")
LOSSES = ("symba", "threshold")
EMBEDDINGS = ("auto", "corner", "pattern")


def wrong_labels(y: Tensor, n_classes: int, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """k distinct wrong labels [B, k] for every entry of y [B], uniform over the n_classes-1 other classes.

    y + o mod C with the offsets o the first k of a random permutation of {1, ..., C-1}: never y itself
    (unlike a permutation of the batch's labels or a uniform draw over all C classes), every other class
    with probability k/(C-1), no class twice for one sample."""
    if n_classes < 2:
        raise ConfigError(f"Forward-Forward needs at least 2 classes for negative labels, got {n_classes}")
    if not 1 <= k <= n_classes - 1:
        raise ConfigError(f"rule.n_negatives must be in 1..{n_classes - 1} (the wrong classes), got {k}")
    offsets = torch.rand(len(y), n_classes - 1, generator=generator).argsort(1)[:, :k] + 1
    return (y[:, None] + offsets.to(y.device)) % n_classes


def rms_norm(h: Tensor, spiking: bool = False, eps: float = 1e-6) -> Tensor:
    """h / sqrt(mean(h^2) + eps) over every axis but the batch (static [B, ...]) or but time and
    batch (spiking [T, B, ...]): each sample's layer input gets RMS 1."""
    lead = 2 if spiking else 1
    dims = tuple(range(lead, h.dim()))
    return h / torch.sqrt(h.pow(2).mean(dim=dims, keepdim=True) + eps)


class ForwardForward(GreedyLayers, LearningRule):
    """Supervised Forward-Forward with label-in-input positives and wrong-label negatives."""

    name = "ff"
    supported_models = (MLP, ConvNet, SpikingMLP)

    def __init__(self, model, loss: str = "symba", alpha: float = 64.0, threshold: float = 1.0,
                 goodness: str = "mean", label_value: float = 0.045, label_relative: bool = True,
                 lr_scale: float = 3.0, n_negatives: int = 1, negatives: str = "random",
                 hard_temperature: float = 1.0, mode: str = "simultaneous", epochs_per_layer: int = 10,
                 inference: str = "goodness", skip_first: bool = False, head_lr_scale: float = 10.0,
                 label_embedding: str = "auto", pattern_value: float = 1.0, pattern_seed: int = 0):
        super().__init__(model)
        checks = (("label_embedding", label_embedding, EMBEDDINGS), ("loss", loss, LOSSES), ("mode", mode, MODES),
                  ("inference", inference, INFERENCE), ("goodness", goodness, GOODNESS),
                  ("negatives", negatives, NEGATIVES))
        for key, value, allowed in checks:
            check_choice(key, value, allowed, "ff")
        if alpha <= 0:
            raise ConfigError(f"rule.alpha must be > 0 (the logistic loss's sharpness), got {alpha}")
        if label_value <= 0 or n_negatives != int(n_negatives):
            raise ConfigError(f"rule.label_value must be > 0 and rule.n_negatives an integer, got {label_value}, "
                              f"{n_negatives}")
        if int(epochs_per_layer) < 1:
            raise ConfigError(f"rule.epochs_per_layer must be >= 1, got {epochs_per_layer}")
        if skip_first and len(model.layers) < 2:
            raise ConfigError("rule.skip_first=true needs at least 2 layers: the model has 1; set skip_first=false")
        self.threshold, self.alpha, self.goodness_kind = float(threshold), float(alpha), goodness
        self.mode, self.epochs_per_layer, self.inference = mode, int(epochs_per_layer), inference
        self.skip_first, self.label_value = bool(skip_first), float(label_value)
        self.label_relative = bool(label_relative)
        self.lr_scale, self.head_lr_scale = check_positive("lr_scale", lr_scale), check_positive("head_lr_scale",
                                                                                                head_lr_scale)
        self.negatives, self.hard_temperature = negatives, float(hard_temperature)
        self.n_negatives = int(n_negatives)
        self.n_classes = int(model.n_classes)
        self.loss_kind = loss
        wrong_labels(torch.zeros(1, dtype=torch.long), self.n_classes, self.n_negatives)   # validates k
        if label_embedding == "auto":
            label_embedding = "pattern" if isinstance(model, ConvNet) else "corner"
        self.label_embedding, self.pattern_value = label_embedding, float(pattern_value)
        if label_embedding == "pattern":
            if pattern_value <= 0:
                raise ConfigError(f"rule.pattern_value must be > 0, got {pattern_value}")
            shape = model.in_shape
            gen = torch.Generator().manual_seed(int(pattern_seed))
            pattern = torch.randint(0, 2, (self.n_classes, *shape), generator=gen).float() * 2 - 1
            self.register_buffer("patterns", pattern)     # [C, *in_shape], +-1
        self.stage = 0 if mode == "layer_greedy" else len(model.layers) - 1   # highest layer being trained
        self._set_trainable()

    # ----------------------------------------------------------------------------------------- setup
    def _set_trainable(self) -> None:
        for i, layer in enumerate(self.model.layers):
            on = i == self.stage if self.mode == "layer_greedy" else True
            for p in layer.parameters():
                p.requires_grad_(on)
        for p in self.model.head.parameters():
            p.requires_grad_(self.inference == "readout")

    def param_groups(self) -> list[dict]:
        head = {id(p) for p in self.model.head.parameters()}
        own = self.trainable_parameters()
        groups = [self.group([p for p in own if id(p) not in head], self.lr_scale)]
        if self.inference == "readout":
            groups.append(self.group([p for p in own if id(p) in head], self.head_lr_scale))
        return [g for g in groups if g["params"]]

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """layer_greedy: after every `epochs_per_layer` epochs move to the next layer (True = rebuild)."""
        return self.advance_stage(epoch, self.mode == "layer_greedy", self.epochs_per_layer)

    # ------------------------------------------------------------------------------------- mechanics
    def embed(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """x [B, ...] with its first C flattened features replaced by v * onehot(labels) ([B]), or by the
        neutral label v / C everywhere when labels is None. v = label_value * ||x||_1 per sample when
        label_relative (the label's share of the image's total intensity), else label_value."""
        if self.label_embedding == "pattern":
            v = self.pattern_value * x.flatten(1).pow(2).mean(1).sqrt().view(-1, *[1] * (x.dim() - 1))
            p = self.patterns.mean(0, keepdim=True) if labels is None else self.patterns[labels]
            return x + v * p
        flat = x.flatten(1).clone()
        C = self.n_classes
        if flat.shape[1] < C:
            raise ConfigError(f"ff embeds the label in the first {C} input features, but the input has only "
                              f"{flat.shape[1]}; use data with at least n_classes features per sample")
        v = self.label_value * (flat.abs().sum(1, keepdim=True) if self.label_relative else 1.0)
        if labels is None:
            flat[:, :C] = v / C
        else:
            flat[:, :C] = v * F.one_hot(labels, C).to(flat.dtype)
        return flat.view_as(x)

    def goodness(self, h: Tensor) -> Tensor:
        """G [B] = mean (or sum) of the squared pooled activity (spiking: of the rates)."""
        g = self.model.pool(h).pow(2)
        return g.mean(1) if self.goodness_kind == "mean" else g.sum(1)

    def _layer_inputs(self, x: Tensor, labels: Tensor | None):
        """Yield (l, u_l, h_l): the detached, normalised input of layer l and its output."""
        spiking = self.model.spiking
        h = self.model.encode(self.embed(x, labels))
        for i, layer in enumerate(self.model.layers):
            u = rms_norm(h, spiking).detach()
            h = layer(u)
            yield i, u, h

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        B = len(x)
        y_neg = self.negative_labels(x, y)                # [B, k]
        xx = torch.cat([x, x.repeat_interleave(self.n_negatives, 0)])
        labels = torch.cat([y, y_neg.reshape(-1)])
        logs, total = {}, 0.0
        for i, _, h in self._layer_inputs(xx, labels):
            if i > self.stage:
                break
            if not any(p.requires_grad for p in self.model.layers[i].parameters()):
                continue                                  # layer_greedy: layers below the current one
            g = self.goodness(h)
            g_pos, g_neg = g[:B], g[B:]
            loss = self.layer_loss(g_pos, g_neg.view(B, self.n_negatives))
            loss.backward()                               # inputs are detached: grads stay in layer i
            total += loss.item()
            logs[f"g_pos{i + 1}"], logs[f"g_neg{i + 1}"] = g_pos.mean().item(), g_neg.mean().item()
        logs["loss"] = total
        if self.inference == "readout":
            with torch.no_grad():
                *_, (_, _, h) = self._layer_inputs(x, None)
            ce = F.cross_entropy(self.model.head(rms_norm(h, self.model.spiking)), y)
            ce.backward()
            logs["readout_loss"] = ce.item()
        return logs

    def layer_loss(self, g_pos: Tensor, g_neg: Tensor) -> Tensor:
        """g_pos [B], g_neg [B, k] -> scalar. threshold: softplus(-a(G+ - theta)) + softplus(a(G- - theta));
        symba: softplus(a(G- - G+)) for each (positive, negative) pair of the same image."""
        a = self.alpha
        if self.loss_kind == "symba":
            return F.softplus(a * (g_neg - g_pos[:, None])).mean()
        return F.softplus(-a * (g_pos - self.threshold)).mean() + F.softplus(a * (g_neg - self.threshold)).mean()

    @torch.no_grad()
    def negative_labels(self, x: Tensor, y: Tensor) -> Tensor:
        """[B, k] wrong labels. random: uniform over the wrong classes. hard: drawn without replacement
        with probability softmax(alpha * score / hard_temperature) over the wrong classes."""
        if self.negatives == "random":
            return wrong_labels(y, self.n_classes, self.n_negatives)
        score = self.score(x) * (self.alpha / self.hard_temperature)
        prob = torch.softmax(score, 1).clamp_min(1e-12)     # every wrong class stays drawable
        prob[torch.arange(len(y)), y] = 0.0
        return torch.multinomial(prob, self.n_negatives)

    @torch.no_grad()
    def label_goodness(self, x: Tensor) -> Tensor:
        """[B, C, L]: goodness of every layer for x embedded with every candidate label."""
        B, C = len(x), self.n_classes
        xx = x.repeat_interleave(C, 0)
        labels = torch.arange(C, device=x.device).repeat(B)
        gs = [self.goodness(h).view(B, C) for _, _, h in self._layer_inputs(xx, labels)]
        return torch.stack(gs, -1)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Logits [B, C]: summed goodness per candidate label, or the head's readout (`inference`)."""
        if self.inference == "readout":
            *_, (_, _, h) = self._layer_inputs(x, None)
            return self.model.head(rms_norm(h, self.model.spiking))
        return self.score(x)

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        """[B, C]: goodness summed over the scored layers, for every candidate label."""
        g = self.label_goodness(x)
        lo = 1 if self.skip_first and self.stage >= 1 else 0
        return g[..., lo:self.stage + 1].sum(-1)
