"""Graph neural networks for transductive node classification: GCN and GraphSAGE, layered.

Graphs are node-major: node features [V, F], edge_index [2, E] (bioplaus.data.graphs). A graph model is
built with the whole graph (`graph=...`, any object with `x` and `edge_index`: graph data hand it over in
`Dataset.model_kwargs()`) and keeps it as buffers (not in the state_dict: the data rebuild it). Its input is a
batch of node ids [B] int64:

    h_0 = model.encode()                               x [V, F] (+ model.extra_inputs columns, see below)
    h_l = model.layers[l-1](h_{l-1}, edge_index)       [V, d_l]: conv -> activation, over the full graph
    model.features(node_ids) = h_L[node_ids]           [B, d_L]
    logits = model.head(features)                      [B, C]   (nn.Linear; = Linear on h_L, then indexed)

Layers (torch_geometric convs, then the activation; optional dropout on the layer input in training):
- GCN (Kipf & Welling 2017):   H' = act(D^-1/2 (A + I) D^-1/2 H W + b),  D the degrees of A + I
- GraphSAGE (Hamilton et al. 2017, mean aggregator):  h'_v = act(W_r h_v + W_n mean_{u -> v} h_u + b)

`model.dims[l]` is the width of h_{l+1}; `model.n_classes`; `model.graph_model` is True (bioplaus.run
checks graph models meet graph data and vice versa). A layer takes any node set and edge set with the
right widths, so a rule may run it on an augmented graph (ForwardGNN's virtual class nodes).
Whether a model fits graph data is decided once, by bioplaus-run, from the class attribute `graph_model`.

`widen_input(k, fill)`: a rule that appends k columns to the node features (ForwardGNN's label appending)
rebuilds layer 1 with F + k inputs; `encode()` then appends `fill` (e.g. the uniform label 1/C) so
model(node_ids) still runs.

torch_geometric is imported only when a model is built; without it one ConfigError names the extra.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bioplaus.errors import ConfigError, require
from bioplaus.models.base import Layered, check_widths, make_activation

GRAPH_DATA = "data=sbm, data=karate or data=pyg"
PYG = ("torch_geometric", "graph models need", "install the graph extra: pip install -e '.[graph]'")


class GraphLayer(nn.Module):
    """Dropout -> conv -> activation: h [V, d_in], edge_index [2, E] -> [V, d_out] (the full node set)."""

    def __init__(self, conv: nn.Module, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.conv, self.act, self.drop = conv, make_activation(activation), nn.Dropout(dropout)

    def forward(self, h: Tensor, edge_index: Tensor) -> Tensor:
        return self.act(self.conv(self.drop(h), edge_index))


class GNN(Layered):
    """Base class: a stack of GraphLayers over one graph, and a linear head on the requested nodes."""

    graph_model = True
    name = "gnn"
    conv: tuple[str, dict] = ("GCNConv", {})     # the torch_geometric.nn layer of each block, and its keywords

    def __init__(self, in_shape: Sequence[int], n_classes: int, graph=None,
                 hidden: Sequence[int] = (128, 128), activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        if graph is None:
            raise ConfigError(f"model {self.name} is a graph model and needs graph data: use {GRAPH_DATA}")
        require(*PYG)
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
        self.head = nn.Linear(widths[-1], self.n_classes)
        self.extra_inputs = 0

    def _layer(self, d_in: int, d_out: int) -> GraphLayer:
        pyg_nn = require("torch_geometric.nn", *PYG[1:])
        name, kwargs = self.conv
        return GraphLayer(getattr(pyg_nn, name)(d_in, d_out, **kwargs), self.activation, self.dropout)

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def widen_input(self, k: int, fill: float = 0.0) -> None:
        """Rebuild layer 1 for F + k input columns; encode() appends k columns of `fill`."""
        self.layers[0] = self._layer(self.n_features + int(k), self.dims[0]).to(self.x.device)
        self.extra_inputs, self.extra_fill = int(k), float(fill)

    def encode(self, node_ids: Tensor | None = None) -> Tensor:
        """The input node features [V, F] (+ extra_inputs columns of extra_fill) of the whole graph."""
        if not self.extra_inputs:
            return self.x
        return torch.cat([self.x, self.x.new_full((self.num_nodes, self.extra_inputs), self.extra_fill)], 1)

    def check_ids(self, node_ids: Tensor) -> Tensor:
        if node_ids.is_floating_point() or node_ids.dim() != 1:
            raise ConfigError(f"model {self.name} takes node ids [B] (int64), got a {node_ids.dtype} tensor of shape "
                              f"{tuple(node_ids.shape)}: use graph data ({GRAPH_DATA})")
        return node_ids.long()

    def hidden_states(self, h: Tensor | None = None, edge_index: Tensor | None = None) -> list[Tensor]:
        """[h_1, ..., h_L], each [V', d_l], from h_0 (default: encode()) over edge_index (default: the graph)."""
        h = self.encode() if h is None else h
        edge_index = self.edge_index if edge_index is None else edge_index
        out = []
        for layer in self.layers:
            h = layer(h, edge_index)
            out.append(h)
        return out

    def features(self, node_ids: Tensor) -> Tensor:
        """h_L of the requested nodes [B, d_L] (the full graph is propagated)."""
        return self.hidden_states()[-1][self.check_ids(node_ids)]

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


__all__ = ["GCN", "GNN", "GraphLayer", "GraphSAGE"]
