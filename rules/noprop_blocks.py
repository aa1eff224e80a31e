"""NoProp building blocks: noise schedules, class embeddings and the denoising networks û(z, x[, t]).

Used by `bioplaus.rules.noprop` (NoProp, Li, Teh & Pascanu 2025). Notation (paper time: t = 0 is pure
noise, t = T (DT) or t = 1 (CT/FM) is closest to the label):

    q(z_t | y) = N(sqrt(ᾱ_t) u_y, (1 - ᾱ_t) I),   SNR(t) = ᾱ_t / (1 - ᾱ_t),   α_{t-1} = ᾱ_{t-1} / ᾱ_t

Eq. 3 (one inference step, also the posterior q(z_t | z_{t-1}, y) with u_y replaced by û):

    z_t = a_t û + b_t z_{t-1} + sqrt(c_t) ε
    a_t = sqrt(ᾱ_t)(1 - α_{t-1}) / (1 - ᾱ_{t-1}),  b_t = sqrt(α_{t-1})(1 - ᾱ_t) / (1 - ᾱ_{t-1}),
    c_t = (1 - ᾱ_t)(1 - α_{t-1}) / (1 - ᾱ_{t-1})

- `cosine_schedule(T, max_snr)`: ᾱ_t = f(1 - t/T) / f(0), f(s) = cos²((s + 0.008)/1.008 · π/2) (the
  improved-DDPM cosine, run backwards), with SNR clamped to <= max_snr (unclamped, ᾱ_T = 1 and
  SNR(T) = ∞). Returns ᾱ [T+1].
- `LearnedSchedule` (NoProp-CT, Appendix B): SNR(t) = exp(-γ(t)), γ(t) = γ0 + (γ1 - γ0)(1 - γ̄(t)),
  γ̄ a normalised monotone two-layer net with positive weights; γ0 >= -log(max_snr) so SNR stays finite.
- `ClassEmbedding`: W_Embed [C, d]; modes onehot (W = I, fixed), learned (d = embed_dim, orthogonal
  init), prototype (d = image size, each row initialised from data: the image with the smallest median
  distance to its classmates in the first batch that contains the class).
- `ImagePath`: x -> model-style encoder (a copy of `model.layers`, or the layers themselves) -> pool
  -> FC(width) -> ReLU: [B, ...] -> [B, width].
- `LatentMLP`: z [B, d] -> FC(width) -> ReLU -> (+ skip) FC(width) -> ReLU: [B, width].
- `Denoiser`: concat(image, latent[, time]) -> fuse -> logits [B, C]. The rule turns them into
  û = softmax(logits) W_Embed (DT/CT) or v = logits W_Embed (FM). `build_denoiser` makes one of two kinds:
  - block=model: image = `ImagePath`, latent = `LatentMLP`, fuse = FC(width) -> ReLU -> FC(C);
  - block=paper (the paper's Fig. 6, as the community reproductions Tai225999 and vpuhoff read it; the text
    gives the layout, not the unit counts): image = `PaperImagePath` ([conv3x3 -> ReLU (-> maxpool2 after the
    first and the last conv) -> dropout] per channel entry -> FC(width) -> BN), latent = `PaperLatent`
    (FC -> BN -> ReLU, then a residual FC -> BN -> ReLU -> FC -> BN), fuse = FC(width) -> BN -> ReLU ->
    FC(width/2) -> BN -> ReLU -> FC(C). CT/FM (timed) drop every BatchNorm, as the paper's CT network does.
- `fm_path(u, z0, t, eps, sigma)`: NoProp-FM's sample z_t = t u_y + (1 - t) z_0 + σ ε and its velocity target
  u_y - z_0 (the two numbers the FM loss is made of).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioplaus.errors import ConfigError
from bioplaus.models import pool
from bioplaus.rules.base import check_choice


def snr(abar: Tensor) -> Tensor:
    """SNR = ᾱ / (1 - ᾱ)."""
    return abar / (1 - abar)


def cosine_schedule(T: int, max_snr: float) -> Tensor:
    """ᾱ_t for t = 0..T (float64, increasing), SNR clamped to <= max_snr. Raises if the clamp makes two
    consecutive steps equal (a block with zero loss weight would never learn)."""
    if int(T) < 1:
        raise ConfigError(f"rule.T must be >= 1 (number of NoProp-DT blocks), got {T}")
    if not max_snr > 0 or not math.isfinite(max_snr):
        raise ConfigError(f"rule.max_snr must be a finite number > 0, got {max_snr}")
    t = torch.arange(int(T) + 1, dtype=torch.float64)

    def f(s):
        return torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    abar = (f(1 - t / T) / f(torch.zeros((), dtype=torch.float64))).clamp(0.0, max_snr / (1 + max_snr))
    s = snr(abar)
    if not bool((s[1:] > s[:-1]).all()):
        first = int((s[1:] <= s[:-1]).nonzero()[0]) + 1
        raise ConfigError(f"rule.max_snr={max_snr} clamps NoProp-DT steps {first}..{T} to the same noise level "
                          f"(SNR({first - 1}) = {float(s[first - 1]):.3g}): raise rule.max_snr or lower rule.T")
    return abar


def step_coefficients(abar_prev: Tensor, abar_cur: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 3 coefficients (a_t, b_t, c_t) from ᾱ_{t-1} and ᾱ_t (any broadcastable shapes)."""
    alpha = (abar_prev / abar_cur).clamp(max=1.0)
    den = 1 - abar_prev
    a = abar_cur.sqrt() * (1 - alpha) / den
    b = alpha.sqrt() * (1 - abar_cur) / den
    c = ((1 - abar_cur) * (1 - alpha) / den).clamp(min=0.0)
    return a, b, c


