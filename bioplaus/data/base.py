"""The `Dataset` type every loader returns, the seeded batch iterator, and what a task measures.

A dataset holds x_train, y_train, x_test, y_test: tensors in memory, or for large sets inputs that are
`bioplaus.data.cache.MappedArray`s (memory-mapped rows that index like a tensor: x[idx] reads and converts only
those rows; labels stay tensors). It hands the model what it needs to be built (`model_kwargs()`: the input
shape of one sample and the number of classes; graph data add the graph), so the runner has no per-family branch
and models import no data module.

Tasks (`Dataset.task`): "classify" (y [N], one label per sample), "lm" (y [N, L], one target per
token; IGNORE_INDEX = -100 where nothing is asked, e.g. non-query positions of MQAR) or "link" (link prediction:
x [N, 2] node pairs, y [N] 1 = an edge, 0 = a sampled non-edge; logits [N, 2], bioplaus.data.links).
`task_metrics(test_loss)` adds what a task reports beside accuracy: for "lm" the loss in bits per character and
the unigram baseline (the test cross-entropy of a model that ignores its input). A task that needs every output
of an evaluation, not only the summed loss, asks for them (`keep_outputs()` returns a list the trainer's
`evaluate` fills with (logits, targets) per batch) and turns them into metrics in `output_metrics`: for "link"
the ROC AUC of the edge score logit[1] - logit[0] (`{split}_auc`), the paper's metric (under data parallel, of
the rank's shard).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from bioplaus.errors import ConfigError

TASKS = ("classify", "lm", "link")
IGNORE_INDEX = -100          # target of a position that is not scored (cross-entropy's ignore_index)
VALIDATION_SEED_OFFSET = 10_000   # validation splits (the trainer's, link data's hold_out) draw from seed + this


@dataclass
class Dataset:
    """A dataset. classify: x [N, *in_shape] float32, y [N] int64 labels.
    lm: x [N, L] int64 token ids, y [N, L] int64 per-token targets (IGNORE_INDEX = not scored);
    n_classes is then the vocabulary size. `vocab`: the characters in id order (character text).
    x may be a MappedArray (memory-mapped; see the module docstring). `augment`: a callable (x_batch,
    generator) -> x_batch the trainer applies to every training batch, never to evaluation
    (`bioplaus.data.augment.Augment`: random crop and flip), or None."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    task: str = "classify"
    vocab: str | None = None
    spike_train: bool = False        # x [N, T, ...] is already a spike train (read with encoding=given)
    augment: Callable[[Tensor, torch.Generator | None], Tensor] | None = None   # training batches only

    graph_data = False               # samples are node ids into one graph (bioplaus.data.graphs.GraphDataset)
    # A validation split the dataset holds itself (None: the trainer splits the training set, trainer.val_fraction).
    # Data whose validation samples must also leave the model's inputs (link prediction: their edges leave the
    # message-passing graph) set `holds_validation` and make it with `hold_out(fraction, seed)` before the model
    # is built (bioplaus.run.build does).
    x_val = None
    y_val = None
    holds_validation = False

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"unknown data task '{self.task}': choose one of {', '.join(TASKS)}")
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if len(x) != len(y):
                raise ConfigError(f"data {self.name}: {len(x)} {part} samples but {len(y)} {part} labels")
            scored = y[y != IGNORE_INDEX]
            if scored.numel() and not 0 <= int(scored.min()) <= int(scored.max()) < self.n_classes:
                raise ConfigError(f"data {self.name}: {part} labels span {int(scored.min())}..{int(scored.max())}, "
                                  f"outside 0..{self.n_classes - 1} for {self.n_classes} classes")

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def model_kwargs(self) -> dict:
        """What a model is built with from this data: in_shape (one sample) and n_classes."""
        return {"in_shape": list(self.in_shape), "n_classes": self.n_classes}

    def task_metrics(self, test_loss: float, per_epoch: bool = False) -> dict:
        """Metrics beside accuracy for this task, from the test cross-entropy (nats per target). lm: the loss
        itself and, at the end of a run (per_epoch False), bits_per_char (test_loss / ln 2) and unigram_loss
        (the input-blind baseline). classify: none (rules' outputs need not be logits)."""
        if self.task != "lm":
            return {}
        if per_epoch:
            return {"test_loss": test_loss}
        return {"test_loss": test_loss, "bits_per_char": test_loss / math.log(2),
                "unigram_loss": unigram_loss(self.y_train, self.y_test, self.n_classes)}

    @property
    def metric(self) -> str:
        """The metrics.json key a comparison ranks this task by: test_auc for link prediction (pair accuracy at a
        fixed threshold says little about a dot-product score), test_acc otherwise."""
        return "test_auc" if self.task == "link" else "test_acc"

    def keep_outputs(self) -> list | None:
        """A list for the trainer's evaluate to append every batch's (logits, targets) to, when this task's metrics
        need them (link), else None (nothing is kept)."""
        return [] if self.task == "link" else None

    def output_metrics(self, outputs: list | None, split: str) -> dict:
        """Metrics from every output of one evaluation (`outputs`: (logits [b, 2], y [b]) per batch). link:
        {split}_auc, the ROC AUC of the score logit[1] - logit[0] against y (0.5: chance). Others: {}."""
        if not outputs:
            return {}
        scores, y = (torch.cat(t) for t in zip(*outputs))
        return {f"{split}_auc": roc_auc(scores[:, 1] - scores[:, 0], y)}

    def __repr__(self) -> str:
        what = f"{self.n_classes} classes" if self.task == "classify" else f"{self.task}, vocab {self.n_classes}"
        return f"Dataset({self.name}: train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, {what})"


