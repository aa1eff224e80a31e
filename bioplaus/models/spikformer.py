"""Spiking transformers for images, layered: Spikformer (Zhou et al. 2023) and the Spike-driven
Transformer (Yao et al. 2023). Blocks live in `bioplaus.blocks.spiking_attention`.

    h_0 = encode(x)                    x [B, C, H, W] -> [T, B, C, H, W] (direct: repeated; rate: spikes)
    layers[0]   spiking patch stem     [T, B, C, H, W] -> tokens [T, B, N, D], N = (H/p)(W/p)
    layers[1..] one transformer block  [T, B, N, D] -> [T, B, N, D]
    head        mean over tokens (and, spike-driven, a neuron), Linear, mean over T -> logits [B, n_classes]

Stems (convs are 3x3, same padding, no bias, BatchNorm after each; run on the merged [T * B] axis):

    Spikformer    s = SN(BN(conv(x))) per entry of [*stem_channels, D], maxpool(p)          spikes
                  tokens = s + SN(BN(conv_rpe(s)))                      relative-position conv; values 0..2
    spike-driven  u = SN(BN(conv(...))) for all but the last entry, then BN(conv(.)), maxpool(p)   real
                  tokens = u + BN(conv_rpe(SN(u)))                      membrane: the next block fires first

The residual streams carry integer spike sums (Spikformer) or membrane potentials (spike-driven), not
binary spikes; spikes live inside every branch. `model.pool(h)` = mean over T and tokens -> [B, D],
`model.dims` = [D] * (depth + 1). `neuron` is any `make_neuron` config (native kinds or the SpikingJelly
/ snnTorch adapters); the attention neurons (SSA's SN_attn, SDSA's SN_kv) fire at `attn_threshold`.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bioplaus.blocks.spiking_attention import SpikeDrivenBlock, SpikformerBlock, token_neuron
from bioplaus.errors import ConfigError
from bioplaus.models.classic import SpikingLayered
from bioplaus.neurons import make_neuron
from bioplaus.neurons.encoding import per_step


def _check(in_shape: Sequence[int], dim: int, depth: int, patch: int) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ConfigError(f"spiking transformers need image data [C, H, W], got input shape {list(in_shape)}")
    c, h, w = (int(s) for s in in_shape)
    if int(patch) < 1 or h % int(patch) or w % int(patch):
        raise ConfigError(f"model.patch={patch} must be >= 1 and divide the image size {h}x{w}")
    if int(dim) < 1 or int(depth) < 0:
        raise ConfigError(f"model.dim must be >= 1 and model.depth >= 0, got dim={dim}, depth={depth}")
    return c, h, w


class ConvBN(nn.Module):
    """Conv3x3 (no bias) -> BatchNorm on [T, B, C, H, W] (merged over T * B; the conv once for an input that
    repeats one step, see `per_step`)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(per_step(self.conv, x).flatten(0, 1)).unflatten(0, x.shape[:2])


def _maxpool(x: Tensor, p: int) -> Tensor:
    return nn.functional.max_pool2d(x.flatten(0, 1), p).unflatten(0, x.shape[:2]) if p > 1 else x


def _tokens(x: Tensor) -> Tensor:
    """[T, B, D, h, w] -> [T, B, h*w, D]."""
    return x.flatten(-2).transpose(-2, -1)


class SpikformerStem(nn.Module):
    """Spiking patch splitting: [T, B, C, H, W] -> [T, B, N, D] (binary spikes plus an RPE spike map)."""

    def __init__(self, c_in: int, channels: Sequence[int], patch: int, neuron: dict):
        super().__init__()
        chans = [c_in, *channels]
        self.convs = nn.ModuleList(ConvBN(i, o) for i, o in zip(chans, chans[1:]))
        self.sns = nn.ModuleList(make_neuron(size=o, **neuron) for o in channels)
        self.patch = int(patch)
        self.rpe, self.rpe_sn = ConvBN(chans[-1], chans[-1]), make_neuron(size=chans[-1], **neuron)

    def forward(self, x: Tensor) -> Tensor:
        for conv, sn in zip(self.convs, self.sns):
            x = sn(conv(x))
        s = _maxpool(x, self.patch)
        return _tokens(s + self.rpe_sn(self.rpe(s)))


