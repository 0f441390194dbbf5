"""Synthesis: the Synthesizer API, tiling, write_lr_dataset and the synthesize.py CLI.

Checkpoints are built from tiny randomly initialised models through
``LFMStage.state()`` (the layout training writes). A random velocity net outputs ~0, so its
output layer is re-drawn (v != 0) and the RAE decoder's latent input is amplified: outputs
then depend visibly on the scale.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from degflow.infra.checkpoint import CheckpointError, save_checkpoint
from degflow.data.images import read_image
from degflow.core.losses import LossSettings
from degflow.generation import Synthesizer
from degflow.generation.tiling import tile_spans, window
from degflow.jobs.lr_dataset import write_lr_dataset
from degflow.metrics.image import psnr_y
from degflow.models.rae import RAE
from degflow.models.unet import VelocityUNet
from degflow.core.resize import resize_to_lr
from degflow.core.scales import scale_label
from degflow.core.solvers import SolverSpec, time_grid
from degflow.core.timemap import TimeMap
from degflow.training.lfm import LFMStage, SplineSettings

REPO = Path(__file__).resolve().parents[1]
SCALES = [1.5, 2.25, 3.0]


# --------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def _tiny_models(seed: int = 0) -> tuple[RAE, VelocityUNet]:
    torch.manual_seed(seed)
    rae = RAE(widths=[8, 8, 16, 16], num_res_blocks=1)
    velocity = VelocityUNet(nf=8, ch_mult=[1, 2], num_res_blocks=1, image_size=8)
    with torch.no_grad():
        velocity.conv_out.weight.normal_(0.0, 1.0)          # v != 0
        rae.decoder.conv_in.weight.mul_(10.0)                # decode depends on z visibly
        for name, p in rae.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.5)                                 # residual units active: full receptive field
    return rae, velocity


def _write_lfm_checkpoint(path: Path, solver: SolverSpec, seed: int = 0) -> Path:
    rae, velocity = _tiny_models(seed)
    stage = LFMStage(rae, velocity, (1.0, 2.0, 4.0), SplineSettings(), LossSettings(lpips_weight=0.0), solver,
                     val_set=None, val_scales=(1.0, 2.0, 3.0, 4.0), device=torch.device("cpu"),
                     rae_source={"path": "none"}, lpips_loss=None, lpips_metric=None)
    save_checkpoint(path, {"kind": "lfm", "step": 1, "optimizer": None, "scheduler": None, "rng": None,
                           "config": {}, "overrides": [], **stage.state()})
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _write_lfm_checkpoint(tmp_path_factory.mktemp("ckpt") / "lfm.pt", SolverSpec.create("rk4", steps=4))


@pytest.fixture(scope="module")
def synth(ckpt) -> Synthesizer:
    return Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("rk4", steps=4))   # the stored solver


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth-plus-texture uint8 RGB image [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([np.sin(6 * xx + 3 * yy + seed), np.cos(20 * xx * yy), np.sin(9 * yy - seed)], -1)
    img = 127.5 + 90 * base + rng.normal(0, 20, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(path)
    return path


def _png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one): raw IHDR/IDAT/IEND chunks."""
    h, w, _ = arr.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _folder(root: Path, n: int, h: int = 37, w: int = 53) -> Path:
    for i in range(n):
        _save(root / f"d{i % 3}" / f"img{i}.png", _image(h, w, i))
    return root


