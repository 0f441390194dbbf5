"""How strong a degradation is, measured on one image: how much fine detail it keeps, how noisy it is.

These are no-reference-to-the-real-LR measures: each is computed on one LR image (with its HR
image as the yardstick), so a generated LR and the real LR of the same HR image can be compared
scale by scale, whatever their pixel-wise agreement. PSNR rewards matching colour; these say
whether the generated LR is as blurred and as noisy as the real one.

- :func:`detail_ratio` (blur): the share of the HR image's fine-detail energy that an LR image
  at HR pixel size keeps. Fine detail = luminance (BT.601 Y) spectral energy at frequencies of
  at least ``cutoff`` cycles per HR pixel, max(|f_x|, |f_y|) >= cutoff, of the mean-removed,
  Hann-windowed image. The default cutoff 1/8 is the Nyquist frequency of x4: an LR image of
  scale s stored at HR size (bicubic upsampling, the RealSR convention) has no detail above
  1/(2s), so the ratio of a real LR falls steeply with s; a generated LR that keeps HR texture
  does not. 1 for the HR image itself.
- :func:`lr_noise_sigma` (noise): Immerkaer's noise standard deviation
  (:func:`degflow.metrics.noise.noise_sigma`) of the luminance of the image brought to its true
  LR size (antialiased bicubic, :func:`degflow.core.resize.resize_to_lr`), on the 8-bit scale
  (0-255). Texture inflates it: compare images of the same content.

Images are ``[B, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1]; results are ``[B]`` float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from degflow.core.resize import as_image_batch, resize_to_lr
from degflow.metrics.image import rgb_to_y
from degflow.metrics.noise import noise_sigma

__all__ = ["DETAIL_CUTOFF", "band_energy", "detail_ratio", "lr_noise_sigma"]

#: Default lower edge (cycles per HR pixel) of the fine-detail band: the Nyquist frequency of x4.
DETAIL_CUTOFF = 0.125


def _luma(x: Tensor, name: str) -> Tensor:
    """[-1, 1] RGB batch -> float64 BT.601 luma ``[B, H, W]`` in [0, 1]."""
    x01 = ((as_image_batch(x, name).detach().to(torch.float64) + 1.0) / 2.0).clamp(0.0, 1.0)
    return rgb_to_y(x01)[:, 0]


def band_energy(x: Tensor, low: float, high: float = 1.0) -> Tensor:
    """Spectral energy of the luminance of ``x`` at frequencies ``low <= max(|f_x|, |f_y|) < high``
    (cycles per pixel; frequencies reach 0.5, so ``high=1`` means "and above").

    The mean-removed luma is multiplied by a separable (symmetric) Hann window before the 2-D
    FFT, so the image borders add no spurious detail. ``[B, 3, H, W]`` -> ``[B]`` float64.
    """
    if not 0.0 <= low < high:
        raise ValueError(f"band_energy: expected 0 <= low < high (cycles per pixel), got low={low}, high={high}")
    y = _luma(x, "x")                                                              # [B, H, W]
    y = y - y.mean(dim=(-2, -1), keepdim=True)
    h, w = y.shape[-2:]
    window = (torch.hann_window(h, periodic=False, dtype=torch.float64, device=y.device)[:, None]
              * torch.hann_window(w, periodic=False, dtype=torch.float64, device=y.device)[None, :])
    power = torch.fft.fft2(y * window).abs().square()                              # [B, H, W]
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=y.device).abs()[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=y.device).abs()[None, :]
    f = torch.maximum(fy, fx)                                                      # [H, W]
    band = (f >= low) & (f < high)
    return (power * band).sum(dim=(-2, -1))


def detail_ratio(x: Tensor, hr: Tensor, cutoff: float = DETAIL_CUTOFF) -> Tensor:
    """Fine-detail energy of ``x`` over that of its HR image ``hr`` (same size): band
    ``[cutoff, 0.5]`` cycles per pixel of :func:`band_energy`. ``[B]`` float64; 1 for ``x = hr``,
    near 0 for an image blurred far beyond the cutoff. ValueError for unequal sizes or a flat HR image."""
    xb, hb = as_image_batch(x, "x"), as_image_batch(hr, "hr")
    if xb.shape != hb.shape:
        raise ValueError(f"detail_ratio: x and hr must have the same shape, got {tuple(xb.shape)} and {tuple(hb.shape)}")
    reference = band_energy(hb, cutoff)
    if bool((reference <= 0).any()):
        raise ValueError(f"detail_ratio: the HR image has no energy above {cutoff} cycles per pixel (a flat image)")
    return band_energy(xb, cutoff) / reference


def lr_noise_sigma(x: Tensor, scale: float) -> Tensor:
    """Immerkaer noise sigma (8-bit units) of the luminance of ``x`` (an LR image at HR pixel size)
    at its true LR size for ``scale`` (scale 1: ``x`` as it is). ``[B, 3, H, W]`` -> ``[B]`` float64."""
    lr = resize_to_lr(as_image_batch(x, "x").detach().float(), scale)
    return noise_sigma(_luma(lr, "x")[:, None] * 255.0)
