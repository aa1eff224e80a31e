"""The wheel `pip wheel .` builds holds every module of bioplaus, bioplaus.kernels, bioplaus.rules and
every config, and bioplaus-run works from the unpacked wheel alone (not only from an editable install)."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"bioplaus": "bioplaus", "kernels": "bioplaus/kernels", "rules": "bioplaus/rules",
           "configs": "bioplaus/configs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("bioplaus-*.whl")
    return path


def test_wheel_contains_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = []
    for src, dst in MAPPING.items():
        for f in (ROOT / src).rglob("*"):
            if f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                expected.append(f"{dst}/{f.relative_to(ROOT / src).as_posix()}")
    assert len(expected) > 30
    missing = [e for e in expected if e not in names]
    assert not missing, f"absent from the wheel: {missing}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "bioplaus-run = bioplaus.run:cli" in text and "bioplaus-compare = bioplaus.compare:cli" in text


def test_run_from_the_unpacked_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import bioplaus, sys; print(bioplaus.__file__, file=sys.stderr); "
            "from bioplaus.run import cli; sys.argv=['bioplaus-run','trainer.epochs=1','trainer.progress=false',"
            f"'hydra.run.dir={tmp_path / 'run'}']; cli()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    assert str(site) in r.stderr.splitlines()[0], "bioplaus was not imported from the wheel"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout
