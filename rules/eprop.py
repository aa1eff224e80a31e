"""e-prop (Bellec et al., Nat. Commun. 2020): online, forward-only credit assignment for a recurrent spiking net.

One pass over t = 0..T-1 under torch.no_grad(): the network state, the eligibility traces and the gradient
sums are carried from step to step, nothing is kept per step and no graph spans time (memory is independent
of T). Model: `bioplaus.models.RecurrentSpikingNet` (one `RecurrentLIF` layer, see its docstring for the
neuron: h_t = a v_{t-1} + c I_t, I_t = W_in x_t + b + W_rec z_{t-1}, z_t = H(h_t - theta), soft reset
v_t = h_t - theta z_t with the reset path detached). Shapes: batch B, inputs F, hidden H, classes C.

Eligibility traces. With the recurrent spikes z_{t-1} and the reset treated as inputs (not differentiated
through), dh_t/dh_{t-1} = a, so the eligibility vector of synapse j <- i is the presynaptic activity
low-pass filtered with the membrane decay (factorised, per presynaptic neuron):

    xbar_t = a xbar_{t-1} + c x_t           [B, F]   (input synapses W_in)
    zbar_t = a zbar_{t-1} + c z_{t-1}       [B, H]   (recurrent synapses W_rec)
    1bar_t = a 1bar_{t-1} + c               scalar   (bias b)
    psi_t  = g'(h_t - theta)                [B, H]   (the neuron's surrogate derivative)
    e_t[j, i] = psi_t[j] * xbar_t[i]        [B, H, F]  (and likewise with zbar_t, 1bar_t)
    ebar_t = kappa ebar_{t-1} + e_t                     (the readout filter; kappa = 0: ebar_t = e_t)

Readout and learning signal. The rule trains the readout that filters the spikes with the same kappa,
normalised to an average (kappa = 0: the step's own spikes; kappa = 1: the running mean, which at t = T-1
is exactly the model's head, logits = W_out mean_t z_t + b_out):

    r_t = kappa r_{t-1} + z_t,   n_t = kappa n_{t-1} + 1,   y_t = W_out (r_t / n_t) + b_out     [B, C]
    pi_t = softmax(y_t),   E = (1/B) sum_b (1/T) sum_t CE(y_t, y*)
    err_t = (pi_t - onehot(y*)) / (B T)                                     [B, C]  (dE/dy_t)
    L_t   = err_t Bfb / n_t                                                 [B, H]  (learning signal)

with Bfb = W_out [C, H] ("symmetric" e-prop) or a fixed random matrix of that shape ("random" e-prop; a
buffer, uniform with W_out's initial variance, drawn from `feedback_seed` or the run's seeded RNG).

Updates, written as gradients (-Delta W) into .grad:

    dE/dW_in  ~ sum_t sum_b L_t[b, j] ebar_t[b, j, i]          [H, F]
    dE/dW_rec ~ sum_t sum_b L_t[b, j] ebar_t[b, j, i] (zbar)   [H, H], diagonal zeroed
    dE/db     ~ sum_t sum_b L_t[b, j] ebar_t[b, j] (1bar)      [H]
    dE/dW_out = sum_t err_t^T (r_t / n_t),   dE/db_out = sum_t sum_b err_t     (exact: the readout's own)

This is the gradient of E with the recurrent spike path z_{t-1} -> I_t and the reset detached (autograd with
those stop-gradients gives the same numbers; tests/test_rule_eprop.py checks it to 1e-5). With kappa = 0 the
per-synapse traces are never formed: sum_b L_t psi_t xbar_t^T is one [H, B] x [B, F] product per step
(memory O(B (F + H))); with kappa > 0 ebar is held per sample and synapse, [B, H, F + H + 1] (memory
O(B H (F + H)), still independent of T). Rate-coded inputs are drawn step by step (`encode_step`), so no
[T, ...] input train is built either.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import RecurrentSpikingNet
from bioplaus.neurons.encoding import encode_step
from bioplaus.neurons.surrogate import get as get_surrogate
from bioplaus.rules.base import LearningRule, check_choice, check_positive

FEEDBACKS = ("symmetric", "random")


class EProp(LearningRule):
    """e-prop for `RecurrentSpikingNet`: eligibility traces x learning signal, one forward pass, no BPTT."""

    name = "eprop"
    supported_models = (RecurrentSpikingNet,)

    def __init__(self, model: nn.Module, feedback: str = "symmetric", feedback_seed: int | None = None,
                 kappa: float = 0.0, lr_scale: float = 5.0):
        super().__init__(model)
        check_choice("feedback", feedback, FEEDBACKS, "e-prop")
        if not 0.0 <= float(kappa) <= 1.0:
            raise ConfigError(f"rule.kappa (the readout filter) must be in [0, 1], got {kappa}")
        self.feedback, self.kappa, self.lr_scale = feedback, float(kappa), check_positive("lr_scale", lr_scale)
        W = model.head.linear.weight.detach()
        if feedback == "random":
            gen = None if feedback_seed is None else torch.Generator().manual_seed(int(feedback_seed))
            std = 1 / math.sqrt(3 * W.shape[1])           # nn.Linear's initial std for W_out
            B = (torch.rand(W.shape, generator=gen) * 2 - 1) * math.sqrt(3) * std
            self.register_buffer("feedback_matrix", B.to(W.device, W.dtype))

    def feedback_weights(self) -> Tensor:
        """Bfb [C, H]: the matrix that carries the output error to the hidden neurons."""
        return self.feedback_matrix if self.feedback == "random" else self.model.head.linear.weight.detach()

    @torch.no_grad()
    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        model = self.model
        layer, head = model.layers[0], model.head.linear
        T, kind = model.T, model.encoder.kind
        a, c = layer.coefficients()
        theta, kappa = layer.threshold, self.kappa
        spec = get_surrogate(layer.neuron.surrogate)
        Bfb, W_out, b_out = self.feedback_weights(), head.weight, head.bias
        nb = len(y)
        target = F.one_hot(y, W_out.shape[0]).to(W_out.dtype)
        st: dict[str, Tensor | float] = {"n": 0.0, "one": 0.0, "loss": 0.0}
        g = {k: torch.zeros_like(p) for k, p in (("w_in", layer.input.weight), ("b_in", layer.input.bias),
                                                   ("w_rec", layer.recurrent), ("w_out", W_out), ("b_out", b_out))}

        def on_step(t: int, x_t: Tensor, z: Tensor, h: Tensor) -> None:
            if t == 0:                                       # state at t = -1: all zero
                st["xbar"], st["zbar"] = torch.zeros_like(x_t), torch.zeros_like(z)
                st["z_prev"], st["r"] = torch.zeros_like(z), torch.zeros_like(z)
            st["xbar"] = a * st["xbar"] + c * x_t             # presynaptic traces (membrane decay)
            st["zbar"] = a * st["zbar"] + c * st["z_prev"]
            st["one"] = a * st["one"] + c
            psi = spec.grad(h - theta, layer.neuron.alpha)    # [B, H]
            st["r"], st["n"] = kappa * st["r"] + z, kappa * st["n"] + 1.0
            r = st["r"] / st["n"]
            logits = r @ W_out.t() + b_out                    # [B, C]
            st["loss"] += F.cross_entropy(logits, y).item() / T
            err = (torch.softmax(logits, -1) - target) / (nb * T)
            g["w_out"] += err.t() @ r
            g["b_out"] += err.sum(0)
            L = err @ Bfb / st["n"]                           # learning signal [B, H]
            if kappa == 0.0:                                  # factorised: no per-synapse trace
                Lpsi = L * psi
                g["w_in"] += Lpsi.t() @ st["xbar"]
                g["w_rec"] += Lpsi.t() @ st["zbar"]
                g["b_in"] += Lpsi.sum(0) * st["one"]
            else:
                for key, pre in (("e_in", st["xbar"]), ("e_rec", st["zbar"])):
                    e = psi.unsqueeze(2) * pre.unsqueeze(1)   # [B, H, F] / [B, H, H]
                    st[key] = e if t == 0 else st[key].mul_(kappa).add_(e)
                st["e_b"] = psi * st["one"] if t == 0 else st["e_b"].mul_(kappa).add_(psi * st["one"])
                g["w_in"] += torch.einsum("bj,bji->ji", L, st["e_in"])
                g["w_rec"] += torch.einsum("bj,bji->ji", L, st["e_rec"])
                g["b_in"] += (L * st["e_b"]).sum(0)
            st["z_prev"] = z

        inputs = (encode_step(x, t, T, kind) for t in range(T))
        layer(inputs, on_step=on_step)
        g["w_rec"] *= layer.mask
        for key, p in (("w_in", layer.input.weight), ("b_in", layer.input.bias), ("w_rec", layer.recurrent),
                       ("w_out", W_out), ("b_out", b_out)):
            if p.requires_grad:
                p.grad = g[key] if p.grad is None else p.grad + g[key]
        return {"loss": float(st["loss"])}
