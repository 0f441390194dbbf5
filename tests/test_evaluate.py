"""The evaluation command: one checkpoint (random tiny weights) against real LR images,
with the baselines, tables, plots, folder mode and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from degflow.infra.checkpoint import save_checkpoint
from degflow.models.registry import model_entry
from degflow.data.images import write_image
from degflow.jobs.evaluation import (
    EvalSettings,
    collect_sweep,
    evaluate_dataset,
    evaluate_folders,
    load_model,
    procedural_seed,
    run,
    write_results,
)
from degflow.metrics.image import psnr_y
from degflow.core.resize import bicubic_baseline
from degflow.models.rae import RAE
from degflow.models.unet import VelocityUNet
from degflow.baselines.procedural import realesrgan as degrade
from degflow.core.timemap import TimeMap

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCALES = [1.0, 2.0, 4.0]


def _tiny_checkpoint(path: Path, kind: str = "lfm") -> Path:
    torch.manual_seed(0)
    rae = RAE(widths=(8, 8, 8, 8), num_res_blocks=1)
    velocity = VelocityUNet(nf=8, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0, image_size=4, init_scale=1.0)
    save_checkpoint(path, {
        "kind": kind, "step": 1,
        "models": {"rae": model_entry(rae), "velocity": model_entry(velocity)},
        "train_scales": TRAIN_SCALES,
        "time_map": TimeMap.nominal(TRAIN_SCALES).to_dict(),
        "extra": {"solver": {"method": "euler", "steps": 2, "rtol": None, "atol": None, "output_mode": "grid"},
                  "spline": {"path": "cubic"}},
    })
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "lfm.pt")


class _Pairs(torch.utils.data.Dataset):
    """Aligned HR / real-LR items like a data option's evaluation split (LR at HR size)."""

    def __init__(self, n=2, scales=(2.0, 3.0, 4.0), size=32, broken=()):
        g = torch.Generator().manual_seed(1)
        self.hr = [torch.rand(3, size, size, generator=g) * 2 - 1 for _ in range(n)]
        self.scales = tuple(scales)
        self.broken = set(broken)

    def __len__(self):
        return len(self.hr)

    def __getitem__(self, i):
        if i in self.broken:
            raise ValueError(f"size mismatch: x4/img{i}.png is 7x7 but its HR img{i}.png is 32x32")
        hr = self.hr[i]
        lr = torch.stack([bicubic_baseline(hr, s) * 0.9 for s in self.scales])
        return {"name": f"img{i}", "hr": hr, "lr": lr, "scales": torch.tensor(self.scales)}


def _settings(**kw) -> EvalSettings:
    kw.setdefault("lpips", False)
    return EvalSettings(**kw)


def _solver(steps=2):
    return {"method": "euler", "steps": steps, "rtol": None, "atol": None, "output_mode": "grid"}


def test_every_method_is_measured_at_every_scale_and_heldout_scales_are_marked(ckpt):
    synth = load_model(ckpt, "cpu", _solver())
    result = evaluate_dataset(synth, _Pairs(), (1.0, 2.0, 3.0, 4.0), None, _settings())
    assert result.images == 2 and not result.failures
    per_scale = result.per_scale()
    assert set(per_scale) == {"degflow", "bicubic", "procedural", "ae_interp"}
    for rows in per_scale.values():
        assert set(rows) == {"2", "3", "4"}
        assert rows["3"]["heldout"] is True and rows["2"]["heldout"] is False
        assert all(rows[s]["n"] == 2 for s in rows)
    summary = result.summary()
    # NFE and seconds are those of the model's own call on one image (all scales in one solve)
    assert summary["degflow"]["nfe"] == synth.generate(_Pairs()[0]["hr"][None], [2.0, 3.0, 4.0]).nfe
    assert summary["degflow"]["seconds_per_image"] > 0
    assert summary["bicubic"]["nfe"] is None and summary["bicubic"]["seconds_per_image"] > 0
    # the held-out group holds exactly the x3 values
    assert summary["bicubic"]["heldout"]["psnr_y"] == pytest.approx(per_scale["bicubic"]["3"]["psnr_y"])


