"""The layers stay layers: every import in the package, parsed (not executed), goes downwards or sideways as
DESIGN.md allows, and no module imports itself back through others (no cycle).

    base (bioplaus, errors, atomic) <- kernels <- neurons <- blocks <- models <- rules <- stats <- train <- run
        <- export
    data sits beside neurons/models: it imports only base, and nothing below train imports it. export (NIR and
    NeuroBench interop) sits on top: it may rebuild a run's job (bioplaus.run.build), and nothing imports it.

Module names follow the package-dir mapping of pyproject.toml: kernels/x.py is bioplaus.kernels.x and
rules/x.py is bioplaus.rules.x. Imports inside functions count too.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIRS = {"bioplaus": ROOT / "bioplaus", "bioplaus.kernels": ROOT / "kernels", "bioplaus.rules": ROOT / "rules"}

# layer -> the layers its modules may import (besides their own)
BELOW = {
    "base": set(),
    "kernels": {"base"},
    "neurons": {"base", "kernels"},
    "blocks": {"base", "kernels", "neurons"},
    "models": {"base", "kernels", "neurons", "blocks"},
    "data": {"base"},
    "rules": {"base", "kernels", "neurons", "blocks", "models"},
    "stats": {"base", "kernels", "neurons", "blocks", "models", "rules"},
    "train": {"base", "kernels", "neurons", "blocks", "models", "data", "rules", "stats"},
    "run": {"base", "kernels", "neurons", "blocks", "models", "data", "rules", "stats", "train"},
    "export": {"base", "kernels", "neurons", "blocks", "models", "data", "rules", "stats", "train", "run"},
}
TOP = {"errors": "base", "atomic": "base", "checkpoint": "train", "distributed": "train", "divergence": "train",
       "train": "train", "run": "run", "checks": "run", "rundir": "run", "sweep": "run", "compare": "run",
       "aggregate": "run", "loggers": "run", "runtime": "run"}


def modules() -> dict[str, Path]:
    """Every module of the package by its import name."""
    out = {}
    for prefix, folder in DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "bioplaus" and parts[:1] in (["kernels"], ["rules"]):
                continue
            out[name] = path
    return out


MODULES = modules()


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return "base"
    head = parts[1]
    if head in BELOW:
        return head
    if head in TOP:
        return TOP[head]
    raise AssertionError(f"{name}: no layer declared for bioplaus.{head} (add it to tests/test_layers.py)")


def imports(name: str) -> set[str]:
    """The bioplaus modules `name` imports (an imported name that is a submodule counts as that module)."""
    tree = ast.parse(MODULES[name].read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            # `from pkg import submodule` loads the submodule; `from pkg import name` runs pkg/__init__
            targets = subs + ([node.module] if any(t not in MODULES for t in subs) else [])
        else:
            continue
        for t in targets:
            if t.split(".")[0] != "bioplaus":
                continue
            if t in MODULES:
                out.add(t)
            elif t.rsplit(".", 1)[0] not in MODULES:
                raise AssertionError(f"{name} imports {t}, which resolves to no module of the package")
    return out - {name}


GRAPH = {m: imports(m) for m in MODULES}


def test_the_mapping_is_resolved():
    assert "bioplaus.kernels.leaky_scan" in MODULES and "bioplaus.rules.base" in MODULES
    assert "bioplaus.neurons.step" in MODULES and "bioplaus.stats.report" in MODULES
    assert GRAPH["bioplaus.rules.tess"] >= {"bioplaus.rules.base", "bioplaus.neurons.encoding"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name):
    mine = layer(name)
    for target in sorted(GRAPH[name]):
        theirs = layer(target)
        assert theirs == mine or theirs in BELOW[mine], f"{name} ({mine}) imports {target} ({theirs})"


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])


def test_a_layer_violation_is_caught():
    """The check itself: a model importing data, or a kernel importing a neuron, is refused."""
    assert "data" not in BELOW[layer("bioplaus.models.graph")]
    assert "neurons" not in BELOW[layer("bioplaus.kernels.leaky_scan")]
    assert layer("bioplaus.run") == "run" and layer("bioplaus.stats.cost") == "stats"
    assert "export" not in BELOW["run"] and layer("bioplaus.export.nir_import") == "export"
