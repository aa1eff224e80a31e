"""The training loop: the same optimizer, clipping, schedule and evaluation for every rule.

Per step: zero grads -> `rule.assign_credit(x, y)` (fills .grad) -> optional clipping (of all gradients
together, or with `grad_clip_groups` of each of the rule's parameter groups on its own, as two optimizers with
their own clipping would: counter-current learning's official setting) -> learning rate
from the schedule (cosine decay to 0 over the run by default) -> optimizer step.
Training batches come from `bioplaus.data.batches` over data.x_train (a tensor or a memory-mapped MappedArray,
read a batch at a time); a dataset's `augment` (e.g. CIFAR's random crop and flip) is applied to each global
training batch on the device, drawn from the run's seeded generator, and never to evaluation.
Before the first epoch `rule.on_train_start(epochs)` tells the rule its budget.
Per epoch: test accuracy through `rule.predict` (every `eval_every` epochs and after the last), and, with
`val_fraction` > 0, accuracy and loss on a held-out part of the training set (`val_acc`, `val_loss`: what rules
that switch or stop on a plateau should read, never test_acc), `rule.on_epoch_end` (True -> rebuild the
optimizer), an optional checkpoint, a tqdm progress bar.
A non-finite loss or gradient stops the run with a DivergedError naming the epoch and step (never trains
through NaNs), and so does a finite loss that blows up (`trainer.divergence`, bioplaus.divergence: past a multiple
of the first update's loss, or test accuracy at chance while the loss grew).

Everything measured about the run (time, memory, the first update's ops, passes and saved bytes) is the
`bioplaus.stats.TrainingMeter`'s; data-parallel training is behind one object from
`bioplaus.distributed.for_training` (it does nothing in a single process); checkpoints are
`bioplaus.checkpoint`. The loop itself has no branches for either.

`train` returns the metrics dict that `bioplaus-run` writes to metrics.json:
test_acc, metric (the key a comparison ranks by: `Dataset.metric`, test_acc or test_auc), train_acc, steps, epochs,
val_acc (and val_auc for links: the last epoch's, when trainer.val_fraction > 0),
history (per-epoch loss / test_acc / ...), the task's own metrics (`Dataset.task_metrics`: for language
modelling test_loss in nats per token, bits_per_char and the unigram baseline; for link prediction test_auc, and
val_auc in the epoch rows, from every output of the evaluation: `Dataset.output_metrics`) and the meter's cost metrics
(train_time_s, time_per_step_ms, peak_mem_mb, saved_for_backward_mb, held_for_backward_peak_mb,
passes_per_update, train_mac_per_step, train_ac_per_step; see bioplaus.stats.cost). The final test figures are the
last epoch's row (one evaluation, so a rule that samples at inference reports one draw), unless the rule changed
its parameters in that epoch's `on_epoch_end`: then the changed model is scored again.

Accuracy counts every target that is not IGNORE_INDEX (-100): one per sample for `task="classify"`
(logits [B, C], y [B]), one per token for `task="lm"` (logits [B, L, V], y [B, L]).

Data parallel (`trainer.ddp`, launched by torchrun; bioplaus.distributed): each global batch is split over
the ranks and the gradients averaged by share after `assign_credit` (a rule with parallel_split = "blocks",
NoProp's block_parallel, instead splits its own work over the ranks via set_partition, sees the whole batch,
and its gradients are summed); losses, evaluation counts and the first update's MACs/ACs are summed over
ranks (passes, saved_for_backward_mb, time and memory are this process's).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bioplaus import checkpoint as ckpt
from bioplaus import distributed
from bioplaus.data import IGNORE_INDEX, Dataset, batches
from bioplaus.data.base import VALIDATION_SEED_OFFSET
from bioplaus.divergence import Divergence
from bioplaus.errors import ConfigError, DivergedError
from bioplaus.rules.base import LearningRule
from bioplaus.stats.cost import TrainingMeter

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
    eval_every: int = 1              # test accuracy every N epochs (and after the last); skipped epochs' rows
                                     # carry no test_acc (validation, when held out, is still scored each epoch)
    grad_clip: float | None = None
    grad_clip_groups: bool = False   # clip each of the rule's parameter groups to grad_clip on its own
    lr_schedule: str = "cosine"      # cosine: lr decays to 0 over the run (per step); constant
    progress: bool = True
    log_every: int = 0               # print one line (epoch, loss, test/val figures) every N epochs; 0 = never.
                                     # For runs without a progress bar (sweeps, clusters): watch their logs
    checkpoint: bool = False         # save an epoch checkpoint in the run dir; a rerun in that dir resumes
    keep_checkpoint: bool = False    # keep it after the run finished (a later run may then add epochs)
    ddp: str | bool = "auto"         # data parallel under torchrun: auto (WORLD_SIZE > 1) | true | false
    val_fraction: float = 0.0        # hold out this fraction of the training set (a seeded permutation, not
                                     # stratified); epoch rows then carry val_acc / val_loss
    divergence: dict | None = field(default_factory=dict)   # bioplaus.divergence settings; null = off
    optimizer: Callable[..., torch.optim.Optimizer] = field(
        default_factory=lambda: (lambda params: torch.optim.Adam(params, lr=1e-3)))

    def __post_init__(self):
        self.epochs = _number("epochs", self.epochs, int, 0)
        self.batch_size = _number("batch_size", self.batch_size, int, 1)
        self.eval_batch_size = _number("eval_batch_size", self.eval_batch_size, int, 1)
        self.eval_every = _number("eval_every", self.eval_every, int, 1)
        self.log_every = _number("log_every", self.log_every, int, 0)
        self.val_fraction = _number("val_fraction", self.val_fraction, float, 0.0)
        if not self.val_fraction < 1.0:
            raise ConfigError(f"trainer.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"unknown trainer.lr_schedule '{self.lr_schedule}': choose one of "
                              f"{', '.join(SCHEDULES)}")
        if self.grad_clip is not None and _number("grad_clip", self.grad_clip, float, -math.inf) <= 0:
            raise ConfigError(f"trainer.grad_clip must be > 0 or null, got {self.grad_clip}")
        for name in ("progress", "checkpoint", "keep_checkpoint"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"trainer.{name} must be true or false, got {getattr(self, name)!r}")
        self.ddp = distributed.parse_mode(self.ddp)
        Divergence.from_config(self.divergence)
        check_optimizer(self.optimizer)


def _number(name: str, value, kind: type, low: float):
    """trainer.<name> as an int or float >= low, or a ConfigError naming the setting."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (kind is int and float(value) != int(value)):
        raise ConfigError(f"trainer.{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if value < low:
        raise ConfigError(f"trainer.{name} must be >= {low:g}, got {value}")
    return kind(value)


def epoch_line(desc: str, row: dict, epochs: int) -> str:
    """One epoch row as a log line: '<desc>: epoch 3/20 loss 0.4123 test_acc 0.8812 val_acc 0.8750'."""
    figures = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)))
    return f"{desc}: epoch {row['epoch'] + 1}/{epochs} {figures}"