class LearnedSchedule(nn.Module):
    """NoProp-CT's learned schedule on t in [0, 1]: γ(t) = γ0 + (γ1 - γ0)(1 - γ̄(t)).

    γ̃(t) = softplus(c) t + Σ_k softplus(a_k) σ(softplus(w_k) t + b_k) is increasing (positive weights);
    γ̄ = (γ̃(t) - γ̃(0)) / (γ̃(1) - γ̃(0)) runs 0 -> 1. γ0 = max(γ0_raw, -log max_snr), γ1 = γ0 + softplus(gap),
    so SNR(t) = exp(-γ(t)) increases from exp(-γ1) to exp(-γ0) <= max_snr."""

    def __init__(self, max_snr: float, hidden: int = 16):
        super().__init__()
        self.min_gamma0 = -math.log(max_snr)
        self.gamma0 = nn.Parameter(torch.tensor(self.min_gamma0 + 1.0))          # start: SNR(1) = max_snr / e
        self.gap = nn.Parameter(torch.tensor(math.log(math.expm1(2 * math.log(max_snr)))))  # γ1 - γ0
        self.a, self.w = nn.Parameter(torch.zeros(hidden)), nn.Parameter(torch.randn(hidden))
        self.b, self.c = nn.Parameter(torch.randn(hidden)), nn.Parameter(torch.zeros(1))

    def _ends(self) -> tuple[Tensor, Tensor]:
        g0 = self.gamma0.clamp(min=self.min_gamma0)
        return g0, g0 + F.softplus(self.gap)

    def _raw(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ̃(t) and dγ̃/dt for t [N] -> [N]."""
        w = F.softplus(self.w)
        s = torch.sigmoid(t[:, None] * w + self.b)
        amp = F.softplus(self.a)
        val = F.softplus(self.c) * t + (amp * s).sum(-1)
        der = F.softplus(self.c) + (amp * s * (1 - s) * w).sum(-1)
        return val, der

    def gamma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ(t) and dγ/dt for t [N]."""
        g0, g1 = self._ends()
        val, der = self._raw(t)
        ends, _ = self._raw(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        span = ends[1] - ends[0]
        gbar = (val - ends[0]) / span
        return g0 + (g1 - g0) * (1 - gbar), -(g1 - g0) * der / span

    def abar(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.gamma(t)[0])

    def snr_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """SNR(t) = exp(-γ) and SNR'(t) = -γ'(t) exp(-γ) >= 0."""
        g, dg = self.gamma(t)
        s = torch.exp(-g)
        return s, -dg * s


def image_shape(model: nn.Module) -> tuple[int, ...]:
    """The shape of one input sample (for prototype embeddings, which live in input space): `model.in_shape`."""
    return tuple(int(d) for d in model.in_shape)


class ClassEmbedding(nn.Module):
    """W_Embed [C, d]: u_y = W[y]. `weight` is a buffer (onehot) or a Parameter (learned, prototype)."""

    MODES = ("onehot", "learned", "prototype")

    def __init__(self, mode: str, n_classes: int, embed_dim: int, image_size: int | None = None):
        super().__init__()
        check_choice("embedding", mode, self.MODES)
        self.mode = mode
        if mode == "onehot":
            self.register_buffer("weight", torch.eye(n_classes))
        elif mode == "learned":
            if int(embed_dim) < 1:
                raise ConfigError(f"rule.embed_dim must be >= 1, got {embed_dim}")
            w = torch.empty(n_classes, int(embed_dim))
            nn.init.orthogonal_(w)
            self.weight = nn.Parameter(w)
        else:
            self.weight = nn.Parameter(torch.randn(n_classes, int(image_size)) / math.sqrt(image_size))
            self.register_buffer("ready", torch.zeros(n_classes, dtype=torch.bool))
        self.dim = self.weight.shape[1]

    def forward(self, y: Tensor) -> Tensor:
        return self.weight[y]

    @torch.no_grad()
    def init_prototypes(self, x: Tensor, y: Tensor) -> None:
        """Prototype mode: rows of classes seen for the first time <- the image with the smallest median
        distance to its classmates in this batch (a one-time data-dependent initialisation)."""
        if self.mode != "prototype" or bool(self.ready.all()):
            return
        flat = x.flatten(1).to(self.weight.dtype)
        for c in torch.unique(y).tolist():
            if self.ready[c]:
                continue
            xc = flat[y == c]
            self.weight[c] = xc[torch.cdist(xc, xc).median(dim=1).values.argmin()]
            self.ready[c] = True


def fresh_copy(layers: nn.ModuleList) -> nn.ModuleList:
    """A deep copy of the model's layers with fresh weights: each parameter tensor's entries are randomly
    permuted, so the copy keeps the model's own init distribution (e.g. SpikingDense's gain) but is a
    different draw. Constant tensors (BatchNorm's ones and zeros) are unchanged, as a fresh init would be."""
    new = copy.deepcopy(layers)
    with torch.no_grad():
        for p in new.parameters():
            flat = p.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel())])
    return new


