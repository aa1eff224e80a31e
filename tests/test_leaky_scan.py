"""leaky_scan: the hand-written BPTT equals the naive autograd loop (forward and every gradient) on
awkward shapes and every decay form; gradcheck of the Function in float64."""
import itertools

import pytest
import torch

from bioplaus.kernels import BACKENDS, leaky_scan, leaky_scan_naive
from bioplaus.kernels.leaky_scan import LeakyScanTorch
from bioplaus.kernels.surrogate import lookup

SHAPES = [(1, 5), (4, 3, 7), (9, 2, 1, 13)]   # T=1, odd N, non-powers of two, extra dims


def _decay(form, shape, dtype, lo=0.0):
    g = torch.Generator().manual_seed(3)
    if form == "float":
        return 0.6 + lo
    if form == "scalar":
        return torch.tensor(0.6 + lo, dtype=dtype, requires_grad=True)
    if form == "channel":
        return (torch.rand(shape[-1], generator=g, dtype=dtype) * 0.9 + lo).requires_grad_()
    return (torch.rand(shape, generator=g, dtype=dtype) * 0.9 + lo).requires_grad_()   # per-element


def _run(fn, x, a, b, v0, **kw):
    out, v = fn(x, a, b, v0=v0, **kw)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, generator=g, dtype=x.dtype)).sum() \
        + (v * torch.randn(v.shape, generator=g, dtype=x.dtype)).sum()
    wrt = [t for t in (x, a, b, v0) if isinstance(t, torch.Tensor) and t.requires_grad]
    return (out, v, *torch.autograd.grad(loss, wrt))


FORMS = [("float", "float"), ("scalar", "float"), ("channel", "channel"), ("element", "element"),
         ("element", "scalar")]
MODES = ["hard", "soft", "none", "nospike", "hard-detach", "soft-detach"]
# the fused C++ "cpu" backend covers float a and b with spikes (IF/LIF); the others cover everything
CASES = [(be, f, m) for be in BACKENDS for f in FORMS for m in MODES
         if be != "cpu" or (f == ("float", "float") and m != "nospike")]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,forms,mode", CASES)
def test_matches_naive_reference(backend, shape, forms, mode):
    a_form, b_form = forms
    dtype = torch.float32
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_()
    a, b = _decay(a_form, shape, dtype), _decay(b_form, shape, dtype, lo=0.5)
    b = b if b_form != "float" else 1.0
    v0 = torch.randn(shape[1:], generator=torch.Generator().manual_seed(1)).requires_grad_()
    kw = {} if mode == "nospike" else {"threshold": 0.5, "reset": mode.split("-")[0],
                                       "detach_reset": mode.endswith("detach")}
    ours = _run(lambda *a_, **k: leaky_scan(*a_, backend=backend, **k), x, a, b, v0, **kw)
    ref = _run(leaky_scan_naive, x, a, b, v0, **kw)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
    if mode != "nospike":
        assert set(ours[0].unique().tolist()) <= {0.0, 1.0} and ours[0].sum() > 0


@pytest.mark.parametrize("reset,detach,surrogate", list(itertools.product(
    ["hard", "soft", "none"], [False, True], ["atan", "sigmoid", "fast_sigmoid", "triangle"])))
