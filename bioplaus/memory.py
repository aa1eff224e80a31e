"""Activation memory of one update, counted from the tensors autograd saves for backward.

`SavedTensors` is a saved-tensors hook context. While it is open, every tensor autograd saves for backward
is counted by its storage's bytes (the storages of `exclude`, the parameters, which exist anyway, not at all):

    bytes   the total saved over the context, each storage once: what the update needs kept if nothing
            is freed early (the trainer's `saved_for_backward_mb`)
    peak    the most bytes held at any one moment, a storage counting from when it is saved until autograd
            releases it (the trainer's `held_for_backward_peak_mb`). A rule that runs each layer's backward
            before the next layer's forward (ForwardGNN, CCL, greedy local rules) holds one layer's worth
            whatever the depth; backprop holds the whole network's.

    with SavedTensors(exclude=model.parameters()) as saved:
        rule.assign_credit(x, y)
    saved.bytes, saved.peak
"""
from __future__ import annotations

from torch import Tensor
from torch.autograd.graph import saved_tensors_hooks


class _Held:
    """What autograd keeps instead of the tensor: releases the storage's count when autograd drops it."""

    __slots__ = ("owner", "key", "t")

    def __init__(self, owner: SavedTensors, key, t: Tensor):
        self.owner, self.key, self.t = owner, key, t

    def __del__(self):
        self.owner._release(self.key)


class SavedTensors:
    """Bytes autograd keeps for backward while the context is open: `bytes` (total) and `peak` (at once)."""

    def __init__(self, exclude=()):
        self.bytes = self.live = self.peak = 0
        self._skip = {self._key(p)[0] for p in exclude}
        self._seen: set = set()
        self._held: dict = {}

    @staticmethod
    def _key(t: Tensor):
        try:
            return (t.untyped_storage().data_ptr(), t.device), t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):         # tensors without a plain storage
            return (id(t), t.device), t.numel() * t.element_size()

    def _pack(self, t: Tensor):
        key, size = self._key(t)
        if key in self._skip:
            return t
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += size
        entry = self._held.setdefault(key, [0, size])
        if entry[0] == 0:
            self.live += size
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        return _Held(self, key, t)

    def _release(self, key) -> None:
        entry = self._held.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._held[key]

    def __enter__(self):
        self._ctx = saved_tensors_hooks(self._pack, lambda h: h.t if isinstance(h, _Held) else h)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
