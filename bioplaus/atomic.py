"""Atomic file writes: write a temporary file beside the target, then os.replace it into place, so a crash
mid-write leaves either the old file or no file, never a truncated one (used by run outputs, statistics
exports and training checkpoints).

Temporary files are named `.<target name>.<8 random characters>.bioplaus.tmp` (`TMP_PATTERN`); a writer killed
with SIGKILL leaves one behind, and the next run in that directory removes it (`clean_stale`, called by
bioplaus.rundir while it holds the directory's lock). Nothing else ever matches the pattern. Files get the
mode a plain `open(path, "w")` would give (0666 less the umask), not mkstemp's private 0600, so a shared results
folder stays readable to the group.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".bioplaus.tmp"
TMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)                            # elsewhere: set and restore (not thread-safe, rarely reached)
    os.umask(old)
    return old


def atomic_path(path: str | Path) -> str:
    """A fresh temporary path beside `path` (matching TMP_PATTERN): write it, then `os.replace(tmp, path)`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return tmp


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename it over `path` with mode 0666 & ~umask; on any failure remove tmp and
    re-raise."""
    tmp = atomic_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_stale(folder: str | Path) -> list[str]:
    """Remove the temporary files a killed writer left in `folder` (only names matching TMP_PATTERN); return
    their names. Call it only while no writer of ours can be active there (bioplaus.rundir holds the lock)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if TMP_PATTERN.match(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(p.name)
    return sorted(removed)
