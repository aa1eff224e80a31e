"""NoProp (Li, Teh & Pascanu 2025, arXiv 2503.24322): learning without a global backward pass.

Each denoising block learns on its own to map a noisy label embedding back to the label; no error
crosses blocks. Paper time: t = 0 is pure noise, t = T is closest to the label (schedules, Eq. 3 and the
networks are in `bioplaus.rules.noprop_blocks`). u_y = W_Embed[y] (shape [B, d]); û = softmax(logits) W_Embed.

NoProp-DT (variant=dt, the default), T blocks û_t(z_{t-1}, x), fixed cosine schedule (SNR clamped to
<= max_snr, so every SNR and every loss weight is finite). Eq. 8, with the expectation over t summed:

    L = CE(head(z_T), y) + KL(q(z_0|y) || N(0, I)) + Σ_{t=1..T} w_t ‖û_t(z_{t-1}, x) - u_y‖²,
    w_t = (η/2)(SNR(t) - SNR(t-1)),   z_s ~ q(z_s|y) = N(√ᾱ_s u_y, 1-ᾱ_s)

  ((T/2) η E_{t~U{1..T}}[...] of Eq. 8 is this sum.) Each block's input z_{t-1} is sampled from q and
  detached, so its gradient depends only on its own parameters (and on W_Embed when it is learned).
  `schedule` (DT): `together` (default) builds all T blocks' graphs and runs one backward; `sequential` is
  the paper's Algorithm 1 loop within each batch: block t's forward and backward run, and its graph is freed,
  before block t+1's forward, so the activations held for backward are one block's (about 1/T of together),
  with the same noise draws and the same gradients. (Algorithm 1 orders the loops the other way round, block
  t over the whole dataset, then block t+1; each block gets the same updates per epoch either way.)
  Inference (Eq. 3): z_t = a_t û_t(z_{t-1}, x) + b_t z_{t-1} + √c_t ε, from z_0 (`inference_start`: zero,
  the default, or gaussian, z_0 ~ N(0, I) as in the paper), ε drawn when `inference_noise` (the paper) else 0;
  logits = head(z_T). Without noise it is deterministic and scores higher (Sid3503/NoProp#4; digits 0.97 vs
  0.95, Fashion-10k 0.86 vs 0.83). With noise, z_1 is mostly noise and the latent accuracy climbs along the
  chain (see `chain_accuracy`).
NoProp-CT (variant=ct): one network û(z_t, x, t) with a time embedding and a learned schedule:
    L = CE(head(z_1), y) + KL + (η/2) E_{t~U[0,1]} [SNR'(t) ‖û(z_t, x, t) - u_y‖²]
  Inference: Eq. 3 on an even grid of `inference_steps` steps in [0, 1].
NoProp-FM (variant=fm): z_t = t u_y + (1-t) z_0 + σ ε, v = logits W_Embed, L = ‖v(z_t, x, t) - (u_y - z_0)‖²
  (`noprop_blocks.fm_path`), plus the anchor CE(head(z̃_1), y), z̃_1 = z_t + (1-t) v, when the embeddings are
  learned or the head has weights. Inference: Euler integration over `inference_steps` steps from z_0, then the
  head on z_1 (default `nearest`: logits = -‖z_1 - u_c‖², the nearest class embedding).
Heads p̂(y | z) (`head`; default linear for DT/CT, nearest for FM):
    linear     logits = f(z), f a Linear d -> C (the paper's p̂_θout)
    embedding  ỹ = softmax(f(z)) W_Embed, logits_c = -‖ỹ - u_c‖² / (2 head_sigma²) (the paper's Eqs. 15-16)
    nearest    logits_c = -‖z - u_c‖² (no weights)

Blocks (`block`): `model` (default) uses the given model: `model.layers` is the image path of the first DT block
(of the single CT/FM network); every other DT block gets a deep copy with fresh weights, so the rule runs on any
layered model (MLP, ConvNet and their spiking versions); each network adds an FC on the pooled image features, a
latent MLP with a skip (prototype embeddings: another fresh copy of `model.layers`, fed z as an image) and a
fusion head. `paper`: the paper's conv block (`noprop_blocks.build_denoiser`; `channels`, `width`, `dropout`),
built from the data's image shape alone; the model's weights are then frozen and unused. `model.head` is unused
and frozen either way: the head reads z_T, not h_L. The rule owns all blocks, the head, W_Embed and the CT
schedule (state_dict has all of it).
Learning rates (param_groups): blocks, embeddings and schedule at `lr_scale` (3) x the trainer's lr, since
each block is a deeper net trained by an MSE on a softmax and learns slowly at 1e-3 in a 20-epoch budget;
the head's Linear at `classifier_lr_scale` (10) x, like the readout_only control's head. The paper preset
(configs/rule/noprop_paper.yaml) sets both to 1.

`NoPropBackprop` (rule name noprop_bp) is the paper's backprop baseline on the same blocks: z_t = (1 - α_t)
z_{t-1} + α_t û_t(z_{t-1}, x), α_t = tanh(w_t) learned, trained end to end by CE(head(z_T), y).
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import MLP, ConvNet, SpikingConvNet, SpikingMLP
from bioplaus.rules.base import LearningRule, check_choice, check_positive
from bioplaus.rules.noprop_blocks import (
    ClassEmbedding,
    LearnedSchedule,
    build_denoiser,
    cosine_schedule,
    fm_path,
    fresh_copy,
    image_shape,
    snr,
    step_coefficients,
)

VARIANTS = ("dt", "ct", "fm")
ETA = {"dt": 0.1, "ct": 1.0, "fm": 0.0}          # Table 3 (FM has no SNR weighting)
SCHEDULES = ("together", "sequential")
HEADS = ("linear", "embedding", "nearest")
STARTS = ("zero", "gaussian")
BLOCKS = ("model", "paper")


class NoProp(LearningRule):
    """NoProp-DT / -CT / -FM (see the module docstring). Hyperparameters:

    variant: dt | ct | fm;  T: number of DT blocks;  width: FC width inside each block;
    embedding: onehot | learned | prototype;  embed_dim: d for learned embeddings;
    eta: SNR-loss weight η (None = Table 3: 0.1 for DT, 1 for CT);  max_snr: SNR clamp;
    schedule (DT): together | sequential;  block: model | paper (channels, dropout: the paper block's);
    head: linear | embedding | nearest (None: linear, FM nearest);  head_sigma: the embedding head's σ;
    inference_start: zero | gaussian (None: gaussian when inference_noise, else zero);
    inference_noise: sample Eq. 3's ε at inference;  inference_steps: CT/FM sampler steps;
    sigma: FM path noise σ;  lr_scale: lr multiplier of the blocks (and learned embeddings / schedule);
    classifier_lr_scale: lr multiplier of the head's Linear;
    block_parallel (DT): under data-parallel training (torchrun) each rank trains only its share of the T
    blocks (t % world == rank) on the whole global batch, rank 0 also the head and KL terms; the trainer
    then sums the gradients, so every rank steps the same full update (`parallel_split = "blocks"`).
    Every rank draws every block's noise, so the summed update is the single-process one."""

    name = "noprop"
    supported_models = (MLP, ConvNet, SpikingMLP, SpikingConvNet)

    def __init__(self, model: nn.Module, variant: str = "dt", T: int = 10, width: int = 128,
                 embedding: str = "onehot", embed_dim: int = 20, eta: float | None = None, max_snr: float = 100.0,
                 inference_noise: bool = False, inference_steps: int = 1000, sigma: float = 0.05,
                 classifier_lr_scale: float = 10.0, lr_scale: float = 3.0, block_parallel: bool = False,
                 schedule: str = "together", block: str = "model", channels=(32, 64, 128), dropout: float = 0.2,
                 head: str | None = None, head_sigma: float = 1.0, inference_start: str | None = None):
        super().__init__(model)
        if block_parallel and variant != "dt":
            raise ConfigError(f"rule.block_parallel needs variant=dt (independent blocks); {variant} has one net")
        self.parallel_split = "blocks" if block_parallel else "batch"
        self.partition = (0, 1)                             # (rank, world): the blocks this process trains
        check_choice("variant", variant, VARIANTS)
        check_choice("schedule", schedule, SCHEDULES, "noprop")
        check_choice("block", block, BLOCKS, "noprop")
        head = head or ("nearest" if variant == "fm" else "linear")
        check_choice("head", head, HEADS, "noprop")
        start = inference_start or ("gaussian" if inference_noise else "zero")
        check_choice("inference_start", start, STARTS, "noprop")
        if int(width) < 1 or int(inference_steps) < 1:
            raise ConfigError(f"rule.width and rule.inference_steps must be >= 1, got {width}, {inference_steps}")
        if not float(max_snr) > 1:
            raise ConfigError(f"rule.max_snr must be > 1 (the SNR closest to the label), got {max_snr}")
        if not 0 <= float(dropout) < 1:
            raise ConfigError(f"rule.dropout must be in [0, 1), got {dropout}")
        if block == "paper" and model.spiking:
            raise ConfigError("rule.block=paper builds the paper's static conv blocks; use model=mlp or convnet "
                              "(or rule.block=model to denoise with the spiking model's layers)")
        self.variant, self.T, self.steps, self.order = variant, int(T), int(inference_steps), schedule
        self.eta = ETA[variant] if eta is None else float(eta)
        self.inference_noise, self.sigma, self.inference_start = bool(inference_noise), float(sigma), start
        self.head, self.head_sigma = head, check_positive("head_sigma", head_sigma)
        self.classifier_lr_scale = check_positive("classifier_lr_scale", classifier_lr_scale)
        self.lr_scale = check_positive("lr_scale", lr_scale)
        frozen = model.parameters() if block == "paper" else model.head.parameters()
        for p in frozen:                                    # unused: the head reads z, not h_L
            p.requires_grad_(False)
        shape = image_shape(model) if embedding == "prototype" else None
        C, width = model.n_classes, int(width)
        self.embed = ClassEmbedding(embedding, C, embed_dim, math.prod(shape) if shape else None)
        d = self.embed.dim
        nets = []
        for i in range(self.T if variant == "dt" else 1):
            layers = (model.layers if i == 0 else fresh_copy(model.layers)) if block == "model" else None
            nets.append(build_denoiser(block, model, layers, C, d, width, variant != "dt", shape,
                                       [int(c) for c in channels], float(dropout)))
        self.blocks = nn.ModuleList(nets)
        self.classifier = nn.Linear(d, C) if head != "nearest" else None
        if variant == "dt":
            abar = cosine_schedule(self.T, float(max_snr))
            s = snr(abar)
            a, b, c = step_coefficients(abar[:-1], abar[1:])
            self.register_buffer("abar", abar.float())                       # [T+1]
            self.register_buffer("snr", s.float())                           # [T+1], finite
            self.register_buffer("loss_weights", (0.5 * self.eta * (s[1:] - s[:-1])).float())  # [T]
            self.register_buffer("coef", torch.stack([a, b, c], 1).float())  # [T, 3]: a_t, b_t, c_t
        self.schedule = LearnedSchedule(float(max_snr)) if variant == "ct" else None

    def param_groups(self) -> list[dict]:
        """The head's Linear (convex on a fixed z) learns at classifier_lr_scale x the shared lr."""
        head = {id(p) for p in self.classifier.parameters()} if self.classifier is not None else set()
        rest = [p for p in self.trainable_parameters() if id(p) not in head]
        groups = [self.group(rest, self.lr_scale)]
        if head:
            groups.append(self.group(self.classifier.parameters(), self.classifier_lr_scale))
        return groups

    def pass_probe(self) -> nn.Module:
        """One pass = one run of the first block's image path (block=paper leaves model.layers unused)."""
        return self.blocks[0].image

    def set_partition(self, rank: int, world: int) -> None:
        """Train only blocks t with (t - 1) % world == rank (and, on rank 0, the head and KL terms)."""
        if world > self.T:
            raise ConfigError(f"rule.block_parallel: {world} ranks but only T={self.T} blocks; use at most "
                              f"{self.T} processes or more blocks (rule.T)")
        self.partition = (int(rank), int(world))

    def _mine(self, t: int) -> bool:
        rank, world = self.partition
        return (t - 1) % world == rank

    # ---- training -------------------------------------------------------------------------------
    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        self.embed.init_prototypes(x, y)
        if self.variant == "dt" and self.order == "sequential":
            logs = self._dt_sequential(x, y)
            return {"loss": sum(logs.values()), **logs}
        W = self.embed.weight
        u = W[y]
        logs = {"dt": self._dt_loss, "ct": self._ct_loss, "fm": self._fm_loss}[self.variant](x, y, u, W)
        loss = sum(logs.values())
        loss.backward()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in logs.items()}}

    @staticmethod
    def _q(u: Tensor, abar: Tensor) -> Tensor:
        """A sample of q(z|y) = N(√ᾱ u_y, (1 - ᾱ) I); abar scalar or [B, 1]."""
        return abar.sqrt() * u + (1 - abar).sqrt() * torch.randn_like(u)

    @staticmethod
    def _kl0(u: Tensor, abar0: Tensor) -> Tensor:
        """KL(N(√ᾱ_0 u, (1-ᾱ_0) I) || N(0, I)), batch mean."""
        return 0.5 * (abar0 * u.pow(2) - abar0 - torch.log1p(-abar0)).sum(-1).mean()

    @staticmethod
    def _block_mse(block: nn.Module, z: Tensor, x: Tensor, u: Tensor, W: Tensor) -> Tensor:
        """Unweighted ‖û(z, x) - u_y‖², batch mean, û = softmax(block logits) W_Embed."""
        uhat = block(z, block.features(x)).softmax(-1) @ W
        return (uhat - u).pow(2).sum(-1).mean()

    def block_losses(self, x: Tensor, u: Tensor, W: Tensor) -> Tensor:
        """DT: unweighted ‖û_t(z_{t-1}, x) - u_y‖² per block, batch mean: [T]. Inputs are detached samples."""
        out = []
        for t, block in enumerate(self.blocks, 1):
            z = self._q(u, self.abar[t - 1]).detach()        # drawn on every rank: the same noise stream
            out.append(self._block_mse(block, z, x, u, W) if self._mine(t) else torch.zeros((), device=x.device))
        return torch.stack(out)

    def _shared_terms(self, x: Tensor, y: Tensor, u: Tensor) -> dict[str, Tensor]:
        """DT's CE on a sample of q(z_T|y) and KL at t = 0 (rank 0's under block_parallel)."""
        z = self._q(u, self.abar[-1])
        if self.partition[0] != 0:                           # block-parallel: rank 0 owns the shared terms
            zero = torch.zeros((), device=x.device)
            return {"ce": zero, "kl": zero}
        return {"ce": F.cross_entropy(self.readout(z), y), "kl": self._kl0(u, self.abar[0])}

    def _dt_loss(self, x, y, u, W) -> dict[str, Tensor]:
        mse = self.block_losses(x, u, W)
        return {**self._shared_terms(x, y, u), "mse": (self.loss_weights * mse).sum()}

    def _dt_sequential(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Algorithm 1 within a batch: for t = 1..T, block t's weighted loss is built and backpropagated (its
        graph freed) before block t+1 runs. Same draws in the same order as `_dt_loss`, so the same gradients."""
        mse = 0.0
        for t, block in enumerate(self.blocks, 1):
            W = self.embed.weight
            u = W[y]                                         # a fresh graph per block (learned embeddings)
            z = self._q(u, self.abar[t - 1]).detach()
            if self._mine(t):
                term = self.loss_weights[t - 1] * self._block_mse(block, z, x, u, W)
                term.backward()
                mse += float(term.detach())
        shared = self._shared_terms(x, y, self.embed.weight[y])
        total = sum(shared.values())
        if total.requires_grad:
            total.backward()
        return {**{k: float(v.detach()) for k, v in shared.items()}, "mse": mse}

    def _ct_loss(self, x, y, u, W) -> dict[str, Tensor]:
        net, t = self.blocks[0], torch.rand(len(x), device=x.device)
        s, ds = self.schedule.snr_and_derivative(t)
        z = self._q(u, (s / (1 + s))[:, None])
        uhat = net(z, net.features(x), t).softmax(-1) @ W
        mse = 0.5 * self.eta * (ds * (uhat - u).pow(2).sum(-1)).mean()
        ends = self.schedule.abar(torch.tensor([0.0, 1.0], device=x.device))
        ce = F.cross_entropy(self.readout(self._q(u, ends[1])), y)
        return {"ce": ce, "kl": self._kl0(u, ends[0]), "mse": mse}

    def _fm_loss(self, x, y, u, W) -> dict[str, Tensor]:
        net, t = self.blocks[0], torch.rand(len(x), 1, device=x.device)
        z0 = torch.randn_like(u)
        z, target = fm_path(u, z0, t, torch.randn_like(u), self.sigma)
        v = net(z, net.features(x), t[:, 0]) @ W
        logs = {"mse": (v - target).pow(2).sum(-1).mean()}
        if self.embed.mode != "onehot" or self.classifier is not None:   # anchor: z̃_1 = z_t + (1 - t) v
            logs["ce"] = F.cross_entropy(self.readout(z + (1 - t) * v), y)
        return logs

    # ---- inference ------------------------------------------------------------------------------
    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn_like(like) if self.inference_noise else torch.zeros_like(like)

    def start(self, x: Tensor) -> Tensor:
        """z_0 [B, d]: zeros, or a draw of N(0, I) (inference_start=gaussian, the paper's)."""
        z = x.new_zeros(len(x), self.embed.dim)
        return torch.randn_like(z) if self.inference_start == "gaussian" else z

    def chain(self, x: Tensor) -> Iterator[Tensor]:
        """Yields z_1, ..., z_N [B, d] of the inference chain (DT: N = T; CT/FM: N = inference_steps)."""
        W = self.embed.weight
        z = self.start(x)
        if self.variant == "dt":
            for block, (a, b, c) in zip(self.blocks, self.coef):
                uhat = block(z, block.features(x)).softmax(-1) @ W
                z = a * uhat + b * z + c.sqrt() * self._noise(z)
                yield z
            return
        net = self.blocks[0]
        feats = net.features(x)                            # depends on neither z nor t: once per input
        grid = torch.linspace(0, 1, self.steps + 1, device=x.device)
        abar = self.schedule.abar(grid) if self.variant == "ct" else None
        for k in range(self.steps):
            t = grid[k].expand(len(x))
            out = net(z, feats, t)
            if self.variant == "fm":
                z = z + (out @ W) / self.steps
            else:
                a, b, c = step_coefficients(abar[k], abar[k + 1])
                z = a * (out.softmax(-1) @ W) + b * z + c.sqrt() * self._noise(z)
            yield z

    def readout(self, z: Tensor) -> Tensor:
        """Logits [B, C] of the head p̂(y | z) (module docstring: linear, embedding or nearest)."""
        W = self.embed.weight
        if self.head == "nearest":
            return -torch.cdist(z, W).pow(2)
        logits = self.classifier(z)
        if self.head == "linear":
            return logits
        return -torch.cdist(logits.softmax(-1) @ W, W).pow(2) / (2 * self.head_sigma ** 2)

    def inference_layers(self) -> dict[str, nn.Module]:
        """Statistics: inference runs the denoising blocks (DT: each once; CT/FM: the one network's latent
        MLP `inference_steps` times) and the head, not model.head."""
        out: dict[str, nn.Module] = {}
        for i, b in enumerate(self.blocks):        # the image path runs via block.features, outside forward;
            # one entry per weight layer, so the memory model prices each weight buffer by its own size
            out.update({f"blocks.{i}.{k}": m for k, m in b.weight_layers().items()})
        if self.classifier is not None:
            out["classifier"] = self.classifier
        return out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.readout(deque(self.chain(x), maxlen=1)[0])     # keeps only the last z

    @torch.no_grad()
    def chain_accuracy(self, x: Tensor, y: Tensor) -> list[float]:
        """Accuracy of readout(z_t) at every step of the inference chain (eval mode), [N] floats."""
        was = self.training
        self.eval()
        accs = [float((self.readout(z).argmax(-1) == y).float().mean()) for z in self.chain(x)]
        self.train(was)
        return accs


class NoPropBackprop(NoProp):
    """The paper's backprop baseline on NoProp's own T blocks (Li, Teh & Pascanu 2025, Table 1): the chain
    z_t = (1 - α_t) z_{t-1} + α_t û_t(z_{t-1}, x), α_t = tanh(w_t) (learned, starting at 0.5), from z_0
    (`inference_start`), trained end to end by one backward of CE(head(z_T), y). Every NoProp setting of the
    blocks and the head applies; the diffusion ones (eta, max_snr, schedule, inference_noise) do not."""

    name = "noprop_bp"

    def __init__(self, model: nn.Module, **kw):
        if kw.pop("variant", "dt") != "dt" or kw.get("block_parallel"):
            raise ConfigError("rule noprop_bp trains NoProp-DT's T blocks end to end, in one backward: leave "
                              "rule.variant and rule.block_parallel unset")
        super().__init__(model, variant="dt", **kw)
        self.mix = nn.Parameter(torch.full((self.T,), math.atanh(0.5)))

    def assign_credit(self, x: Tensor, y: Tensor) -> dict[str, float]:
        self.embed.init_prototypes(x, y)
        *_, z = self.chain(x)
        loss = F.cross_entropy(self.readout(z), y)
        loss.backward()
        return {"loss": float(loss.detach())}

    def chain(self, x: Tensor) -> Iterator[Tensor]:
        W = self.embed.weight
        z = self.start(x)
        for block, w in zip(self.blocks, self.mix):
            a = torch.tanh(w)
            z = (1 - a) * z + a * (block(z, block.features(x)).softmax(-1) @ W)
            yield z