def subset(n: int | None, total: int, what: str) -> int:
    """How many of `total` items a `data.n_*` setting keeps (None = all), or a ConfigError out of range."""
    if n is None:
        return total
    if isinstance(n, bool) or not isinstance(n, (int, float)) or float(n) != int(n) or not 1 <= int(n) <= total:
        raise ConfigError(f"{what}={n} is out of range: choose 1..{total} (or null for all)")
    return int(n)


def subset_rows(n: int | None, total: int, what: str, seed: int = 0):
    """The rows a `data.n_*` setting keeps: all of range(total) (n None or total), else a fixed random subset
    (numpy seed `seed`) in ascending order, for files whose order may follow class or speaker."""
    import numpy as np

    k = subset(n, total, what)
    return np.arange(total) if k == total else np.sort(np.random.default_rng(seed).permutation(total)[:k])


def unigram_loss(y_train: Tensor, y_test: Tensor, n_classes: int) -> float:
    """Test cross-entropy (nats per target) of the add-one-smoothed unigram distribution of the training
    targets: the baseline an input-blind model reaches. IGNORE_INDEX targets are skipped."""
    counts = torch.bincount(y_train[y_train != IGNORE_INDEX].flatten(), minlength=n_classes).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[y_test[y_test != IGNORE_INDEX].flatten()].mean())


def roc_auc(scores: Tensor, y: Tensor) -> float:
    """Area under the ROC curve of scores [N] for binary targets y [N] (1 positive): the probability that a random
    positive outscores a random negative, ties counting half (Mann-Whitney U with average ranks). nan if one
    class is missing."""
    y = y.flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    s = scores.flatten().double()
    order = s.argsort()
    _, inverse, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1                   # average rank of each group of ties
    ranks = torch.empty_like(s)
    ranks[order] = (first + (counts - 1) / 2.0).double()[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def batches(x, y: Tensor, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            augment: Callable | None = None, device: torch.device | str | None = None
            ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x [b, ...], y [b, ...]) mini-batches; the last one may be smaller. x: a tensor or a MappedArray
    (x[idx] reads only those rows). augment: applied to each x batch as augment(x_b, generator), after moving it
    to `device` (the trainer passes the dataset's augment for training batches, on the global batch)."""
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb = x[idx]
        if augment is not None:
            xb = augment(xb if device is None else xb.to(device), generator)
        yield xb, y[idx]


__all__ = ["IGNORE_INDEX", "TASKS", "Dataset", "batches", "roc_auc", "subset", "subset_rows", "unigram_loss"]
