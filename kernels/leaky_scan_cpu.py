"""Fused CPU kernels for leaky_scan's most common case: a C++ loop compiled once on first use.

Covers x [T, ...] float32 with a and b Python floats (IF, LIF), optional v0, spiking with any reset,
detach_reset and surrogate. N is split into blocks of 64-512 neurons (OpenMP tasks over threads); each
block runs its whole time loop with its state in L1, every inner loop a unit-stride `omp simd` loop.

    forward   read x, write spikes s (and v_T): 8 bytes per element and step
    backward  read x, recompute the block's charges h [T, block] into a cache-resident buffer, then one
              reverse-time pass reading grad s and writing grad x: 12 bytes per element and step

Only x is saved for backward (the input, alive anyway; SpikingJelly saves h instead, which the forward must
then write: 4 bytes more per element). A time-invariant input -- x exactly `base.expand(T, ...)`, as a
direct-encoded layer's current is (`broadcast_base`) -- runs on base itself: read once per step from cache,
its gradient summed over T inside the backward, nothing [T, ...]-sized materialised. Everything else
(tensor decays, no threshold, float64, CUDA) is not this kernel's: `supports(...)` says so and leaky_scan
falls back to the torch path.

Built once with torch.utils.cpp_extension.load_inline (needs a C++ compiler and ninja; ~1 min on 2 cores) in
a private temporary directory, then published atomically as `<cache>/<key>/bioplaus_leaky_scan_cpu.so`,
where key hashes the source, the flags (AVX2 where torch reports AVX2/AVX-512), torch, Python and platform,
and cache is $BIOPLAUS_EXT_DIR or
~/.cache/bioplaus/ext. Later processes import that file directly: no lock files, so a build killed half-way
(a timeout, ^C) can never make later runs wait forever on torch's build lock. If the build fails,
`available()` returns the reason and the torch path is used; BIOPLAUS_NO_CPU_EXT=1 skips it altogether.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

// Neurons per task block: long enough for the hardware prefetchers to stream each row segment, short
// enough that the block's state stays in cache over the time loop: forward, its membranes (32 KB); backward,
// also its recomputed charges h [T, blk] (<= 256 KB, in L2). Rows of x are contiguous in N, so every inner
// loop is a unit-stride SIMD loop.
constexpr int64_t FWD_BLOCK = 8192;
static inline int64_t bwd_block_size(int64_t T) {
  int64_t b = (65536 / std::max<int64_t>(T, 1)) & ~int64_t(63);
  return std::min<int64_t>(8192, std::max<int64_t>(256, b));
}

template <int SG> static inline float surrogate(float z, float alpha) {
  if constexpr (SG == 0) { float u = 1.5707963267948966f * alpha * z; return alpha / 2.f / (1.f + u * u); }
  if constexpr (SG == 1) { float s = 1.f / (1.f + std::exp(-alpha * z)); return alpha * s * (1.f - s); }
  if constexpr (SG == 2) { float d = 1.f + alpha * std::fabs(z); return 1.f / (d * d); }
  float r = 1.f - alpha * std::fabs(z); return r > 0.f ? alpha * r : 0.f;
}

template <int RESET> static inline float after_reset(float h, float s, float th) {
  if constexpr (RESET == 0) return h * (1.f - s);
  if constexpr (RESET == 1) return h - th * s;
  return h;
}

// Forward of one block [lo, lo + n): x row t at x + t * xs (xs = 0: the same input every step).
template <int RESET>
static void fwd_block(const float* __restrict x, int64_t xs, float* __restrict s, float* __restrict v, int64_t T,
                      int64_t N, int64_t lo, int64_t n, float a, float b, float th, double* fired) {
  for (int64_t t = 0; t < T; ++t) {
    const float* __restrict xr = x + t * xs + lo;
    float* __restrict sr = s + t * N + lo;
    float f = 0.f;
#pragma omp simd reduction(+ : f)
    for (int64_t j = 0; j < n; ++j) {
      const float hv = a * v[j] + b * xr[j];
      const float sp = hv >= th ? 1.f : 0.f;
      sr[j] = sp;
      f += sp;
      v[j] = after_reset<RESET>(hv, sp, th);
    }
    if (fired) fired[t] += f;
  }
}

// Backward of one block: recompute h [T, n] from x (forward pass into hb), then one reverse-time pass.
// SUMX: x is one step broadcast over T, its gradient the sum over t (written to gx [N]).
template <int RESET, int SG, bool DETACH, bool SUMX>
static void bwd_block(const float* __restrict x, int64_t xs, const float* __restrict gs, float* __restrict gx,
                      float* __restrict v, float* __restrict gv, float* __restrict hb, int64_t T, int64_t N,
                      int64_t lo, int64_t n, float a, float b, float th, float alpha) {
  for (int64_t t = 0; t < T; ++t) {
    const float* __restrict xr = x + t * xs + lo;
    float* __restrict hr = hb + t * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float hv = a * v[j] + b * xr[j];
      hr[j] = hv;
      v[j] = after_reset<RESET>(hv, hv >= th ? 1.f : 0.f, th);
    }
  }
  float* __restrict acc = hb + T * n;                // SUMX: the gradient summed over t
  if constexpr (SUMX) std::fill(acc, acc + n, 0.f);
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* __restrict hr = hb + t * n;
    const float* __restrict gsr = gs + t * N + lo;
    float* __restrict gxr = SUMX ? gx : gx + t * N + lo;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float hv = hr[j], g = surrogate<SG>(hv - th, alpha);
      float dvdh = 1.f;
      if constexpr (RESET == 0) { dvdh = hv >= th ? 0.f : 1.f; if constexpr (!DETACH) dvdh -= hv * g; }
      if constexpr (RESET == 1 && !DETACH) dvdh = 1.f - th * g;
      const float gh = gsr[j] * g + gv[j] * dvdh;
      if constexpr (SUMX) acc[j] += gh * b; else gxr[j] = gh * b;
      gv[j] = gh * a;
    }
  }
  if constexpr (SUMX) std::copy(acc, acc + n, gx + lo);
}

std::vector<torch::Tensor> fwd(torch::Tensor x, int64_t T, bool bcast, double a, double b, torch::Tensor v0,
                               bool has_v0, double th, int64_t reset, torch::Tensor counts, bool count) {
  // x [T, N], or with bcast x [N]: one step repeated T times
  const int64_t N = bcast ? x.numel() : x.numel() / T, xs = bcast ? 0 : N, blk = FWD_BLOCK;
  auto s = torch::empty({T, N}, x.options()), vT = torch::empty({N}, x.options());
  const float *px = x.data_ptr<float>(), *pv0 = has_v0 ? v0.data_ptr<float>() : nullptr;
  float *ps = s.data_ptr<float>(), *pvT = vT.data_ptr<float>();
  const float fa = a, fb = b, fth = th;
  double* pc = count ? counts.data_ptr<double>() : nullptr;
  using Fn = void (*)(const float*, int64_t, float*, float*, int64_t, int64_t, int64_t, int64_t, float, float,
                      float, double*);
  static const Fn table[3] = {fwd_block<0>, fwd_block<1>, fwd_block<2>};
  const Fn run = table[reset];
  std::mutex lock;
  at::parallel_for(0, N, blk, [&](int64_t begin, int64_t end) {
    std::vector<double> local(count ? T : 0, 0.0);   // this task's spikes per step, added once at the end
    for (int64_t lo = begin; lo < end; lo += blk) {
      const int64_t n = std::min(blk, end - lo);
      float* v = pvT + lo;                           // the block's membranes live in the output v_T
      for (int64_t j = 0; j < n; ++j) v[j] = has_v0 ? pv0[lo + j] : 0.f;
      run(px, xs, ps, v, T, N, lo, n, fa, fb, fth, count ? local.data() : nullptr);
    }
    if (count) { std::lock_guard<std::mutex> g(lock); for (int64_t t = 0; t < T; ++t) pc[t] += local[t]; }
  });
  return {s, vT};
}

using BwdFn = void (*)(const float*, int64_t, const float*, float*, float*, float*, float*, int64_t, int64_t,
                       int64_t, int64_t, float, float, float, float);

template <int RESET, int SG> static BwdFn pick(bool detach, bool sumx) {
  if (detach) return sumx ? bwd_block<RESET, SG, true, true> : bwd_block<RESET, SG, true, false>;
  return sumx ? bwd_block<RESET, SG, false, true> : bwd_block<RESET, SG, false, false>;
}

template <int RESET> static BwdFn pick_sg(int64_t sg, bool detach, bool sumx) {
  switch (sg) {
    case 0: return pick<RESET, 0>(detach, sumx);
    case 1: return pick<RESET, 1>(detach, sumx);
    case 2: return pick<RESET, 2>(detach, sumx);
    default: return pick<RESET, 3>(detach, sumx);
  }
}

std::vector<torch::Tensor> bwd(torch::Tensor gs, torch::Tensor gvT, bool has_gvT, torch::Tensor x, bool bcast,
                               torch::Tensor v0, bool has_v0, double a, double b, double th, int64_t reset,
                               bool detach, int64_t sg, double alpha) {
  // bcast: x [N] broadcast over T, its gradient the sum over t
  const int64_t T = gs.size(0), N = gs.numel() / T, blk = bwd_block_size(T);
  const int64_t xs = bcast ? 0 : N;
  auto gx = bcast ? torch::empty({N}, gs.options()) : torch::empty({T, N}, gs.options());
  auto gv0 = torch::empty({N}, gs.options());
  const float *pgs = gs.data_ptr<float>(), *px = x.data_ptr<float>();
  const float *pgvT = has_gvT ? gvT.data_ptr<float>() : nullptr, *pv0 = has_v0 ? v0.data_ptr<float>() : nullptr;
  float *pgx = gx.data_ptr<float>(), *pgv0 = gv0.data_ptr<float>();
  const float fa = a, fb = b, fth = th, fal = alpha;
  const BwdFn run = reset == 0 ? pick_sg<0>(sg, detach, bcast)
                  : reset == 1 ? pick_sg<1>(sg, detach, bcast) : pick_sg<2>(sg, detach, bcast);
  at::parallel_for(0, N, blk, [&](int64_t begin, int64_t end) {
    std::vector<float> buf((T + 2) * blk);           // this task's charges h [T, blk], membranes, sum
    float *hb = buf.data(), *v = hb + (T + 1) * blk;
    for (int64_t lo = begin; lo < end; lo += blk) {
      const int64_t n = std::min(blk, end - lo);
      float* gv = pgv0 + lo;                         // the block's membrane gradient lives in the output
      for (int64_t j = 0; j < n; ++j) { v[j] = has_v0 ? pv0[lo + j] : 0.f; gv[j] = has_gvT ? pgvT[lo + j] : 0.f; }
      run(px, xs, pgs, pgx, v, gv, hb, T, N, lo, n, fa, fb, fth, fal);
    }
  });
  return {gx, gv0};
}
"""

