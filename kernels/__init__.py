"""bioplaus.kernels — pure ops with a naive reference beside each (no nn.Modules here).

- `leaky_scan`: h_t = a_t * v_{t-1} + b_t * x_t with optional spike/reset and surrogate backward.
- `surrogate`: the surrogate-gradient table every spiking kernel shares.
"""
from bioplaus.kernels.leaky_scan import BACKENDS, leaky_scan, leaky_scan_naive

__all__ = ["BACKENDS", "leaky_scan", "leaky_scan_naive"]
