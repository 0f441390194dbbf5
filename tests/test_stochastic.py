"""The stochastic option end to end: the noise-fit job, the Python API, the evaluation's stochastic
methods and the dataset job's samples (seeds, strength, layout, resume, shards)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from degflow.baselines.noise import fit, noise_seed
from degflow.core.resize import bicubic_baseline, resize_to_lr, sample_to_lr, upsample_to
from degflow.core.timemap import TimeMap
from degflow.data.common import MemoryRecord, PairRecord
from degflow.data.images import read_image, write_image
from degflow.generation import StochasticOption, Synthesizer
from degflow.infra.checkpoint import save_checkpoint
from degflow.jobs.evaluation import EvalSettings, csv_table, evaluate_dataset
from degflow.jobs.lr_dataset import write_lr_dataset
from degflow.jobs.merge_shards import merge_shards
from degflow.jobs.noise_fit import fit_noise, real_lr_true_size
from degflow.models.rae import RAE
from degflow.models.registry import model_entry
from degflow.models.unet import VelocityUNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAIN_SCALES = [1.0, 2.0, 4.0]
EULER = {"method": "euler", "steps": 2, "rtol": None, "atol": None, "output_mode": "grid"}


def _checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    rae = RAE(widths=(8, 8, 8, 8), num_res_blocks=1)
    velocity = VelocityUNet(nf=8, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0, image_size=4, init_scale=1.0)
    save_checkpoint(path, {"kind": "lfm", "step": 1, "models": {"rae": model_entry(rae), "velocity": model_entry(velocity)},
                           "train_scales": TRAIN_SCALES, "time_map": TimeMap.nominal(TRAIN_SCALES).to_dict(),
                           "extra": {"solver": EULER, "spline": {"path": "cubic"}}})
    return path


def _hr(seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear") * 1.6 - 0.8)[0]


def _records(n: int = 3) -> list[MemoryRecord]:
    """HR images whose 'real' LR is bicubic plus white noise (stored at HR size)."""
    out = []
    for i in range(n):
        hr = _hr(i)
        noisy = {s: (bicubic_baseline(hr, s) + 0.05 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(9 + i)))
                 .clamp(-1, 1) for s in (2.0, 4.0)}
        out.append(MemoryRecord(f"im{i}", hr, noisy))
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "lfm.pt")


@pytest.fixture(scope="module")
def synth(ckpt) -> Synthesizer:
    from degflow.core.solvers import SolverSpec

    return Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create(**EULER))


@pytest.fixture(scope="module", params=["conditional", "table"])
def noise_file(synth, tmp_path_factory, request) -> Path:
    """Both kinds of noise model (the fit-noise default, conditional on the HR image, and the table alone):
    every path below must pass the HR image where the model needs it."""
    bundle = SimpleNamespace(train=SimpleNamespace(records=_records()), train_scales=(1.0, 2.0, 4.0),
                             description="test records")
    model = fit_noise(synth, bundle, crops=0, patch=8, radius=3, gradient_bins=2,
                      conditional=request.param == "conditional", mean_window=3)
    assert model.conditional == (request.param == "conditional")
    path = tmp_path_factory.mktemp("noise") / "noise.pt"
    model.save(path)
    return path


# ------------------------------------------------------------------------------ the fit job
def test_fit_job_is_seeded_by_its_crops_and_records_what_it_was_fitted_on(synth):
    bundle = SimpleNamespace(train=SimpleNamespace(records=_records()), train_scales=(1.0, 2.0, 4.0),
                             description="test records")
    opts = {"crops": 3, "crop_size": 12, "patch": 8, "radius": 3, "gradient_bins": 2}
    a, b, c = (fit_noise(synth, bundle, seed=s, **opts) for s in (0, 0, 1))
    assert torch.equal(a.variance, b.variance) and torch.equal(a.spectra, b.spectra)
    assert not torch.equal(a.variance, c.variance)
    assert a.scales == (2.0, 4.0)
    assert a.meta["checkpoint_sha256"] == synth.checkpoint_sha256 and a.meta["split"] == "train"
    assert a.meta["seed"] == 0 and a.meta["crops"] == 3 and a.meta["images"] == 3
    whole = [fit_noise(synth, bundle, seed=s, crops=0, patch=8, radius=3) for s in (0, 1)]
    assert torch.equal(whole[0].variance, whole[1].variance)
    short = SimpleNamespace(train=bundle.train, train_scales=(1.0, 2.0), description="x2 only")
    with pytest.raises(ValueError, match=r"data: the checkpoint's training knots \['2', '4'\]"):
        fit_noise(synth, short)


def test_real_lr_at_true_size_is_the_file_itself_when_stored_at_true_size(tmp_path):
    hr, lr = _hr(1), _hr(2, 8)
    write_image(tmp_path / "HR" / "a.png", hr)
    write_image(tmp_path / "x4" / "a.png", lr)
    rec = PairRecord("a", tmp_path / "HR" / "a.png", (32, 32), {4.0: tmp_path / "x4" / "a.png"}, {4.0: (8, 8)})
    _, stored = rec.load([4.0])
    assert torch.equal(real_lr_true_size(rec, 4.0, stored[0]), read_image(tmp_path / "x4" / "a.png"))
    memory = MemoryRecord("b", hr, {4.0: upsample_to(lr, 32, 32)})
    assert torch.equal(real_lr_true_size(memory, 4.0, memory.lr_images[4.0]), sample_to_lr(memory.lr_images[4.0], 4.0)[0])


# ------------------------------------------------------------------------------ Python API
def test_api_draws_a_sample_per_seed_and_strength_zero_is_the_deterministic_lr(synth, noise_file):
    hr = torch.stack([_hr(5), _hr(6)])
    opt = StochasticOption.load(noise_file, 1.0, checkpoint_sha256=synth.checkpoint_sha256)
    det = {size: synth(hr, [2.0, 3.0], size=size) for size in ("lr", "hr")}
    for size in ("lr", "hr"):
        one = synth(hr, [2.0, 3.0], size=size, noise=opt, seed=7)
        assert all(torch.equal(one[s], synth(hr, [2.0, 3.0], size=size, noise=opt, seed=7)[s]) for s in one)
        assert all(not torch.equal(one[s], synth(hr, [2.0, 3.0], size=size, noise=opt, seed=8)[s]) for s in one)
        assert all(not torch.equal(one[s], det[size][s]) for s in one)
        zero = synth(hr, [2.0, 3.0], size=size, noise=StochasticOption(opt.model, 0.0), seed=7)
        assert all(torch.equal(zero[s], det[size][s]) for s in zero)


def test_a_noise_model_of_another_checkpoint_is_refused(synth, noise_file, tmp_path):
    other = Synthesizer.from_checkpoint(_checkpoint(tmp_path / "other.pt", seed=1))
    with pytest.raises(ValueError, match=r"noise=.*fitted for the checkpoint with sha256"):
        StochasticOption.load(noise_file, checkpoint_sha256=other.checkpoint_sha256)
    with pytest.raises(ValueError, match="strength must be a .*number"):
        StochasticOption.load(noise_file, strength=-0.5)


# ------------------------------------------------------------------------------ evaluation
class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n=2):
        self.records = _records(n)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        return {"name": r.name, "hr": r.hr_image, "lr": torch.stack([r.lr_images[2.0], r.lr_images[4.0]]),
                "scales": torch.tensor([2.0, 4.0])}


def _eval(synth, noise_file, **kw):
    kw.setdefault("lpips", False)
    settings = EvalSettings(methods=("degflow", "stochastic", "stochastic_mean"), noise=str(noise_file), **kw)
    return evaluate_dataset(synth, _Pairs(), (1.0, 2.0, 4.0), None, settings)


@pytest.mark.parametrize("mode", ["decoded", "from_lr"])
def test_stochastic_at_strength_zero_scores_exactly_like_the_deterministic_lr(synth, noise_file, mode):
    per_scale = _eval(synth, noise_file, strength=0.0, samples=2, hr_size_output=mode).per_scale()
    for s in ("2", "4"):
        for method in ("stochastic", "stochastic_mean"):
            for metric in ("psnr_y", "ssim_y", "kl", "akld", "spec"):
                assert per_scale[method][s][metric] == per_scale["degflow"][s][metric]


def test_stochastic_records_its_settings_and_differs_from_the_deterministic_lr(synth, noise_file):
    result = _eval(synth, noise_file, strength=1.0, samples=3, noise_seed=5)
    settings = result.settings
    assert settings["strength"] == 1.0 and settings["samples"] == 3 and settings["noise_seed"] == 5
    assert len(settings["noise_sha256"]) == 64 and settings["noise_fitted_for"] == synth.checkpoint_sha256
    per_scale = result.per_scale()
    assert per_scale["stochastic"]["4"]["psnr_y"] != per_scale["degflow"]["4"]["psnr_y"]
    assert per_scale["degflow"]["4"]["diversity"] is None
    header, *rows = csv_table(result).strip().splitlines()
    assert header.endswith(",strength") and all(r.endswith(",1.0") for r in rows if r.startswith("stochastic"))
    again = _eval(synth, noise_file, strength=1.0, samples=3, noise_seed=5)
    assert again.per_scale()["stochastic"] == per_scale["stochastic"]


@pytest.mark.slow
def test_diversity_is_the_mean_lpips_between_samples(synth, noise_file, shared_dir):
    weights = shared_dir / "weights" / "alexnet_features.pth"
    result = _eval(synth, noise_file, strength=1.0, samples=2, lpips=True, lpips_backbone_weights=str(weights))
    per_scale = result.per_scale()
    assert per_scale["stochastic"]["4"]["diversity"] > 0
    zero = _eval(synth, noise_file, strength=0.0, samples=2, lpips=True, lpips_backbone_weights=str(weights))
    assert zero.per_scale()["stochastic"]["4"]["diversity"] == 0


def test_stochastic_methods_without_a_noise_model_are_refused(synth):
    with pytest.raises(ValueError, match=r"methods: \['stochastic'\] need noise="):
        evaluate_dataset(synth, _Pairs(), (1.0, 2.0, 4.0), None, EvalSettings(methods=("stochastic",), lpips=False))


# ------------------------------------------------------------------------------ dataset job
def _hr_folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_image(root / f"img{i}.png", _hr(20 + i, 24))
    return root


def test_dataset_samples_layout_manifest_and_seeds(synth, noise_file, tmp_path):
    src = _hr_folder(tmp_path / "hr")
    out = tmp_path / "out"
    summary = write_lr_dataset(synth, src, out, [2.0, 3.0], size="both", noise=noise_file, samples=2, noise_seed=3,
                               progress=False)
    assert summary.failed == 0
    plain = tmp_path / "plain"
    write_lr_dataset(synth, src, plain, [2.0, 3.0], size="both", progress=False)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    samples = [e for e in lines if e["kind"] == "stochastic"]
    assert len(samples) == 3 * 2 * 2 * 2                       # images x scales x sizes x samples
    for e in samples:
        assert e["output"] == f"samples/{e['sample']}/{'LR' if e['size'] == 'lr' else 'LR_hrsize'}/x{e['scale']:g}/" \
                              f"{Path(e['source']).name}"
        assert e["seed"] == noise_seed(3, Path(e["source"]).stem, e["scale"], e["sample"])
        assert e["strength"] == 1.0 and e["noise_seed"] == 3 and e["samples"] == 2 and len(e["noise_sha256"]) == 64
    for rel in ("LR/x2/img0.png", "LR_hrsize/x3/img1.png"):               # the deterministic LR is unchanged
        assert torch.equal(read_image(out / rel), read_image(plain / rel))
    a, b = (read_image(out / f"samples/{k}/LR/x2/img0.png") for k in (0, 1))
    assert not torch.equal(a, b) and not torch.equal(a, read_image(out / "LR/x2/img0.png"))
    settings = json.loads((out / "synthesis.json").read_text())
    assert settings["strength"] == 1.0 and settings["samples"] == 2 and settings["noise_seed"] == 3
    for change, key in (({"strength": 0.5}, "strength"), ({"samples": 3}, "samples"), ({"noise_seed": 4}, "noise_seed")):
        opts = {"strength": 1.0, "samples": 2, "noise_seed": 3, **change}
        with pytest.raises(ValueError, match=f"{key}: .* there, .* now"):
            write_lr_dataset(synth, src, out, [2.0, 3.0], size="both", noise=noise_file, progress=False, **opts)


def test_dataset_samples_do_not_depend_on_shards_and_merge(synth, noise_file, tmp_path):
    src = _hr_folder(tmp_path / "hr", n=4)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    write_lr_dataset(synth, src, whole, [2.0], noise=noise_file, samples=2, progress=False)
    for i in range(2):
        write_lr_dataset(synth, src, sharded, [2.0], noise=noise_file, samples=2, shard=i, num_shards=2,
                         batch_size=2, progress=False)
    for k in range(2):
        for i in range(4):
            rel = f"samples/{k}/LR/x2/img{i}.png"
            assert torch.equal(read_image(whole / rel), read_image(sharded / rel)), rel
    assert merge_shards(sharded, src).ok


def test_dataset_strength_zero_samples_equal_the_deterministic_lr(synth, noise_file, tmp_path):
    src = _hr_folder(tmp_path / "hr", n=1)
    out = tmp_path / "out"
    write_lr_dataset(synth, src, out, [2.0], size="both", noise=noise_file, strength=0.0, progress=False)
    for folder in ("LR", "LR_hrsize"):
        assert torch.equal(read_image(out / f"samples/0/{folder}/x2/img0.png"), read_image(out / f"{folder}/x2/img0.png"))


def test_noise_fit_on_the_deterministic_lr_of_the_model_itself_is_near_zero(synth):
    """A sanity anchor of the fit: real LR == the model's own LR leaves nothing to model."""
    hr = torch.stack([_hr(i) for i in range(2)])
    det = synth(hr, [4.0], size="lr")[4.0]
    model = fit([(det, det, 4.0)], patch=8, radius=3)
    assert float(model.variance.max()) < 1e-12


