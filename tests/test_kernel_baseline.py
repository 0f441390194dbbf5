"""The fitted-kernel baseline (issue 26): least-squares kernels at any float scale, carried to
scales that were not fitted, fitted from a data option's training pairs, cached and loaded as
a verified file; the bad inputs it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from degflow.baselines.kernel import (
    apply_kernel,
    apply_linear_degradation,
    hr_lattices,
    kernel_normal_equations,
    kernel_side,
    linear_degradation_normal_equations,
    resample_kernel,
    split_weights,
)
from degflow.baselines.kernel_baseline import (
    KernelDegradation,
    KernelFileError,
    fit_kernels,
    load_kernel_file,
)
from degflow.core.scales import scale_key
from degflow.data import build_data
from degflow.data.images import read_image, write_image
from degflow.data.kernel_fit import bundle_pairs, folder_pairs, kernel_baseline, pairs_fingerprint
from degflow.data.sr_pairs import pair_folder
from degflow.infra.checkpoint import save_checkpoint
from degflow.infra.digests import save_sealed


class _Evil:
    """An object a pickle would rebuild (and could run code through): kernel files never load one."""


def _gaussian(k: int, sigma: float) -> torch.Tensor:
    o = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-0.5 * (o / sigma) ** 2)
    return g[:, None] * g[None, :] / g.sum() ** 2


def _camera_kernel(scale: float, support_lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A known camera: Gaussian of 0.45 LR px, a colour matrix and an offset, the same in LR pixels at every scale."""
    k = kernel_side(scale, support_lr)
    colour = torch.tensor([[0.9, 0.08, 0.0], [0.05, 0.85, 0.05], [0.0, 0.1, 0.8]], dtype=torch.float64)
    kern = colour[:, :, None, None] * _gaussian(k, 0.45 * scale)
    return kern, torch.tensor([0.02, -0.01, 0.03], dtype=torch.float64)


