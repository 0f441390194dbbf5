"""Geometric helpers shared by the datasets: aligned crops and the 8 dihedral transforms.

All functions act on the last two dimensions, so the same call transforms one image
``[3, H, W]``, a stack ``[S, 3, H, W]`` or a batch identically.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "random_crop_position",
    "crop",
    "dihedral_box",
    "aligned_random_crop",
    "dihedral",
    "random_dihedral",
    "center_crop",
    "CROP_ANCHORS",
    "crop_to_multiple",
    "NUM_DIHEDRAL",
]

NUM_DIHEDRAL = 8


def random_crop_position(height: int, width: int, size: int,
                         generator: torch.Generator | None = None, align: int = 1) -> tuple[int, int]:
    """Top-left corner (drawn from torch's RNG) of a ``size`` x ``size`` crop.

    ``align > 1`` puts the corner on multiples of ``align`` inside the top-left
    ``align``-aligned part of the image (the latent cache needs crops on the RAE's stride-8
    grid); ``align = 1`` draws exactly as before (same RNG calls, same positions).
    """
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the image ({height}x{width}); "
                         f"lower data.crop_size or use larger images")
    if align == 1:
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        return top, left
    if size % align:
        raise ValueError(f"data.crop_size={size} must be a multiple of {align} for crops aligned to "
                         f"the RAE stride (stage.latent_cache=true); use e.g. {size - size % align or align}")
    rows, cols = (height - height % align - size) // align + 1, (width - width % align - size) // align + 1
    top = align * int(torch.randint(0, rows, (1,), generator=generator))
    left = align * int(torch.randint(0, cols, (1,), generator=generator))
    return top, left


def crop(x: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    return x[..., top:top + height, left:left + width]


def aligned_random_crop(*images: Tensor, size: int,
                        generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """The same random ``size`` x ``size`` crop of every image (all must share H x W)."""
    h, w = images[0].shape[-2:]
    for im in images[1:]:
        if tuple(im.shape[-2:]) != (h, w):
            raise ValueError(f"aligned crop needs images of the same size; got {(h, w)} and "
                             f"{tuple(im.shape[-2:])}")
    top, left = random_crop_position(h, w, size, generator)
    return tuple(crop(im, top, left, size, size) for im in images)


def dihedral(x: Tensor, k: int) -> Tensor:
    """The k-th (0..7) element of the dihedral group D4 on the last two dims.

    k & 3 = number of 90-degree counter-clockwise rotations, k & 4 = horizontal flip first.
    k = 0 is the identity.
    """
    if not 0 <= k < NUM_DIHEDRAL:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    if k & 4:
        x = x.flip(-1)
    r = k & 3
    if r:
        x = torch.rot90(x, r, dims=(-2, -1))
    return x


def random_dihedral(*images: Tensor,
                    generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """The same random one of the 8 flips/rotations applied to every image."""
    k = int(torch.randint(0, NUM_DIHEDRAL, (1,), generator=generator))
    return tuple(dihedral(im, k).contiguous() for im in images)


def dihedral_box(top: int, left: int, size: int, height: int, width: int, k: int) -> tuple[int, int]:
    """Where a ``size`` x ``size`` box at (top, left) of an ``height`` x ``width`` image lands
    after :func:`dihedral` ``k``: ``dihedral(crop(x, top, left), k) ==
    crop(dihedral(x, k), *dihedral_box(...))``. Returns the new (top, left)."""
    if not 0 <= k < NUM_DIHEDRAL:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    if k & 4:                                     # horizontal flip: column j -> width - 1 - j
        left = width - left - size
    for _ in range(k & 3):                        # rot90 CCW: out[i, j] = in[j, width - 1 - i]
        top, left, height, width = width - left - size, top, width, height
    return top, left


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    h, w = x.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"center crop {height}x{width} is larger than the image {h}x{w}")
    top, left = (h - height) // 2, (w - width) // 2
    return crop(x, top, left, height, width)


#: Where :func:`crop_to_multiple` keeps the image: its centre, or its top-left corner
#: (the bottom / right rows and columns are dropped; the DegFlow authors' evaluation crop).
CROP_ANCHORS = ("center", "top_left")


def crop_to_multiple(x: Tensor, multiple: int, max_size: int | None = None,
                     anchor: str = "center") -> Tensor:
    """Crop so both sides are multiples of ``multiple`` (config ``data.multiple_of``), and at
    most ``max_size`` per side (rounded down to the multiple; None = no limit), keeping the
    centre (``anchor="center"``) or the top-left corner (``"top_left"``)."""
    if anchor not in CROP_ANCHORS:
        raise ValueError(f"crop anchor {anchor!r} is not one of {list(CROP_ANCHORS)}")
    if int(multiple) != multiple or multiple < 1:
        raise ValueError(f"data.multiple_of must be a positive integer, got {multiple!r}")
    multiple = int(multiple)
    h, w = x.shape[-2:]
    th, tw = h - h % multiple, w - w % multiple
    if max_size is not None:
        cap = int(max_size) - int(max_size) % multiple
        if cap < multiple:
            raise ValueError(f"data.val_max_size={max_size} is smaller than "
                             f"data.multiple_of={multiple}")
        th, tw = min(th, cap), min(tw, cap)
    if th < multiple or tw < multiple:
        raise ValueError(f"image {h}x{w} is smaller than data.multiple_of={multiple}")
    return center_crop(x, th, tw) if anchor == "center" else crop(x, 0, 0, th, tw)
