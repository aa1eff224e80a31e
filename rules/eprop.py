"""e-prop (Bellec et al., Nat. Commun. 2020): online, forward-only credit assignment for a recurrent spiking net.

One pass over t = 0..T-1 under torch.no_grad(): the network state, the eligibility traces and the gradient
sums are carried from chunk to chunk (`time_chunk` = C steps at a time), nothing longer than a chunk is kept
and no graph spans time (memory is independent of T). Model: `bioplaus.models.RecurrentSpikingNet` (one
`RecurrentLIF` layer, see its docstring for the neuron: h_t = a v_{t-1} + c I_t, I_t = W_in x_t + b + W_rec
z_{t-1}, z_t = H(h_t - theta), soft reset v_t = h_t - theta z_t with the reset path detached). Shapes: batch
B, inputs F, hidden H, classes C.

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
is exactly the model's head, logits = W_out mean_t z_t + b_out, when the head averages all T steps; with a
readout window, model.readout_steps = K < T, the head averages only the last K steps while r_t runs from t = 0):

    r_t = kappa r_{t-1} + z_t,   n_t = kappa n_{t-1} + 1,   y_t = W_out (r_t / n_t) + b_out     [B, C]
    pi_t = softmax(y_t),   E = (1/B) sum_b (1/K) sum_{t >= T-K} CE(y_t, y*)
    err_t = (pi_t - onehot(y*)) / (B K) for t >= T-K, else 0              [B, C]  (dE/dy_t)

K = model.readout_steps (default T: every step is scored). With K < T (a decision window after a delay,
Bellec et al. 2020's evidence accumulation) only the window's steps carry a learning signal; the traces still
run over all T steps, so credit reaches the cue period through them (and, for ALIF, through eps^a).
    L_t   = err_t Bfb / n_t                                                 [B, H]  (learning signal)

with Bfb = W_out [C, H] ("symmetric" e-prop) or a fixed random matrix of that shape ("random" e-prop; a
buffer, uniform with W_out's initial variance, drawn from `feedback_seed` or the run's seeded RNG).

Updates, written as gradients (-Delta W) into .grad:

    dE/dW_in  ~ sum_t sum_b L_t[b, j] ebar_t[b, j, i]          [H, F]
    dE/dW_rec ~ sum_t sum_b L_t[b, j] ebar_t[b, j, i] (zbar)   [H, H], diagonal zeroed
    dE/db     ~ sum_t sum_b L_t[b, j] ebar_t[b, j] (1bar)      [H]
    dE/dW_out = sum_t err_t^T (r_t / n_t),   dE/db_out = sum_t sum_b err_t     (exact: the readout's own)

This is the gradient of E with the recurrent spike path z_{t-1} -> I_t and the reset detached (autograd with
those stop-gradients gives the same numbers; tests/test_rule_eprop.py checks it to 1e-5).

ALIF (model.adaptation = beta > 0, Bellec et al. 2020): psi_t = g'(h_t - A_t) at the adaptive threshold and the
eligibility gains the threshold-adaptation term, e_t = psi_t (xbar_t - beta eps^a_{t-1}), eps^a carried per
synapse (`bioplaus.rules.eprop_alif`). Firing-rate regularisation (rate_reg = c_reg > 0): E + (c_reg / 2)
Σ_j (f_j - target_rate)², its e-prop gradient added at the sequence's end (same module). Both stay exactly
autograd's gradient with the paper's stop-gradients (recurrent spikes and reset detached; the adaptation path
through z_t kept), tested in tests/test_rule_eprop_alif.py.

Time chunks (`bioplaus.rules.traces`). Within one update the weights do not change, so the sums over t are
products over the C * B rows of a chunk, and no per-synapse trace is formed:

    Σ_t Σ_b L_t[b, j] ebar_t[b, j, i]  =  Σ_t (Lr_t ⊙ psi_t)ᵀ xbar_t  +  kappa Σ_b Lr_0[b, j] ebar_carry[b, j, i]
    Σ_t G_tᵀ xbar_t                    =  c Σ_t Gr_tᵀ x_t  +  a Gr_0ᵀ xbar_carry

with Lr the reverse-time kappa filter of L within the chunk, Gr the reverse-time a-filter of G = Lr ⊙ psi, and
*_carry the traces before the chunk (likewise for zbar with z_{t-1}, and 1bar for the bias). The readout
(r_t, y_t, err_t, L_t) of the C steps is one product each. With kappa = 0 no per-synapse trace exists at all
(memory O(C B (F + H))); with kappa > 0 the carry ebar [B, H, F + H + 1] is updated once per chunk (memory
O(B H (F + H)), independent of T). C = 1 is the step-by-step form; every C gives the same update to float
rounding (tested). Rate-coded inputs are drawn chunk by chunk (`encode_steps`), so no [T, ...] input train is
built either.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import RecurrentSpikingNet
from bioplaus.neurons.encoding import encode_steps
from bioplaus.neurons.surrogate import get as get_surrogate
from bioplaus.rules.base import LearningRule, check_choice, check_positive
from bioplaus.rules.eprop_alif import AdaptationTraces
from bioplaus.rules.traces import check_chunk, decay, decay_last, decay_reverse, outer_sum, shift

FEEDBACKS = ("symmetric", "random")


class EProp(LearningRule):
    """e-prop for `RecurrentSpikingNet`: eligibility traces x learning signal, one forward pass, no BPTT."""

    name = "eprop"
    supported_models = (RecurrentSpikingNet,)

    def __init__(self, model: nn.Module, feedback: str = "symmetric", feedback_seed: int | None = None,
                 kappa: float = 0.0, lr_scale: float = 5.0, time_chunk: int = 8, rate_reg: float = 0.0,
                 target_rate: float = 0.02):
        super().__init__(model)
        if rate_reg < 0 or not 0.0 <= target_rate <= 1.0:
            raise ConfigError(f"rule.rate_reg must be >= 0 and rule.target_rate in [0, 1] (spikes per step), got "
                              f"{rate_reg}, {target_rate}")
        self.rate_reg, self.target_rate = float(rate_reg), float(target_rate)
        check_choice("feedback", feedback, FEEDBACKS, "e-prop")
        if not 0.0 <= float(kappa) <= 1.0:
            raise ConfigError(f"rule.kappa (the readout filter) must be in [0, 1], got {kappa}")
        self.feedback, self.kappa, self.lr_scale = feedback, float(kappa), check_positive("lr_scale", lr_scale)
        self.time_chunk = check_chunk(time_chunk)
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
        T, kind, C = model.T, model.encoder.kind, self.time_chunk
        K = model.readout_steps                              # the readout scores steps T-K..T-1
        a, c = layer.coefficients()
        theta, kappa = layer.threshold, self.kappa
        spec = get_surrogate(layer.neuron.surrogate)
        Bfb, W_out, b_out = self.feedback_weights(), head.weight, head.bias
        nb = len(y)
        target = F.one_hot(y, W_out.shape[0]).to(W_out.dtype)
        st: dict[str, Tensor | float] = {"n": 0.0, "one": 0.0, "loss": 0.0, "count": 0.0}
        g = {k: torch.zeros_like(p) for k, p in (("w_in", layer.input.weight), ("b_in", layer.input.bias),
                                                   ("w_rec", layer.recurrent), ("w_out", W_out), ("b_out", b_out))}
        reg = {k: torch.zeros_like(g[k]) for k in ("w_in", "w_rec", "b_in")} if self.rate_reg else None
        alif = AdaptationTraces(layer.adaptation, layer.rho, kappa) if layer.adaptation else None

        def on_chunk(t0: int, x_c: Tensor, z: Tensor, h: Tensor) -> None:
            steps = len(z)
            if t0 == 0:                                      # state at t = -1: all zero
                st["xbar"], st["zbar"] = torch.zeros_like(x_c[0]), torch.zeros_like(z[0])
                st["z_prev"], st["r"] = torch.zeros_like(z[0]), torch.zeros_like(z[0])
                if kappa:
                    st["e_in"] = z.new_zeros(nb, z.shape[-1], x_c.shape[-1])
                    st["e_rec"], st["e_b"] = z.new_zeros(nb, z.shape[-1], z.shape[-1]), torch.zeros_like(z[0])
            z_prev = shift(z, st["z_prev"])                  # z_{t-1} [c, B, H]
            psi = spec.grad(h - theta, layer.neuron.alpha)   # [c, B, H]
            n = [st["n"]]
            for _ in range(steps):
                n.append(kappa * n[-1] + 1.0)
            n = torch.tensor(n[1:], dtype=z.dtype).view(steps, 1, 1)
            r_raw = decay(z, kappa, st["r"])                 # r_t = kappa r_{t-1} + z_t [c, B, H]
            r = r_raw / n                                    # the readout's input r_t / n_t
            logits = r @ W_out.t() + b_out                   # [c, B, C]
            scored = (torch.arange(t0, t0 + steps) >= T - K).to(z.dtype).view(steps, 1, 1)  # the readout window
            ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(steps), reduction="none").view(steps, nb, 1)
            st["loss"] += float((ce * scored).sum()) / (nb * K)
            err = (torch.softmax(logits, -1) - target) * (scored / (nb * K))
            g["w_out"] += outer_sum(err, r)
            g["b_out"] += err.sum((0, 1))
            signal = err @ Bfb / n                           # learning signal L_t [c, B, H]
            sig = decay_reverse(signal, kappa)               # ... reverse-filtered with kappa
            gr = decay_reverse(sig * psi, a)                 # G = Lr psi, reverse-filtered with a
            self._add_presynaptic(g, gr, x_c, z_prev, st, a, c)
            if reg is not None:                              # Σ_t Σ_b psi_t xbar_t: the regulariser's eligibility
                self._add_presynaptic(reg, decay_reverse(psi, a), x_c, z_prev, st, a, c)
                st["count"] = z.sum((0, 1)) + st["count"]
            if alif is not None:                             # the adaptation part of the eligibility (ALIF)
                one = decay(torch.full((steps,), c, dtype=psi.dtype), a, psi.new_tensor(float(st["one"])))
                pres = {"w_in": decay(x_c * c, a, st["xbar"]), "w_rec": decay(z_prev * c, a, st["zbar"]),
                        "b_in": one.view(steps, 1, 1).expand(steps, nb, 1)}
                alif.chunk(psi, pres, signal, g, reg)
            if kappa:                                        # the per-synapse traces carried into this chunk
                g["w_in"] += torch.einsum("bj,bji->ji", sig[0], st["e_in"]).mul_(kappa)
                g["w_rec"] += torch.einsum("bj,bji->ji", sig[0], st["e_rec"]).mul_(kappa)
                g["b_in"] += (sig[0] * st["e_b"]).sum(0) * kappa
                if t0 + steps < T:                           # ... and out of it, for the next chunk
                    self._carry_synapse_traces(st, psi, x_c, z_prev, a, c, kappa)
            st["xbar"] = st["xbar"] * a ** steps + decay_last(x_c, a) * c
            st["zbar"] = st["zbar"] * a ** steps + decay_last(z_prev, a) * c
            st["one"] = st["one"] * a ** steps + c * sum(a ** k for k in range(steps))
            st["r"], st["n"], st["z_prev"] = r_raw[-1], float(n[-1]), z[-1]

        chunks = (encode_steps(x, t0, min(C, T - t0), T, kind) for t0 in range(0, T, C))
        layer(chunks, on_chunk=on_chunk)
        logs = {"loss": float(st["loss"])}
        if reg is not None:                                  # E_reg = c_reg/2 Σ_j (f_j - f0)^2 (eprop_alif docstring)
            rate_err = st["count"] / (T * nb) - self.target_rate                      # [H]
            coef = rate_err * (self.rate_reg / (T * nb))
            g["w_in"] += coef.unsqueeze(1) * reg["w_in"]
            g["w_rec"] += coef.unsqueeze(1) * reg["w_rec"]
            g["b_in"] += coef * reg["b_in"]
            logs["rate_loss"] = 0.5 * self.rate_reg * float(rate_err.pow(2).sum())
            logs["rate"] = float(st["count"].mean()) / (T * nb)
        g["w_rec"] *= layer.mask
        for key, p in (("w_in", layer.input.weight), ("b_in", layer.input.bias), ("w_rec", layer.recurrent),
                       ("w_out", W_out), ("b_out", b_out)):
            if p.requires_grad:
                p.grad = g[key] if p.grad is None else p.grad + g[key]
        return logs

    @staticmethod
    def _add_presynaptic(g: dict, gr: Tensor, x_c: Tensor, z_prev: Tensor, st: dict, a: float, c: float) -> None:
        """g[w_in, w_rec, b_in] += Σ_t G_tᵀ xbar_t (and zbar_t, 1bar_t) for the a-reverse-filtered factor gr of G
        (`bioplaus.rules.traces`, (*)), the traces carried into the chunk in st."""
        g["w_in"] += outer_sum(gr, x_c).mul_(c).addmm_(gr[0].t(), st["xbar"], alpha=a)
        g["w_rec"] += outer_sum(gr, z_prev).mul_(c).addmm_(gr[0].t(), st["zbar"], alpha=a)
        g["b_in"] += gr.sum((0, 1)) * c + gr[0].sum(0) * (a * st["one"])

    @staticmethod
    def _carry_synapse_traces(st: dict, psi: Tensor, x_c: Tensor, z_prev: Tensor, a: float, c: float,
                              kappa: float) -> None:
        """ebar at the chunk's end: kappa^steps ebar + Σ_s kappa^(steps-1-s) psi_s ⊗ xbar_s (and zbar, 1bar)."""
        steps = len(psi)
        w = (kappa ** torch.arange(steps - 1, -1, -1, dtype=torch.float64)).to(psi.dtype)
        xbar = decay(x_c * c, a, st["xbar"])                 # [c, B, F]
        zbar = decay(z_prev * c, a, st["zbar"])
        one = decay(torch.full((steps,), c, dtype=psi.dtype), a, torch.tensor(float(st["one"]), dtype=psi.dtype))
        wpsi = psi * w.view(steps, 1, 1)
        st["e_in"] = st["e_in"].mul_(kappa ** steps).add_(torch.einsum("sbj,sbi->bji", wpsi, xbar))
        st["e_rec"] = st["e_rec"].mul_(kappa ** steps).add_(torch.einsum("sbj,sbi->bji", wpsi, zbar))
        st["e_b"] = st["e_b"].mul_(kappa ** steps).add_((wpsi * one.view(steps, 1, 1)).sum(0))
