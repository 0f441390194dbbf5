"""The experiment scripts behind docs/RESULTS.md, end to end at a tiny budget.

A ``sitecustomize`` audit hook (Python's ``open`` / ``os.listdir`` / ``os.scandir`` audit
events) records every path each subprocess opens or lists, so the tests can prove what
training read and what it never read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

TINY_TRAIN = [
    "stage.batch_size=2", "stage.warmup_steps=1", "stage.val_every=2", "stage.log_every=1",
    "data.samples_per_epoch=8", "eval.max_images=1",
    "model.rae.widths=[8,8,16,16]", "model.lfm.nf=16", "model.lfm.ch_mult=[1,2]", "model.lfm.image_size=4",
    "solver.steps=2", "loss.lpips_weight=0", "eval.lpips=false",
]
TINY_EVAL = ["solver.steps=2", "eval.lpips=false"]

AUDIT_HOOK = '''
import os, sys
_LOG = os.environ.get("DEGFLOW_TEST_OPEN_LOG")
_busy = [False]

def _hook(event, args):
    if _LOG is None or _busy[0] or event not in ("open", "os.listdir", "os.scandir"):
        return
    path = args[0] if args else None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        return
    _busy[0] = True
    try:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\\t{' '.join(sys.argv)}\\t{os.path.realpath(path)}\\n")
    finally:
        _busy[0] = False

sys.addaudithook(_hook)
'''


def run_script(tmp_path: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, list[tuple[str, str, str]]]:
    """Run ``python <args>`` with the audit hook; returns the process and ``(pid, argv, real path)`` rows."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK, encoding="utf-8")
    log = tmp_path / "opens.tsv"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO)]),
           "DEGFLOW_TEST_OPEN_LOG": str(log), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [tuple(line.split("\t", 2)) for line in log.read_text(encoding="utf-8").splitlines()]
    return done, rows


