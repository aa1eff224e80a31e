"""Sequence blocks against their references, forward and backward: the HGRN mixer against a Python
loop, the GLA mixer against the gla op's naive loop, the stable WKV against the plain-exponential
formula (and finite where that overflows); the spiking RWKV emits binary spikes the statistics see."""
import pytest
import torch

from bioplaus.blocks.gla_mixer import GLAMixer, pick_impl
from bioplaus.blocks.hgrn import HGRNMixer
from bioplaus.errors import ConfigError
from bioplaus.kernels.gla import gla_naive
from bioplaus.kernels.wkv import wkv, wkv_naive
from bioplaus.models.sequence import GatedLM, generate
from bioplaus.models.spikegpt import SpikingRWKV
from bioplaus.neurons import BaseNeuron


def _grads(module, x, fn, dy):
    out = fn(x)
    return out, torch.autograd.grad((out * dy).sum(), [x, *module.parameters()])


def _check_against(module, x, reference):
    dy = torch.randn(x.shape[:-1] + (module.out_proj.out_features,), dtype=x.dtype)
    out, grads = _grads(module, x, module, dy)
    ref, ref_grads = _grads(module, x, reference, dy)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def hgrn_loop(m: HGRNMixer, x):
    """The recurrence written out: h_t = f_t h_{t-1} + (1 - f_t) i_t, token by token."""
    i, f, g = m.gates(x)
    h, hs = torch.zeros_like(i[0]), []
    for t in range(i.shape[0]):
        h = f[t] * h + (1 - f[t]) * i[t]
        hs.append(h)
    return m.output(torch.stack(hs), g)


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("triton", torch.float32)])
def test_hgrn_mixer_matches_a_python_loop(backend, dtype):
    """The Triton kernels compute in float32 (run here under TRITON_INTERPRET=1), so they are checked there."""
    torch.manual_seed(0)
    m = HGRNMixer(12, expand=1.5, lower_bound=0.3, backend=backend).to(dtype)
    x = torch.randn(3, 9, 12, dtype=dtype, requires_grad=True)
    _check_against(m, x, lambda x: hgrn_loop(m, x))
    _, f, _ = m.gates(x)
    assert f.min() >= 0.3 and f.max() < 1                                  # the lower bound holds


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
def test_gla_mixer_matches_the_naive_gla(form):
    torch.manual_seed(0)
    m = GLAMixer(16, heads=2, gate_rank=4, form=form, backend="torch").double()
    x = torch.randn(2, 21, 16, dtype=torch.float64, requires_grad=True)

    def reference(x):
        q, k, v, g, r = m.project(x)
        return m.output(gla_naive(q, k, v, g)[0], r)

    _check_against(m, x, reference)
    q, k, v, g, r = m.project(x)
    assert q.shape == (21, 2, 2, 4) and v.shape == (21, 2, 2, 8) and (g <= 0).all()


def test_gla_impl_is_picked_by_device():
    assert pick_impl(torch.device("cpu")) == ("chunk", "torch")
    assert pick_impl(torch.device("cpu"), "recurrent") == ("recurrent", "torch")
    with pytest.raises(ConfigError, match="multiples of heads"):
        GLAMixer(16, heads=3)
    with pytest.raises(ConfigError, match="unknown gla form"):
        GLAMixer(16, form="parallel")
    with pytest.raises(ConfigError, match="lower_bound must be in"):
        HGRNMixer(8, lower_bound=1.0)


def _wkv_inputs(T=11, B=2, C=5, scale=1.0, dtype=torch.float64):
    torch.manual_seed(1)
    k = (scale * torch.randn(T, B, C, dtype=dtype)).requires_grad_()
    v = torch.randn(T, B, C, dtype=dtype, requires_grad=True)
    w = torch.rand(C, dtype=dtype).add(0.05).requires_grad_()
    u = torch.randn(C, dtype=dtype, requires_grad=True)
    return k, v, w, u


def test_wkv_stable_form_equals_the_exponential_formula():
    args = _wkv_inputs()
    y, y_ref = wkv(*args), wkv_naive(*args)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    for g, r in zip(torch.autograd.grad((y * dy).sum(), args), torch.autograd.grad((y_ref * dy).sum(), args)):
        torch.testing.assert_close(g, r)