def _hr(h: int = 37, w: int = 53, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(_image(h, w, seed)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _quantize(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "synthesize.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _run_in_process(overrides: list[str]) -> int:
    """The CLI's job in this process: its exit status (0 or 1); usage errors raise."""
    from hydra import compose, initialize_config_dir

    import degflow.cli.synthesize as cli

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("synthesize", overrides=cli._list_overrides(overrides))
    return cli.main(cfg)


# --------------------------------------------------------------------------- API
def test_the_api_and_the_cli_share_one_documented_default_solver(ckpt):
    """Without a solver argument, from_checkpoint and synthesize.py generate with DEFAULT_SOLVER
    (rk4, 16 steps, cubic output), not the solver stored in the checkpoint (rk4/4/grid here)."""
    from hydra import compose, initialize_config_dir

    from degflow.cli.app import to_plain
    from degflow.generation import DEFAULT_SOLVER

    assert DEFAULT_SOLVER == SolverSpec.create("rk4", steps=16, output_mode="cubic")
    assert Synthesizer.from_checkpoint(ckpt).solver == DEFAULT_SOLVER
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cli_solver = to_plain(compose("synthesize", overrides=[f"ckpt={ckpt}", "input=a", "out=b"]))["solver"]
    assert SolverSpec.create(**cli_solver) == DEFAULT_SOLVER


def test_a_precision_typo_is_refused_naming_the_key(ckpt):
    with pytest.raises(ValueError, match="precision='bf61'.*fp32"):
        Synthesizer.from_checkpoint(ckpt, precision="bf61")


def test_requested_scale_is_exact_and_its_time_lies_on_the_solver_grid(synth):
    hr = _hr()
    res = synth.generate(hr, [2.2, 2.25, 2.3])
    t = res.times[2.25]
    assert t == pytest.approx((2.25 - 1) / 3, abs=1e-15)          # not rounded to a 0.1 grid
    assert t in time_grid(list(res.times.values()), synth.solver.steps).tolist()
    for other in (2.2, 2.3):
        assert (res.images[2.25] - res.images[other]).abs().max() > 1e-3
    # one Euler step lands exactly on t(2.25): z = z0 + t v(z0, 0)
    euler = synth.generate(hr, [2.25], solver=SolverSpec.create("euler", steps=1)).images[2.25]
    with torch.no_grad():
        z0, feats = synth.rae.encode(synth._pad(hr))
        z = z0 + t * synth.velocity(z0, torch.zeros(1))
        expected = synth.rae.decode(z, feats).clamp(-1, 1)[..., :37, :53]
    torch.testing.assert_close(euler, expected, rtol=0, atol=1e-5)


def test_cubic_output_gives_exact_scales_from_uniform_steps(synth):
    """output_mode=cubic (the synthesize.py default): the step grid stays uniform, any number of
    scales costs one extra evaluation, and a scale between two nodes is its own output
    (2.25 is not rounded to a node) close to a fine solve."""
    hr = _hr()
    cubic = SolverSpec.create("rk4", steps=16, output_mode="cubic")
    many = synth.generate(hr, [2.2, 2.25, 2.3, 3.7], solver=cubic)
    one = synth.generate(hr, [3.7], solver=cubic)
    assert many.nfe == one.nfe == 16 * 4 + 1
    assert many.times[2.25] == pytest.approx((2.25 - 1) / 3, abs=1e-15)
    for other in (2.2, 2.3):
        assert (many.images[2.25] - many.images[other]).abs().max() > 1e-3
    fine = synth.generate(hr, [2.25, 3.7], solver=SolverSpec.create("dopri5", rtol=1e-7, atol=1e-7))
    for s in (2.25, 3.7):
        assert float(psnr_y(many.images[s], fine.images[s], shave=0)) > 50


def test_all_scales_come_from_one_solve(synth):
    hr = _hr()
    on_grid = [1 + 3 * k / 8 for k in range(1, 9)]                 # t = k / 8 with the nominal map
    euler8 = SolverSpec.create("euler", steps=8)
    many = synth.generate(hr, on_grid, solver=euler8)
    one = synth.generate(hr, [4.0], solver=euler8)
    assert many.nfe == one.nfe == 8
    torch.testing.assert_close(many.images[4.0], one.images[4.0], rtol=0, atol=1e-6)


def test_odd_and_tiny_images_are_padded_and_cropped_back_never_resized(synth):
    for h, w in ((37, 53), (3, 5), (1, 1)):
        hr = _hr(h, w, seed=h)
        out = synth(hr, [1.0, 2.25])
        assert out[2.25].shape == (1, 3, h, w)
    lr = synth(_hr(37, 53), [2.25, 3.0], size="lr")
    assert lr[2.25].shape[-2:] == (round(37 / 2.25), round(53 / 2.25)) == (16, 24)
    assert lr[3.0].shape[-2:] == (12, 18)


def test_batched_generation_equals_one_image_at_a_time(synth):
    hr = torch.cat([_hr(seed=1), _hr(seed=2)])
    both = synth(hr, SCALES)
    for b in range(2):
        single = synth(hr[b:b + 1], SCALES)
        for s in SCALES:
            torch.testing.assert_close(both[s][b:b + 1], single[s], rtol=0, atol=1e-5)


def test_scales_beyond_training_are_refused_unless_extrapolation_is_allowed(synth, caplog):
    with pytest.raises(ValueError, match="allow_extrapolation"):
        synth(_hr(), [4.5])
    with caplog.at_level("WARNING"):
        out = synth(_hr(), [4.0, 4.5], allow_extrapolation=True)
    assert "outside the trained range" in caplog.text
    assert (out[4.5] - out[4.0]).abs().max() > 1e-3


def test_dopri5_generation_matches_fine_rk4(synth):
    hr = _hr()
    adaptive = synth.generate(hr, [2.0, 4.0], solver=SolverSpec.create("dopri5"))
    fine = synth.generate(hr, [2.0, 4.0], solver=SolverSpec.create("rk4", steps=32))
    assert adaptive.nfe > 0
    for s in (2.0, 4.0):
        assert float(psnr_y(adaptive.images[s], fine.images[s], shave=0)) > 45


def test_checkpoints_of_stage_one_or_corrupt_are_refused_naming_ckpt(tmp_path, ckpt):
    rae, _ = _tiny_models()
    from degflow.models.registry import model_entry

    stage1 = tmp_path / "rae.pt"
    save_checkpoint(stage1, {"kind": "rae", "step": 1, "models": {"rae": model_entry(rae)}})
    with pytest.raises(CheckpointError, match=r"ckpt=.*stage-'rae'.*stage-'lfm'"):
        Synthesizer.from_checkpoint(stage1)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"ckpt=.*corrupt"):
        Synthesizer.from_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match=r"ckpt=.*no such"):
        Synthesizer.from_checkpoint(tmp_path / "missing.pt")


# --------------------------------------------------------------------------- tiling
def test_tile_windows_cover_the_image_and_sum_to_one():
    for length, tile, overlap in ((200, 64, 32), (1356, 1024, 128), (97, 32, 16), (64, 64, 16)):
        spans = tile_spans(length, tile, overlap)
        total = torch.zeros(length, dtype=torch.float64)
        for i, (a, b) in enumerate(spans):
            assert b - a <= tile
            total[a:b] += window(spans, i, overlap)
        torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64), rtol=0, atol=1e-12)
        assert spans[0][0] == 0 and spans[-1][1] == length


class _LocalField(torch.nn.Module):
    """A local, time-dependent velocity field (two 3x3 convolutions, no normalisation):
    what tiling can reproduce exactly, given enough context."""

    config = {"ch_mult": [1, 2]}                             # same pad multiple as the tiny U-Net

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 4, 3, padding=1)
        with torch.no_grad():
            self.b.weight.mul_(10.0)                         # x4 is ~30 dB away from x1

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(z))) * (1 + t.view(-1, 1, 1, 1))


