"""experiments/tables.py: a results page's tables are generated from sweep dirs between markers; hand-written text
around them survives, a second run replaces the block instead of adding one, and the table states ties."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sweep(folder: Path, accs: dict[str, list[float]]) -> None:
    (folder).mkdir(parents=True)
    (folder / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - +arm=bp_mlp,readout_only_mlp\n"
                                          "    - seed=0,1,2\n")
    for rule, values in accs.items():
        for seed, acc in enumerate(values):
            d = folder / f"{rule}_{seed}"
            d.mkdir()
            rec = {"data": "digits", "model": "mlp", "rule": rule, "rule_config": rule, "variant": "tuned",
                   "seed": seed, "test_acc": acc, "train_acc": acc, "train_time_s": 2.0, "peak_mem_mb": 1.0,
                   "epochs": 30, "params": 85002, "trained_params": 85002, "versions": {"torch": "2.13.0"},
                   "device": "cpu", "threads": 1, "config": {"seed": seed, "model": {}, "data": {}, "trainer": {}},
                   "overrides": [f"+arm={rule}", f"seed={seed}"]}
            (d / "metrics.json").write_text(json.dumps(rec))


def test_tables_replace_their_block_and_keep_the_prose(tmp_path):
    page = tmp_path / "rules.md"
    page.write_text("# Rules\n\nHand-written analysis.\n")
    _sweep(tmp_path / "sweep", {"backprop": [0.97, 0.972, 0.968], "fa": [0.969, 0.971, 0.966],
                                "readout_only": [0.93, 0.925, 0.935]})
    cmd = [sys.executable, str(ROOT / "experiments" / "tables.py"), str(page), f"digits={tmp_path / 'sweep'}"]
    for _ in range(2):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert text.startswith("# Rules\n\nHand-written analysis.\n") and text.count("BEGIN GENERATED digits") == 1
    assert "bioplaus-run -m +arm=bp_mlp,readout_only_mlp seed=0,1,2" in text
    assert "| backprop | tuned | mlp | 3 | **0.9700** ± 0.0020 [0.9650, 0.9750] |" in text
    assert "rank 1: backprop (tuned), fa (tuned); rank 3: readout_only (tuned)" in text
    bad = subprocess.run(cmd[:2] + [str(page), f"digits={tmp_path / 'nowhere'}"], capture_output=True, text=True)
    assert bad.returncode != 0 and "is not a directory" in bad.stderr and page.read_text() == text
