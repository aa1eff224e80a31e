"""Fused CPU kernels for leaky_scan's most common case: a C++ loop compiled once on first use.

Covers x [T, ...] float32 with a and b Python floats (IF, LIF), optional v0, spiking with any reset,
detach_reset and surrogate. Forward: one pass over x writing spikes and h; backward: one reverse pass
reading h and grad s, writing grad x (and grad v0). Each element's time loop runs in registers, N is
split over OpenMP threads. Everything else (tensor decays, no threshold, float64, CUDA) is not this
kernel's: `supports(...)` says so and leaky_scan falls back to the torch path.

Built once with torch.utils.cpp_extension.load_inline (needs a C++ compiler and ninja; ~1 min on 2 cores) in
a private temporary directory, then published atomically as `<cache>/<key>/bioplaus_leaky_scan_cpu.so`,
where key hashes the source, torch, Python and platform, and cache is $BIOPLAUS_EXT_DIR or
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
#include <algorithm>
#include <mutex>
#include <vector>
#include <cmath>

constexpr int64_t BLK = 512;   // elements of N per task: the block's state stays in L1 over the time loop

static inline float surrogate(float z, float alpha, int sg) {
  if (sg == 0) { float u = 1.5707963267948966f * alpha * z; return alpha / 2.f / (1.f + u * u); }
  if (sg == 1) { float s = 1.f / (1.f + std::exp(-alpha * z)); return alpha * s * (1.f - s); }
  if (sg == 2) { float d = 1.f + alpha * std::fabs(z); return 1.f / (d * d); }
  float r = 1.f - alpha * std::fabs(z); return r > 0.f ? alpha * r : 0.f;
}

std::vector<torch::Tensor> fwd(torch::Tensor x, double a, double b, torch::Tensor v0, bool has_v0,
                               double th, int64_t reset, torch::Tensor counts, bool count) {
  const int64_t T = x.size(0), N = x.numel() / T;
  auto s = torch::empty_like(x), h = torch::empty_like(x), vT = torch::empty({N}, x.options());
  const float *px = x.data_ptr<float>(); float *ps = s.data_ptr<float>(), *ph = h.data_ptr<float>();
  const float *pv0 = has_v0 ? v0.data_ptr<float>() : nullptr; float *pvT = vT.data_ptr<float>();
  const float fa = a, fb = b, fth = th;
  double *pc = count ? counts.data_ptr<double>() : nullptr;
  std::mutex lock;
  at::parallel_for(0, N, BLK, [&](int64_t begin, int64_t end) {
   std::vector<double> local(count ? T : 0, 0.0);   // this task's spikes per step, added once at the end
   for (int64_t lo = begin; lo < end; lo += BLK) {
    const int64_t hi = std::min(lo + BLK, end);
    float v[BLK];                                  // this block's membranes, kept across the time loop
    for (int64_t j = 0; j < hi - lo; ++j) v[j] = has_v0 ? pv0[lo + j] : 0.f;
    for (int64_t t = 0; t < T; ++t) {              // rows of x are contiguous: the inner loop vectorises
      const float *xr = px + t * N + lo; float *hr = ph + t * N + lo, *sr = ps + t * N + lo;
      float fired = 0.f;
      for (int64_t j = 0; j < hi - lo; ++j) {
        const float hv = fa * v[j] + fb * xr[j];
        const float sp = hv >= fth ? 1.f : 0.f;
        hr[j] = hv; sr[j] = sp; fired += sp;
        v[j] = reset == 0 ? hv * (1.f - sp) : (reset == 1 ? hv - fth * sp : hv);
      }
      if (count) local[t] += fired;
    }
    for (int64_t j = 0; j < hi - lo; ++j) pvT[lo + j] = v[j];
   }
   if (count) { std::lock_guard<std::mutex> g(lock); for (int64_t t = 0; t < T; ++t) pc[t] += local[t]; }
  });
  return {s, h, vT};
}

std::vector<torch::Tensor> bwd(torch::Tensor gs, torch::Tensor gvT, bool has_gvT, torch::Tensor h, double a,
                               double b, double th, int64_t reset, bool detach, int64_t sg, double alpha) {
  const int64_t T = h.size(0), N = h.numel() / T;
  auto gx = torch::empty_like(h), gv0 = torch::empty({N}, h.options());
  const float *pgs = gs.data_ptr<float>(), *ph = h.data_ptr<float>();
  const float *pgvT = has_gvT ? gvT.data_ptr<float>() : nullptr;
  float *pgx = gx.data_ptr<float>(), *pgv0 = gv0.data_ptr<float>();
  const float fa = a, fb = b, fth = th, fal = alpha;
  at::parallel_for(0, N, BLK, [&](int64_t begin, int64_t end) {
   for (int64_t lo = begin; lo < end; lo += BLK) {
    const int64_t hi = std::min(lo + BLK, end);
    float gv[BLK];
    for (int64_t j = 0; j < hi - lo; ++j) gv[j] = has_gvT ? pgvT[lo + j] : 0.f;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float *hr = ph + t * N + lo, *gsr = pgs + t * N + lo; float *gxr = pgx + t * N + lo;
      for (int64_t j = 0; j < hi - lo; ++j) {
        const float hv = hr[j], g = surrogate(hv - fth, fal, (int)sg);
        float dvdh = 1.f;
        if (reset == 0) { dvdh = hv >= fth ? 0.f : 1.f; if (!detach) dvdh -= hv * g; }
        else if (reset == 1 && !detach) { dvdh = 1.f - fth * g; }
        const float gh = gsr[j] * g + gv[j] * dvdh;
        gxr[j] = gh * fb;
        gv[j] = gh * fa;
      }
    }
    for (int64_t j = 0; j < hi - lo; ++j) pgv0[lo + j] = gv[j];
   }
  });
  return {gx, gv0};
}
"""

