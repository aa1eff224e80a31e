"""The networks of `bench_train_step.py` written in SpikingJelly and snnTorch, each the way its docs write one.

Every peer computes the bioplaus model's function with the same neuron: LIF with tau = 2 (beta = 0.5) charged
without input decay, threshold 1, hard reset to 0 with the reset detached, ATan(2) surrogate (SpikingJelly
`LIFNode(tau=2, decay_input=False, detach_reset=True)` = snnTorch `Leaky(beta=0.5, reset_mechanism="zero")`).
Weights are copied from the bioplaus model, so the logits can be checked before timing.

- SpikingJelly: `layer.*` modules and `neuron.LIFNode` in multi-step mode (`functional.set_step_mode(net, "m")`),
  the input repeated over T with `x.unsqueeze(0).repeat(T, ...)` and `functional.reset_net` after each step,
  as in its FMNIST and Spikformer tutorials.
- snnTorch "tutorial": a Python loop over T that runs every layer on one step (its tutorials 5-7, `Leaky` with
  the membrane passed explicitly or `init_hidden=True`).
- snnTorch "hoisted": the same loop with the first layer (weights, and BatchNorm where there is one) computed
  once before it, since a direct-encoded input is the same at every step.

snnTorch's loop normalises each step's batch on its own (BatchNorm sees [B, ...] per step, not [T*B, ...]), so
its ConvNet and Spikformer logits differ from bioplaus's and SpikingJelly's; they are checked for shape only.
"""
from __future__ import annotations

import torch
from torch import nn


def sj_lif():
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=0.0, detach_reset=True,
                          surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m")


def snn_leaky(threshold: float = 1.0, **kw):
    import snntorch as snn
    from snntorch import surrogate

    return snn.Leaky(beta=0.5, threshold=threshold, reset_mechanism="zero", spike_grad=surrogate.atan(alpha=2.0),
                     **kw)


def copy_params(dst: nn.Module, src_params: list[torch.Tensor]) -> nn.Module:
    """Load src_params (in order) into dst's parameters (same shapes, same order)."""
    dst_params = list(dst.parameters())
    assert len(dst_params) == len(src_params), (len(dst_params), len(src_params))
    with torch.no_grad():
        for d, s in zip(dst_params, src_params):
            d.copy_(s.reshape(d.shape))
    return dst


class SJSequential(nn.Module):
    """SpikingJelly: repeat x over T, run a multi-step Sequential, mean of the outputs over T."""

    def __init__(self, T: int, *mods):
        from spikingjelly.activation_based import functional

        super().__init__()
        self.T, self.net = T, nn.Sequential(*mods)
        functional.set_step_mode(self.net, "m")

    def forward(self, x):
        from spikingjelly.activation_based import functional

        x_seq = x.unsqueeze(0).repeat(self.T, *([1] * x.dim()))
        out = self.net(x_seq).mean(0)
        functional.reset_net(self.net)
        return out


# ---- spiking MLP 784-h-h-10 -------------------------------------------------------------------------------

def sj_mlp(T, widths):
    from spikingjelly.activation_based import layer

    mods = [layer.Flatten()]
    for i, o in zip(widths, widths[1:-1]):
        mods += [layer.Linear(i, o), sj_lif()]
    return SJSequential(T, *mods, layer.Linear(widths[-2], widths[-1]))


class SnnMLP(nn.Module):
    """snnTorch: fc -> Leaky per layer inside a loop over T; `hoist` computes fc1(x) once before the loop."""

    def __init__(self, T, widths, hoist: bool):
        super().__init__()
        self.T, self.hoist = T, hoist
        self.fcs = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths, widths[1:]))
        self.lifs = nn.ModuleList(snn_leaky() for _ in widths[1:-1])

    def forward(self, x):
        x = x.flatten(1)
        mems = [lif.init_leaky() for lif in self.lifs]
        cur1 = self.fcs[0](x) if self.hoist else None
        out = []
        for _ in range(self.T):
            h = cur1 if self.hoist else self.fcs[0](x)
            for i, lif in enumerate(self.lifs):
                if i > 0:
                    h = self.fcs[i](h)
                h, mems[i] = lif(h, mems[i])
            out.append(self.fcs[-1](h))
        return torch.stack(out).mean(0)


# ---- spiking ConvNet: [conv3x3 -> BN -> LIF -> maxpool2] x L -> linear ------------------------------------------

def sj_convnet(T, chans, flat, n_classes):
    from spikingjelly.activation_based import layer

    mods = []
    for i, o in zip(chans, chans[1:]):
        mods += [layer.Conv2d(i, o, 3, padding=1, bias=False), layer.BatchNorm2d(o), sj_lif(), layer.MaxPool2d(2)]
    return SJSequential(T, *mods, layer.Flatten(), layer.Linear(flat, n_classes))


