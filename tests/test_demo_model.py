"""The shipped demo model (degflow/assets/demo/): it loads, it is the file its card describes, and it
reproduces the card's figures (docs/DEMO_MODEL.md)."""

import json
import math
from pathlib import Path

import pytest

from degflow.infra.checkpoint import SHIPPED_MODELS, load_checkpoint
from degflow.infra.digests import file_digest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "degflow" / "assets" / "demo"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((ASSETS / "card.json").read_text(encoding="utf-8"))


def test_the_shipped_model_is_the_file_its_card_records_and_holds_weights_only(card):
    model = SHIPPED_MODELS["demo"]
    assert model == ASSETS / card["file"] and model.stat().st_size == card["bytes"]
    found = file_digest(model)
    assert found.sealed and found.intact and found.sha256 == card["digest"]
    ckpt = load_checkpoint("demo", kind="lfm")
    assert set(ckpt["models"]) == {"rae", "velocity"} and ckpt["train_scales"] == [1.0, 2.0, 4.0]
    assert not {"optimizer", "rng", "config", "degflow_version"} & set(ckpt)
    assert model.stat().st_size < 10 * 2**20


def test_the_synthesizer_loads_the_shipped_model_by_the_name_demo():
    from degflow.generation import Synthesizer

    synth = Synthesizer.from_checkpoint("demo", device="cpu")
    assert synth.checkpoint_sha256 == file_digest(SHIPPED_MODELS["demo"]).sha256 and synth.condition != "none"


def test_the_card_recipe_is_the_quickstarts_demo_budget(card):
    from degflow.cli.quickstart import budget_overrides

    assert card["recipe"]["overrides"] == budget_overrides("demo")
    assert card["recipe"]["command"].startswith("python -m degflow.quickstart train=true threads=1 seed=0")


def test_the_recipe_validates_each_stage_at_least_four_times():
    from degflow.cli.quickstart import budget_overrides

    def value(overrides: list[str], key: str) -> int:
        return int(next(o.split("=", 1)[1] for o in overrides if o.startswith(key + "=")))

    for stage, overrides in budget_overrides("demo").items():
        if stage != "evaluate":   # four or more points on the validation panel of loss_curve.png
            assert value(overrides, "stage.steps") // value(overrides, "stage.val_every") >= 4, stage


@pytest.mark.slow
def test_how_often_training_validates_does_not_change_the_trained_weights(tmp_path, one_torch_thread):
    """So the card's digest holds whatever val_every the recipe uses (each step reseeds its own draws)."""
    from degflow.cli.quickstart import budget_overrides, compose_config
    from degflow.infra.checkpoint import save_weights_only
    from degflow.training import train

    steps = budget_overrides("tiny")
    common = ["logger=none", "device=cpu", f"output_root={tmp_path}", "seed=0"]
    train(compose_config("config", ["stage=rae", *common, *steps["rae"]]), tmp_path / "rae")
    digests = set()
    for every in (1, 4):
        train(compose_config("config", ["stage=lfm", *common, f"rae_ckpt={tmp_path / 'rae' / 'checkpoints' / 'last.pt'}",
                                         *steps["lfm"], f"stage.val_every={every}"]), tmp_path / f"lfm{every}")
        digests.add(save_weights_only(tmp_path / f"lfm{every}" / "checkpoints" / "last.pt", tmp_path / f"{every}.pt"))
    assert len(digests) == 1


@pytest.mark.slow
def test_the_shipped_model_reproduces_its_cards_degradation_profile(card, one_torch_thread):
    from degflow.cli.quickstart import profile_model

    profile = profile_model("demo", card["scales"], device="cpu", seed=card["recipe"]["seed"], oracle=True)
    assert profile["images"] == card["profile"]["images"]

    def close(a: dict, b: dict, where: str) -> None:
        assert set(a) == set(b), where
        for k, v in b.items():
            tol = 0.02 if k == "psnr_y" else 1e-3 * abs(v)   # dB; relative (thread counts reorder float sums)
            assert math.isclose(a[k], v, abs_tol=tol), (where, k, a[k], v)

    for scale, row in card["profile"]["scales"].items():
        for method, values in row.items():
            close(profile["scales"][scale][method], values, f"{scale} {method}")
    for knot, values in card["profile"]["knots"].items():
        close(profile["knots"][knot], values, f"knot {knot}")


def test_at_the_scales_the_quick_start_shows_the_generated_blur_and_noise_follow_the_real_within_a_factor_2(card):
    from degflow.cli.quickstart import compose_config
    from degflow.jobs.degradation_profile import follows_real

    shown = [f"x{s:g}" for s in compose_config("quickstart")["scales"]]
    checks = follows_real(card["profile"], factor=2.0)
    assert set(shown) <= set(checks)
    assert all(checks[key][m] for key in shown for m in ("detail", "noise")), {k: checks[k] for k in shown}


@pytest.mark.slow
def test_synthesize_py_ckpt_demo_writes_an_lr_set_with_the_shipped_model(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    from degflow.data.images import write_image

    (tmp_path / "hr").mkdir()
    write_image(tmp_path / "hr" / "a.png", torch.rand(3, 64, 96) * 2 - 1)
    proc = subprocess.run([sys.executable, "synthesize.py", "ckpt=demo", f"input={tmp_path / 'hr'}",
                           f"out={tmp_path / 'set'}", "scales=[2.5]", "threads=1"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "set" / "LR" / "x2.5" / "a.png").is_file()
    manifest = (tmp_path / "set" / "manifest.jsonl").read_text()
    assert file_digest(SHIPPED_MODELS["demo"]).sha256 in manifest


@pytest.mark.slow
def test_the_card_script_trains_with_the_cards_command_at_the_tiny_budget_and_records_its_digest(tmp_path):
    import os
    import subprocess
    import sys

    from degflow.cli.quickstart import budget_overrides

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DEGFLOW_LPIPS_NO_DOWNLOAD": "1",
           "TORCH_HOME": str(tmp_path / "torch_home")}
    env.pop("DEGFLOW_LPIPS_WEIGHTS", None)                                  # offline, no LPIPS weights
    out = tmp_path / "card"
    shipped = (ASSETS / "card.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "experiments.reproduce.demo_model", "--budget", "tiny", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    model = out / "train" / "model.pt"
    assert card["digest"] == file_digest(model).sha256 and card["bytes"] == model.stat().st_size
    assert card["recipe"]["command"] == "python -m degflow.quickstart train=true threads=1 seed=0 budget=tiny"
    assert card["recipe"]["overrides"] == budget_overrides("tiny")
    assert list(card["profile"]["scales"]) == ["x1.5", "x2", "x2.5", "x3", "x3.5", "x4"]
    assert set(card["profile"]["knots"]) == {"x2", "x4"} and set(card["evaluation"]["per_scale"]) >= {"degflow", "bicubic"}
    assert (ASSETS / "card.json").read_bytes() == shipped                  # without --install nothing is shipped
