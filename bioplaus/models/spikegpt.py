"""SpikingRWKV: a SpikeGPT-style spiking language model (RWKV-4 blocks with spiking residual branches,
bioplaus.blocks.spiking_rwkv) on the layered skeleton.

Time-major, the token axis is the SNN time axis (T = L, the data's sequence length):

    h_0 = encode(x)                     LayerNorm(Embedding(V, D)(x)) -> [L, B, D]   (patches [B, L, P]: Linear)
    h_l = layers[l-1](h_{l-1})          SpikingRWKVBlock [L, B, D]: the stream plus the spikes of its two branches
    logits = head(h_L)                  Linear(LayerNorm(h_L)) -> [B, L, V]   (classify: token mean -> [B, C])

`model.T` = L, so the statistics layer records spikes per token position; `pool(h)` is [B, L, D] per
token (lm) or [B, D] (classify), `dims` = [D] * n_layers. Neurons come from the `neuron` config key
(kind: lif | if | plif | gated_lif, tau, threshold, surrogate, backend), as the spiking MLP's.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bioplaus.blocks.common import make_norm
from bioplaus.blocks.spiking_rwkv import SpikingRWKVBlock
from bioplaus.errors import ConfigError
from bioplaus.models.base import Layered
from bioplaus.models.sequence import SequenceEncoder, SequenceHead, sequence_task


class SpikingRWKV(Layered):
    """Embedding -> n_layers x SpikingRWKVBlock -> LayerNorm -> linear head (see the module docstring)."""

    name = "spiking_rwkv"
    spiking = True

    def __init__(self, in_shape: Sequence[int], n_classes: int, dim: int = 128, n_layers: int = 2,
                 ffn_mult: float = 4.0, out_gain: float = 8.0, neuron: dict | None = None, norm: str = "layer"):
        super().__init__()
        self.in_shape = tuple(int(d) for d in in_shape)
        self.task = sequence_task(self.name, self.in_shape)
        if int(dim) < 1 or int(n_layers) < 1:
            raise ConfigError(f"model.dim and model.n_layers must be >= 1, got {dim}, {n_layers}")
        dim, n_layers = int(dim), int(n_layers)
        nrn = {"kind": "lif", **(dict(neuron) if neuron else {})}
        self.T, self.n_classes, self.dims = self.in_shape[0], int(n_classes), [dim] * n_layers
        self.encoder = SequenceEncoder(self.task, self.in_shape, self.n_classes, dim, time_major=True)
        self.norm0 = make_norm(norm, dim)
        self.layers = nn.ModuleList(SpikingRWKVBlock(dim, nrn, ffn_mult, i / max(n_layers - 1, 1), out_gain, norm)
                                    for i in range(n_layers))
        self.head = SequenceHead(self.task, dim, self.n_classes, norm, time_major=True)

    def encode(self, x: Tensor) -> Tensor:
        return self.norm0(self.encoder(x))

    def pool(self, h: Tensor) -> Tensor:
        return self.head.pool(h)