class SnnConvNet(nn.Module):
    """snnTorch tutorial 7 style: one Sequential with `init_hidden=True` neurons called once per step."""

    def __init__(self, T, chans, flat, n_classes, hoist: bool):
        super().__init__()
        mods = []
        for i, o in zip(chans, chans[1:]):
            mods += [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), snn_leaky(init_hidden=True),
                     nn.MaxPool2d(2)]
        self.T, self.hoist = T, hoist
        self.net = nn.Sequential(*mods, nn.Flatten(), nn.Linear(flat, n_classes))

    def forward(self, x):
        from snntorch import utils

        utils.reset(self.net)
        first, rest = (self.net[:2], self.net[2:]) if self.hoist else (None, self.net)
        c = first(x) if self.hoist else x
        return torch.stack([rest(c) for _ in range(self.T)]).mean(0)


# ---- Spikformer-tiny: SPS stem (conv-BN-LIF, maxpool, RPE conv-BN-LIF), SSA + MLP blocks, token-mean head -----

def _heads(x, h):
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)


class _LinBN(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.linear, self.bn = nn.Linear(i, o, bias=False), nn.BatchNorm1d(o)

    def forward(self, x):
        y = self.linear(x)
        return self.bn(y.flatten(0, -2)).view_as(y)


class _ConvBN(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o)

    def forward(self, x):            # [*, B, C, H, W] with any leading axes (T, or none per step)
        lead = x.shape[:-3]
        return self.bn(self.conv(x.flatten(0, -4))).unflatten(0, lead)


class Spikformer(nn.Module):
    """Spikformer-tiny over a neuron factory, bioplaus's `Spikformer` layer for layer: `per_step=False` runs
    multi-step over [T, B, ...] (SpikingJelly); True runs the whole network one step at a time in a Python
    loop (snnTorch, neurons with init_hidden=True); `hoist` computes the stem's conv + BN once (per-step only)."""

    def __init__(self, c_in, dim, depth, heads, mlp_hidden, patch, n_classes, T, make_neuron, per_step: bool,
                 hoist: bool = False, scale=0.125):
        super().__init__()
        self.T, self.per_step, self.hoist, self.heads, self.patch, self.scale = T, per_step, hoist, heads, patch, scale
        self.stem, self.stem_sn = _ConvBN(c_in, dim), make_neuron()
        self.rpe, self.rpe_sn = _ConvBN(dim, dim), make_neuron()
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.q, b.k, b.v, b.proj = (_LinBN(dim, dim) for _ in range(4))
            b.q_sn, b.k_sn, b.v_sn, b.proj_sn = (make_neuron() for _ in range(4))
            b.attn_sn = make_neuron(v_threshold=0.5)
            b.fc1, b.sn1, b.fc2, b.sn2 = _LinBN(dim, mlp_hidden), make_neuron(), _LinBN(mlp_hidden, dim), make_neuron()
            self.blocks.append(b)
        self.head = nn.Linear(dim, n_classes)

    def _pool(self, s):
        return nn.functional.max_pool2d(s.flatten(0, -4), self.patch).unflatten(0, s.shape[:-3])

    def features(self, c):
        s = self._pool(self.stem_sn(c))
        x = (s + self.rpe_sn(self.rpe(s))).flatten(-2).transpose(-2, -1)     # tokens [.., B, N, D]
        for b in self.blocks:
            q, k, v = (_heads(sn(lin(x)), self.heads) for lin, sn in ((b.q, b.q_sn), (b.k, b.k_sn), (b.v, b.v_sn)))
            a = ((q @ k.transpose(-2, -1)) @ v * self.scale).transpose(-3, -2).flatten(-2)
            x = x + b.proj_sn(b.proj(b.attn_sn(a)))
            x = x + b.sn2(b.fc2(b.sn1(b.fc1(x))))
        return self.head(x.mean(-2))

    def forward(self, x):
        if not self.per_step:                                    # SpikingJelly: multi-step over [T, B, ...]
            from spikingjelly.activation_based import functional

            out = self.features(self.stem(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1))).mean(0)
            functional.reset_net(self)
            return out
        from snntorch import utils

        utils.reset(self)
        c = self.stem(x) if self.hoist else None
        return torch.stack([self.features(c if self.hoist else self.stem(x)) for _ in range(self.T)]).mean(0)


def sj_spikformer(**kw):
    def make(v_threshold=1.0):
        n = sj_lif()
        n.v_threshold = v_threshold
        return n

    return Spikformer(**kw, make_neuron=make, per_step=False)


def snn_spikformer(hoist: bool, **kw):
    return Spikformer(**kw, make_neuron=lambda v_threshold=1.0: snn_leaky(v_threshold, init_hidden=True),
                      per_step=True, hoist=hoist)
