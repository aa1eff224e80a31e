"""e-prop's threshold-adaptation eligibility for ALIF neurons and its firing-rate regulariser (Bellec et al. 2020).

ALIF (see `bioplaus.models.recurrent`): A_t = theta + beta q_{t-1}, z_t = H(h_t - A_t), q_t = rho q_{t-1} + z_t.
With the recurrent spikes and the reset stop-gradiented, the neuron's own state is (h, q), and the eligibility
of synapse j <- i has two components (Bellec et al. 2020, Methods, "e-prop for ALIF"): the membrane's,
eps^h_t = xbar_t (the presynaptic trace, as for LIF), and the adaptation's, carried per synapse:

    psi_t     = g'(h_t - A_t)                                          [B, H]
    e_t       = psi_t (xbar_t - beta eps^a_{t-1})                      [B, H, n]   eligibility trace
    eps^a_t   = psi_t xbar_t + (rho - beta psi_t) eps^a_{t-1}          [B, H, n]   (eps^a_{-1} = 0)

(n: the presynaptic width, F inputs, H recurrent spikes z_{t-1}, or 1 for the bias). The LIF part psi_t xbar_t
stays factorised in `bioplaus.rules.eprop`; `AdaptationTraces` adds the rest, e^a_t = -beta psi_t eps^a_{t-1}:
its readout-filtered sum ebar^a_t = kappa ebar^a_{t-1} + e^a_t times the learning signal L_t, and its plain sum
over steps and batch (for the regulariser), a chunk of steps at a time (`AdaptationTraces.chunk`: reverse scans
on [c, B, H] and one product per chunk; no per-step per-synapse tensor). The carried eps^a is genuinely per
synapse (memory O(B H (F + H)), independent of T, as the paper notes for ALIF).

Firing-rate regularisation (the paper's f0 target): E_reg = (c_reg / 2) Σ_j (f_j - f0)², f_j = mean over steps
and batch of z_j (spikes per step). Its e-prop gradient is c_reg (f_j - f0) / (T B) Σ_{t,b} e_t[b, j, i]: the
batch- and time-summed eligibility, accumulated online and multiplied by the rate error once f_j is known at
the sequence's end (as the weight gradient itself is applied at the end).
"""
from __future__ import annotations

import torch
from torch import Tensor

from bioplaus.rules.traces import decay_reverse, outer_sum


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
        ([H, n]; the bias group's [H, 1] is squeezed) and, when sums is given, Σ_t Σ_b e^a_t to sums[key].

        No per-step [B, H, n] tensor is formed. With lam_t = rho - beta psi_t, eps^a_t = lam_t eps^a_{t-1} +
        psi_t xbar_t, so any sum Σ_t w_t eps^a_{t-1} over the chunk (w_t [B, H]) is

            C_0 eps^a_carry + Σ_r (R_r psi_r) xbar_r,   R_r = w_{r+1} + lam_{r+1} R_{r+1} (R_{c-1} = 0),
                                                        C_0 = w_0 + lam_0 R_0

        a reverse scan on [c, B, H] and one product over the chunk's c * B rows. The gradient takes
        w_t = -beta Lr_t psi_t (Lr: the kappa-reverse-filtered signal, as for the membrane part, plus
        kappa Lr_0 ebar^a_carry), the regulariser's sum w_t = -beta psi_t, and the carries out of the chunk
        (eps^a, ebar^a) are one batched product each."""
        c = len(psi)
        beta, rho, kappa = self.beta, self.rho, self.kappa
        lam = rho - beta * psi                                              # [c, B, H]
        lr = decay_reverse(signal, kappa)
        weights = {"grad": -beta * lr * psi}
        if sums is not None:
            weights["sum"] = -beta * psi
        if kappa:
            powers = kappa ** torch.arange(c - 1, -1, -1, dtype=torch.float64)
            weights["ebar"] = -beta * psi * powers.to(psi.dtype).view(c, 1, 1)
        scans = {name: self._scan(w, lam) for name, w in weights.items()}
        fwd = torch.ones_like(lam)                                          # Π_{u > s} lam_u within the chunk
        for s in range(c - 2, -1, -1):
            fwd[s] = lam[s + 1] * fwd[s + 1]
        through = lam[0] * fwd[0]                                           # Π_u lam_u: the carry's decay
        for key, pre in pres.items():
            eps, ebar = self.eps.get(key), self.ebar.get(key)
            g = self._total(scans["grad"], psi, pre, eps)
            if kappa and ebar is not None:
                g += torch.einsum("bj,bjn->jn", lr[0], ebar).mul_(kappa)
            grads[key] += g.squeeze(-1) if grads[key].dim() == 1 else g
            if sums is not None:
                sm = self._total(scans["sum"], psi, pre, eps)
                sums[key] += sm.squeeze(-1) if sums[key].dim() == 1 else sm
            if kappa:                                                       # ebar^a at the chunk's end
                r, c0 = scans["ebar"]
                new = torch.einsum("sbj,sbn->bjn", r * psi, pre)
                if eps is not None:
                    new += c0.unsqueeze(-1) * eps
                self.ebar[key] = new if ebar is None else new.add_(ebar, alpha=kappa ** c)
            out = torch.einsum("sbj,sbn->bjn", fwd * psi, pre)              # eps^a at the chunk's end
            self.eps[key] = out if eps is None else out.addcmul_(through.unsqueeze(-1), eps)

    @staticmethod
    def _total(scan: tuple[Tensor, Tensor], psi: Tensor, pre: Tensor, eps: Tensor | None) -> Tensor:
        """Σ_t Σ_b w_t eps^a_{t-1} [H, n] from the scan (R, C_0) of w (chunk docstring)."""
        r, c0 = scan
        out = outer_sum(r * psi, pre)
        return out if eps is None else out + torch.einsum("bj,bjn->jn", c0, eps)

    @staticmethod
    def _scan(w: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """(R [c, B, H], C_0 [B, H]) of Σ_t w_t eps_{t-1} (chunk docstring): R_r = w_{r+1} + lam_{r+1} R_{r+1}."""
        r = torch.zeros_like(w)
        for s in range(len(w) - 2, -1, -1):
            r[s] = w[s + 1] + lam[s + 1] * r[s + 1]
        return r, w[0] + lam[0] * r[0]

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.eps, self.ebar) for t in d.values())


__all__ = ["AdaptationTraces"]
