"""mkdocs hook: give mkdocstrings the package as it installs.

`pyproject.toml` maps the folders kernels/ and rules/ into the package (bioplaus.kernels, bioplaus.rules);
griffe, which reads the sources for the API reference, only sees folders. Before the build, this hook lays the
installed layout out as symlinks in a temporary folder (removed at exit) and points mkdocstrings there.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

MAPPED = {"kernels": "kernels", "rules": "rules", "configs": "configs"}


@event_priority(100)
def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    tree = Path(tempfile.mkdtemp(prefix="bioplaus-docs-"))
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    pkg = tree / "bioplaus"
    pkg.mkdir()
    for item in (root / "bioplaus").iterdir():
        if item.name != "__pycache__":
            (pkg / item.name).symlink_to(item)
    for name, folder in MAPPED.items():
        (pkg / name).symlink_to(root / folder)
    config.plugins["mkdocstrings"].config["handlers"]["python"]["paths"] = [str(tree)]
    return config
