"""data=demo: the bundled photos and the procedural, continuous-in-scale degradation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from degflow.data import DataBundle, build_data
from degflow.data import simulate_camera as degrade
from degflow.data.demo import TEST_IMAGES, TRAIN_IMAGES, demo_image_paths, jpeg_quality
from degflow.data.images import read_image
from degflow.data.transforms import dihedral


def y_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """BT.601 luma PSNR on [0, 1] images given in [-1, 1] (no shave)."""
    w = torch.tensor([65.481, 128.553, 24.966]).view(3, 1, 1) / 255.0
    ya = ((a + 1) / 2 * w).sum(-3)
    yb = ((b + 1) / 2 * w).sum(-3)
    return float(10 * torch.log10(1.0 / ((ya - yb) ** 2).mean()))


def bicubic(hr: torch.Tensor, s: float) -> torch.Tensor:
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr[None], size=(round(h / s), round(w / s)), mode="bicubic",
                       align_corners=False, antialias=True)
    return F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(-1, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small tensor ops: one intra-op thread avoids thread-sync overhead on a busy
    2-core machine (results are identical)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    _, val = demo_image_paths()
    return read_image(val[0])[:, 60:220, 120:320]  # chelsea.png (a 160 x 200 crop: fast)


@pytest.fixture(scope="module")
def bundle() -> DataBundle:
    return build_data("demo", crop_size=48, samples_per_epoch=16, val_max_size=128, max_side=256)


def test_photos_ship_inside_the_scikit_image_wheel():
    train, test = demo_image_paths()
    assert [p.name for p in train] == list(TRAIN_IMAGES)
    assert [p.name for p in test] == list(TEST_IMAGES)
    assert all(p.is_file() and "skimage" in p.parts[-3] for p in train + test)


def test_scale_1_returns_the_hr_image_exactly(cat):
    out = degrade(cat, 1.0, seed=3)
    assert torch.equal(out, cat) and out is not cat


def test_degrade_is_deterministic_given_image_scale_and_seed(cat):
    a, b = degrade(cat, 2.7, seed=5), degrade(cat, 2.7, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, degrade(cat, 2.7, seed=6))  # the seed drives the noise
    assert a.shape == cat.shape and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1


def test_batched_degrade_equals_per_image_degrade(cat):
    batch = torch.stack([cat[:, :96, :128], cat[:, 64:160, 72:200]])
    out = degrade(batch, 3.3, seed=1)
    assert out.shape == batch.shape
    for i in range(2):
        assert torch.equal(out[i], degrade(batch[i], 3.3, seed=1))


@pytest.mark.parametrize("s", [1.5, 2.5, 3.5])
def test_small_change_in_scale_gives_small_change_in_image(cat, s):
    a = degrade(cat, s, 0)
    tiny = (a - degrade(cat, s + 0.002, 0)).abs().mean()
    big = (a - degrade(cat, s + 0.5, 0)).abs().mean()
    assert tiny < 0.015  # < 2 grey levels on average (JPEG requantization is the floor)
    assert tiny < 0.35 * big


def test_continuous_at_scale_1(cat):
    assert (degrade(cat, 1.001, 0) - cat).abs().mean() < 0.01
    assert (degrade(cat, 1.3, 0) - cat).abs().mean() > 0.02


def test_fidelity_to_hr_decreases_with_scale_at_non_integer_scales_too(cat):
    psnrs = [y_psnr(degrade(cat, s, 0), cat) for s in (1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 6.0)]
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs


def test_clearly_different_from_bicubic_at_scale_3(cat):
    lr = degrade(cat, 3.0, 0)
    bic = bicubic(cat, 3.0)
    assert y_psnr(bic, cat) - y_psnr(lr, cat) > 2.0
    assert y_psnr(lr, bic) < 30.0


def test_nonlinear_in_scale(cat):
    d2, d3, d4 = (degrade(cat, s, 0) for s in (2.0, 3.0, 4.0))
    assert y_psnr(d3, (d2 + d4) / 2) < 35.0  # x3 is not the average of x2 and x4
    q = [jpeg_quality(s) for s in (1.0, 2.0, 3.0, 4.0)]
    assert q[0] > q[1] > q[2] > q[3] and (q[0] - q[1]) > (q[2] - q[3])


def test_degrade_rejects_bad_inputs(cat):
    with pytest.raises(ValueError, match=">= 1"):
        degrade(cat, 0.5)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        degrade(torch.zeros(4, 8, 8), 2.0)


def test_bundle_scales_description_and_lengths(bundle):
    assert bundle.train_scales == (1.0, 2.0, 4.0)
    assert bundle.val_scales == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    assert "demo" in bundle.description and "\n" not in bundle.description
    assert len(bundle.train) == 16 and len(bundle.val) == 5


def test_validation_is_a_held_out_band_of_each_training_photo_and_test_is_separate(bundle):
    """Train rows and validation rows of a photo are disjoint and together the whole photo;
    the test photos are other photos, built only when asked for."""
    train = {r.name: r for r in bundle.train.records}
    for v in bundle.val.records:
        name = v.name.removesuffix("_val")
        t = train[name]
        rows_t, rows_v = t.hr_image.shape[-2], v.hr_image.shape[-2]
        assert rows_v == round(0.25 * (rows_t + rows_v))
        photo = torch.cat([t.hr_image, v.hr_image], dim=-2)      # [3, H, W], the whole photo
        assert photo.shape[-1] == t.hr_image.shape[-1] and max(photo.shape[-2:]) == 256
        # each part was degraded on its own: no validation pixel reaches a training LR
        assert torch.equal(t.lr_images[2.0], degrade(t.hr_image, 2.0, seed=TRAIN_IMAGES.index(
            next(p for p in TRAIN_IMAGES if p.rsplit(".", 1)[0] == name))))
    test = bundle.test
    assert [r.name for r in test.records] == [p.rsplit(".", 1)[0] for p in TEST_IMAGES]
    assert not {r.name for r in test.records} & {r.name.removesuffix("_val") for r in bundle.val.records}


def test_the_test_split_alone_equals_the_bundles_test_split_without_degrading_the_training_photos(bundle):
    from degflow.data.demo import demo_test_split

    scales = bundle.val_scales
    alone, full = demo_test_split(list(reversed(scales)), seed=0, max_side=256), bundle.test
    assert len(alone) == len(full) == len(TEST_IMAGES)
    for i in range(len(full)):
        a, b = alone[i], full[i]
        assert a["name"] == b["name"] and torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
        assert torch.equal(a["scales"], b["scales"])
    # test photo i draws its noise from seed len(TRAIN_IMAGES) + i (data.seed 0)
    assert torch.equal(alone[1]["lr"][-1], degrade(alone[1]["hr"], scales[-1], seed=len(TRAIN_IMAGES) + 1))


def test_train_items_are_aligned_random_crops_with_the_documented_format(bundle):
    torch.manual_seed(0)
    item = bundle.train[0]
    assert set(item) == {"name", "hr", "lr", "scales", "where"}
    assert item["hr"].shape == (3, 48, 48) and item["lr"].shape == (2, 3, 48, 48)
    assert item["scales"].dtype == torch.float32 and item["scales"].tolist() == [2.0, 4.0]
    assert item["name"] in {p.rsplit(".", 1)[0] for p in TRAIN_IMAGES}
    # alignment: undoing one of the 8 transforms, hr and every lr are the same window of the
    # full HR / degraded images
    rec = next(r for r in bundle.train.records if r.name == item["name"])
    lr_full = torch.stack([rec.lr_images[2.0], rec.lr_images[4.0]])
    assert locate(item["hr"], item["lr"], rec.hr_image, lr_full)


def locate(hr, lr, hr_full, lr_full) -> bool:
    """True if some dihedral k and window (t, l) give hr == T_k(hr_full[win]) and
    lr == T_k(lr_full[win])."""
    size = hr.shape[-1]
    patches = hr_full.unfold(1, 4, 1).unfold(2, 4, 1)  # [3, H-3, W-3, 4, 4]
    for k in range(8):
        hh, ll = dihedral(hr, INVERSE[k]), dihedral(lr, INVERSE[k])
        hits = (patches == hh[:, None, None, :4, :4]).flatten(3).all(-1).all(0).nonzero()
        for t, l in hits.tolist():
            if (t + size <= hr_full.shape[-2] and l + size <= hr_full.shape[-1]
                    and torch.equal(hr_full[:, t:t + size, l:l + size], hh)
                    and torch.equal(lr_full[:, :, t:t + size, l:l + size], ll)):
                return True
    return False


# dihedral(dihedral(x, k), INVERSE[k]) == x
INVERSE = [next(j for j in range(8) if torch.equal(
    dihedral(dihedral(torch.arange(6.0).view(2, 3), k), j), torch.arange(6.0).view(2, 3)))
    for k in range(8)]


def test_training_randomness_follows_torch_seed(bundle):
    torch.manual_seed(3)
    a = [bundle.train[i]["hr"] for i in range(4)]
    torch.manual_seed(3)
    b = [bundle.train[i]["hr"] for i in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(a[0], x) for x in a[1:])


def test_dataloader_with_workers_batches_items(bundle):
    torch.manual_seed(0)
    loader = DataLoader(bundle.train, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 4
    assert batches[0]["lr"].shape == (4, 2, 3, 48, 48)
    # workers draw different crops
    flat = torch.cat([b["hr"] for b in batches]).flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 16


def test_val_items_are_deterministic_center_crops_of_the_degraded_full_image(bundle):
    a, b = bundle.val[0], bundle.val[0]
    assert torch.equal(a["lr"], b["lr"]) and a["name"] == "astronaut_val"
    assert a["hr"].shape == (3, 64, 128) and a["lr"].shape == (6, 3, 64, 128)
    assert a["scales"].tolist() == [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    rec = bundle.val.records[0]
    H, W = rec.hr_image.shape[-2:]                                 # the 64 x 256 band
    h8, w8 = H - H % 8, W - W % 8
    t, l = (H - h8) // 2 + (h8 - 64) // 2, (W - w8) // 2 + (w8 - 128) // 2
    assert torch.equal(a["hr"], rec.hr_image[:, t:t + 64, l:l + 128])
    # LR was degraded from the FULL band (its own seed), then cropped
    full = degrade(rec.hr_image, 2.5, seed=100)
    assert torch.equal(a["lr"][2], full[:, t:t + 64, l:l + 128])


def test_val_without_size_limit_keeps_full_image_cropped_to_multiple():
    b = build_data("demo", train_scales=[1, 3], val_scales=[1, 2, 3], multiple_of=64, val_max_size=None,
                  max_side=200, val_fraction=0.5)
    for item in (b.val[0], b.val[1]):
        h, w = item["hr"].shape[-2:]
        assert h % 64 == 0 and w % 64 == 0 and max(h, w) == 192


@pytest.mark.parametrize("bad, match", [
    ({"train_scales": [2, 4]}, "data.train_scales"),
    ({"train_scales": [1, 4, 2]}, "data.train_scales.*sorted"),
    ({"val_scales": [1, 0.5, 2]}, "data.val_scales"),
    ({"train_scales": [1]}, "data.train_scales"),
    ({"crop_size": 10_000}, "data.crop_size"),
    ({"multiple_of": 0}, "data.multiple_of"),
    ({"val_scales": [1, 2, 3]}, "data.val_scales.*must include every training scale"),
])
def test_bad_config_values_name_the_config_key(bad, match):
    with pytest.raises(ValueError, match=match):
        build_data("demo", **{"max_side": 64, **bad})
