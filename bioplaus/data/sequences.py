"""Sequence datasets, all generated or read offline: character text, multi-query associative recall
(MQAR) and images as patch sequences. Every one is a `bioplaus.data.base.Dataset`.

- `text(seq_len, ...)`: character-level language modelling on CPython's own documentation
  (`pydoc_data.topics`, 79 topics, ~465k characters; ships with every CPython). The topics are joined
  in sorted-key order with blank lines; the vocabulary is the sorted set of characters of the whole
  text (`CharVocab`); the split is contiguous: the first (1 - test_fraction) of the characters train,
  the rest test. Windows start every `stride` characters (default: non-overlapping):
      x [N, L] int64 = ids[i : i + L],   y [N, L] int64 = ids[i + 1 : i + L + 1]   (next character)
  task "lm", n_classes = vocabulary size (103 characters on CPython 3.11).
- `mqar(...)`: multi-query associative recall (Arora et al. 2023, "Zoology"). Each sequence of length
  L opens with n_kv key-value pairs  k_1 v_1 ... k_n v_n  (keys drawn without replacement from
  1..V/2-1, values from V/2..V-1), followed by a query region in which every key appears once, at
  distinct even offsets chosen uniformly (Zoology draws the offsets from a power law), the other
  positions holding random tokens. Target at a query position = the value paired with that key in
  the context; every other target is IGNORE_INDEX (-100). Seeded by `seed` (independent of the run's
  seed, so every run sees the same data). Needs L >= 4 n_kv and n_kv <= V/2 - 1.
- `digits_seq(patch)`, `fashion_seq(root, ..., patch)`: the image protocols of `bioplaus.data.images` as
  patch sequences for classification: [N, C, H, W] -> x [N, L, P] with L = (H/ph)(W/pw) patches in
  row-major order and P = C ph pw pixels per patch; y [N] unchanged, task "classify".
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from bioplaus.data.base import IGNORE_INDEX, Dataset
from bioplaus.data.images import FASHION_ROOT, digits, fashion
from bioplaus.errors import ConfigError


def corpus() -> str:
    """CPython's pydoc topics as one string (topics in sorted-key order, separated by blank lines)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


