"""Peak activation memory of one update, counted from autograd's saved tensors.

`LiveSaved` is a saved-tensors hook context: while active, every tensor autograd saves for backward is
counted (its storage's bytes, once per storage, parameters in `exclude` skipped) from the moment it is
saved until autograd releases it, and `peak` is the most bytes held at any one moment. Unlike the
trainer's `saved_for_backward_mb` (the sum over the whole update), this is what a rule that runs each
layer's backward before the next layer's forward (ForwardGNN, greedy local rules) actually keeps alive.

    with LiveSaved(exclude=model.parameters()) as live:
        rule.assign_credit(x, y)
    live.peak          # bytes
"""
from __future__ import annotations

import torch


class LiveSaved:
    """Peak bytes autograd holds for backward at any one moment (each storage counted once while held)."""

    def __init__(self, exclude=()):
        self.live = self.peak = 0
        self.held: dict[int, list] = {}
        self.skip = {p.untyped_storage().data_ptr() for p in exclude}

    def pack(self, t):
        key = t.untyped_storage().data_ptr()
        if key in self.skip:
            return t
        entry = self.held.setdefault(key, [0, t.untyped_storage().nbytes()])
        if entry[0] == 0:
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        return _Held(self, key, t)

    def release(self, key):
        entry = self.held[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.held[key]

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda h: h.t if isinstance(h, _Held) else h)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class _Held:
    def __init__(self, owner, key, t):
        self.owner, self.key, self.t = owner, key, t

    def __del__(self):
        self.owner.release(self.key)
