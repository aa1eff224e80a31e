"""Layered networks (the shared skeleton is `bioplaus.models.base`).

Every model exposes `encode`, `layers` (ModuleList, h_{l-1} -> h_l), `head`, `pool`, `dims`, `n_classes`,
`spiking`, `task` and `name`, so layer-local rules can train any of them.

- `base`: Layered, Readout, pool, activations.
- `classic`: MLP, ConvNet, SpikingMLP, SpikingConvNet.
- `recurrent`: RecurrentSpikingNet (one recurrent LIF layer; e-prop's model).
- `vision`: SpikingVGG (VGG-11-style) and SEWResNet, spiking ConvNets for CIFAR and event-camera frames.
- `graph`: GCN, GraphSAGE (node classification on one graph; torch_geometric, the `graph` extra).
- `gated`: GatedMLP (GLU blocks); `spikformer`: Spikformer, SpikeDrivenTransformer; `sequence`: GatedLM
  (HGRN / GLA mixers); `spikegpt`: SpikingRWKV. Select any in configs by its full path, e.g.
  `bioplaus.models.classic.MLP`.
"""
from bioplaus.models.base import Layered, Readout, count_parameters, pool
from bioplaus.models.classic import MLP, ConvNet, SpikingConvNet, SpikingLayered, SpikingMLP
from bioplaus.models.graph import GCN, GNN, GraphSAGE
from bioplaus.models.recurrent import RecurrentSpikingNet
from bioplaus.models.vision import SEWResNet, SpikingVGG

__all__ = ["MLP", "ConvNet", "Layered", "Readout", "SpikingConvNet", "SpikingLayered", "SpikingMLP",
           "count_parameters", "pool", "RecurrentSpikingNet", "GCN", "GNN", "GraphSAGE",
           "SEWResNet", "SpikingVGG"]