def test_baseline_numbers_equal_the_metric_functions_on_the_same_images(ckpt):
    synth = load_model(ckpt, "cpu", _solver())
    data = _Pairs(n=1)
    result = evaluate_dataset(synth, data, (1.0, 2.0, 3.0, 4.0), [3.0], _settings(methods=("bicubic", "procedural")))
    item = data[0]
    hr, real = item["hr"][None], item["lr"][1][None]
    rec = {r["method"]: r for r in result.records}
    assert rec["bicubic"]["psnr_y"] == pytest.approx(float(psnr_y(bicubic_baseline(hr, 3.0), real, shave=0)))
    proc = degrade(hr, 3.0, seed=procedural_seed(0, "img0", 3.0), size="hr")
    assert rec["procedural"]["psnr_y"] == pytest.approx(float(psnr_y(proc, real, shave=0)))


@pytest.mark.slow
def test_true_lr_scoring_resizes_the_model_lr_to_true_size_and_back_and_leaves_the_baselines(ckpt):
    """eval.hr_size_output=from_lr scores degflow / ae_interp as synthesize.py size=lr writes them
    (resized to true LR size), bicubic-upsampled like the real LR; the baselines do not change."""
    from degflow.metrics.image import psnr_y as metric
    from degflow.core.resize import resize_to_lr, upsample_to

    synth = load_model(ckpt, "cpu", _solver())
    data = _Pairs(n=1)
    as_is = evaluate_dataset(synth, data, (1.0, 2.0, 3.0, 4.0), [3.0, 4.0],
                             _settings(methods=("degflow", "ae_interp", "bicubic")))
    true_lr = evaluate_dataset(synth, data, (1.0, 2.0, 3.0, 4.0), [3.0, 4.0],
                               _settings(methods=("degflow", "ae_interp", "bicubic"), hr_size_output="from_lr"))
    assert true_lr.settings["hr_size_output"] == "from_lr" and as_is.settings["hr_size_output"] == "decoded"
    item = data[0]
    hr = item["hr"][None]
    gen = synth.generate(hr, [3.0, 4.0]).images
    real = {s: item["lr"][i][None] for i, s in enumerate((2.0, 3.0, 4.0))}
    oracle = synth.interpolate_real(hr, {2.0: real[2.0], 4.0: real[4.0]}, [3.0, 4.0]).images
    rec = {(r["method"], r["scale"]): r["psnr_y"] for r in true_lr.records}
    raw = {(r["method"], r["scale"]): r["psnr_y"] for r in as_is.records}
    for s in (3.0, 4.0):
        for method, x in (("degflow", gen[s]), ("ae_interp", oracle[s])):
            assert rec[(method, s)] == pytest.approx(float(metric(upsample_to(resize_to_lr(x, s), 32, 32), real[s], shave=0)))
            assert raw[(method, s)] == pytest.approx(float(metric(x, real[s], shave=0)))
            assert rec[(method, s)] != pytest.approx(raw[(method, s)])
        assert rec[("bicubic", s)] == pytest.approx(raw[("bicubic", s)])
    with pytest.raises(ValueError, match=r"eval.hr_size_output='lr' is not one of \['decoded', 'from_lr'\]"):
        _settings(hr_size_output="lr")


@pytest.mark.slow
def test_same_settings_give_the_same_table(ckpt):
    synth = load_model(ckpt, "cpu", _solver())
    a = evaluate_dataset(synth, _Pairs(), (1.0, 2.0, 3.0, 4.0), None, _settings()).per_scale()
    b = evaluate_dataset(synth, _Pairs(), (1.0, 2.0, 3.0, 4.0), None, _settings()).per_scale()
    assert a == b


@pytest.mark.slow
def test_one_bad_image_is_reported_and_skipped(ckpt):
    synth = load_model(ckpt, "cpu", _solver())
    result = evaluate_dataset(synth, _Pairs(n=3, broken={1}), (1.0, 2.0, 3.0, 4.0), None,
                              _settings(methods=("degflow", "bicubic")))
    assert result.images == 2
    assert [f["image"] for f in result.failures] == ["#1"]
    assert "size mismatch" in result.failures[0]["error"]
    assert {r["image"] for r in result.records} == {"img0", "img2"}


def test_a_dataset_without_the_requested_scale_is_refused_naming_the_key(ckpt):
    synth = load_model(ckpt, "cpu", _solver())
    with pytest.raises(ValueError, match=r"scales: x2\.5 is not in the data \(data\.val_scales"):
        evaluate_dataset(synth, _Pairs(), (1.0, 2.0, 3.0, 4.0), [2.5], _settings())
    with pytest.raises(ValueError, match=r"methods: ae_interp needs .*x2"):
        evaluate_dataset(synth, _Pairs(scales=(3.0, 4.0)), (1.0, 3.0, 4.0), None, _settings())


