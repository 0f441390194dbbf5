"""data=paired: HR/ + x<s>/ folders, splits, true-size LR, errors, and the real RealSR x4
pairs in ../shared/data/realsr_x4 when present."""

from __future__ import annotations

import pytest
import torch

from _data_trees import LR_FUNCS_T, make_paired, rand_image, save, scan
from degflow.data import build_data, split_names


def test_bundle_from_hr_and_scale_folders_with_deterministic_split(tmp_path):
    root = make_paired(tmp_path / "P", scales=(2, 4), n=10)
    b = build_data("paired", root=root, train_scales=[1, 2, 4], crop_size=16, samples_per_epoch=7)
    assert b.train_scales == (1.0, 2.0, 4.0) and b.val_scales == (1.0, 2.0, 4.0)
    tr = [r.name for r in b.train.records]
    va = [r.name for r in b.val.records]
    assert len(va) == 1 and len(tr) == 9 and not set(tr) & set(va)
    assert "val_fraction" in b.description
    again = build_data("paired", root=root, train_scales=[1, 2, 4], crop_size=16)
    assert [r.name for r in again.val.records] == va
    torch.manual_seed(0)
    for i in range(20):
        it = b.train[i]
        assert it["lr"].shape == (2, 3, 16, 16) and it["scales"].tolist() == [2.0, 4.0]
        assert torch.allclose(it["lr"][0], LR_FUNCS_T[2](it["hr"]), atol=1e-6)
        assert torch.allclose(it["lr"][1], LR_FUNCS_T[4](it["hr"]), atol=1e-6)
    v = b.val[0]
    assert v["hr"].shape == (3, 40, 56) and v["lr"].shape == (2, 3, 40, 56)


def test_split_names_is_deterministic_seeded_and_keeps_at_least_one_val():
    names = [f"n{i}" for i in range(30)]
    tr, va = split_names(names, 0.1, 0)
    assert len(va) == 3 and sorted(tr + va) == sorted(names)
    assert split_names(list(reversed(names)), 0.1, 0) == (tr, va)
    assert split_names(names, 0.1, 1)[1] != va
    assert len(split_names(names[:3], 0.01, 0)[1]) == 1
    # adding names keeps most of the previous validation set
    assert len(set(split_names(names + ["extra"], 0.1, 0)[1]) & set(va)) >= 2


def test_train_and_val_subtrees(tmp_path):
    make_paired(tmp_path / "P" / "train", n=4)
    make_paired(tmp_path / "P" / "val", n=2)
    b = build_data("paired", root=tmp_path / "P", train_scales=[1, 2, 4], crop_size=16)
    assert len(b.train.records) == 4 and len(b.val.records) == 2
    assert b.val.records[0].hr.parent.parent.name == "val"
    assert "subtrees" in b.description


def test_test_subtree_is_read_only_when_asked_for(tmp_path):
    make_paired(tmp_path / "P" / "train", n=4)
    make_paired(tmp_path / "P" / "val", n=2)
    make_paired(tmp_path / "P" / "test", n=3, h=44, w=60)
    b = build_data("paired", root=tmp_path / "P", train_scales=[1, 2, 4], crop_size=16)
    assert "test split present" in b.description
    (tmp_path / "P" / "test" / "x4" / "img_01.png").unlink()  # not looked at until evaluation
    assert len(b.val) == 2
    with pytest.raises(ValueError, match="img_01.png has no x4 partner"):
        b.test
    make_paired(tmp_path / "P" / "test", n=3, h=44, w=60)
    test = b.test
    assert len(test) == 3 and test[0]["hr"].shape == (3, 44, 60)       # full, uncropped
    assert all(r.hr.parent.parent.name == "test" for r in test.records)


def test_without_a_test_split_asking_for_it_says_so(tmp_path):
    b = build_data("paired", root=make_paired(tmp_path / "P", n=4), train_scales=[1, 2, 4],
                   crop_size=16)
    with pytest.raises(ValueError, match=r"no test split.*data\.test_root"):
        b.test


def test_explicit_val_root(tmp_path):
    make_paired(tmp_path / "A", n=4)
    make_paired(tmp_path / "B", n=3)
    b = build_data("paired", root=tmp_path / "A", train_scales=[1, 2, 4], val_root=str(tmp_path / "B"),
                    crop_size=16)
    assert len(b.train.records) == 4 and len(b.val.records) == 3


