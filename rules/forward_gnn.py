"""ForwardGNN (Park et al., ICLR 2024): forward-only, layer-wise training of graph neural networks.

Node-major graphs: features [V, F], edge_index [2, E] (bioplaus.data.graphs); the model is a GCN or GraphSAGE
(bioplaus.models.graph) holding the graph; x is a batch of node ids [B], y their labels [B]. The rule
remembers the labels of the training nodes it has been given (`known` [V], -1 = unknown): only those
nodes are ever labelled in the graph (test nodes never are).

Every layer learns from its own loss on its own, L2-normalised and detached input:

    u_l = norm(h_{l-1}).detach()     norm(h)_v = h_v / (||h_v||_2 + 1e-8) per node (row), h_0 = input features
    h_l = layers[l](u_l, E)          [V', d_l] over the (augmented) graph;  loss_l.backward() at once

so no error crosses layers, and (schedule `simultaneous`) each layer's autograd graph is freed before the
next layer's forward: the activations kept for backward are one layer's, whatever the depth. `sequential`
trains layer 1 alone for `epochs_per_layer` epochs, then layer 2 (layers below run without grad), ... (the
paper's greedy schedule, without its early stopping); the last layer keeps training after its turn.

Variants (`variant`):
- `sf` (single forward, the paper's best): C virtual class nodes join the graph (V' = V + C) with features
  from an `nn.Embedding(C, F)` (`class_embedding`: learned with layer 1's loss, or fixed random as in the
  authors' code); every known training node v is linked to the node of its class, y_v: both ways
  (`class_edges: both`, the paper's setting) or only v -> class node (`to_class`, the authors' `unidirection`).
      loss_l = CE(softmax(h_l[v] . h_l[c]^T / tau), y_v)  over the batch nodes v, the C class nodes c
  Inference: p(c | v) = mean over layers l of softmax(h_l[v] . h_l[c]^T / tau); logits = log p.
  With `both`, a training node also receives its class node's message, a hint of its own label that test
  nodes never get; `to_class` removes it (data=sbm: 0.904 / 0.880 on the graphs of seeds 0 / 1, against
  0.886 / 0.848 with `both`).
- `ff_la` (Forward-Forward, label appending): the L2-normalised node features get C label columns: one-hot
  y for known nodes, uniform 1/C for the others (the model's first layer is widened to F + C inputs; the
  authors append to the raw features, which drowns the label when ||x_v|| >> 1). Negatives: the
  batch nodes carry a wrong label instead (n_negatives of them, default all C - 1; one stream each).
      G_l(v) = sum_j h_l[v, j]^2,  loss_l = BCE-with-logits(G_pos - theta, 1) + mean_k BCE(G_neg_k - theta, 0)
  Each stream (positive, every negative) goes up the layers on its own. Inference: C passes, the
  requested nodes labelled c in pass c; logits[:, c] = sum_l (G_l - theta).
- `ff_vn` (Forward-Forward, virtual nodes): the graph with class nodes as in `sf`, the same goodness loss;
  the positive graph links the known nodes to their class node, each negative graph the batch nodes to a
  wrong one (the layer input is the positive graph's, as in the authors' code). Inference: C passes, the
  requested nodes linked to class node c in pass c; logits[:, c] = sum_l (G_l - theta).

The layers learn at `lr_scale` x the trainer's lr (default 1 for sf; 10 for the FF variants, whose goodness
needs the weights to grow: on data=sbm they reach 0.45-0.48 at 1x and 0.79-0.81 at 10x in 200 epochs).
The model's head is frozen and unused (inference is the rule's own).

GCN normalisation applies on the augmented graph as it is (a class node's degree is its class's training
count + 1). `train_acc` of `sf` is optimistic: the training nodes keep their class links when predicted.
Supports GCN and GraphSAGE; other models are refused. Backprop on the same models: rules/backprop.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import GCN, GraphSAGE
from bioplaus.rules.base import GreedyLayers, LearningRule, check_choice, check_positive
from bioplaus.rules.forward_forward import wrong_labels

VARIANTS = ("sf", "ff_la", "ff_vn")
SCHEDULES = ("simultaneous", "sequential")
EMBEDDINGS = ("learned", "fixed")
CLASS_EDGES = ("both", "to_class")
LR_SCALE = {"sf": 1.0, "ff_la": 10.0, "ff_vn": 10.0}      # lr_scale: null -> these (measured on data=sbm)


def l2_normalise(h: Tensor, eps: float = 1e-8) -> Tensor:
    """Each node's feature row scaled to unit L2 norm: h [V, d] -> [V, d]."""
    return h / (h.norm(dim=1, keepdim=True) + eps)


