"""Layered networks (see `bioplaus.models.classic` for the shared skeleton).

Every model exposes `encode`, `layers` (ModuleList, h_{l-1} -> h_l), `head`, `pool`, `dims`,
`n_classes` and `spiking`, so layer-local rules can train any of them.

- `classic`: MLP, ConvNet, SpikingMLP, SpikingConvNet.
- `graph`: GCN, GraphSAGE (node classification on one graph; torch_geometric, the `graph` extra).
- further families live in sibling modules (dense gated blocks, spiking transformers, sequence
  models) and are selected in configs by their full path, e.g. `bioplaus.models.classic.MLP`.
"""
from bioplaus.models.classic import (
    MLP,
    ConvNet,
    Layered,
    Readout,
    SpikingConvNet,
    SpikingMLP,
    count_parameters,
    pool,
)
from bioplaus.models.graph import GCN, GraphSAGE
from bioplaus.models.recurrent import RecurrentSpikingNet

__all__ = ["MLP", "ConvNet", "Layered", "Readout", "SpikingConvNet", "SpikingMLP", "count_parameters", "pool",
           "RecurrentSpikingNet", "GCN", "GraphSAGE"]