def test_val_scales_may_differ_from_train_scales(tmp_path):
    root = make_paired(tmp_path / "P", scales=(2, 3, 4), n=5)
    b = build_data("paired", root=root, train_scales=[1, 2, 4], val_scales=[1, 2, 3, 4], crop_size=16)
    assert b.val[0]["scales"].tolist() == [2.0, 3.0, 4.0]
    assert b.train.scales == (2.0, 4.0)


def test_true_size_lr_is_resized_and_said(tmp_path):
    root = make_paired(tmp_path / "P", scales=(4,), n=3, h=48, w=64, true_size=True)
    b = build_data("paired", root=root, crop_size=16)
    assert "true LR size" in b.description and "resized" in b.description
    assert b.val[0]["lr"].shape == (1, 3, 48, 64)


def test_missing_scale_folder_lists_folders_found(tmp_path):
    root = make_paired(tmp_path / "P", scales=(2, 4), n=3)
    with pytest.raises(ValueError, match=r"no folder x3 for scale 3.*\['x2', 'x4'\]"):
        build_data("paired", root=root, train_scales=[1, 3], crop_size=16)


def test_missing_partners_are_named_both_ways(tmp_path):
    root = make_paired(tmp_path / "P", scales=(4,), n=4)
    (root / "x4" / "img_01.png").unlink()
    save(root / "x4" / "stray.png", rand_image(40, 56, 0))
    text = "\n".join(scan("paired", root=root).problems)
    assert "img_01.png has no x4 partner img_01.*" in text
    assert "stray.png has no HR partner" in text
    with pytest.raises(ValueError, match="missing partner"):
        build_data("paired", root=root, crop_size=16)


def test_size_mismatch_and_unreadable(tmp_path):
    root = make_paired(tmp_path / "P", scales=(4,), n=4)
    save(root / "x4" / "img_02.png", rand_image(20, 20, 0))
    (root / "HR" / "img_03.png").write_bytes(b"\x89PNG broken")
    problems = scan("paired", root=root).problems
    assert any("size mismatch" in p and "img_02.png is 20x20" in p and "56x40" in p
               for p in problems)
    assert any("unreadable" in p and "img_03.png" in p for p in problems)


def test_config_errors(tmp_path):
    root = make_paired(tmp_path / "P", n=3)
    with pytest.raises(ValueError, match="data.root"):
        build_data("paired", root=tmp_path / "nope")
    with pytest.raises(ValueError, match="data.train_scales"):
        build_data("paired", root=root, train_scales=[2, 4])
    with pytest.raises(ValueError, match="data.val_fraction"):
        build_data("paired", root=root, train_scales=[1, 2], val_fraction=1.0)
    with pytest.raises(ValueError, match="missing HR folder.*x2"):
        build_data("paired", root=root / "x2", train_scales=[1, 2])
    only = tmp_path / "Q"
    make_paired(only / "train", n=2)
    with pytest.raises(ValueError, match="Q/val does not"):
        build_data("paired", root=only, train_scales=[1, 2])


def test_real_realsr_x4_pairs(shared_dir):
    root = shared_dir / "data" / "realsr_x4"
    if not root.is_dir():
        pytest.skip(f"{root} not found: skipping the real RealSR x4 pairs test")
    b = build_data("paired", root=root, train_scales=(1, 4), val_scales=(1, 4), crop_size=128,
                    samples_per_epoch=4)
    assert len(b.train.records) == 45 and len(b.val.records) == 5
    assert "true LR size" in b.description
    torch.manual_seed(0)
    it = b.train[0]
    assert it["hr"].shape == (3, 128, 128) and it["lr"].shape == (1, 3, 128, 128)
    v = b.val[0]
    assert v["hr"].shape == (3, 512, 512) and v["lr"].shape == (1, 3, 512, 512)
    # the upsampled real LR is aligned with HR: closer than when shifted by 6 pixels
    hr, lr = v["hr"], v["lr"][0]
    aligned = (hr[:, 8:-8, 8:-8] - lr[:, 8:-8, 8:-8]).abs().mean()
    shifted = (hr[:, 8:-8, 14:-2] - lr[:, 8:-8, 8:-8]).abs().mean()
    assert aligned < shifted