def _tiling_psnrs(make, hr, scales) -> tuple[dict, dict, dict, int]:
    whole = make(None, 0).generate(hr, scales)
    tiled = make(160, 80).generate(hr, scales)
    hard = make(160, 0).generate(hr, scales)
    assert whole.tiles == 1 and tiled.tiles == 2 * 3 and tiled.nfe == whole.nfe  # one solve
    moved = {s: float(psnr_y(whole.images[s], whole.images[1.0], shave=0)) for s in scales}
    blended = {s: float(psnr_y(tiled.images[s], whole.images[s], shave=0)) for s in scales}
    seams = {s: float(psnr_y(hard.images[s], whole.images[s], shave=0)) for s in scales}
    return moved, blended, seams, tiled.tiles


def test_tiles_blend_without_seams_for_a_local_velocity_field():
    """Proves the tiling machinery (tiled encode blended into one latent, one solve, tiled
    decode, cosine blending, grid-aligned origins): with a local field that moves the image a lot, tiled
    and untiled agree to > 40 dB at every scale (> 60 dB for the RAE path alone, s = 1),
    and cutting tiles without overlap is > 10 dB worse, so the test does see seams."""
    rae, _ = _tiny_models()
    field = _LocalField()
    scales = [1.0, 2.25, 4.0]

    def make(tile, overlap):
        return Synthesizer(rae, field, TimeMap.nominal([1, 2, 4]), SolverSpec.create("rk4", steps=4),
                           tile_size=tile, tile_overlap=overlap)

    moved, blended, seams, _ = _tiling_psnrs(make, _hr(200, 264, seed=3), scales)
    assert moved[4.0] < 35
    assert blended[1.0] > 60
    for s in scales:
        assert blended[s] >= 40 and blended[s] >= seams[s] + 10, (s, blended, seams)


def test_tiled_velocity_unet_agrees_with_untiled_above_40db(ckpt):
    """The real architecture (tiny, random, output layer re-drawn so x4 is ~30 dB from x1):
    > 40 dB at every scale with 160-pixel tiles and 80 pixels of overlap. The U-Net's
    GroupNorm and self-attention see the whole latent because the solve is never tiled;
    only the (local) RAE is."""
    scales = [1.0, 2.25, 4.0]
    moved, blended, seams, _ = _tiling_psnrs(
        lambda tile, overlap: Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("rk4", steps=4),
                                                  tile_size=tile, tile_overlap=overlap),
        _hr(200, 264, seed=3), scales)
    assert moved[4.0] < 35
    for s in scales:
        assert blended[s] >= 40 and blended[s] >= seams[s] + 10, (s, blended, seams)


# --------------------------------------------------------------------------- folders
def test_folder_resumes_after_a_kill_writing_only_missing_outputs(synth, tmp_path):
    src = _folder(tmp_path / "in", 5)
    out = tmp_path / "out"
    done: list[str] = []

    def killer(source: str) -> None:
        done.append(source)
        if len(done) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        write_lr_dataset(synth, src, out, SCALES, progress=False, after_image=killer)
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert len(first) == 2 * (1 + len(SCALES))
    summary = write_lr_dataset(synth, src, out, SCALES, progress=False)
    assert (summary.images, summary.skipped, summary.processed, summary.failed) == (5, 2, 3, 0)
    assert summary.outputs_written == 3 * (1 + len(SCALES))
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())      # untouched
    lines = _manifest(out / "manifest.jsonl")
    outputs = [e["output"] for e in lines]
    assert len(outputs) == len(set(outputs)) == 5 * (1 + len(SCALES))
    assert sorted(outputs) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")
                                     if "logs" not in p.parts)

    # a deleted output is written again, once; nothing else is touched
    victim = out / "LR" / "x2.25" / "d1" / "img1.png"
    victim.unlink()
    summary = write_lr_dataset(synth, src, out, SCALES, progress=False)
    assert (summary.skipped, summary.processed, summary.outputs_written) == (4, 1, 1)
    outputs = [e["output"] for e in _manifest(out / "manifest.jsonl")]
    assert victim.is_file() and len(outputs) == len(set(outputs)) == 5 * (1 + len(SCALES))


def test_a_png_without_manifest_line_is_rewritten_and_recorded(synth, tmp_path):
    src = _folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    write_lr_dataset(synth, src, out, SCALES, progress=False)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])   # killed mid-append
    summary = write_lr_dataset(synth, src, out, SCALES, progress=False)
    assert summary.outputs_written == 1
    entries = _manifest(manifest)
    assert len(entries) == len({e["output"] for e in entries}) == 1 + len(SCALES)


def test_shards_cover_the_input_exactly_once(synth, tmp_path):
    src = _folder(tmp_path / "in", 9, h=16, w=16)
    out = tmp_path / "out"
    seen = []
    for shard in range(3):
        summary = write_lr_dataset(synth, src, out, [2.0], shard=shard, num_shards=3, progress=False)
        entries = _manifest(out / f"manifest.shard{shard}-of-3.jsonl")
        seen.append({e["source"] for e in entries})
        assert summary.images == len(seen[-1])
    assert set().union(*seen) == {p.relative_to(src).as_posix() for p in src.rglob("*.png")}
    assert sum(len(s) for s in seen) == 9
    assert not (out / "manifest.jsonl").exists()


def test_equal_names_in_subfolders_and_extensions_never_collide(synth, tmp_path):
    src = tmp_path / "in"
    _save(src / "a.png", _image(16, 16, 0))
    _save(src / "a.jpg", _image(16, 16, 1))
    _save(src / "x" / "a.png", _image(16, 16, 2))
    out = tmp_path / "out"
    write_lr_dataset(synth, src, out, [2.0], progress=False)
    assert sorted(p.relative_to(out / "LR" / "x2").as_posix() for p in (out / "LR" / "x2").rglob("*.png")) == \
        ["a.jpg.png", "a.png.png", "x/a.png"]


