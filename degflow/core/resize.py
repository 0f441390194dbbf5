"""Resizing that is not a metric: true-LR-size downscales, the bicubic baseline, upsampling.

Images are ``[B, 3, H, W]`` (or one ``[3, H, W]``, returned in the same layout) in [-1, 1].
A scale s >= 1 maps H x W to the true LR size round(H/s) x round(W/s).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["as_image_batch", "lr_size", "resize_to_lr", "sample_to_lr", "bicubic_baseline", "upsample_to", "HR_SIZE_OUTPUTS",
           "check_hr_size_output", "lr_at_hr_size"]

#: What a model's LR at HR pixel size is (config keys ``hr_size_output`` of synthesis and
#: ``eval.hr_size_output``): ``decoded`` = the decoder's output as it comes (the authors'
#: convention); ``from_lr`` = its true-size LR bicubic-upsampled back, the way the bicubic and
#: procedural HR-size LR and true-size real LR loaded by the data options are made (nothing above
#: the LR's Nyquist frequency).
HR_SIZE_OUTPUTS: tuple[str, ...] = ("decoded", "from_lr")


def as_image_batch(x: Tensor, name: str) -> Tensor:
    """``x`` as an RGB batch ``[B, 3, H, W]`` (a ``[3, H, W]`` image becomes B = 1);
    ValueError naming ``name`` for anything else."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must be an RGB image [3, H, W] or batch [B, 3, H, W] in [-1, 1]; "
            f"got shape {tuple(x.shape)}."
        )
    return x


def lr_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """True LR size ``(round(H/s), round(W/s))`` of a scale s >= 1 (validated where it was requested,
    :func:`degflow.core.scales.expand_scales`); ValueError when a side would vanish or s < 1."""
    if not scale >= 1.0:
        raise ValueError(f"scale={scale!r}: a scale is a downscaling factor >= 1")
    lh, lw = round(height / scale), round(width / scale)
    if lh < 1 or lw < 1:
        raise ValueError(f"scale={scale} is too large for a {height}x{width} image (LR size {lh}x{lw}).")
    return lh, lw


def resize_to_lr(x: Tensor, scale: float, clamp: bool = True) -> Tensor:
    """Antialiased bicubic downscale by ``scale`` to round(H/s) x round(W/s) (true LR size).

    ``x``: ``[B, 3, H, W]`` (or ``[3, H, W]``, returned in the same layout) in [-1, 1].
    Scale 1 returns a copy. ``clamp`` clips bicubic overshoot to [-1, 1].
    """
    s = float(scale)
    single = x.ndim == 3
    xb = as_image_batch(x, "x")
    h, w = xb.shape[-2:]
    if s == 1.0:
        out = xb.clone()
    else:
        out = F.interpolate(xb, size=lr_size(h, w, s), mode="bicubic", align_corners=False,
                            antialias=True)
    if clamp:
        out = out.clamp(-1.0, 1.0)
    return out[0] if single else out


def sample_to_lr(x: Tensor, scale: float) -> Tensor:
    """Bicubic interpolation of ``x [B, 3, H, W]`` at the pixel centres of its true-LR-size grid
    (round(H/s) x round(W/s)), **without** antialiasing, clamped to [-1, 1]: the inverse of
    :func:`upsample_to` for an image that was bicubic-upsampled from that size (bicubic
    interpolation passes through its samples, so this returns them up to the offset between the two
    grids: exact at odd integer scales, about 2 % RMS of white noise at x2, 1 % at x4, 10 % at x1.5).
    :func:`resize_to_lr` (antialiased) would low-pass the LR a second time (38 % RMS of white noise
    lost at x4). Use it to bring an LR scored at HR size back to its true size; an image with
    content above the LR Nyquist frequency (an HR image) aliases: resize that with :func:`resize_to_lr`."""
    xb = as_image_batch(x, "x")
    h, w = xb.shape[-2:]
    out = F.interpolate(xb, size=lr_size(h, w, float(scale)), mode="bicubic", align_corners=False, antialias=False)
    return out.clamp(-1.0, 1.0)


def upsample_to(x: Tensor, height: int, width: int) -> Tensor:
    """Bicubic resize of ``[3, h, w]`` (or ``[B, 3, h, w]``) to height x width, clamped to [-1, 1]."""
    batched = x.ndim == 4
    xb = x if batched else x.unsqueeze(0)
    out = F.interpolate(xb, size=(height, width), mode="bicubic", align_corners=False)
    out = out.clamp_(-1.0, 1.0)
    return out if batched else out[0]


def bicubic_baseline(hr: Tensor, scale: float) -> Tensor:
    """Bicubic LR at HR pixel size (the way RealSR stores LR): down by ``scale``, back up.

    HR ``[B, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1] -> same shape, clamped to [-1, 1].
    Down: antialiased bicubic to round(H/s) x round(W/s) (:func:`resize_to_lr`, clamped like
    an LR image that was saved); up: bicubic to H x W (:func:`upsample_to`).
    Scale 1 is the identity.
    """
    s = float(scale)
    single = hr.ndim == 3
    hb = as_image_batch(hr, "hr")
    if s == 1.0:
        out = hb.clamp(-1.0, 1.0)
    else:
        out = upsample_to(resize_to_lr(hb, s), *hb.shape[-2:])
    return out[0] if single else out


def check_hr_size_output(mode: str, key: str = "hr_size_output") -> str:
    """``mode`` if it is one of :data:`HR_SIZE_OUTPUTS`, else ValueError naming ``key`` and the options."""
    if mode not in HR_SIZE_OUTPUTS:
        raise ValueError(f"{key}={mode!r} is not one of {list(HR_SIZE_OUTPUTS)}")
    return mode


def lr_at_hr_size(decoded: Tensor, scale: float, mode: str, key: str = "hr_size_output") -> Tensor:
    """A model's LR at HR pixel size under ``mode`` (:data:`HR_SIZE_OUTPUTS`).

    ``decoded`` ``[B, 3, H, W]`` (or ``[3, H, W]``) -> the same shape: ``decoded`` itself, or
    ``upsample_to(resize_to_lr(decoded, scale), H, W)``. ValueError naming ``key`` for another mode
    (callers check the setting once, :func:`check_hr_size_output`; this only dispatches on it).
    """
    if mode == "decoded":
        return decoded
    if mode == "from_lr":
        return upsample_to(resize_to_lr(decoded, scale), *decoded.shape[-2:])
    check_hr_size_output(mode, key)                  # any other mode: ValueError naming the key and the options
    raise AssertionError(f"HR_SIZE_OUTPUTS has a mode lr_at_hr_size does not handle: {mode!r}")