def check_optimizer(make: Callable) -> None:
    """A configured optimizer (a partial of a torch.optim class, as `_partial_: true` gives) is built once on a
    dummy parameter, so a bad setting (lr=-1, betas out of range, an unknown argument) is one ConfigError before
    training instead of a traceback at the first epoch. Other callables are the caller's own and left alone."""
    func = getattr(make, "func", None)
    if not (isinstance(make, functools.partial) and isinstance(func, type) and issubclass(func, torch.optim.Optimizer)):
        return
    lr = make.keywords.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
        raise ConfigError(f"trainer.optimizer.lr must be a number, got {lr!r}")
    try:
        make([nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad trainer.optimizer settings for {func.__name__}: {e}") from None


@torch.no_grad()
def evaluate(rule: LearningRule, x: Tensor, y: Tensor, batch_size: int, device: torch.device,
             par: distributed.Local | None = None, outputs: list | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy in nats per target) of `rule.predict`, model in eval mode, over every
    target that is not IGNORE_INDEX: logits [B, C] with y [B], or per token [B, L, V] with y [B, L].
    par: the parallel hooks (data parallel: each rank evaluates its shard and the counts are summed).
    outputs: a list to which every batch's (logits, targets) are appended (on the CPU), for
    `Dataset.output_metrics` (data parallel: this rank's shard only)."""
    par = par or distributed.Local()
    x, y = par.shard(x, y)
    was_training = rule.training
    rule.eval()
    correct, total, loss = 0, 0, 0.0
    for xb, yb in batches(x, y, batch_size):
        logits = rule.predict(xb.to(device))
        if outputs is not None:
            outputs.append((logits.detach().float().cpu(), yb))
        keep = yb != IGNORE_INDEX
        correct += ((logits.argmax(-1).cpu() == yb) & keep).sum().item()
        total += keep.sum().item()
        loss += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), yb.to(device).reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum").item()
    rule.train(was_training)
    correct, total, loss = par.sum([correct, total, loss])
    return correct / max(total, 1), loss / max(total, 1)


def accuracy(rule: LearningRule, x: Tensor, y: Tensor, batch_size: int, device: torch.device,
             par: distributed.Local | None = None) -> float:
    """Fraction of correct argmax predictions of `rule.predict` (per target; see `evaluate`)."""
    return evaluate(rule, x, y, batch_size, device, par)[0]


def validation_data(data: Dataset, fraction: float, seed: int):
    """(x_train, y_train, x_val, y_val): the data's own validation split when it holds one (`data.x_val`: link data
    after `hold_out`, whose validation edges left the message-passing graph), else `split_validation` of the
    training set. Data that must hold their validation themselves (`data.holds_validation`) and have not are refused:
    a split made here would leave the validation edges in the graph the model was built with."""
    if data.x_val is not None:
        return data.x_train, data.y_train, data.x_val, data.y_val
    if fraction > 0 and data.holds_validation:
        raise ConfigError(f"data {data.name} holds out its validation pairs itself, before the model is built (their "
                          f"edges leave the graph): call data.hold_out({fraction}, seed) first, as bioplaus.run does")
    return split_validation(data.x_train, data.y_train, fraction, seed)


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
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(VALIDATION_SEED_OFFSET + seed))
    keep, held = perm[:-n_val].sort().values, perm[-n_val:].sort().values
    return x.index_select(0, keep), y[keep], x.index_select(0, held), y[held]   # a MappedArray stays lazy


def check_finite(logs: dict, params: list[nn.Parameter], epoch: int, step: int) -> None:
    """A ConfigError naming the epoch and step when a logged value (or, for a rule that logs no loss, a
    gradient) is not finite."""
    bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad and "loss" not in logs and any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params):
        bad = ["gradient"]
    if bad:
        raise DivergedError(f"training diverged at epoch {epoch} step {step}: non-finite {', '.join(bad)}; "
                          "lower the learning rate (trainer.optimizer.lr) or set trainer.grad_clip")


