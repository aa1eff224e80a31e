"""The generic training loop: the same optimizer, clipping, logging and cost accounting for every rule.

Per step: zero grads -> `rule.assign_credit(x, y)` (fills .grad) -> optional clipping -> learning rate
from the schedule (cosine decay to 0 over the run by default) -> optimizer step.
Per epoch: test accuracy through `rule.predict` (and, with `val_fraction` > 0, accuracy and loss on a held-out
part of the training set: `val_acc`, `val_loss`, what rules that switch or stop on a plateau should read, never
test_acc), `rule.on_epoch_end` (True -> rebuild the optimizer),
a tqdm progress bar. A non-finite loss or gradient stops the run with a ConfigError naming the epoch
and step (never trains through NaNs).

`train` returns the metrics dict that `bioplaus-run` writes to metrics.json:
test_acc, train_acc, best_test_acc, train_time_s (training steps only, no evaluation),
time_per_step_ms, peak_mem_mb (CPU: growth of resident memory over the run, sampled every 2 ms, after
handing memory freed by earlier jobs back to the OS; CUDA: torch's peak allocated),
saved_for_backward_mb (bytes autograd keeps for backward in the first update, parameters excluded:
the activation memory a rule needs; 0 for a rule that keeps no graph), held_for_backward_peak_mb (the most
of those bytes held at one moment: less than the total for rules that free each layer's graph before the
next layer runs; bioplaus.memory), steps, epochs,
val_acc (last epoch's, when trainer.val_fraction > 0), passes_per_update (measured: forward/backward
passes through the first layer in one update),
train_mac_per_step / train_ac_per_step (every op of one update, whole batch), history (per-epoch
loss/test_acc).

Accuracy counts every target that is not IGNORE_INDEX (-100): one per sample for `task="classify"`
(logits [B, C], y [B]), one per token for `task="lm"` (logits [B, L, V], y [B, L]). For lm data the
metrics add test_loss (cross-entropy, nats per target token), bits_per_char (test_loss / ln 2) and
unigram_loss: the test cross-entropy of the add-one-smoothed unigram distribution of the training
targets, the score of a model that ignores its input (history rows get test_loss too).

Data parallel (`trainer.ddp`, launched by torchrun; bioplaus.distributed): each global batch is split over
the ranks and the gradients averaged by share after `assign_credit` (a rule with parallel_split = "blocks",
NoProp's block_parallel, instead splits its own work over the ranks via set_partition, sees the whole batch,
and its gradients are summed); losses, evaluation counts and the
first update's MACs/ACs are summed over ranks (passes, saved_for_backward_mb, time and memory are this
process's).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bioplaus import checkpoint as ckpt
from bioplaus import distributed as ddp
from bioplaus.data import IGNORE_INDEX, Dataset, batches
from bioplaus.errors import ConfigError
from bioplaus.memory import SavedTensors
from bioplaus.rules.base import LearningRule

SCHEDULES = {
    "constant": lambda step, total: 1.0,
    "cosine": lambda step, total: 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))),
}


@dataclass
class TrainConfig:
    """Trainer settings (configs/trainer/*.yaml)."""

    epochs: int = 20
    batch_size: int = 64
    eval_batch_size: int = 1000
    grad_clip: float | None = None
    lr_schedule: str = "cosine"      # cosine: lr decays to 0 over the run (per step); constant
    progress: bool = True
    checkpoint: bool = False         # save an epoch checkpoint in the run dir; a rerun in that dir resumes
    ddp: str | bool = "auto"         # data parallel under torchrun: auto (WORLD_SIZE > 1) | true | false
    val_fraction: float = 0.0        # hold out this fraction of the training set (a seeded permutation, not
                                     # stratified); epoch rows then carry val_acc / val_loss
    optimizer: Callable[..., torch.optim.Optimizer] = field(
        default_factory=lambda: (lambda params: torch.optim.Adam(params, lr=1e-3)))

    def __post_init__(self):
        if int(self.epochs) < 0:
            raise ConfigError(f"trainer.epochs must be >= 0, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"trainer.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"unknown trainer.lr_schedule '{self.lr_schedule}': choose one of "
                              f"{', '.join(SCHEDULES)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"trainer.grad_clip must be > 0 or null, got {self.grad_clip}")
        self.ddp = ddp.parse_mode(self.ddp)


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


class UpdateCost:
    """What one `assign_credit` costs, measured the same way for every rule: MACs and ACs of every op
    it ran (forward and backward, whole batch; bioplaus.opcount), and how many forward and backward
    passes went through the model's first layer, or the rule's `pass_probe()` (relaxation steps and repeated
    passes included)."""

    def __init__(self, rule: LearningRule):
        self.layer = rule.pass_probe() if hasattr(rule, "model") and hasattr(rule.model, "layers") else None
        self._weights = list(rule.parameters())
        self.passes = {"forward": 0, "backward": 0}
        self.ops = {"mac": 0.0, "ac": 0.0}

    def _on_forward(self, mod, inp, out):
        self.passes["forward"] += 1
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.passes["backward"] += 1

    def __enter__(self):
        from bioplaus.opcount import OpCounter

        self._counter = OpCounter(weights=self._weights)
        self._hook = self.layer.register_forward_hook(self._on_forward) if self.layer is not None else None
        self._counter.__enter__()
        return self

    def __exit__(self, *exc):
        self._counter.__exit__(*exc)
        if self._hook is not None:
            self._hook.remove()
        self.ops = self._counter.totals()
        return False


@torch.no_grad()
def evaluate(rule: LearningRule, x: Tensor, y: Tensor, batch_size: int, device: torch.device,
             with_loss: bool = False, parallel: bool = False) -> tuple[float, float]:
    """(accuracy, mean cross-entropy in nats per target) of `rule.predict`, model in eval mode, over every
    target that is not IGNORE_INDEX: logits [B, C] with y [B], or per token [B, L, V] with y [B, L].
    The loss is NaN unless with_loss. parallel: each rank evaluates its shard and the counts are summed."""
    if parallel:
        x, y = ddp.shard(x, y)
    was_training = rule.training
    rule.eval()
    correct, total, loss = 0, 0, 0.0
    for xb, yb in batches(x, y, batch_size):
        logits = rule.predict(xb.to(device))
        keep = yb != IGNORE_INDEX
        correct += ((logits.argmax(-1).cpu() == yb) & keep).sum().item()
        total += keep.sum().item()
        if with_loss:
            loss += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), yb.to(device).reshape(-1),
                                    ignore_index=IGNORE_INDEX, reduction="sum").item()
    rule.train(was_training)
    if parallel:
        correct, total, loss = ddp.all_sum([correct, total, loss])
    return correct / max(total, 1), (loss / max(total, 1) if with_loss else float("nan"))


def accuracy(rule: LearningRule, x: Tensor, y: Tensor, batch_size: int, device: torch.device,
             parallel: bool = False) -> float:
    """Fraction of correct argmax predictions of `rule.predict` (per target; see `evaluate`)."""
    return evaluate(rule, x, y, batch_size, device, parallel=parallel)[0]


def split_validation(x: Tensor, y: Tensor, fraction: float, seed: int):
    """(x_train, y_train, x_val, y_val): the last `fraction` of a seeded permutation of the training set is
    held out (x_val is None when fraction is 0). The permutation depends on the seed only, so a resumed or
    data-parallel run holds out the same samples."""
    if fraction <= 0:
        return x, y, None, None
    n_val = int(round(fraction * len(x)))
    if not 1 <= n_val < len(x):
        raise ConfigError(f"trainer.val_fraction={fraction} leaves {n_val} of {len(x)} samples for validation: "
                          "choose a fraction that keeps at least one sample on each side")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(10_000 + seed))
    keep, held = perm[:-n_val].sort().values, perm[-n_val:].sort().values
    return x[keep], y[keep], x[held], y[held]


def unigram_loss(y_train: Tensor, y_test: Tensor, n_classes: int) -> float:
    """Test cross-entropy (nats per target) of the add-one-smoothed unigram distribution of the training
    targets: the baseline an input-blind model reaches. IGNORE_INDEX targets are skipped."""
    counts = torch.bincount(y_train[y_train != IGNORE_INDEX].flatten(), minlength=n_classes).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[y_test[y_test != IGNORE_INDEX].flatten()].mean())


def _check_finite(logs: dict, params: list[nn.Parameter], epoch: int, step: int) -> None:
    bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad and "loss" not in logs and any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params):
        bad = ["gradient"]
    if bad:
        raise ConfigError(f"training diverged at epoch {epoch} step {step}: non-finite {', '.join(bad)}; "
                          "lower the learning rate (trainer.optimizer.lr) or set trainer.grad_clip")


def train(rule: LearningRule, data: Dataset, cfg: TrainConfig, seed: int = 0,
          device: torch.device | str = "cpu", desc: str = "train", checkpoint: str | None = None) -> dict:
    """Train `rule` on `data` for cfg.epochs epochs; returns the metrics dict (see module docstring).
    checkpoint: a file path; after every epoch the full training state is saved there, and if the file
    already exists training resumes after its epoch (bioplaus.checkpoint)."""
    device = torch.device(device)
    rule.to(device)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, x_val, y_val = split_validation(data.x_train, data.y_train, float(cfg.val_fraction), seed)
    params = rule.trainable_parameters()
    if not params:
        raise ConfigError(f"rule {type(rule).__name__} has no trainable parameters for this model")
    total = int(cfg.epochs) * math.ceil(len(x_train) / int(cfg.batch_size))
    parallel, log_keys = ddp.active(cfg.ddp), None
    if parallel:
        if int(cfg.batch_size) < ddp.world_size():
            raise ConfigError(f"trainer.batch_size ({cfg.batch_size}) must be >= the number of ranks "
                              f"({ddp.world_size()}) for data-parallel training")
        ddp.sync_module(rule)                   # every rank starts from rank 0's parameters and buffers
    by_blocks = parallel and getattr(rule, "parallel_split", "batch") == "blocks"
    if by_blocks:                               # the rule splits its work, not the batch: grads are summed
        rule.set_partition(ddp.rank(), ddp.world_size())
    schedule = SCHEDULES[cfg.lr_schedule]

    def make_optimizer():
        opt = cfg.optimizer(rule.param_groups())
        return opt, [g["lr"] * g.get("lr_scale", 1.0) for g in opt.param_groups]

    opt, base_lr = make_optimizer()
    history, steps, train_time = [], 0, 0.0
    saved, cost = SavedTensors(), UpdateCost(rule)
    lm = getattr(data, "task", "classify") == "lm"
    start = 0
    if checkpoint is not None and (ck := ckpt.load(checkpoint)) is not None:
        rule.load_state_dict(ck["rule"])
        params = rule.trainable_parameters()
        opt, base_lr = make_optimizer()
        opt.load_state_dict(ck["optimizer"])
        ckpt.set_rng_state(ck["rng"], gen)
        steps, history, train_time = ck["steps"], ck["history"], ck["train_time_s"]
        saved.bytes, saved.peak, cost.passes, cost.ops = ck["cost"]
        start = ck["epoch"] + 1
        if ddp.is_main():
            print(f"{desc}: resuming after epoch {ck['epoch']} from {checkpoint}", flush=True)
    bar = tqdm(range(start, int(cfg.epochs)), desc=desc, disable=not cfg.progress or not ddp.is_main(), leave=False,
               dynamic_ncols=True, initial=start, total=int(cfg.epochs))
    with PeakMemory(device) as mem:
        for epoch in bar:
            rule.train()
            t0, loss_sum, n = time.perf_counter(), 0.0, 0
            for xb, yb in batches(x_train, y_train, int(cfg.batch_size), shuffle=True, generator=gen):
                n_global = len(xb)
                if parallel and not by_blocks:          # this rank's share of the global batch
                    xb, yb = ddp.shard(xb, yb)
                n_local = n_global if by_blocks else len(xb)
                opt.zero_grad(set_to_none=True)
                if steps == 0:                          # measure what one update keeps for backward
                    with SavedTensors(exclude=rule.parameters()) as saved, cost:
                        logs = rule.assign_credit(xb.to(device), yb.to(device))
                elif len(xb):
                    logs = rule.assign_credit(xb.to(device), yb.to(device))
                else:                                   # an empty share of a short last batch adds nothing
                    logs = {}
                if parallel:                            # share-weighted mean over ranks
                    log_keys = log_keys if log_keys is not None else ddp.log_keys(logs)
                    ddp.reduce_grads(params, n_local, n_global)
                    logs = ddp.reduce_logs(logs, log_keys, n_local, n_global)
                _check_finite(logs, params, epoch, steps)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                for g, lr in zip(opt.param_groups, base_lr):
                    g["lr"] = lr * schedule(steps, total)
                opt.step()
                steps += 1
                loss_sum += logs.get("loss", float("nan")) * n_global
                n += n_global
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time += time.perf_counter() - t0
            if parallel:                                # buffers a rule changed while training: rank 0's
                ddp.sync_module(rule, buffers_only=True)
            test_acc, test_loss = evaluate(rule, data.x_test, data.y_test, int(cfg.eval_batch_size), device, lm,
                                           parallel)
            row = {"epoch": epoch, "loss": loss_sum / max(n, 1), "test_acc": test_acc}
            if lm:
                row["test_loss"] = test_loss
            if x_val is not None:
                row["val_acc"], row["val_loss"] = evaluate(rule, x_val, y_val, int(cfg.eval_batch_size), device,
                                                           True, parallel)
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", test_acc=f"{test_acc:.3f}",
                            **({"test_loss": f"{test_loss:.3f}"} if lm else {}))
            if rule.on_epoch_end(epoch, row):
                params = rule.trainable_parameters()
                opt, base_lr = make_optimizer()
                if parallel:
                    ddp.sync_module(rule)
            if checkpoint is not None and ddp.is_main():
                ckpt.save(checkpoint, {"epoch": epoch, "rule": rule.state_dict(), "optimizer": opt.state_dict(),
                                       "rng": ckpt.rng_state(gen), "steps": steps, "history": history,
                                       "train_time_s": train_time,
                                       "cost": (saved.bytes, saved.peak, cost.passes, cost.ops)})
    bar.close()
    test_acc, test_loss = evaluate(rule, data.x_test, data.y_test, int(cfg.eval_batch_size), device, lm, parallel)
    ops = dict(zip(("mac", "ac"), ddp.all_sum([cost.ops["mac"], cost.ops["ac"]]))) if parallel else cost.ops
    extra = {"test_loss": test_loss, "bits_per_char": test_loss / math.log(2),
             "unigram_loss": unigram_loss(data.y_train, data.y_test, data.n_classes)} if lm else {}
    return {
        "test_acc": test_acc,
        **extra,
        "train_acc": accuracy(rule, x_train, y_train, int(cfg.eval_batch_size), device, parallel),
        **({"val_acc": history[-1]["val_acc"]} if x_val is not None and history else {}),
        "best_test_acc": max([r["test_acc"] for r in history], default=test_acc),
        "train_time_s": train_time,
        "time_per_step_ms": 1000 * train_time / max(steps, 1),
        "peak_mem_mb": mem.peak_mb,
        "saved_for_backward_mb": saved.bytes / 2**20,
        "held_for_backward_peak_mb": saved.peak / 2**20,
        "steps": steps,
        "epochs": int(cfg.epochs),
        "passes_per_update": cost.passes,
        "train_mac_per_step": ops["mac"],
        "train_ac_per_step": ops["ac"],
        "history": history,
    }
