"""Downstream SR (degflow/sr, degflow/sr/compare.py): networks, pairs and training sets,
training, the scoring protocol against an independent reference, and the comparison command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from degflow.data.images import read_image, write_image
from degflow.core.resize import resize_to_lr
from degflow.core.solvers import SolverSpec
from degflow.sr.fit import SRTrainSettings, load_sr_checkpoint, train_sr
from degflow.models.sr import EDSR, LIIF, build_sr_model, make_coord
from degflow.data.sr_pairs import (TRAINING_SETS, Pair, find_pairs, load_pairs, pair_folder, sample_patches,
                              training_set)
from degflow.sr.scoring import score_pairs, sr_shave
from test_synthesis import _write_lfm_checkpoint  # noqa: E402  (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def _rand_image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, h // 4 + 2, w // 4 + 2, generator=g), size=(h, w), mode="bilinear")[0]
    return x * 2 - 1


# --------------------------------------------------------------------------- networks
@pytest.mark.parametrize("scale", [2.5, 3.7])
def test_liif_returns_the_requested_size_at_fractional_scales_from_odd_inputs(scale):
    torch.manual_seed(0)
    model = LIIF(n_feats=8, n_blocks=1, mlp_hidden=16).eval()
    lr = torch.rand(2, 3, 17, 23) * 2 - 1
    size = (round(17 * scale), round(23 * scale))
    with torch.no_grad():
        out = model(lr, size, max_queries=97)       # chunked queries, a chunk size that does not divide H*W
        for p in model.mlp.parameters():            # a decoder that is not zero
            p.normal_(0, 0.1)
        whole, chunked = model(lr, size), model(lr, size, max_queries=101)
    assert out.shape == (2, 3, *size)
    assert torch.allclose(whole, chunked, atol=1e-6)          # chunking changes nothing
    assert not torch.allclose(whole, out)                     # the decoder's output is used


def test_untrained_networks_start_at_bicubic_upsampling():
    lr = torch.rand(1, 3, 9, 11) * 2 - 1
    with torch.no_grad():
        liif = LIIF(n_feats=8, n_blocks=1, mlp_hidden=16)(lr, (25, 30))
        edsr = EDSR(3, n_feats=8, n_blocks=1)(lr)
    assert torch.allclose(liif, F.interpolate(lr, size=(25, 30), mode="bicubic", align_corners=False))
    assert edsr.shape == (1, 3, 27, 33)
    assert torch.allclose(edsr, F.interpolate(lr, size=(27, 33), mode="bicubic", align_corners=False))


def test_edsr_is_fixed_integer_scale_and_refuses_fractional_scales_naming_the_key():
    assert EDSR(4, n_feats=8, n_blocks=1)(torch.zeros(1, 3, 5, 7)).shape == (1, 3, 20, 28)
    with pytest.raises(ValueError, match="sr.network=liif"):
        EDSR(2.5)
    with pytest.raises(ValueError, match=r"sr.network='vdsr' is not one of \['edsr', 'liif'\]"):
        build_sr_model("vdsr", 4)


def test_pixel_centre_coordinates_follow_the_align_corners_false_convention():
    c = make_coord(2, 4)
    assert c.shape == (2, 4, 2)
    assert torch.allclose(c[:, 0, 0], torch.tensor([-0.5, 0.5]))           # rows: (2i + 1) / 2 - 1
    assert torch.allclose(c[0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))


# --------------------------------------------------------------------------- scoring protocol
def _numpy_psnr_y(sr_u8: np.ndarray, hr_u8: np.ndarray, shave: int) -> float:
    """PSNR on BT.601 Y (16..235), data range 255, ``shave`` border pixels dropped: from the definition."""
    def y(a):
        a = a.astype(np.float64) / 255.0
        return 16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]
    d = (y(sr_u8) - y(hr_u8))[shave:-shave, shave:-shave]
    return 10 * math.log10(255.0 ** 2 / np.mean(d ** 2))


def _pair_files(tmp_path: Path, hr: np.ndarray, lr: np.ndarray, scale: float) -> Pair:
    (tmp_path / "HR").mkdir(exist_ok=True)
    (tmp_path / "LR").mkdir(exist_ok=True)
    Image.fromarray(hr).save(tmp_path / "HR" / "a.png")
    Image.fromarray(lr).save(tmp_path / "LR" / "a.png")
    return Pair("a", scale, tmp_path / "HR" / "a.png", tmp_path / "LR" / "a.png")


def test_scoring_matches_a_numpy_psnr_y_and_skimage_ssim_with_the_scale_as_shave(tmp_path):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    lr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    pair = _pair_files(tmp_path, hr, lr, 4.0)
    row = score_pairs(None, [pair], None)[0]
    sr = F.interpolate(read_image(pair.lr_path)[None], size=(40, 48), mode="bicubic", align_corners=False)
    sr_u8 = ((sr[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert row["psnr_y"] == pytest.approx(_numpy_psnr_y(sr_u8, hr, 4), abs=1e-6)

    def y(a):
        return 16.0 + (a.astype(np.float64) / 255.0) @ np.array([65.481, 128.553, 24.966])
    ssim = structural_similarity(y(sr_u8)[4:-4, 4:-4], y(hr)[4:-4, 4:-4], gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)
    assert row["ssim_y"] == pytest.approx(ssim, abs=1e-6)


def test_psnr_y_of_a_uniform_offset_is_the_closed_form_and_the_border_is_shaved(tmp_path):
    # every RGB channel +k levels -> Y differs by 219 k / 255 everywhere: PSNR = 20 log10(255 / (219 k / 255))
    k = 3
    hr = np.full((24, 24, 3), 100, dtype=np.uint8)
    sr_u8 = hr + k
    sr_u8[:3, :, :] = 255                      # damage inside the border that ceil(2.5) = 3 shaves away
    pair = _pair_files(tmp_path, hr, sr_u8, 2.5)
    model = _Identity()
    row = score_pairs(model, [pair], None)[0]
    assert sr_shave(2.5) == 3 and sr_shave(4.0) == 4
    assert row["psnr_y"] == pytest.approx(20 * math.log10(255.0 / (219.0 * k / 255.0)), abs=1e-9)


class _Identity(torch.nn.Module):
    """A "network" that returns its input (the LR file already holds the SR image)."""
    config = {"network": "liif"}

    def forward(self, lr, size):
        return lr


# --------------------------------------------------------------------------- pairs and training sets
def _tree(root: Path, names: list[str], hr_size: int, scales: list[float], lr_level: bool = True) -> Path:
    for i, n in enumerate(names):
        hr = _rand_image(hr_size, hr_size + 4, i)
        write_image(root / "HR" / f"{n}.png", hr)
        for s in scales:
            d = root / "LR" / f"x{s:g}" if lr_level else root / f"x{s:g}"
            write_image(d / f"{n}.png", resize_to_lr(hr, s))
    return root


def test_patches_are_aligned_hr_lr_crops_with_the_same_flip(tmp_path):
    hr = torch.rand(3, 32, 40) * 2 - 1
    hr8 = ((hr + 1) * 127.5).round().byte()
    lr8 = F.avg_pool2d(hr8.float()[None], 2)[0].round().byte()            # exact x2 box downsampling
    batch = sample_patches([(hr8, lr8, 2.0)], 6, 6, torch.Generator().manual_seed(0))
    for lr_p, hr_p, s in batch:
        assert lr_p.shape == (3, 6, 6) and hr_p.shape == (3, 12, 12) and s == 2.0
        down = F.avg_pool2d((hr_p[None] + 1) * 127.5, 2)[0].round() / 127.5 - 1
        assert torch.allclose(down, lr_p, atol=1e-6)


def test_each_training_set_holds_the_sources_and_scales_it_promises(tmp_path):
    real = _tree(tmp_path / "real", ["a", "b"], 32, [2, 3, 4], lr_level=False)       # HR/ + x{s}/ (RealSR layout)
    gen = _tree(tmp_path / "gen", ["a", "b"], 32, [1.5, 2, 3, 4])                   # synthesize.py's layout
    for base in ("bicubic", "procedural", "kernel", "kernel_noise"):
        _tree(tmp_path / "gen" / "baselines" / base, ["a", "b"], 32, [1.5, 2, 3, 4])
    photos = _tree(tmp_path / "photos", ["p", "q", "r"], 32, [1.5, 2, 3, 4])
    real_folder = pair_folder(real, [2, 3, 4], "real")
    kw = dict(real=real_folder, generated=gen, hr_root=gen, real_scales=[2, 4], gen_scales=[1.5, 2, 3, 4],
              test_scales=[3], photos=[photos])

    def content(name):
        return sorted({(p.source, p.scale) for p in find_pairs(training_set(name, **kw))})

    gen_scales = [1.5, 2.0, 3.0, 4.0]
    assert content("bicubic") == [("bicubic", s) for s in gen_scales]
    assert content("procedural") == [("procedural", s) for s in gen_scales]
    assert content("real") == [("real", 2.0), ("real", 4.0)]                       # the discrete scales only
    assert content("degflow") == sorted([("degflow", s) for s in gen_scales] + [("real", 2.0), ("real", 4.0)])
    assert content("oracle") == [("real", 2.0), ("real", 3.0), ("real", 4.0)]       # test scale + real grid ones
    assert content("degflow_photos") == sorted(content("degflow") + [("degflow:photos", s) for s in gen_scales])
    assert len(find_pairs(training_set("degflow_photos", **kw))) == 2 * 4 + 2 * 2 + 3 * 4
    assert list(TRAINING_SETS) == ["bicubic", "procedural", "real", "degflow", "oracle", "degflow_photos",
                                   "degflow_stochastic", "kernel", "kernel_noise"]
    for name in ("kernel", "kernel_noise"):                                         # like degflow: + the real pairs
        assert content(name) == sorted([(name, s) for s in gen_scales] + [("real", 2.0), ("real", 4.0)])
    # (g): each sample folder samples/{k} pairs with the HR/ two levels up, plus the real pairs
    stoch = _tree(tmp_path / "stoch" / "samples" / "0", ["a", "b"], 32, [1.5, 2, 3, 4])
    (tmp_path / "stoch" / "samples" / "0" / "HR").rename(tmp_path / "stoch" / "HR")
    _tree(tmp_path / "stoch" / "samples" / "1", ["a", "b"], 32, [1.5, 2, 3, 4])
    samples = [tmp_path / "stoch" / "samples" / str(k) for k in range(2)]
    stochastic = find_pairs(training_set("degflow_stochastic", **kw, samples=samples))
    assert sorted({(p.source, p.scale) for p in stochastic}) == sorted(
        [(f"degflow_stochastic:{k}", s) for k in "01" for s in gen_scales] + [("real", 2.0), ("real", 4.0)])
    assert {p.hr_path.parent for p in stochastic if p.source != "real"} == {tmp_path / "stoch" / "HR"}
    with pytest.raises(ValueError, match="degflow_stochastic needs stochastic samples"):
        training_set("degflow_stochastic", **kw)
    # real pairs pair the real LR with its own HR image, generated ones with the generated HR/
    pairs = find_pairs(training_set("degflow", **kw))
    assert {p.hr_path.parent for p in pairs if p.source == "real"} == {real / "HR"}
    assert {p.hr_path.parent for p in pairs if p.source == "degflow"} == {gen / "HR"}


def test_an_oracle_without_real_pairs_at_the_test_scale_is_refused_with_the_scales_there_are(tmp_path):
    real = _tree(tmp_path / "real", ["a"], 32, [4], lr_level=False)
    with pytest.raises(ValueError, match=r"real pairs at scale\(s\) \[2.5\].*exist at \[4.0\]"):
        training_set("oracle", real=pair_folder(real, [4]), generated=None, hr_root=real, real_scales=[4],
                     gen_scales=[4], test_scales=[2.5])
    with pytest.raises(ValueError, match="trainset='jpeg' is not one of"):
        training_set("jpeg", real=None, generated=None, hr_root=real, real_scales=[4], gen_scales=[4],
                     test_scales=[4])


# --------------------------------------------------------------------------- training
def _train(tmp_path: Path, network: str, steps: int, stop_after: int | None = None, seed: int = 0):
    root = _tree(tmp_path / "data", ["a", "b"], 48, [2, 3])
    scales = [2] if network == "edsr" else [2, 3]
    data = load_pairs(find_pairs([pair_folder(root, scales)]))
    settings = SRTrainSettings(steps=steps, batch_size=2, lr_patch=8, query_pixels=32, ckpt_every=2, log_every=1)
    torch.manual_seed(seed)
    model = build_sr_model(network, 2, n_feats=8, n_blocks=1, mlp_hidden=16)

    def log(line):
        if stop_after is not None and line.startswith(f"step {stop_after}/"):
            raise KeyboardInterrupt("stopped")
    return model, train_sr(model, data, settings, seed, tmp_path / "run", log=log)


@pytest.mark.parametrize("network", ["edsr", "liif"])
def test_resumed_sr_training_equals_the_uninterrupted_run(tmp_path, network):
    whole, info = _train(tmp_path / "whole", network, 6)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", network, 6, stop_after=4)
    # stopped while logging step 4, before its checkpoint: the run continues from step 2 (ckpt_every=2)
    assert load_sr_checkpoint(tmp_path / "cut" / "run" / "checkpoints" / "last.pt")["step"] == 2
    resumed, info2 = _train(tmp_path / "cut", network, 6)
    assert info2["resumed_from"] == 2 and info["steps"] == info2["steps"] == 6
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    other, _ = _train(tmp_path / "seed1", network, 6, seed=1)
    assert not torch.equal(next(iter(other.state_dict().values())), next(iter(whole.state_dict().values())))


def test_training_lowers_the_l1_loss_on_a_fixed_degradation(tmp_path):
    _, info = _train(tmp_path, "liif", 40)
    first, last = info["loss_history"][0][1], np.mean([v for _, v in info["loss_history"][-5:]])
    assert last < first


# --------------------------------------------------------------------------- the comparison command
def _compare(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "degflow", "sr-compare", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


TINY_SR = ["sr.steps=2", "sr.batch_size=2", "sr.lr_patch=8", "sr.n_feats=4", "sr.n_blocks=1", "sr.mlp_hidden=8",
           "sr.query_pixels=16", "sr.log_every=1", "eval.lpips=false", "sr_setup.max_side=64",
           "sr_setup.real_scales=[2]", "sr_setup.gen_scales=[1.5,2,3]", "sr_setup.test_scales=[1.5,3]",
           "sr_setup.val_scales=null"]


@pytest.mark.slow
def test_one_command_builds_every_training_set_trains_scores_and_collects_a_table(tmp_path):
    ckpt = _write_lfm_checkpoint(tmp_path / "lfm.pt", SolverSpec.create("rk4", steps=2))
    photos = tmp_path / "photos"
    for i in range(2):
        write_image(photos / f"p{i}.png", _rand_image(40, 44, 10 + i))
    out = tmp_path / "out"
    proc = _compare("-m", "sr_setup=demo", f"ckpt={ckpt}", f"out={out}", f"sr_setup.photos=[{photos}]",
                    "trainset=bicubic,procedural,real,degflow,oracle,degflow_photos", "seed=0", *TINY_SR)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = results["aggregate"]["liif"]
    run_sets = list(TRAINING_SETS)[:6]
    assert list(rows)[:6] == run_sets and "(bicubic interpolation, no network)" in rows
    for name in run_sets:
        assert set(rows[name]["cells"]) == {"demo_test x1.5", "demo_test x3"}
        assert all(math.isfinite(rows[name]["cells"][c]["psnr_y"][0]) for c in rows[name]["cells"])
        assert rows[name]["threads"] == [1] and rows[name]["train_seconds"][0] > 0
    assert rows["degflow_photos"]["pairs"]["degflow:photos-photos"] == {"x1.5": 2, "x2": 2, "x3": 2}
    assert rows["real"]["pairs"] == {"real": {"x2": 5}}
    assert rows["oracle"]["pairs"] == {"real": {"x1.5": 5, "x2": 5, "x3": 5}}     # test scales + the real grid one
    table = (out / "results.md").read_text()
    assert all(f"| {name} | 0 |" in table for name in run_sets)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # generation is cached: one generated folder for the training images, one per photo folder
    gen = [p.name for p in (out / "cache").glob("gen-*/*") if p.is_dir()]
    assert sorted(gen) == ["photos-photos", "train"]
    # re-running keeps every finished job (result.json) and collects again
    again = _compare("-m", "sr_setup=demo", f"ckpt={ckpt}", f"out={out}", "trainset=real", "seed=0", *TINY_SR)
    assert again.returncode == 0 and "finished before, kept" in again.stdout + again.stderr


def test_the_slurm_launcher_gets_one_job_per_training_set_and_seed_in_a_dry_run(tmp_path):
    proc = _compare("-m", "sr_setup=realsr_x4", "ckpt=none.pt", f"out={tmp_path}", "hydra/launcher=cpu",
                    "hydra.launcher.dry_run=true", "trainset=bicubic,real,degflow", "seed=0,1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DRY RUN, nothing submitted: 6 job(s)" in proc.stdout
    assert "#SBATCH --cpus-per-task=4" in proc.stdout
    assert str(tmp_path / "runs") in proc.stdout
    assert not (tmp_path / "results.md").exists()                 # nothing ran, nothing collected


def test_a_job_that_waits_for_another_building_the_shared_set_reports_only_its_own_generation_time(tmp_path):
    """Jobs sharing a cache build a generated set once (a file lock); the one that waited finds it
    complete and must not report the other job's build time as its own generation seconds."""
    import fcntl
    import threading
    import time

    from degflow.sr import compare

    ckpt = _write_lfm_checkpoint(tmp_path / "lfm.pt", SolverSpec.create("rk4", steps=2))
    hr_dir = tmp_path / "hr"
    write_image(hr_dir / "a.png", _rand_image(24, 24, 1))
    cfg = {"ckpt": str(ckpt), "device": "cpu", "procedural_seed": 0, "sr_setup": {"gen_scales": [2]}}
    out = tmp_path / "cache" / "train"
    assert compare._generate(cfg, hr_dir, out, []) > 0                      # builds it
    got = {}
    with open(out.parent / f".{out.name}.lock", "a+") as lock:             # another job holds the lock ...
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = threading.Thread(target=lambda: got.setdefault("s", compare._generate(cfg, hr_dir, out, [])))
        job.start()
        time.sleep(1.5)
        assert job.is_alive()                                             # ... and this one waits for it
        fcntl.flock(lock, fcntl.LOCK_UN)
    job.join(60)
    assert 0 < got["s"] < 1.5