class _Optimizer:
    """The trainer's optimizer over `rule.param_groups()`, each group's lr = base lr x its lr_scale x the
    schedule; rebuilt when the rule's parameter set changes."""

    def __init__(self, rule: LearningRule, cfg: TrainConfig, total_steps: int):
        self.rule, self.cfg, self.total = rule, cfg, total_steps
        self.schedule = SCHEDULES[cfg.lr_schedule]
        self.build()

    def build(self) -> None:
        self.params = self.rule.trainable_parameters()
        self.opt = self.cfg.optimizer(self.rule.param_groups())
        self.base_lr = [g["lr"] * g.get("lr_scale", 1.0) for g in self.opt.param_groups]

    def step(self, steps: int) -> None:
        if self.cfg.grad_clip:
            groups = [g["params"] for g in self.opt.param_groups] if self.cfg.grad_clip_groups else [self.params]
            for params in groups:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        for g, lr in zip(self.opt.param_groups, self.base_lr):
            g["lr"] = lr * self.schedule(steps, self.total)
        self.opt.step()


def train(rule: LearningRule, data: Dataset, cfg: TrainConfig, seed: int = 0,
          device: torch.device | str = "cpu", desc: str = "train", checkpoint: str | None = None,
          on_epoch: Callable[[dict], None] | None = None, bar_position: int | None = None) -> dict:
    """Train `rule` on `data` for cfg.epochs epochs; returns the metrics dict (see module docstring).
    checkpoint: a file path; after every epoch the full training state is saved there, and if the file
    already exists training resumes after its epoch (bioplaus.checkpoint).
    on_epoch: called with each epoch's history row (the run's logger, bioplaus.loggers).
    bar_position: the progress bar's row (parallel sweep jobs each keep their own; bioplaus.runtime)."""
    device = torch.device(device)
    rule.to(device)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train, x_val, y_val = validation_data(data, float(cfg.val_fraction), seed)
    if not rule.trainable_parameters():
        raise ConfigError(f"rule {rule.name} has no trainable parameters for this model")
    par = distributed.for_training(rule, cfg.ddp)
    par.start(rule, int(cfg.batch_size))
    opt = _Optimizer(rule, cfg, int(cfg.epochs) * math.ceil(len(x_train) / int(cfg.batch_size)))
    meter = TrainingMeter(rule, device)
    watch = Divergence.from_config(cfg.divergence)
    history, steps, start = [], 0, 0
    if checkpoint is not None and (ck := ckpt.load(checkpoint)) is not None:
        rule.load_state_dict(ck["rule"])
        opt.build()
        opt.opt.load_state_dict(ck["optimizer"])
        ckpt.set_rng_state(ck["rng"], gen)
        steps, history, start = ck["steps"], ck["history"], ck["epoch"] + 1
        meter.load_state(ck["meter"])
        watch.load_state(ck.get("divergence"))
        if par.is_main():
            print(f"{desc}: resuming after epoch {ck['epoch']} from {checkpoint}", flush=True)
    eval_bs = int(cfg.eval_batch_size)
    rule.on_train_start(int(cfg.epochs))
    bar = tqdm(range(start, int(cfg.epochs)), desc=desc, disable=not cfg.progress or not par.is_main(), leave=True,
               dynamic_ncols=True, initial=start, total=int(cfg.epochs), position=bar_position)
    final = None                    # the last epoch's test evaluation, reused when on_epoch_end changed nothing
    with meter.run():
        for epoch in bar:
            rule.train()
            loss_sum, n = 0.0, 0
            with meter.epoch():
                for xb, yb in batches(x_train, y_train, int(cfg.batch_size), shuffle=True, generator=gen,
                                      augment=data.augment, device=device):
                    xb, yb, n_local, n_global = par.share(xb, yb)
                    opt.opt.zero_grad(set_to_none=True)
                    with meter.update(first=steps == 0):
                        logs = rule.assign_credit(xb.to(device), yb.to(device)) if len(xb) else {}
                    logs = par.reduce(opt.params, logs, n_local, n_global)
                    check_finite(logs, opt.params, epoch, steps)
                    watch.update(logs, epoch, steps)
                    opt.step(steps)
                    steps += 1
                    loss_sum += logs.get("loss", float("nan")) * n_global
                    n += n_global
            par.sync_buffers(rule)
            row, scored = {"epoch": epoch, "loss": loss_sum / max(n, 1)}, None
            if (epoch + 1) % int(cfg.eval_every) == 0 or epoch + 1 == int(cfg.epochs):
                out = data.keep_outputs()
                test_acc, test_loss = evaluate(rule, data.x_test, data.y_test, eval_bs, device, par, out)
                row.update({"test_acc": test_acc, **data.task_metrics(test_loss, per_epoch=True),
                            **data.output_metrics(out, "test")})
                scored = (test_acc, test_loss, out)
            if x_val is not None:
                out = data.keep_outputs()
                row["val_acc"], row["val_loss"] = evaluate(rule, x_val, y_val, eval_bs, device, par, out)
                row.update(data.output_metrics(out, "val"))
            history.append(row)
            watch.epoch_end(row, epoch + 1, data.n_classes, data.task)
            if on_epoch is not None:
                on_epoch(row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch"})
            if cfg.log_every and (epoch + 1) % cfg.log_every == 0 and par.is_main():
                line = epoch_line(desc, row, int(cfg.epochs))
                if cfg.progress:
                    tqdm.write(line)                           # above the bar
                else:
                    print(line, flush=True)                    # flushed: the logs of background runs
            changed = rule.on_epoch_end(epoch, row)
            if changed:
                opt.build()
                par.sync(rule)
            final = None if changed else scored
            if checkpoint is not None and par.is_main():
                ckpt.save(checkpoint, {"epoch": epoch, "rule": rule.state_dict(), "optimizer": opt.opt.state_dict(),
                                       "rng": ckpt.rng_state(gen), "steps": steps, "history": history,
                                       "meter": meter.state(), "divergence": watch.state()})
    bar.close()
    if final is None:               # no epoch ran (a finished run resumed), or the rule changed the model after it
        out = data.keep_outputs()
        test_acc, test_loss = evaluate(rule, data.x_test, data.y_test, eval_bs, device, par, out)
    else:
        test_acc, test_loss, out = final
    return {
        "test_acc": test_acc,
        "metric": data.metric,
        **data.task_metrics(test_loss),
        **data.output_metrics(out, "test"),
        "train_acc": accuracy(rule, x_train, y_train, eval_bs, device, par),
        **({k: history[-1][k] for k in ("val_acc", "val_auc") if k in history[-1]} if x_val is not None and history
           else {}),
        **meter.metrics(steps, par.sum),
        "steps": steps,
        "epochs": int(cfg.epochs),
        "history": history,
    }