def test_folder_usage_errors_raise_value_errors(ckpt, synth, tmp_path):
    src = _folder(tmp_path / "in", 1)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        write_lr_dataset(synth, tmp_path / "empty", tmp_path / "o1", SCALES, progress=False)
    with pytest.raises(ValueError, match="inside input"):
        write_lr_dataset(synth, src, src / "dataset", SCALES, progress=False)
    with pytest.raises(ValueError, match="allow_extrapolation"):
        write_lr_dataset(synth, src, tmp_path / "o2", [5.0], progress=False)
    with pytest.raises(ValueError, match="size"):
        write_lr_dataset(synth, src, tmp_path / "o3", SCALES, size="medium", progress=False)
    with pytest.raises(ValueError, match="allow_extrapolation must be true or false, got 'maybe'"):
        write_lr_dataset(synth, src, tmp_path / "o3", SCALES, allow_extrapolation="maybe", progress=False)
    (tmp_path / "real" / "x2").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no folder x4"):
        write_lr_dataset(synth, src, tmp_path / "o3", SCALES, baselines=["ae_interp"],
                         baseline_lr_root=tmp_path / "real", progress=False)
    assert not (tmp_path / "o3").exists()
    other = Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("euler", steps=3))
    write_lr_dataset(synth, src, tmp_path / "o4", SCALES, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        write_lr_dataset(other, src, tmp_path / "o4", SCALES, progress=False)


def test_ae_interp_baseline_decodes_the_real_latents_at_training_scales(synth, tmp_path):
    src, real = tmp_path / "in", tmp_path / "real"
    _save(src / "p" / "a.png", _image(32, 48, 0))
    _save(real / "x2" / "p" / "a.png", _image(32, 48, 1))                         # at HR size
    _save(real / "x4" / "p" / "a.jpg", _image(8, 12, 2))                          # at true LR size
    out = tmp_path / "out"
    summary = write_lr_dataset(synth, src, out, [2.0, 3.0], size="hr", baselines=["bicubic", "ae_interp"],
                                baseline_lr_root=real, progress=False)
    assert summary.failed == 0
    got = _png(out / "baselines" / "ae_interp" / "LR" / "x2" / "p" / "a.png")
    with torch.no_grad():
        hr, x2 = read_image(src / "p" / "a.png")[None], read_image(real / "x2" / "p" / "a.png")[None]
        feats = synth.rae.encode(hr)[1]
        expected = synth.rae.decode(synth.rae.encode(x2)[0], feats).clamp(-1, 1)[0]
    assert np.abs(got.astype(int) - _quantize(expected).astype(int)).max() <= 1
    bicubic = _png(out / "baselines" / "bicubic" / "LR" / "x3" / "p" / "a.png")
    assert bicubic.shape == (32, 48, 3)
    # missing real LR: checked before anything is written, so that image gets no output at all
    _save(src / "b.png", _image(32, 48, 3))
    summary = write_lr_dataset(synth, src, out, [2.0, 3.0], size="hr", baselines=["ae_interp"],
                                baseline_lr_root=real, progress=False)
    assert summary.failed == 1 and "no real LR" in summary.failures[0]["error"]
    assert not [p for p in out.rglob("b.png")]
    assert "b.png" not in {e["source"] for e in _manifest(out / "manifest.jsonl")}


def _files(root: Path) -> set[str]:
    """Every file under ``root`` (hidden ones included), relative, except Hydra's logs."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "logs" not in p.parts}


def test_an_image_too_small_for_a_scale_gets_no_output_and_no_manifest_line(synth, tmp_path):
    """A 1-pixel-high image has an LR image at x1.5 (round(1/1.5) = 1) but none at x3: it is
    refused before its HR copy or its x1.5 image is written, on every run."""
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "ok.png", _image(16, 16, 0))
    _save(src / "flat.png", _image(1, 40, 1))
    for _ in range(2):
        summary = write_lr_dataset(synth, src, out, [1.5, 3.0], progress=False)
        assert summary.failed == 1 and summary.failures[0]["file"] == "flat.png"
        assert "scale=3.0 is too large for a 1x40 image" in summary.failures[0]["error"]
        assert not [p for p in out.rglob("flat.png")]
        assert {e["source"] for e in _manifest(out / "manifest.jsonl")} == {"ok.png"}
    assert summary.skipped == 1 and summary.outputs_written == 0


def test_a_write_cut_short_removes_the_files_of_that_image(synth, tmp_path, monkeypatch):
    """Failing (disk full) or interrupted (Ctrl-C) between the first and the last file of an
    image: the image keeps no file and no manifest line; the next run writes it whole."""
    import degflow.jobs.lr_dataset as lr_dataset

    src, out = _folder(tmp_path / "in", 2, h=16, w=16), tmp_path / "out"
    real_write, calls = lr_dataset.write_image, []

    def flaky(path, image, error):
        calls.append(path)
        if len(calls) == 3:                                  # the third file of the first image
            raise error
        real_write(path, image)

    monkeypatch.setattr(lr_dataset, "write_image", lambda p, x: flaky(p, x, OSError(28, "No space left on device")))
    summary = write_lr_dataset(synth, src, out, SCALES, progress=False)
    first = calls[0].name
    assert summary.failed == 1 and "No space left" in summary.failures[0]["error"]
    assert not [p for p in out.rglob(first)] and len(list(out.rglob("*.png"))) == 1 + len(SCALES)

    calls.clear()
    monkeypatch.setattr(lr_dataset, "write_image", lambda p, x: flaky(p, x, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_lr_dataset(synth, src, out, SCALES, progress=False)
    assert not [p for p in out.rglob(first)]

    monkeypatch.undo()
    summary = write_lr_dataset(synth, src, out, SCALES, progress=False)
    assert (summary.failed, summary.processed, summary.skipped) == (0, 1, 1)
    entries = _manifest(out / "manifest.jsonl")
    assert len(entries) == len({e["output"] for e in entries}) == 2 * (1 + len(SCALES))
    assert {e["output"] for e in entries} == {f for f in _files(out) if f.endswith(".png")}


def test_leftovers_of_a_killed_run_are_removed_on_start(synth, tmp_path):
    """SIGKILL leaves temp files of atomic writes and files of an image without manifest lines;
    the next run removes them, also for an image that now fails its checks. A shard never
    touches the temp files of another shard's outputs (it may be writing them right now)."""
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "ok.png", _image(16, 16, 0))
    _save(src / "flat.png", _image(1, 40, 1))
    write_lr_dataset(synth, src, out, [1.5, 3.0], progress=False)
    before = _files(out)
    leftovers = ["HR/flat.png", "LR/x1.5/flat.png",                       # an image cut short by a kill
                 "LR/x3/.ok.png.k3x9_q2z.tmp", "HR/.flat.png.abcdefgh.tmp", ".manifest.jsonl.a1b2c3d4.tmp",
                 ".synthesis.json.zzzzzzzz.tmp"]
    for rel in leftovers:
        (out / rel).write_bytes(b"partial")
    summary = write_lr_dataset(synth, src, out, [1.5, 3.0], progress=False)
    assert summary.failed == 1 and summary.skipped == 1
    assert _files(out) == before

    # shards: each removes its own leftovers only
    sharded = tmp_path / "sharded"
    src2 = _folder(tmp_path / "in2", 6, h=16, w=16)
    write_lr_dataset(synth, src2, sharded, [2.0], shard=0, num_shards=2, progress=False)
    write_lr_dataset(synth, src2, sharded, [2.0], shard=1, num_shards=2, progress=False)
    names = {i: {e["output"] for e in _manifest(sharded / f"manifest.shard{i}-of-2.jsonl")} for i in range(2)}
    mine, theirs = sorted(names[0])[0], sorted(names[1])[0]
    temp = {rel: sharded / Path(rel).parent / f".{Path(rel).name}.q1w2e3r4.tmp" for rel in (mine, theirs)}
    for path in temp.values():
        path.write_bytes(b"partial")
    (sharded / ".manifest.shard1-of-2.jsonl.q1w2e3r4.tmp").write_bytes(b"partial")
    write_lr_dataset(synth, src2, sharded, [2.0], shard=0, num_shards=2, progress=False)
    assert not temp[mine].exists() and temp[theirs].exists()
    assert (sharded / ".manifest.shard1-of-2.jsonl.q1w2e3r4.tmp").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_dataset_files_get_the_permissions_of_the_umask(synth, tmp_path, umask):
    """A dataset written for a group is readable by it: files 0o666 & ~umask, folders 0o777 & ~umask."""
    src, out = _folder(tmp_path / "in", 2, h=16, w=16), tmp_path / "out"
    _save(src / "flat.png", _image(1, 40, 1))                           # a failure: failed.jsonl is kept
    old = os.umask(umask)
    try:
        summary = write_lr_dataset(synth, src, out, [1.5, 3.0], baselines=["bicubic"],
                                   progress=False)
    finally:
        os.umask(old)
    assert summary.failed == 1
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"manifest.jsonl", "failed.jsonl", "synthesis.json"} <= {p.name for p in files}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_dir()} == {oct(0o777 & ~umask)}


