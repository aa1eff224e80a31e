"""The README stays true: its rule example runs as written (in-process contract + from the CLI), its
set-up commands are what .ci/run runs, every experiment/config it names exists, and its layout lists every
module of the package and nothing else."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from bioplaus.data import digits
from bioplaus.models import SpikingMLP
from bioplaus.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def rule_example() -> str:
    section = README.split("Write your own rule", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_rule_example_is_about_twenty_lines_and_learns(tmp_path):
    code = rule_example()
    assert 15 <= len([ln for ln in code.splitlines() if ln.strip()]) <= 30
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    torch.manual_seed(0)
    model = SpikingMLP([1, 8, 8], 10)
    rule = ns["LocalClassifiers"](model)
    first = model.layers[0].linear.weight.clone()
    metrics = train(rule, digits(), TrainConfig(epochs=10, progress=False))
    assert metrics["test_acc"] >= 0.9
    assert not torch.equal(first, model.layers[0].linear.weight)           # the hidden layers learned
    assert {"aux.0.weight", "model.head.linear.weight"} <= set(rule.state_dict())


def test_rule_example_runs_from_the_cli(tmp_path):
    (tmp_path / "my_rules.py").write_text(rule_example())
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bioplaus.run", "rule._target_=my_rules.LocalClassifiers",
                        "trainer.epochs=10", "trainer.progress=false", f"hydra.run.dir={out}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["rule"] == "local_classifiers" and m["test_acc"] >= 0.9


def test_ci_runs_the_readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
    main_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "bioplaus-run -m experiment=quickstart" in main_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    for step in [s.strip() for s in (main_cmd + " && " + test_cmd).split("&&")]:
        if step.startswith("bioplaus-run"):
            continue                                            # CI runs the tests, not the main job
        assert step in ci, f".ci/run does not run the README step: {step}"


def test_named_configs_exist():
    for group, name in re.findall(r"\b(experiment|rule|model|data|stats)=([a-z_0-9]+)\b", README):
        assert (ROOT / "configs" / group / f"{name}.yaml").exists(), f"README names {group}={name}"


def test_layout_lists_every_module_and_only_existing_ones():
    """Each `dir/  {a, b, ...}` line of the layout block names exactly the modules in that folder."""
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    listed = {}
    for folder, names in re.findall(r"^(\S+/)\s+\{([^}]*)\}", block, re.MULTILINE | re.DOTALL):
        listed[folder] = {n.strip() for n in names.replace("\n", " ").split(",") if n.strip()}
    assert set(listed) >= {"bioplaus/", "bioplaus/neurons/", "bioplaus/data/", "bioplaus/models/",
                           "bioplaus/blocks/", "bioplaus/stats/", "kernels/", "rules/"}
    for folder, names in listed.items():
        present = {p.stem for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}
        assert names == present, f"{folder}: README lists {sorted(names - present)} that do not exist and omits " \
                                 f"{sorted(present - names)}"
    packages = {p.parent.relative_to(ROOT).as_posix() + "/" for p in (ROOT / "bioplaus").rglob("__init__.py")}
    assert packages - {"bioplaus/configs/"} <= set(listed), "a package of bioplaus is missing from the layout"


def test_readme_stays_short():
    assert len(README.splitlines()) <= 260


def test_every_results_page_is_on_the_docs_site():
    """Each experiments/results/*.md has its docs page (a snippet include) and a nav entry, so a link between
    results pages never breaks `mkdocs build --strict`."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "experiments" / "results").glob("*.md")):
        if page.name == "README.md":
            continue
        doc = ROOT / "docs" / "results" / page.name
        assert doc.is_file() and f'experiments/results/{page.name}' in doc.read_text(), page.name
        assert f"results/{page.name}" in nav, page.name
