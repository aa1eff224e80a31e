"""Sequence data (bioplaus.data.sequences): character text from pydoc_data.topics, MQAR, patch sequences. All
offline: every loader runs with sockets disabled."""
import socket

import pytest
import torch

from bioplaus.data import IGNORE_INDEX, Dataset
from bioplaus.data.sequences import CharVocab, corpus, digits_seq, mqar, patchify, text
from bioplaus.errors import ConfigError


@pytest.fixture
def offline(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a sequence dataset tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_vocab_round_trip_and_unknown_character():
    s = corpus()
    v = CharVocab(s)
    assert len(v) == len(set(s)) and list(v.chars) == sorted(set(s))
    piece = s[1000:3000]
    assert v.decode(v.encode(piece)) == piece
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        v.encode("\x00")


def test_text_windows_are_next_char_targets_with_a_contiguous_split(offline):
    d = text(seq_len=32)
    assert d.task == "lm" and d.n_classes == len(d.vocab) and d.in_shape == (32,)
    assert d.x_train.dtype == d.y_train.dtype == torch.int64 and d.y_train.shape == d.x_train.shape
    torch.testing.assert_close(d.x_train[:, 1:], d.y_train[:, :-1])          # y is x shifted by one
    torch.testing.assert_close(d.x_train[1:, 0], d.y_train[:-1, -1])         # windows tile the text
    s, v = corpus(), CharVocab(corpus())
    cut = round(len(s) * 0.9)
    assert v.decode(d.x_train[0]) == s[:32] and v.decode(d.x_test[0]) == s[cut:cut + 32]
    assert d.x_train.shape[0] == (cut - 1) // 32 and d.x_test.shape[0] == (len(s) - cut - 1) // 32
    small = text(seq_len=16, stride=4, n_train=10, n_test=3)
    assert small.x_train.shape == (10, 16) and small.x_test.shape == (3, 16)
    torch.testing.assert_close(small.x_train[1, :12], small.x_train[0, 4:])


def test_mqar_targets_only_at_queries_and_correct_by_construction(offline):
    n_kv, L, V = 4, 32, 32
    d = mqar(n_train=300, n_test=50, seq_len=L, n_kv=n_kv, vocab_size=V, seed=3)
    assert d.task == "lm" and d.n_classes == V and d.x_train.shape == d.y_train.shape == (300, L)
    for x, y in zip(torch.cat([d.x_train, d.x_test]), torch.cat([d.y_train, d.y_test])):
        keys, vals = x[0:2 * n_kv:2], x[1:2 * n_kv:2]
        assert len(set(keys.tolist())) == n_kv and keys.min() >= 1 and keys.max() < V // 2
        assert vals.min() >= V // 2 and vals.max() < V
        q = (y != IGNORE_INDEX).nonzero().flatten()
        assert len(q) == n_kv and q.min() >= 2 * n_kv and ((q - 2 * n_kv) % 2 == 0).all()
        assert sorted(x[q].tolist()) == sorted(keys.tolist())                # every key queried once
        pair = dict(zip(keys.tolist(), vals.tolist()))
        assert [pair[k] for k in x[q].tolist()] == y[q].tolist()            # target = the key's value
    again = mqar(n_train=300, n_test=50, seq_len=L, n_kv=n_kv, vocab_size=V, seed=3)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    assert not torch.equal(mqar(n_train=300, n_test=50, seq_len=L, n_kv=n_kv, vocab_size=V, seed=4).x_train,
                           d.x_train)


def test_patch_sequences_keep_every_pixel_in_row_major_patch_order(offline):
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = patchify(x, [2, 3])
    assert p.shape == (2, 4, 3 * 2 * 3)
    torch.testing.assert_close(p[1, 1], x[1, :, 0:2, 3:6].flatten())            # 2nd patch: top row, right
    torch.testing.assert_close(p[0, 2], x[0, :, 2:4, 0:3].flatten())

def test_digits_seq_is_the_digits_protocol_in_patches(offline, digits):
    d = digits_seq()
    assert d.task == "classify" and d.x_train.shape == (1437, 16, 4) and d.name == "digits_seq"
    assert torch.equal(d.y_test, digits.y_test) and torch.equal(d.x_test, patchify(digits.x_test, 2))
    torch.testing.assert_close(d.x_train[:, 0], digits.x_train[:, 0, :2, :2].flatten(1))


@pytest.mark.parametrize("call,message", [
    (lambda: mqar(n_kv=40, vocab_size=64), "raise data.vocab_size"),
    (lambda: mqar(seq_len=12, n_kv=4), "data.seq_len >= 16"),
    (lambda: text(seq_len=1), "data.seq_len must be an integer >= 2"),
    (lambda: text(test_fraction=1.5), "data.test_fraction must be in"),
    (lambda: text(seq_len=100_000), "is longer than the test text"),
    (lambda: text(n_train=10**6), "data.n_train=1000000 is out of range"),
    (lambda: digits_seq(patch=[3, 3]), "does not tile 8x8 images"),
    (lambda: Dataset("x", *[torch.zeros(1)] * 4, n_classes=2, task="regress"), "unknown data task"),
])
def test_bad_settings_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