def test_more_scales_than_max_scales_must_be_confirmed(synth, tmp_path):
    src = _folder(tmp_path / "in", 1, h=16, w=16)
    many = [1.0 + i / 1000 for i in range(101)]
    with pytest.raises(ValueError, match="101 scales requested .* confirm it with max_scales=101"):
        write_lr_dataset(synth, src, tmp_path / "o", many, progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="max_scales=2"):
        write_lr_dataset(synth, src, tmp_path / "o", SCALES, max_scales=2, progress=False)
    with pytest.raises(ValueError, match="max_scales must be an integer >= 1 or null"):
        write_lr_dataset(synth, src, tmp_path / "o", SCALES, max_scales=0, progress=False)
    summary = write_lr_dataset(synth, src, tmp_path / "o", SCALES, max_scales=3, progress=False)
    assert summary.outputs_written == 1 + len(SCALES)


def test_tile_size_below_the_models_minimum_is_refused_naming_tile_size(ckpt, synth):
    m = synth.pad_multiple
    for tile_size in (0, m - 1):
        with pytest.raises(ValueError, match=f"tile_size={tile_size} is below the smallest tile of this model, "
                                             f"{m} HR pixels") as caught:
            Synthesizer.from_checkpoint(ckpt, tile_size=tile_size, tile_overlap=0)
        assert "tile_overlap" not in str(caught.value).split(";")[0]
    assert Synthesizer.from_checkpoint(ckpt, tile_size=m, tile_overlap=0).tile_size == m
    with pytest.raises(ValueError, match="at most half of tile_size"):
        Synthesizer.from_checkpoint(ckpt, tile_size=2 * m, tile_overlap=2 * m)


