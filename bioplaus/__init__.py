"""bioplaus — compare how networks learn: backprop beside forward-only, biologically plausible rules.

Layers, bottom to top: bioplaus.kernels (pure ops) -> neurons, encoding, models, data ->
bioplaus.rules -> train, run, compare -> stats. Tensors are time-major: [T, B, ...].
"""
__version__ = "0.1.0"
