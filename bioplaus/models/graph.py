"""Graph neural networks for transductive node classification and link prediction: GCN and GraphSAGE, layered.

Graphs are node-major: node features [V, F], edge_index [2, E] (bioplaus.data.graphs). A graph model is
built with the whole graph (`graph=...`, any object with `x` and `edge_index`: graph data hand it over in
`Dataset.model_kwargs()`) and keeps it as buffers (not in the state_dict: the data rebuild it). Its input is a
batch of node ids [B] int64:

    h_0 = model.encode()                               x [V, F] (+ extra columns, see widen_input below)
    h_l = model.layers[l-1](h_{l-1}, edge_index)       [V, d_l]: conv -> activation, over the full graph
    model.features(node_ids) = h_L[node_ids]           [B, d_L]
    logits = model.head(features)                      [B, C]   (nn.Linear; = Linear on h_L, then indexed)

Link prediction (`task="link"`, handed over by link data, bioplaus.data.links): the input is a batch of node
pairs [B, 2] and the graph holds the training edges only; the features of a pair are the Hadamard product of
its end points' embeddings, and the head (`LinkHead`) scores it with a weighted dot product whose weights start
at 1 (the plain dot product <h_u, h_v> of ForwardGNN's backprop baseline) and learn:

    model.features(pairs) = h_L[u] * h_L[v]            [B, d_L]
    s = w . features + b,  logits = [0, s]             [B, 2]   ("no edge", "edge"): p(edge) = sigmoid(s)

Layers (torch_geometric convs, then the activation; optional dropout on the layer input in training):
- GCN (Kipf & Welling 2017):   H' = act(D^-1/2 (A + I) D^-1/2 H W + b),  D the degrees of A + I
- GraphSAGE (Hamilton et al. 2017, mean aggregator):  h'_v = act(W_r h_v + W_n mean_{u -> v} h_u + b)

`model.dims[l]` is the width of h_{l+1}; `model.n_classes`; `model.graph_model` is True (bioplaus.run
checks graph models meet graph data and vice versa). A layer takes any node set and edge set with the
right widths, so a rule may run it on an augmented graph (ForwardGNN's virtual class nodes).
Whether a model fits graph data is decided once, by bioplaus-run, from the class attribute `graph_model`.

`widen_input(k, fill, layer=0)`: a rule that appends k columns to a layer's input (ForwardGNN's label appending
to the node features; its top-down variant's input from the layer above) rebuilds that layer with k more
inputs; the model's own pass then appends `fill` there (e.g. the uniform label 1/C, or 0 for "no top-down
input yet"), so model(x) still runs.

torch_geometric is imported only when a model is built; without it one ConfigError names the extra.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bioplaus.errors import ConfigError, require
from bioplaus.models.base import Layered, check_widths, make_activation

GRAPH_DATA = "data=sbm, data=karate, data=pyg or a link split (data=sbm_link, data=pyg_link)"
TASKS = ("classify", "link")
PYG = ("torch_geometric", "graph models need", "install the graph extra: pip install -e '.[graph]'")


class GraphLayer(nn.Module):
    """Dropout -> conv -> activation: h [V, d_in], edge_index [2, E] -> [V, d_out] (the full node set)."""

    def __init__(self, conv: nn.Module, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.conv, self.act, self.drop = conv, make_activation(activation), nn.Dropout(dropout)

    def forward(self, h: Tensor, edge_index: Tensor) -> Tensor:
        return self.act(self.conv(self.drop(h), edge_index))


class LinkHead(nn.Module):
    """Edge score of a pair's feature h_u * h_v [B, d]: s = w . f + b with w = 1, b = 0 at first (the dot product);
    logits [B, 2] = [0, s]."""

    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, 1)
        with torch.no_grad():
            self.linear.weight.fill_(1.0)
            self.linear.bias.zero_()

    def forward(self, f: Tensor) -> Tensor:
        s = self.linear(f)
        return torch.cat([torch.zeros_like(s), s], 1)


class GNN(Layered):
    """Base class: a stack of GraphLayers over one graph, and a linear head on the requested nodes."""

    graph_model = True
    name = "gnn"
    conv: tuple[str, dict] = ("GCNConv", {})     # the torch_geometric.nn layer of each block, and its keywords

    def __init__(self, in_shape: Sequence[int], n_classes: int, graph=None,
                 hidden: Sequence[int] = (128, 128), activation: str = "relu", dropout: float = 0.0,
                 task: str = "classify"):
        super().__init__()
        if graph is None:
            raise ConfigError(f"model {self.name} is a graph model and needs graph data: use {GRAPH_DATA}")
        if task not in TASKS:
            raise ConfigError(f"model {self.name} does one of {', '.join(TASKS)}, not '{task}'")
        require(*PYG)
        self.task = task
        if not 0 <= float(dropout) < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}")
        self.in_shape = tuple(int(d) for d in in_shape)          # () : one sample is one node id
        self.register_buffer("x", graph.x.float(), persistent=False)                # [V, F]
        self.register_buffer("edge_index", graph.edge_index.long(), persistent=False)  # [2, E]
        self.n_features, self.n_classes = int(graph.x.shape[1]), int(n_classes)
        self.activation, self.dropout = activation, float(dropout)
        widths = [self.n_features, *check_widths("hidden", hidden)]
        self.layers = nn.ModuleList(self._layer(i, o) for i, o in zip(widths, widths[1:]))
        self.dims = widths[1:]
        self.head = nn.Linear(widths[-1], self.n_classes) if task == "classify" else LinkHead(widths[-1])
        self.extra = [(0, 0.0)] * len(self.layers)       # per layer: (columns appended to its input, their value)

    def _layer(self, d_in: int, d_out: int) -> GraphLayer:
        pyg_nn = require("torch_geometric.nn", *PYG[1:])
        name, kwargs = self.conv
        return GraphLayer(getattr(pyg_nn, name)(d_in, d_out, **kwargs), self.activation, self.dropout)

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def widen_input(self, k: int, fill: float = 0.0, layer: int = 0) -> None:
        """Rebuild `layer` with k more input columns; the model's own pass appends k columns of `fill` there."""
        d_in = self.n_features if layer == 0 else self.dims[layer - 1]
        self.layers[layer] = self._layer(d_in + int(k), self.dims[layer]).to(self.x.device)
        self.extra[layer] = (int(k), float(fill))

    def pad(self, h: Tensor, layer: int) -> Tensor:
        """h [V', d] with the fill columns `layer` was widened by appended (unchanged if none)."""
        k, fill = self.extra[layer]
        return h if not k else torch.cat([h, h.new_full((len(h), k), fill)], 1)

    def encode(self, node_ids: Tensor | None = None) -> Tensor:
        """The input node features [V, F] of the whole graph (+ layer 1's extra columns, see widen_input)."""
        return self.pad(self.x, 0)

    def check_ids(self, x: Tensor) -> Tensor:
        """Node ids [B] (classify) or node pairs [B, 2] (link) as int64, or one ConfigError."""
        want = 1 if self.task == "classify" else 2
        if x.is_floating_point() or x.dim() != want or (want == 2 and x.shape[1] != 2):
            what = "node ids [B]" if want == 1 else "node pairs [B, 2]"
            raise ConfigError(f"model {self.name} ({self.task}) takes {what} (int64), got a {x.dtype} tensor of "
                              f"shape {tuple(x.shape)}: use graph data ({GRAPH_DATA})")
        return x.long()

    def hidden_states(self, h: Tensor | None = None, edge_index: Tensor | None = None) -> list[Tensor]:
        """[h_1, ..., h_L], each [V', d_l], from h_0 (default: encode()) over edge_index (default: the graph)."""
        h = self.encode() if h is None else h
        edge_index = self.edge_index if edge_index is None else edge_index
        out = []
        for i, layer in enumerate(self.layers):
            h = layer(h if i == 0 else self.pad(h, i), edge_index)
            out.append(h)
        return out

    def readout(self, h: Tensor, x: Tensor) -> Tensor:
        """Features [B, d] of the requested samples from node embeddings h [V', d]: the rows h[ids] (classify) or
        the Hadamard product of each pair's embeddings, h[u] * h[v] (link)."""
        x = self.check_ids(x)
        return h[x] if self.task == "classify" else h[x[:, 0]] * h[x[:, 1]]

    def features(self, x: Tensor) -> Tensor:
        """h_L read out for the requested nodes or pairs [B, d_L] (the full graph is propagated)."""
        return self.readout(self.hidden_states()[-1], x)

    def forward(self, node_ids: Tensor) -> Tensor:
        return self.head(self.features(node_ids))


class GCN(GNN):
    """Graph convolutional network: GCNConv (symmetric normalisation, self loops) -> activation, per layer."""

    name = "gcn"
    conv = ("GCNConv", {})


class GraphSAGE(GNN):
    """GraphSAGE with the mean aggregator: SAGEConv (root weight + mean of neighbours) -> activation."""

    name = "sage"
    conv = ("SAGEConv", {"aggr": "mean"})


__all__ = ["GCN", "GNN", "GraphLayer", "GraphSAGE", "LinkHead"]