def _texture(seed: int, size: int) -> torch.Tensor:
    """A random photo-like image [3, size, size] in [-1, 1] (noise at several octaves)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 3, size, size)
    for octave in (4, 8, 16, 32, size):
        n = torch.rand(1, 3, octave, octave, generator=g) * 2 - 1
        x += torch.nn.functional.interpolate(n, size=(size, size), mode="bicubic", align_corners=False) / 3
    return x.clamp(-1, 1)[0]


def test_at_an_integer_scale_the_lattice_fit_is_the_strided_window_fit():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 40, 32) * 2 - 1
    weights = torch.randn(3 * 8 * 8 + 1, 3, dtype=torch.float64) * 0.02
    kern, bias = split_weights(weights, 8)
    assert torch.equal(apply_kernel(hr, kern, bias, (10, 8)), apply_linear_degradation(hr, weights, 4, 8))
    ours = kernel_normal_equations(hr, apply_kernel(hr, kern, bias, (10, 8)), 8)
    reference = linear_degradation_normal_equations(hr, apply_kernel(hr, kern, bias, (10, 8)), 4, 8)
    assert torch.allclose(ours[0], reference[0]) and torch.allclose(ours[1], reference[1])


def test_the_lattice_of_a_non_integer_scale_samples_a_smooth_image_at_the_lr_pixel_centres():
    # a quadratic image is reproduced exactly by Keys interpolation (a = -1/2) away from the border
    yy, xx = torch.meshgrid(torch.arange(60, dtype=torch.float64), torch.arange(50, dtype=torch.float64), indexing="ij")
    hr = (0.001 * (yy - 20) ** 2 - 0.002 * xx * yy + 0.01 * xx).expand(1, 3, 60, 50)
    h, w, k = 22, 19, 6                                               # steps 60/22 and 50/19: non-integer
    lattice = hr_lattices(hr, (h, w), k)                              # [1, 3, h, k, w, k]
    cy = (torch.arange(h, dtype=torch.float64) + 0.5) * 60 / h - 0.5
    cx = (torch.arange(w, dtype=torch.float64) + 0.5) * 50 / w - 0.5
    off = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    py, px = (cy[:, None] + off).reshape(h, k, 1, 1), (cx[:, None] + off).reshape(1, 1, w, k)
    expected = 0.001 * (py - 20) ** 2 - 0.002 * px * py + 0.01 * px
    inside = (slice(2, -2), slice(None), slice(2, -2), slice(None))  # lattice points with 4 taps inside the image
    assert torch.allclose(lattice[0, 1][inside], expected.expand(h, k, w, k)[inside], atol=1e-10)


def test_kernel_side_keeps_the_parity_of_the_integer_scale():
    assert [kernel_side(s, 4) for s in (1, 2, 3, 4)] == [5, 8, 13, 16]
    assert kernel_side(2.5, 4) == 10 and kernel_side(1.25, 4) == 5
    with pytest.raises(ValueError, match="scale"):
        kernel_side(0.5, 4)


def test_a_carried_kernel_keeps_its_shape_in_lr_pixels_and_its_gain_exactly():
    k4 = _gaussian(32, 4.0)                     # 1 LR px at x4
    for s in (1.5, 2.0, 3.3, 6.0):
        carried = resample_kernel(k4, 4.0, s, kernel_side(s, 8))
        expected = _gaussian(kernel_side(s, 8), s)
        assert (carried - expected).abs().max() < 0.02 * expected.max()       # within 2% of the peak
        assert math.isclose(float(carried.sum()), float(k4.sum()), rel_tol=1e-12)
    assert torch.equal(resample_kernel(k4, 4.0, 4.0, 32), k4)


def test_every_float_scale_gives_exactly_round_h_over_s_by_round_w_over_s():
    kern, bias = _camera_kernel(2.0, 2)
    model = KernelDegradation((2.0,), (kern,), (bias,), 2.0)
    hr = torch.rand(3, 37, 50) * 2 - 1
    for s in (1.0, 1.1, 1.37, 2.0, 2.5, math.pi, 3.999, 7.3):
        lr = model.degrade(hr, s)
        assert tuple(lr.shape) == (3, round(37 / s), round(50 / s)), s
        assert lr.abs().max() <= 1
    assert torch.equal(model.degrade(hr, 1.0), hr)
    with pytest.raises(ValueError, match="scale"):
        model.degrade(hr, 0.9)
    with pytest.raises(ValueError, match="scale"):
        model.degrade(hr, float("nan"))


def test_between_and_beyond_the_fitted_scales_the_kernels_follow_the_rule():
    k2, b2 = _camera_kernel(2.0, 3)
    k4, b4 = _camera_kernel(4.0, 3)
    model = KernelDegradation((2.0, 4.0), (k2, 2 * k4), (b2, b4 + 0.1), 3.0)
    assert torch.equal(model.kernel_at(2.0)[0], k2) and torch.equal(model.kernel_at(4.0)[0], 2 * k4)
    kern, bias = model.kernel_at(3.0)             # halfway: the mean of the two kernels carried to x3
    expected = 0.5 * resample_kernel(k2, 2.0, 3.0, kernel_side(3.0, 3)) + resample_kernel(k4, 4.0, 3.0, kernel_side(3.0, 3))
    assert torch.allclose(kern, expected) and torch.allclose(bias, 0.5 * (b2 + b4 + 0.1))
    assert torch.allclose(model.kernel_at(6.0)[0], resample_kernel(2 * k4, 4.0, 6.0, kernel_side(6.0, 3)))
    near = model.kernel_at(4.0 - 1e-9)[0]
    assert (near - 2 * k4).abs().max() < 1e-6   # continuous at a fitted scale


def _camera_tree(root: Path, scales=(2.5, 4.0), images=6, size=128, sigma8: float = 0.0, seed: int = 0) -> Path:
    """``root/HR`` + ``root/x{s}`` (true LR size, 8-bit PNG) made by the known camera of :func:`_camera_kernel`,
    with white Gaussian noise of ``sigma8`` 8-bit levels."""
    g = torch.Generator().manual_seed(seed + 1000)
    for i in range(images):
        hr = (_texture(seed + i, size) * 127.5).round() / 127.5
        write_image(root / "HR" / f"img{i}.png", hr)
        for s in scales:
            kern, bias = _camera_kernel(s, 2)
            lr = apply_kernel(hr[None], kern, bias, (round(size / s), round(size / s)))[0]
            lr = lr + torch.randn(lr.shape, generator=g).to(lr) * (2 * sigma8 / 255)
            write_image(root / scale_key(s) / f"img{i}.png", lr.clamp(-1, 1))
    return root


@pytest.fixture(scope="module")
def camera_tree(tmp_path_factory) -> Path:
    return _camera_tree(tmp_path_factory.mktemp("camera"))


def test_a_known_kernel_is_recovered_from_a_generated_tree_at_integer_and_non_integer_scales(camera_tree):
    pairs = folder_pairs(pair_folder(camera_tree, [2.5, 4.0]))
    fitted, pixels = fit_kernels(((p.hr, p.lr) for p in pairs), [2.5, 4.0], support_lr=2.0)
    for s in (2.5, 4.0):
        true_kernel, true_bias = _camera_kernel(s, 2)
        kern, bias = fitted[s]
        assert (kern - true_kernel).norm() / true_kernel.norm() < 0.03, s
        assert (bias - true_bias).abs().max() < 0.01
        assert pixels[s] == 6 * round(128 / s) ** 2


def test_a_known_noise_level_is_recovered_and_kernel_noise_draws_it_seeded(tmp_path):
    tree = _camera_tree(tmp_path / "noisy", scales=(4.0,), images=6, sigma8=3.0)
    pairs = folder_pairs(pair_folder(tree, [4.0]))
    model = kernel_baseline(pairs, "noisy camera", noise=True, support_lr=2.0, cache_dir=tmp_path / "cache")
    sigma = 2 * 3.0 / 255                                                            # 3 levels of 255, in [-1, 1] units
    hr = pairs[0].hr
    truth = apply_kernel(hr[None], *_camera_kernel(4.0, 2), (32, 32))[0]
    assert float((model.degrade(hr, 4.0) - truth).pow(2).mean().sqrt()) < 0.3 * sigma    # the noise is not fitted as signal
    fitted = float(model.noise.variance[0].mean().sqrt())
    assert fitted == pytest.approx(math.sqrt(sigma ** 2 + (2 / 255) ** 2 / 12), rel=0.1)   # + 8-bit rounding
    clean = model.degrade(hr, 4.0)
    noisy = model.degrade(hr, 4.0, noise_strength=1.0, generator=torch.Generator().manual_seed(3))
    assert float((noisy - clean).std()) == pytest.approx(fitted, rel=0.15)
    again = model.degrade(hr, 4.0, noise_strength=1.0, generator=torch.Generator().manual_seed(3))
    other = model.degrade(hr, 4.0, noise_strength=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    reloaded = load_kernel_file(model.provenance["file"]["path"], pairs_fingerprint(pairs))
    assert torch.equal(reloaded.degrade(hr, 4.0, noise_strength=1.0, generator=torch.Generator().manual_seed(3)), noisy)
    with pytest.raises(ValueError, match="Generator is required"):
        model.degrade(hr, 4.0, noise_strength=1.0)


def test_a_data_option_fits_on_its_training_split_caches_by_fingerprint_and_reloads(camera_tree, tmp_path):
    bundle = build_data("paired", root=str(camera_tree), train_scales=[1, 2.5, 4], crop_size=16, val_fraction=0.34)
    pairs = bundle_pairs(bundle)
    assert len(pairs) == len(bundle.train.records) == 4                  # the validation images are not used
    assert all(tuple(p.lr[4.0].shape[-2:]) == (32, 32) for p in pairs)     # true LR size
    cache = tmp_path / "cache"
    model = kernel_baseline(pairs, "camera", cache_dir=cache, support_lr=2.0)
    files = list(cache.glob("kernel-*.pt"))
    assert len(files) == 1 and files[0].name.startswith(f"kernel-{pairs_fingerprint(pairs)[:16]}")
    again = kernel_baseline(pairs, "camera", cache_dir=cache, support_lr=2.0)
    assert again.provenance["file"]["sha256"] == model.provenance["file"]["sha256"]
    assert all(torch.equal(a, b) for a, b in zip(model.kernels, again.kernels))
    assert model.provenance["data"]["names"] == sorted(p.name for p in pairs)
    # a held-out scale of this exactly scale-normalised camera is predicted by the rule
    hr = pairs[0].hr
    kern, bias = _camera_kernel(3.2, 2)
    truth = apply_kernel(hr[None], kern, bias, (40, 40))[0]
    err = (model.degrade(hr, 3.2) - truth).pow(2).mean().sqrt()
    assert err < 0.01


def test_bad_kernel_files_and_inputs_are_refused_in_one_line(camera_tree, tmp_path):
    pairs = folder_pairs(pair_folder(camera_tree, [4.0]))
    model = kernel_baseline(pairs, "camera x4", cache_dir=tmp_path, support_lr=2.0)
    path = Path(model.provenance["file"]["path"])
    assert load_kernel_file(path, pairs_fingerprint(pairs)).scales == (4.0,)
    other = folder_pairs(pair_folder(camera_tree, [2.5]))
    with pytest.raises(KernelFileError, match="fitted on other data"):
        kernel_baseline(other, "other", kernel_file=path)
    damaged = tmp_path / "damaged.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01                                          # one bit flipped inside
    damaged.write_bytes(bytes(data))
    with pytest.raises(KernelFileError, match="is damaged"):
        load_kernel_file(damaged)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(KernelFileError, match="is damaged"):
        load_kernel_file(truncated)
    evil = tmp_path / "evil.pt"
    save_sealed(evil, {"format": "degflow", "format_version": 1, "kind": "kernel", "kernel": _Evil()})
    with pytest.raises(KernelFileError, match="pickled Python objects"):       # sealed, but never unpickled
        load_kernel_file(evil)
    stage1 = tmp_path / "rae.pt"
    save_checkpoint(stage1, {"kind": "rae", "step": 1})
    with pytest.raises(KernelFileError, match="'rae' checkpoint, not a kernel file"):
        load_kernel_file(stage1)
    with pytest.raises(KernelFileError, match="no such checkpoint file"):
        load_kernel_file(tmp_path / "missing.pt")
    with pytest.raises(KernelFileError) as refused:
        load_kernel_file(damaged)
    assert "\n" not in str(refused.value)                                  # one line
    hr_only = tmp_path / "hr_only"
    write_image(hr_only / "HR" / "a.png", torch.zeros(3, 16, 16))
    (hr_only / "x4").mkdir()
    with pytest.raises(ValueError, match="kernel fit: no HR/LR pairs"):
        folder_pairs(pair_folder(hr_only, [4.0]))
    with pytest.raises(ValueError, match="no training pairs"):
        kernel_baseline([], "nothing")


def test_the_evaluation_scores_the_kernel_lr_upsampled_like_the_other_hr_only_baselines(camera_tree, tmp_path):
    from degflow.core.resize import upsample_to
    from degflow.jobs.evaluation import EvalSettings, evaluate_folders
    from degflow.metrics.image import psnr_y

    pairs = folder_pairs(pair_folder(camera_tree, [2.5, 4.0]))
    model = kernel_baseline(pairs, "camera", support_lr=2.0)
    settings = EvalSettings(methods=("bicubic", "kernel"), lpips=False)
    result = evaluate_folders(camera_tree, camera_tree, camera_tree / "HR", [4.0], settings, kernel=model)
    rows = {(r["image"], r["method"]): r for r in result.records}
    p = pairs[0]
    real = upsample_to(p.lr[4.0][None], 128, 128)
    expected = float(psnr_y(upsample_to(model.degrade(p.hr, 4.0)[None], 128, 128), real, shave=0))
    assert rows[(p.name, "kernel")]["psnr_y"] == pytest.approx(expected)
    assert rows[(p.name, "kernel")]["psnr_y"] > rows[(p.name, "bicubic")]["psnr_y"] + 3
    assert result.settings["kernel"]["data"]["fingerprint"] == pairs_fingerprint(pairs)
    with pytest.raises(ValueError, match="kernel"):
        evaluate_folders(camera_tree, camera_tree, camera_tree / "HR", [4.0], settings)


def test_synthesis_writes_the_kernel_set_at_true_size_with_manifest_lines(camera_tree, tmp_path):
    from test_synthesis import _write_lfm_checkpoint

    from degflow.core.solvers import SolverSpec
    from degflow.generation import Synthesizer
    from degflow.jobs.lr_dataset import write_lr_dataset

    model = kernel_baseline(folder_pairs(pair_folder(camera_tree, [2.5, 4.0])), "camera", support_lr=2.0,
                            cache_dir=tmp_path / "cache")
    synth = Synthesizer.from_checkpoint(_write_lfm_checkpoint(tmp_path / "lfm.pt", SolverSpec.create("euler", steps=2)))
    hr_dir = tmp_path / "hr"
    write_image(hr_dir / "a.png", _texture(7, 40)[:, :, :36])
    summary = write_lr_dataset(synth, hr_dir, tmp_path / "out", [1.7, 3.0], baselines=["kernel"],
                               kernel_file=model.provenance["file"]["path"], progress=False)
    assert summary.failed == 0
    for s in (1.7, 3.0):
        written = read_image(tmp_path / "out" / "baselines" / "kernel" / "LR" / scale_key(s) / "a.png")
        assert tuple(written.shape) == (3, round(40 / s), round(36 / s))
        expected = model.degrade(read_image(hr_dir / "a.png"), s)
        assert (written - expected).abs().max() <= 1 / 127.5 + 1e-6            # 8-bit PNG
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    kernel_lines = [x for x in lines if x["kind"] == "kernel"]
    assert len(kernel_lines) == 2 and all(x["kernel_sha256"] == model.provenance["file"]["sha256"] for x in kernel_lines)
    with pytest.raises(ValueError, match="kernel_file"):
        write_lr_dataset(synth, hr_dir, tmp_path / "out2", [2.0], baselines=["kernel"], progress=False)


@pytest.mark.slow
def test_the_sr_comparison_trains_on_the_kernel_sets_offline_and_online_fitted_on_its_real_training_pairs(tmp_path):
    from test_sr import TINY_SR, _compare
    from test_synthesis import _write_lfm_checkpoint

    from degflow.core.solvers import SolverSpec

    ckpt = _write_lfm_checkpoint(tmp_path / "lfm.pt", SolverSpec.create("rk4", steps=2))
    out = tmp_path / "out"
    proc = _compare("-m", "sr_setup=demo", f"ckpt={ckpt}", f"out={out}", "trainset=kernel,online_kernel",
                    "seed=0", "online.context=4", *TINY_SR)        # context 4: a crop of these 64-px photos holds it
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["aggregate"]["liif"]
    assert rows["kernel"]["pairs"] == {"kernel": {"x1.5": 5, "x2": 5, "x3": 5}, "real": {"x2": 5}}
    assert all(math.isfinite(c["psnr_y"][0]) for c in rows["online_kernel"]["cells"].values())
    fitted = list((out / "cache" / "kernel").glob("kernel-*.pt"))
    assert len(fitted) == 1 and load_kernel_file(fitted[0]).scales == (2.0,)     # sr_setup.real_scales=[2]
    result = json.loads((out / "runs/liif/online_kernel/seed-0/result.json").read_text())
    assert result["online"]["degradation"]["kind"] == "kernel"
    assert result["online"]["degradation"]["kernel_sha256"] == load_kernel_file(fitted[0]).provenance["file"]["sha256"]
    # these 64-px demo photos leave LR too small for the noise model's 32-px spectrum tiles: said in one line
    refused = _compare("sr_setup=demo", f"ckpt={ckpt}", f"out={out}", "trainset=kernel_noise", "seed=0", *TINY_SR)
    assert refused.returncode == 2 and "no noise model, so no kernel_noise" in refused.stderr


def test_the_online_kernel_degrades_each_sample_at_its_scale_from_its_seed(camera_tree):
    from degflow.sr.online import build_online_degradation

    model = kernel_baseline(folder_pairs(pair_folder(camera_tree, [2.5, 4.0])), "camera", support_lr=2.0)
    hr = torch.stack([_texture(1, 48), _texture(2, 48)])
    plain = build_online_degradation("kernel", {"kernel": model})
    noisy = build_online_degradation("kernel_noise", {"kernel": model})
    lr = plain(hr, [1.5, 3.2], [0, 1])
    assert [tuple(x.shape) for x in lr] == [(3, 32, 32), (3, 15, 15)]
    assert torch.equal(lr[1], plain(hr[1:], [3.2], [7])[0])                  # its own crop and scale only
    levels = (lr[0] + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-3)                 # 8-bit values
    a, b = noisy(hr, [2.0, 2.0], [5, 6]), noisy(hr, [2.0, 2.0], [5, 9])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])           # each sample from its own seed
    with pytest.raises(ValueError, match="kernel_file"):
        build_online_degradation("kernel", {})


@pytest.mark.slow
def test_stage2_validation_scores_the_kernel_baseline_and_the_sweep_report_shows_it(tmp_path):
    from test_train import config, train_rae

    from degflow.jobs.sweep_report import Job, table
    from degflow.training import train

    train_rae(tmp_path / "rae" / "tiny", steps=2)
    metrics = train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=1", "stage.val_every=1",
                            "loss.lpips_weight=0", "eval.lpips=false", "eval.kernel_baseline=true"]),
                    tmp_path / "lfm" / "k")
    rows = metrics["scales"]
    assert all(rows[k]["psnr_y_kernel"] > rows[k]["psnr_y_bicubic"] + 2 for k in ("x3", "x4"))   # 160-px photos
    assert math.isfinite(rows["x2"]["psnr_y_kernel"]) and rows["x1"].get("psnr_y_kernel") is None
    assert len(list((tmp_path / "kernel_cache").glob("kernel-*.pt"))) == 1
    header, values = table([Job(overrides=["eval.kernel_baseline=true"], status="completed", metrics=metrics)], tmp_path)
    assert "x3*/psnr_y_kernel" in header
    assert values[0][header.index("x3*/psnr_y_kernel")] == rows["x3"]["psnr_y_kernel"]
