"""Language-modelling tasks end to end: per-token accuracy ignores -100, a short backprop run of a gated
LM falls well below the unigram baseline, and `bioplaus-run` on lm data writes test_loss and
unigram_loss (and, for the spiking RWKV, spike statistics per token position)."""
import json
import subprocess
import sys

import h5py
import torch

from bioplaus.data import IGNORE_INDEX, unigram_loss
from bioplaus.data.sequences import text
from bioplaus.models import MLP
from bioplaus.models.sequence import GatedLM
from bioplaus.rules.backprop import Backprop
from bioplaus.train import TrainConfig, evaluate, train

RUN = [sys.executable, "-m", "bioplaus.run"]


class _Fixed(torch.nn.Module):
    """A stand-in rule whose predictions are given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def predict(self, x):
        return self.logits[x]


def test_per_token_accuracy_and_loss_skip_ignored_targets():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]],
                           [[0.0, 2.0], [0.0, 2.0], [2.0, 0.0]]])        # argmax: [0 1 0], [1 1 0]
    y = torch.tensor([[0, 0, IGNORE_INDEX], [1, IGNORE_INDEX, 1]])      # 4 scored targets, 2 right
    acc, loss = evaluate(_Fixed(logits), torch.arange(2), y, 1, torch.device("cpu"))
    assert acc == 0.5
    right, wrong = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)
    assert abs(loss - float(2 * right + 2 * wrong) / 4) < 1e-6


def test_unigram_loss_is_the_smoothed_training_distribution():
    y_train = torch.tensor([[0, 0, 0, IGNORE_INDEX], [1, 0, 0, 0]])      # counts 6, 1, 0 -> +1: 7, 2, 1
    y_test = torch.tensor([[0, 2]])
    expected = -(torch.log(torch.tensor(7 / 10)) + torch.log(torch.tensor(1 / 10))) / 2
    assert abs(unigram_loss(y_train, y_test, 3) - expected.item()) < 1e-6


def test_short_training_falls_clearly_below_the_unigram_baseline():
    torch.manual_seed(0)
    data = text(seq_len=64, n_train=512, n_test=100)
    model = GatedLM([64], data.n_classes, dim=48, n_layers=1, mixer="hgrn")
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    m = train(Backprop(model), data, cfg)
    assert m["unigram_loss"] > 3.0
    assert m["test_loss"] < m["unigram_loss"] - 0.4, (m["test_loss"], m["unigram_loss"])
    assert abs(m["bits_per_char"] - m["test_loss"] / 0.6931471805599453) < 1e-9
    assert m["history"][-1]["test_loss"] == m["test_loss"] and m["test_acc"] > 0.25


def test_classify_metrics_are_unchanged_by_the_lm_support(digits):
    torch.manual_seed(0)
    rule = Backprop(MLP([1, 8, 8], 10))
    m = train(rule, digits, TrainConfig(epochs=1, progress=False))
    assert "test_loss" not in m and "unigram_loss" not in m and 0.5 < m["test_acc"] <= 1
    with torch.no_grad():
        plain = (rule.predict(digits.x_test).argmax(-1) == digits.y_test).float().mean().item()
    assert abs(m["test_acc"] - plain) < 1e-6


def test_cli_lm_run_writes_test_and_unigram_loss_and_spike_stats(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(RUN + ["model=spiking_rwkv", "model.dim=16", "model.n_layers=1", "model.neuron.backend=torch",
                              "data=text", "data.seq_len=16", "data.n_train=64", "data.n_test=16",
                              "trainer.epochs=1", "trainer.batch_size=32", "trainer.progress=false",
                              f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert (m["model"], m["data"]) == ("spiking_rwkv", "text")
    assert m["unigram_loss"] > 2.5 and 0 < m["test_loss"] < 10 and "vs unigram" in r.stdout
    assert m["stats"]["spikes_per_sample"] > 0 and 0 < m["stats"]["mean_firing_rate"] < 1
    with h5py.File(out / "stats.h5", "r") as f:
        assert f["layers/layers.0/spike_counts"].shape == (16,)             # one entry per token position


def test_cli_model_that_cannot_do_lm_is_one_line(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(RUN + ["model=mlp", "data=mqar", "data.n_train=10", "data.n_test=10",
                              f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().splitlines() == ["bioplaus-run: error: model mlp does classify but data mqar is a lm "
                                             "task: use a sequence model (model=gated_lm or model=spiking_rwkv)"]
