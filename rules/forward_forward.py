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

    u_l    = norm(h_{l-1}).detach()      `norm: rms` (default) h / sqrt(mean(h^2) + eps) per sample (RMS 1,
                                         Hinton's code's ffnormrows) | `length` h / sqrt(sum(h^2) + eps)
                                         (unit length, the paper's text)
    h_l    = layers[l](u_l)               [B, ...]  (SpikingMLP: spikes [T, B, D], norm per time step)
    G_l    = mean_j pool(h_l)_j^2         goodness [B] (`goodness: sum` sums, the paper's; spiking: of the rates)
    loss_l = mean softplus(alpha (G_neg - G_pos))                          `loss: symba` (default)
           | mean softplus(-alpha (G_pos - θ_l)) + mean softplus(alpha (G_neg - θ_l))   `threshold`

`threshold` is the paper's loss: p(positive) = sigmoid(alpha (G - θ_l)) and its cross-entropy, θ_l =
`threshold` (x the layer's width with `threshold_per_unit`: Hinton's code compares the summed goodness with
the number of units). The paper preset (configs/rule/ff_paper.yaml: threshold loss, sum goodness, unit
length, alpha 1, hard negatives) reaches digits 0.95 and Fashion-10k ~0.82 at the default budgets.
`symba` (Lee & Song 2023) compares each positive with the negatives of the same image; it is the
default because it is ahead at the default budget (digits 0.969, Fashion-10k 0.845). RMS 1 keeps the
next layer's pre-activations O(1) whatever the width: unit length shrinks them by 1/sqrt(D), which the
threshold loss's θ must absorb. Only the direction passes upward; the layer below's goodness is removed.
Positives and negatives go through a layer as one batch [B (1 + k)].

Unsupervised FF (`unsupervised: true`, configs/rule/ff_unsupervised.yaml; Hinton 2022, Sec. 3.2): no label
enters the input. Positives are the images, negatives `n_negatives` hybrids of each (`hybrid_images`:
m x_i + (1 - m) x_j with x_j another image of the batch and m a mask of large blobs, a random bit image
blurred `mask_blurs` times with [1/4, 1/2, 1/4] along H and W and thresholded at 0.5). The layers learn to
tell real from hybrid; a rule-owned Linear readout on the normalised pooled activities of the layers
(`readout_layers`: all but the first with `skip_first`, as the paper) learns the classes by cross-entropy
on detached features, at `head_lr_scale` x the lr. Needs `inference: readout` and image data [C, H, W].

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
Fashion-10k MLP 0.844 (seeds 0-1; readout_only 0.786); ff_paper and ff_unsupervised: experiments/results/
variants1.md. SpikingMLP: digits 0.942 (readout_only 0.933),
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
NORMS = ("rms", "length")
BLUR = (0.25, 0.5, 0.25)                         # Hinton's mask filter, applied along H and along W


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


def layer_norm(h: Tensor, spiking: bool = False, kind: str = "rms", eps: float = 1e-6) -> Tensor:
    """A layer's input scaled per sample (per time step when spiking): `rms` = `rms_norm` (mean square 1 per
    unit, as Hinton's code's ffnormrows), `length` = h / sqrt(sum(h^2) + eps) (unit length, the paper's text)."""
    if kind == "rms":
        return rms_norm(h, spiking, eps)
    dims = tuple(range(2 if spiking else 1, h.dim()))
    return h / torch.sqrt(h.pow(2).sum(dim=dims, keepdim=True) + eps)


def blur_masks(n: int, height: int, width: int, blurs: int, generator: torch.Generator | None = None) -> Tensor:
    """[n, 1, H, W] masks of 0s and 1s with large blobs (Hinton 2022, unsupervised FF): a random bit image
    blurred `blurs` times with [1/4, 1/2, 1/4] along H and along W (edges replicated), then thresholded at 0.5."""
    m = torch.randint(0, 2, (n, 1, height, width), generator=generator).float()
    k = torch.tensor(BLUR)
    for _ in range(int(blurs)):
        m = F.conv2d(F.pad(m, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1))
        m = F.conv2d(F.pad(m, (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3))
    return (m > 0.5).float()


def hybrid_images(x: Tensor, k: int = 1, blurs: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Unsupervised FF's negatives: k hybrids per image of x [B, c, H, W], in repeat_interleave order
    ([B k, c, H, W]): m x_i + (1 - m) x_j, with m = blur_masks(...) (shared by the channels) and x_j another
    image of the batch (j = i + o mod B, o uniform in 1..B-1, so never x_i itself when B > 1)."""
    B = len(x)
    i = torch.arange(B).repeat_interleave(k)
    o = torch.randint(1, B, (B * k,), generator=generator) if B > 1 else torch.zeros(B * k, dtype=torch.long)
    m = blur_masks(B * k, x.shape[-2], x.shape[-1], blurs, generator).to(x)
    return m * x[i.to(x.device)] + (1 - m) * x[((i + o) % B).to(x.device)]


class ForwardForward(GreedyLayers, LearningRule):
    """Supervised Forward-Forward with label-in-input positives and wrong-label negatives."""

    name = "ff"
    supported_models = (MLP, ConvNet, SpikingMLP)

    def __init__(self, model, loss: str = "symba", alpha: float = 64.0, threshold: float = 1.0,
                 goodness: str = "mean", label_value: float = 0.045, label_relative: bool = True,
                 lr_scale: float = 3.0, n_negatives: int = 1, negatives: str = "random",
                 hard_temperature: float = 1.0, mode: str = "simultaneous", epochs_per_layer: int = 10,
                 inference: str = "goodness", skip_first: bool = False, head_lr_scale: float = 10.0,
                 label_embedding: str = "auto", pattern_value: float = 1.0, pattern_seed: int = 0,
                 norm: str = "rms", threshold_per_unit: bool = False, unsupervised: bool = False,
                 mask_blurs: int = 10):
        super().__init__(model)
        checks = (("label_embedding", label_embedding, EMBEDDINGS), ("loss", loss, LOSSES), ("mode", mode, MODES),
                  ("inference", inference, INFERENCE), ("goodness", goodness, GOODNESS),
                  ("negatives", negatives, NEGATIVES), ("norm", norm, NORMS))
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
        self.norm, self.unsupervised, self.mask_blurs = norm, bool(unsupervised), int(mask_blurs)
        dims = [int(d) for d in model.dims]
        self.thresholds = [self.threshold * (d if threshold_per_unit else 1) for d in dims]   # θ_l per layer
        self.readout = None
        if self.unsupervised:
            if inference != "readout":
                raise ConfigError("rule.unsupervised=true puts no label in the input, so goodness cannot score "
                                  "labels: set rule.inference=readout (a linear readout of the activities)")
            if len(model.in_shape) != 3 or self.mask_blurs < 0:
                raise ConfigError(f"rule.unsupervised=true mixes images with blurred masks: it needs image data "
                                  f"[C, H, W] (got {list(model.in_shape)}) and rule.mask_blurs >= 0")
            self.readout = torch.nn.Linear(sum(dims[i] for i in self.readout_layers()), self.n_classes)
        self.stage = 0 if mode == "layer_greedy" else len(model.layers) - 1   # highest layer being trained
        self._set_trainable()

    def readout_layers(self) -> range:
        """The layers the unsupervised readout reads: all but the first with skip_first (the paper), else all."""
        return range(1 if self.skip_first else 0, len(self.model.layers))

    # ----------------------------------------------------------------------------------------- setup
    def _set_trainable(self) -> None:
        for i, layer in enumerate(self.model.layers):
            on = i == self.stage if self.mode == "layer_greedy" else True
            for p in layer.parameters():
                p.requires_grad_(on)
        for p in self.model.head.parameters():
            p.requires_grad_(self.inference == "readout" and not self.unsupervised)

    def param_groups(self) -> list[dict]:
        heads = [self.model.head] + ([self.readout] if self.readout is not None else [])
        head = {id(p) for m in heads for p in m.parameters()}
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
        """Yield (l, u_l, h_l): the detached, normalised input of layer l and its output (unsupervised: no label
        in the input)."""
        spiking = self.model.spiking
        h = self.model.encode(x if self.unsupervised else self.embed(x, labels))
        for i, layer in enumerate(self.model.layers):
            u = layer_norm(h, spiking, self.norm).detach()
            h = layer(u)
            yield i, u, h

    def _readout_features(self, x: Tensor) -> Tensor:
        """[B, sum of the read layers' widths]: the normalised pooled activities of `readout_layers()`."""
        read = set(self.readout_layers())
        return torch.cat([layer_norm(self.model.pool(h), False, self.norm)
                          for i, _, h in self._layer_inputs(x, None) if i in read], 1)

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        B, k = len(x), self.n_negatives
        if self.unsupervised:                             # negatives: hybrids of two images; no labels
            xx, labels = torch.cat([x, hybrid_images(x, k, self.mask_blurs)]), None
        else:
            y_neg = self.negative_labels(x, y)            # [B, k]
            xx, labels = torch.cat([x, x.repeat_interleave(k, 0)]), torch.cat([y, y_neg.reshape(-1)])
        logs, total = {}, 0.0
        for i, _, h in self._layer_inputs(xx, labels):
            if i > self.stage:
                break
            if not any(p.requires_grad for p in self.model.layers[i].parameters()):
                continue                                  # layer_greedy: layers below the current one
            g = self.goodness(h)
            g_pos, g_neg = g[:B], g[B:]
            loss = self.layer_loss(g_pos, g_neg.view(B, k), self.thresholds[i])
            loss.backward()                               # inputs are detached: grads stay in layer i
            total += loss.item()
            logs[f"g_pos{i + 1}"], logs[f"g_neg{i + 1}"] = g_pos.mean().item(), g_neg.mean().item()
        logs["loss"] = total
        if self.inference == "readout":
            ce = F.cross_entropy(self._readout_logits(x), y)
            ce.backward()                                 # the features are computed without grad
            logs["readout_loss"] = ce.item()
        return logs

    def _readout_logits(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if self.unsupervised:
                feats = self._readout_features(x)
            else:
                *_, (_, _, h) = self._layer_inputs(x, None)
                feats = layer_norm(h, self.model.spiking, self.norm)
        return (self.readout if self.unsupervised else self.model.head)(feats)

    def layer_loss(self, g_pos: Tensor, g_neg: Tensor, theta: float | None = None) -> Tensor:
        """g_pos [B], g_neg [B, k] -> scalar. threshold: softplus(-a(G+ - θ)) + softplus(a(G- - θ)) (θ: this
        layer's threshold, default `threshold`); symba: softplus(a(G- - G+)) per (positive, negative) pair."""
        a, theta = self.alpha, self.threshold if theta is None else theta
        if self.loss_kind == "symba":
            return F.softplus(a * (g_neg - g_pos[:, None])).mean()
        return F.softplus(-a * (g_pos - theta)).mean() + F.softplus(a * (g_neg - theta)).mean()

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
            return self._readout_logits(x)
        return self.score(x)

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        """[B, C]: goodness summed over the scored layers, for every candidate label."""
        g = self.label_goodness(x)
        lo = 1 if self.skip_first and self.stage >= 1 else 0
        return g[..., lo:self.stage + 1].sum(-1)