def test_gradcheck_float64(reset, detach, surrogate):
    T, B, N = 3, 2, 3
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(T, B, N, generator=g, dtype=torch.float64) * 1.3).requires_grad_()
    a = (torch.rand(T, B, N, generator=g, dtype=torch.float64) * 0.9).requires_grad_()
    b = (torch.rand(N, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    v0 = torch.randn(B, N, generator=g, dtype=torch.float64).requires_grad_()
    spec = lookup(surrogate)
    # the smooth part: gradients w.r.t. every input of the reference with spikes held fixed are what the
    # surrogate defines, so check the non-spiking recurrence exactly and the spiking one against naive
    assert torch.autograd.gradcheck(lambda *t: LeakyScanTorch.apply(*t, None, reset, detach, spec, 2.0),
                                    (x, a, b, v0))
    ours = _run(lambda *t, **k: leaky_scan(*t, **k), x, a, b, v0, threshold=0.5, reset=reset,
                detach_reset=detach, surrogate=surrogate)
    ref = _run(leaky_scan_naive, x, a, b, v0, threshold=0.5, reset=reset, detach_reset=detach,
               surrogate=surrogate)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_saves_only_h_for_backward(backend):
    """The BPTT keeps one [T, ...] tensor (the pre-reset membrane h; the C++ kernel keeps its input x instead and
    recomputes h), not a graph of the time loop."""
    saved = []
    x = torch.randn(16, 4, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        s, _ = leaky_scan(x, 0.5, 0.5, threshold=1.0, backend=backend)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].numel() == x.numel()
    assert sum(t.numel() for t in saved) == x.numel()


CPU_CASES = list(itertools.product(["hard", "soft", "none"], [False, True],
                                   ["atan", "sigmoid", "fast_sigmoid", "triangle"]))


@pytest.mark.parametrize("reset,detach,surrogate", CPU_CASES)
@pytest.mark.parametrize("shape", [(5, 3, 3001), (40, 2001)])      # several blocks of neurons and a ragged last one
def test_cpu_kernel_every_surrogate_over_many_blocks(reset, detach, surrogate, shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 1.5).requires_grad_()
    v0 = torch.randn(shape[1:], generator=torch.Generator().manual_seed(1)).requires_grad_()
    kw = {"threshold": 0.7, "reset": reset, "detach_reset": detach, "surrogate": surrogate}
    ours = _run(lambda *a_, **k: leaky_scan(*a_, backend="cpu", **k), x, 0.6, 0.8, v0, **kw)
    ref = _run(leaky_scan_naive, x, 0.6, 0.8, v0, **kw)
    assert torch.equal(ours[0], ref[0]) and ours[0].sum() > 0                  # the same spikes, bit for bit
    for o, r in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("reset,detach", [("hard", True), ("hard", False), ("soft", False)])
def test_time_invariant_input_runs_on_its_one_step(backend, reset, detach):
    """x = c broadcast over T (a direct-encoded current): spikes, final membrane and the gradients of c (summed
    over T) and v0 equal the scan of the materialised input; the C++ kernel runs on c itself, saving only c."""
    T, shape = 7, (3, 2100)
    c = (torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 1.5).requires_grad_()
    v0 = torch.randn(shape, generator=torch.Generator().manual_seed(3)).requires_grad_()
    w = torch.randn(T, *shape, generator=torch.Generator().manual_seed(4))
    kw = {"threshold": 0.7, "reset": reset, "detach_reset": detach}

    saved = []

    def run(fn, x):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            s, v = fn(x, 0.5, 1.0, v0=v0, **kw)
        return (s, v, *torch.autograd.grad((s * w).sum() + v.sum(), (c, v0)))

    ours = run(lambda *a_, **k: leaky_scan(*a_, backend=backend, **k), c.unsqueeze(0).expand(T, *shape))
    big = max(t.numel() for t in saved)
    ref = run(leaky_scan_naive, c.unsqueeze(0).expand(T, *shape).contiguous())
    assert torch.equal(ours[0], ref[0]) and 0 < ours[0].mean() < 0.9
    for o, r in zip(ours[1:], ref[1:]):                                 # final membrane, grad c (sum over T), v0
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
    if backend == "cpu":
        assert big == c.numel()                                         # nothing [T, ...]-sized is kept


def test_bad_arguments_name_the_problem():
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match="backend 'cuda'.*auto, torch"):
        leaky_scan(x, 0.5, backend="cuda")
    with pytest.raises(ValueError, match="reset 'zero'"):
        leaky_scan(x, 0.5, threshold=1.0, reset="zero")
    with pytest.raises(ValueError, match="does not broadcast"):
        leaky_scan(x, torch.rand(4), threshold=1.0)
    with pytest.raises(ValueError, match="T >= 1"):
        leaky_scan(torch.randn(0, 3), 0.5)


def test_triton_backend_runs_the_triton_kernels():
    """On CPU the Triton kernels execute under the interpreter (conftest sets TRITON_INTERPRET=1)."""
    x = torch.randn(3, 2, 5, requires_grad=True)
    s, _ = leaky_scan(x, 0.5, threshold=0.5, backend="triton")
    assert type(s.grad_fn).__name__.startswith("LeakyScanTriton")
    s.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend 'triton' cannot run on cpu.*use backend='torch'"):
        leaky_scan(torch.randn(3, 4), 0.5, backend="triton")


def test_auto_backend_on_cpu_is_the_fused_kernel_where_it_fits():
    from bioplaus.kernels.leaky_scan import resolve_backend

    assert resolve_backend("auto", torch.device("cpu"), fits_cpu=True) == "cpu"
    assert resolve_backend("auto", torch.device("cpu"), fits_cpu=False) == "torch"
    x = torch.randn(4, 3, requires_grad=True)
    s, _ = leaky_scan(x, 0.5, 0.5, threshold=0.5)                        # LIF-like: float decay, spikes
    assert type(s.grad_fn).__name__.startswith("LeakyScanCPU")
    s, _ = leaky_scan(x, torch.tensor(0.5, requires_grad=True), threshold=0.5)   # PLIF-like: torch path
    assert type(s.grad_fn).__name__.startswith("LeakyScanTorch")


def test_cpu_backend_outside_its_cases_is_a_clear_error():
    with pytest.raises(ValueError, match="backend 'cpu' covers float32 CPU spiking scans"):
        leaky_scan(torch.randn(3, 4), torch.rand(4), threshold=0.5, backend="cpu")
    with pytest.raises(ValueError, match="backend 'cpu' covers"):
        leaky_scan(torch.randn(3, 4), 0.5, backend="cpu")                   # no threshold


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_in_kernel_spike_counts_equal_the_spikes(backend):
    x = torch.randn(6, 3, 1000, generator=torch.Generator().manual_seed(5)) * 2   # N > one Triton block
    counts = torch.full((6,), 10.0, dtype=torch.float64)                         # counts accumulate
    s, _ = leaky_scan(x, 0.5, 0.5, threshold=0.5, backend=backend, counts=counts)
    torch.testing.assert_close(counts, 10 + s.reshape(6, -1).sum(1).double())
    with pytest.raises(ValueError, match="counts must be a float64 tensor of shape"):
        leaky_scan(x, 0.5, threshold=0.5, counts=torch.zeros(6))


def test_cpu_kernel_loads_from_its_cache_file_without_build_or_lock(tmp_path):
    """A later process imports the published .so directly: a stale torch build lock beside it (left by a
    killed build) cannot make it wait, and no rebuild happens."""
    import shutil
    import subprocess
    import sys

    from bioplaus.kernels import leaky_scan_cpu

    assert leaky_scan_cpu.available() is None                          # built (or loaded) in this process
    here = leaky_scan_cpu.cache_path()
    cached = tmp_path / here.parent.name / here.name
    cached.parent.mkdir()
    shutil.copy(here, cached)
    (cached.parent / "lock").touch()                                    # what an interrupted torch build leaves
    code = ("import torch; from bioplaus.kernels import leaky_scan_cpu as k;"
            "from bioplaus.kernels.leaky_scan import leaky_scan;"
            "print(k.available(), k.cache_path());"
            "print(leaky_scan(torch.ones(2, 3), 0.5, 1.0, threshold=1.0, backend='cpu')[0].sum().item())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "BIOPLAUS_EXT_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"None {cached}" and "building" not in r.stderr
    assert float(r.stdout.splitlines()[1]) == 6.0        # 3 neurons x 2 steps: h = 1 fires, reset, h = 1 again