_MODULE = None
_ERROR: str | None = None
RESET_ID = {"hard": 0, "soft": 1, "none": 2}


NAME = "bioplaus_leaky_scan_cpu"


def _cflags() -> list[str]:
    """-O3 and OpenMP (for `omp simd`); no trapping math (as torch's own build: without it the compiler keeps a
    branch per spike instead of a SIMD compare, ~10x slower); IEEE rounding of every product and sum (no FMA
    contraction: the same numbers as the torch reference); AVX2 where torch runs its AVX2/AVX-512 kernels."""
    simd = ["-mavx2", "-mfma"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else []
    return ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off", *simd]


CFLAGS = _cflags()


def cache_path() -> Path:
    """Where the built module lives: one file per (source, flags incl. the SIMD level, torch, Python, platform)."""
    key = hashlib.sha256("|".join([_SOURCE, *CFLAGS, torch.__version__, sys.version, platform.machine()])
                         .encode()).hexdigest()[:16]
    root = Path(os.environ.get("BIOPLAUS_EXT_DIR") or Path.home() / ".cache" / "bioplaus" / "ext")
    return root / key / f"{NAME}.so"


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(path: Path):
    """Compile into a fresh private directory next to the cache entry, then os.replace the .so into place."""
    from loguru import logger
    from torch.utils.cpp_extension import load_inline

    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info(f"building the fused CPU LIF kernel once (about a minute) into {path.parent}")
    tmp = tempfile.mkdtemp(prefix="build-", dir=path.parent)
    try:
        module = load_inline(NAME, cpp_sources=_SOURCE, functions=["fwd", "bwd"], extra_cflags=CFLAGS,
                             extra_ldflags=["-fopenmp"], build_directory=tmp, verbose=False)
        os.replace(Path(tmp) / f"{NAME}.so", path)       # atomic: readers see no file or a whole file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return module


def _load():
    global _MODULE, _ERROR
    if _MODULE is None and _ERROR is None:
        try:
            path = cache_path()
            _MODULE = _import(path) if path.is_file() else _build(path)
        except Exception as e:  # noqa: BLE001 - any build failure means: use the torch path
            _ERROR = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return _MODULE


def available() -> str | None:
    """None if the fused CPU kernel is built (building it on first call), else why not."""
    if os.environ.get("BIOPLAUS_NO_CPU_EXT") == "1":
        return "disabled by BIOPLAUS_NO_CPU_EXT=1"
    _load()
    return _ERROR


def supports(x: Tensor, a, b, v0, threshold) -> bool:
    """The case this kernel covers: CPU float32 spikes with float a, b."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and threshold is not None
            and not isinstance(a, Tensor) and not isinstance(b, Tensor) and math.isfinite(a) and math.isfinite(b)
            and (v0 is None or v0.dtype == torch.float32))


def broadcast_base(x: Tensor) -> Tensor | None:
    """The tensor base [...] when x [T, ...] (T > 1) is exactly base broadcast over T (`base.expand(T, ...)`,
    a view with stride 0 along T: a time-invariant input, e.g. a direct-encoded layer's current), else None.
    Running the kernel on base keeps x unmaterialised and sends the gradient (summed over T) straight to base."""
    base = x._base
    if base is None or x.dim() < 2 or x.shape[0] < 2 or x.stride(0) != 0:
        return None
    same = base.shape == x.shape[1:] and base.stride() == x.stride()[1:] and base.storage_offset() == x.storage_offset()
    return base if same else None


class LeakyScanCPU(torch.autograd.Function):
    """x [T, ...], or with `steps` = T one step x [...] repeated at every step. Saves x (not h): the backward
    recomputes each block's charges h in cache, so the forward writes only the spikes."""

    @staticmethod
    def forward(ctx, x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None, steps=None):
        bcast = steps is not None
        T, shape = (steps, x.shape) if bcast else (x.shape[0], x.shape[1:])
        x2 = x.reshape(-1 if bcast else (T, -1)).contiguous()
        v02 = None if v0 is None else v0.detach().expand(shape).reshape(-1).contiguous()
        s, vT = _MODULE.fwd(x2, T, bcast, float(a), float(b), v02 if v02 is not None else x2, v02 is not None,
                            float(threshold), RESET_ID[reset],
                            counts if counts is not None else torch.zeros(1, dtype=torch.float64), counts is not None)
        ctx.save_for_backward(x2, v02)
        ctx.cfg = (a, b, threshold, reset, detach_reset, spec, alpha, T, x.shape, None if v0 is None else v0.shape,
                   bcast)
        return s.reshape(T, *shape), vT.reshape(shape)

    @staticmethod
    def backward(ctx, g_s, g_v):
        x2, v02 = ctx.saved_tensors
        a, b, threshold, reset, detach, spec, alpha, T, x_shape, v0_shape, bcast = ctx.cfg
        N = x2.numel() if bcast else x2.shape[1]
        gs = x2.new_zeros(T, N) if g_s is None else g_s.reshape(T, N).contiguous().float()
        gvt = None if g_v is None else g_v.reshape(-1).contiguous().float()
        gx, gv0 = _MODULE.bwd(gs, gvt if gvt is not None else gs, gvt is not None, x2, bcast,
                              v02 if v02 is not None else x2, v02 is not None, float(a), float(b), float(threshold),
                              RESET_ID[reset], bool(detach), spec.id, float(alpha))
        gv0 = gv0.reshape(x_shape[0 if bcast else 1:]).sum_to_size(v0_shape) if ctx.needs_input_grad[3] else None
        return gx.reshape(x_shape), None, None, gv0, None, None, None, None, None, None, None


def scan_cpu(x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None):
    """leaky_scan's "cpu" backend; a broadcast x (see `broadcast_base`) runs on its one step."""
    base = broadcast_base(x)
    if base is not None:
        return LeakyScanCPU.apply(base, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts, x.shape[0])
    return LeakyScanCPU.apply(x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts)
