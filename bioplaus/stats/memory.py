"""Memory a run needs: the activation memory of one update (`SavedTensors`) and the peak memory of the whole
run (`PeakMemory`).

`SavedTensors` counts the tensors autograd saves for backward.

`SavedTensors` is a saved-tensors hook context. While it is open, every tensor autograd saves for backward
is counted by its storage's bytes (the storages of `exclude`, the parameters, which exist anyway, not at all;
a storage is recognised by its address while it lives, so a new storage at a freed one's address counts anew):

    bytes   the total saved over the context, each storage once: what the update needs kept if nothing
            is freed early (the trainer's `saved_for_backward_mb`)
    peak    the most bytes held at any one moment, a storage counting from when it is saved until autograd
            releases it (the trainer's `held_for_backward_peak_mb`). A rule that runs each layer's backward
            before the next layer's forward (ForwardGNN, CCL, greedy local rules) holds one layer's worth
            whatever the depth; backprop holds the whole network's.

    with SavedTensors(exclude=model.parameters()) as saved:
        rule.assign_credit(x, y)
    saved.bytes, saved.peak

`LiveTensors` is the peak of the bytes of tensors created inside the block and alive at the same time (each
storage once, parameters and inputs made before it not at all): a rule's working memory, whatever it keeps
for backward or carries itself (online rules: traces, membranes, one time chunk's tensors).

`PeakMemory` measures the growth of memory over a block: on CPU the resident set size sampled by a thread
every 2 ms (after handing memory freed by earlier jobs back to the OS, so the growth is this run's), on CUDA
torch's peak allocated bytes.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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
        self._seen: dict = {}            # storage address -> weakref to the storage counted there
        self._held: dict = {}

    @staticmethod
    def _key(t: Tensor):
        """(key, bytes, storage or None): the key is the storage's address (and device)."""
        try:
            st = t.untyped_storage()
            return (st.data_ptr(), t.device), st.nbytes(), st
        except (RuntimeError, NotImplementedError):         # tensors without a plain storage
            return (id(t), t.device), t.numel() * t.element_size(), None

    def _pack(self, t: Tensor):
        key, size, storage = self._key(t)
        if key in self._skip:
            return t
        ref = self._seen.get(key)
        if ref is None or ref() is None:   # a storage not seen before (a freed one's address may be reused)
            self._seen[key] = weakref.ref(storage if storage is not None else t)
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


class LiveTensors(TorchDispatchMode):
    """Peak bytes of the tensors created inside the context and alive at once (`peak`; `live` now)."""

    def __init__(self):
        super().__init__()
        self.refs: dict = {}
        self.size: dict = {}
        self.live = self.peak = 0

    def _gone(self, key) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and id(t) not in inputs:      # in-place ops return their input
                key = t.untyped_storage().data_ptr()
                if key not in self.refs:
                    self.refs[key], self.size[key] = 0, t.untyped_storage().nbytes()
                    self.live += self.size[key]
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._gone, key)
        return out


class PeakMemory:
    """Context manager measuring peak memory growth in MB (CPU RSS sampled by a thread; CUDA allocator)."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device, self.interval, self.peak_mb = device, interval_s, 0.0

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._max = max(self._max, self._rss_mb())

    @staticmethod
    def _release_freed() -> None:
        """Hand memory freed by earlier jobs in this process back to the OS, so growth is this run's."""
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._release_freed()
            self._base = self._max = self._rss_mb()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._max, self._rss_mb()) - self._base
        return False
