"""What a training run tells its user: train.log, loss curve, labelled strips, plain lines
when stdout is not a terminal, and a --help that explains train.py's own settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from degflow.infra import console
from degflow.viz.plots import plot_loss_curve
from degflow.training import train
from degflow.viz.strips import labelled_strip

from test_train import config

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY_CLI = ["logger=none", "device=cpu", "stage.batch_size=2", "stage.warmup_steps=1", "stage.log_every=2",
            "data.crop_size=32", "data.val_max_size=64", "data.samples_per_epoch=8", "eval.max_images=1",
            "model.rae.widths=[8,8,16,16]", "data.max_side=160", "data.val_scales=[1,2,3,4]",
            "stage.steps=4", "stage.val_every=4"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DEGFLOW_PROGRESS": ""}


@pytest.mark.slow
def test_train_log_holds_the_losses_the_validation_summary_and_where_the_results_are(tmp_path, capsys):
    run = tmp_path / "rae"
    train(config([f"output_root={tmp_path}", "stage.steps=4", "stage.val_every=4", "stage.log_every=2"]), run)
    log = (run / "train.log").read_text()
    assert "[rae step 2/4] loss=" in log and "[rae step 4/4] loss=" in log
    assert "[rae step 4/4] validation: recon Y-PSNR x1:" in log
    assert "validating on 1 image(s)" in log
    assert "checkpoint:  checkpoints/last.pt" in log and "loss curve:  loss_curve.png" in log
    # outside Hydra no console handler shows the log: the run prints where its results are
    assert f"rae run finished. Results in {run}/" in capsys.readouterr().out
    assert (run / "loss_curve.png").read_bytes().startswith(PNG)
    strips = sorted((run / "images").glob("val_strip0_*.png"))
    assert strips and strips[-1].read_bytes().startswith(PNG)


@pytest.mark.slow
def test_train_py_with_redirected_output_writes_plain_lines_and_one_train_log(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "stage=rae", f"output_root={tmp_path}", *TINY_CLI],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "\r" not in out                                  # no progress bar redrawn in place
    assert "[rae step 2/4] loss=" in proc.stdout and "validation: recon Y-PSNR" in proc.stdout
    assert "rae run finished. Results in" in proc.stdout
    (log,) = (tmp_path / "rae").glob("*/train.log")
    text = log.read_text()
    assert text.count("[rae step 2/4] loss=") == 1          # Hydra's file handler, not a second copy
    assert text.count("validation: recon Y-PSNR") == 1
    assert (log.parent / "loss_curve.png").is_file()


def test_progress_bars_are_drawn_only_on_a_terminal(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    monkeypatch.delenv("DEGFLOW_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert not console.interactive() and console.progress_bar(total=3).disable
    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert console.interactive() and not console.interactive(requested=False)
    monkeypatch.setenv("DEGFLOW_PROGRESS", "0")
    assert not console.interactive()
    monkeypatch.setattr(sys, "stderr", Stream(False))
    monkeypatch.setenv("DEGFLOW_PROGRESS", "1")
    assert console.interactive()


def test_train_help_explains_its_own_settings_with_examples():
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    text = proc.stdout
    for expected in ("python train.py stage=rae", "python train.py stage=lfm", "Examples:", "stage.steps",
                     "rae_ckpt", "output_root", "solver=rk4|euler|midpoint|dopri5", "train.log",
                     "python -m degflow.quickstart", "data=demo|paired|realsr"):
        assert expected in text, expected
    assert "Powered by Hydra" not in text and "== Settings" not in text   # not Hydra's page, no raw dump


def test_loss_curve_is_drawn_from_history_rows_and_skipped_without_losses(tmp_path):
    rows = [{"step": s, "train/loss": 1.0 / s, "train/mse": 0.5 / s, "train/lr": 1e-3} for s in (1, 2, 3)]
    rows.append({"step": 3, "val/x2/psnr_y": 30.0, "val/x2.5/psnr_y": 28.0})
    path = plot_loss_curve(rows, tmp_path / "curve.png")
    assert path == tmp_path / "curve.png" and path.read_bytes().startswith(PNG)
    assert plot_loss_curve([{"step": 1, "train/lr": 1e-3}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_labelled_strip_frames_the_grid_with_captions_and_checks_its_columns():
    rows = {"real": [torch.zeros(3, 32, 32)] * 3, "generated": [torch.ones(3, 32, 32)] * 3}
    img = labelled_strip(rows, ["x1", "x2.5*\nt=0.50", "x4"])
    assert img.shape[0] == 3 and img.shape[1] > 2 * 32 and img.shape[2] > 3 * 32   # room for the labels
    assert img.min() >= -1 and img.max() <= 1
    with pytest.raises(ValueError, match="one image per column"):
        labelled_strip(rows, ["x1", "x2"])
