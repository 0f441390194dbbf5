"""degflow.data.transforms: aligned crops, the 8 dihedral transforms, center crops."""

from __future__ import annotations

import pytest
import torch

from degflow.data.transforms import (
    NUM_DIHEDRAL,
    aligned_random_crop,
    crop,
    crop_to_multiple,
    dihedral,
    dihedral_box,
    random_crop_position,
    random_dihedral,
)


def test_the_8_dihedral_transforms_are_distinct_and_identity_first():
    x = torch.arange(12.0).view(1, 3, 4)
    outs = [dihedral(x, k) for k in range(NUM_DIHEDRAL)]
    assert torch.equal(outs[0], x)
    keys = {tuple(o.flatten().tolist()) + tuple(o.shape) for o in outs}
    assert len(keys) == 8


def test_random_dihedral_applies_the_same_transform_to_all_images():
    torch.manual_seed(0)
    a = torch.rand(3, 5, 5)
    for _ in range(20):
        x, y = random_dihedral(a, torch.stack([2 * a, -a]))
        assert torch.equal(y[0], 2 * x) and torch.equal(y[1], -x)


def test_aligned_random_crop_uses_one_position_for_all_images():
    torch.manual_seed(1)
    a = torch.rand(3, 20, 30)
    for _ in range(20):
        x, y = aligned_random_crop(a, torch.stack([a + 1, a * 3]), size=7)
        assert x.shape == (3, 7, 7) and y.shape == (2, 3, 7, 7)
        assert torch.allclose(y[0], x + 1) and torch.allclose(y[1], 3 * x)
    with pytest.raises(ValueError, match="crop_size"):
        aligned_random_crop(a, size=21)
    with pytest.raises(ValueError, match="same size"):
        aligned_random_crop(a, torch.rand(3, 20, 31), size=5)


def test_crop_to_multiple_and_max_size():
    x = torch.arange(70 * 50.0).view(1, 50, 70)
    y = crop_to_multiple(x, 8)
    assert y.shape == (1, 48, 64)
    assert torch.equal(y, x[:, 1:49, 3:67])
    z = crop_to_multiple(x, 8, max_size=30)  # capped to 24 (multiple of 8)
    assert z.shape == (1, 24, 24) and torch.equal(z, x[:, 13:37, 23:47])
    with pytest.raises(ValueError, match="data.multiple_of"):
        crop_to_multiple(x, 0)
    with pytest.raises(ValueError, match="data.val_max_size"):
        crop_to_multiple(x, 8, max_size=4)


def test_dihedral_box_says_where_a_crop_lands_after_each_of_the_8_transforms():
    x = torch.rand(2, 3, 24, 40)
    for k in range(8):
        for top, left, size in [(0, 0, 8), (8, 16, 16), (16, 32, 8), (5, 3, 11)]:
            t, l = dihedral_box(top, left, size, 24, 40, k)
            assert torch.equal(dihedral(crop(x, top, left, size, size), k), crop(dihedral(x, k), t, l, size, size))


def test_aligned_crop_positions_lie_on_the_grid_inside_the_aligned_image():
    torch.manual_seed(0)
    seen = {random_crop_position(30, 45, 16, align=8) for _ in range(300)}
    assert seen == {(t, l) for t in (0, 8) for l in (0, 8, 16, 24)}   # 30 -> 24 rows, 45 -> 40 cols
    with pytest.raises(ValueError, match="data.crop_size=12 must be a multiple of 8"):
        random_crop_position(30, 45, 12, align=8)


def test_unaligned_crop_positions_draw_exactly_as_before():
    torch.manual_seed(3)
    a = random_crop_position(30, 45, 7)
    torch.manual_seed(3)
    b = (int(torch.randint(0, 24, (1,))), int(torch.randint(0, 39, (1,))))
    assert a == b
