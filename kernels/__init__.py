"""bioplaus.kernels — pure ops with a naive reference beside each (no nn.Modules here).

- `leaky_scan`: h_t = a_t * v_{t-1} + b_t * x_t with optional spike/reset and surrogate backward
  (torch reference with hand-written BPTT; Triton fused kernels in leaky_scan_triton).
- `gla`: gated linear attention with a matrix state (reference loop, Triton fused recurrent kernels in
  gla_triton, chunked log-space form).
- `surrogate`: the surrogate-gradient table every spiking kernel shares.
"""
from bioplaus.kernels.gla import gla, gla_chunked, gla_naive
from bioplaus.kernels.leaky_scan import BACKENDS, leaky_scan, leaky_scan_naive

__all__ = ["BACKENDS", "leaky_scan", "leaky_scan_naive", "gla", "gla_naive", "gla_chunked"]