class ForwardGNN(GreedyLayers, LearningRule):
    """ForwardGNN-SF / FF-LA / FF-VN: every GNN layer trained by its own forward-only loss."""

    name = "forward_gnn"
    supported_models = (GCN, GraphSAGE)

    def __init__(self, model, variant: str = "sf", schedule: str = "simultaneous", epochs_per_layer: int = 50,
                 temperature: float = 1.0, theta: float = 2.0, n_negatives: int | None = None,
                 class_embedding: str = "learned", embedding_seed: int = 0, lr_scale: float | None = None,
                 class_edges: str = "both"):
        super().__init__(model)
        for key, value, allowed in (("variant", variant, VARIANTS), ("schedule", schedule, SCHEDULES),
                                    ("class_embedding", class_embedding, EMBEDDINGS),
                                    ("class_edges", class_edges, CLASS_EDGES)):
            check_choice(key, value, allowed, "forward_gnn")
        if temperature <= 0 or int(epochs_per_layer) < 1:
            raise ConfigError(f"rule.temperature must be > 0 and rule.epochs_per_layer >= 1, got {temperature}, "
                              f"{epochs_per_layer}")
        V, C = model.num_nodes, model.n_classes
        self.variant, self.schedule, self.epochs_per_layer = variant, schedule, int(epochs_per_layer)
        self.name = f"forward_gnn_{variant}"                  # one row per variant in comparison tables
        self.tau, self.theta = float(temperature), float(theta)
        self.lr_scale = check_positive("lr_scale", LR_SCALE[variant] if lr_scale is None else lr_scale)
        self.n_classes, self.V = C, V
        self.n_negatives = C - 1 if n_negatives is None else int(n_negatives)
        wrong_labels(torch.zeros(1, dtype=torch.long), C, self.n_negatives)          # validates 1..C-1
        self.register_buffer("known", torch.full((V,), -1, dtype=torch.long))     # labels of training nodes seen
        self.class_embedding, self.class_edges = class_embedding, class_edges
        self.class_nodes: nn.Embedding | None = None         # virtual class nodes (sf, ff_vn)
        if variant in ("sf", "ff_vn"):
            gen = torch.Generator().manual_seed(int(embedding_seed))
            self.class_nodes = nn.Embedding(C, model.n_features)
            with torch.no_grad():
                self.class_nodes.weight.copy_(torch.randn(C, model.n_features, generator=gen))
        if variant == "ff_la":
            model.widen_input(C, 1.0 / C)                # label columns; model(node_ids) sees the uniform label
        self.stage = 0 if schedule == "sequential" else len(model.layers) - 1    # highest layer trained now
        self._set_trainable()

    # ----------------------------------------------------------------------------------------- setup
    def _set_trainable(self) -> None:
        for i, layer in enumerate(self.model.layers):
            layer.requires_grad_(i == self.stage if self.schedule == "sequential" else True)
        self.model.head.requires_grad_(False)                    # unused: inference is the rule's own
        if self.class_nodes is not None:
            self.class_nodes.requires_grad_(self.class_embedding == "learned" and self._trains(0))

    def _trains(self, i: int) -> bool:
        return any(p.requires_grad for p in self.model.layers[i].parameters())

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """sequential: after every `epochs_per_layer` epochs move to the next layer (True = rebuild)."""
        return self.advance_stage(epoch, self.schedule == "sequential", self.epochs_per_layer)

    # ------------------------------------------------------------------------------------ the graph
    def node_input(self) -> Tensor:
        """h_0: the model's node features [V, F]; with class nodes (sf, ff_vn) [V + C, F]."""
        x = self.model.encode()
        return x if self.class_nodes is None else torch.cat([x, self.class_nodes.weight])

    def augmented_edges(self, labels: Tensor | None = None) -> Tensor:
        """The graph's edges plus, for every node v with labels[v] >= 0 (default: the known training nodes),
        v -> class node V + labels[v] and back: [2, E + 2 n_linked]."""
        labels = self.known if labels is None else labels
        nodes = torch.nonzero(labels >= 0).flatten()
        cls = labels[nodes] + self.V
        links = (torch.stack([nodes, cls]) if self.class_edges == "to_class"
                 else torch.stack([torch.cat([nodes, cls]), torch.cat([cls, nodes])]))
        return torch.cat([self.model.edge_index, links], 1)

    def label_columns(self, labels: Tensor) -> Tensor:
        """ff_la's appended columns [V, C]: one-hot labels[v] where labels[v] >= 0, else uniform 1/C."""
        C = self.n_classes
        cols = torch.full((self.V, C), 1.0 / C, device=labels.device)
        on = labels >= 0
        cols[on] = F.one_hot(labels[on], C).float()
        return cols

    def la_input(self, labels: Tensor) -> Tensor:
        """ff_la's h_0 [V, F + C]: cat(norm(x), label_columns(labels)), so the label weighs as much as the features."""
        return torch.cat([l2_normalise(self.model.x), self.label_columns(labels)], 1)

    def _labels_with(self, nodes: Tensor, values: Tensor | int) -> Tensor:
        out = self.known.clone()
        out[nodes] = values
        return out

    def goodness(self, h: Tensor) -> Tensor:
        """G [n] = sum of squared activities per node row of h [n, d]."""
        return h.pow(2).sum(1)

    def _layers(self):
        """(i, layer, train) for the layers up to the current stage; train: its loss is backpropagated."""
        for i, layer in enumerate(self.model.layers):
            if i > self.stage:
                return
            yield i, layer, self.training and self._trains(i)

    # ------------------------------------------------------------------------------------- training
    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        self.known[x] = y
        step = {"sf": self._step_sf, "ff_la": self._step_la, "ff_vn": self._step_vn}[self.variant]
        losses = step(x, y)
        logs = {f"loss{i + 1}": v for i, v in losses.items()}
        logs["loss"] = float(sum(losses.values()))
        return logs

    def _step_sf(self, x: Tensor, y: Tensor) -> dict[int, float]:
        edges, h, out = self.augmented_edges(), self.node_input(), {}
        for i, layer, train in self._layers():
            with torch.set_grad_enabled(train):
                h = layer(l2_normalise(h), edges)                    # h: the previous layer's, detached
                if train:
                    loss = F.cross_entropy(h[x] @ h[self.V:].t() / self.tau, y)
                    loss.backward()                                  # frees this layer's graph
                    out[i] = loss.item()
            h = h.detach()
        return out

    def _ff_loss(self, g_pos: Tensor, g_neg: list[Tensor]) -> Tensor:
        bce = F.binary_cross_entropy_with_logits
        pos = bce(g_pos - self.theta, torch.ones_like(g_pos))
        return pos + torch.stack([bce(g - self.theta, torch.zeros_like(g)) for g in g_neg]).mean()

    def _step_la(self, x: Tensor, y: Tensor) -> dict[int, float]:
        wrong = wrong_labels(y, self.n_classes, self.n_negatives)                         # [B, k]
        streams = [self.la_input(self.known)] + [self.la_input(self._labels_with(x, wrong[:, k]))
                                                  for k in range(wrong.shape[1])]
        edges, out = self.model.edge_index, {}
        for i, layer, train in self._layers():
            with torch.set_grad_enabled(train):
                streams = [layer(l2_normalise(s), edges) for s in streams]
                if train:
                    loss = self._ff_loss(self.goodness(streams[0][x]), [self.goodness(s[x]) for s in streams[1:]])
                    loss.backward()
                    out[i] = loss.item()
            streams = [s.detach() for s in streams]
        return out

    def _step_vn(self, x: Tensor, y: Tensor) -> dict[int, float]:
        wrong = wrong_labels(y, self.n_classes, self.n_negatives)
        pos_edges = self.augmented_edges()
        neg_edges = [self.augmented_edges(self._labels_with(x, wrong[:, k])) for k in range(wrong.shape[1])]
        h, out = self.node_input(), {}
        for i, layer, train in self._layers():
            with torch.set_grad_enabled(train):
                u = l2_normalise(h)
                h = layer(u, pos_edges)
                if train:
                    g_neg = [self.goodness(layer(u, e)[x]) for e in neg_edges]
                    loss = self._ff_loss(self.goodness(h[x]), g_neg)
                    loss.backward()
                    out[i] = loss.item()
            h = h.detach()
        return out

    # ------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def layer_scores(self, x: Tensor) -> Tensor:
        """[B, C, L']: per layer (up to the current stage), sf: softmax(h[v] . h[c]^T / tau);
        ff_la / ff_vn: G_l - theta with the requested nodes labelled (linked to) c, for every class c."""
        if self.variant == "sf":
            h, edges, per = self.node_input(), self.augmented_edges(), []
            for _, layer, _ in self._layers():
                h = layer(l2_normalise(h), edges)
                per.append(torch.softmax(h[x] @ h[self.V:].t() / self.tau, 1))
            return torch.stack(per, -1)
        cols = []
        for c in range(self.n_classes):
            labels = self._labels_with(x, c)
            if self.variant == "ff_la":
                h, edges = self.la_input(labels), self.model.edge_index
            else:
                h, edges = self.node_input(), self.augmented_edges(labels)
            per = []
            for _, layer, _ in self._layers():
                h = layer(l2_normalise(h), edges)
                per.append(self.goodness(h[x]) - self.theta)
            cols.append(torch.stack(per, -1))
        return torch.stack(cols, 1)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Logits [B, C]: sf: log of the layer-averaged class probabilities; ff_*: goodness summed over layers."""
        s = self.layer_scores(self.model.check_ids(x))
        return s.mean(-1).clamp_min(1e-12).log() if self.variant == "sf" else s.sum(-1)
