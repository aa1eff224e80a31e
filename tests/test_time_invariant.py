"""Time-invariant input current: a direct-encoded model computes its first layer once and broadcasts it over T.
The spikes and logits are bit for bit what the model computed before (the layer applied at every step), the
gradients equal to float rounding, the first layer's ops are counted once, and `per_step` runs its map once."""
import copy

import pytest
import torch
import torch.nn.functional as F

from bioplaus import stats
from bioplaus.models import RecurrentSpikingNet, SpikingConvNet, SpikingMLP
from bioplaus.models.base import linear_per_step
from bioplaus.models.spikformer import SpikeDrivenTransformer, Spikformer
from bioplaus.neurons import encoding
from bioplaus.neurons.encoding import encode, per_step, time_invariant
from bioplaus.stats import EnergyModel

NEURON = {"kind": "lif", "tau": 2.0, "decay_input": False, "detach_reset": True}
MODELS = {
    "spiking_mlp": lambda: SpikingMLP((1, 8, 8), 10, hidden=[32, 24], T=6),
    "spiking_convnet": lambda: SpikingConvNet((1, 8, 8), 10, channels=[6, 8], T=4),
    "spikformer": lambda: Spikformer((1, 8, 8), 10, dim=16, T=4, neuron=NEURON),
    "spike_driven": lambda: SpikeDrivenTransformer((1, 8, 8), 10, dim=16, T=4, stem_channels=[8], neuron=NEURON),
    "recurrent_spiking": lambda: RecurrentSpikingNet((1, 8, 8), 10, hidden=24, T=5, encoding="direct"),
}


def hoisting_off(monkeypatch):
    """Every input looks time-varying: the model runs exactly as before this feature (each layer at every step)."""
    import bioplaus.models.base as base

    monkeypatch.setattr(encoding, "time_invariant", lambda h: False)
    monkeypatch.setattr(base, "time_invariant", lambda h: False)


def run(model, x, y):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(MODELS))
def test_direct_encoding_is_bit_identical_to_every_step(name, digits, monkeypatch):
    torch.manual_seed(0)
    model = MODELS[name]()
    x, y = digits.x_train[:64] * 1.5, digits.y_train[:64]
    assert time_invariant(model.encode(x))
    start = copy.deepcopy(model.state_dict())              # BatchNorm's running statistics included
    new_logits, new_grads = run(model, x, y)
    with torch.no_grad():
        new_eval = model.eval()(x)
    model.train().load_state_dict(start)
    hoisting_off(monkeypatch)
    old_logits, old_grads = run(model, x, y)
    with torch.no_grad():
        old_eval = model.eval()(x)
    assert torch.equal(new_logits, old_logits) and torch.equal(new_eval, old_eval)     # bit for bit
    assert new_grads.keys() == old_grads.keys()
    for k, g in new_grads.items():                  # the weight gradient sums over T first: float rounding only
        torch.testing.assert_close(g, old_grads[k], rtol=1e-4, atol=1e-5, msg=k)


def test_per_step_runs_its_map_once_on_a_broadcast():
    calls = []
    lin = torch.nn.Linear(5, 3)

    def fn(z):
        calls.append(z.shape[0])
        return lin(z)

    x = torch.rand(4, 5)
    once = per_step(fn, x.unsqueeze(0).expand(6, 4, 5))
    every = per_step(fn, x.unsqueeze(0).expand(6, 4, 5).contiguous())
    assert calls == [4, 24] and once.shape == every.shape == (6, 4, 3)
    assert time_invariant(once) and not time_invariant(every) and torch.equal(once, every)
    h = torch.rand(6, 4, 5)                                              # time-varying: the map at every step
    assert torch.equal(linear_per_step(lin, h), lin(h)) and not time_invariant(encode(torch.rand(4, 5), 6, "rate"))


def test_first_layer_ops_are_counted_once(digits):
    torch.manual_seed(0)
    e = EnergyModel(name="t", bits=32, mac_pj=1.0, ac_pj=0.0, memory=None)
    T, x = 8, digits.x_test[:20]
    direct = stats.collect(SpikingMLP((1, 8, 8), 10, hidden=[32], T=T).eval(), x, e)["layers.0"]
    assert direct["mac"][0] == 64 * 32 and direct["mac"][1:].sum() == 0           # once, at step 0, not T times
    torch.manual_seed(0)
    latency = stats.collect(SpikingMLP((1, 8, 8), 10, hidden=[32], T=T, encoding="latency").eval(), x, e)
    assert latency["layers.0"]["sop"].sum() > 0 and latency["layers.0"]["mac"].sum() == 0   # spikes: time-varying



def test_hooks_on_the_first_layer_still_see_its_one_call():
    """Tools that watch modules by hooks (NeuroBench) must see the first layer though its product is hoisted;
    a hook that rewrites the output (or a kwargs pre-hook's input) is honoured as in a module call."""
    lin = torch.nn.Linear(5, 3)
    seen = []
    h1 = lin.register_forward_hook(lambda m, a, out: seen.append((a[0].shape, out.shape)))
    h2 = lin.register_forward_hook(lambda m, a, kw, out: out * 0, with_kwargs=True)
    x = torch.rand(4, 5)
    y = linear_per_step(lin, x.unsqueeze(0).expand(6, 4, 5))
    assert seen == [((4, 5), (4, 3))] and time_invariant(y) and bool((y == 0).all())
    h1.remove(), h2.remove()
    h3 = lin.register_forward_pre_hook(lambda m, a: (a[0] + 1,))
    y = linear_per_step(lin, x.unsqueeze(0).expand(6, 4, 5))
    h3.remove()
    torch.testing.assert_close(y[2], lin(x + 1))
