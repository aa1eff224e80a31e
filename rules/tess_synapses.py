"""How TESS reads each kind of layer: the synapse (dense or conv), its neuron, the pooling, and the local
learning-signal generator (LSG) on the layer's output.

TESS (`bioplaus.rules.tess`) needs, per layer and time chunk, four maps that are all linear in what they act
on and local to the layer:

    current(h)            input spikes h [c, B, *in] -> input current I [c, B, *out]    (I = W h + bias)
    weight_grad(g, x)     Σ_t g_tᵀ x_t over the chunk: the gradient of the effective weight W for the
                          per-neuron factor g [c, B, *out] and the (filtered) input x [c, B, *in]
    output(s)             the layer's output from its spikes: s itself (dense), 2x2 max-pool (conv)
    signal(s, onehot)     the LSG: local logits z = pool_k(output(s)) B_l / tau, its CE and m = dCE/ds

Dense (`SpikingDense`): W [d, d_in], the LSG reads the spikes themselves (pool_k = identity). Conv
(`ConvBlock` / `SpikingConv` with norm "none" or "ws", no BatchNorm): W the kernel [C', C, 3, 3],
Σ_t g_tᵀ x_t is `conv2d_weight` over the c * B merged rows (one call per chunk), and the LSG, as in the
paper's code, average-pools the (max-pooled) spike map of each channel to k x k (`adaptive_avg_pool2d`,
written as a fixed [k², H W] matrix A so its adjoint is Aᵀ) before the fixed square-wave projection B_l
[C' k², n_classes]. m = dCE/ds goes back through A and the max-pool (`max_unpool2d` with the pool's own
indices, which is what autograd does). Weight standardisation (`WSConv2d`): the rule's gradient is that
of the standardised kernel Ŵ = g (W - mean) / (std sqrt(fan_in)); it reaches W and the gain g through that
per-channel map (a local chain rule: autograd over the kernel alone, nothing of length T).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from bioplaus.errors import ConfigError
from bioplaus.models.base import linear_per_step
from bioplaus.models.classic import ConvBlock, SpikingDense, WSConv2d
from bioplaus.models.vision import SpikingConv
from bioplaus.neurons.encoding import per_step, time_invariant


class DenseSynapse:
    """A SpikingDense layer as TESS reads it (module docstring)."""

    def __init__(self, layer: nn.Module, lsg_pool: int):
        self.neuron, self.linear = layer.neuron, layer.linear
        self.lsg_dim = layer.linear.out_features

    def begin(self) -> None:
        """Nothing to prepare for an update (the conv synapse standardises its kernel here)."""

    @staticmethod
    def prepare(h: Tensor) -> Tensor:
        return h.flatten(2)

    def current(self, h: Tensor) -> Tensor:
        return linear_per_step(self.linear, h)

    @staticmethod
    def weight_grad(g: Tensor, x: Tensor) -> Tensor:
        if time_invariant(x):
            return g.sum(0).t() @ x[0]
        return g.flatten(0, 1).t() @ x.flatten(0, 1)

    @staticmethod
    def output(s: Tensor) -> Tensor:
        return s

    def signal(self, s: Tensor, P: Tensor, onehot: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        logp = torch.log_softmax(s @ P / temperature, -1)                     # [c, B, C]
        m = (logp.exp() - onehot) @ P.t() / temperature                       # dCE/ds [c, B, d]
        return m, -(logp * onehot).sum(-1).mean(-1).sum()

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def set_grads(self, gW: Tensor, gb: Tensor | None) -> None:
        self.linear.weight.grad = gW
        if self.linear.bias is not None:
            self.linear.bias.grad = gb


class ConvSynapse:
    """A conv layer without batch statistics as TESS reads it (module docstring); lsg_pool = k."""

    def __init__(self, conv: nn.Conv2d, neuron: nn.Module, pool: nn.Module | None, lsg_pool: int):
        if pool is not None and not isinstance(pool, nn.MaxPool2d):
            raise ConfigError("TESS pools conv layers by max (model.pool=max)")
        self.conv, self.neuron, self.pool, self.k = conv, neuron, pool, int(lsg_pool)
        self.lsg_dim = conv.out_channels * self.k ** 2
        self._w: Tensor | None = None
        self._A: dict[tuple[int, int], Tensor] = {}

    @classmethod
    def of_block(cls, block: ConvBlock, lsg_pool: int) -> ConvSynapse:
        if not isinstance(block.norm, nn.Identity) or not block.spiking:
            raise ConfigError("TESS needs conv layers without BatchNorm (the charge a*u + b*I): set model.norm=ws "
                              "(weight standardisation) or model.norm=none")
        return cls(block.conv, block.act, block.pool, lsg_pool)

    @classmethod
    def of_spiking_conv(cls, layer: SpikingConv, lsg_pool: int) -> ConvSynapse:
        if len(layer.conv) != 1:
            raise ConfigError("TESS needs conv layers without BatchNorm (the charge a*u + b*I): set model.norm=ws "
                              "(weight standardisation) or model.norm=none")
        return cls(layer.conv[0], layer.neuron, layer.pool, lsg_pool)

    def begin(self) -> None:
        """The effective kernel for this update (standardised once when the conv is a WSConv2d)."""
        c = self.conv
        self._w = c.standardized_weight() if isinstance(c, WSConv2d) else c.weight

    @staticmethod
    def prepare(h: Tensor) -> Tensor:
        return h

    def current(self, h: Tensor) -> Tensor:
        c = self.conv
        return per_step(lambda z: F.conv2d(z, self._w, c.bias, c.stride, c.padding, c.dilation, c.groups), h)

    def weight_grad(self, g: Tensor, x: Tensor) -> Tensor:
        c = self.conv
        if time_invariant(x):
            g, x = g.sum(0, keepdim=True), x[:1]
        return conv2d_weight(x.flatten(0, 1), self._w.shape, g.flatten(0, 1), c.stride, c.padding, c.dilation,
                             c.groups)

    def output(self, s: Tensor) -> Tensor:
        return s if self.pool is None else per_step(self.pool, s)

    def _avg_matrix(self, h: int, w: int, like: Tensor) -> Tensor:
        """A [k², h w]: adaptive average pooling of an h x w map to k x k as a matrix."""
        if (h, w) not in self._A:
            eye = torch.eye(h * w, dtype=like.dtype, device=like.device).view(h * w, 1, h, w)
            self._A[h, w] = F.adaptive_avg_pool2d(eye, self.k).view(h * w, self.k ** 2).t().contiguous()
        return self._A[h, w]

    def signal(self, s: Tensor, P: Tensor, onehot: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        c, B, C = s.shape[:3]
        flat = s.flatten(0, 1)                                                # [c B, C', H, W]
        if self.pool is not None:
            o, idx = F.max_pool2d(flat, self.pool.kernel_size, self.pool.stride, return_indices=True)
        else:
            o, idx = flat, None
        h, w = o.shape[-2:]
        A = self._avg_matrix(h, w, o)
        z = (o.flatten(-2) @ A.t()).flatten(1)                                # [c B, C' k²]
        logp = torch.log_softmax(z @ P / temperature, -1)
        target = onehot.repeat(c, 1)
        dz = (logp.exp() - target) @ P.t() / temperature
        do = (dz.view(c * B, C, -1) @ A).view_as(o)                          # back through the average pool
        if idx is not None:
            do = F.max_unpool2d(do, idx, self.pool.kernel_size, self.pool.stride, output_size=flat.shape[-2:])
        return do.view_as(s), -(logp * target).sum(-1).sum() / B

    @property
    def weight(self) -> Tensor:
        return self._w

    @property
    def bias(self) -> Tensor | None:
        return self.conv.bias

    def set_grads(self, gW: Tensor, gb: Tensor | None) -> None:
        c = self.conv
        if c.bias is not None:
            c.bias.grad = gb
        if not isinstance(c, WSConv2d):
            c.weight.grad = gW
            return
        c.weight.grad = c.gain.grad = None
        with torch.enable_grad():                        # the local chain rule through the standardisation
            torch.autograd.backward(c.standardized_weight(), gW)


SYNAPSES = {SpikingDense: DenseSynapse, ConvBlock: ConvSynapse.of_block, SpikingConv: ConvSynapse.of_spiking_conv}


def synapse_of(i: int, layer: nn.Module, lsg_pool: int):
    """The TESS view of layer i (a ConfigError naming the layer when TESS cannot train it)."""
    make = next((f for cls, f in SYNAPSES.items() if isinstance(layer, cls)), None)
    if make is None:
        raise ConfigError(f"TESS trains spiking_mlp, spiking_convnet and spiking_vgg layers; layer {i} is "
                          f"{type(layer).__name__}")
    return make(layer, lsg_pool)


__all__ = ["ConvSynapse", "DenseSynapse", "SYNAPSES", "synapse_of"]
