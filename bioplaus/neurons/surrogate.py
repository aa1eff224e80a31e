"""Surrogate spike functions as thin modules over the table in `bioplaus.kernels.surrogate`.

`spike(x, name, alpha)` is the Heaviside step s = [x >= 0] in the forward pass and the surrogate
derivative g'(x) in the backward pass (see the kernel table's docstring for every g and g').
Names: atan (SpikingJelly ATan, alpha 2), sigmoid (SpikingJelly Sigmoid, alpha 4), fast_sigmoid
(snnTorch fast_sigmoid, slope 25), triangle (alpha 1).
"""
from __future__ import annotations

import torch
from torch import Tensor

from bioplaus.errors import ConfigError
from bioplaus.kernels.surrogate import SURROGATES, SurrogateSpec, lookup

__all__ = ["SURROGATES", "Surrogate", "SurrogateSpec", "get", "spike"]


def get(name: str) -> SurrogateSpec:
    """Look a surrogate up by name; an unknown name raises ConfigError listing the known ones."""
    try:
        return lookup(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, spec: SurrogateSpec, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.spec, ctx.alpha = spec, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.spec.grad(x, ctx.alpha), None, None


def spike(x: Tensor, name: str = "atan", alpha: float | None = None) -> Tensor:
    """Heaviside forward, surrogate backward: s = [x >= 0], ds/dx := g'(x). Any shape."""
    spec = get(name)
    return _Spike.apply(x, spec, spec.alpha if alpha is None else float(alpha))


class Surrogate(torch.nn.Module):
    """Module shell over `spike`, e.g. `Surrogate("sigmoid", alpha=4.0)(h - threshold)`."""

    def __init__(self, name: str = "atan", alpha: float | None = None):
        super().__init__()
        spec = get(name)
        self.name, self.alpha = spec.name, spec.alpha if alpha is None else float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return spike(x, self.name, self.alpha)

    def extra_repr(self) -> str:
        return f"{self.name}, alpha={self.alpha}"
