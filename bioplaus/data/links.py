"""Link prediction on graphs: an edge split of a generated SBM graph or of a PyG-format graph, all offline.

Task "link" (bioplaus.data.base): a sample is a node pair, x [N, 2] int64 (u, v), with y [N] = 1 for an edge of the
graph and 0 for a sampled non-edge; a model returns logits [N, 2] ("no edge", "edge") and the trainer reports the
ROC AUC of logit[1] - logit[0] (`test_auc`, per epoch `val_auc` too), ForwardGNN's metric. `LinkDataset.graph` holds
the node features and the *training* edges only: the graph that message passing runs on never contains a test
edge. A graph model is built with `task="link"` (handed over in `model_kwargs()`).

`link_split(x, edge_index, test_fraction, seed)`, the split PyG's RandomLinkSplit(is_undirected=True,
neg_sampling_ratio=1.0) makes and ForwardGNN uses (there: 16% validation, 20% test):

- the undirected edges {u, v} (self loops dropped, each once) are permuted with `seed`; the last test_fraction of
  them are the test positives, the others the training positives and, in both directions, the message-passing graph;
- as many negatives as positives in each split, drawn once (seeded) and uniformly among the node pairs that are not
  an edge of the full graph; training and test negatives are disjoint and contain no pair twice;
- `normalize_features` (default): every node's feature row scaled to unit L2 norm, for every rule alike (the
  authors normalise features for backprop and forward learning alike, PyG's NormalizeFeatures; a dot-product
  score of raw SBM features, norm ~130, saturates: backprop reached AUC 0.52 on raw features, 0.66 normalised).

`trainer.val_fraction > 0` holds out that share of the training edges and as many training non-edges as validation
pairs (`LinkDataset.hold_out`, which `bioplaus.run` calls before building the model) and removes those edges from the
message-passing graph, as PyG's RandomLinkSplit does: validation pairs are unseen like the test pairs, so val_auc
(early stopping, tuning) estimates test_auc. The run's graph then depends on the run's seed.

- `sbm_link(...)`: the SBM graph of `bioplaus.data.graphs.sbm` (same arguments), split by edges. Default: 1000 nodes,
  5 classes, ~2750 undirected edges (70% within a class), 20% of them test.
- `pyg_link(root, name)`: a graph in PyG formats (Planetoid raw files or a torch.save'd Data, see
  `bioplaus.data.graphs.pyg`), split by edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bioplaus.data.base import VALIDATION_SEED_OFFSET
from bioplaus.data.graphs import Graph, GraphDataset, read_pyg, sbm_graph
from bioplaus.errors import ConfigError


@dataclass(repr=False)
class LinkDataset(GraphDataset):
    """Link prediction: x_* are node pairs [N, 2] int64 into `graph` (training edges only), y_* in {0, 1}."""

    task: str = "link"
    holds_validation = True          # validation pairs' edges must leave the graph: hold_out, before the model

    def hold_out(self, fraction: float, seed: int) -> None:
        """Move `fraction` of the training edges, and as many of the training non-edges, to a validation split
        (x_val, y_val; seeded as the trainer's split, by VALIDATION_SEED_OFFSET + seed) and drop those edges from
        the message-passing graph: validation pairs are then unseen, as test pairs are, and val_auc estimates
        test_auc. In place; call it before building the model (the model holds the graph). Once per dataset."""
        if self.x_val is not None:
            raise ConfigError(f"data {self.name} already holds a validation split")
        if not 0 < float(fraction) < 1:
            raise ConfigError(f"trainer.val_fraction must be in (0, 1) to hold out link validation, got {fraction}")
        gen = torch.Generator().manual_seed(VALIDATION_SEED_OFFSET + int(seed))
        parts = []
        for label in (1, 0):
            idx = torch.nonzero(self.y_train == label).flatten()
            n_val = int(round(float(fraction) * len(idx)))
            if not 1 <= n_val < len(idx):
                raise ConfigError(f"trainer.val_fraction={fraction} leaves {n_val} of {len(idx)} training "
                                  f"{'edges' if label else 'non-edges'} for validation: keep at least one on each side")
            idx = idx[torch.randperm(len(idx), generator=gen)]
            parts.append((idx[:-n_val], idx[-n_val:]))
        keep = torch.cat([parts[0][0], parts[1][0]]).sort().values
        held = torch.cat([parts[0][1], parts[1][1]]).sort().values
        self.x_val, self.y_val = self.x_train[held], self.y_train[held]
        self.x_train, self.y_train = self.x_train[keep], self.y_train[keep]
        self.graph = message_graph(self.graph.x, self.x_train[self.y_train == 1])

    def model_kwargs(self) -> dict:
        """A graph model for this data: in_shape (2,), n_classes 2, the graph (training edges) and task="link"."""
        return {**super().model_kwargs(), "task": "link"}

    def __repr__(self) -> str:
        g = self.graph
        val = f" / val {len(self.x_val)}" if self.x_val is not None else ""
        return (f"LinkDataset({self.name}: {g.num_nodes} nodes, {g.num_edges} directed training edges, "
                f"{g.x.shape[1]} features, train {len(self.x_train)}{val} / test {len(self.x_test)} pairs, half edges)")


def message_graph(x: Tensor, pos: Tensor) -> Graph:
    """The message-passing graph of positive pairs pos [M, 2]: both directions of each, over node features x."""
    return Graph(x, torch.cat([pos.t(), pos.t().flip(0)], 1))


def undirected_pairs(edge_index: Tensor) -> Tensor:
    """The undirected edges of edge_index [2, E] once each, as [M, 2] with u < v (self loops dropped)."""
    u, v = edge_index.long()
    keep = u != v
    pairs = torch.stack([torch.minimum(u, v)[keep], torch.maximum(u, v)[keep]], 1)
    return torch.unique(pairs, dim=0)


def sample_non_edges(n_nodes: int, n: int, forbidden: Tensor, gen: torch.Generator) -> Tensor:
    """n distinct node pairs [n, 2] (u < v) drawn uniformly among those whose key u * V + v is not in `forbidden`."""
    n_pairs = n_nodes * (n_nodes - 1) // 2
    if n > n_pairs - len(forbidden):
        raise ConfigError(f"the graph has too few non-edges ({n_pairs - len(forbidden)}) to sample {n} negatives")
    found = torch.zeros(0, dtype=torch.long)
    while len(found) < n:
        u = torch.randint(0, n_nodes, (2 * n + 16,), generator=gen)
        v = torch.randint(0, n_nodes, (2 * n + 16,), generator=gen)
        a, b = torch.minimum(u, v), torch.maximum(u, v)
        key = (a * n_nodes + b)[a != b]
        found = torch.unique(torch.cat([found, key[~torch.isin(key, forbidden)]]))
    found = found[torch.randperm(len(found), generator=gen)[:n]]          # a uniform subset, in random order
    return torch.stack([found // n_nodes, found % n_nodes], 1)


def link_split(name: str, x: Tensor, edge_index: Tensor, test_fraction: float = 0.2, seed: int = 0,
               normalize_features: bool = True) -> LinkDataset:
    """A LinkDataset from node features x [V, F] and an undirected graph's edge_index [2, E] (module docstring)."""
    if normalize_features:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if not 0 < float(test_fraction) < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    V = int(x.shape[0])
    pairs = undirected_pairs(edge_index)
    n_test = int(round(float(test_fraction) * len(pairs)))
    if not 1 <= n_test < len(pairs):
        raise ConfigError(f"data={name}: {len(pairs)} undirected edges leave {n_test} for the test split; "
                          "both splits need at least one (change data.test_fraction)")
    gen = torch.Generator().manual_seed(int(seed))
    pairs = pairs[torch.randperm(len(pairs), generator=gen)]
    train_pos, test_pos = pairs[:-n_test], pairs[-n_test:]
    edges = pairs[:, 0] * V + pairs[:, 1]
    negatives = sample_non_edges(V, len(pairs), edges, gen)
    train_neg, test_neg = negatives[:len(train_pos)], negatives[len(train_pos):]
    graph = message_graph(x, train_pos)

    def labelled(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cat([pos, neg]), torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long()

    (x_tr, y_tr), (x_te, y_te) = labelled(train_pos, train_neg), labelled(test_pos, test_neg)
    return LinkDataset(name, x_tr, y_tr, x_te, y_te, 2, graph=graph)


def sbm_link(n_nodes: int = 1000, n_classes: int = 5, p_in: float = 0.02, p_out: float = 0.002,
             n_features: int = 256, feature_noise: float = 8.0, n_informative: int | None = None,
             nuisance_noise: float = 1.0, test_fraction: float = 0.2, seed: int = 0,
             normalize_features: bool = True) -> LinkDataset:
    """The SBM graph of `bioplaus.data.graphs.sbm` (seeded by `seed`), split by edges (test_fraction test)."""
    x, edge_index, _ = sbm_graph(n_nodes, n_classes, p_in, p_out, n_features, feature_noise, n_informative,
                                 nuisance_noise, seed)
    return link_split("sbm_link", x, edge_index, test_fraction, seed, normalize_features)


def pyg_link(root: str, name: str = "cora", test_fraction: float = 0.2, seed: int = 0,
             normalize_features: bool = True) -> LinkDataset:
    """A PyG-format graph (see bioplaus.data.graphs.pyg for the files read) split by edges."""
    d, label = read_pyg(root, name)
    x = d["x"] if d["x"].layout == torch.strided else d["x"].to_dense()
    return link_split(f"{label}_link", x.float(), torch.as_tensor(d["edge_index"]).long(), test_fraction, seed,
                      normalize_features)


__all__ = ["LinkDataset", "link_split", "pyg_link", "sample_non_edges", "sbm_link", "undirected_pairs"]
