"""The top-level values of a composed run config, checked before anything is built or trained.

Each check returns the value in its working type or raises one ConfigError naming the key and the fix:
`seed` (an integer), `device` (auto, cpu, cuda, cuda:N or mps, and present on this machine) and the `stats`
node (enabled, n_samples, batch_size; the energy model itself is bioplaus.stats.energy's to check). The
trainer's values are TrainConfig's (bioplaus.train), the data's and the model's their constructors'.
"""
from __future__ import annotations

import torch

from bioplaus.errors import ConfigError


def integer(value, key: str, low: int | None = None, allow_none: bool = False) -> int | None:
    """`value` as an int (>= low), None where allowed; bools, strings and fractions are refused."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise ConfigError(f"{key} must be an integer{' or null' if allow_none else ''}, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{key} must be >= {low}{' (or null)' if allow_none else ''}, got {value}")
    return int(value)


def seed(value) -> int:
    return integer(value, "seed")


def device(spec) -> torch.device:
    """The torch device for `device=...`: auto = cuda when available, else cpu; a device this machine lacks
    (cuda without a CUDA GPU, cuda:3 on a one-GPU machine, mps off a Mac) is refused."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(spec))
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={spec} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec} but this machine has no usable CUDA GPU (torch.cuda.is_available() "
                              "is False): use device=auto or device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec} but this machine has {torch.cuda.device_count()} CUDA GPU(s): "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device={spec} but MPS is not available here: use device=auto or device=cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"device={spec} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev


def stats(node) -> None:
    """stats.enabled (true/false), stats.n_samples (null = the whole test set, else >= 1), stats.batch_size."""
    if not isinstance(node.get("enabled", True), bool):
        raise ConfigError(f"stats.enabled must be true or false, got {node.get('enabled')!r}")
    integer(node.get("n_samples"), "stats.n_samples", low=1, allow_none=True)
    integer(node.get("batch_size", 500), "stats.batch_size", low=1)
