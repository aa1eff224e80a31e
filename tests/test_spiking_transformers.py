"""Spiking transformers: SSA and SDSA against hand-computed spikes, binary where the papers say,
tokens mixed by attention (and not by the MLP), the layered API, exact synaptic-op counts of the
attention products, and backprop learning digits."""
import numpy as np
import pytest
import torch

from bioplaus import stats
from bioplaus.blocks.spiking_attention import (
    SDSA,
    SSA,
    SpikeDrivenBlock,
    SpikformerBlock,
    sdsa_attention,
    ssa_attention,
)
from bioplaus.errors import ConfigError
from bioplaus.models.spikformer import SpikeDrivenTransformer, Spikformer
from bioplaus.rules.backprop import Backprop
from bioplaus.stats import EnergyModel
from bioplaus.stats.opcount import OpCounter, is_binary
from bioplaus.train import TrainConfig, train

NRN = {"kind": "lif", "tau": 2.0, "decay_input": False, "detach_reset": True}
COMPUTE_ONLY = EnergyModel(name="t", bits=32, mac_pj=4.6, ac_pj=0.9, memory=None)


def spikes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# T=2, B=1, H=1, N=3 tokens, d=2; the same Q, K, V at both steps
Q = spikes([1, 0], [0, 1], [1, 1])
K = spikes([1, 1], [0, 1], [0, 0])
V = spikes([1, 0], [1, 1], [0, 1])


def test_ssa_matches_hand_computation():
    q, k, v = (t.expand(2, 1, 1, 3, 2) for t in (Q, K, V))
    # Q K^T = [[1,0,0],[1,1,0],[2,1,0]];  (Q K^T) V = [[1,0],[2,1],[3,1]];  * 0.125
    a = ssa_attention(q, k, v, 0.125)
    torch.testing.assert_close(a[0, 0, 0], spikes([0.125, 0], [0.25, 0.125], [0.375, 0.125]), atol=0, rtol=0)
    # SN_attn (threshold 0.5, h_t = v_{t-1} / 2 + a_t): t=0 nothing reaches 0.5; t=1 h = 1.5 a -> only 0.5625 fires
    sn = SSA(2, NRN).attn_sn
    out = sn(a.transpose(-3, -2).flatten(-2))
    torch.testing.assert_close(out[:, 0], torch.stack([torch.zeros(3, 2), spikes([0, 0], [0, 0], [1, 0])]))


def test_sdsa_matches_hand_computation():
    q = torch.stack([spikes([1, 1, 0], [0, 1, 1], [1, 0, 1]), spikes([1, 1, 1], [0, 0, 1], [1, 0, 0])])
    k = torch.stack([spikes([1, 1, 0], [1, 0, 1], [1, 1, 0]), spikes([0, 1, 1], [0, 1, 0], [0, 0, 1])])
    v = torch.stack([spikes([1, 0, 1], [1, 0, 0], [0, 0, 0]), spikes([0, 1, 1], [1, 1, 0], [0, 0, 0])])
    # K*V column sums: t=0 [2, 0, 0] -> SN_kv [1, 0, 0];  t=1 [0, 2, 1] -> [0, 1, 1]
    out = sdsa_attention(q[:, None], k[:, None], v[:, None], SDSA(3, NRN).kv_sn)[:, 0]
    want = torch.stack([spikes([1, 0, 0], [0, 0, 0], [1, 0, 0]), spikes([0, 1, 1], [0, 0, 1], [0, 0, 0])])
    torch.testing.assert_close(out, want, atol=0, rtol=0)