def test_a_stage1_checkpoint_is_refused_naming_the_file_and_key(tmp_path):
    path = _tiny_checkpoint(tmp_path / "rae.pt", kind="rae")
    with pytest.raises(ValueError, match=r"ckpt=.*rae\.pt.*stage-'rae'.*expected a stage-'lfm'"):
        load_model(path, "cpu", _solver())


@pytest.mark.slow
def test_results_are_written_as_json_markdown_and_csv(ckpt, tmp_path):
    synth = load_model(ckpt, "cpu", _solver())
    result = evaluate_dataset(synth, _Pairs(), (1.0, 2.0, 3.0, 4.0), None, _settings())
    paths = write_results(result, tmp_path, objective=result.objective("degflow"))
    data = json.loads(paths["json"].read_text())
    assert data["objective"] == pytest.approx(data["per_scale"]["degflow"]["3"]["psnr_y"])
    assert len(data["records"]) == 2 * 3 * 4
    md = paths["markdown"].read_text()
    assert "| method | x2 | x3* | x4 |" in md and "## AKLD (lower is better)" in md
    assert len(paths["csv"].read_text().strip().splitlines()) == 1 + 4 * 3


def _write_folder_tree(root: Path, scales=(2.0, 4.0), names=("a", "b")):
    g = torch.Generator().manual_seed(3)
    for n in names:
        hr = torch.round(torch.rand(3, 32, 32, generator=g) * 255) / 127.5 - 1   # 8-bit, as read back
        write_image(root / "HR" / f"{n}.png", hr)
        for s in scales:
            label = f"x{s:g}"
            real_lr = bicubic_baseline(hr, s)                           # real at HR size
            gen_lr = torch.nn.functional.interpolate(real_lr[None], size=(round(32 / s),) * 2, mode="area")[0]
            write_image(root / "real" / label / f"{n}.png", real_lr)
            write_image(root / "LR" / label / f"{n}.png", gen_lr)     # generated at true LR size


def test_folder_mode_compares_a_synthesized_folder_with_real_lr(tmp_path):
    _write_folder_tree(tmp_path)
    result = evaluate_folders(tmp_path / "LR", tmp_path / "real", tmp_path / "HR", None,
                              _settings(methods=("bicubic",)), seen_scales=[1, 2])
    assert result.images == 2
    per_scale = result.per_scale()
    assert set(per_scale) == {"generated", "bicubic"}
    assert per_scale["generated"]["4"]["heldout"] is True and per_scale["generated"]["2"]["heldout"] is False
    # bicubic IS the real degradation here: exact, so its KL is the minimum possible (0)
    assert per_scale["bicubic"]["2"]["kl"] == pytest.approx(0.0, abs=1e-12)
    assert per_scale["generated"]["2"]["psnr_y"] > 25


def test_folder_mode_errors_name_the_key_and_the_folder(tmp_path):
    _write_folder_tree(tmp_path)
    (tmp_path / "empty" / "x2").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"real=.*empty.*x2.*holds no images"):
        evaluate_folders(tmp_path / "LR", tmp_path / "empty", tmp_path / "HR", None, _settings())
    with pytest.raises(ValueError, match=r"generated=.*nowhere.*not a folder"):
        evaluate_folders(tmp_path / "nowhere", tmp_path / "real", tmp_path / "HR", None, _settings())
    with pytest.raises(ValueError, match=r"scales: x3 is not in generated="):
        evaluate_folders(tmp_path / "LR", tmp_path / "real", tmp_path / "HR", [3], _settings())


def test_folder_mode_reports_a_mismatched_image_and_goes_on(tmp_path):
    _write_folder_tree(tmp_path)
    write_image(tmp_path / "LR" / "x2" / "b.png", torch.zeros(3, 7, 9))
    result = evaluate_folders(tmp_path / "LR", tmp_path / "real", tmp_path / "HR", None, _settings(methods=()))
    assert result.images == 1
    assert result.failures[0]["image"] == "b" and "size mismatch" in result.failures[0]["error"]
    assert "LR/x2/b.png" in result.failures[0]["error"]


