"""Scoring SR networks on real test pairs with the SR field's protocol.

Per test pair (HR ``[3, H, W]``, real LR ``[3, h, w]``, scale s): the network's output at the
HR size (``liif``) or at ``scale * (h, w)`` (``edsr``; the HR image is cropped to it from the
top-left when it is larger), then, from :mod:`degflow.metrics.image` / :mod:`degflow.metrics.perceptual`:
PSNR on the BT.601 Y channel in [16, 235] (data range 255 on that scale, 8-bit quantized
output), border shave = ceil(s) pixels (the scale, as in the SR literature; fractional scales
round up), SSIM on Y with the same shave, and LPIPS (AlexNet) on RGB. The reference row
"bicubic interpolation" (the LR image bicubically upsampled, no network) is scored the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from degflow.core.resize import upsample_to
from degflow.data.images import read_image
from degflow.data.sr_pairs import Pair
from degflow.metrics.image import psnr_y, ssim_y

__all__ = ["sr_shave", "super_resolve", "score_pairs"]


def sr_shave(scale: float) -> int:
    """Border pixels dropped before PSNR / SSIM: the scale, rounded up."""
    return int(math.ceil(float(scale) - 1e-9))


@torch.no_grad()
def super_resolve(model: nn.Module | None, lr: Tensor, size: tuple[int, int]) -> Tensor:
    """``lr`` ``[B, 3, h, w]`` -> ``[B, 3, H', W']`` in [-1, 1]; ``model=None`` is bicubic interpolation.

    ``liif`` and bicubic produce exactly ``size``; ``edsr`` produces ``scale * (h, w)``."""
    if model is None:
        return upsample_to(lr, *size)
    if model.config["network"] == "edsr":
        return model(lr).clamp(-1.0, 1.0)
    return model(lr, size).clamp(-1.0, 1.0)


@torch.no_grad()
def score_pairs(model: nn.Module | None, pairs: Sequence[Pair], lpips: Callable[[Tensor, Tensor], Tensor] | None,
                device: torch.device | str = "cpu") -> list[dict]:
    """One row per pair: ``{"name", "scale", "psnr_y", "ssim_y", "lpips" (None without a metric),
    "seconds" (the network's forward pass)}``."""
    rows = []
    for p in pairs:
        hr, lr = read_image(p.hr_path)[None].to(device), read_image(p.lr_path)[None].to(device)
        start = time.perf_counter()
        sr = super_resolve(model, lr, tuple(hr.shape[-2:]))
        seconds = time.perf_counter() - start
        h, w = min(sr.shape[-2], hr.shape[-2]), min(sr.shape[-1], hr.shape[-1])
        sr, hr = sr[..., :h, :w], hr[..., :h, :w]
        shave = sr_shave(p.scale)
        rows.append({"name": p.name, "scale": p.scale, "psnr_y": float(psnr_y(sr, hr, shave=shave)[0]),
                     "ssim_y": float(ssim_y(sr, hr, shave=shave)[0]),
                     "lpips": float(lpips(sr, hr)[0]) if lpips is not None else None, "seconds": seconds})
    return rows
