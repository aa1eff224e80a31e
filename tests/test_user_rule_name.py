"""A user's rule selected with rule._target_ is named after its own class, also when it subclasses a shipped rule
(rules/base.py gives every class its own snake_case name unless it declares one): metrics, stats.h5 and tables
never call it by its parent's name."""
import json
import os
import subprocess
import sys
import textwrap

import h5py

from bioplaus.rules.backprop import Backprop

USER_RULES = textwrap.dedent("""
    from bioplaus.rules.backprop import Backprop

    class MyBackprop(Backprop):
        '''Backprop under another name: nothing declared, so it is 'my_backprop'.'''

    class Renamed(Backprop):
        name = "bp_variant"
""")


def test_a_subclass_of_a_shipped_rule_gets_its_own_name():
    ns: dict = {}
    exec(compile(USER_RULES, "my_rules.py", "exec"), ns)
    assert ns["MyBackprop"].name == "my_backprop" and ns["Renamed"].name == "bp_variant"
    assert Backprop.name == "backprop"                                     # the parent keeps its own


def test_a_run_with_rule_target_is_named_after_the_users_class(tmp_path):
    (tmp_path / "my_rules.py").write_text(USER_RULES)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bioplaus.run", "rule._target_=my_rules.MyBackprop", "model=mlp",
                        "model.hidden=[16]", "trainer.epochs=1", "trainer.progress=false", f"hydra.run.dir={out}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "metrics.json").read_text())["rule"] == "my_backprop"
    with h5py.File(out / "stats.h5", "r") as f:
        assert f.attrs["rule"] == "my_backprop"
