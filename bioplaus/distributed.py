"""Data-parallel training for any rule, on torch.distributed (gloo on CPU, nccl on CUDA).

    torchrun --nproc_per_node=4 -m bioplaus.run rule=dfa model=mlp trainer.epochs=5

`trainer.ddp`: auto (on when torchrun set WORLD_SIZE > 1) | true (fail unless launched by torchrun) | false.
Every rank builds the same model (same seed) and the trainer's shuffling generator is seeded alike, so all
ranks see the same global batches; each rank takes its contiguous share (`shard`) and, after
`rule.assign_credit`, the gradients of `rule.trainable_parameters()` are averaged weighted by each rank's
share of the global batch (grad *= n_local / n_global, then all_reduce SUM; `reduce_grads`). For a rule
whose update is a per-sample mean (backprop, FA/DFA, ...) that is the single-process update on the global
batch. Local rules need nothing special: only `.grad` is reduced. Logged values are reduced the same way.

Evaluation is sharded and its counts summed (test accuracy is the full test set's); statistics are collected
on each rank's shard of the stats samples and their totals summed (`stats_reducer`) before per-sample
quantities are formed; only rank 0 writes files. All ranks share one torch RNG stream (same seed), so a
rule's per-batch random draws (a fresh feedback matrix per batch) agree across ranks as in single-process
training; per-sample draws are then correlated across ranks (rank r's i-th sample gets rank 0's i-th draw).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from bioplaus.errors import ConfigError

MODES = ("auto", True, False)


def parse_mode(mode) -> str | bool:
    """'auto' | True | False from a config value (yaml bools, or the strings 'true'/'false'/'auto')."""
    if isinstance(mode, str) and mode.lower() in ("true", "false", "auto"):
        mode = {"true": True, "false": False, "auto": "auto"}[mode.lower()]
    if mode not in MODES or isinstance(mode, int) and not isinstance(mode, bool):
        raise ConfigError(f"trainer.ddp must be auto, true or false, got {mode!r}")
    return mode


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def is_main() -> bool:
    return rank() == 0


def active(mode="auto") -> bool:
    """True when training is data-parallel: a process group of more than one rank and ddp not switched off.
    mode=True without a process group is an error."""
    mode = parse_mode(mode)
    if mode is False:
        return False
    if mode is True and not initialized():
        raise ConfigError("trainer.ddp=true needs a torch.distributed process group: launch with torchrun "
                          "(torchrun --nproc_per_node=N -m bioplaus.run ...)")
    return world_size() > 1


@contextmanager
def process_group(mode="auto", device: str = "auto"):
    """Initialise the default process group from torchrun's environment (WORLD_SIZE, RANK, MASTER_ADDR, ...)
    when ddp is on, and destroy it on exit. A group that already exists is used and left alone."""
    mode = parse_mode(mode)
    owned = False
    if mode is not False and not initialized():
        if mode is True and "WORLD_SIZE" not in os.environ:
            raise ConfigError("trainer.ddp=true but WORLD_SIZE is not set: launch with torchrun "
                              "(torchrun --nproc_per_node=N -m bioplaus.run ...)")
        if env_world_size() > 1 or mode is True:
            cuda = torch.cuda.is_available() and str(device) != "cpu" and not str(device).startswith("cpu")
            if cuda:
                torch.cuda.set_device(local_rank())
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            owned = True
    try:
        yield
    finally:
        if owned and initialized():
            dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """cuda -> cuda:LOCAL_RANK under a process group; anything else unchanged."""
    if initialized() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def broadcast_object(obj, src: int = 0):
    """obj as rank src has it (every rank gets it)."""
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_bounds(n: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n items (sizes differ by at most one)."""
    w, r = world_size(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (r < extra)


def shard(*tensors):
    """This rank's contiguous share of each tensor's leading dim."""
    start, stop = shard_bounds(len(tensors[0]))
    out = tuple(t[start:stop] for t in tensors)
    return out if len(out) > 1 else out[0]


def _dev(params) -> torch.device:
    """Device for collectives: the parameters' (nccl needs CUDA tensors), CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_module(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Broadcast every parameter (unless buffers_only) and buffer from rank 0: an identical start, and
    identical buffers (running statistics a rule updated on its shard) for evaluation."""
    if not initialized():
        return
    with torch.no_grad():
        for t in [*([] if buffers_only else module.parameters()), *module.buffers()]:
            if dist.get_backend() == "nccl" or t.device.type == "cpu":
                dist.broadcast(t.data, src=0)
            else:
                tmp = t.data.cpu()
                dist.broadcast(tmp, src=0)
                t.data.copy_(tmp)


def reduce_grads(params, n_local: int, n_global: int) -> None:
    """grad <- sum over ranks of grad * n_local / n_global (the global-batch mean for per-sample-mean updates).
    A parameter no rank gave a gradient keeps grad None; one only some ranks did counts zeros elsewhere."""
    params = list(params)
    dev = _dev(params)
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not live:
        return
    w = n_local / max(n_global, 1)
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.detach().reshape(-1).to(dev, torch.float64 if p.grad.dtype == torch.float64
                                                     else torch.float32) for p in live]) * w
    dist.all_reduce(flat)
    i = 0
    for p in live:
        k = p.grad.numel()
        p.grad.copy_(flat[i:i + k].view_as(p.grad))
        i += k


def reduce_logs(logs: dict, keys: list[str], n_local: int, n_global: int) -> dict:
    """The float log values in `keys` (the same list on every rank), each the share-weighted sum over ranks;
    a key a rank lacks counts zero there. Other entries are kept as they are."""
    if not keys:
        return logs
    w = n_local / max(n_global, 1)
    vals = torch.tensor([float(logs[k]) * w if k in logs else 0.0 for k in keys], dtype=torch.float64,
                        device=_dev(()))
    dist.all_reduce(vals)
    return {**logs, **dict(zip(keys, vals.tolist()))}


