"""ForwardGNN's top-down single-forward variants, SF-Top2Input and SF-Top2Loss (Park et al., ICLR 2024, Sec. 4.3).

A mixin of `bioplaus.rules.forward_gnn.ForwardGNN`, which owns the graph (the SF graph: V real nodes + C virtual
class nodes, known training nodes linked to their class node) and the per-layer loss

    loss_l = CE(softmax(e_l[v] . e_l[c]^T / tau), y_v)     v the batch nodes, c the class nodes.

Both variants keep the layers' states s_l [V + C, d_l] from one training step to the next (a step is one
"time step" of the authors' code; full-batch training: one per epoch) and let every layer see the layer above
as it was at the previous step, so the label at the top reaches the bottom over the steps:

- `sf_top2input`: layer l's input is cat(norm(s_{l-1}), norm(s_{l+1})); above the top layer sits the label
  matrix Y [V + C, C] (one-hot for known training nodes and for the class nodes, uniform 1/C for the others).
  Layer l is built with d_{l-1} + d_{l+1} inputs (model.widen_input); e_l = h_l. With `alternating` (the
  authors' script) the even layers update first and the odd layers then read their new states.
- `sf_top2loss`: layer l's input is norm(s_{l-1}) alone; its loss reads the mean of its own output and the
  (detached, normalised) states of every layer above: e_l = mean(h_l, norm(s_{l+1}), ..., norm(s_L)).

States start from one bottom-up pass (top-down input 0). Inference starts from a fresh bottom-up pass with the
current weights; top2input then runs `test_time_steps` steps of the same dynamics and averages the class
probabilities of every layer over the steps from `skip_time_steps` on (the authors': 10 and 2); top2loss averages
over layers the probabilities of the bottom-up pass read out with the layers above. The layers never exchange
errors: every input from above is a detached state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bioplaus.errors import ConfigError


def l2_normalise(h: Tensor, eps: float = 1e-8) -> Tensor:
    """Each node's feature row scaled to unit L2 norm: h [V, d] -> [V, d]."""
    return h / (h.norm(dim=1, keepdim=True) + eps)


