"""TESS (Apolinario, Roy & Frenkel 2025): temporally and spatially local learning for spiking MLPs and ConvNets.

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

Weight gradient, summed over t and applied once per sequence (mean over batch and T):

    ∇W = Σ_t α_pre (m[t] ⊙ ψ[t] b)ᵀ pre[t]  +  α_post (m[t] ⊙ post[t-1] b)ᵀ x[t]
    ∇c = Σ_t α_pre (m[t] ⊙ ψ[t] b)ᵀ pre_1[t]        pre_1: the trace of a constant 1 input

The first term is causal (STDP-like pre-before-post); the second is the paper's non-causal term. With
λ_pre = a, α_post = 0 and a reset whose gradient is detached (soft reset, detach_reset), the causal term
is exactly the BPTT gradient of the layer's local losses (tested). Each layer's input is detached by
construction: no error crosses layers. The readout (model.head, a linear map of the time-averaged last
layer's spikes) learns from the label by its own gradient, on the running spike sum.

Time chunks. Within one update the weights do not change, so the rule runs `time_chunk` = C steps at a time
(`bioplaus.rules.traces`): per layer and chunk, the input currents of all C steps in one product (once for
a direct-encoded input), the neuron's own pure step C times (charge -> fire -> reset), the local classifier
and m for the C steps in one product each, the postsynaptic trace as a leaky_scan, and the weight gradient
of the C steps as one product over C * B rows -- the causal term without forming pre[t] at all: Σ_t
G_tᵀ pre[t] = Σ_t Ĝ_tᵀ x[t] + λ_pre Ĝ_0ᵀ pre_carry, Ĝ the reverse-time filter of G = α_pre m ⊙ ψ b. Only
the state between chunks is carried (membranes, pre and post traces, the gradient sums). C = 1 is the
step-by-step form; any C gives the same update to float rounding (tested).

Memory: the carried state, O(B · Σ d_l) (`state_bytes`), plus one chunk's tensors, O(C · B · Σ d_l): the same
at any T ≥ C. Default C = 8.

Convolutional SNNs (the paper's VGG). The same equations with W x read as a convolution (current, and the
sums Σ_t G_tᵀ x_t as `conv2d_weight` over the chunk's c * B rows), the bias's input the constant 1 at every
position; each layer's output is its max-pooled spike map, and the learning-signal generator pools that map
per channel to `lsg_pool` x `lsg_pool` (adaptive average) before the square-wave projection, as the paper's
code does (B_l then has C' * lsg_pool² rows). Conv layers must have no BatchNorm between conv and neuron
(model.norm=ws, weight standardisation, or none): with batch statistics the charge is not a u + b I. With
weight standardisation the rule's gradient is that of the standardised kernel; it reaches the raw kernel and
the gain through the per-channel standardisation (`bioplaus.rules.tess_synapses`).

Models: SpikingMLP, SpikingConvNet and SpikingVGG (norm none or ws) with if/lif/plif neurons (not gated_lif or
the adapters: their charge is not the (a, b) form above). The paper's settings: `configs/rule/tess_paper.yaml`
with `configs/model/spiking_vgg_tess.yaml` (soft reset, leak 0.5, threshold 0.6, triangle surrogate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import SpikingConvNet, SpikingMLP
from bioplaus.neurons.encoding import encode_steps
from bioplaus.neurons.surrogate import get as get_surrogate
from bioplaus.rules.base import LearningRule, check_positive
from bioplaus.rules.tess_synapses import synapse_of
from bioplaus.rules.traces import check_chunk, decay, decay_last, decay_reverse, shift


def square_wave_projection(d: int, n_classes: int, f_lo: float = 50.0, f_hi: float = 512.0) -> Tensor:
    """B [d, C]: column c is sign(sin(f_c k)) for k = 0..d-1, f_c = linspace(f_lo, f_hi, C), scaled 1/d."""
    k = torch.arange(d, dtype=torch.float64).unsqueeze(1)
    f = torch.linspace(f_lo, f_hi, n_classes, dtype=torch.float64).unsqueeze(0)
    return (torch.sign(torch.sin(f * k)) / d).float()


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


class TESS(LearningRule):
    """TESS on a SpikingMLP or a SpikingConvNet / SpikingVGG without BatchNorm. Hyperparameters as in the paper's
    `--factors-stdp` [λ_post, λ_pre, α_post, α_pre] (CIFAR: [0.2, 0.5, 1, 1]); `surrogate` None uses each
    neuron's own surrogate g (name, `alpha`); `time_chunk` steps are processed at once; `lsg_pool` the k x k
    average pooling of a conv layer's output in its learning-signal generator (see the module docstring)."""

    supported_models = (SpikingMLP, SpikingConvNet)

    def __init__(self, model: nn.Module, lam_pre: float = 0.5, lam_post: float = 0.2, alpha_pre: float = 1.0,
                 alpha_post: float = 1.0, temperature: float = 0.01, surrogate: str | None = None,
                 surrogate_alpha: float | None = None, lr_scale: float = 10.0, time_chunk: int = 8,
                 lsg_pool: int = 2):
        super().__init__(model)
        self.lr_scale = check_positive("lr_scale", lr_scale)
        self.time_chunk = check_chunk(time_chunk)
        for name, v in (("lam_pre", lam_pre), ("lam_post", lam_post)):
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"rule.{name} is a trace decay and must be in [0, 1), got {v}")
        if temperature <= 0:
            raise ConfigError(f"rule.temperature must be > 0, got {temperature}")
        if alpha_pre == 0 and alpha_post == 0:
            raise ConfigError("rule.alpha_pre and rule.alpha_post are both 0: nothing would learn; set one")
        if isinstance(lsg_pool, bool) or not isinstance(lsg_pool, int) or lsg_pool < 1:
            raise ConfigError(f"rule.lsg_pool must be a whole number >= 1 (the k x k pooling), got {lsg_pool!r}")
        self.synapses = [synapse_of(i, layer, lsg_pool) for i, layer in enumerate(model.layers)]
        for i, syn in enumerate(self.synapses):
            if not syn.neuron.pure_step:
                raise ConfigError(f"TESS needs if, lif or plif neurons (charge a*u + b*I); layer {i} has "
                                  f"{type(syn.neuron).__name__}: set model.neuron.kind=lif")
        self.lam_pre, self.lam_post = float(lam_pre), float(lam_post)
        self.alpha_pre, self.alpha_post, self.temperature = float(alpha_pre), float(alpha_post), float(temperature)
        self.lsg_pool = lsg_pool
        own = None if surrogate is None else get_surrogate(surrogate)
        self._psi_fns = [(get_surrogate(syn.neuron.surrogate), syn.neuron.alpha) if own is None else
                         (own, own.alpha if surrogate_alpha is None else float(surrogate_alpha))
                         for syn in self.synapses]             # per layer: (surrogate g, alpha) for psi = g'
        C = int(model.n_classes)
        for i, syn in enumerate(self.synapses):
            self.register_buffer(f"projection_{i}", square_wave_projection(int(syn.lsg_dim), C))
        self.state_bytes = 0          # bytes of the state carried between chunks in the last update

    def projection(self, i: int) -> Tensor:
        return self.get_buffer(f"projection_{i}")

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        model, T, kind = self.model, self.model.T, self.model.encoder.kind
        onehot = F.one_hot(y, int(model.n_classes)).to(x.dtype)
        state: list[dict] = [{} for _ in self.synapses]   # per layer: carried u, pre, pre1, post and sums gW, gb
        spike_sum, local = None, [0.0] * len(self.synapses)
        with torch.no_grad():
            for syn in self.synapses:
                syn.begin()
            for t0 in range(0, T, self.time_chunk):
                h = self.synapses[0].prepare(encode_steps(x, t0, min(self.time_chunk, T - t0), T, kind))
                for i, syn in enumerate(self.synapses):
                    h, ce = self._chunk(i, syn, h, onehot, state[i])
                    local[i] += ce
                spike_sum = h.sum(0) if spike_sum is None else spike_sum.add_(h.sum(0))
            scale = 1.0 / (x.shape[0] * T)
            for syn, st in zip(self.synapses, state):
                syn.set_grads(st["gW"].mul_(scale), st["gb"].mul_(scale))
                for p in syn.neuron.parameters():             # PLIF's tau: not learned by TESS
                    p.grad = torch.zeros_like(p)
        self.state_bytes = _bytes([*(v for st in state for k, v in st.items() if k not in ("gW", "gb")), spike_sum])
        logits = model.head.linear(spike_sum.flatten(1) / T)    # the readout: its own gradient, nothing below
        loss = F.cross_entropy(logits, y)
        loss.backward()
        return {"loss": loss.item(), "local_loss": sum(local) / (len(local) * T)}

    def _chunk(self, i: int, syn, h: Tensor, onehot: Tensor, st: dict):
        """c steps of layer i from its input spikes h [c, B, *in]: returns its output spikes [c, B, *out] (pooled
        for a conv layer), the local CE summed over the c steps. Updates the carried state st."""
        nrn = syn.neuron
        a, b = (float(c) for c in nrn.coefficients())
        current = syn.current(h)                              # [c, B, *out], once for a time-invariant input
        if not st:
            z0 = torch.zeros_like(current[0])
            st.update(u=z0, pre=torch.zeros_like(h[0]), pre1=0.0, post=z0.clone(),
                      gW=torch.zeros_like(syn.weight), gb=current.new_zeros(current.shape[2]))
        u, spikes, charges = st["u"], [], []
        for current_t in current:                              # charge -> fire -> reset (the neuron's own step)
            s, u, uh = nrn.step(u, current_t, a, b)
            spikes.append(s)
            charges.append(uh)
        st["u"], s, uh = u, torch.stack(spikes), torch.stack(charges)
        spec, alpha = self._psi_fns[i]
        psi = spec.grad(uh - nrn.shifted_threshold, alpha)     # [c, B, *out]
        m, ce = syn.signal(s, self.projection(i), onehot, self.temperature)   # dL/ds [c, B, *out], local CE
        g = m * psi * (b * self.alpha_pre)                      # causal factor G (multiplies pre[t])
        gr = decay_reverse(g, self.lam_pre)                     # Ĝ: Σ_t G_tᵀ pre[t] = Σ_t Ĝ_tᵀ x[t] + λ Ĝ_0ᵀ pre_carry
        post = decay(psi, self.lam_post, st["post"])            # post[t] [c, B, *out]
        factor = gr + m * shift(post, st["post"]) * (b * self.alpha_post) if self.alpha_post else gr
        st["gW"] += syn.weight_grad(factor, h)
        if self.lam_pre and st["pre1"]:                       # the trace carried in (none before the first chunk)
            st["gW"].add_(syn.weight_grad(gr[:1], st["pre"].unsqueeze(0)), alpha=self.lam_pre)
        spatial = tuple(range(3, gr.dim()))                    # conv: the bias's input is 1 at every position
        st["gb"] += gr.sum((0, 1, *spatial)) + gr[0].sum((0, *(d - 1 for d in spatial))) * (self.lam_pre * st["pre1"])
        st["pre"] = decay_last(h, self.lam_pre, st["pre"])
        st["pre1"] = self.lam_pre ** len(h) * st["pre1"] + sum(self.lam_pre ** k for k in range(len(h)))
        st["post"] = post[-1]
        return syn.output(s), float(ce)

    def extra_repr(self) -> str:
        return (f"lam_pre={self.lam_pre}, lam_post={self.lam_post}, alpha_pre={self.alpha_pre}, "
                f"alpha_post={self.alpha_post}, temperature={self.temperature}, time_chunk={self.time_chunk}, "
                f"lsg_pool={self.lsg_pool}")


__all__ = ["TESS", "square_wave_projection"]
