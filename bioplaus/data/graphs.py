"""Graph datasets for transductive node classification, all offline (nothing downloads).

Graphs are node-major: node features x [V, F] float32 (one row per node), edge_index [2, E] int64
(row 0 = source, row 1 = target; undirected graphs list both directions), labels y [V] int64.

A node-classification dataset is a `GraphDataset` (a `bioplaus.data.base.Dataset`) whose samples are *node ids*:
x_train [N_train] / x_test [N_test] int64 node ids, y_train / y_test their labels, and `graph` (a `Graph`:
x and edge_index, no labels) the whole graph. A graph model (bioplaus.models.graph) is built with the graph
and holds it as buffers; model(node_ids [B]) runs the full graph and returns the logits of those nodes
[B, C]. So the unchanged trainer, `rule.predict` and the statistics layer work on batches of node ids
(trainer.batch_size >= N_train = full-batch training, the usual setting for GNNs).

- `karate(...)`: Zachary's karate club from networkx (a torch dependency, so always present): 34 nodes,
  78 undirected edges (156 directed), labels = the two factions after the split ('Mr. Hi' 0, 'Officer' 1),
  features = one-hot node ids [34, 34]. Train nodes: the two leaders (0 and 33) by default, test: the rest.
- `sbm(...)`: a stochastic block model with class-correlated features, seeded. Node v of class y_v
  (balanced) links to each same-class node with probability p_in and to each other node with p_out.
  The first k = n_informative of its F features carry the class, the other F - k are pure nuisance:
      x_v[:k] = mu_{y_v} + feature_noise * eps_v,   x_v[k:] = nuisance_noise * eps'_v,   mu_c ~ N(0, I_k)
  (eps, eps' standard normal; n_informative = null: all F). With a large feature_noise in many dims (the
  default: 256 dims, noise 8) the features alone are ambiguous, averaging over same-class neighbours (what
  a GNN layer does) cancels the noise, so structure matters, and a random 128-wide layer keeps too little of
  the class signal for a readout on frozen layers to match trained ones (see configs/data/sbm.yaml).
  Nuisance dims (n_informative < F) are harder still for layer-local learning: with 8 informative of 64
  dims and nuisance_noise 5, ForwardGNN-SF reached 0.51 against backprop's 0.76 (GCN, seed 0, 200 epochs).
- `pyg(root, ...)`: a graph in PyG formats from a local path: the raw Planetoid files
  ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index} (what `torch_geometric.datasets.Planetoid(root, name)`
  reads from <root>/<Name>/raw; read here with `torch_geometric.io.read_planetoid_data`, no download and
  nothing written), or a file saved with `torch.save(data, path)` (a `torch_geometric.data.Data`, its
  `to_dict()`, or an InMemoryDataset's processed data.pt). Masks train_mask / test_mask in the file give the
  split (Planetoid: 20 labels per class, 1000 test nodes); without masks a seeded random split is drawn.
  Reading needs torch_geometric (`pip install -e '.[graph]'`); a .pt file is unpickled, so load only
  files you trust.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bioplaus.data.base import Dataset
from bioplaus.errors import ConfigError, require

PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
GRAPH_EXTRA = "install the graph extra: pip install -e '.[graph]'"


def require_pyg():
    """Import torch_geometric, or one ConfigError naming the extra to install."""
    return require("torch_geometric", "PyG data need", GRAPH_EXTRA)


class Graph:
    """A whole graph, node-major: x [V, F] float32 node features, edge_index [2, E] int64 (src, dst).
    (A plain class, not a dataclass: Hydra's instantiate would turn a dataclass argument into a dict.)"""

    def __init__(self, x: Tensor, edge_index: Tensor):
        if x.dim() != 2 or edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ConfigError(f"a graph needs node features [V, F] and edge_index [2, E], got {tuple(x.shape)} "
                              f"and {tuple(edge_index.shape)}")
        self.x, self.edge_index = x.float(), edge_index.long()
        if self.edge_index.numel() and not 0 <= int(self.edge_index.min()) <= int(self.edge_index.max()) < len(self.x):
            raise ConfigError(f"edge_index refers to nodes outside 0..{len(self.x) - 1}")

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def __repr__(self) -> str:
        return f"Graph({self.num_nodes} nodes, {self.num_edges} directed edges, {self.x.shape[1]} features)"


@dataclass(repr=False)
class GraphDataset(Dataset):
    """Node classification: x_* are node ids [N] int64 into `graph`, y_* their labels [N]."""

    graph: Graph | None = None
    graph_data = True

    def model_kwargs(self) -> dict:
        """A graph model is built with the whole graph: in_shape (), n_classes and graph."""
        return {**super().model_kwargs(), "graph": self.graph}

    def __repr__(self) -> str:
        g = self.graph
        return (f"GraphDataset({self.name}: {g.num_nodes} nodes, {g.num_edges} directed edges, {g.x.shape[1]} "
                f"features, train {len(self.x_train)} / test {len(self.x_test)} nodes, {self.n_classes} classes)")


def node_dataset(name: str, x: Tensor, edge_index: Tensor, y: Tensor, train: Tensor, test: Tensor,
                 n_classes: int | None = None) -> GraphDataset:
    """A GraphDataset from a whole graph (x [V, F], edge_index [2, E], y [V]) and train / test node ids."""
    train, test = train.long(), test.long()
    if not len(train) or not len(test):
        raise ConfigError(f"data={name}: the split leaves {len(train)} train and {len(test)} test nodes; "
                          "both need at least one (change the split fractions)")
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    return GraphDataset(name, train, y[train].long(), test, y[test].long(), n_classes, graph=Graph(x, edge_index))


def _split(n: int, train_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of node ids 0..n-1: the first train_fraction of a permutation trains, the last
    test_fraction tests (the rest are unlabelled nodes of the graph, e.g. for trainer.val_fraction)."""
    if not (0 < train_fraction < 1 and 0 < test_fraction < 1 and train_fraction + test_fraction <= 1):
        raise ConfigError(f"data.train_fraction ({train_fraction}) and data.test_fraction ({test_fraction}) must be "
                          "in (0, 1) and sum to at most 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    a, b = int(round(train_fraction * n)), int(round(test_fraction * n))
    return perm[:a].sort().values, perm[n - b:].sort().values


def karate(train_nodes: Sequence[int] | None = None) -> GraphDataset:
    """Zachary's karate club: 34 nodes, 156 directed edges, 2 factions, one-hot node-id features [34, 34].
    train_nodes: labelled nodes (default: the two leaders, 0 'Mr. Hi' and 33 'Officer'); test: the others."""
    import networkx as nx

    g = nx.karate_club_graph()
    V = g.number_of_nodes()
    y = torch.tensor([0 if g.nodes[v]["club"] == "Mr. Hi" else 1 for v in range(V)])
    und = torch.tensor(sorted(g.edges()), dtype=torch.long).t()
    edge_index = torch.cat([und, und.flip(0)], 1)
    train = torch.tensor([0, 33] if train_nodes is None else list(train_nodes), dtype=torch.long)
    if not len(train) or int(train.min()) < 0 or int(train.max()) >= V:
        raise ConfigError(f"data.train_nodes must be node ids in 0..{V - 1}, got {list(train.tolist())}")
    test = torch.tensor([v for v in range(V) if v not in set(train.tolist())], dtype=torch.long)
    return node_dataset("karate", torch.eye(V), edge_index, y, train, test, 2)


def sbm_edges(y: Tensor, p_in: float, p_out: float, gen: torch.Generator) -> Tensor:
    """Undirected SBM edges [2, E] (both directions, no self loops, no duplicates) for labels y [V]:
    each same-class pair linked with probability p_in, each other pair with p_out. Sampled per block pair
    without forming the V x V matrix: E_ab ~ Binomial(pairs_ab, p), endpoints uniform, duplicates dropped
    (a relative deficit of about E_ab / (2 pairs_ab), negligible for sparse graphs)."""
    C = int(y.max()) + 1
    members = [torch.nonzero(y == c).flatten() for c in range(C)]
    src, dst = [], []
    for a in range(C):
        for b in range(a, C):
            na, nb = len(members[a]), len(members[b])
            pairs = na * (na - 1) // 2 if a == b else na * nb
            p = p_in if a == b else p_out
            if pairs == 0 or p <= 0:
                continue
            m = int(torch.binomial(torch.tensor(float(pairs)), torch.tensor(float(p)), generator=gen))
            i = members[a][torch.randint(0, na, (m,), generator=gen)]
            j = members[b][torch.randint(0, nb, (m,), generator=gen)]
            keep = i != j
            src.append(i[keep])
            dst.append(j[keep])
    e = torch.stack([torch.cat(src), torch.cat(dst)]) if src else torch.zeros(2, 0, dtype=torch.long)
    e = torch.cat([e, e.flip(0)], 1)
    return torch.unique(e, dim=1)


def sbm(n_nodes: int = 1000, n_classes: int = 5, p_in: float = 0.02, p_out: float = 0.002, n_features: int = 256,
        feature_noise: float = 8.0, n_informative: int | None = None, nuisance_noise: float = 1.0,
        train_fraction: float = 0.2, test_fraction: float = 0.5, seed: int = 0) -> GraphDataset:
    """Stochastic block model graph with class-correlated Gaussian features (see the module docstring).
    Expected degree of a node: p_in (V/C - 1) same-class + p_out V (C-1)/C other-class neighbours."""
    x, edge_index, y = sbm_graph(n_nodes, n_classes, p_in, p_out, n_features, feature_noise, n_informative,
                                 nuisance_noise, seed)
    train, test = _split(n_nodes, float(train_fraction), float(test_fraction), int(seed))
    return node_dataset("sbm", x, edge_index, y, train, test, n_classes)


def sbm_graph(n_nodes: int, n_classes: int, p_in: float, p_out: float, n_features: int, feature_noise: float,
              n_informative: int | None, nuisance_noise: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The SBM graph of `sbm` (same arguments): x [V, F], edge_index [2, E] (both directions), y [V]."""
    k = n_features if n_informative is None else int(n_informative)
    if n_nodes < 2 * n_classes or n_classes < 2 or not 1 <= k <= n_features:
        raise ConfigError(f"data=sbm needs n_classes >= 2, n_nodes >= 2 n_classes and 1 <= n_informative <= "
                          f"n_features; got n_nodes={n_nodes}, n_classes={n_classes}, n_informative={k}, "
                          f"n_features={n_features}")
    if not (0 <= p_out <= 1 and 0 <= p_in <= 1) or feature_noise < 0 or nuisance_noise < 0:
        raise ConfigError(f"data.p_in / data.p_out must be probabilities and data.feature_noise, "
                          f"data.nuisance_noise >= 0; got {p_in}, {p_out}, {feature_noise}, {nuisance_noise}")
    gen = torch.Generator().manual_seed(int(seed))
    y = (torch.arange(n_nodes) % n_classes)[torch.randperm(n_nodes, generator=gen)]
    mu = torch.randn(n_classes, k, generator=gen)
    x = float(nuisance_noise) * torch.randn(n_nodes, n_features, generator=gen)
    x[:, :k] = mu[y] + float(feature_noise) * torch.randn(n_nodes, k, generator=gen)
    return x, sbm_edges(y, float(p_in), float(p_out), gen), y


def _planetoid_dir(root: Path, name: str) -> Path | None:
    """The folder holding ind.<name>.* among root, root/raw, root/<name>/raw (any capitalisation of name)."""
    cands = [root, root / "raw"] + [root / n / "raw" for n in dict.fromkeys([name, name.lower(), name.capitalize()])]
    for d in cands:
        if all((d / f"ind.{name.lower()}.{p}").is_file() for p in PLANETOID_PARTS):
            return d
    return None


def _load_pt(path: Path) -> dict:
    """A torch.save'd Data / Data.to_dict() / InMemoryDataset processed tuple -> dict of tensors."""
    require_pyg()
    from torch_geometric.io import fs

    with warnings.catch_warnings():          # PyG falls back to a full unpickle for a Data object, with a warning
        warnings.simplefilter("ignore")
        obj = fs.torch_load(str(path))
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], dict):
        obj = obj[0]                                 # InMemoryDataset: (data dict, slices, [sizes,] data class)
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if not isinstance(obj, dict) or not {"x", "edge_index", "y"} <= set(obj):
        raise ConfigError(f"{path} holds no graph with x, edge_index and y: save a torch_geometric.data.Data "
                          "with torch.save(data, path)")
    return obj