def test_wkv_stable_form_is_finite_and_right_on_large_logits():
    k, v, w, u = _wkv_inputs(scale=300.0, dtype=torch.float32)
    assert not torch.isfinite(wkv_naive(k, v, w, u)).all()                 # the plain form overflows
    y = wkv(k, v, w, u)
    assert torch.isfinite(y).all()
    T = k.shape[0]                                                          # softmax form: same weights, stable
    t = torch.arange(T)
    logit = -(t[:, None] - 1 - t[None, :]).double()[..., None, None] * w.double() + k.double()[None]
    logit = torch.where((t[:, None] == t[None, :])[..., None, None], u.double() + k.double()[None], logit)
    logit = logit.masked_fill((t[None, :] > t[:, None])[..., None, None], float("-inf"))
    ref = (torch.softmax(logit, 1) * v.double()[None]).sum(1)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(y.sum(), [k, v, w, u])
    assert all(torch.isfinite(g).all() for g in grads)


def test_spiking_rwkv_emits_binary_spikes_and_learns_through_them():
    torch.manual_seed(0)
    m = SpikingRWKV([24], 30, dim=32, n_layers=2, neuron={"backend": "torch"})
    x = torch.randint(0, 30, (4, 24))
    seen = []
    hooks = [n.register_forward_hook(lambda mod, i, s: seen.append(s)) for n in m.modules()
             if isinstance(n, BaseNeuron)]
    h = m.encode(x)
    assert h.shape == (24, 4, 32) and m.T == 24 and m.task == "lm"
    for layer, d in zip(m.layers, m.dims):
        h = layer(h)
        assert h.shape == (24, 4, 32) and m.pool(h).shape == (4, 24, d)
    logits = m.head(h)
    assert logits.shape == (4, 24, 30)
    for hk in hooks:
        hk.remove()
    assert len(seen) == 4
    for s in seen:
        assert s.shape == (24, 4, 32) and set(s.unique().tolist()) <= {0.0, 1.0}
        assert 0.01 < s.mean().item() < 0.5                                 # they fire at initialisation
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    assert m.layers[0].time_mix.key.weight.grad.abs().sum() > 0            # gradient crosses the spikes


def test_sequence_models_take_their_task_from_the_input_shape():
    m = GatedLM([10, 6], 7, dim=16, mixer="gla", gla={"heads": 2})
    x = torch.rand(3, 10, 6)
    assert m.task == "classify" and m(x).shape == (3, 7) and m.pool(m.features(x)).shape == (3, 16)
    assert m.name == "gated_lm_gla"                                         # runs are labelled by their mixer
    assert SpikingRWKV([10, 6], 7, dim=16)(x).shape == (3, 7)
    with pytest.raises(ConfigError, match=r"needs sequence data: token ids \[L\]"):
        GatedLM([1, 8, 8], 10)
    with pytest.raises(ConfigError, match="unknown model.mixer 'lstm'"):
        GatedLM([10], 7, mixer="lstm")
    with pytest.raises(ConfigError, match="bad model.gla settings"):
        GatedLM([10], 7, mixer="gla", gla={"head": 2})


def test_generate_extends_the_prompt_with_the_models_greedy_choices():
    torch.manual_seed(0)
    m = GatedLM([8], 11, dim=16, mixer="hgrn").eval()
    prompt = torch.randint(0, 11, (2, 5))
    out = generate(m, prompt, 3, temperature=0)
    assert out.shape == (2, 8) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        assert torch.equal(out[:, 5], m(prompt)[:, -1].argmax(-1))
        assert torch.equal(out[:, 7], m(out[:, :7])[:, -1].argmax(-1))


@pytest.mark.parametrize("make", [lambda: GatedLM([12], 9, dim=16, mixer="hgrn"),
                                  lambda: GatedLM([12], 9, dim=16, mixer="gla", gla={"heads": 2}),
                                  lambda: SpikingRWKV([12], 9, dim=16, neuron={"backend": "torch"})],
                         ids=["hgrn", "gla", "spiking_rwkv"])
def test_language_models_are_causal(make):
    """Changing token t leaves the logits of every earlier position unchanged."""
    torch.manual_seed(0)
    m = make().eval()
    x = torch.randint(0, 9, (3, 12))
    x2 = x.clone()
    x2[:, 7] = (x[:, 7] + 1) % 9
    with torch.no_grad():
        a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
