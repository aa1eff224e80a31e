"""Surrogate-gradient table shared by every spike kernel (pure functions, no modules).

Surrogate gradients for the spike nonlinearity s = H(x), x = h - threshold.

Forward is always the Heaviside step H(x) = [x >= 0]. Backward replaces H'(x) = δ(x) by the derivative
of a smooth primitive g(x). Each surrogate is one row of `SURROGATES`: its primitive g, its
hand-written derivative g', a default alpha, and a small integer id (the id Triton kernels use).
A test checks that autograd of g equals the hand-written g' for every surrogate.

| name         | g(x)                                   | g'(x)                                  | alpha |
|--------------|----------------------------------------|----------------------------------------|-------|
| atan         | atan(pi/2 * a x) / pi + 1/2            | a / 2 / (1 + (pi/2 * a x)^2)           | 2.0   |
| sigmoid      | sigmoid(a x)                           | a * sigmoid(a x) * (1 - sigmoid(a x))  | 4.0   |
| fast_sigmoid | x / (1 + a |x|)                        | 1 / (1 + a |x|)^2                      | 25.0  |
| triangle     | piecewise quadratic, clamped to [0, 1] | a * max(0, 1 - a |x|)                  | 1.0   |

atan and sigmoid equal SpikingJelly's `surrogate.ATan` / `surrogate.Sigmoid`; fast_sigmoid equals
snnTorch's `surrogate.fast_sigmoid(slope=a)`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def _atan_prim(x: Tensor, a: float) -> Tensor:
    return torch.atan(math.pi / 2 * a * x) / math.pi + 0.5


def _atan_grad(x: Tensor, a: float) -> Tensor:
    return (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)


def _sigmoid_prim(x: Tensor, a: float) -> Tensor:
    return torch.sigmoid(a * x)


def _sigmoid_grad(x: Tensor, a: float) -> Tensor:
    s = torch.sigmoid(a * x)
    return a * s * (1 - s)


def _fast_sigmoid_prim(x: Tensor, a: float) -> Tensor:
    return x / (1 + a * x.abs())


def _fast_sigmoid_grad(x: Tensor, a: float) -> Tensor:
    return 1 / (1 + a * x.abs()) ** 2


def _triangle_prim(x: Tensor, a: float) -> Tensor:
    z = (a * x).clamp(-1, 1)
    return 0.5 + z - 0.5 * z * z.abs()


def _triangle_grad(x: Tensor, a: float) -> Tensor:
    return a * (1 - a * x.abs()).clamp(min=0)


@dataclass(frozen=True)
class SurrogateSpec:
    name: str
    id: int
    alpha: float
    primitive: Callable[[Tensor, float], Tensor]
    grad: Callable[[Tensor, float], Tensor]


SURROGATES: dict[str, SurrogateSpec] = {
    s.name: s
    for s in (
        SurrogateSpec("atan", 0, 2.0, _atan_prim, _atan_grad),
        SurrogateSpec("sigmoid", 1, 4.0, _sigmoid_prim, _sigmoid_grad),
        SurrogateSpec("fast_sigmoid", 2, 25.0, _fast_sigmoid_prim, _fast_sigmoid_grad),
        SurrogateSpec("triangle", 3, 1.0, _triangle_prim, _triangle_grad),
    )
}


def lookup(name: str) -> SurrogateSpec:
    """Surrogate by name (case-insensitive, '-' == '_'); ValueError listing the known names."""
    key = str(name).lower().replace("-", "_")
    if key not in SURROGATES:
        raise ValueError(f"unknown surrogate '{name}': choose one of {', '.join(SURROGATES)}")
    return SURROGATES[key]