def test_attention_products_are_counted_as_synaptic_ops():
    """Q K^T (spike queries x N keys) and (Q K^T) V (spike values x N queries) are SOPs, per step."""
    g = torch.Generator().manual_seed(0)
    q, k, v = ((torch.rand(2 * 3, 5, 4, generator=g) > 0.5).float() for _ in range(3))   # [T*B, N, d]
    with torch.no_grad(), OpCounter(T=2) as c:
        ssa_attention(q, k, v, 0.125)
    per_step = lambda t: (t != 0).reshape(2, -1).sum(1).double().numpy()                # noqa: E731
    np.testing.assert_array_equal(c.counts["other"]["ac"].numpy(), per_step(q) * 5 + per_step(v) * 5)
    assert c.counts["other"]["mac"].sum() == 0
    with torch.no_grad(), OpCounter(T=2) as c:                                           # SDSA: nnz(K*V) adds
        sdsa_attention(q, k, v, SDSA(4, NRN).kv_sn)
    np.testing.assert_array_equal(c.counts["other"]["ac"].numpy(), per_step(k * v))


def _capture(model, names):
    got = {}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, (i[0], o))) for n in names]
    return got, hooks


@pytest.mark.parametrize("cls", [Spikformer, SpikeDrivenTransformer])
def test_layered_api_and_binary_spikes(cls, digits):
    torch.manual_seed(0)
    m = cls([1, 8, 8], 10, dim=16, depth=2, T=3, neuron=NRN)
    assert len(m.layers) == len(m.dims) == 3 and m.spiking and m.T == 3
    x = digits.x_train[:64]
    attn = "attn_sn" if cls is Spikformer else "kv_sn"
    names = [f"layers.1.attn.{n}" for n in ("q_sn", "k_sn", "v_sn", attn)]
    got, hooks = _capture(m, names + ["layers.1.attn"])
    h = m.encode(x)
    assert h.shape == (3, 64, 1, 8, 8)
    for layer, d in zip(m.layers, m.dims):
        h = layer(h)
        assert h.shape == (3, 64, 16, 16) and m.pool(h).shape == (64, d)
    torch.testing.assert_close(m.head(h), m(x))
    for h_ in hooks:
        h_.remove()
    for n in names:                                       # Q, K, V and the attention neuron emit spikes
        assert is_binary(got[n][1]), n
    assert got[names[-1]][1].sum() > 0
    out = got["layers.1.attn"][1]
    if cls is Spikformer:                                 # SSA(X) = SN(BN(A W_o)): spikes
        assert is_binary(out)
    else:                                                 # SDSA: membrane potential (real)
        assert not is_binary(out)


@pytest.mark.parametrize("make", [lambda: SpikformerBlock(16, NRN), lambda: SpikeDrivenBlock(16, NRN)],
                         ids=["ssa", "sdsa"])
def test_attention_mixes_tokens_and_the_mlp_does_not(make):
    torch.manual_seed(0)
    block = make().eval()                                 # eval: BatchNorm does not mix tokens through batch stats
    for mod in block.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.weight.data.mul_(6)                       # a lively random block
    x = (torch.rand(4, 2, 6, 16) > 0.5).float()           # [T, B, N, D]
    x2 = x.clone()
    x2[:, :, 0] = 1 - x2[:, :, 0]                         # change token 0 only
    with torch.no_grad():
        a1, a2 = block.attn(x)[:, :, 1:], block.attn(x2)[:, :, 1:]
        m1, m2 = block.mlp(x)[:, :, 1:], block.mlp(x2)[:, :, 1:]
    assert not torch.equal(a1, a2)                        # other tokens see token 0 through attention
    torch.testing.assert_close(m1, m2, atol=0, rtol=0)


def _nnz(t):
    return float((t != 0).sum())


