"""Data-parallel training (bioplaus.distributed) on 2 CPU processes over gloo: backprop and a local rule (DFA)
end with the parameters of single-process training on the same global batches; through the CLI under
torchrun, statistics are the sums over the ranks' shards (equal to a single-process run's on the same samples)
and only rank 0 writes files."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from bioplaus import distributed
from bioplaus.errors import ConfigError
from bioplaus.models import MLP
from bioplaus.rules.backprop import Backprop
from bioplaus.rules.feedback_alignment import DirectFeedbackAlignment
from bioplaus.train import TrainConfig, train

RULES = {"backprop": Backprop, "dfa": DirectFeedbackAlignment}
KEYS = ("test_acc", "train_acc", "steps", "train_mac_per_step", "history")

WORKER = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from bioplaus.rules.backprop import Backprop
    from bioplaus.rules.feedback_alignment import DirectFeedbackAlignment
    from bioplaus.data import digits
    from bioplaus.models import MLP
    from bioplaus.train import TrainConfig, train

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), {}
    for name, R in (("backprop", Backprop), ("dfa", DirectFeedbackAlignment)):
        torch.manual_seed(0 if rank == 0 else 100 + rank)     # rank 0's init must reach every rank
        rule = R(MLP([1, 8, 8], 10, hidden=[32, 16]))
        m = train(rule, digits(), TrainConfig(epochs=2, progress=False, ddp=True), seed=0)
        out[name] = {"state": rule.state_dict(), "metrics": {k: m[k] for k in %r}}
    torch.save(out, f"{sys.argv[1]}.{rank}")
    dist.destroy_process_group()
""" % (KEYS,))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**kw):
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**e, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), **kw}


def test_two_ranks_train_like_one_process_on_the_global_batch(tmp_path, digits):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    base = env()
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"})
             for r in range(2)]
    for p in procs:
        log = p.communicate(timeout=300)[0]
        assert p.returncode == 0, log
    ranks = [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=False) for r in range(2)]
    assert len(digits.x_train) % 64 == 29                 # each epoch ends on a 15/14 split of 29 samples
    for name, R in RULES.items():
        torch.manual_seed(0)
        rule = R(MLP([1, 8, 8], 10, hidden=[32, 16]))
        m = train(rule, digits, TrainConfig(epochs=2, progress=False, ddp=False), seed=0)
        ref = rule.state_dict()
        for got in ranks:
            assert got[name]["state"].keys() == ref.keys()
            for k in ref:
                torch.testing.assert_close(got[name]["state"][k], ref[k], atol=1e-5, rtol=1e-4, msg=f"{name} {k}")
            g = got[name]["metrics"]
            assert g["steps"] == m["steps"] == 2 * 23
            assert g["test_acc"] == pytest.approx(m["test_acc"], abs=1 / 360)   # full test set, summed counts
            assert g["train_acc"] == pytest.approx(m["train_acc"], abs=2 / 1437)
            assert g["train_mac_per_step"] == m["train_mac_per_step"]          # 32 + 32 samples, summed
            assert [r["loss"] for r in g["history"]] == pytest.approx([r["loss"] for r in m["history"]], rel=1e-5)
        # the parameters moved: equality is not just the shared initialisation
        torch.manual_seed(0)
        init = R(MLP([1, 8, 8], 10, hidden=[32, 16])).state_dict()
        assert any((init[k] - ref[k]).abs().max() > 1e-2 for k in ref)


def test_cli_under_torchrun_sums_stats_and_only_rank0_writes(tmp_path):
    args = ["-m", "bioplaus.run", "model=spiking_mlp", "model.T=3", "model.hidden=[64,32]", "trainer.epochs=1",
            "trainer.optimizer.lr=0.0", "data.n_train=256", "stats.n_samples=301", "trainer.progress=false"]
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    e = env(TMPDIR=str(work / "tmp"))
    port = e["MASTER_PORT"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_addr=127.0.0.1", f"--master_port={port}", *args,
                        f"hydra.run.dir={work / 'ddp'}"], capture_output=True, text=True, timeout=300, cwd=work,
                       env=e)
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = subprocess.run([sys.executable, *args, f"hydra.run.dir={tmp_path / 'single'}"], capture_output=True,
                        text=True, timeout=300, env=env())
    assert r1.returncode == 0, r1.stderr[-3000:]
    # rank 1 wrote nothing: no run dir, no Hydra dir or log, its throwaway Hydra dir removed (TMPDIR keeps only
    # torch's own torchelastic/inductor dirs)
    assert sorted(p.name for p in work.iterdir()) == ["ddp", "tmp"]
    assert not list((work / "tmp").glob("bioplaus-rank*"))
    single, ddp = tmp_path / "single", work / "ddp"
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    s1, s2 = (json.loads((d / "stats.json").read_text()) for d in (single, ddp))
    assert s2["attrs"]["n_samples"] == 301
    for layer in ("layers.0", "layers.1", "head"):
        for q in ("spike_counts", "sop", "mac", "firing_rate", "energy_pj"):
            if q in s1["layers"][layer]:
                assert s2["layers"][layer][q] == pytest.approx(s1["layers"][layer][q], rel=1e-9), (layer, q)
    assert s1["layers"]["layers.1"]["sop"] > 0 and s1["layers"]["layers.0"]["spike_counts"] > 0
    for q, v in s1["summary"].items():
        assert s2["summary"][q] == pytest.approx(v, rel=1e-9), q
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (single, ddp))
    assert m2["world_size"] == 2 and "world_size" not in m1
    assert m2["test_acc"] == m1["test_acc"] and m2["train_acc"] == m1["train_acc"]
    assert m2["train_mac_per_step"] == m1["train_mac_per_step"] and m2["train_ac_per_step"] == m1["train_ac_per_step"]


def test_ddp_setting_is_validated():
    assert TrainConfig(ddp="auto").ddp == "auto" and TrainConfig(ddp="false").ddp is False
    with pytest.raises(ConfigError, match="trainer.ddp must be auto, true or false"):
        TrainConfig(ddp="maybe")
    with pytest.raises(ConfigError, match="torchrun"):
        distributed.active(True)
    assert not distributed.active("auto") and distributed.shard_bounds(7) == (0, 7)


def test_noprop_block_parallel_on_two_ranks_learns_like_sequential(tmp_path):
    """Each rank trains half the blocks on the whole batch; the summed update equals the sequential one, so
    accuracy matches sequential training (up to float noise and each rank's own noise stream)."""
    args = ["-m", "bioplaus.run", "rule=noprop", "rule.T=4", "rule.width=64", "model=mlp", "trainer.epochs=6",
            "trainer.progress=false", "stats.enabled=false"]
    e = env()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_addr=127.0.0.1", f"--master_port={e['MASTER_PORT']}", *args,
                        "rule.block_parallel=true", f"hydra.run.dir={tmp_path / 'blocks'}"],
                       capture_output=True, text=True, timeout=300, env=e)
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = subprocess.run([sys.executable, *args, f"hydra.run.dir={tmp_path / 'single'}"], capture_output=True,
                        text=True, timeout=300, env=env())
    assert r1.returncode == 0, r1.stderr[-3000:]
    blocks, single = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("blocks", "single"))
    assert blocks["world_size"] == 2 and single["test_acc"] >= 0.9
    assert abs(blocks["test_acc"] - single["test_acc"]) <= 0.02, (blocks["test_acc"], single["test_acc"])
    assert blocks["history"][0]["loss"] == pytest.approx(single["history"][0]["loss"], rel=1e-4)
