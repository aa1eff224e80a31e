"""Epoch checkpoints for the trainer: everything a killed run needs to end exactly as an uninterrupted one.

A checkpoint (one file, written atomically: a temporary file in the same directory, then os.replace, so a
crash mid-write leaves the previous checkpoint whole) holds

    epoch            the last finished epoch (resume starts at epoch + 1)
    rule             rule.state_dict(): the model and every net/buffer the rule owns
    optimizer        optimizer.state_dict() (Adam moments, step counts)
    rng              torch's global RNG, Python's and NumPy's, and the trainer's shuffling generator
    steps, history   updates made and the per-epoch rows so far
    meter            the training meter's state: training time and the first update's measured cost

On CPU a resumed run reproduces the uninterrupted run's metrics bit for bit (tests/test_checkpoint.py).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from bioplaus.atomic import atomic_write


def rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "shuffle": gen.get_state()}


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    gen.set_state(state["shuffle"])


def save(path: str | Path, state: dict) -> None:
    """torch.save(state) to path atomically (bioplaus.atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(path, write)


def load(path: str | Path) -> dict | None:
    """The checkpoint at path, or None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
