"""NoProp (Li, Teh & Pascanu 2025, arXiv 2503.24322): learning without a global backward pass.

Each denoising block learns on its own to map a noisy label embedding back to the label; no error
crosses blocks. Paper time: t = 0 is pure noise, t = T is closest to the label (schedules, Eq. 3 and the
networks are in `bioplaus.rules.noprop_blocks`). u_y = W_Embed[y] (shape [B, d]); û = softmax(logits) W_Embed.

NoProp-DT (variant=dt, the default), T blocks û_t(z_{t-1}, x), fixed cosine schedule (SNR clamped to
<= max_snr, so every SNR and every loss weight is finite). Eq. 8, with the expectation over t summed:

    L = CE(classifier(z_T), y) + KL(q(z_0|y) || N(0, I))
        + (η/2) Σ_{t=1..T} (SNR(t) - SNR(t-1)) ‖û_t(z_{t-1}, x) - u_y‖²,   z_s ~ q(z_s|y) = N(√ᾱ_s u_y, 1-ᾱ_s)

  Each block's input z_{t-1} is sampled from q and detached, so its gradient depends only on its own
  parameters (and on W_Embed when it is learned); all T blocks are updated in every `assign_credit` call
  (the paper's Algorithm 1 trains them one after another within an epoch; the losses are the same).
  Inference: z_0 ~ N(0, I), z_t = a_t û_t(z_{t-1}, x) + b_t z_{t-1} + √c_t ε (Eq. 3), logits =
  classifier(z_T). `inference_noise=False` (the default) drops ε and starts from z_0 = 0: deterministic,
  and it scores higher (as Sid3503/NoProp#4 reports; digits 0.97 vs 0.95, Fashion-10k 0.86 vs 0.83). With
  noise, z_1 is mostly noise and the latent accuracy climbs along the chain (see `chain_accuracy`).
NoProp-CT (variant=ct): one network û(z_t, x, t) with a time embedding and a learned schedule:
    L = CE(classifier(z_1), y) + KL + (η/2) E_{t~U[0,1]} [SNR'(t) ‖û(z_t, x, t) - u_y‖²]
  Inference: Eq. 3 on an even grid of `inference_steps` steps in [0, 1].
NoProp-FM (variant=fm): z_t = t u_y + (1-t) z_0 + σ ε, v = logits W_Embed, L = ‖v(z_t, x, t) - (u_y - z_0)‖²
  (+ CE(-‖z̃_1 - W_Embed‖², y), z̃_1 = z_t + (1-t) v, for learned embeddings). Inference: Euler
  integration over `inference_steps` steps from z_0, then the nearest class embedding (logits = -distance²).

What the given model contributes: `model.layers` is the image path of the first DT block (of the single
CT/FM network); every other DT block gets a deep copy of `model.layers` with fresh weights, so the rule
runs on any layered model (MLP, ConvNet and their spiking versions). Each network adds an FC on the pooled
image features, a latent MLP with a skip (prototype embeddings: another fresh copy of `model.layers`, fed
z as an image) and a fusion head. `model.head` is unused and frozen: the classifier reads z_T, not h_L.
The rule owns all blocks, the classifier, W_Embed and the CT schedule (state_dict has all of it).
Learning rates (param_groups): blocks, embeddings and schedule at `lr_scale` (3) x the trainer's lr, since
each block is a deeper net trained by an MSE on a softmax and learns slowly at 1e-3 in a 20-epoch budget;
the linear classifier on z at `classifier_lr_scale` (10) x, like the readout_only control's head.
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
    Denoiser,
    ImagePath,
    LatentMLP,
    LearnedSchedule,
    cosine_schedule,
    fresh_copy,
    image_shape,
    snr,
    step_coefficients,
)

VARIANTS = ("dt", "ct", "fm")
ETA = {"dt": 0.1, "ct": 1.0, "fm": 0.0}          # Table 3 (FM has no SNR weighting)


class NoProp(LearningRule):
    """NoProp-DT / -CT / -FM (see the module docstring). Hyperparameters:

    variant: dt | ct | fm;  T: number of DT blocks;  width: FC width inside each block;
    embedding: onehot | learned | prototype;  embed_dim: d for learned embeddings;
    eta: SNR-loss weight η (None = Table 3: 0.1 for DT, 1 for CT);  max_snr: SNR clamp;
    inference_noise: sample ε (and z_0) at inference;  inference_steps: CT/FM sampler steps;
    sigma: FM path noise σ;  lr_scale: lr multiplier of the blocks (and learned embeddings / schedule);
    classifier_lr_scale: lr multiplier of the linear classifier on z;
    block_parallel (DT): under data-parallel training (torchrun) each rank trains only its share of the T
    blocks (t % world == rank) on the whole global batch, rank 0 also the classifier and KL terms; the trainer
    then sums the gradients, so every rank steps the same full update (`parallel_split = "blocks"`).
    Every rank draws every block's noise, so the summed update is the single-process one."""

    name = "noprop"
    supported_models = (MLP, ConvNet, SpikingMLP, SpikingConvNet)

    def __init__(self, model: nn.Module, variant: str = "dt", T: int = 10, width: int = 128,
                 embedding: str = "onehot", embed_dim: int = 20, eta: float | None = None, max_snr: float = 100.0,
                 inference_noise: bool = False, inference_steps: int = 1000, sigma: float = 0.05,
                 classifier_lr_scale: float = 10.0, lr_scale: float = 3.0, block_parallel: bool = False):
        super().__init__(model)
        if block_parallel and variant != "dt":
            raise ConfigError(f"rule.block_parallel needs variant=dt (independent blocks); {variant} has one net")
        self.parallel_split = "blocks" if block_parallel else "batch"
        self.partition = (0, 1)                             # (rank, world): the blocks this process trains
        check_choice("variant", variant, VARIANTS)
        if int(width) < 1 or int(inference_steps) < 1:
            raise ConfigError(f"rule.width and rule.inference_steps must be >= 1, got {width}, {inference_steps}")
        if not float(max_snr) > 1:
            raise ConfigError(f"rule.max_snr must be > 1 (the SNR closest to the label), got {max_snr}")
        self.variant, self.T, self.steps = variant, int(T), int(inference_steps)
        self.eta = ETA[variant] if eta is None else float(eta)
        self.inference_noise, self.sigma = bool(inference_noise), float(sigma)
        self.classifier_lr_scale = check_positive("classifier_lr_scale", classifier_lr_scale)
        self.lr_scale = check_positive("lr_scale", lr_scale)
        for p in model.head.parameters():                  # unused: the classifier reads z, not h_L
            p.requires_grad_(False)
        shape = image_shape(model) if embedding == "prototype" else None
        C, width = model.n_classes, int(width)
        self.embed = ClassEmbedding(embedding, C, embed_dim, math.prod(shape) if shape else None)
        d = self.embed.dim
        nets = []
        for i in range(self.T if variant == "dt" else 1):
            image = ImagePath(model, model.layers if i == 0 else fresh_copy(model.layers), width)
            latent = ImagePath(model, fresh_copy(model.layers), width, shape) if shape else LatentMLP(d, width)
            nets.append(Denoiser(image, latent, C, width, timed=variant != "dt"))
        self.blocks = nn.ModuleList(nets)
        self.classifier = nn.Linear(d, C) if variant != "fm" else None
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
        """The classifier (a linear readout of z, convex) learns at classifier_lr_scale x the shared lr."""
        head = {id(p) for p in self.classifier.parameters()} if self.classifier is not None else set()
        rest = [p for p in self.trainable_parameters() if id(p) not in head]
        groups = [self.group(rest, self.lr_scale)]
        if head:
            groups.append(self.group(self.classifier.parameters(), self.classifier_lr_scale))
        return groups

    def set_partition(self, rank: int, world: int) -> None:
        """Train only blocks t with (t - 1) % world == rank (and, on rank 0, the classifier and KL terms)."""
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

    def block_losses(self, x: Tensor, u: Tensor, W: Tensor) -> Tensor:
        """DT: unweighted ‖û_t(z_{t-1}, x) - u_y‖² per block, batch mean: [T]. Inputs are detached samples."""
        out = []
        for t, block in enumerate(self.blocks, 1):
            z = self._q(u, self.abar[t - 1]).detach()        # drawn on every rank: the same noise stream
            if not self._mine(t):
                out.append(torch.zeros((), device=x.device))
                continue
            uhat = block(z, block.features(x)).softmax(-1) @ W
            out.append((uhat - u).pow(2).sum(-1).mean())
        return torch.stack(out)

    def _dt_loss(self, x, y, u, W) -> dict[str, Tensor]:
        mse = self.block_losses(x, u, W)
        z = self._q(u, self.abar[-1])
        if self.partition[0] != 0:                           # block-parallel: rank 0 owns the shared terms
            zero = torch.zeros((), device=x.device)
            return {"ce": zero, "kl": zero, "mse": (self.loss_weights * mse).sum()}
        ce = F.cross_entropy(self.classifier(z), y)
        return {"ce": ce, "kl": self._kl0(u, self.abar[0]), "mse": (self.loss_weights * mse).sum()}

    def _ct_loss(self, x, y, u, W) -> dict[str, Tensor]:
        net, t = self.blocks[0], torch.rand(len(x), device=x.device)
        s, ds = self.schedule.snr_and_derivative(t)
        z = self._q(u, (s / (1 + s))[:, None])
        uhat = net(z, net.features(x), t).softmax(-1) @ W
        mse = 0.5 * self.eta * (ds * (uhat - u).pow(2).sum(-1)).mean()
        ends = self.schedule.abar(torch.tensor([0.0, 1.0], device=x.device))
        ce = F.cross_entropy(self.classifier(self._q(u, ends[1])), y)
        return {"ce": ce, "kl": self._kl0(u, ends[0]), "mse": mse}

    def _fm_loss(self, x, y, u, W) -> dict[str, Tensor]:
        net, t = self.blocks[0], torch.rand(len(x), 1, device=x.device)
        z0 = torch.randn_like(u)
        z = t * u + (1 - t) * z0 + self.sigma * torch.randn_like(u)
        v = net(z, net.features(x), t[:, 0]) @ W
        logs = {"mse": (v - (u - z0)).pow(2).sum(-1).mean()}
        if self.embed.mode != "onehot":                    # anchor against collapsing embeddings
            logs["ce"] = F.cross_entropy(-torch.cdist(z + (1 - t) * v, W).pow(2), y)
        return logs

    # ---- inference ------------------------------------------------------------------------------
    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn_like(like) if self.inference_noise else torch.zeros_like(like)

    def chain(self, x: Tensor) -> Iterator[Tensor]:
        """Yields z_1, ..., z_N [B, d] of the inference chain (DT: N = T; CT/FM: N = inference_steps)."""
        W = self.embed.weight
        z = self._noise(x.new_zeros(len(x), W.shape[1]))
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
        """Logits [B, C] from a latent: the classifier (DT/CT) or -‖z - u_c‖² (FM: nearest embedding)."""
        if self.classifier is not None:
            return self.classifier(z)
        return -torch.cdist(z, self.embed.weight).pow(2)

    def inference_layers(self) -> dict[str, nn.Module]:
        """Statistics: inference runs the denoising blocks (DT: each once; CT/FM: the one network's latent
        MLP `inference_steps` times) and the classifier, not model.head."""
        out: dict[str, nn.Module] = {}
        for i, b in enumerate(self.blocks):        # the image path runs via block.features, outside forward;
            # one entry per weight layer, so the memory model prices each weight buffer by its own size
            parts = {**{f"image.layers.{j}": m for j, m in enumerate(b.image.layers)}, "image.fc": b.image.fc,
                     "latent": b.latent, "time": b.time, "fuse": b.fuse}
            out.update({f"blocks.{i}.{k}": m for k, m in parts.items() if m is not None})
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
