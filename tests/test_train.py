"""Both stages end to end on tiny CPU settings: training, validation, checkpoints, resume, sweeps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from degflow.infra.checkpoint import CheckpointError, load_checkpoint
from degflow.cli.app import CONF_DIR, register_resolvers, to_plain
from degflow.infra.digests import file_digest
from degflow.generation import Synthesizer
from degflow.core.timemap import TimeMap
from degflow.training import train
from degflow.training.lfm import SplineSettings, learned_time_map

REPO = Path(__file__).resolve().parents[1]
register_resolvers()

TINY = [
    "logger=none", "device=cpu", "stage.batch_size=2", "stage.warmup_steps=1", "stage.log_every=1",
    "data.crop_size=32", "data.val_max_size=64", "data.samples_per_epoch=8", "eval.max_images=1",
    "model.rae.widths=[8,8,16,16]",
    "model.lfm.nf=16", "model.lfm.ch_mult=[1,2]", "model.lfm.image_size=4", "solver.steps=2",
]
DEMO = ["data.max_side=160", "data.val_scales=[1,2,3,4]"]  # keys of data=demo only


@pytest.fixture
def lpips_overrides(shared_dir):
    weights = shared_dir / "weights"
    if not (weights / "vgg16_features.pth").is_file():
        pytest.skip(f"LPIPS backbone weights not found under {weights}: LPIPS loss/metric disabled in this test")
    return [f"loss.lpips_backbone_weights={weights / 'vgg16_features.pth'}",
            f"eval.lpips_backbone_weights={weights / 'alexnet_features.pth'}"]


def config(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        demo = [] if any(o.startswith("data=") for o in overrides) else DEMO
        return to_plain(compose("config", overrides=TINY + demo + list(overrides)))


def history_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def train_rae(run_dir: Path, steps: int = 4, extra=()):
    return train(config([f"output_root={run_dir.parent}", f"stage.steps={steps}", "stage.val_every=2",
                         "stage.ckpt_every=2", "stage.keep_every=2", *extra]), run_dir)


@pytest.mark.slow
def test_rae_stage_trains_validates_and_writes_a_complete_checkpoint(tmp_path):
    run = tmp_path / "rae"
    metrics = train_rae(run)
    assert set(metrics["scales"]) == {"x1", "x2", "x3", "x4"}
    assert metrics["scales"]["x3"]["heldout"] and not metrics["scales"]["x2"]["heldout"]
    assert all(row["psnr_y"] > 5 for row in metrics["scales"].values())
    assert json.loads((run / "metrics.json").read_text())["step"] == 4
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", kind="rae")
    assert ckpt["step"] == 4 and ckpt["train_scales"] == [1.0, 2.0, 4.0]
    assert ckpt["time_map"] == {"scales": [1.0, 2.0, 4.0], "times": [0.0, 1 / 3, 1.0]}
    assert ckpt["models"]["rae"]["config"]["widths"] == [8, 8, 16, 16]
    assert {"optimizer", "scheduler", "rng", "config"} <= set(ckpt) and ckpt["config"]["stage"]["steps"] == 4
    assert (run / "checkpoints" / "step_0000002.pt").is_file()
    assert sorted(p.name for p in (run / "images").iterdir())  # the image strip was written


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run_and_another_seed_does_not(tmp_path):
    def weights(name: str, seed: int) -> dict:
        train_rae(tmp_path / name, steps=2, extra=[f"seed={seed}"])
        return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["models"]["rae"]["state_dict"]

    a, b, c = weights("a", 7), weights("b", 7), weights("c", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)          # initial weights and batches follow the seed
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert history_steps(tmp_path / "a") == [1, 2]


@pytest.mark.slow
def test_rae_resumes_from_its_last_checkpoint_instead_of_restarting(tmp_path):
    run = tmp_path / "rae"
    train_rae(run, steps=2)
    first = load_checkpoint(run / "checkpoints" / "last.pt")
    train_rae(run, steps=4)  # the same run directory: continues at step 2
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert history_steps(run) == [1, 2, 3, 4]  # steps 1-2 were not redone
    assert int(first["optimizer"]["state"][0]["step"]) == 2
    assert int(last["optimizer"]["state"][0]["step"]) == 4  # Adam's counter continued
    assert last["scheduler"]["last_epoch"] == 4
    assert not torch.equal(first["optimizer"]["state"][0]["exp_avg"], last["optimizer"]["state"][0]["exp_avg"])


@pytest.mark.slow
def test_lfm_resumes_from_its_last_checkpoint_instead_of_restarting(tmp_path):
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    run = tmp_path / "lfm" / "tiny"

    def lfm(steps: int):
        return train(config(["stage=lfm", f"output_root={tmp_path}", f"stage.steps={steps}", "stage.val_every=2",
                             "stage.ckpt_every=2", "eval.lpips=false", "loss.lpips_weight=0"]), run)

    lfm(2)
    first = load_checkpoint(run / "checkpoints" / "last.pt", kind="lfm")
    lfm(4)  # the same run directory: continues at step 2 with the same frozen RAE
    last = load_checkpoint(run / "checkpoints" / "last.pt", kind="lfm")
    assert history_steps(run) == [1, 2, 3, 4]
    assert int(last["optimizer"]["state"][0]["step"]) == 4 and last["scheduler"]["last_epoch"] == 4
    for key, value in first["models"]["rae"]["state_dict"].items():
        assert torch.equal(value, last["models"]["rae"]["state_dict"][key])  # stage 1 stays frozen
    assert any(not torch.equal(v, last["models"]["velocity"]["state_dict"][k])
               for k, v in first["models"]["velocity"]["state_dict"].items())


@pytest.mark.slow
def test_lfm_refuses_to_resume_on_another_rae_and_names_both_sources(tmp_path):
    """stage=lfm rae_ckpt=A, then rae_ckpt=B (or a retrained RAE) in the same run directory must
    not continue the velocity net on the old RAE while recording the new one."""
    train_rae(tmp_path / "rae" / "a", steps=2)
    train_rae(tmp_path / "rae" / "b", steps=2, extra=["seed=1"])
    rae_a, rae_b = (tmp_path / "rae" / n / "checkpoints" / "last.pt" for n in ("a", "b"))
    run = tmp_path / "lfm" / "tiny"

    def lfm(rae: Path, steps: int):
        return train(config(["stage=lfm", f"output_root={tmp_path}", f"rae_ckpt={rae}", f"stage.steps={steps}",
                             "stage.val_every=2", "stage.ckpt_every=2", "eval.lpips=false", "loss.lpips_weight=0"]),
                     run)

    lfm(rae_a, 2)
    with pytest.raises(CheckpointError, match="rae_ckpt") as err:
        lfm(rae_b, 4)
    assert str(rae_a) in str(err.value) and str(rae_b) in str(err.value) and "resume=false" in str(err.value)
    assert load_checkpoint(run / "checkpoints" / "last.pt", kind="lfm")["step"] == 2   # nothing was mixed
    lfm(rae_a, 4)                                                # the original RAE resumes
    last = load_checkpoint(run / "checkpoints" / "last.pt", kind="lfm")
    assert last["step"] == 4 and last["extra"]["rae_source"]["path"] == str(rae_a)
    assert last["extra"]["rae_source"]["sha256"] == file_digest(rae_a).sha256    # its checkpoint_sha256


def test_training_scales_without_the_hr_knot_are_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "rae"
    with pytest.raises(ValueError, match="data.train_scales"):
        train_rae(run, extra=["data.train_scales=[2,4]"])
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_lfm_stage_end_to_end_writes_metrics_and_a_self_contained_checkpoint(tmp_path, lpips_overrides):
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    run = tmp_path / "lfm" / "tiny"
    metrics = train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=2", "stage.val_every=2",
                            *lpips_overrides]), run)  # rae_ckpt unset: the latest RAE run is used
    row = metrics["scales"]["x3"]
    assert row["heldout"] and row["t"] == pytest.approx(2 / 3)
    assert {"psnr_y", "ssim_y", "lpips", "psnr_y_bicubic", "psnr_y_ae_interp"} <= set(row)
    assert metrics["nfe"] > 0 and metrics["seconds_per_image"] > 0
    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json is not strict JSON: {constant}")

    saved = json.loads((run / "metrics.json").read_text(), parse_constant=refuse)
    assert saved["nfe"] == metrics["nfe"] and "overrides" in saved
    assert saved["protocol"] == {"name": "ours", "quantize": True, "shave": 4, "crop": "center",
                                 "multiple_of": 8}
    assert saved["scales"]["x1"]["psnr_y_bicubic"] is None  # no baseline at x1 (was Infinity)
    # the checkpoint alone is enough to synthesize: remove the RAE run first
    ckpt_path = run / "checkpoints" / "last.pt"
    for f in (tmp_path / "rae").rglob("*.pt"):
        f.unlink()
    synth = Synthesizer.from_checkpoint(ckpt_path)
    out = synth(torch.zeros(1, 3, 40, 24), [2.5])
    assert out[2.5].shape == (1, 3, 40, 24)


@pytest.mark.slow
def test_sweep_objective_and_checkpoints_never_read_a_test_split_file(tmp_path, monkeypatch):
    """Both stages on a RealSR tree, every file opened recorded: nothing under Test/ is read;
    the objective returned to Hydra comes from the validation split (held out of Train)."""
    import builtins

    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from _data_trees import make_realsr

    root = make_realsr(tmp_path / "RealSR", n=4, h=48, w=64)
    opened: list[Path] = []
    real_open, real_pil_open = builtins.open, Image.open

    def record_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            opened.append(Path(file))
        return real_open(file, *args, **kwargs)

    def record_pil_open(fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)):
            opened.append(Path(fp))
        return real_pil_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", record_open)
    monkeypatch.setattr(Image, "open", record_pil_open)
    data = ["data=realsr", f"data.root={root}", "data.val_fraction=0.25"]
    train(config([*data, f"output_root={tmp_path}", "stage.steps=2", "stage.val_every=2"]),
          tmp_path / "rae" / "r")
    metrics = train(config([*data, "stage=lfm", f"output_root={tmp_path}", "stage.steps=2",
                            "stage.val_every=2", "eval.lpips=false", "loss.lpips_weight=0",
                            "eval.max_images=null"]), tmp_path / "lfm" / "r")
    read = {p.resolve() for p in opened}
    assert any("Train" in p.parts for p in read)                      # the recorder works
    assert not [p for p in read if "Test" in p.parts]
    assert metrics["images_evaluated"] == 1                           # the one held-out Train name
    assert metrics["objective"] == pytest.approx(metrics["scales"]["x3"]["psnr_y"])
    assert "validation split" in metrics["objective_name"]
    # evaluation, and only evaluation, reads the test split
    from degflow.data import build_data
    bundle = build_data("realsr", root=root, val_fraction=0.25, crop_size=32)
    opened.clear()
    assert len(bundle.test) == 4 and any("Test" in p.parts for p in opened)


@pytest.mark.slow
def test_lfm_without_any_rae_checkpoint_names_rae_ckpt(tmp_path):
    with pytest.raises(CheckpointError, match="rae_ckpt"):
        train(config(["stage=lfm", f"output_root={tmp_path}", "loss.lpips_weight=0", "eval.lpips=false"]),
              tmp_path / "lfm")


@pytest.mark.slow
def test_lfm_refuses_a_checkpoint_of_the_wrong_stage(tmp_path, lpips_overrides):
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=1", "stage.val_every=1",
                  "eval.lpips=false", "loss.lpips_weight=0"]), tmp_path / "lfm" / "a")
    with pytest.raises(CheckpointError, match="stage-'lfm' checkpoint, expected a stage-'rae'"):
        train(config(["stage=lfm", f"rae_ckpt={tmp_path / 'lfm' / 'a' / 'checkpoints' / 'last.pt'}",
                      "eval.lpips=false", "loss.lpips_weight=0"]), tmp_path / "lfm" / "b")


@pytest.mark.slow
def test_solver_sweep_runs_three_jobs_whose_nfe_follows_the_step_counts(tmp_path):
    rae_run = tmp_path / "rae" / "tiny"
    train_rae(rae_run, steps=2)
    cmd = [sys.executable, "train.py", "stage=lfm", *TINY, *DEMO, f"output_root={tmp_path}", "stage.steps=1",
           "stage.val_every=1", "loss.lpips_weight=0", "eval.lpips=false", "-m", "solver.steps=2,4,8"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "lfm").glob("*/metrics.json")]
    assert len(jobs) == 3  # one run directory (and metrics.json) per job
    nfe = {}
    for steps in (2, 4, 8):
        (metrics,) = [m for m in jobs if f"solver.steps={steps}" in m["overrides"]]
        nfe[steps] = metrics["nfe"]
    # rk4: 4 evaluations per grid interval; the requested times (x2, x3, x4 at t = 1/3, 2/3, 1)
    # replace their nearest uniform nodes, so the grid has max(steps, 3) intervals here
    assert nfe == {2: 4 * 3, 4: 4 * 4, 8: 4 * 8}


def test_rae_trains_on_a_realsr_v2_tree(tmp_path):
    from _data_trees import make_realsr

    root = make_realsr(tmp_path / "RealSR_v2_ordered", n=3, h=48, w=64)
    metrics = train_rae(tmp_path / "runs" / "realsr", steps=2,
                        extra=["data=realsr", f"data.root={root}", "data.crop_size=32"])
    assert set(metrics["scales"]) == {"x1", "x2", "x3", "x4"} and metrics["scales"]["x3"]["heldout"]


@pytest.mark.slow
def test_rae_trains_on_the_real_camera_x4_pairs_in_the_paired_layout(tmp_path, shared_dir):
    root = shared_dir / "data" / "realsr_x4"
    if not (root / "HR").is_dir():
        pytest.skip(f"{root} not present: real RealSR x4 pairs are not available here")
    metrics = train_rae(tmp_path / "runs" / "paired", steps=2,
                        extra=["data=paired", f"data.root={root}", "data.val_scales=null",
                               "data.val_max_size=64"])
    assert set(metrics["scales"]) == {"x1", "x4"} and metrics["images_evaluated"] == 1


@pytest.mark.slow
def test_validation_does_not_freeze_the_velocity_network(tmp_path):
    """Training continues after a mid-run validation (the Synthesizer must not freeze live modules)."""
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    metrics = train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=3", "stage.val_every=1",
                            "loss.lpips_weight=0", "eval.lpips=false"]), tmp_path / "lfm" / "a")
    assert metrics["step"] == 3


@pytest.mark.slow
def test_lfm_validation_can_score_the_true_size_lr_and_records_how(tmp_path):
    """eval.hr_size_output=from_lr scores the generated and oracle LR as their true-size LR upsampled
    (degflow.core.resize.lr_at_hr_size), the same run otherwise: bicubic rows equal, model rows differ."""
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    runs = {}
    for mode in ("decoded", "from_lr"):
        runs[mode] = train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=1", "stage.val_every=1",
                                   "loss.lpips_weight=0", "eval.lpips=false", f"eval.hr_size_output={mode}"]),
                           tmp_path / "lfm" / mode)
        assert runs[mode]["hr_size_output"] == mode
    for key in ("x2", "x4"):
        a, b = runs["decoded"]["scales"][key], runs["from_lr"]["scales"][key]
        assert a["psnr_y_bicubic"] == pytest.approx(b["psnr_y_bicubic"])
        assert a["psnr_y"] != pytest.approx(b["psnr_y"]) and a["psnr_y_ae_interp"] != pytest.approx(b["psnr_y_ae_interp"])
    with pytest.raises(ValueError, match=r"eval.hr_size_output='lr' is not one of \['decoded', 'from_lr'\]"):
        train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=1", "loss.lpips_weight=0",
                      "eval.lpips=false", "eval.hr_size_output=lr"]), tmp_path / "lfm" / "bad")


def test_knot_times_stay_ordered_with_fixed_ends_and_receive_gradients():
    from degflow.training.lfm import KnotTimes

    knots = KnotTimes((0.0, 1 / 3, 0.75, 1.0), learnable=True)
    torch.testing.assert_close(knots().double(), torch.tensor([0.0, 1 / 3, 0.75, 1.0], dtype=torch.float64),
                               rtol=0, atol=1e-6)
    (knots()[1] * 3.0 - knots()[2]).backward()
    assert knots.gap_logits.grad is not None and knots.gap_logits.grad.abs().sum() > 0
    with torch.no_grad():                                   # whatever the optimiser does
        knots.gap_logits.copy_(torch.tensor([40.0, -30.0, 5.0]))
    t = knots()
    assert t[0].item() == 0.0 and t[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert bool((torch.diff(t) >= 0).all())
    frozen = KnotTimes((0.0, 0.5, 1.0), learnable=False)
    assert not frozen.gap_logits.requires_grad


def test_held_out_scales_stay_at_their_configured_time_or_follow_the_learned_knots():
    base = TimeMap.nominal((1.0, 2.0, 4.0))                       # x2 -> 1/3, x3 -> 2/3
    learned = (0.0, 0.45, 1.0)                                   # x2 moved to 0.45
    fixed = learned_time_map((1.0, 2.0, 4.0), learned, base, (3.0,), "fixed")
    follow = learned_time_map((1.0, 2.0, 4.0), learned, base, (3.0,), "follow")
    assert fixed.scale_to_time(3.0) == pytest.approx(2 / 3)      # the authors' behaviour
    assert follow.scale_to_time(3.0) == pytest.approx(0.725)     # interpolated between learned knots
    for m in (fixed, follow):
        assert m.knot_times((1.0, 2.0, 4.0)) == pytest.approx(learned)
    with pytest.raises(ValueError, match=r"spline\.heldout_times=fixed.*crossed.*heldout_times=follow"):
        learned_time_map((1.0, 2.0, 4.0), (0.0, 0.8, 1.0), base, (3.0,), "fixed")
    with pytest.raises(ValueError, match=r"spline\.heldout_times='moving' is not one of \['fixed', 'follow'\]"):
        SplineSettings(heldout_times="moving")


@pytest.mark.slow
def test_learned_knots_move_are_checkpointed_and_used_by_synthesis(tmp_path):
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    run = tmp_path / "lfm" / "learn"
    # a large learning rate so that 4 steps visibly move the interior knot off 1/3
    metrics = train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=4", "stage.val_every=4",
                            "stage.lr=0.5", "stage.grad_clip=null", "spline.learn_knots=true",
                            "spline.heldout_times=follow",
                            "eval.lpips=false", "loss.lpips_weight=0"]), run)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", kind="lfm")
    learned = ckpt["time_map"]["times"]
    assert learned[0] == 0.0 and learned[-1] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < learned[1] < learned[-1] and abs(learned[1] - 1 / 3) > 1e-4
    assert metrics["knot_times"] == pytest.approx(learned, abs=1e-6)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert any("train/knot_t1" in row for row in history)
    synth = Synthesizer.from_checkpoint(run / "checkpoints" / "last.pt")
    assert synth.time_map.scale_to_time(2.0) == pytest.approx(learned[1], abs=1e-6)
