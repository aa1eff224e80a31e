"""TESS (Apolinario, Roy & Frenkel 2025): temporally and spatially local learning for spiking MLPs.

The network runs online, one step at a time with the state carried (no graph across steps, nothing of
length T kept). For layer l with input spikes x[t] (shape [B, d_in]) (the layer below's output, or step t of
the encoder), current I = W x + c, membrane u and the neuron's own charge u_h = a u + b I:

    s[t]   = H(u_h[t] - θ)                         spikes [B, d]
    ψ[t]   = g'(u_h[t] - θ)                        surrogate derivative (the neuron's, or `surrogate`)
    pre[t] = λ_pre pre[t-1] + x[t]                 presynaptic trace [B, d_in]
    post[t] = λ_post post[t-1] + ψ[t]              postsynaptic trace [B, d]

Spatially local learning signal (LSG): a fixed projection B_l [d, C] of the layer's own spikes to a
local classifier, columns square waves sign(sin(f_c k)), f_c = linspace(50, 512, C), k = 0..d-1,
scaled by 1/d; local loss CE(s[t] B_l / τ, y) at every step; m[t] = ∂L/∂s[t] = (softmax - onehot) B_lᵀ / τ.
Labels reach every layer at every step (the card's label-gating pitfall: the reference script passes
them to the local classifiers at almost no step, which silently turns it into spatial backprop).

Per-step weight gradient, accumulated over t and applied once per sequence (mean over batch and T):

    ∇W += α_pre (m[t] ⊙ ψ[t] b)ᵀ pre[t]  +  α_post (m[t] ⊙ post[t-1] b)ᵀ x[t]
    ∇c += α_pre (m[t] ⊙ ψ[t] b)ᵀ pre_1[t]        pre_1: the trace of a constant 1 input

The first term is causal (STDP-like pre-before-post); the second is the paper's non-causal term. With
λ_pre = a, α_post = 0 and a reset whose gradient is detached (soft reset, detach_reset), the causal term
is exactly the BPTT gradient of the layer's local losses (tested). Each layer's input is detached by
construction: no error crosses layers. The readout (model.head, a linear map of the time-averaged last
layer's spikes) learns from the label by its own gradient, on the running spike sum.

Memory: traces and membranes, O(B · Σ d_l), the same at any T (`state_bytes` reports them).
Models: SpikingMLP with if/lif/plif neurons (not gated_lif or the adapters: their charge is not the
(a, b) form above).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import SpikingMLP
from bioplaus.neurons.encoding import encode_step
from bioplaus.neurons.surrogate import get as get_surrogate
from bioplaus.rules.base import LearningRule, check_positive


def square_wave_projection(d: int, n_classes: int, f_lo: float = 50.0, f_hi: float = 512.0) -> Tensor:
    """B [d, C]: column c is sign(sin(f_c k)) for k = 0..d-1, f_c = linspace(f_lo, f_hi, C), scaled 1/d."""
    k = torch.arange(d, dtype=torch.float64).unsqueeze(1)
    f = torch.linspace(f_lo, f_hi, n_classes, dtype=torch.float64).unsqueeze(0)
    return (torch.sign(torch.sin(f * k)) / d).float()


class TESS(LearningRule):
    """TESS on a SpikingMLP. Hyperparameters as in the paper's `--factors-stdp` [λ_post, λ_pre, α_post, α_pre]
    (CIFAR: [0.2, 0.5, 1, 1]); `surrogate` None uses each neuron's own surrogate g (name, `alpha`)."""

    supported_models = (SpikingMLP,)

    def __init__(self, model: nn.Module, lam_pre: float = 0.5, lam_post: float = 0.2, alpha_pre: float = 1.0,
                 alpha_post: float = 1.0, temperature: float = 0.01, surrogate: str | None = None,
                 surrogate_alpha: float | None = None, lr_scale: float = 10.0):
        super().__init__(model)
        self.lr_scale = check_positive("lr_scale", lr_scale)
        for name, v in (("lam_pre", lam_pre), ("lam_post", lam_post)):
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"rule.{name} is a trace decay and must be in [0, 1), got {v}")
        if temperature <= 0:
            raise ConfigError(f"rule.temperature must be > 0, got {temperature}")
        if alpha_pre == 0 and alpha_post == 0:
            raise ConfigError("rule.alpha_pre and rule.alpha_post are both 0: nothing would learn; set one")
        for i, layer in enumerate(model.layers):
            nrn = layer.neuron
            if not nrn.pure_step:
                raise ConfigError(f"TESS needs if, lif or plif neurons (charge a*u + b*I); layer {i} has "
                                  f"{type(nrn).__name__}: set model.neuron.kind=lif")
        self.lam_pre, self.lam_post = float(lam_pre), float(lam_post)
        self.alpha_pre, self.alpha_post, self.temperature = float(alpha_pre), float(alpha_post), float(temperature)
        own = None if surrogate is None else get_surrogate(surrogate)
        self._psi_fns = [(get_surrogate(layer.neuron.surrogate), layer.neuron.alpha) if own is None else
                         (own, own.alpha if surrogate_alpha is None else float(surrogate_alpha))
                         for layer in model.layers]            # per layer: (surrogate g, alpha) for psi = g'
        C = int(model.n_classes)
        for i, d in enumerate(model.dims):
            self.register_buffer(f"projection_{i}", square_wave_projection(int(d), C))
        self.state_bytes = 0          # bytes of traces and membranes held during the last update

    def projection(self, i: int) -> Tensor:
        return self.get_buffer(f"projection_{i}")

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        model, T, kind = self.model, self.model.T, self.model.encoder.kind
        Bsz = x.shape[0]
        onehot = F.one_hot(y, int(model.n_classes)).to(x.dtype)
        layers = list(model.layers)
        state = [None] * len(layers)              # per layer: dict of u, pre, pre1, post, gW, gb
        spike_sum = None
        local = [0.0] * len(layers)
        with torch.no_grad():
            for t in range(T):
                h = encode_step(x, t, T, kind).flatten(1)
                for i, layer in enumerate(layers):
                    h, ce = self._step(i, layer, h, onehot, state)
                    local[i] += ce
                spike_sum = h.clone() if spike_sum is None else spike_sum.add_(h)
            scale = 1.0 / (Bsz * T)
            for layer, st in zip(layers, state):
                layer.linear.weight.grad = st["gW"].mul_(scale)
                if layer.linear.bias is not None:
                    layer.linear.bias.grad = st["gb"].mul_(scale)
                for p in layer.neuron.parameters():           # PLIF's tau: not learned by TESS
                    p.grad = torch.zeros_like(p)
        self.state_bytes = sum(v.numel() * v.element_size() for st in state
                               for k, v in st.items() if k not in ("gW", "gb")) + spike_sum.numel() * 4
        logits = model.head.linear(spike_sum / T)            # the readout: its own gradient, nothing below
        loss = F.cross_entropy(logits, y)
        loss.backward()
        return {"loss": loss.item(), "local_loss": sum(local) / (len(local) * T)}

    def _step(self, i: int, layer: nn.Module, h: Tensor, onehot: Tensor, state: list):
        """One step of layer i: returns its spikes [B, d] and the step's local CE (summed into the log)."""
        lin, nrn = layer.linear, layer.neuron
        a, b = (float(c) for c in nrn.coefficients())
        current = lin(h)
        st = state[i]
        if st is None:
            z0 = torch.zeros_like(current)
            st = state[i] = {"u": z0, "pre": torch.zeros_like(h), "post": z0.clone(),
                             "pre1": torch.zeros(()), "gW": torch.zeros_like(lin.weight),
                             "gb": torch.zeros_like(current[0])}
        s, u_next, uh = nrn.step(st["u"], current, a, b)      # charge -> fire -> reset (the neurons' own step)
        spec, alpha = self._psi_fns[i]
        psi = spec.grad(uh - nrn.shifted_threshold, alpha)
        st["pre"].mul_(self.lam_pre).add_(h)
        st["pre1"] = st["pre1"] * self.lam_pre + 1.0
        P = self.projection(i)
        logits = s @ P / self.temperature
        err = torch.softmax(logits, -1) - onehot                 # [B, C]
        m = err @ P.t() / self.temperature                       # dL/ds [B, d]
        if self.alpha_pre:
            g = m * psi * (b * self.alpha_pre)
            st["gW"].addmm_(g.t(), st["pre"])
            st["gb"].add_(g.sum(0) * st["pre1"])
        if self.alpha_post:
            st["gW"].addmm_((m * st["post"] * (b * self.alpha_post)).t(), h)
        st["post"].mul_(self.lam_post).add_(psi)
        st["u"] = u_next
        ce = -(torch.log_softmax(logits, -1) * onehot).sum(-1).mean()
        return s, float(ce)

    def extra_repr(self) -> str:
        return (f"lam_pre={self.lam_pre}, lam_post={self.lam_post}, alpha_pre={self.alpha_pre}, "
                f"alpha_post={self.alpha_post}, temperature={self.temperature}")


__all__ = ["TESS", "square_wave_projection"]
