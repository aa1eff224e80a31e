"""Does the data path keep up? Batches from the benchmark loaders vs the models that consume them, on CPU.

Two generated full-size sets, written in the publishers' formats (bioplaus.data.formats) into a temp folder and
read back by the real loaders:
- CIFAR-10 format: 50000 + 10000 random 32x32x3 images in the python pickles. Data path: a shuffled batch
  from the memory-mapped uint8 cache, normalised, then random crop (4-pixel padding) + horizontal flip, i.e.
  exactly what the trainer draws (`bioplaus.data.batches(..., augment=data.augment)`). Consumer: one BPTT
  update (forward, backward, Adam step) of the spiking VGG-11 (T=4, direct encoding) on that batch.
- SHD size: 8156 + 2264 utterances of 700 channels, N ~ uniform(2000, 8000) spikes each over 1.4 s, in the
  HDF5 layout. Data paths: (a) binning on the fly: read a batch of utterances from the HDF5 file and bin them
  (`read_h5` + `bin_spikes`, the cache build's inner loop), (b) cached: a shuffled batch of binned counts
  [B, 100, 700] from the memory-mapped cache. Consumer: one BPTT update of the recurrent spiking net sized
  for SHD (700 -> 256 recurrent LIF, T = 100, given encoding).

Per path: the median seconds per batch over --batches batches (the consumer: over --steps updates after one
warm-up); the ratio consumer / data path is how many times faster batches arrive than they are used (the
issue asks >= 10). Also: the one-off decode into the cache, and the process's anonymous memory (RssAnon)
before and after iterating one full epoch of cached batches (memory-mapped pages are file-backed, so it stays
flat: no set is held in RAM). Run with OMP_NUM_THREADS=1 (both sides single-threaded).

    OMP_NUM_THREADS=1 python experiments/bench_data.py                   # ~10 min on a shared 2-core CPU
    OMP_NUM_THREADS=1 python experiments/bench_data.py --only shd --steps 2
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def per_batch(it, n: int) -> float:
    """Median seconds to pull one item from iterator `it`, over n items."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_update(rule, opt, x, y, steps: int) -> float:
    """Median seconds of one update (zero_grad, assign_credit, step) after one warm-up."""
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        rule.assign_credit(x, y)
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def epoch_memory(data, batch: int) -> tuple[float, float]:
    """RssAnon (MB) before and after drawing one full epoch of shuffled training batches."""
    from bioplaus.data import batches

    before = rss_anon_mb()
    for _ in batches(data.x_train, data.y_train, batch, shuffle=True, generator=torch.Generator().manual_seed(1),
                     augment=data.augment):
        pass
    return before, rss_anon_mb()


