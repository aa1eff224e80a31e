"""bioplaus.neurons — spiking neurons, their one step function, surrogates and input encoders.

    from bioplaus.neurons import make_neuron
    lif = make_neuron("lif", tau=2.0)                 # multi-step: x [T, B, ...] -> spikes [T, B, ...]
    s, u, h = lif.step(None, x_t)                     # one pure step (charge -> fire -> reset)

- `native`: IF, LIF, PLIF, gated LIF (BaseNeuron: multi-step through the fused `leaky_scan` kernel, one step
  through `step.neuron_step`).
- `step`: `neuron_step`, the single-step update every single-step user shares (neurons, TESS, e-prop).
- `adapters`: SpikingJelly and snnTorch neurons behind the same interface (`sj_if`, `sj_lif`, `sj_plif`,
  `snntorch_leaky`).
- `surrogate`: Heaviside forward, surrogate derivative backward (`spike`), over the kernels' table.
- `encoding`: static input -> spike train [T, B, ...] (direct, rate, latency, given); `per_step` runs a layer
  once for a time-invariant (direct-encoded) input.

`NEURONS` (native) and `ADAPTERS` together are the registry of `neuron.kind` names.
"""
from __future__ import annotations

from bioplaus.errors import ConfigError
from bioplaus.neurons.adapters import ADAPTERS
from bioplaus.neurons.native import NEURONS, BaseNeuron, GatedLIFNode, IFNode, LIFNode, PLIFNode
from bioplaus.neurons.step import neuron_step

KINDS: dict[str, type[BaseNeuron]] = {**NEURONS, **ADAPTERS}


def make_neuron(kind: str = "lif", size: int | None = None, **kw) -> BaseNeuron:
    """Build a neuron by name (see KINDS: native neurons and the SpikingJelly / snnTorch adapters); `size`
    (channels) goes to neurons with learnable per-channel parameters. Unknown names and bad arguments give
    ConfigError."""
    if kind not in KINDS:
        raise ConfigError(f"unknown neuron '{kind}': choose one of {', '.join(KINDS)}")
    cls = KINDS[kind]
    if cls.needs_size:
        if size is None:
            raise ConfigError(f"neuron '{kind}' needs the layer width: build it with make_neuron(kind, size=...)")
        kw["size"] = size
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"neuron '{kind}': {e}") from None


__all__ = ["ADAPTERS", "KINDS", "NEURONS", "BaseNeuron", "GatedLIFNode", "IFNode", "LIFNode", "PLIFNode",
           "make_neuron", "neuron_step"]
