"""gla: the fused recurrent Triton kernels and the chunked log-space form equal the reference loop,
forward and every gradient (q, k, v, g, initial state), on awkward shapes; gradcheck of the reference."""
import pytest
import torch

from bioplaus.kernels.gla import IMPLS, gla, gla_chunked, gla_naive

SHAPES = [(1, 1, 1, 4, 4), (7, 2, 3, 5, 6), (20, 1, 2, 16, 8)]    # T, B, H, K, V: T=1, odd, T % chunk != 0


def inputs(T, B, H, K, V, dtype=torch.float32, decay=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    g_log = -(torch.rand(T, B, H, K, generator=g, dtype=dtype) * decay)
    return [t.requires_grad_() for t in (r(T, B, H, K), r(T, B, H, K), r(T, B, H, V), g_log, r(B, H, K, V))]


def run(fn, ins, with_state=True):
    q, k, v, g, s0 = ins
    o, S = fn(q, k, v, g, s0 if with_state else None)
    gen = torch.Generator().manual_seed(9)
    loss = (o.float() * torch.randn(o.shape, generator=gen)).sum() + (S * torch.randn(S.shape, generator=gen)).sum()
    wrt = [q, k, v, g] + ([s0] if with_state else [])
    return [o.float(), S, *(x.float() for x in torch.autograd.grad(loss, wrt))]


@pytest.mark.parametrize("form,backend", [fb for fb in IMPLS if fb != ("recurrent", "torch")])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_state", [True, False])
def test_matches_reference(form, backend, shape, with_state):
    ins = inputs(*shape)
    ours = run(lambda q, k, v, g, s0: gla(q, k, v, g, initial_state=s0, form=form, backend=backend), ins, with_state)
    ref = run(lambda q, k, v, g, s0: gla_naive(q, k, v, g, initial_state=s0), ins, with_state)
    for name, a, b in zip(["o", "S_T", "dq", "dk", "dv", "dg", "dS0"], ours, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=name)


def test_triton_bf16_inputs_match_float32_reference():
    ins32 = inputs(9, 2, 2, 8, 8)
    ins16 = [t.detach().to(torch.bfloat16).requires_grad_() for t in ins32]
    o16, S16 = gla(*ins16[:4], initial_state=ins16[4], backend="triton")
    o32, S32 = gla_naive(*[t.detach().to(torch.bfloat16).float() for t in ins32[:4]],
                         initial_state=ins32[4].detach().to(torch.bfloat16).float())
    assert o16.dtype == torch.bfloat16
    torch.testing.assert_close(o16.float(), o32, atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(S16, S32, atol=1e-4, rtol=1e-4)


def test_chunked_is_stable_under_strong_decay():
    """Log-space gates: exp(-G) never appears, so a decay of e^-60 per step neither overflows nor loses the sum."""
    ins = inputs(40, 1, 1, 4, 4, decay=60.0)
    o, S = gla_chunked(*[t.detach() for t in ins[:4]], initial_state=ins[4].detach(), chunk_size=16)
    ref_o, ref_S = gla_naive(*[t.detach() for t in ins[:4]], initial_state=ins[4].detach())
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    torch.testing.assert_close(o, ref_o, atol=1e-5, rtol=1e-5)


def test_reference_gradcheck_float64():
    ins = [t.detach().double().requires_grad_() for t in inputs(3, 1, 2, 3, 2)]
    assert torch.autograd.gradcheck(lambda q, k, v, g, s0: gla_naive(q, k, v, g, initial_state=s0), ins)
    assert torch.autograd.gradcheck(lambda q, k, v, g, s0: gla_chunked(q, k, v, g, initial_state=s0, chunk_size=2),
                                    ins)


def test_runs_the_triton_kernel_and_bad_input_is_named():
    ins = inputs(3, 1, 1, 4, 4)
    o, _ = gla(*ins[:4], backend="triton")
    assert type(o.grad_fn).__name__.startswith("GLARecurrentTriton")
    with pytest.raises(ValueError, match="no implementation for form='chunk', backend='triton'"):
        gla(*ins[:4], form="chunk", backend="triton")
    with pytest.raises(ValueError, match=r"q, k, g must be \[T, B, H, K\]"):
        gla(ins[0], ins[1][:, :, :, :2], ins[2], ins[3])