class SpikeDrivenStem(nn.Module):
    """Spike-driven patch splitting: [T, B, C, H, W] -> membrane tokens [T, B, N, D] (real)."""

    def __init__(self, c_in: int, channels: Sequence[int], patch: int, neuron: dict):
        super().__init__()
        chans = [c_in, *channels]
        self.convs = nn.ModuleList(ConvBN(i, o) for i, o in zip(chans, chans[1:]))
        self.sns = nn.ModuleList(make_neuron(size=o, **neuron) for o in channels[:-1])
        self.patch = int(patch)
        self.rpe_sn, self.rpe = make_neuron(size=chans[-1], **neuron), ConvBN(chans[-1], chans[-1])

    def forward(self, x: Tensor) -> Tensor:
        for conv, sn in zip(self.convs[:-1], self.sns):
            x = sn(conv(x))
        u = _maxpool(self.convs[-1](x), self.patch)
        return _tokens(u + self.rpe(self.rpe_sn(u)))


class SpikingTokenReadout(nn.Module):
    """Head: [T, B, N, D] -> mean over tokens [T, B, D] -> (SN, when a neuron is given) -> Linear -> mean
    over T -> logits [B, n_classes]."""

    def __init__(self, dim: int, n_classes: int, neuron: dict | None = None):
        super().__init__()
        self.sn = token_neuron(neuron) if neuron is not None else None
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, h: Tensor) -> Tensor:
        m = h.mean(2)
        return self.linear(m if self.sn is None else self.sn(m)).mean(0)


class _SpikingTransformer(SpikingLayered):
    def _finish(self, in_shape: Sequence[int], stem: nn.Module, blocks: list[nn.Module], dim: int, n_classes: int,
                head: nn.Module):
        self.in_shape = tuple(int(d) for d in in_shape)
        self.layers = nn.ModuleList([stem, *blocks])
        self.dims, self.n_classes = [int(dim)] * len(self.layers), int(n_classes)
        self.head = head

    def pool(self, h: Tensor) -> Tensor:
        """[T, B, N, D] -> [B, D]: mean over time and tokens."""
        return h.mean((0, 2))


class Spikformer(_SpikingTransformer):
    """Spikformer: SpikformerStem -> depth x SpikformerBlock (SSA + spiking MLP) -> token/time mean readout."""

    name = "spikformer"

    def __init__(self, in_shape: Sequence[int], n_classes: int, dim: int = 32, depth: int = 1, heads: int = 1,
                 mlp_ratio: float = 4.0, patch: int = 2, stem_channels: Sequence[int] | None = None, T: int = 4,
                 encoding: str = "direct", neuron: dict | None = None, scale: float = 0.125,
                 attn_threshold: float = 0.5):
        super().__init__()
        c, _, _ = _check(in_shape, dim, depth, patch)
        nrn = self._setup_time(T, encoding, neuron)
        chans = [*(int(ch) for ch in stem_channels or ()), int(dim)]
        blocks = [SpikformerBlock(int(dim), nrn, heads, mlp_ratio, scale, attn_threshold) for _ in range(int(depth))]
        self._finish(in_shape, SpikformerStem(c, chans, patch, nrn), blocks, dim, n_classes,
                     SpikingTokenReadout(int(dim), n_classes))


class SpikeDrivenTransformer(_SpikingTransformer):
    """Spike-driven Transformer: SpikeDrivenStem -> depth x SpikeDrivenBlock (SDSA + membrane MLP) ->
    readout with a neuron on the token mean (head_neuron=false drops it)."""

    name = "spike_driven"

    def __init__(self, in_shape: Sequence[int], n_classes: int, dim: int = 32, depth: int = 1,
                 mlp_ratio: float = 4.0, patch: int = 2, stem_channels: Sequence[int] | None = None, T: int = 4,
                 encoding: str = "direct", neuron: dict | None = None, attn_threshold: float = 0.5,
                 head_neuron: bool = True):
        super().__init__()
        c, _, _ = _check(in_shape, dim, depth, patch)
        nrn = self._setup_time(T, encoding, neuron)
        chans = [*(int(ch) for ch in stem_channels or ()), int(dim)]
        blocks = [SpikeDrivenBlock(int(dim), nrn, mlp_ratio, attn_threshold) for _ in range(int(depth))]
        self._finish(in_shape, SpikeDrivenStem(c, chans, patch, nrn), blocks, dim, n_classes,
                     SpikingTokenReadout(int(dim), n_classes, nrn if head_neuron else None))


__all__ = ["SpikeDrivenStem", "SpikeDrivenTransformer", "Spikformer", "SpikformerStem", "SpikingTokenReadout"]