class ImagePath(nn.Module):
    """Input [B, ...] -> encoder (static: x; spiking: the model's encoder, [T, B, ...]) -> layers -> pool
    -> FC -> ReLU: [B, width]. `shape` (optional) reshapes a flat input first (prototype latents)."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, width: int, shape: tuple[int, ...] | None = None):
        super().__init__()
        self.spiking = bool(model.spiking)
        self.encoder = model.encoder if self.spiking else None
        self.layers, self.shape = layers, shape
        self.fc = nn.Linear(model.dims[-1], width)

    def forward(self, x: Tensor) -> Tensor:
        if self.shape is not None:
            x = x.reshape(len(x), *self.shape)
        h = self.encoder(x) if self.encoder is not None else x
        for layer in self.layers:
            h = layer(h)
        return F.relu(self.fc(pool(h, self.spiking)))

    def weight_layers(self) -> dict[str, nn.Module]:
        return {**{f"layers.{j}": m for j, m in enumerate(self.layers)}, "fc": self.fc}


class LatentMLP(nn.Module):
    """z [B, d] -> h = ReLU(FC(z)) -> ReLU(h + FC(h)): [B, width] (FC stack with a skip connection)."""

    def __init__(self, d: int, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, width), nn.Linear(width, width)

    def forward(self, z: Tensor) -> Tensor:
        h = F.relu(self.fc1(z))
        return F.relu(h + self.fc2(h))


class TimeEmbedding(nn.Module):
    """t [B] in [0, 1] -> sinusoidal features (16 frequencies, 1..1000) -> FC -> ReLU: [B, width]."""

    def __init__(self, width: int, n_freq: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), n_freq)))
        self.fc = nn.Linear(2 * n_freq, width)

    def forward(self, t: Tensor) -> Tensor:
        ang = t[:, None] * self.freqs
        return F.relu(self.fc(torch.cat([ang.sin(), ang.cos()], -1)))


class Denoiser(nn.Module):
    """logits [B, C] = fuse(concat(image(x), latent(z)[, time(t)])).

    `features(x)` is the image path alone, so the CT/FM samplers compute it once per input and reuse it
    at every one of their steps (it depends on neither z nor t)."""

    def __init__(self, image: nn.Module, latent: nn.Module, fuse: nn.Module, time: nn.Module | None = None):
        super().__init__()
        self.image, self.latent, self.fuse, self.time = image, latent, fuse, time

    def features(self, x: Tensor) -> Tensor:
        return self.image(x)

    def forward(self, z: Tensor, feats: Tensor, t: Tensor | None = None) -> Tensor:
        parts = [feats, self.latent(z)]
        if self.time is not None:
            parts.append(self.time(t))
        return self.fuse(torch.cat(parts, -1))

    def weight_layers(self) -> dict[str, nn.Module]:
        """Every module holding weights, by name (the statistics' per-layer account of inference)."""
        parts = {**{f"image.{k}": m for k, m in self.image.weight_layers().items()}, "latent": self.latent,
                 "time": self.time, "fuse": self.fuse}
        return {k: m for k, m in parts.items() if m is not None}


# ---- the paper's block (Fig. 6) ----------------------------------------------------------------------------
def _norm(width: int, on: bool) -> nn.Module:
    return nn.BatchNorm1d(width) if on else nn.Identity()


class PaperImagePath(nn.Module):
    """The paper's image module: x [B, c, H, W] -> [conv3x3(ch_i) -> ReLU (-> maxpool2 after the first and
    the last conv) -> dropout] per entry of `channels` -> flatten -> FC(width) -> BN: [B, width].
    `shape` reshapes a flat input first (prototype latents); `norm=False` drops the BatchNorm."""

    def __init__(self, in_shape, channels, width: int, dropout: float, norm: bool = True, shape=None):
        super().__init__()
        if len(in_shape) != 3:
            raise ConfigError(f"rule.block=paper builds the paper's conv blocks and needs image data [C, H, W], "
                              f"got input shape {list(in_shape)}; use rule.block=model")
        c, h, w = (int(v) for v in in_shape)
        mods, last = [], len(channels) - 1
        for i, ch in enumerate(channels):
            mods += [nn.Conv2d(c, int(ch), 3, padding=1), nn.ReLU()]
            if i in (0, last):
                mods.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            mods.append(nn.Dropout(dropout))
            c = int(ch)
        if h < 1 or w < 1:
            raise ConfigError(f"rule.block=paper pools twice: the {in_shape[1]}x{in_shape[2]} input is too small")
        self.conv, self.shape = nn.Sequential(*mods), shape
        self.fc, self.norm = nn.Linear(c * h * w, int(width)), _norm(int(width), norm)

    def forward(self, x: Tensor) -> Tensor:
        if self.shape is not None:
            x = x.reshape(len(x), *self.shape)
        return self.norm(self.fc(self.conv(x).flatten(1)))

    def weight_layers(self) -> dict[str, nn.Module]:
        convs = [m for m in self.conv if isinstance(m, nn.Conv2d)]
        return {**{f"conv.{j}": m for j, m in enumerate(convs)}, "fc": self.fc}


class PaperLatent(nn.Module):
    """z [B, d] -> h = ReLU(BN(FC(z))) -> h + BN(FC(ReLU(BN(FC(h))))): [B, width] (FC stack with a skip)."""

    def __init__(self, d: int, width: int, norm: bool = True):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(d, width), _norm(width, norm), nn.ReLU())
        self.res = nn.Sequential(nn.Linear(width, width), _norm(width, norm), nn.ReLU(), nn.Linear(width, width),
                                 _norm(width, norm))

    def forward(self, z: Tensor) -> Tensor:
        h = self.inp(z)
        return h + self.res(h)


