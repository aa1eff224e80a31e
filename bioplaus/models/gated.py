"""GatedMLP: a dense gated (GLU-family) network for images, layered like every bioplaus model.

    x [B, C, H, W] -> tokens [B, N, P]     patch=p: N = (H/p)(W/p) patches of P = C p^2 pixels
                                           patch=null: the flattened image, N = 1, P = C H W
    layers[0]  Embed:   h = tokens W_e + b (+ a learned position embedding when N > 1)    [B, N, D]
    layers[l]  Block:   h = h + GLU(norm(h))    GLU(x) = W_down(act(W_gate x) * (W_up x)),
                        act = silu (kind=swiglu) | gelu (geglu) | sigmoid (glu)           [B, N, D]
    head       logits = W_o norm(mean_n h) + c                                            [B, n_classes]

`model.pool(h)` = mean over tokens -> [B, D]; `model.dims` = [D] * (depth + 1). The GLU mixes channels
only, so with patches the tokens meet only in the head's mean (a bag of positioned patches); token
mixers (gated recurrences, linear attention) are separate blocks.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bioplaus.blocks.common import GLU, PreNormResidual, make_norm
from bioplaus.errors import ConfigError
from bioplaus.models.base import Layered


def patchify(x: Tensor, patch: int | None) -> Tensor:
    """[B, C, H, W] (or [B, F]) -> [B, N, P]: non-overlapping p x p patches in raster order, or one token."""
    if patch is None or x.dim() < 4:
        return x.flatten(1).unsqueeze(1)
    p = int(patch)
    t = x.unfold(2, p, p).unfold(3, p, p)                     # [B, C, H/p, W/p, p, p]
    return t.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)


def n_patches(in_shape: Sequence[int], patch: int | None) -> tuple[int, int]:
    """(N tokens, P features per token) for an input shape, with a ConfigError for sizes that do not tile."""
    if patch is None:
        return 1, int(math.prod(in_shape))
    if len(in_shape) != 3:
        raise ConfigError(f"model.patch needs image data [C, H, W], got input shape {list(in_shape)}; "
                          "set model.patch=null to flatten")
    c, h, w = in_shape
    p = int(patch)
    if p < 1 or h % p or w % p:
        raise ConfigError(f"model.patch={patch} must be >= 1 and divide the image size {h}x{w}")
    return (h // p) * (w // p), c * p * p


class PatchEmbed(nn.Module):
    """Image -> tokens [B, N, D]: patchify, Linear(P -> D), plus a learned position embedding (N > 1)."""

    def __init__(self, in_shape: Sequence[int], dim: int, patch: int | None):
        super().__init__()
        self.patch = None if patch is None else int(patch)
        n, p = n_patches(in_shape, patch)
        self.linear = nn.Linear(p, dim)
        self.pos = nn.Parameter(torch.zeros(n, dim)) if n > 1 else None
        if self.pos is not None:
            nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(patchify(x, self.patch))
        return h if self.pos is None else h + self.pos


class TokenReadout(nn.Module):
    """Head: mean over tokens, norm, Linear -> logits [B, C]."""

    def __init__(self, dim: int, n_classes: int, norm: str):
        super().__init__()
        self.norm, self.linear = make_norm(norm, dim), nn.Linear(dim, n_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(self.norm(h.mean(-2)))


class GatedMLP(Layered):
    """PatchEmbed -> depth x PreNormResidual(GLU) -> TokenReadout (see module docstring)."""

    name = "gated_mlp"

    def __init__(self, in_shape: Sequence[int], n_classes: int, dim: int = 128, depth: int = 2,
                 hidden: int | None = None, kind: str = "swiglu", norm: str = "rms", patch: int | None = None):
        super().__init__()
        if int(dim) < 1 or int(depth) < 1:
            raise ConfigError(f"model.dim and model.depth must be >= 1, got dim={dim}, depth={depth}")
        dim, self.in_shape = int(dim), tuple(int(d) for d in in_shape)
        blocks = [PreNormResidual(dim, GLU(dim, hidden, kind), norm) for _ in range(int(depth))]
        self.layers = nn.ModuleList([PatchEmbed(in_shape, dim, patch), *blocks])
        self.dims, self.n_classes = [dim] * len(self.layers), int(n_classes)
        self.head = TokenReadout(dim, self.n_classes, norm)

    def pool(self, h: Tensor) -> Tensor:
        return h.mean(-2)


__all__ = ["GatedMLP", "PatchEmbed", "TokenReadout", "n_patches", "patchify"]