def _config(ckpt, out, **kw):
    cfg = {
        "ckpt": str(ckpt), "out": str(out), "scales": None, "methods": ["degflow", "bicubic"],
        "allow_extrapolation": False, "procedural_seed": 0,
        "eval": {"shave": 0, "lpips": False, "lpips_backbone_weights": None, "max_images": None,
                 "hr_size_output": "decoded"},
        "generated": None, "real": None, "hr": None, "seen_scales": None, "collect": None,
        "plots": True, "crops": {"size": 16, "images": 1}, "objective": "psnr_y",
        "device": "cpu", "precision": "fp32", "tile_size": 1024, "tile_overlap": 256,
        "solver": _solver(), "data": {},
    }
    cfg.update(kw)
    return cfg


def test_folder_job_writes_tables_and_plots(tmp_path):
    _write_folder_tree(tmp_path / "d")
    out = run(_config(None, tmp_path / "res", generated=str(tmp_path / "d" / "LR"),
                      real=str(tmp_path / "d" / "real"), methods=["bicubic", "procedural"]), tmp_path / "unused")
    assert out["objective"] is not None
    for name in ("eval.json", "eval.md", "eval.csv", "metric_vs_scale.png"):
        assert (tmp_path / "res" / name).stat().st_size > 0
    crops = list((tmp_path / "res").glob("crops_*.png"))
    assert len(crops) == 1 and crops[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_collect_orders_solver_settings_by_nfe(ckpt, tmp_path):
    synth_results = []
    for steps in (4, 1):
        synth = load_model(ckpt, "cpu", _solver(steps))
        result = evaluate_dataset(synth, _Pairs(n=1), (1.0, 2.0, 3.0, 4.0), None, _settings(methods=("degflow",)))
        write_results(result, tmp_path / f"job{steps}", result.objective("degflow"))
        synth_results.append(result)
    paths = collect_sweep(tmp_path)
    lines = paths["markdown"].read_text().splitlines()
    rows = [l for l in lines if l.startswith("| euler")]
    assert [r.split(" | ")[0] for r in rows] == ["| euler/1", "| euler/4"]
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="collect="):
        collect_sweep(tmp_path / "job1" / "nothing")


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "degflow.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_solver_sweep_on_the_demo_data_evaluates_one_checkpoint_per_setting(ckpt, tmp_path):
    proc = _cli(f"ckpt={ckpt}", "-m", "solver=euler", "solver.steps=1,6", "scales=[2,3]",
                "methods=[degflow,bicubic]", "eval.lpips=false", "eval.max_images=1", "data.val_max_size=64",
                "plots=false", "hydra.sweep.dir=" + str(tmp_path / "sweep"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted((tmp_path / "sweep").rglob("eval.json"))
    assert len(files) == 2
    by_steps = {json.loads(f.read_text())["settings"]["solver"]["steps"]: json.loads(f.read_text()) for f in files}
    assert set(by_steps) == {1, 6}
    assert by_steps[1]["summary"]["degflow"]["nfe"] < by_steps[6]["summary"]["degflow"]["nfe"]
    assert by_steps[1]["scales"] == ["2", "3"] and by_steps[1]["images"] == 1
    # the sweep ends with its table and the PSNR-vs-NFE picture, written by the collect callback
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| euler/1 |" in table and "| euler/6 |" in table
    assert (tmp_path / "sweep" / "psnr_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_the_key_in_the_message(tmp_path):
    rae_ckpt = _tiny_checkpoint(tmp_path / "stage1.pt", kind="rae")
    proc = _cli(f"ckpt={rae_ckpt}", "eval.lpips=false", f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "ckpt=" in proc.stderr + proc.stdout and "stage-'lfm'" in proc.stderr + proc.stdout


def test_lpips_column_uses_the_pretrained_alexnet_metric(ckpt, shared_dir):
    from degflow.metrics.perceptual import load_lpips

    weights = shared_dir / "weights" / "alexnet_features.pth"
    synth = load_model(ckpt, "cpu", _solver())
    data = _Pairs(n=1)
    result = evaluate_dataset(synth, data, (1.0, 2.0, 3.0, 4.0), [2.0],
                              EvalSettings(methods=("bicubic",), lpips_backbone_weights=str(weights)))
    item = data[0]
    with torch.no_grad():
        expected = load_lpips("alex", weights)(bicubic_baseline(item["hr"][None], 2.0), item["lr"][0][None])
    assert result.records[0]["lpips"] == pytest.approx(float(expected))
    assert 0 < result.records[0]["lpips"] < 1
