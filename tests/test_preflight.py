"""Every prerequisite of a job is checked before any work, each refusal one line with the fix."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from degflow.cli.app import CONF_DIR, register_resolvers, to_plain
from degflow.infra.checkpoint import CheckpointError, save_checkpoint
from degflow.models.registry import model_entry
from degflow.models.rae import RAE
from degflow.training.preflight import check_prerequisites, check_writable

REPO = Path(__file__).resolve().parents[1]
register_resolvers()


def config(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_plain(compose("config", overrides=["logger=none", "device=cpu", *overrides]))


def tiny_rae_checkpoint(path: Path) -> Path:
    rae = RAE(widths=(8, 8, 16, 16), num_res_blocks=1)
    save_checkpoint(path, {"kind": "rae", "step": 1, "models": {"rae": model_entry(rae)},
                           "train_scales": [1.0, 2.0, 4.0], "time_map": None, "config": {}, "extra": {}})
    return path


@pytest.fixture
def no_lpips_weights(tmp_path, monkeypatch):
    """A machine without LPIPS backbones on disk and without internet."""
    monkeypatch.delenv("DEGFLOW_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setenv("DEGFLOW_LPIPS_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return {k: os.environ.get(k) for k in ("DEGFLOW_LPIPS_NO_DOWNLOAD", "TORCH_HOME")}


def test_stage_2_without_lpips_weights_is_refused_in_one_line_that_says_how_to_provide_them(tmp_path, no_lpips_weights):
    rae = tiny_rae_checkpoint(tmp_path / "rae.pt")
    cfg = config(["stage=lfm", f"rae_ckpt={rae}", f"output_root={tmp_path / 'out'}"])
    with pytest.raises(ValueError) as err:
        check_prerequisites(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "stage 2's LPIPS loss (loss.lpips_weight=0.1) needs the LPIPS VGG backbone weights" in message
    assert "DEGFLOW_LPIPS_WEIGHTS=<folder holding vgg16_features.pth>" in message and "loss.lpips_weight=0" in message
    # without the loss term, validation's LPIPS metric is the next thing it needs
    with pytest.raises(ValueError, match=r"validation's LPIPS metric \(eval.lpips=true\) needs the LPIPS AlexNet .*"
                                         r"eval.lpips=false"):
        check_prerequisites(config(["stage=lfm", f"rae_ckpt={rae}", "loss.lpips_weight=0",
                                    f"output_root={tmp_path / 'out'}"]))
    check_prerequisites(config(["stage=lfm", f"rae_ckpt={rae}", "loss.lpips_weight=0", "eval.lpips=false",
                                f"output_root={tmp_path / 'out'}"]))
    assert not (tmp_path / "out").exists()   # checking creates nothing


def test_train_py_stage_2_without_lpips_weights_exits_2_within_seconds_before_any_work(tmp_path, no_lpips_weights):
    rae = tiny_rae_checkpoint(tmp_path / "rae.pt")
    env = {**os.environ, **no_lpips_weights, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("DEGFLOW_LPIPS_WEIGHTS", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", "stage=lfm", f"rae_ckpt={rae}", "logger=none", "threads=1",
                           f"output_root={tmp_path / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    seconds = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "LPIPS VGG backbone weights" in errors[0], proc.stderr
    assert "latent cache" not in proc.stdout + proc.stderr and "step" not in proc.stdout
    assert not list((tmp_path / "out").rglob("latent_cache*")) and not list((tmp_path / "out").rglob("*.pt"))
    assert seconds < 60, seconds   # start-up and the checks only (a few seconds on an idle machine)
    # a refused run leaves no folder behind (Hydra made out/lfm/default/ with .hydra and train.log)
    assert not list((tmp_path / "out").rglob("*")), sorted((tmp_path / "out").rglob("*"))


def test_a_refused_run_keeps_an_earlier_run_folder_as_it_is(tmp_path):
    from degflow.cli.train import _forget_new_run_folder

    fresh = tmp_path / "lfm" / "fresh"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("x: 1\n")
    (fresh / "train.log").write_text("")
    _forget_new_run_folder(fresh)
    assert not fresh.exists() and not (tmp_path / "lfm").exists()
    earlier = tmp_path / "rae" / "earlier"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / "train.log").write_text("[step 10/40] loss=0.3\n")      # an earlier attempt's log lines
    _forget_new_run_folder(earlier)
    assert (earlier / "train.log").read_text() == "[step 10/40] loss=0.3\n"
    (earlier / "train.log").write_text("")
    (earlier / "checkpoints").mkdir()                                   # anything else: kept
    _forget_new_run_folder(earlier)
    assert (earlier / "checkpoints").is_dir() and (earlier / ".hydra").is_dir()


def test_missing_data_cuda_and_stage_1_checkpoints_are_named_with_their_fix(tmp_path):
    with pytest.raises(ValueError, match="data: .*python -m degflow check-data"):
        check_prerequisites(config(["data=paired", f"data.root={tmp_path / 'nowhere'}", f"output_root={tmp_path}"]))
    with pytest.raises(CheckpointError, match="rae_ckpt"):
        check_prerequisites(config(["stage=lfm", f"rae_ckpt={tmp_path / 'missing.pt'}", f"output_root={tmp_path}"]))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' was requested but CUDA is not available"):
            check_prerequisites(config(["device=cuda", f"output_root={tmp_path}"]))


def test_an_output_folder_under_a_file_is_refused_without_creating_anything(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=r"output_root='.*a_file/runs' cannot be created: .*a_file is a file"):
        check_writable(tmp_path / "a_file" / "runs", "output_root")
    check_writable(tmp_path / "new" / "deeper", "output_root")
    assert not (tmp_path / "new").exists()