def _calibrated(m, x):
    """Eval mode with BatchNorm statistics of x (as after training), not a fresh BatchNorm's mean 0 / var 1."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None                           # cumulative average: one pass gives x's statistics
    with torch.no_grad():
        m.train()(x)
    return m.eval()


def test_spikformer_block_sops_are_exact(digits):
    torch.manual_seed(0)
    x = digits.x_test[:30]
    m = _calibrated(Spikformer([1, 8, 8], 10, dim=16, T=3, neuron=NRN), digits.x_train[:200])
    names = ["layers.1.attn.q_sn", "layers.1.attn.v_sn", "layers.1.attn.attn_sn", "layers.1.mlp.sn1",
             "layers.1.attn.q", "layers.1.mlp.fc1"]
    got, hooks = _capture(m, names)
    layers = stats.collect(m, x, COMPUTE_ONLY)
    for h in hooks:
        h.remove()
    n_tok, d, hidden = 16, 16, 64
    want = (_nnz(got[names[0]][1]) * n_tok + _nnz(got[names[1]][1]) * n_tok   # Q K^T, (Q K^T) V
            + _nnz(got[names[2]][1]) * d + _nnz(got[names[3]][1]) * d)          # proj, fc2 on spikes
    for lin, width in ((names[4], 3 * d), (names[5], hidden)):                  # q/k/v, fc1: spikes only if binary
        if is_binary(got[lin][0]):
            want += _nnz(got[lin][0]) * width
    assert want > 0 and layers["layers.1"]["sop"].sum() * len(x) == pytest.approx(want)
    for name in ("layers.0", "layers.1"):
        r = layers[name]
        assert r["spike_counts"].shape == (3,) and r["spike_counts"].sum() > 0
        assert 0 < r["firing_rate"] < 1                   # n_neurons sums every neuron of the block
    assert layers["layers.1"]["n_neurons"] == 16 * (5 * 16 + 64 + 16)
    assert stats.summary(layers)["energy_pj_per_sample"] > 0


def test_spike_driven_block_sops_are_exact(digits):
    torch.manual_seed(0)
    x = digits.x_test[:30]
    m = _calibrated(SpikeDrivenTransformer([1, 8, 8], 10, dim=16, T=3, neuron=NRN), digits.x_train[:200])
    names = ["layers.1.attn.shortcut_sn", "layers.1.attn.k_sn", "layers.1.attn.v_sn", "layers.1.attn.proj",
             "layers.1.mlp.sn1", "layers.1.mlp.sn2"]
    got, hooks = _capture(m, names)
    layers = stats.collect(m, x, COMPUTE_ONLY)
    for h in hooks:
        h.remove()
    d, hidden = 16, 64
    want = (_nnz(got[names[0]][1]) * 3 * d                                      # q, k, v on S = SN(U)
            + _nnz(got[names[1]][1] * got[names[2]][1])                         # token sum of K * V
            + _nnz(got[names[3]][0]) * d                                        # proj on Q * KV
            + _nnz(got[names[4]][1]) * hidden + _nnz(got[names[5]][1]) * d)     # fc1, fc2
    assert want > 0 and layers["layers.1"]["sop"].sum() * len(x) == pytest.approx(want)
    assert layers["head"]["spike_counts"].sum() > 0       # the readout neuron
    assert layers["layers.1"]["mac"].sum() == 0           # every product in the block is spike-driven


def test_bad_settings():
    with pytest.raises(ConfigError, match="heads \\(3\\) must be >= 1 and divide model.dim \\(16\\)"):
        Spikformer([1, 8, 8], 10, dim=16, heads=3)
    with pytest.raises(ConfigError, match="patch=3 must be >= 1 and divide the image size 8x8"):
        SpikeDrivenTransformer([1, 8, 8], 10, patch=3)
    with pytest.raises(ConfigError, match=r"need image data \[C, H, W\]"):
        Spikformer([64], 10)
    with pytest.raises(ConfigError, match="'gated_lif' keeps per-channel parameters on dim 2"):
        Spikformer([1, 8, 8], 10, neuron={"kind": "gated_lif"})


@pytest.mark.parametrize("cls,floor", [(Spikformer, 0.9), (SpikeDrivenTransformer, 0.9)])
def test_backprop_learns_digits(cls, floor, digits, one_thread):
    torch.manual_seed(0)
    m = cls([1, 8, 8], 10, neuron=NRN)
    opt = lambda p: torch.optim.Adam(p, lr=3e-3)          # noqa: E731
    acc = train(Backprop(m), digits, TrainConfig(epochs=5, progress=False, optimizer=opt))["test_acc"]
    assert acc >= floor
