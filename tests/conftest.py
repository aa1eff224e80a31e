"""Shared test setup. TRITON_INTERPRET=1 is set before anything imports triton, so every Triton kernel
runs (not skips) on CPU under the interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits():
    from bioplaus.data import digits as load

    return load()


@pytest.fixture
def compose():
    """compose(*overrides) -> the bioplaus-run config, as Hydra composes it for the CLI."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    def _compose(*overrides):
        with initialize_config_module(config_module="bioplaus.configs", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored afterwards): tiny nets and small graphs run fastest on one
    thread, and two threads on a busy 2-core machine spin-wait for each other (up to 8x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_benchmark_fixtures(root):
    """Tiny copies of the four benchmark families in their publishers' formats (bioplaus.data.formats), each with
    a class signal: {"cifar10", "cifar100", "shd", "nmnist", "dvs_gesture"} -> data.root. Deterministic (seed 0)."""
    import numpy as np

    from bioplaus.data import formats as F

    rng = np.random.default_rng(0)
    roots = {k: root / k for k in ("cifar10", "cifar100", "shd", "nmnist", "dvs_gesture")}

    def images(n, n_classes):
        y = np.arange(n) % n_classes
        x = rng.integers(0, 64, (n, 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(y):                       # a bright 8x8 patch whose place and colour give the class
            r, q = divmod(int(c) % 16, 4)
            x[i, c % 3, r * 8:r * 8 + 8, q * 8:q * 8 + 8] = 255
        return x, y

    (xtr, ytr), (xte, yte) = images(60, 10), images(20, 10)
    F.write_cifar(roots["cifar10"] / "cifar-10-batches-py", "cifar10", xtr, ytr, xte, yte)
    F.write_cifar(roots["cifar100"], "cifar100", xtr, (ytr * 10 + 3, ytr * 2), xte, (yte * 10 + 3, yte * 2))

    def utterances(n):
        y = np.arange(n) % 4
        times = [np.sort(rng.uniform(0, 1.3, 400)) for _ in y]
        units = [rng.integers(c * 150, c * 150 + 150, 400) for c in y]   # class c speaks in its channel band
        return times, units, y

    for split, n in (("train", 40), ("test", 20)):
        F.write_heidelberg(roots["shd"] / f"shd_{split}.h5", *utterances(n))

    for split, n in (("train", 30), ("test", 10)):
        for i in range(n):
            d, k = i % 10, 300
            x = np.clip(rng.integers(0, 6, k) + 3 * (d % 5) + 4, 0, 33)   # digit d lights its own columns/rows
            y = np.clip(rng.integers(0, 6, k) + 12 * (d // 5) + 4, 0, 33)
            F.write_nmnist(roots["nmnist"], split, d, f"{i:05d}", x, y, np.sort(rng.integers(0, 300_000, k)),
                           rng.integers(0, 2, k))

    for split, users in (("train", (1, 2)), ("test", (3,))):
        for u in users:
            xs, ys, ts, rows = [], [], [], []
            for c in range(1, 12):                      # gesture c: 400 events in its own 32x32 cell, 0.2 s long
                start = c * 300_000
                r, q = divmod(c, 4)
                xs.append(rng.integers(q * 32, q * 32 + 32, 400))
                ys.append(rng.integers(r * 32, r * 32 + 32, 400))
                ts.append(np.sort(rng.integers(start, start + 200_000, 400)))
                rows.append((c, start, start + 200_000))
            F.write_gesture(roots["dvs_gesture"] / "DvsGesture", f"user{u:02d}_fluorescent", np.concatenate(xs),
                            np.concatenate(ys), np.concatenate(ts), rng.integers(0, 2, 400 * 11), rows, split)
    return roots


@pytest.fixture(scope="session")
def benchmark_roots(tmp_path_factory):
    """write_benchmark_fixtures in a session temp dir (each test that decodes them gets its own cache_dir)."""
    return write_benchmark_fixtures(tmp_path_factory.mktemp("benchmarks"))


def pytest_addoption(parser):
    parser.addoption("--zero-updates", default=None, metavar="RULES",
                     help="mutation check: replace the update of these rules (comma list of rule names, or 'all') by "
                          "zero; every learning test of those rules must then fail (issue 16's bar for honest tests)")


def _rule_classes():
    import importlib
    import pkgutil

    import bioplaus.rules
    from bioplaus.rules.base import LearningRule

    for mod in pkgutil.iter_modules(bioplaus.rules.__path__):      # every shipped rule class exists
        importlib.import_module(f"bioplaus.rules.{mod.name}")

    seen, todo = [], [LearningRule]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def _zeroed(assign_credit):
    def zeroed(self, *args, **kwargs):
        logs = assign_credit(self, *args, **kwargs)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.zero_()
        return logs
    return zeroed


@pytest.fixture(autouse=True)
def _zero_updates(request, monkeypatch):
    """With --zero-updates, each chosen rule still runs its assign_credit (its logs, its side effects), then
    every gradient it filled is zeroed: the trainer steps on nothing the rule learned."""
    spec = request.config.getoption("--zero-updates")
    if not spec:
        yield
        return
    names = None if spec == "all" else set(spec.split(","))
    for cls in _rule_classes():
        if "assign_credit" not in vars(cls) or (names is not None and cls.name not in names):
            continue

        monkeypatch.setattr(cls, "assign_credit", _zeroed(vars(cls)["assign_credit"]))
    yield


@pytest.fixture
def backward_groups(monkeypatch):
    """backward_groups(run, groups) -> one set per backward() call that `run()` makes: the names of the parameter
    groups ({name: [params]}) whose gradients that call changed. For rules whose claim is that each local loss
    reaches only its own layer."""
    def record(run, groups: dict) -> list[set]:
        touched, real_backward = [], torch.Tensor.backward

        def backward(self, *a, **kw):
            before = {k: [None if p.grad is None else p.grad.clone() for p in ps] for k, ps in groups.items()}
            real_backward(self, *a, **kw)
            touched.append({k for k, ps in groups.items()
                            if any(p.grad is not None and (b is None or not torch.equal(p.grad, b))
                                   for p, b in zip(ps, before[k]))})

        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "backward", backward)
            run()
        return touched

    return record
