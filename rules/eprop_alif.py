"""e-prop's threshold-adaptation eligibility for ALIF neurons and its firing-rate regulariser (Bellec et al. 2020).

ALIF (see `bioplaus.models.recurrent`): A_t = theta + beta q_{t-1}, z_t = H(h_t - A_t), q_t = rho q_{t-1} + z_t.
With the recurrent spikes and the reset stop-gradiented, the neuron's own state is (h, q), and the eligibility
of synapse j <- i has two components (Bellec et al. 2020, Methods, "e-prop for ALIF"): the membrane's,
eps^h_t = xbar_t (the presynaptic trace, as for LIF), and the adaptation's, carried per synapse:

    psi_t     = g'(h_t - A_t)                                          [B, H]
    e_t       = psi_t (xbar_t - beta eps^a_{t-1})                      [B, H, n]   eligibility trace
    eps^a_t   = psi_t xbar_t + (rho - beta psi_t) eps^a_{t-1}          [B, H, n]   (eps^a_{-1} = 0)

(n: the presynaptic width, F inputs, H recurrent spikes z_{t-1}, or 1 for the bias). The LIF part psi_t xbar_t
stays factorised in `bioplaus.rules.eprop`; `AdaptationTraces` adds the rest, e^a_t = -beta psi_t eps^a_{t-1},
step by step within a chunk: its readout-filtered sum ebar^a_t = kappa ebar^a_{t-1} + e^a_t times the learning
signal L_t, and its plain sum over steps and batch (for the regulariser). eps^a is genuinely per synapse
(memory O(B H (F + H)), independent of T, as the paper notes for ALIF).

Firing-rate regularisation (the paper's f0 target): E_reg = (c_reg / 2) Σ_j (f_j - f0)², f_j = mean over steps
and batch of z_j (spikes per step). Its e-prop gradient is c_reg (f_j - f0) / (T B) Σ_{t,b} e_t[b, j, i]: the
batch- and time-summed eligibility, accumulated online and multiplied by the rate error once f_j is known at
the sequence's end (as the weight gradient itself is applied at the end).
"""
from __future__ import annotations

import torch
from torch import Tensor


class AdaptationTraces:
    """The per-synapse adaptation eligibility eps^a over the chunks of one sequence (module docstring)."""

    def __init__(self, beta: float, rho: float, kappa: float):
        self.beta, self.rho, self.kappa = float(beta), float(rho), float(kappa)
        self.eps: dict[str, Tensor] = {}
        self.ebar: dict[str, Tensor] = {}

    def chunk(self, psi: Tensor, pres: dict[str, Tensor], signal: Tensor, grads: dict[str, Tensor],
              sums: dict[str, Tensor] | None) -> None:
        """One chunk: psi [c, B, H], pres[key] the presynaptic traces xbar_t [c, B, n] of each synapse group,
        signal the learning signal L_t [c, B, H] (unfiltered). Adds Σ_t Σ_b L_t ebar^a_t to grads[key]
        ([H, n]; the bias group's [H, 1] is squeezed) and, when sums is given, Σ_t Σ_b e^a_t to sums[key]."""
        for key, pre in pres.items():
            eps = self.eps.get(key)
            if eps is None:
                eps = psi.new_zeros(psi.shape[1], psi.shape[2], pre.shape[-1])
            ebar = self.ebar.get(key)
            g = torch.zeros_like(eps[0])
            s = torch.zeros_like(eps[0]) if sums is not None else None
            for psi_t, pre_t, sig_t in zip(psi, pre, signal):
                e_a = eps * psi_t.unsqueeze(-1) * -self.beta                      # e^a_t [B, H, n]
                ebar = e_a if not self.kappa or ebar is None else ebar.mul_(self.kappa).add_(e_a)
                g += torch.einsum("bj,bjn->jn", sig_t, ebar)
                if s is not None:
                    s += e_a.sum(0)
                eps = psi_t.unsqueeze(-1) * pre_t.unsqueeze(1) + (self.rho - self.beta * psi_t).unsqueeze(-1) * eps
            self.eps[key] = eps
            if self.kappa:
                self.ebar[key] = ebar
            grads[key] += g.squeeze(-1) if grads[key].dim() == 1 else g
            if s is not None:
                sums[key] += s.squeeze(-1) if sums[key].dim() == 1 else s

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.eps, self.ebar) for t in d.values())


__all__ = ["AdaptationTraces"]