def small_pairs(src: Path, dst: Path, names: list[str], hr_side: int = 96) -> list[str]:
    """``dst/{HR,x4}/name.png``: the top-left ``hr_side`` square of each HR image and the
    aligned ``hr_side / 4`` square of its real x4 image (a small, still aligned pair)."""
    for name in names:
        for sub, side in (("HR", hr_side), ("x4", hr_side // 4)):
            img = np.asarray(Image.open(src / sub / f"{name}.png").convert("RGB"))[:side, :side]
            (dst / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(dst / sub / f"{name}.png")
    return names


def test_split_rule_is_fixed_and_documented():
    from degflow.data.sr_pairs import split_of

    split = split_of([f"Canon_{i:03d}" for i in range(50, 0, -1)])  # order of the input does not matter
    assert [len(split[k]) for k in ("train", "val", "test")] == [35, 5, 10]
    assert split["test"] == [f"Canon_{i:03d}" for i in range(5, 51, 5)]
    assert split["val"] == ["Canon_003", "Canon_013", "Canon_023", "Canon_033", "Canon_043"]
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    with pytest.raises(ValueError, match="at least 5"):
        split_of(["a", "b", "c", "d"])


@pytest.mark.slow  # two stages, two evaluations and a re-run, each a subprocess
def test_realsr_x4_script_trains_on_canon_and_never_reads_nikon_or_canon_test_while_training(tmp_path, shared_dir):
    canon_src, nikon_src = shared_dir / "data" / "realsr_x4", shared_dir / "data" / "realsr_x4_eval"
    if not (canon_src / "HR").is_dir() or not (nikon_src / "HR").is_dir():
        pytest.skip(f"RealSR x4 pairs not found under {shared_dir / 'data'} (realsr_x4/, realsr_x4_eval/)")
    canon = tmp_path / "canon"
    nikon = tmp_path / "nikon"
    small_pairs(canon_src, canon, [f"Canon_{i:03d}" for i in range(1, 7)])   # train 4, val 1 (003), test 1 (005)
    small_pairs(nikon_src, nikon, ["Nikon_001", "Nikon_002"])
    out = tmp_path / "out"
    args = ["-m", "experiments.reproduce.realsr_x4", "--canon", str(canon), "--nikon", str(nikon), "--out", str(out),
            "--seeds", "3", "--rae-steps", "2", "--lfm-steps", "2", "--crop", "32", "--val-max-size", "64",
            "--device", "cpu",
            *(f"--train-override={o}" for o in TINY_TRAIN), *(f"--eval-override={o}" for o in TINY_EVAL)]
    done, rows = run_script(tmp_path, args)

    # promised files and table rows
    for name in ("results.md", "results.json", "results.png", "split/split.json"):
        assert (out / name).is_file(), name
    for ev in ("eval_canon_test", "eval_nikon"):
        assert (out / "seed-3" / ev / "eval.json").is_file()
    table = (out / "results.md").read_text(encoding="utf-8")
    for label in ("Canon held-out test (1 img)", "Nikon (unseen camera, eval only) (2 img)"):
        for method in ("degflow", "bicubic", "procedural", "ae_interp"):
            assert f"| {label} | {method} |" in table
    assert "seed 3" in table
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["split"]["test"] == ["Canon_005"] and results["split"]["val"] == ["Canon_003"]
    assert results["images"] == {"canon_test": 1, "nikon": 2}
    assert str(out / "results.md") in done.stdout

    # what each process read
    nikon_real = os.path.realpath(nikon)
    canon_test = {os.path.realpath(canon / sub / "Canon_005.png") for sub in ("HR", "x4")}
    canon_train = {os.path.realpath(canon / "HR" / f"Canon_{i:03d}.png") for i in (1, 2, 4, 6)}
    training = [r for r in rows if "train.py" in r[1]]
    evaluation = [r for r in rows if any(s in r[1] for s in ("degflow/cli/evaluate", "degflow/evaluate", "degflow.evaluate"))]
    assert len({r[0] for r in training}) == 2  # two stages
    assert not [r for r in training if r[2] == nikon_real or r[2].startswith(nikon_real + os.sep)]
    assert not [r for r in training if r[2] in canon_test]
    assert canon_train <= {r[2] for r in training}  # the hook saw training read its images
    assert {os.path.realpath(nikon / "x4" / "Nikon_002.png")} <= {r[2] for r in evaluation}
    assert canon_test <= {r[2] for r in evaluation}

    # re-running continues: both stages finished, every evaluation is kept
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed-*/eval_*/eval.json")}
    again, _ = run_script(tmp_path, args)
    assert again.stdout.count("finished before, kept") == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.slow  # training, evaluation and an 8-job sweep, each a subprocess
def test_demo_results_script_writes_scale_table_sweep_frontier_and_readme_block(tmp_path):
    out = tmp_path / "demo"
    args = ["-m", "experiments.reproduce.demo_results", "--out", str(out), "--rae-steps", "2", "--lfm-steps", "2",
            "--max-images", "1", "--device", "cpu", "--sweep-solvers", "euler", "rk4", "--sweep-steps", "2",
            "--sweep-modes", "grid", "cubic",
            *(f"--data-override={o}" for o in ("data.max_side=160", "data.crop_size=32", "data.val_max_size=64")),
            *(f"--train-override={o}" for o in TINY_TRAIN), *(f"--eval-override={o}" for o in TINY_EVAL)]
    done, rows = run_script(tmp_path, args)
    for name in ("scales/eval.json", "scales/metric_vs_scale.png", "solver_sweep/sweep.md",
                 "solver_sweep/psnr_vs_nfe.png", "README_block.md", "results.json"):
        assert (out / name).is_file(), name
    evaluated = json.loads((out / "scales" / "eval.json").read_text(encoding="utf-8"))
    assert evaluated["scales"] == ["1.5", "2", "2.5", "3", "3.5", "4"]
    assert set(evaluated["per_scale"]) == {"degflow", "bicubic", "procedural", "ae_interp"}
    block = (out / "README_block.md").read_text(encoding="utf-8")
    assert "x2.5*" in block and "x2 |" in block  # held-out scales marked, seen ones not
    for method in ("degflow", "bicubic", "procedural", "ae_interp"):
        assert f"| {method} |" in block
    for label in ("euler/2 ", "euler/2/cubic", "rk4/2 ", "rk4/2/cubic"):
        assert f"| {label}" in block
    assert block in done.stdout


def test_seed_spread_is_the_sample_standard_deviation_of_the_finite_values():
    import statistics

    from degflow.viz.tables import fmt, mean_sd

    values = [31.2, 30.4, 32.9]
    mean, sd, n = mean_sd([*values, None, float("nan")])
    assert n == 3 and mean == pytest.approx(statistics.mean(values)) and sd == pytest.approx(statistics.stdev(values))
    assert mean_sd([28.0]) == (28.0, None, 1)
    assert mean_sd([None]) == (None, None, 0)
    assert fmt(31.5, 0.25, "psnr_y") == "31.50 ± 0.25" and fmt(0.1234567, None, "lpips") == "0.1235"


def test_method_bars_plot_is_a_png_with_one_panel_per_metric(tmp_path):
    from degflow.viz.plots import plot_method_bars

    values = {metric: {"Canon": {"degflow": (30.0, 0.5), "bicubic": (28.0, None)},
                       "Nikon": {"degflow": (29.0, 0.4), "bicubic": (None, None)}}
              for metric in ("psnr_y", "lpips")}
    path = plot_method_bars(values, tmp_path / "bars.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > img.height  # two panels side by side


def test_two_seeds_are_reported_as_mean_and_spread_per_test_set_and_method():
    import statistics

    from experiments.reproduce.realsr_x4 import aggregate, markdown

    def summary(psnr: float, lpips: float) -> dict:
        return {"all": {"psnr_y": psnr, "ssim_y": 0.9, "lpips": lpips, "kl": 0.1, "akld": 0.2},
                "nfe": 64.0, "seconds_per_image": 1.0}

    evals = {s: {key: {"summary": {"degflow": summary(30.0 + s, 0.2), "bicubic": summary(29.0, 0.3)}, "images": 2}
                 for key in ("canon_test", "nikon")} for s in (0, 1)}
    agg = aggregate(evals)
    mean, sd, n = agg["nikon"]["degflow"]["psnr_y"]
    assert (mean, n) == (30.5, 2) and sd == pytest.approx(statistics.stdev([30.0, 31.0]))
    assert agg["nikon"]["bicubic"]["psnr_y"][:2] == [29.0, 0.0]
    split = {"train": ["a"] * 35, "val": ["b"] * 5, "test": ["c"] * 10}
    table = markdown(agg, [0, 1], {"canon_test": 10, "nikon": 50}, split)
    assert "| Nikon (unseen camera, eval only) (50 img) | degflow | **30.50 ± 0.71** |" in table
    assert "- Nikon (unseen camera, eval only): degflow beats bicubic in PSNR-Y (+1.50 dB); LPIPS -0.1000 (better)." \
        in table


def test_cache_comparison_flags_a_gap_larger_than_the_pooled_seed_sd_and_passes_a_smaller_one(tmp_path):
    from experiments.studies.latent_cache.latent_cache_validation import compare, load_run, markdown

    def run(name: str, seed: int, cache: bool, x3: float, x2: float) -> Path:
        scales = {key: {"psnr_y": psnr, "ssim_y": 0.9, "lpips": 0.2, "heldout": heldout}
                  for key, psnr, heldout in (("x2", x2, False), ("x3", x3, True))}
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(
            {"step": 500, "scales": scales, "overrides": ["stage=lfm", f"seed={seed}"]
             + ([] if cache else ["stage.latent_cache=false"])}))
        return folder

    runs = [load_run(run("a", 0, True, 32.1, 34.60)), load_run(run("b", 1, True, 32.0, 34.70)),
            load_run(run("c", 0, False, 31.5, 34.62)), load_run(run("d", 1, False, 31.6, 34.64))]
    result = compare(runs)
    x3, x2 = result["scales"]["x3"]["psnr_y"], result["scales"]["x2"]["psnr_y"]
    assert x3["mean_difference"] == pytest.approx(0.5) and x3["within_spread"] is False
    assert x3["pooled_seed_sd"] == pytest.approx(0.1 / 2 ** 0.5)       # both settings: SD of two values 0.1 apart
    assert x2["mean_difference"] == pytest.approx(0.02) and x2["within_spread"] is True
    assert result["scales"]["held-out mean"]["psnr_y"]["mean_difference"] == pytest.approx(0.5)
    assert "| x3* | psnr_y | 32.05 ± 0.07 | 31.55 ± 0.07 |" in markdown(result)



def test_stochastic_study_verdict_needs_every_seed_to_win_by_more_than_the_seed_range():
    from experiments.studies.stochastic.stochastic import table, verdict

    assert verdict(0.05, [0.02, 0.025], higher=False) == "better"          # gain 0.0275 > range 0.005
    assert verdict(0.05, [0.02, 0.049], higher=False) == "within spread"   # one seed barely wins, range 0.029
    assert verdict(0.05, [0.02, 0.06], higher=False) == "within spread"    # one seed loses
    assert verdict(30.0, [28.0, 28.1], higher=True) == "worse"
    assert verdict(30.0, [28.0, None], higher=True) == "" and verdict(1.0, [2.0, 2.0], higher=None) == ""

    def run(kl: float) -> dict:
        rows = {"degflow": {"2": {"kl": 0.05, "heldout": False}}, "stochastic": {"2": {"kl": kl, "diversity": 0.1}},
                "stochastic_mean": {"2": {"kl": 0.04}}}
        return {"settings": {"split": "val", "samples": 4, "strength": 1.0, "hr_size_output": "from_lr"},
                "images": 5, "scales": ["2"], "per_scale": rows}

    md, data = table({"demo_val": {0: run(0.02), 1: run(0.025)}}, [0, 1])
    assert data["demo_val"]["2"]["kl"]["verdict"] == "better"
    assert data["demo_val"]["2"]["kl"]["seed_range"] == pytest.approx(0.005)
    assert "| KL | 0.0500 | 0.0200 | 0.0250 | 0.0050 | better | 0.0400 | 0.0400 |" in md

@pytest.mark.slow
def test_knot_ceiling_recovers_a_linear_camera_and_scores_bicubic_like_the_evaluation(tmp_path):
    """A tree whose LR is a known linear degradation of its HR (plus 8-bit rounding): the
    one-kernel fit on train predicts val almost exactly; bicubic does not; the json and table
    hold every split."""
    import torch

    from degflow.baselines.kernel import apply_linear_degradation
    from experiments.studies.knot_ceiling import knot_ceiling
    from degflow.metrics.image import psnr_y
    from degflow.core.resize import bicubic_baseline, upsample_to

    g = torch.Generator().manual_seed(0)
    k = 8
    blur = torch.zeros(3 * k * k + 1, 3, dtype=torch.float64)
    box = torch.outer(torch.hann_window(k + 2, dtype=torch.float64)[1:-1], torch.hann_window(k + 2, dtype=torch.float64)[1:-1])
    for c in range(3):
        blur[c * k * k:(c + 1) * k * k, c] = (box / box.sum()).flatten() * 0.9
    blur[-1] = torch.tensor([0.05, 0.0, -0.05])                 # a colour cast
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            hr = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(48, 48),
                                                 mode="bilinear", align_corners=False) * 2 - 1
            lr = apply_linear_degradation(hr, blur, 4, k).clamp(-1, 1)
            for sub, x in (("HR", hr), ("x4", lr)):
                (tmp_path / split / sub).mkdir(parents=True, exist_ok=True)
                arr = ((x[0].permute(1, 2, 0).numpy() + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / split / sub / f"img{i}.png")
    out = tmp_path / "ceiling.json"
    assert knot_ceiling.main(["--root", str(tmp_path), "--out", str(out), "--splits", "val", "--support", "8"]) == 0
    assert torch.is_grad_enabled()                              # in-process: leaves autograd as it found it
    result = json.loads(out.read_text())
    val = result["splits"]["val"]
    assert val["images"] == 2 and result["train_images"] == 3
    assert val["mean"]["linear_global"] > 45 and val["mean"]["linear_global"] > val["mean"]["bicubic"] + 10
    # the bicubic row is the evaluation's: bicubic_baseline against the real LR upsampled to HR size
    from degflow.data.images import read_image
    hr, lr = read_image(tmp_path / "val" / "HR" / "img0.png"), read_image(tmp_path / "val" / "x4" / "img0.png")
    expected = float(psnr_y(bicubic_baseline(hr[None], 4), upsample_to(lr[None], 48, 48), shave=0))
    assert val["per_image"][0]["bicubic"] == pytest.approx(expected)
    assert "linear, one kernel" in knot_ceiling.table(result)
    # a generator whose val LR is the real LR moved by one pixel: scored as given, then registered back
    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(2):
        arr = np.asarray(Image.open(tmp_path / "val" / "x4" / f"img{i}.png")).copy()
        arr[:, 1:] = arr[:, :-1].copy()
        Image.fromarray(arr).save(gen / f"img{i}.png")
    assert knot_ceiling.main(["--root", str(tmp_path), "--out", str(out), "--splits", "val", "--support", "8",
                              "--generated", f"moved={gen}", "--generated-split", "val"]) == 0
    result = json.loads(out.read_text())
    val = result["splits"]["val"]["mean"]
    assert val["moved+registered"] > val["moved"] + 5 and val["moved_tiles_moved"] == 1.0
    assert "moved" not in result["splits"]["train"]["mean"]
    text = knot_ceiling.table(result)
    assert "| generated: moved + tile registration | - |" in text
    (gen / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match="img1.png"):
        knot_ceiling.main(["--root", str(tmp_path), "--out", str(out), "--splits", "val", "--support", "8",
                           "--generated", f"moved={gen}", "--generated-split", "val"])
    with pytest.raises(SystemExit):
        knot_ceiling.main(["--root", str(tmp_path), "--out", str(out), "--generated", "bicubic=" + str(gen)])


@pytest.mark.slow
def test_knot_gap_diagnoses_a_velocity_conditioned_on_the_hr_pixels(tmp_path):
    """experiments/studies/knot_gap/knot_gap.py end to end on a 2-step checkpoint whose velocity takes the HR latent
    and pixels: every section is filled and the integration error of a solver against itself is 0."""
    from experiments.studies.knot_gap import knot_gap
    from degflow.training import train
    from test_train import config, train_rae

    train_rae(tmp_path / "rae" / "tiny", steps=2)
    run = tmp_path / "lfm" / "tiny"
    train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=2", "stage.val_every=2",
                  "model.lfm.cond_channels=196", "eval.lpips=false", "loss.lpips_weight=0",
                  "solver.method=rk4", "solver.steps=4"]), run)
    out = tmp_path / "gap.json"
    assert knot_gap.main(["--ckpt", str(run / "checkpoints" / "last.pt"), "--out", str(out), "--max-images", "1",
                          "--bins", "2", "--ref-steps", "4"]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 1 and len(result["velocity"]["relative_full"]) == 2
    for row in result["knots"].values():
        assert row["integration_rel"] == pytest.approx(0.0, abs=1e-12)      # rk4/4 against rk4/4
        assert np.isfinite([row["psnr_gen"], row["psnr_oracle"], row["gap_tiles"]]).all()