def pyg(root: str, name: str = "cora", train_fraction: float = 0.2, test_fraction: float = 0.5,
        seed: int = 0) -> GraphDataset:
    """A PyG-format graph from a local path (see the module docstring); masks in the file give the split,
    else a seeded random split (train_fraction / test_fraction of the nodes)."""
    d, label = read_pyg(root, name)
    x = d["x"] if d["x"].layout == torch.strided else d["x"].to_dense()
    y = d["y"].long().view(-1)
    if "train_mask" in d and "test_mask" in d:
        train, test = torch.nonzero(d["train_mask"]).flatten(), torch.nonzero(d["test_mask"]).flatten()
    else:
        train, test = _split(len(y), float(train_fraction), float(test_fraction), int(seed))
    return node_dataset(label, x.float(), torch.as_tensor(d["edge_index"]).long(), y, train, test)


def read_pyg(root: str, name: str = "cora") -> tuple[dict, str]:
    """(the graph's tensors by name: x, edge_index, y, and masks if the file has them; its label) from a Planetoid
    folder or a torch.save'd file (see the module docstring), or one ConfigError naming the files expected."""
    path = Path(str(root)).expanduser()
    if path.is_file():
        d = _load_pt(path)
    else:
        folder = _planetoid_dir(path, name) if path.is_dir() else None
        if folder is None:
            files = ", ".join(f"ind.{name.lower()}.{p}" for p in PLANETOID_PARTS)
            raise ConfigError(f"data=pyg: missing {files} in {path} (or {path}/raw, {path}/{name.capitalize()}/raw): "
                              "copy the Planetoid raw files there, or set data.root=FILE.pt to a graph saved with "
                              "torch.save(torch_geometric.data.Data(...), FILE.pt)")
        require_pyg()
        from torch_geometric.io import read_planetoid_data

        d = read_planetoid_data(str(folder), name.lower()).to_dict()
    return d, (name.lower() if not path.is_file() else path.stem)


__all__ = ["Graph", "GraphDataset", "karate", "node_dataset", "pyg", "read_pyg", "require_pyg", "sbm", "sbm_edges",
           "sbm_graph"]
