"""python -m degflow.quickstart: both stages, an LR set, a strip and an evaluation in one command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from degflow.cli.quickstart import budget_overrides, demo_photos, quickstart

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tiny_quickstart_writes_the_runs_the_lr_set_the_strip_and_the_metrics_it_promises(tmp_path, capsys):
    paths = quickstart(tmp_path, budget="tiny", scales=[1.5, 3.3], device="cpu")
    for stage in ("rae", "lfm"):
        run = tmp_path / stage
        assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.json").is_file()
        assert "loss=" in (run / "train.log").read_text() and (run / "loss_curve.png").is_file()
    for name in ("chelsea", "motorcycle_right"):
        for s in ("x1.5", "x3.3"):
            assert (tmp_path / "dataset" / "LR" / s / f"{name}.png").read_bytes().startswith(PNG)
            assert (tmp_path / "dataset" / "LR_hrsize" / s / f"{name}.png").is_file()
    assert (tmp_path / "dataset" / "manifest.jsonl").is_file()
    assert paths["strip"].read_bytes().startswith(PNG)
    table = paths["metrics table"].read_text()
    assert "bicubic" in table and "procedural" in table
    assert paths["metric vs scale"].read_bytes().startswith(PNG)
    printed = capsys.readouterr().out
    assert f"Everything is in {tmp_path}/" in printed
    assert all(str(p) in printed for p in paths.values())


def test_quickstart_refuses_an_unknown_budget_and_photos_that_do_not_ship(tmp_path):
    with pytest.raises(ValueError, match=r"budget='huge' is not one of \['demo', 'tiny'\]"):
        budget_overrides("huge")
    with pytest.raises(ValueError, match=r"photos=.*not_a_photo.png"):
        demo_photos(["chelsea.png", "not_a_photo.png"])
    assert [p.name for p in demo_photos(["chelsea.png"])] == ["chelsea.png"]


def test_quickstart_help_names_its_settings_and_outputs():
    proc = subprocess.run([sys.executable, "-m", "degflow.cli.quickstart", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0
    for expected in ("budget=tiny", "strip.png", "eval.md", "lpips_backbone_weights", "scales:"):
        assert expected in proc.stdout, expected