def test_procedural_baseline_is_the_seeded_real_esrgan_pipeline_in_the_baseline_layout(synth, tmp_path):
    from degflow.baselines.procedural import procedural_seed, realesrgan as degrade

    src = tmp_path / "in"
    for i, rel in enumerate(["a.png", "sub/b.png", "c.png"]):
        _save(src / rel, _image(24, 30, i))
    out = tmp_path / "out"
    summary = write_lr_dataset(synth, src, out, [1.5, 2.5], size="both", baselines=["procedural"], progress=False)
    assert summary.failed == 0
    entries = {e["output"]: e for e in _manifest(out / "manifest.jsonl")}
    for name in ("a", "sub/b", "c"):
        hr = read_image(src / f"{name}.png")
        for s in (1.5, 2.5):
            seed = procedural_seed(0, name, s)
            lr_rel = f"baselines/procedural/LR/x{scale_label(s)}/{name}.png"
            hr_rel = f"baselines/procedural/LR_hrsize/x{scale_label(s)}/{name}.png"
            # exact: the pipeline ends on 8-bit values; HR-size = degrade(size="hr"), as degflow.evaluate computes it
            np.testing.assert_array_equal(_png(out / lr_rel), _quantize(degrade(hr, s, seed=seed, size="lr")))
            np.testing.assert_array_equal(_png(out / hr_rel), _quantize(degrade(hr, s, seed=seed, size="hr")))
            assert _png(out / lr_rel).shape == (round(24 / s), round(30 / s), 3)
            for rel in (lr_rel, hr_rel):
                assert entries[rel]["kind"] == "procedural" and entries[rel]["seed"] == seed
                assert entries[rel]["scale"] == s and entries[rel]["t"] is None
    assert json.loads((out / "synthesis.json").read_text())["procedural_seed"] == 0

    # deterministic: independent of batching, shards and order
    again = tmp_path / "again"
    for shard in range(2):
        write_lr_dataset(synth, src, again, [2.5, 1.5], size="both", batch_size=2, baselines=["procedural"],
                         shard=shard, num_shards=2, progress=False)
    for rel in (f for f in _files(out) if f.startswith("baselines/")):
        assert (again / rel).read_bytes() == (out / rel).read_bytes()
    # another seed: other images, and never mixed into a folder made with the first one
    other = tmp_path / "other"
    write_lr_dataset(synth, src, other, [1.5], baselines=["procedural"], procedural_seed=7, progress=False)
    assert not np.array_equal(_png(other / "baselines/procedural/LR/x1.5/a.png"),
                              _png(out / "baselines/procedural/LR/x1.5/a.png"))
    with pytest.raises(ValueError, match="procedural_seed: 0 there, 7 now"):
        write_lr_dataset(synth, src, out, [1.5], size="both", baselines=["procedural"], procedural_seed=7,
                         progress=False)


def test_hr_size_lr_from_the_true_size_lr_is_that_lr_upsampled_and_never_mixed_with_decoded(synth, tmp_path):
    """hr_size_output=from_lr: LR_hrsize holds the true-size LR (as in LR/) bicubic-upsampled to HR size,
    for degflow like the bicubic baseline; decoded (the default) keeps the decoder's output; a folder
    made one way refuses the other."""
    from degflow.core.resize import resize_to_lr, upsample_to

    src = tmp_path / "in"
    _save(src / "a.png", _image(24, 32, 0))
    hr = read_image(src / "a.png")
    outs = {}
    for mode in ("decoded", "from_lr"):
        outs[mode] = tmp_path / mode
        summary = write_lr_dataset(synth, src, outs[mode], [2.0, 3.0], size="both", hr_size_output=mode,
                                   baselines=["bicubic"], progress=False)
        assert summary.failed == 0
        assert json.loads((outs[mode] / "synthesis.json").read_text())["hr_size_output"] == mode
    decoded = synth.generate(hr[None], [2.0, 3.0]).images
    for s in (2.0, 3.0):
        rel = f"x{scale_label(s)}/a.png"
        lr = resize_to_lr(decoded[s][0], s)
        for mode in outs:                                    # LR/ is the same both ways
            np.testing.assert_allclose(_png(outs[mode] / "LR" / rel), _quantize(lr), atol=1)
        np.testing.assert_allclose(_png(outs["from_lr"] / "LR_hrsize" / rel), _quantize(upsample_to(lr, 24, 32)), atol=1)
        np.testing.assert_allclose(_png(outs["decoded"] / "LR_hrsize" / rel), _quantize(decoded[s][0]), atol=1)
        assert np.abs(_png(outs["from_lr"] / "LR_hrsize" / rel).astype(int)
                      - _png(outs["decoded"] / "LR_hrsize" / rel).astype(int)).max() > 1
        # the bicubic baseline was always made this way
        np.testing.assert_array_equal(_png(outs["from_lr"] / "baselines/bicubic/LR_hrsize" / rel),
                                      _png(outs["decoded"] / "baselines/bicubic/LR_hrsize" / rel))
    with pytest.raises(ValueError, match="hr_size_output: 'from_lr' there, 'decoded' now"):
        write_lr_dataset(synth, src, outs["from_lr"], [2.0], size="hr", progress=False)
    with pytest.raises(ValueError, match=r"hr_size_output='upsampled' is not one of \['decoded', 'from_lr'\]"):
        write_lr_dataset(synth, src, tmp_path / "x", [2.0], size="hr", hr_size_output="upsampled", progress=False)
    # true-size-only folders do not depend on the setting
    lr_only = tmp_path / "lr_only"
    write_lr_dataset(synth, src, lr_only, [2.0], progress=False)
    write_lr_dataset(synth, src, lr_only, [2.0], hr_size_output="from_lr", progress=False)