# ------------------------------------------------------------------------------ degrade API / online SR
def test_the_option_is_the_degrade_noise_hook_and_the_online_degradation_uses_it(ckpt, noise_file):
    from degflow.generation import Degrader
    from degflow.sr.online import build_online_degradation

    deg = Degrader.from_checkpoint(ckpt)
    opt = StochasticOption.load(noise_file, 1.0, checkpoint_sha256=deg.synth.checkpoint_sha256)
    hr = torch.stack([_hr(30), _hr(31)])
    det = deg(hr, 2.0).lr
    a, b, c = (deg(hr, 2.0, noise=opt, seed=s).lr for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, det)
    assert torch.equal(deg(hr, 2.0, noise=StochasticOption(opt.model, 0.0), seed=3).lr, det)
    online = build_online_degradation("degflow", {"ckpt": str(ckpt), "noise": str(noise_file), "strength": 1.0})
    first = online(hr, [2.0, 2.0], [3, 9])
    assert all(torch.equal(x, y) for x, y in zip(first, a))        # the batch's first seed drives its generator
    plain = build_online_degradation("degflow", {"ckpt": str(ckpt)})(hr, [2.0, 2.0], [3, 9])
    assert all(torch.equal(x, y) for x, y in zip(plain, det))


def test_noise_statistics_at_true_lr_size_are_measured_on_the_resized_images(synth, noise_file):
    from degflow.jobs.evaluation import _Scorer
    from degflow.metrics.noise import akld, histogram_kl, spectrum_distance

    fake, real, hr = (_hr(40 + i)[None] for i in range(3))
    got = _Scorer(EvalSettings(lpips=False, noise_stats="lr"), torch.device("cpu"))(fake, real, hr, 4.0)
    small = [sample_to_lr(fake, 4.0), sample_to_lr(real, 4.0), resize_to_lr(hr, 4.0)]
    assert got["akld"] == float(akld(*small)) and got["kl"] == float(histogram_kl(*small))
    assert got["spec"] == float(spectrum_distance(*small, 1.0))
    at_hr = _Scorer(EvalSettings(lpips=False), torch.device("cpu"))(fake, real, hr, 4.0)
    assert at_hr["akld"] == float(akld(fake, real, hr)) and at_hr["psnr_y"] == got["psnr_y"]
    result = _eval(synth, noise_file, strength=0.0, samples=2, noise_stats="lr")
    assert result.settings["noise_stats"] == "lr"
    per_scale = result.per_scale()
    assert per_scale["stochastic"]["4"]["akld"] == per_scale["degflow"]["4"]["akld"]
    with pytest.raises(ValueError, match=r"eval.noise_stats='x' is not one of \['hr', 'lr'\]"):
        EvalSettings(noise_stats="x")


