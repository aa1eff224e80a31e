"""Atomic file writes: write a temporary file beside the target, then os.replace it into place, so a crash
mid-write leaves either the old file or no file, never a truncated one (used by run outputs, statistics
exports and training checkpoints)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_path(path: str | Path) -> str:
    """A fresh temporary path beside `path`: write it, then `os.replace(tmp, path)`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename it over `path`; on any failure remove tmp and re-raise."""
    tmp = atomic_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