def log_keys(logs: dict) -> list[str]:
    """The union over ranks of the float-valued log keys (sorted): one all_gather_object, done once."""
    mine = sorted(k for k, v in logs.items() if isinstance(v, (float, int)) and not isinstance(v, bool))
    out: list = [None] * world_size()
    dist.all_gather_object(out, mine)
    return sorted(set().union(*out))


def all_sum(values, dtype=torch.float64) -> list[float]:
    """Sum a list of numbers over ranks."""
    t = torch.tensor(list(values), dtype=dtype, device=_dev(()))
    dist.all_reduce(t)
    return t.tolist()


def stats_reducer():
    """A `reduce` hook for bioplaus.stats.collect: sums the raw totals (spikes per layer per step, MAC and AC
    counts per scope per step) and the sample count over ranks, so per-sample quantities are formed from the
    global totals. Every rank must hold at least one sample (sizes are read from the forward passes)."""
    def reduce(spikes: dict, counts: dict, n: int):
        names = sorted(spikes)
        scopes = sorted(counts)
        parts = [torch.as_tensor(np.asarray(spikes[k], dtype=np.float64)).reshape(-1) for k in names]
        parts += [counts[s][q].double().reshape(-1).cpu() for s in scopes for q in ("mac", "ac")]
        lens = [p.numel() for p in parts]
        flat = torch.cat([*parts, torch.tensor([float(n)], dtype=torch.float64)]).to(_dev(()))
        dist.all_reduce(flat)
        chunks = list(flat.cpu().split([*lens, 1]))
        out_spikes = {k: chunks[i].numpy() for i, k in enumerate(names)}
        j = len(names)
        for s in scopes:
            counts[s] = {"mac": chunks[j].clone(), "ac": chunks[j + 1].clone()}
            j += 2
        return out_spikes, counts, int(round(chunks[-1].item()))
    return reduce


class Local:
    """The trainer's parallel hooks for one process: each one does nothing (or hands its input back), so the
    training loop has no parallel branches. `for_training` returns this, `DataParallel` or `BlockParallel`."""

    active = False

    def start(self, rule, batch_size: int) -> None:
        """Before training: make every rank start from rank 0's state."""

    def share(self, xb, yb):
        """This rank's part of a global batch: (x, y, n_local, n_global)."""
        return xb, yb, len(xb), len(xb)

    def reduce(self, params, logs: dict, n_local: int, n_global: int) -> dict:
        """After assign_credit: combine the ranks' gradients and logs."""
        return logs

    def sync_buffers(self, rule) -> None:
        """After an epoch's training: rank 0's buffers everywhere (running statistics)."""

    def sync(self, rule) -> None:
        """After the rule rebuilt its parameter set: rank 0's parameters and buffers everywhere."""

    def shard(self, *tensors):
        """This rank's share of an evaluation set (every tensor's leading dim)."""
        return tensors if len(tensors) > 1 else tensors[0]

    def sum(self, values) -> list:
        """Numbers summed over ranks."""
        return list(values)

    def stats_split(self, x):
        """(this rank's statistics samples, the `reduce` hook for bioplaus.stats.collect or None)."""
        return x, None

    def is_main(self) -> bool:
        return True


class DataParallel(Local):
    """Data parallel: each rank trains on its contiguous share of every global batch; gradients and logs are
    averaged by share (see the module docstring)."""

    active = True

    def __init__(self):
        self._log_keys: list[str] | None = None

    def start(self, rule, batch_size: int) -> None:
        if int(batch_size) < world_size():
            raise ConfigError(f"trainer.batch_size ({batch_size}) must be >= the number of ranks "
                              f"({world_size()}) for data-parallel training")
        sync_module(rule)

    def share(self, xb, yb):
        n_global = len(xb)
        xb, yb = shard(xb, yb)
        return xb, yb, len(xb), n_global

    def reduce(self, params, logs: dict, n_local: int, n_global: int) -> dict:
        if self._log_keys is None:
            self._log_keys = log_keys(logs)
        reduce_grads(params, n_local, n_global)
        return reduce_logs(logs, self._log_keys, n_local, n_global)

    def sync_buffers(self, rule) -> None:
        sync_module(rule, buffers_only=True)

    def sync(self, rule) -> None:
        sync_module(rule)

    def shard(self, *tensors):
        return shard(*tensors)

    def sum(self, values) -> list:
        return all_sum(values)

    def stats_split(self, x):
        if len(x) < world_size():                  # every rank needs a sample: collect on rank 0's whole set
            return x, None
        return shard(x), stats_reducer()

    def is_main(self) -> bool:
        return is_main()


class BlockParallel(DataParallel):
    """For a rule with parallel_split = "blocks" (NoProp's block_parallel): every rank sees the whole batch and
    trains its share of the rule's blocks (`rule.set_partition`); gradients are summed, not averaged."""

    def start(self, rule, batch_size: int) -> None:
        super().start(rule, batch_size)
        rule.set_partition(rank(), world_size())

    def share(self, xb, yb):
        return xb, yb, len(xb), len(xb)


def for_training(rule, mode="auto") -> Local:
    """The parallel hooks for training `rule` under trainer.ddp = mode: Local in one process, else
    BlockParallel or DataParallel by the rule's `parallel_split`."""
    if not active(mode):
        return Local()
    return BlockParallel() if rule.parallel_split == "blocks" else DataParallel()