def test_fit_noise_command_runs_with_its_default_run_folder(tmp_path):
    """`python -m degflow fit-noise ...` as documented (no hydra.run.dir): the run folder's name resolves
    (it once failed on the unregistered ${process_label:} resolver) and a missing checkpoint is one
    error line naming ckpt, exit 2."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, "-m", "degflow", "fit-noise", f"ckpt={tmp_path / 'missing.pt'}",
                           f"out={tmp_path / 'noise.pt'}", "threads=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and lines[-1].startswith("error: ") and "ckpt" in lines[-1], done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "degflow", "fit-noise", f"ckpt={tmp_path / 'missing.pt'}",
                           f"out={tmp_path / 'noise.pt'}", "threads=1", "fit.level=median"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]   # checked under its key, before the ckpt
    assert done.returncode == 2 and lines[-1] == "error: fit.level='median' is not one of ['harmonic', 'geometric']", \
        done.stderr[-2000:]
    for key, value, line in (("fit.variance", "white", "error: fit.variance='white' is not one of ['energy', 'residual']"),
                             ("fit.energy_floor", "2", "fit.energy_floor")):
        done = subprocess.run([sys.executable, "-m", "degflow", "fit-noise", f"ckpt={tmp_path / 'missing.pt'}",
                               f"out={tmp_path / 'noise.pt'}", "threads=1", f"{key}={value}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert done.returncode == 2 and lines[-1].startswith("error: ") and line in lines[-1], done.stderr[-2000:]