# --------------------------------------------------------------------------- CLI
def _bad_input_folder(root: Path) -> dict[str, str]:
    """A folder with every kind of awkward input; returns {source: expected outcome}."""
    rng = np.random.default_rng(0)
    _save(root / "a.png", _image(37, 53, 0))
    _save(root / "b.png", _image(37, 53, 1))
    _save(root / "sub" / "dir" / "a.png", _image(37, 53, 2))
    _save(root / "gray.png", _image(30, 40, 3)[..., 0])
    _save(root / "gray16.png", (rng.integers(0, 65535, (24, 20))).astype(np.uint16))
    _png16_rgb(root / "rgb16.png", rng.integers(0, 65535, (18, 22, 3)).astype(np.uint16))
    _save(root / "cmyk.jpg", _image(40, 40, 4), mode="CMYK")
    _save(root / "opaque_rgba.png", np.dstack([_image(33, 33, 5), np.full((33, 33), 255, np.uint8)]))
    _save(root / "tiny.png", _image(3, 5, 6))
    transparent = np.dstack([_image(20, 20, 7), np.full((20, 20), 255, np.uint8)])
    transparent[0, 0, 3] = 0
    _save(root / "transparent.png", transparent)
    _save(root / "truncated.png", _image(64, 64, 8))
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "garbage.webp").write_bytes(b"not an image at all")
    (root / "notes.txt").write_text("ignored")
    good = ["a.png", "b.png", "sub/dir/a.png", "gray.png", "gray16.png", "rgb16.png", "cmyk.jpg",
            "opaque_rgba.png", "tiny.png"]
    return {**dict.fromkeys(good, "ok"), **dict.fromkeys(["transparent.png", "truncated.png", "garbage.webp"],
                                                          "failed")}


@pytest.mark.slow
def test_cli_writes_the_dataset_layout_reports_bad_images_and_matches_the_api(ckpt, synth, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    expected = _bad_input_folder(src)
    proc = _cli(f"ckpt={ckpt}", f"input={src}", f"out={out}", "scales=[1.5,2.25,3]", "size=both", "batch_size=2",
                "baseline=bicubic", "progress=false")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "3 failed" in proc.stdout
    failed = {json.loads(line)["file"] for line in (out / "failed.jsonl").read_text().splitlines()}
    assert failed == {k for k, v in expected.items() if v == "failed"}

    good = [k for k, v in expected.items() if v == "ok"]
    entries = _manifest(out / "manifest.jsonl")
    per_image = 1 + 2 * len(SCALES) * 2                      # HR + (degflow, bicubic) x scales x (lr, hr)
    assert len(entries) == len({e["output"] for e in entries}) == per_image * len(good)
    assert {e["source"] for e in entries} == set(good)
    sha = synth.checkpoint_sha256
    for e in entries:
        assert (out / e["output"]).is_file()
        assert e["checkpoint_sha256"] == sha and e["degflow_version"]
        if e["kind"] == "degflow":
            assert e["solver"] == {"method": "rk4", "steps": 16, "rtol": None, "atol": None, "output_mode": "cubic"}
            assert e["nfe"] > 0 and e["seconds"] > 0 and e["t"] == pytest.approx((e["scale"] - 1) / 3)
    names = {e["output"] for e in entries}
    for name in ("HR/sub/dir/a.png", "LR/x2.25/sub/dir/a.png", "LR_hrsize/x3/a.png",
                 "baselines/bicubic/LR/x1.5/gray.png", "baselines/bicubic/LR_hrsize/x2.25/tiny.png"):
        assert name in names
    assert not any(p.suffix != ".png" for p in (out / "LR").rglob("*") if p.is_file())   # no Hydra logs in LR
    assert list((out / "logs").glob("*/.hydra/config.yaml"))

    # sizes: HR copy exact, LR at round(H/s) x round(W/s), LR_hrsize at HR size
    np.testing.assert_array_equal(_png(out / "HR" / "a.png"), _image(37, 53, 0))
    assert _png(out / "LR" / "x2.25" / "a.png").shape == (16, 24, 3)
    assert _png(out / "LR" / "x1.5" / "tiny.png").shape == (2, 3, 3)
    assert _png(out / "LR_hrsize" / "x3" / "tiny.png").shape == (3, 5, 3)

    # the CLI's PNGs are the quantised API outputs (a.png and b.png were one batch)
    hr = torch.stack([read_image(src / "a.png"), read_image(src / "b.png")])
    api = synth.generate(hr, SCALES, solver=SolverSpec.create("rk4", steps=16, output_mode="cubic")).images
    for s in SCALES:
        for b, name in enumerate(("a.png", "b.png")):
            np.testing.assert_array_equal(_png(out / "LR_hrsize" / f"x{scale_label(s)}" / name), _quantize(api[s][b]))
            np.testing.assert_array_equal(_png(out / "LR" / f"x{scale_label(s)}" / name),
                                          _quantize(resize_to_lr(api[s][b], s)))

    # re-running (the same job, in-process) skips every complete image, still reports the bad ones
    code = _run_in_process([f"ckpt={ckpt}", f"input={src}", f"out={out}", "scales=[1.5,2.25,3]", "size=both",
                            "batch_size=2", "baseline=bicubic", "progress=false"])
    assert code == 1
    assert f"{len(good)} skipped" in capsys.readouterr().out
    assert len(_manifest(out / "manifest.jsonl")) == per_image * len(good)


@pytest.mark.slow
def test_cli_multirun_shards_with_a_range_of_scales_cover_the_input_and_exit_0(ckpt, tmp_path):
    src, out = _folder(tmp_path / "in", 6, h=16, w=24), tmp_path / "out"
    proc = _cli("-m", f"ckpt={ckpt}", f"input={src}", f"out={out}", "scales.start=1.5", "scales.stop=2.5",
                "scales.step=0.5", "shard=0,1", "num_shards=2", "solver=euler", "solver.steps=4", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sources = [{e["source"] for e in _manifest(out / f"manifest.shard{i}-of-2.jsonl")} for i in range(2)]
    assert not sources[0] & sources[1]
    assert sources[0] | sources[1] == {p.relative_to(src).as_posix() for p in src.rglob("*.png")}
    assert sorted(p.name for p in (out / "LR").iterdir()) == ["x1.5", "x2", "x2.5"]
    entry = _manifest(out / "manifest.shard0-of-2.jsonl")[1]
    assert entry["solver"]["method"] == "euler" and entry["solver"]["steps"] == 4


def test_cli_usage_errors_exit_2(ckpt, tmp_path):
    """Hydra's own errors (here an unknown key) exit 2, not Hydra's 1."""
    proc = _cli(f"ckpt={ckpt}", f"input={tmp_path}", f"out={tmp_path / 'out'}", "no_such_key=1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no_such_key" in proc.stderr


def test_cli_config_errors_raise_usage_errors_with_a_clear_message(ckpt, tmp_path):
    src = _folder(tmp_path / "in", 1)
    rae, _ = _tiny_models()
    from degflow.models.registry import model_entry

    save_checkpoint(tmp_path / "rae.pt", {"kind": "rae", "step": 1, "models": {"rae": model_entry(rae)}})
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 100)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    cases = {
        "holds no images": [f"ckpt={ckpt}", f"input={tmp_path / 'empty'}", f"out={tmp_path / 'o'}"],
        "stage-'rae'": [f"ckpt={tmp_path / 'rae.pt'}", f"input={src}", f"out={tmp_path / 'o'}"],
        "corrupt": [f"ckpt={tmp_path / 'corrupt.pt'}", f"input={src}", f"out={tmp_path / 'o'}"],
        "inside input": [f"ckpt={ckpt}", f"input={src}", f"out={src / 'o'}"],
        "allow_extrapolation": [f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'o'}", "scales=[2,4.5]"],
        "missing required": [f"ckpt={ckpt}", f"input={src}"],
        "scales.step": [f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'o'}", "scales.step=-1"],
        "confirm it with max_scales=30001": [f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'o'}",
                                             "scales.start=1", "scales.stop=4", "scales.step=0.0001"],
        "tile_size=0 is below the smallest tile": [f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'o'}",
                                                   "tile_size=0"],
        "procedural_seed must be an integer": [f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'o'}",
                                               "baseline=procedural", "procedural_seed=abc"],
    }
    for message, overrides in cases.items():
        with pytest.raises(ValueError) as caught:
            _run_in_process(overrides)
        assert message in str(caught.value), (message, str(caught.value))
        if message in ("stage-'rae'", "corrupt"):
            assert "ckpt=" in str(caught.value)
    assert not (tmp_path / "o").exists()          # refused before anything was written
    # and allowed extrapolation runs (exit 0)
    assert _run_in_process([f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'ok'}", "scales=[2,4.5]",
                            "allow_extrapolation=true", "progress=false", "solver.steps=2"]) == 0
    assert (tmp_path / "ok" / "LR" / "x4.5" / "d0" / "img0.png").is_file()