def cifar(tmp: Path, a) -> dict:
    from bioplaus.data import batches
    from bioplaus.data.cifar import cifar10
    from bioplaus.data.formats import write_cifar
    from bioplaus.models import SpikingVGG
    from bioplaus.rules.backprop import Backprop

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    write_cifar(tmp / "cifar", "cifar10", rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, 10, 50000), rng.integers(0, 256, (10000, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, 10, 10000))
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = cifar10(str(tmp / "cifar"))                             # first load: decode into the cache
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = cifar10(str(tmp / "cifar"))
    reopen = time.perf_counter() - t0
    it = batches(data.x_train, data.y_train, a.batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                 augment=data.augment)
    load = per_batch(it, a.batches)
    it = batches(data.x_train, data.y_train, a.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    load_noaug = per_batch(it, a.batches)
    torch.manual_seed(0)
    rule = Backprop(SpikingVGG([3, 32, 32], 10, T=4))
    opt = torch.optim.Adam(rule.parameters(), lr=1e-3)
    xb, yb = next(batches(data.x_train, data.y_train, a.batch, shuffle=True, augment=data.augment))
    step = per_update(rule, opt, xb, yb, a.steps)
    mem = epoch_memory(data, a.batch)
    return {"set": "CIFAR-10 format, 50000 + 10000", "path": "mmap uint8 -> normalise -> crop + flip",
            "data_s": load, "data_noaug_s": load_noaug, "model": "spiking VGG-11, T=4, BPTT", "model_s": step,
            "write_s": written, "decode_s": decode, "reopen_s": reopen, "mem": mem}


def shd(tmp: Path, a) -> dict:
    from bioplaus.data import batches
    from bioplaus.data.formats import write_heidelberg
    from bioplaus.data.heidelberg import bin_spikes, read_h5
    from bioplaus.data.heidelberg import shd as load_shd
    from bioplaus.models import RecurrentSpikingNet
    from bioplaus.rules.backprop import Backprop

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n_spikes = 0
    for split, n in (("train", 8156), ("test", 2264)):
        lens = rng.integers(2000, 8000, n)
        n_spikes += int(lens.sum())
        times = [np.sort(rng.uniform(0, 1.4, k)) for k in lens]
        units = [rng.integers(0, 700, k) for k in lens]
        write_heidelberg(tmp / "shd" / f"shd_{split}.h5", times, units, rng.integers(0, 20, n))
    written = time.perf_counter() - t0
    path = tmp / "shd" / "shd_train.h5"

    def on_the_fly():
        for i in range(0, 8156, a.batch):
            times, units, _ = read_h5(path, i, i + a.batch)
            yield bin_spikes(times, units, 100, 1.4)

    binning = per_batch(on_the_fly(), min(a.batches, 8156 // a.batch))
    t0 = time.perf_counter()
    data = load_shd(str(tmp / "shd"))
    decode = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = load_shd(str(tmp / "shd"))
    reopen = time.perf_counter() - t0
    it = batches(data.x_train, data.y_train, a.batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    load = per_batch(it, a.batches)
    torch.manual_seed(0)
    rule = Backprop(RecurrentSpikingNet([100, 700], 20, hidden=256, T=100, encoding="given"))
    opt = torch.optim.Adam(rule.parameters(), lr=1e-3)
    xb, yb = next(batches(data.x_train, data.y_train, a.batch, shuffle=True))
    step = per_update(rule, opt, xb, yb, a.steps)
    mem = epoch_memory(data, a.batch)
    return {"set": f"SHD size, 8156 + 2264 ({n_spikes / 10420:.0f} spikes/utterance)",
            "path": "mmap binned counts -> float", "data_s": load, "binning_s": binning,
            "model": "recurrent SNN 700-256, T=100, BPTT", "model_s": step, "write_s": written, "decode_s": decode,
            "reopen_s": reopen, "mem": mem}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=50, help="data batches timed per path")
    p.add_argument("--steps", type=int, default=3, help="model updates timed (after one warm-up)")
    p.add_argument("--only", choices=("cifar", "shd"))
    p.add_argument("--dir", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    a = p.parse_args()
    print(f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, numpy {np.__version__}, "
          f"threads {torch.get_num_threads()}, batch {a.batch}")
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        rows = [f(Path(d), a) for name, f in (("cifar", cifar), ("shd", shd)) if a.only in (None, name)]
    print("\n| set | data path | s/batch | consumer | s/update | consumer / data |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['path']} | {r['data_s'] * 1e3:.1f} ms | {r['model']} | {r['model_s']:.2f} s | "
              f"{r['model_s'] / r['data_s']:.0f}x |")
        if "binning_s" in r:
            print(f"| {r['set']} | HDF5 read + bin on the fly | {r['binning_s'] * 1e3:.1f} ms | {r['model']} | "
                  f"{r['model_s']:.2f} s | {r['model_s'] / r['binning_s']:.0f}x |")
        if "data_noaug_s" in r:
            print(f"| {r['set']} | mmap uint8 -> normalise (no augmentation) | {r['data_noaug_s'] * 1e3:.1f} ms | "
                  f"{r['model']} | {r['model_s']:.2f} s | {r['model_s'] / r['data_noaug_s']:.0f}x |")
    print("\n| set | write files (s) | first load: decode into cache (s) | reopen (s) | RssAnon before / after an "
          "epoch of batches (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['write_s']:.1f} | {r['decode_s']:.1f} | {r['reopen_s']:.3f} | "
              f"{r['mem'][0]:.0f} / {r['mem'][1]:.0f} |")


if __name__ == "__main__":
    main()