class TopDownSF:
    """Top-down SF (mixed into ForwardGNN): `setup_topdown` at construction, `_step_sf_top2input` /
    `_step_sf_top2loss` per training step, `topdown_probs` at inference."""

    def setup_topdown(self, alternating: bool, test_time_steps: int, skip_time_steps: int) -> None:
        model = self.model
        L = len(model.layers)
        if not 0 <= skip_time_steps < test_time_steps:
            raise ConfigError(f"rule.skip_time_steps must be in 0..test_time_steps - 1, got {skip_time_steps} "
                              f"and {test_time_steps}")
        self.alternating, self.test_time_steps, self.skip_time_steps = alternating, test_time_steps, skip_time_steps
        if self.variant == "sf_top2input":
            for i in range(L):                                     # input from the layer above (or the labels)
                model.widen_input(model.dims[i + 1] if i + 1 < L else self.n_classes, 0.0, layer=i)
        n = self.V + self.n_classes
        for i, d in enumerate(model.dims):                         # the states carried from step to step
            self.register_buffer(f"state{i}", torch.zeros(n, d, device=model.x.device))
        self.register_buffer("has_states", torch.zeros((), dtype=torch.bool))

    # ---- states ---------------------------------------------------------------------------------
    def _states(self) -> list[Tensor]:
        return [getattr(self, f"state{i}") for i in range(len(self.model.layers))]

    def top_labels(self) -> Tensor:
        """Y [V + C, C]: one-hot for known training nodes and the class nodes, uniform 1/C elsewhere."""
        return torch.cat([self.label_columns(self.known), torch.eye(self.n_classes, device=self.known.device)])

    def _embed(self, i: int, h: Tensor, states: list[Tensor]) -> Tensor:
        """e_l of layer i from its output h: h itself (top2input), or its mean with the normalised states above."""
        if self.variant == "sf_top2input":
            return h
        return torch.stack([h, *[l2_normalise(s) for s in states[i + 1:]]]).mean(0)

    def _input(self, i: int, below: Tensor, above: Tensor | None) -> Tensor:
        """Layer i's input from the state below (h_0 for i = 0) and, top2input, the one above."""
        if self.variant == "sf_top2loss":
            return l2_normalise(below)
        return torch.cat([l2_normalise(below), l2_normalise(above)], 1)

    @torch.no_grad()
    def bottom_up(self, h0: Tensor, edges: Tensor) -> list[Tensor]:
        """[s_1, ..., s_L] of one pass up with no top-down input (zeros), each [V + C, d_l]."""
        states, h = [], h0
        for i, layer in enumerate(self.model.layers):
            above = None if self.variant == "sf_top2loss" else h.new_zeros(len(h), self._above_width(i))
            h = layer(self._input(i, h, above), edges)
            states.append(h)
        return states

    def _above_width(self, i: int) -> int:
        dims = self.model.dims
        return dims[i + 1] if i + 1 < len(dims) else self.n_classes

    def _order(self) -> list[list[int]]:
        """Layer update groups: even then odd layers (alternating), else all at once."""
        idx = list(range(len(self.model.layers)))
        return [idx[0::2], idx[1::2]] if self.alternating and self.variant == "sf_top2input" else [idx]

    def _time_step(self, h0: Tensor, edges: Tensor, states: list[Tensor], y_top: Tensor, learn=None) -> list[Tensor]:
        """One step of every layer from `states` (the previous step's); learn(i, e_i, train) scores a layer."""
        new: list[Tensor | None] = [None] * len(states)
        layers = list(self._layers()) if learn is not None else [(i, m, False, False) for i, m in
                                                                 enumerate(self.model.layers)]
        by_index = {i: (m, train, score) for i, m, train, score in layers}
        order = self._order()

        def pick(k: int) -> Tensor:                             # alternating: a state already updated this step
            return new[k] if len(order) > 1 and new[k] is not None else states[k]

        for group in order:
            for i in group:
                if i not in by_index:
                    continue
                layer, train, score = by_index[i]
                below = h0 if i == 0 else pick(i - 1)
                above = (y_top if i + 1 == len(states) else pick(i + 1)) if self.variant == "sf_top2input" else None
                with torch.set_grad_enabled(train):          # states are detached; h_0 carries the class features
                    h = layer(self._input(i, below, above), edges)
                    if learn is not None and score:
                        learn(i, self._embed(i, h, states), train)
                new[i] = h.detach()
        return [s if n is None else n for s, n in zip(states, new)]

    # ---- training and inference ----------------------------------------------------------------
    def _step_topdown(self, x: Tensor, y: Tensor) -> dict[int, float]:
        edges, h0 = self.augmented_edges(), self.node_input()
        if not bool(self.has_states):
            for s, b in zip(self._states(), self.bottom_up(h0.detach(), edges)):
                s.copy_(b)
            self.has_states.fill_(True)
        out: dict[int, float] = {}

        def learn(i: int, e: Tensor, train: bool) -> None:
            out[i] = self._learn(F.cross_entropy(self.class_logits(e, x), y), train)

        new = self._time_step(h0, edges, self._states(), self.top_labels(), learn)
        with torch.no_grad():
            for s, n in zip(self._states(), new):
                s.copy_(n)
        return out

    _step_sf_top2input = _step_topdown
    _step_sf_top2loss = _step_topdown

    @torch.no_grad()
    def topdown_probs(self, x: Tensor) -> Tensor:
        """p(c | v) [B, C]: class probabilities averaged over layers (and, top2input, over the inference steps
        from skip_time_steps on), from a fresh bottom-up pass with the current weights."""
        edges, h0 = self.augmented_edges(), self.node_input()
        states = self.bottom_up(h0, edges)
        per = []
        if self.variant == "sf_top2loss":                     # layer i's output is the bottom-up state s_i
            per = [torch.softmax(self.class_logits(self._embed(i, s, states), x), 1) for i, s in enumerate(states)]
            return torch.stack(per).mean(0)
        y_top = self.top_labels()
        for t in range(self.test_time_steps):
            states = self._time_step(h0, edges, states, y_top)
            if t >= self.skip_time_steps:
                per += [torch.softmax(self.class_logits(s, x), 1) for s in states]
        return torch.stack(per).mean(0)
