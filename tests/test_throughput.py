"""Training throughput: the stage-2 latent cache, in-memory training images, GPU switches on CPU."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from degflow.training.sampling import RowDraws
from degflow.data.common import MemoryRecord, PairRecord, TrainCropDataset
from degflow.data.images import write_image
from degflow.data.memory import hold_in_memory, in_memory_training_set
from degflow.data.transforms import dihedral
from degflow.core.losses import LossSettings
from degflow.models.rae import RAE
from degflow.models.unet import VelocityUNet
from degflow.core.solvers import SolverSpec
from degflow.training import latent_cache as latent_cache_module
from degflow.training.accel import accelerate
from degflow.training.latent_cache import load_or_build_latent_cache
from degflow.training.lfm import LFMStage, SplineSettings, aligned_training_set

from test_train import config as train_config  # noqa: E402  (tests/ is on sys.path under pytest)
from degflow.training import train

SCALES = (2.0, 4.0)


def tiny_rae(seed: int) -> RAE:
    torch.manual_seed(seed)
    rae = RAE(widths=(8, 8, 16, 16), num_res_blocks=1).eval()
    with torch.no_grad():  # zero-initialised residual gains would hide most of the network
        for name, p in rae.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.5)
    return rae


def records(n: int, height: int, width: int, seed: int = 0) -> list[MemoryRecord]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        hr = torch.rand(3, height, width, generator=g) * 2 - 1
        out.append(MemoryRecord(f"im{i}", hr, {s: (hr / s + 0.1 * torch.rand(3, height, width, generator=g)).clamp(-1, 1)
                                              for s in SCALES}))
    return out


def test_cached_latents_equal_the_encoders_latents_of_the_same_crop_under_every_transform():
    rae = tiny_rae(0)
    recs = records(2, 35, 37)                                     # aligned part: 32 x 32
    cache = load_or_build_latent_cache(rae, recs, SCALES, "a" * 64, torch.device("cpu"))
    data = aligned_training_set(TrainCropDataset(recs, SCALES, 32, 64), rae.stride)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        item = data[0]
        i, top, left, k = item["where"].tolist()
        seen.add(k)
        assert (top, left) == (0, 0)                              # the only aligned 32-crop of 35 x 37
        images = torch.cat([item["hr"][None], item["lr"]])       # [K,3,32,32], already transformed by k
        with torch.no_grad():
            expected = rae.encode(images)[0]                      # [K,C,4,4]
        got = cache.crops(item["where"][None], 32)[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert len(seen) >= 6                                         # several dihedral transforms exercised


def test_crops_of_the_cached_latent_sit_where_the_crop_sits_in_the_image():
    rae = tiny_rae(1)
    recs = records(1, 48, 64)
    cache = load_or_build_latent_cache(rae, recs, SCALES, "a" * 64, torch.device("cpu"))
    for k in range(8):
        full = torch.cat([recs[0].hr_image[None], torch.stack([recs[0].lr_images[s] for s in SCALES])])
        with torch.no_grad():
            z = rae.encode(dihedral(full, k))[0]                  # [K,C,h,w] of the transformed image
        h, w = z.shape[-2:]
        where = torch.tensor([[0, 8 * (h - 2), 8 * (w - 2), k]])
        torch.testing.assert_close(cache.crops(where, 16)[0], z[..., h - 2:, w - 2:], rtol=0, atol=1e-5)


def test_latent_cache_is_reused_from_disk_and_rebuilt_when_the_rae_checksum_changes(tmp_path, monkeypatch):
    recs = records(2, 16, 24)
    device = torch.device("cpu")
    first = load_or_build_latent_cache(tiny_rae(0), recs, SCALES, "a" * 64, device, tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and ("a" * 16) in files[0].name

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have been read from disk")

    with monkeypatch.context() as m:
        m.setattr(latent_cache_module, "encode_records", no_encoding)
        again = load_or_build_latent_cache(tiny_rae(0), recs, SCALES, "a" * 64, device, tmp_path)
    assert all(torch.equal(a, b) for ra, rb in zip(first.latents, again.latents) for a, b in zip(ra, rb))

    other = tiny_rae(5)
    rebuilt = load_or_build_latent_cache(other, recs, SCALES, "b" * 64, device, tmp_path)
    assert [p.name for p in tmp_path.glob("*.pt")] == [f"{rebuilt.fingerprint[:16]}-{'b' * 16}.pt"]
    with torch.no_grad():
        hr = recs[1].hr_image[None]
        torch.testing.assert_close(rebuilt.latents[1][0][0], other.encode(hr)[0][0], rtol=0, atol=1e-6)
    assert not torch.equal(rebuilt.latents[1][0], first.latents[1][0])


def test_latent_cache_is_rebuilt_when_the_training_images_change(tmp_path):
    device = torch.device("cpu")
    a = load_or_build_latent_cache(tiny_rae(0), records(1, 16, 16, seed=0), SCALES, "a" * 64, device, tmp_path)
    b = load_or_build_latent_cache(tiny_rae(0), records(1, 16, 16, seed=1), SCALES, "a" * 64, device, tmp_path)
    assert a.fingerprint != b.fingerprint and not torch.equal(a.latents[0][0], b.latents[0][0])


class SquaredError(torch.nn.Module):
    """A stand-in perceptual loss ([B] per sample) so the test needs no pretrained weights."""

    def forward(self, x, y):
        return (x - y).pow(2).flatten(1).mean(1)


def lfm_stage(rae, cache) -> LFMStage:
    torch.manual_seed(3)
    velocity = VelocityUNet(in_channels=4, nf=16, ch_mult=(1, 2), num_res_blocks=1, image_size=4, init_scale=1.0)
    return LFMStage(rae, velocity, (1.0, *SCALES), SplineSettings(), LossSettings(lpips_weight=0.5),
                    SolverSpec.create(method="euler", steps=2), None, (1.0, *SCALES), torch.device("cpu"),
                    rae_source={}, lpips_loss=SquaredError(), lpips_metric=None, latent_cache=cache)


def test_cached_and_uncached_training_steps_give_the_same_loss_and_gradients_on_whole_image_crops():
    # The math says they must agree when the crop is the whole aligned image: the cached latent
    # IS the latent of that crop, and the HR skip features are computed from the crop either way.
    rae = tiny_rae(0)
    recs = records(3, 32, 32)
    cache = load_or_build_latent_cache(rae, recs, SCALES, "a" * 64, torch.device("cpu"))
    data = aligned_training_set(TrainCropDataset(recs, SCALES, 32, 64), rae.stride)
    torch.manual_seed(7)
    batch = torch.utils.data.default_collate([data[0] for _ in range(4)])
    results = []
    for use_cache in (False, True):
        stage = lfm_stage(rae, cache if use_cache else None)
        batch["draws"] = RowDraws(11, 0)                          # the same t draws
        loss, scalars = stage.loss(batch)
        loss.backward()
        results.append((loss.detach(), scalars, [p.grad.clone() for p in stage.velocity.parameters()]))
    (l0, s0, g0), (l1, s1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-7)
    assert s0.keys() == s1.keys() and abs(s0["lpips"] - s1["lpips"]) < 1e-6
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_latent_cache_needs_crop_sizes_on_the_rae_stride():
    with pytest.raises(ValueError, match="data.crop_size to be a multiple of the RAE stride 8, got 20"):
        aligned_training_set(TrainCropDataset(records(1, 32, 32), SCALES, 20, 4), 8)


def write_pairs(root, n: int) -> list[PairRecord]:
    out = []
    for i, rec in enumerate(records(n, 24, 32)):
        hr = root / f"hr{i}.png"
        write_image(hr, rec.hr_image)
        lr = {}
        for s in SCALES:
            lr[s] = root / f"lr{i}_x{s:g}.png"
            write_image(lr[s], rec.lr_images[s])
        out.append(PairRecord(name=rec.name, hr=hr, hr_size=(32, 24), lr=lr, lr_sizes={s: (32, 24) for s in SCALES}))
    return out


def test_training_images_are_decoded_once_and_held_in_memory_when_they_fit(tmp_path):
    on_disk = write_pairs(tmp_path, 3)
    data = TrainCropDataset(on_disk, SCALES, 16, 8)
    held = in_memory_training_set(data, max_gib=1)
    assert held is not data and all(isinstance(r, MemoryRecord) for r in held.records)
    torch.manual_seed(0)
    from_disk = [data[0] for _ in range(5)]
    for p in tmp_path.glob("*.png"):                              # steady state reads no file at all
        p.unlink()
    torch.manual_seed(0)
    from_memory = [held[0] for _ in range(5)]
    for a, b in zip(from_disk, from_memory):
        assert a["name"] == b["name"] and torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
        assert torch.equal(a["where"], b["where"])


def test_training_images_too_large_for_the_limit_stay_on_disk_with_a_log_line(tmp_path, caplog):
    on_disk = write_pairs(tmp_path, 2)                            # 2 x 3 images x 24 x 32 x 12 B = 55 KiB
    with caplog.at_level(logging.WARNING, logger="degflow.data.memory"):
        kept = hold_in_memory(on_disk, SCALES, max_gib=50e3 / 2**30)
    assert kept == on_disk and "more than data_memory_gib" in caplog.text
    assert hold_in_memory(on_disk, SCALES, max_gib=0) == on_disk
    with pytest.raises(ValueError, match="data_memory_gib must be >= 0"):
        hold_in_memory(on_disk, SCALES, max_gib=-1)


@pytest.mark.parametrize("switch", ["channels_last=true", "precision=bf16"])
@pytest.mark.slow
def test_gpu_switches_do_not_break_a_cpu_training_step_of_either_stage(tmp_path, switch):
    common = [f"output_root={tmp_path}", "stage.steps=1", "stage.val_every=1", "stage.ckpt_every=1", switch,
              "loss.lpips_weight=0", "eval.lpips=false"]
    rae = train(train_config(["stage=rae", *common]), tmp_path / "rae")
    assert rae["step"] == 1 and all(row["psnr_y"] > 5 for row in rae["scales"].values())
    lfm = train(train_config(["stage=lfm", *common, f"rae_ckpt={tmp_path / 'rae' / 'checkpoints' / 'last.pt'}"]),
                tmp_path / "lfm")
    assert lfm["step"] == 1 and all(torch.isfinite(torch.tensor(row["psnr_y"])) for row in lfm["scales"].values())


def test_channels_last_changes_the_memory_order_not_the_function():
    rae = tiny_rae(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = rae(x, x)
        fast = accelerate(copy.deepcopy(rae), channels_last=True)
        assert fast.encoder.stem.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast(x, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_compiled_velocity_network_trains_a_cpu_step_like_the_eager_one():
    torch.manual_seed(0)
    eager = VelocityUNet(in_channels=4, nf=8, ch_mult=(1, 2), num_res_blocks=1, image_size=4, init_scale=1.0,
                         dropout=0.0)   # no random masks: both runs must compute the same function
    compiled = accelerate(copy.deepcopy(eager), compile=True)
    z, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    losses = []
    for net in (eager, compiled):
        loss = net(z, t).square().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5)
    assert [k for k, _ in compiled.named_parameters()] == [k for k, _ in eager.named_parameters()]


@pytest.mark.slow
def test_lfm_trains_with_and_without_the_latent_cache_and_writes_the_cache_once(tmp_path):
    common = [f"output_root={tmp_path}", "stage.steps=2", "stage.val_every=2", "stage.ckpt_every=2",
              "loss.lpips_weight=0", "eval.lpips=false"]
    train(train_config(["stage=rae", *common]), tmp_path / "rae")
    rae_ckpt = f"rae_ckpt={tmp_path / 'rae' / 'checkpoints' / 'last.pt'}"
    for use_cache in ("true", "false"):
        metrics = train(train_config(["stage=lfm", *common, rae_ckpt, f"stage.latent_cache={use_cache}"]),
                        tmp_path / f"lfm_{use_cache}")
        assert metrics["step"] == 2
    assert len(list((tmp_path / "latent_cache").glob("*.pt"))) == 1
