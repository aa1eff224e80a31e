"""ForwardGNN (Park et al., ICLR 2024): forward-only, layer-wise training of graph neural networks.

Node-major graphs: features [V, F], edge_index [2, E] (bioplaus.data.graphs); the model is a GCN or GraphSAGE
(bioplaus.models.graph) holding the graph; x is a batch of node ids [B] (node classification) or node pairs
[B, 2] (link prediction, data=sbm_link | pyg_link), y their labels [B]. The rule remembers the labels of the
training nodes it has been given (`known` [V], -1 = unknown): only those nodes are ever labelled in the graph.

Every layer learns from its own loss on its own, L2-normalised and detached input:

    u_l = norm(h_{l-1}).detach()     norm(h)_v = h_v / (||h_v||_2 + 1e-8) per node (row), h_0 = input features
    h_l = layers[l](u_l, E)          [V', d_l] over the (augmented) graph;  loss_l.backward() at once

so no error crosses layers and (schedule `simultaneous`) each layer's autograd graph is freed before the next
layer's forward: the activations kept for backward are one layer's, whatever the depth.

Node-classification variants (`variant`):
- `sf` (single forward): C virtual class nodes join the graph (V' = V + C) with features from an
  `nn.Embedding(C, F)` (`class_embedding`: learned with layer 1's loss, or fixed random as in the authors' code);
  every known training node v is linked to the node of its class: both ways (`class_edges: both`, the paper's)
  or only v -> class node (`to_class`, the authors' `unidirection`).
      loss_l = CE(softmax(h_l[v] . h_l[c]^T / tau), y_v)  over the batch nodes v, the C class nodes c
  Inference: p(c | v) = mean over layers l of softmax(h_l[v] . h_l[c]^T / tau); logits = log p. With `both` a
  training node receives its class node's message, a hint test nodes never get (`to_class` removes it).
- `sf_top2input`, `sf_top2loss`: top-down SF (rules/forward_gnn_topdown.py): each layer also sees the layer
  above, from the previous step (top2input: as input; top2loss: in its loss). Inference iterates the top-down
  dynamics.
- `ff_la` (Forward-Forward, label appending): the normalised features get C label columns (one-hot y for known
  nodes, uniform 1/C otherwise; layer 1 is widened to F + C inputs). Negatives: the batch nodes carry a wrong
  label (n_negatives of them, default all C - 1), one stream each.
      G_l(v) = sum_j h_l[v, j]^2,  loss_l = BCE-with-logits(G_pos - theta, 1) + mean_k BCE(G_neg_k - theta, 0)
  Inference: C passes, the requested nodes labelled c in pass c; logits[:, c] = sum_l (G_l - theta).
- `ff_vn` (Forward-Forward, virtual nodes): the graph with class nodes as in `sf`, the same goodness loss; each
  negative graph links the batch nodes to a wrong class node. Inference: C passes as in ff_la.
Link prediction (`sf`, `ff`; rules/forward_gnn_link.py): per layer a score of z_u * z_v, BCE (sf) or goodness (ff).

Schedules: `simultaneous` trains every layer every step. `sequential` (the paper's greedy schedule) trains layer
1 alone, then layer 2 on layer 1's frozen output, ...: for `epochs_per_layer` epochs each or, with `patience`,
until the validation score (val_acc; val_auc for links: set trainer.val_fraction > 0, never test) has not improved
for `patience` epochs (at most epochs_per_layer, and at most the layer's share of the epochs left in the run's
budget, so a short run still trains every layer); the layer's best parameters are then reloaded (the authors'
EarlyStopping). With `simultaneous` and `patience` the whole network stops early the same way. At the end of the
budget (`on_train_start`) the current stage's best is reloaded; once stopped nothing trains (losses still logged).

The layers learn at `lr_scale` x the trainer's lr (default 1 for sf and top-down; 10 for the FF variants, whose
goodness needs the weights to grow). The model's head is frozen and unused (inference is the rule's own).
GCN normalisation applies on the augmented graph as it is. Supports GCN and GraphSAGE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import GCN, GraphSAGE
from bioplaus.rules.base import GreedyLayers, LearningRule, check_choice, check_positive
from bioplaus.rules.forward_forward import wrong_labels
from bioplaus.rules.forward_gnn_link import LinkForward
from bioplaus.rules.forward_gnn_topdown import TopDownSF, l2_normalise

VARIANTS = {"classify": ("sf", "ff_la", "ff_vn", "sf_top2input", "sf_top2loss"), "link": ("sf", "ff")}
SCHEDULES = ("simultaneous", "sequential")
EMBEDDINGS = ("learned", "fixed")
CLASS_EDGES = ("both", "to_class")
LR_SCALE = {"ff_la": 10.0, "ff_vn": 10.0, "ff": 10.0}   # lr_scale: null -> these (measured on data=sbm), else 1
BEST, BEST_EPOCH, STAGE_START, STOPPED = range(4)    # early-stopping tracker slots (STOPPED: stop epoch + 1)


class ForwardGNN(TopDownSF, LinkForward, GreedyLayers, LearningRule):
    """ForwardGNN-SF (and its top-down forms) / FF-LA / FF-VN, and SF / FF link prediction: every GNN layer trained
    by its own forward-only loss."""

    name = "forward_gnn"
    supported_models = (GCN, GraphSAGE)

    def __init__(self, model, variant: str = "sf", schedule: str = "simultaneous", epochs_per_layer: int = 50,
                 temperature: float = 1.0, theta: float = 2.0, n_negatives: int | None = None,
                 class_embedding: str = "learned", embedding_seed: int = 0, lr_scale: float | None = None,
                 class_edges: str = "both", patience: int | None = None, alternating: bool = True,
                 test_time_steps: int = 10, skip_time_steps: int = 2):
        super().__init__(model)
        self.task = model.task
        for key, value, allowed in (("variant", variant, VARIANTS[self.task]), ("schedule", schedule, SCHEDULES),
                                    ("class_embedding", class_embedding, EMBEDDINGS),
                                    ("class_edges", class_edges, CLASS_EDGES)):
            check_choice(key, value, allowed, f"forward_gnn ({self.task})")
        if temperature <= 0 or int(epochs_per_layer) < 1 or (patience is not None and int(patience) < 1):
            raise ConfigError(f"rule.temperature must be > 0, rule.epochs_per_layer >= 1 and rule.patience >= 1 (or "
                              f"null), got {temperature}, {epochs_per_layer}, {patience}")
        if variant.startswith("sf_top2") and schedule != "simultaneous":
            raise ConfigError(f"rule.variant={variant} trains every layer at every step (each sees the one above): "
                              "use rule.schedule=simultaneous")
        V, C = model.num_nodes, model.n_classes
        self.variant, self.schedule, self.epochs_per_layer = variant, schedule, int(epochs_per_layer)
        self.name = f"forward_gnn_{variant}" + ("_link" if self.task == "link" else "")   # one row per variant
        self.tau, self.theta = float(temperature), float(theta)
        self.lr_scale = check_positive("lr_scale", LR_SCALE.get(variant, 1.0) if lr_scale is None else lr_scale)
        self.patience = None if patience is None else int(patience)
        self.n_classes, self.V = C, V
        self.n_negatives = C - 1 if n_negatives is None else int(n_negatives)
        if variant in ("ff_la", "ff_vn"):
            wrong_labels(torch.zeros(1, dtype=torch.long), C, self.n_negatives)          # validates 1..C-1
        self.register_buffer("known", torch.full((V,), -1, dtype=torch.long))     # labels of training nodes seen
        self.class_embedding, self.class_edges = class_embedding, class_edges
        self.class_nodes: nn.Embedding | None = None         # virtual class nodes (node classification but ff_la)
        if self.task == "classify" and variant != "ff_la":
            gen = torch.Generator().manual_seed(int(embedding_seed))
            self.class_nodes = nn.Embedding(C, model.n_features)
            with torch.no_grad():
                self.class_nodes.weight.copy_(torch.randn(C, model.n_features, generator=gen))
        if variant == "ff_la":
            model.widen_input(C, 1.0 / C)                # label columns; model(node_ids) sees the uniform label
        if variant.startswith("sf_top2"):
            self.setup_topdown(bool(alternating), int(test_time_steps), int(skip_time_steps))
        self.stage = 0 if schedule == "sequential" else len(model.layers) - 1    # highest layer trained now
        self.epochs: int | None = None                       # the run's budget (on_train_start)
        self.register_buffer("tracker", torch.tensor([-float("inf"), -1.0, 0.0, 0.0], dtype=torch.float64))
        self.register_buffer("best", torch.cat([p.detach().flatten() for p in self.parameters()]).clone())
        self._set_trainable()

    # ----------------------------------------------------------------------------------------- setup
    @property
    def stopped(self) -> bool:
        return bool(self.tracker[STOPPED])

    def _set_trainable(self) -> None:
        for i, layer in enumerate(self.model.layers):
            on = (i == self.stage if self.schedule == "sequential" else True) and not self.stopped
            layer.requires_grad_(on)
        self.model.head.requires_grad_(False)                    # unused: inference is the rule's own
        if self.class_nodes is not None:
            self.class_nodes.requires_grad_(self.class_embedding == "learned" and self._trains(0))

    def _trains(self, i: int) -> bool:
        return any(p.requires_grad for p in self.model.layers[i].parameters())

    def on_train_start(self, epochs: int) -> None:
        self.epochs = int(epochs)

    def _layer_cap(self) -> int:
        """The current layer's epoch cap (sequential with patience): epochs_per_layer, or its share of the epochs
        left in the run's budget where that is less (epochs left // layers left, so every layer trains; epochs a
        layer leaves unused by stopping early pass to the layers above)."""
        if self.epochs is None:
            return self.epochs_per_layer
        left = self.epochs - int(self.tracker[STAGE_START])
        return max(1, min(self.epochs_per_layer, left // (len(self.model.layers) - self.stage)))

    def on_epoch_end(self, epoch: int, metrics: dict) -> bool:
        """sequential: the next layer after `epochs_per_layer` epochs, or (patience) when the validation score has
        stalled, reloading the layer's best; True = the parameter set changed (the trainer rebuilds)."""
        if self.patience is None:
            return self.advance_stage(epoch, self.schedule == "sequential", self.epochs_per_layer)
        if self.stopped:
            return False
        key = "val_auc" if self.task == "link" else "val_acc"
        if key not in metrics:
            raise ConfigError(f"rule.patience stops on the validation score ({key}): set trainer.val_fraction > 0")
        t = self.tracker
        if float(metrics[key]) > float(t[BEST]):
            t[BEST], t[BEST_EPOCH] = float(metrics[key]), epoch
            self.best.copy_(torch.cat([p.detach().flatten() for p in self.parameters()]))
        stalled = epoch - int(t[BEST_EPOCH]) >= self.patience
        full = self.schedule == "sequential" and epoch + 1 - int(t[STAGE_START]) >= self._layer_cap()
        last = self.epochs is not None and epoch + 1 >= self.epochs
        if not (stalled or full or last):
            return False
        self._reload_best()
        if self.schedule == "sequential" and self.stage < len(self.model.layers) - 1 and not last:
            self.stage += 1
            t[BEST], t[BEST_EPOCH], t[STAGE_START] = -float("inf"), epoch, epoch + 1
        else:
            t[STOPPED] = epoch + 1
        self._set_trainable()
        return True

    def _reload_best(self) -> None:
        """Parameters back to the best validation epoch's (the current stage's, the others unchanged since)."""
        with torch.no_grad():
            i = 0
            for p in self.parameters():                          # copied, never aliased to the snapshot
                p.copy_(self.best[i:i + p.numel()].view_as(p))
                i += p.numel()

    def extra_metrics(self) -> dict:
        """With patience: the epoch after which nothing trained any more (-1: never), the layer then in training
        (sequential) and its best validation score."""
        if self.patience is None:
            return {}
        return {"stopped_epoch": int(self.tracker[STOPPED]) - 1, "stage": self.stage,
                "best_val": float(self.tracker[BEST])}

    # ------------------------------------------------------------------------------------ the graph
    def node_input(self) -> Tensor:
        """h_0: the model's node features [V, F]; with class nodes [V + C, F]."""
        x = self.model.x
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
        """Per node [V, C]: one-hot labels[v] where labels[v] >= 0, else uniform 1/C."""
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
        """G [n] = sum of squared activities per row of h [n, d]."""
        return h.pow(2).sum(1)

    def class_logits(self, h: Tensor, x: Tensor) -> Tensor:
        """h[x] . h[class nodes]^T / tau: [B, C] for embeddings h [V + C, d]."""
        return h[x] @ h[self.V:].t() / self.tau

    def _layers(self):
        """(i, layer, train, score) for the layers up to the current stage; train: its loss is backpropagated;
        score: its loss is computed (training, or stopped and only logged)."""
        for i, layer in enumerate(self.model.layers):
            if i > self.stage:
                return
            train = self.training and self._trains(i)
            yield i, layer, train, train or (self.training and self.stopped)

    # ------------------------------------------------------------------------------------- training
    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        if self.task == "classify":
            self.known[x] = y
        losses = getattr(self, f"_step_{self.variant}" + ("_link" if self.task == "link" else ""))(x, y)
        logs = {f"loss{i + 1}": v for i, v in losses.items()}
        logs["loss"] = float(sum(losses.values()))
        return logs

    @staticmethod
    def _learn(loss: Tensor, train: bool) -> float:
        if train:
            loss.backward()                                      # frees this layer's graph
        return loss.item()

    def _step_sf(self, x: Tensor, y: Tensor) -> dict[int, float]:
        edges, h, out = self.augmented_edges(), self.node_input(), {}
        for i, layer, train, score in self._layers():
            with torch.set_grad_enabled(train):
                h = layer(l2_normalise(h), edges)                    # h: the previous layer's, detached
                if score:
                    out[i] = self._learn(F.cross_entropy(self.class_logits(h, x), y), train)
            h = h.detach()
        return out

    def _ff_loss(self, g_pos: Tensor, g_neg: list[Tensor]) -> Tensor:
        bce = F.binary_cross_entropy_with_logits
        pos = bce(g_pos - self.theta, torch.ones_like(g_pos))
        return pos + torch.stack([bce(g - self.theta, torch.zeros_like(g)) for g in g_neg]).mean()

    def _step_ff_la(self, x: Tensor, y: Tensor) -> dict[int, float]:
        wrong = wrong_labels(y, self.n_classes, self.n_negatives)                         # [B, k]
        streams = [self.la_input(self.known)] + [self.la_input(self._labels_with(x, wrong[:, k]))
                                                  for k in range(wrong.shape[1])]
        edges, out = self.model.edge_index, {}
        for i, layer, train, score in self._layers():
            with torch.set_grad_enabled(train):
                streams = [layer(l2_normalise(s), edges) for s in streams]
                if score:
                    g = [self.goodness(s[x]) for s in streams]
                    out[i] = self._learn(self._ff_loss(g[0], g[1:]), train)
            streams = [s.detach() for s in streams]
        return out

    def _step_ff_vn(self, x: Tensor, y: Tensor) -> dict[int, float]:
        wrong = wrong_labels(y, self.n_classes, self.n_negatives)
        pos_edges = self.augmented_edges()
        neg_edges = [self.augmented_edges(self._labels_with(x, wrong[:, k])) for k in range(wrong.shape[1])]
        h, out = self.node_input(), {}
        for i, layer, train, score in self._layers():
            with torch.set_grad_enabled(train):
                u = l2_normalise(h)
                h = layer(u, pos_edges)
                if score:
                    g_neg = [self.goodness(layer(u, e)[x]) for e in neg_edges]
                    out[i] = self._learn(self._ff_loss(self.goodness(h[x]), g_neg), train)
            h = h.detach()
        return out

    # ------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def layer_scores(self, x: Tensor) -> Tensor:
        """[B, C, L']: per layer (up to the current stage), sf: softmax(h[v] . h[c]^T / tau);
        ff_la / ff_vn: G_l - theta with the requested nodes labelled (linked to) c, for every class c."""
        if self.variant == "sf":
            h, edges, per = self.node_input(), self.augmented_edges(), []
            for _, layer, _, _ in self._layers():
                h = layer(l2_normalise(h), edges)
                per.append(torch.softmax(self.class_logits(h, x), 1))
            return torch.stack(per, -1)
        cols = []
        for c in range(self.n_classes):
            labels = self._labels_with(x, c)
            if self.variant == "ff_la":
                h, edges = self.la_input(labels), self.model.edge_index
            else:
                h, edges = self.node_input(), self.augmented_edges(labels)
            per = []
            for _, layer, _, _ in self._layers():
                h = layer(l2_normalise(h), edges)
                per.append(self.goodness(h[x]) - self.theta)
            cols.append(torch.stack(per, -1))
        return torch.stack(cols, 1)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Logits [B, C]: sf and top-down: log of the averaged class probabilities; ff_*: goodness summed over
        layers; links: [log(1 - p), log p], p the layers' mean edge probability."""
        x = self.model.check_ids(x)
        if self.task == "link":
            return self.link_logits(x)
        if self.variant.startswith("sf_top2"):
            return self.topdown_probs(x).clamp_min(1e-12).log()
        s = self.layer_scores(x)
        return s.mean(-1).clamp_min(1e-12).log() if self.variant == "sf" else s.sum(-1)
