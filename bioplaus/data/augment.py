"""Training-time augmentation on the batch tensor: random crop with zero padding and horizontal flip.

    aug = Augment(padding=4, flip=True)
    xb = aug(xb, generator)          # xb [B, ..., H, W] on any device; the same shape back

Per sample i (drawn from `generator`, a CPU torch.Generator, so a seed gives the same crops on CPU and GPU):
offsets (dy_i, dx_i) uniform in 0..2*padding and a flip bit f_i ~ Bernoulli(1/2). The batch is zero-padded by
`padding` on both sides of its last two axes and sample i keeps the window rows dy_i..dy_i+H-1, columns
dx_i..dx_i+W-1 (so a shift of up to `padding` pixels each way), mirrored left-right where f_i = 1. Every axis
between the batch and the last two (channels, and time for event frames) gets sample i's same crop and flip.

Padding is applied to the batch as it arrives, i.e. after normalisation: a padded pixel is 0, the training
set's mean colour (torchvision pads the raw image with black before normalising; the difference is a
constant offset on the border pixels).

The trainer applies a dataset's `augment` to each training batch only (`bioplaus.data.batches(...,
augment=data.augment)`), drawing from the run's seeded generator, on the global batch before any data-parallel
split, so a seed fixes the crops; evaluation never augments.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.errors import ConfigError


@dataclass
class Augment:
    """Random crop (shift by up to `padding` pixels, zero fill) and random horizontal flip (module docstring)."""

    padding: int = 4
    flip: bool = True

    def __post_init__(self):
        if int(self.padding) < 0:
            raise ConfigError(f"data.crop_padding must be >= 0, got {self.padding}")
        self.padding = int(self.padding)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(dy [n], dx [n], flip [n] bool): the random parameters for n samples, on the CPU."""
        p = self.padding
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flip = (torch.rand(n, generator=generator) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        return dy, dx, flip

    def apply(self, x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor) -> Tensor:
        """x [B, ..., H, W] cropped at (dy, dx) from the zero-padded batch and flipped where `flip`."""
        if x.dim() < 3:
            raise ConfigError(f"crop/flip augmentation needs images [B, ..., H, W], got a batch {list(x.shape)}")
        B, H, W, p = x.shape[0], x.shape[-2], x.shape[-1], self.padding
        dy, dx, flip = dy.to(x.device), dx.to(x.device), flip.to(x.device)
        flat = x.reshape(B, -1, H, W)
        padded = F.pad(flat, (p, p, p, p)) if p else flat
        rows = dy[:, None] + torch.arange(H, device=x.device)                       # [B, H]
        cols = dx[:, None] + torch.arange(W, device=x.device)                       # [B, W]
        cols = torch.where(flip[:, None], cols.flip(1), cols)                        # mirrored window
        b = torch.arange(B, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]     # [B, H, W, C']
        return out.permute(0, 3, 1, 2).reshape(x.shape)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(x, *self.draw(len(x), generator))


def make_augment(augment: bool, padding: int = 4, flip: bool = True) -> Augment | None:
    """The Augment a data config asks for (data.augment, data.crop_padding, data.flip), or None."""
    return Augment(padding, flip) if augment else None


__all__ = ["Augment", "make_augment"]