def build_denoiser(kind: str, model: nn.Module, layers: nn.ModuleList, n_classes: int, d: int, width: int,
                   timed: bool, proto_shape=None, channels=(32, 64, 128), dropout: float = 0.2) -> Denoiser:
    """One denoising network û(z, x[, t]) of the given kind (module docstring). `layers`: block=model's image
    encoder (model.layers or a fresh copy); `proto_shape`: prototype embeddings' image shape (the latent path
    then reads z as an image)."""
    k = 3 if timed else 2                     # modules built in forward order: image, latent, time, fuse
    if kind == "model":
        image = ImagePath(model, layers, width)
        latent = ImagePath(model, fresh_copy(model.layers), width, proto_shape) if proto_shape else LatentMLP(d, width)
        time = TimeEmbedding(width) if timed else None
        fuse = nn.Sequential(nn.Linear(k * width, width), nn.ReLU(), nn.Linear(width, n_classes))
        return Denoiser(image, latent, fuse, time)
    norm, half = not timed, max(1, width // 2)
    image = PaperImagePath(model.in_shape, channels, width, dropout, norm)
    latent = (PaperImagePath(proto_shape, channels, width, dropout, norm, proto_shape) if proto_shape
              else PaperLatent(d, width, norm))
    time = TimeEmbedding(width) if timed else None
    fuse = nn.Sequential(nn.Linear(k * width, width), _norm(width, norm), nn.ReLU(), nn.Linear(width, half),
                         _norm(half, norm), nn.ReLU(), nn.Linear(half, n_classes))
    return Denoiser(image, latent, fuse, time)


def fm_path(u: Tensor, z0: Tensor, t: Tensor, eps: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """NoProp-FM: (z_t, target) = (t u_y + (1 - t) z_0 + σ ε, u_y - z_0); u, z0, eps [B, d], t [B, 1]."""
    return t * u + (1 - t) * z0 + sigma * eps, u - z0