@pytest.mark.slow
def test_cli_environment_errors_exit_2_with_one_line_and_no_traceback(ckpt, tmp_path):
    """An output folder that cannot be created (a file in its path: the same error path as a
    folder without write permission, which root, running these tests, would not get), a
    missing checkpoint, an unknown key: one ``error:`` line, exit 2."""
    src = _folder(tmp_path / "in", 1, h=16, w=16)
    (tmp_path / "file.txt").write_text("not a folder")
    cases = {
        "NotADirectoryError": [f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'file.txt' / 'dataset'}"],
        "ckpt=": [f"ckpt={tmp_path / 'missing.pt'}", f"input={src}", f"out={tmp_path / 'o'}"],
        "max_scales=30001": [f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'o'}", "scales.start=1",
                             "scales.stop=4", "scales.step=0.0001"],
    }
    for message, args in cases.items():
        proc = _cli(*args)
        assert proc.returncode == 2, (message, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (message, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_multirun_runs_every_job_and_exits_with_the_largest_status(ckpt, tmp_path):
    """Job 0 has a usage error (tile_size=0), job 1 runs (with a list of baselines) and
    writes its dataset; the process exits 2 after both."""
    src, out = _folder(tmp_path / "in", 2, h=16, w=16), tmp_path / "out"
    proc = _cli("-m", f"ckpt={ckpt}", f"input={src}", f"out={out}", "scales=[2]", "tile_size=0,64",
                "tile_overlap=0", "baseline=[bicubic,procedural]", "solver.steps=2", "progress=false")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: tile_size=0 is below the smallest tile" in proc.stderr
    kinds = {e["kind"] for e in _manifest(out / "manifest.jsonl")}
    assert kinds == {"hr", "degflow", "bicubic", "procedural"}
    assert len(list((out / "baselines" / "procedural" / "LR" / "x2").rglob("*.png"))) == 2


def test_cli_help_explains_the_synthesis_settings_with_examples():
    proc = _cli("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "python synthesize.py ckpt=" in text and "Examples:" in text and "Exit status" in text
    explained = text.split("Settings you will change most")[1].split("Exit status")[0]
    from omegaconf import OmegaConf

    for key in OmegaConf.load(REPO / "conf" / "synthesize.yaml"):
        if key not in ("defaults", "hydra"):
            assert key in explained, key
    assert "solver" in explained
    for training_group in ("stage:", "model/rae", "logger:", "experiment:"):   # not the training config
        assert training_group not in text
