"""data=realsr: RealSR ordered layout (V2 at HR size, V3 resized), indexing and errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from _data_trees import LR_FUNCS_T, make_realsr, rand_image, save, truncate
from degflow.data import check_scales, realsr_data, scan_realsr
from degflow.data.images import read_image
from degflow.data.transforms import center_crop_to_multiple, dihedral


@pytest.fixture
def v2(tmp_path):
    return make_realsr(tmp_path / "RealSR")


def test_v2_bundle_scales_counts_and_description(v2):
    b = realsr_data(v2, crop_size=16, samples_per_epoch=5)
    assert b.train_scales == (1.0, 2.0, 4.0) and b.val_scales == (1.0, 2.0, 3.0, 4.0)
    assert len(b.train) == 5 and len(b.val) == 3
    assert "V2" in b.description and "Canon" in b.description and "\n" not in b.description
    assert [r.name for r in b.val.records] == ["Canon_001", "Canon_002", "Canon_003"]


def test_train_crops_are_aligned_across_hr_and_every_lr_under_all_transforms(v2):
    b = realsr_data(v2, crop_size=16, samples_per_epoch=50)
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
    root = make_realsr(tmp_path / "R", n=1, h=12, w=12)
    b = realsr_data(root, crop_size=12, samples_per_epoch=10)  # crop = the full image
    hr = read_image(root / "Canon/Train/2/Canon_001_HR.png")
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
    b = realsr_data(root, crop_size=16, multiple_of=8)
    it = b.val[1]
    hr = read_image(root / "Canon/Test/2/Canon_002_HR.png")
    assert it["name"] == "Canon_002" and it["hr"].shape == (3, 48, 64)
    assert torch.equal(it["hr"], center_crop_to_multiple(hr, 8))
    assert it["lr"].shape == (3, 3, 48, 64) and it["scales"].tolist() == [2.0, 3.0, 4.0]
    for j, s in enumerate((2, 3, 4)):
        assert torch.allclose(it["lr"][j], LR_FUNCS_T[s](it["hr"]), atol=1e-6)
    assert torch.equal(b.val[1]["lr"], it["lr"])
    small = realsr_data(root, crop_size=16, multiple_of=8, val_max_size=20)
    assert small.val[0]["hr"].shape == (3, 16, 16)


def test_tuple_hr_comes_from_the_lowest_training_scale_folder(tmp_path):
    root = make_realsr(tmp_path / "R")
    other = rand_image(40, 56, 999)  # same size, different content in folder 4
    save(root / "Canon/Train/4/Canon_001_HR.png", other)
    b = realsr_data(root, crop_size=16)
    rec = next(r for r in b.train.records if r.name == "Canon_001")
    assert rec.hr.parent.name == "2"
    deep = scan_realsr(root, deep=True)
    assert deep.ok and any("HR differs across scale folders" in n for n in deep.notes)


def test_v3_lr_at_true_size_is_resized_to_hr_size_and_said(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="degflow.data")
    root = make_realsr(tmp_path / "R", h=48, w=64, v3=True, ramp=True)
    b = realsr_data(root, crop_size=24)
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
    b = realsr_data(root, camera=["Canon", "Nikon"], crop_size=16)
    names = [r.name for r in b.train.records]
    assert names == ["Canon_001", "Canon_002", "Nikon_001", "Nikon_002"]
    assert len(realsr_data(root, camera="Nikon", crop_size=16).train.records) == 2


def test_pixels_are_read_lazily(v2):
    b = realsr_data(v2, crop_size=16)
    p = v2 / "Canon/Test/2/Canon_001_HR.png"
    save(p, np.zeros((40, 56, 3), np.uint8))  # changed after indexing
    assert b.val[0]["hr"].max() == -1


def test_missing_root_names_data_root(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        realsr_data(tmp_path / "nope")
    with pytest.raises(ValueError, match="data.root"):
        realsr_data("???")


def test_missing_camera_lists_what_exists(v2):
    with pytest.raises(ValueError, match=r"Nikon.*does not exist.*\['Canon'\]"):
        realsr_data(v2, camera="Nikon")


def test_empty_split(tmp_path):
    root = make_realsr(tmp_path / "R")
    for f in (root / "Canon/Test").rglob("*.png"):
        f.unlink()
    with pytest.raises(ValueError, match="empty split.*Test"):
        realsr_data(root, crop_size=16)


def test_missing_split_lists_folders(v2):
    with pytest.raises(ValueError, match=r"Valid.*\['Test', 'Train'\]"):
        realsr_data(v2, val_split="Valid", crop_size=16)


def test_missing_scale_folder_for_a_requested_scale(tmp_path):
    root = make_realsr(tmp_path / "R", splits={"Train": (2, 4), "Test": (2, 4)})
    with pytest.raises(ValueError, match=r"missing scale.*scale 3 \(data.val_scales\).*\['2', '4'\]"):
        realsr_data(root, crop_size=16)
    assert realsr_data(root, val_scales=[1, 2, 4], crop_size=16).val_scales == (1, 2, 4)


def test_hr_lr_size_mismatch_names_both_files_and_sizes(v2):
    save(v2 / "Canon/Train/4/Canon_002_LR4.png", rand_image(30, 30, 0))
    with pytest.raises(ValueError, match=r"size mismatch.*Canon_002_LR4.png is 30x30.*"
                                         r"Canon_002_HR.png is 56x40"):
        realsr_data(v2, crop_size=16)


def test_hr_size_differing_across_scale_folders_is_reported(v2):
    save(v2 / "Canon/Train/4/Canon_003_HR.png", rand_image(44, 56, 0))
    save(v2 / "Canon/Train/4/Canon_003_LR4.png", rand_image(44, 56, 1))
    with pytest.raises(ValueError, match="HR files of Canon_003 differ across scale folders"):
        realsr_data(v2, crop_size=16)


def test_missing_partner_is_named(v2):
    (v2 / "Canon/Train/2/Canon_002_LR2.png").unlink()
    (v2 / "Canon/Train/4/Canon_003_HR.png").unlink()
    (v2 / "Canon/Train/4/Canon_003_LR4.png").unlink()
    r = scan_realsr(v2)
    text = "\n".join(r.problems)
    assert "Canon_002_HR.png has no LR partner" in text
    assert "Canon_003 is in scale folder(s) ['2']" in text and "not in ['4']" in text
    with pytest.raises(ValueError, match="missing partner"):
        realsr_data(v2, crop_size=16)


def test_unreadable_image_names_the_file(v2):
    (v2 / "Canon/Train/4/Canon_001_LR4.png").write_text("garbage")
    with pytest.raises(ValueError, match=r"unreadable.*Canon_001_LR4.png"):
        realsr_data(v2, crop_size=16)


def test_truncated_image_detected_by_deep_scan_and_by_loading(v2):
    truncate(v2 / "Canon/Test/3/Canon_001_LR3.png", 0.6)
    deep = scan_realsr(v2, deep=True)
    assert any("unreadable" in p and "Canon_001_LR3.png" in p for p in deep.problems)
    b = realsr_data(v2, crop_size=16)  # header scan only: found when the pixels are read
    with pytest.raises(ValueError, match="Canon_001_LR3.png.*truncated"):
        b.val[0]


@pytest.mark.parametrize("scales, match", [
    ([2, 4], "must start with 1"), ([1, 4, 2], "sorted"), ([1, 1, 2], "sorted"),
    ([1, 0.5], ">= 1"), ("1,2", "list"), ([1], "at least one"),
])
def test_scale_lists_are_validated_with_the_key(v2, scales, match):
    with pytest.raises(ValueError, match=f"data.train_scales.*{match}"):
        realsr_data(v2, train_scales=scales)
    with pytest.raises(ValueError, match="data.val_scales"):
        check_scales(scales, "data.val_scales")


def test_crop_larger_than_images(v2):
    with pytest.raises(ValueError, match="data.crop_size=64"):
        realsr_data(v2, crop_size=64)