class CharVocab:
    """Characters <-> ids: `chars` lists the vocabulary in id order."""

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> Tensor:
        """str -> int64 ids [len(s)]; a character outside the vocabulary raises ConfigError."""
        try:
            return torch.tensor([self.index[c] for c in s], dtype=torch.int64)
        except KeyError as e:
            raise ConfigError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def _positive(name: str, value, minimum: int = 1) -> int:
    if value is None or int(value) < minimum:
        raise ConfigError(f"data.{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _windows(ids: Tensor, L: int, stride: int, limit: int | None, what: str) -> tuple[Tensor, Tensor]:
    starts = torch.arange(0, max(len(ids) - L, 0), stride)
    if len(starts) == 0:
        raise ConfigError(f"data.seq_len={L} is longer than the {what} text ({len(ids)} characters): "
                          "use a shorter data.seq_len or a smaller data.test_fraction")
    if limit is not None:
        if not 1 <= int(limit) <= len(starts):
            raise ConfigError(f"data.n_{what}={limit} is out of range: choose 1..{len(starts)} (or null for all)")
        starts = starts[:int(limit)]
    idx = starts[:, None] + torch.arange(L + 1)
    chunk = ids[idx]
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def text(seq_len: int = 128, test_fraction: float = 0.1, stride: int | None = None,
         n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """Character-level LM windows from pydoc_data.topics (see the module docstring)."""
    L = _positive("seq_len", seq_len, 2)
    stride = L if stride is None else _positive("stride", stride)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    s = corpus()
    vocab = CharVocab(s)
    ids = vocab.encode(s)
    cut = int(round(len(ids) * (1 - float(test_fraction))))
    x_tr, y_tr = _windows(ids[:cut], L, stride, n_train, "train")
    x_te, y_te = _windows(ids[cut:], L, L, n_test, "test")
    return Dataset("text", x_tr, y_tr, x_te, y_te, len(vocab), task="lm", vocab=vocab.chars)


def mqar_sequences(n: int, seq_len: int, n_kv: int, vocab_size: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n MQAR sequences: inputs [n, seq_len] int64 and targets [n, seq_len] (IGNORE_INDEX off queries)."""
    half = vocab_size // 2
    ctx = 2 * n_kv
    slots = (seq_len - ctx) // 2                                   # even offsets in the query region
    keys = rng.random((n, half - 1)).argsort(1)[:, :n_kv] + 1       # distinct keys in 1..half-1
    vals = rng.random((n, vocab_size - half)).argsort(1)[:, :n_kv] + half
    x = rng.integers(0, vocab_size, (n, seq_len))                  # random filler tokens
    x[:, 0:ctx:2], x[:, 1:ctx:2] = keys, vals
    pos = ctx + 2 * rng.random((n, slots)).argsort(1)[:, :n_kv]    # query positions of key j
    rows = np.arange(n)[:, None]
    x[rows, pos] = keys
    y = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    y[rows, pos] = vals
    return x.astype(np.int64), y


def mqar(n_train: int = 20000, n_test: int = 1000, seq_len: int = 64, n_kv: int = 4, vocab_size: int = 64,
         seed: int = 0) -> Dataset:
    """Multi-query associative recall (see the module docstring); task "lm", n_classes = vocab_size."""
    L, n_kv, V = _positive("seq_len", seq_len, 2), _positive("n_kv", n_kv), _positive("vocab_size", vocab_size, 4)
    if n_kv > V // 2 - 1:
        raise ConfigError(f"data.n_kv={n_kv} needs n_kv distinct keys from 1..vocab_size/2-1: "
                          f"raise data.vocab_size to at least {2 * n_kv + 2}")
    if L < 4 * n_kv:
        raise ConfigError(f"data.seq_len={L} is too short for n_kv={n_kv} pairs and their queries: "
                          f"use data.seq_len >= {4 * n_kv}")
    a, b = _positive("n_train", n_train), _positive("n_test", n_test)
    x, y = mqar_sequences(a + b, L, n_kv, V, np.random.default_rng(int(seed)))
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset("mqar", x[:a], y[:a], x[a:], y[a:], V, task="lm")


def _pair(patch) -> tuple[int, int]:
    p = [patch, patch] if isinstance(patch, int) else list(patch)
    if len(p) != 2 or any(int(v) < 1 for v in p):
        raise ConfigError(f"data.patch must be a positive int or [height, width], got {patch}")
    return int(p[0]), int(p[1])


def patchify(x: Tensor, patch: int | Sequence[int]) -> Tensor:
    """Images [N, C, H, W] -> patch sequences [N, L, P], L = (H/ph)(W/pw) row-major, P = C ph pw."""
    ph, pw = _pair(patch)
    N, C, H, W = x.shape
    if H % ph or W % pw:
        raise ConfigError(f"data.patch=[{ph}, {pw}] does not tile {H}x{W} images: pick sizes that divide "
                          f"{H} and {W}")
    x = x.reshape(N, C, H // ph, ph, W // pw, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(N, (H // ph) * (W // pw), C * ph * pw).contiguous()


def as_sequences(data: Dataset, patch: int | Sequence[int]) -> Dataset:
    """A classification image dataset as patch sequences (name gets the suffix '_seq')."""
    return Dataset(f"{data.name}_seq", patchify(data.x_train, patch), data.y_train, patchify(data.x_test, patch),
                   data.y_test, data.n_classes)


def digits_seq(patch: int | Sequence[int] = (2, 2), n_train: int | None = None,
               n_test: int | None = None) -> Dataset:
    """The digits protocol as patch sequences: 2x2 patches -> x [N, 16, 4]."""
    return as_sequences(digits(n_train, n_test), patch)


def fashion_seq(root: str = FASHION_ROOT, n_train: int | None = None, n_test: int | None = None,
                patch: int | Sequence[int] = (4, 4)) -> Dataset:
    """Fashion-MNIST (local IDX files) as patch sequences: 4x4 patches -> x [N, 49, 16]."""
    return as_sequences(fashion(root, n_train, n_test), patch)
