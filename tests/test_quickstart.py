"""python -m degflow.quickstart: the shipped model (or a freshly trained one), an LR set, the real-vs-generated
picture, the degradation per scale and an evaluation in one command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from degflow.cli.quickstart import budget_overrides, check_quickstart, demo_photos, quickstart
from degflow.infra.checkpoint import load_checkpoint
from degflow.infra.digests import file_digest

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def offline_without_lpips(tmp_path, monkeypatch):
    monkeypatch.delenv("DEGFLOW_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setenv("DEGFLOW_LPIPS_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.mark.slow
def test_the_default_quickstart_uses_the_shipped_model_offline_and_skips_lpips_with_a_note(
        tmp_path, capsys, offline_without_lpips, one_torch_thread):
    out = tmp_path / "qs"
    paths = quickstart(out, scales=[2, 4], device="cpu")
    assert paths["model"] == REPO / "degflow" / "assets" / "demo" / "model.pt"
    assert not (out / "rae").exists() and not (out / "lfm").exists()          # nothing trained
    for name in ("chelsea", "motorcycle_right"):
        for s in ("x2", "x4"):
            assert (out / "dataset" / "LR" / s / f"{name}.png").read_bytes().startswith(PNG)
    assert paths["real vs generated"].read_bytes().startswith(PNG)
    table = paths["degradation"].read_text()
    assert "| x2 |" in table and "| x4 |" in table and "detail kept" in table
    evaluation = paths["metrics table"].read_text()
    assert "bicubic" in evaluation and "## LPIPS" not in evaluation and "not measured: LPIPS" in evaluation
    printed = capsys.readouterr().out
    assert "no LPIPS column" in printed and "DEGFLOW_LPIPS_WEIGHTS" in printed
    assert f"Everything is in {out}/" in printed


@pytest.mark.slow
def test_train_true_at_the_tiny_budget_trains_both_stages_and_writes_a_reproducible_weights_only_model(
        tmp_path, capsys, offline_without_lpips, one_torch_thread):
    from degflow.cli.quickstart import train_demo_model

    paths = quickstart(tmp_path / "a", train=True, budget="tiny", scales=[1.5, 3.3], device="cpu")
    for stage in ("rae", "lfm"):
        run = tmp_path / "a" / stage
        assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.json").is_file()
    for stage in ("rae", "lfm"):   # the loss curve's validation panel has more than one point
        history = (tmp_path / "a" / stage / "history.jsonl").read_text().splitlines()
        assert sum('"val/x2/psnr_y"' in line for line in history) >= 2, stage
    model = tmp_path / "a" / "model.pt"
    assert paths["model"] == model
    slim = load_checkpoint(model, kind="lfm")
    assert set(slim["models"]) == {"rae", "velocity"} and "optimizer" not in slim and "config" not in slim
    printed = capsys.readouterr().out
    assert f"digest {file_digest(model).sha256}" in printed
    assert "procedural" in paths["metrics table"].read_text()
    # the same command elsewhere gives the same file, bit for bit (one thread, same seed)
    again = train_demo_model(tmp_path / "b", budget="tiny", device="cpu")
    assert file_digest(again).sha256 == file_digest(model).sha256


def test_quickstart_checks_its_prerequisites_before_any_work(tmp_path, offline_without_lpips):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"out='.*file/qs' cannot be created"):
        check_quickstart(tmp_path / "file" / "qs", "demo", False, "demo", "cpu")
    with pytest.raises(ValueError, match="ckpt='.*missing.pt': no such checkpoint file"):
        check_quickstart(tmp_path / "qs", str(tmp_path / "missing.pt"), False, "demo", "cpu")
    check_quickstart(tmp_path / "qs", "demo", True, "demo", "cpu")   # the recipe trains without LPIPS weights
    assert not (tmp_path / "qs").exists()


def test_an_lr_set_of_another_model_in_out_is_written_again_not_refused(tmp_path):
    from degflow.cli.quickstart import replace_other_models_dataset
    from degflow.infra.digests import checked_record_text

    dataset = tmp_path / "dataset"
    assert not replace_other_models_dataset(dataset, "a" * 64)              # nothing there yet
    dataset.mkdir()
    (dataset / "synthesis.json").write_text(checked_record_text({"checkpoint_sha256": "a" * 64}))
    (dataset / "manifest.jsonl").write_text("")
    assert not replace_other_models_dataset(dataset, "a" * 64) and dataset.is_dir()   # the same model resumes
    assert replace_other_models_dataset(dataset, "b" * 64) and not dataset.exists()   # another model: written again
    dataset.mkdir()
    (dataset / "synthesis.json").write_text("{not json")
    assert replace_other_models_dataset(dataset, "a" * 64) and not dataset.exists()   # unreadable record


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
    for expected in ("train=true", "budget=tiny", "strip.png", "degradation.md", "eval.md", "lpips_backbone_weights",
                     "scales:"):
        assert expected in proc.stdout, expected