_MODULE = None
_ERROR: str | None = None
RESET_ID = {"hard": 0, "soft": 1, "none": 2}


NAME = "bioplaus_leaky_scan_cpu"
CFLAGS = ["-O3", "-fopenmp"]


def cache_path() -> Path:
    """Where the built module lives: one file per (source, flags, torch, Python, platform)."""
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


class LeakyScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None):
        T = x.shape[0]
        x2 = x.reshape(T, -1).contiguous()
        v02 = None if v0 is None else v0.detach().expand(x.shape[1:]).reshape(-1).contiguous()
        s, h, vT = _MODULE.fwd(x2, float(a), float(b), v02 if v02 is not None else x2, v02 is not None,
                               float(threshold), RESET_ID[reset],
                               counts if counts is not None else torch.zeros(1, dtype=torch.float64),
                               counts is not None)
        ctx.save_for_backward(h)
        ctx.cfg = (a, b, threshold, reset, detach_reset, spec, alpha, x.shape, None if v0 is None else v0.shape)
        return s.reshape(x.shape), vT.reshape(x.shape[1:])

    @staticmethod
    def backward(ctx, g_s, g_v):
        (h,) = ctx.saved_tensors
        a, b, threshold, reset, detach, spec, alpha, shape, v0_shape = ctx.cfg
        gs = torch.zeros_like(h) if g_s is None else g_s.reshape(h.shape).contiguous().float()
        gvt = None if g_v is None else g_v.reshape(-1).contiguous().float()
        gx, gv0 = _MODULE.bwd(gs, gvt if gvt is not None else gs, gvt is not None, h, float(a), float(b),
                              float(threshold), RESET_ID[reset], bool(detach), spec.id, float(alpha))
        gv0 = gv0.reshape(shape[1:]).sum_to_size(v0_shape) if ctx.needs_input_grad[3] else None
        return gx.reshape(shape), None, None, gv0, None, None, None, None, None, None


def scan_cpu(x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts=None):
    return LeakyScanCPU.apply(x, a, b, v0, threshold, reset, detach_reset, spec, alpha, counts)
