"""data=realsr: RealSR ordered layout (V2 at HR size, V3 resized), indexing and errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from _data_trees import LR_FUNCS_T, make_realsr, rand_image, save, scan, truncate
from degflow.data import build_data, check_scales
from degflow.data.images import read_image
from degflow.data.transforms import crop_to_multiple, dihedral


@pytest.fixture
def v2(tmp_path):
    return make_realsr(tmp_path / "RealSR")


def test_v2_bundle_scales_counts_and_description(v2):
    b = build_data("realsr", root=v2, crop_size=16, samples_per_epoch=5)
    assert b.train_scales == (1.0, 2.0, 4.0) and b.val_scales == (1.0, 2.0, 3.0, 4.0)
    assert len(b.train) == 5 and len(b.val) == 1
    assert "V2" in b.description and "Canon" in b.description and "\n" not in b.description
    # validation: a held-out tenth (at least one name) of Train, never the Test split
    assert "held-out 0.1 of Train" in b.description
    assert [r.name for r in b.val.records] == ["Canon_002"]
    assert [r.name for r in b.train.records] == ["Canon_001", "Canon_003"]
    assert all("Train" in r.hr.parts for r in b.val.records + b.train.records)


def test_test_split_is_indexed_only_when_asked_for(v2):
    b = build_data("realsr", root=v2, crop_size=16)
    for f in (v2 / "Canon/Test").rglob("*.png"):
        f.unlink()  # training and validation never look at Test
    assert len(b.val) == 1 and b.train[0]["hr"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="empty split.*Test"):
        b.test
    full = build_data("realsr", root=make_realsr(v2.parent / "again"), crop_size=16).test
    assert [r.name for r in full.records] == ["Canon_001", "Canon_002", "Canon_003"]
    item = full[0]                                       # full, uncropped images, val scales
    assert item["hr"].shape == (3, 40, 56) and item["scales"].tolist() == [2.0, 3.0, 4.0]
    assert all("Test" in r.hr.parts for r in full.records)


@pytest.mark.parametrize("splits, match", [
    (dict(val_split="Test"), r"data\.val_split='Test' is also data\.test_split"),
    (dict(val_split="Train"), r"data\.val_split='Train' is also data\.train_split"),
    (dict(test_split="Train"), r"never train on the test split"),
])
def test_validation_never_reads_the_test_or_training_split(v2, splits, match):
    with pytest.raises(ValueError, match=match):
        build_data("realsr", root=v2, crop_size=16, **splits)


def test_train_crops_are_aligned_across_hr_and_every_lr_under_all_transforms(v2):
    b = build_data("realsr", root=v2, crop_size=16, samples_per_epoch=50)
    torch.manual_seed(0)
    for i in range(40):
        it = b.train[i]
        assert it["hr"].shape == (3, 16, 16) and it["lr"].shape == (2, 3, 16, 16)
        assert it["scales"].tolist() == [2.0, 4.0] and it["scales"].dtype == torch.float32
        # LR_s was built pixel-wise from HR: same crop + same transform keeps that relation
        assert torch.allclose(it["lr"][0], LR_FUNCS_T[2](it["hr"]), atol=1e-6)
        assert torch.allclose(it["lr"][1], LR_FUNCS_T[4](it["hr"]), atol=1e-6)
        assert it["hr"].min() >= -1 and it["hr"].max() <= 1


def test_all_8_dihedral_transforms_occur(tmp_path):
    root = make_realsr(tmp_path / "R", n=2, h=12, w=12)
    b = build_data("realsr", root=root, crop_size=12, samples_per_epoch=10)  # crop = the full image
    hr = read_image(b.train.records[0].hr)
    torch.manual_seed(1)
    seen = set()
    for i in range(200):
        it = b.train[i]
        for k in range(8):
            if torch.equal(it["hr"], dihedral(hr, k)):
                seen.add(k)
    assert seen == set(range(8))


def test_val_items_are_deterministic_center_crops_to_multiple(tmp_path):
    root = make_realsr(tmp_path / "R", h=50, w=70)
    b = build_data("realsr", root=root, crop_size=16, multiple_of=8)
    it = b.val[0]
    hr = read_image(root / "Canon/Train/2/Canon_002_HR.png")
    assert it["name"] == "Canon_002" and it["hr"].shape == (3, 48, 64)
    assert torch.equal(it["hr"], crop_to_multiple(hr, 8))
    assert it["lr"].shape == (3, 3, 48, 64) and it["scales"].tolist() == [2.0, 3.0, 4.0]
    for j, s in enumerate((2, 3, 4)):
        assert torch.allclose(it["lr"][j], LR_FUNCS_T[s](it["hr"]), atol=1e-6)
    assert torch.equal(b.val[0]["lr"], it["lr"])
    small = build_data("realsr", root=root, crop_size=16, multiple_of=8, val_max_size=20)
    assert small.val[0]["hr"].shape == (3, 16, 16)


def test_tuple_hr_comes_from_the_lowest_training_scale_folder(tmp_path):
    root = make_realsr(tmp_path / "R")
    other = rand_image(40, 56, 999)  # same size, different content in folder 4
    save(root / "Canon/Train/4/Canon_001_HR.png", other)
    b = build_data("realsr", root=root, crop_size=16)
    rec = next(r for r in b.train.records if r.name == "Canon_001")
    assert rec.hr.parent.name == "2"
    deep = scan("realsr", root=root, deep=True)
    assert deep.ok and any("HR differs across scale folders" in n for n in deep.notes)


def test_v3_lr_at_true_size_is_resized_to_hr_size_and_said(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="degflow.data")
    root = make_realsr(tmp_path / "R", h=48, w=64, v3=True, ramp=True)
    b = build_data("realsr", root=root, crop_size=24)
    assert "V3" in b.description and "resized" in b.description
    assert any("true LR size" in r.message for r in caplog.records)
    torch.manual_seed(0)
    for i in range(10):  # smooth ramps: resized LR ~ HR at the same (transformed) position
        it = b.train[i]
        assert it["lr"].shape == (2, 3, 24, 24)
        assert (it["lr"][0] - it["hr"]).abs().mean() < 0.03
        assert (it["lr"][1] - it["hr"]).abs().mean() < 0.05
    v = b.val[0]
    assert v["lr"].shape == (3, 3, 48, 64)


def test_several_cameras(tmp_path):
    root = make_realsr(tmp_path / "R", cams=("Canon", "Nikon"), n=2)
    b = build_data("realsr", root=root, camera=["Canon", "Nikon"], crop_size=16)
    assert [r.name for r in b.train.records] == ["Canon_001", "Nikon_001"]
    assert [r.name for r in b.val.records] == ["Canon_002", "Nikon_002"]  # each camera split alike
    assert len(build_data("realsr", root=root, camera="Nikon", crop_size=16).train.records) == 1


def test_pixels_are_read_lazily(v2):
    b = build_data("realsr", root=v2, crop_size=16)
    p = v2 / "Canon/Train/2/Canon_002_HR.png"
    save(p, np.zeros((40, 56, 3), np.uint8))  # changed after indexing
    assert b.val[0]["hr"].max() == -1


def test_missing_root_names_data_root(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        build_data("realsr", root=tmp_path / "nope")
    with pytest.raises(ValueError, match="data.root"):
        build_data("realsr", root="???")


def test_missing_camera_lists_what_exists(v2):
    with pytest.raises(ValueError, match=r"Nikon.*does not exist.*\['Canon'\]"):
        build_data("realsr", root=v2, camera="Nikon")


def test_empty_split(tmp_path):
    root = make_realsr(tmp_path / "R")
    for f in (root / "Canon/Train").rglob("*.png"):
        f.unlink()
    with pytest.raises(ValueError, match="empty split.*Train"):
        build_data("realsr", root=root, crop_size=16)


def test_missing_split_lists_folders(v2):
    with pytest.raises(ValueError, match=r"Valid.*\['Test', 'Train'\]"):
        build_data("realsr", root=v2, val_split="Valid", crop_size=16)
    save(v2 / "Canon/Valid/2/Canon_007_HR.png", rand_image(40, 56, 0))  # an explicit val split
    for s in (2, 3, 4):
        save(v2 / f"Canon/Valid/{s}/Canon_007_HR.png", rand_image(40, 56, 0))
        save(v2 / f"Canon/Valid/{s}/Canon_007_LR{s}.png", rand_image(40, 56, s))
    b = build_data("realsr", root=v2, val_split="Valid", crop_size=16)
    assert [r.name for r in b.val.records] == ["Canon_007"] and len(b.train.records) == 3


def test_missing_scale_folder_for_a_requested_scale(tmp_path):
    root = make_realsr(tmp_path / "R", splits={"Train": (2, 4), "Test": (2, 4)})
    with pytest.raises(ValueError, match=r"missing scale.*scale 3 \(data.val_scales\).*\['2', '4'\]"):
        build_data("realsr", root=root, crop_size=16)
    assert build_data("realsr", root=root, val_scales=[1, 2, 4], crop_size=16).val_scales == (1, 2, 4)


def test_hr_lr_size_mismatch_names_both_files_and_sizes(v2):
    save(v2 / "Canon/Train/4/Canon_002_LR4.png", rand_image(30, 30, 0))
    with pytest.raises(ValueError, match=r"size mismatch.*Canon_002_LR4.png is 30x30.*"
                                         r"Canon_002_HR.png is 56x40"):
        build_data("realsr", root=v2, crop_size=16)


def test_hr_size_differing_across_scale_folders_is_reported(v2):
    save(v2 / "Canon/Train/4/Canon_003_HR.png", rand_image(44, 56, 0))
    save(v2 / "Canon/Train/4/Canon_003_LR4.png", rand_image(44, 56, 1))
    with pytest.raises(ValueError, match="HR files of Canon_003 differ across scale folders"):
        build_data("realsr", root=v2, crop_size=16)


def test_missing_partner_is_named(v2):
    (v2 / "Canon/Train/2/Canon_002_LR2.png").unlink()
    (v2 / "Canon/Train/4/Canon_003_HR.png").unlink()
    (v2 / "Canon/Train/4/Canon_003_LR4.png").unlink()
    r = scan("realsr", root=v2)
    text = "\n".join(r.problems)
    assert "Canon_002_HR.png has no LR partner" in text
    assert "Canon_003 is in scale folder(s) ['2']" in text and "not in ['4']" in text
    with pytest.raises(ValueError, match="missing partner"):
        build_data("realsr", root=v2, crop_size=16)


def test_unreadable_image_names_the_file(v2):
    (v2 / "Canon/Train/4/Canon_001_LR4.png").write_text("garbage")
    with pytest.raises(ValueError, match=r"unreadable.*Canon_001_LR4.png"):
        build_data("realsr", root=v2, crop_size=16)


def test_truncated_image_detected_by_deep_scan_and_by_loading(v2):
    truncate(v2 / "Canon/Train/3/Canon_002_LR3.png", 0.6)
    deep = scan("realsr", root=v2, deep=True)
    assert any("unreadable" in p and "Canon_002_LR3.png" in p for p in deep.problems)
    b = build_data("realsr", root=v2, crop_size=16)  # header scan only: found when the pixels are read
    with pytest.raises(ValueError, match="Canon_002_LR3.png.*truncated"):
        b.val[0]


@pytest.mark.parametrize("scales, match", [
    ([2, 4], "must start with 1"), ([1, 4, 2], "sorted"), ([1, 1, 2], "sorted"),
    ([1, 0.5], ">= 1"), ("1,2", "list"), ([1], "at least one"),
])
def test_scale_lists_are_validated_with_the_key(v2, scales, match):
    with pytest.raises(ValueError, match=f"data.train_scales.*{match}"):
        build_data("realsr", root=v2, train_scales=scales)
    with pytest.raises(ValueError, match="data.val_scales"):
        check_scales(scales, "data.val_scales")


def test_crop_larger_than_images(v2):
    with pytest.raises(ValueError, match="data.crop_size=64"):
        build_data("realsr", root=v2, crop_size=64)
