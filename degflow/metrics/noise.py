"""Noise-statistics metrics of generated degradations: KL and AKLD of the residuals LR - HR.

PSNR / SSIM / LPIPS compare a generated LR image with the real one pixel by pixel; a
degradation model can also be judged by whether the *statistics* of its degradation match
the real ones, wherever the pixels lie. The two measures used in this line of work
(noise modelling: DANet, C2N, NeCA, NAFlow; the DegFlow authors report the same pair):

KL (histogram KL divergence). Residuals ``r = LR - HR`` of both images on the 8-bit scale
(integers in [-255, 255]: both images quantized to 8 bit first, as saved), all pixels and
channels of one image pooled into a histogram with bins of width 4 on [-260, 260) (130
bins). Each bin count gets +1 (Laplace smoothing, so no bin is empty), ``p = (n + 1) / (N +
130)``. KL is the forward divergence from the real to the generated histogram,
``KL = sum_k p_real[k] log(p_real[k] / p_gen[k])``. Source: the sRGB evaluation of
Noise2NoiseFlow (Kousha et al., CVPR 2022), used by NeCA / NAFlow (Kim et al., ICCV 2023;
D. Kim is also a DegFlow author) with these bins.

AKLD (average KL divergence, Yue et al., "Dual Adversarial Network", ECCV 2020). At every
pixel and channel the local variance of each residual is estimated as the 7x7
Gaussian-weighted mean of ``r^2`` (window std 1.4, OpenCV's default for a 7-tap kernel;
reflected borders; floored at 1e-10), on images in [0, 1]. Treating the residuals as
zero-mean Gaussians with these variances, the per-pixel KL divergence
``KL(N(0, v_gen) || N(0, v_real)) = (rho - 1 - log rho) / 2`` with ``rho = v_gen / v_real``
clipped to [0.1, 10] is averaged over pixels and channels: one value per image. "Average"
refers to this mean (and, for stochastic generators, the mean over samples; DegFlow is
deterministic).

Lower is better for both; 0 when the generated degradation equals the real one.

Spectrum distance (:func:`spectrum_distance`). KL and AKLD see the residuals' histogram and local
variance, not their correlation: white noise of the right variance passes them. The residuals'
radially averaged power spectra (8-bit residuals, mean removed, 2-D Hann window) in
:data:`SPECTRUM_BANDS` equal bands of radial frequency up to the LR image's Nyquist frequency
(``0.5 / scale`` cycles per pixel of images stored at HR size; 0.5 at true LR size) are compared
band by band: ``mean_k |10 log10(P_gen[k] / P_real[k])|`` in dB (a log-spectral distance; lower is
better, 0 when the spectra agree). By the Wiener-Khinchin theorem this is the comparison of the
residuals' spatial autocorrelations, read in the frequency domain.

:func:`noise_sigma` is a no-reference noise level of one grey image (Immerkaer 1996).
All functions take images in [-1, 1], ``[B, 3, H, W]`` (or ``[3, H, W]``), every image of a
triple the same size, and return ``[B]`` float64 tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from degflow.metrics.image import _filter_valid, _gaussian_window

__all__ = [
    "KL_BIN_WIDTH",
    "KL_EDGE",
    "AKLD_WINDOW",
    "AKLD_SIGMA",
    "residual_8bit",
    "residual_histogram",
    "histogram_kl",
    "local_variance",
    "akld",
    "noise_sigma",
    "immerkaer_response",
    "SPECTRUM_BANDS",
    "residual_spectrum",
    "spectrum_distance",
]

#: Histogram bin width on the 8-bit residual scale, and the half range: bins [-260, 260).
KL_BIN_WIDTH = 4
KL_EDGE = 260
#: AKLD local-variance window side, and the std of its Gaussian weights (OpenCV's default for 7).
AKLD_WINDOW = 7
AKLD_SIGMA = 1.4  # OpenCV: 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8 for ksize 7
#: AKLD variance-ratio clip (DANet).
_RATIO_MIN, _RATIO_MAX = 0.1, 10.0


def _triple(lr: Tensor, real: Tensor, hr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    out = []
    for name, x in (("generated", lr), ("real", real), ("hr", hr)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be [3, H, W] or [B, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
        out.append(x.detach())
    if not out[0].shape == out[1].shape == out[2].shape:
        raise ValueError(
            "generated, real and hr images must have the same shape (LR stored at HR pixel size); got "
            f"{tuple(out[0].shape)}, {tuple(out[1].shape)} and {tuple(out[2].shape)}"
        )
    return out[0], out[1], out[2]


def _to_8bit(x: Tensor) -> Tensor:
    """[-1, 1] -> float64 integers 0..255 (as when the image is saved)."""
    return torch.round(((x.to(torch.float64) + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0)


def residual_8bit(lr: Tensor, hr: Tensor) -> Tensor:
    """Degradation residual ``LR - HR`` on the 8-bit scale: integers in [-255, 255], float64.

    ``lr``, ``hr``: ``[B, 3, H, W]`` in [-1, 1] (same shape) -> ``[B, 3, H, W]``.
    """
    return _to_8bit(lr) - _to_8bit(hr)


def residual_histogram(residual: Tensor) -> Tensor:
    """Laplace-smoothed histogram of each image's 8-bit residuals: ``[B, ...] -> [B, 130]``.

    Bins of width :data:`KL_BIN_WIDTH` on ``[-KL_EDGE, KL_EDGE)`` (left-closed), counts + 1,
    normalized to sum 1.
    """
    n_bins = 2 * KL_EDGE // KL_BIN_WIDTH
    flat = residual.flatten(1)
    idx = torch.floor((flat + KL_EDGE) / KL_BIN_WIDTH).long().clamp(0, n_bins - 1)     # [B, N]
    counts = torch.zeros(flat.shape[0], n_bins, dtype=torch.float64, device=flat.device)
    counts.scatter_add_(1, idx, torch.ones_like(flat, dtype=torch.float64))
    counts += 1.0
    return counts / counts.sum(dim=1, keepdim=True)


def histogram_kl(generated: Tensor, real: Tensor, hr: Tensor) -> Tensor:
    """KL divergence from the real to the generated residual histogram, per image, ``[B]``.

    ``KL = sum_k p_real log(p_real / p_gen)`` over the histograms of
    :func:`residual_histogram` of ``real - hr`` and ``generated - hr`` (module docstring:
    definition and source).
    """
    generated, real, hr = _triple(generated, real, hr)
    p_real = residual_histogram(residual_8bit(real, hr))
    p_gen = residual_histogram(residual_8bit(generated, hr))
    return (p_real * (p_real.log() - p_gen.log())).sum(dim=1)


def local_variance(residual: Tensor) -> Tensor:
    """Local variance of a zero-mean residual: 7x7 Gaussian-weighted mean of ``r^2``.

    ``residual``: ``[B, C, H, W]`` -> ``[B, C, H, W]`` (reflected borders, floor 1e-10).
    """
    b, c, h, w = residual.shape
    pad = AKLD_WINDOW // 2
    sq = residual.to(torch.float64) ** 2
    mode = "reflect" if min(h, w) > pad else "replicate"
    g = _gaussian_window(AKLD_WINDOW, AKLD_SIGMA, torch.float64, residual.device)      # [7]: the window is g g^T
    padded = F.pad(sq, (pad, pad, pad, pad), mode=mode).reshape(b * c, 1, h + 2 * pad, w + 2 * pad)
    return _filter_valid(padded, g).reshape(b, c, h, w).clamp_min(1e-10)


def akld(generated: Tensor, real: Tensor, hr: Tensor) -> Tensor:
    """Average KL divergence (DANet's AKLD) of the generated vs the real residual, ``[B]``.

    Mean over pixels and channels of ``(rho - 1 - log rho) / 2``, ``rho = v_gen / v_real``
    clipped to [0.1, 10], with ``v`` the :func:`local_variance` of ``LR - HR`` on images in
    [0, 1], both quantized to 8 bit (module docstring: definition and source).
    """
    generated, real, hr = _triple(generated, real, hr)
    v_gen = local_variance(residual_8bit(generated, hr) / 255.0)
    v_real = local_variance(residual_8bit(real, hr) / 255.0)
    rho = (v_gen / v_real).clamp(_RATIO_MIN, _RATIO_MAX)
    return (0.5 * (rho - 1.0 - torch.log(rho))).flatten(1).mean(dim=1)


#: Radial frequency bands of :func:`spectrum_distance`.
SPECTRUM_BANDS = 8


def residual_spectrum(residual: Tensor, max_frequency: float = 0.5, bands: int = SPECTRUM_BANDS) -> Tensor:
    """Radially averaged power spectrum of residuals ``[B, C, H, W]`` -> ``[B, bands]`` float64.

    Per image: mean removed per channel, 2-D Hann window (scaled so ``mean(w^2) = 1``), ``|FFT|^2 / (H W)``
    averaged over the channels and over the frequency bins whose radius (cycles per pixel) lies in
    each of ``bands`` equal bands of ``(0, max_frequency]`` (DC excluded). A band without bins
    (a tiny image) is NaN.
    """
    if residual.ndim != 4 or min(residual.shape[-2:]) < 2:
        raise ValueError(f"residual_spectrum: expected [B, C, H, W] with H, W >= 2, got {tuple(residual.shape)}")
    if not 0 < max_frequency <= 0.5 or bands < 1:
        raise ValueError(f"residual_spectrum: max_frequency must be in (0, 0.5] and bands >= 1, got "
                         f"{max_frequency!r}, {bands!r}")
    x = residual.to(torch.float64)
    h, w = x.shape[-2:]
    win = torch.hann_window(h, periodic=False, dtype=torch.float64, device=x.device)[:, None] \
        * torch.hann_window(w, periodic=False, dtype=torch.float64, device=x.device)[None, :]
    win = win / win.pow(2).mean().sqrt()
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) * win
    power = torch.fft.fft2(x).abs().pow(2).mean(1) / (h * w)                         # [B, H, W]
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=x.device)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=x.device)[None, :]
    radius = (fy * fy + fx * fx).sqrt()                                                # [H, W]
    band = torch.ceil(radius / max_frequency * bands).long() - 1                       # (edge_k, edge_k+1] -> k
    valid = (radius > 0) & (band < bands)
    idx = band[valid]
    sums = torch.zeros(x.shape[0], bands, dtype=torch.float64, device=x.device)
    sums.index_add_(1, idx, power[:, valid])
    counts = torch.bincount(idx, minlength=bands).to(torch.float64)
    return sums / counts.where(counts > 0, torch.tensor(float("nan"), dtype=torch.float64, device=x.device))


def spectrum_distance(generated: Tensor, real: Tensor, hr: Tensor, scale: float = 1.0,
                      bands: int = SPECTRUM_BANDS) -> Tensor:
    """Log-spectral distance (dB) of the generated vs the real residual ``LR - HR``, per image ``[B]``.

    ``mean_k |10 log10(P_gen[k] / P_real[k])|`` over the bands of :func:`residual_spectrum` up to the
    LR Nyquist frequency ``0.5 / scale`` (``scale``: how much larger than the LR image the given
    images are; 1 at true LR size). Residuals on the 8-bit scale, as for :func:`histogram_kl`.
    """
    generated, real, hr = _triple(generated, real, hr)
    if not scale >= 1.0:
        raise ValueError(f"spectrum_distance: scale must be >= 1 (images stored at HR size: the LR scale), got {scale!r}")
    limit = 0.5 / float(scale)
    p_gen = residual_spectrum(residual_8bit(generated, hr), limit, bands)
    p_real = residual_spectrum(residual_8bit(real, hr), limit, bands)
    ratio = (10.0 * torch.log10(p_gen.clamp_min(1e-12) / p_real.clamp_min(1e-12))).abs()
    return ratio.nanmean(dim=1)


def noise_sigma(gray: Tensor) -> Tensor:
    """Immerkaer's noise standard deviation estimate (Immerkaer 1996, "Fast noise variance estimation").

    sigma = sqrt(pi / 2) / (6 (H - 2) (W - 2)) * sum |I * M| over the valid pixels, with the
    Laplacian-difference mask M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] (blind to planes and
    ramps; texture inflates it, so it over-estimates on detailed images).

    Args:
        gray: ``[B, 1, H, W]`` (H, W >= 3).
    Returns:
        ``[B]`` float64, in the units of ``gray``.
    """
    r = immerkaer_response(gray, "noise_sigma").flatten(1)                       # [B, (H-2)(W-2)]
    return math.sqrt(math.pi / 2) * r.sum(1) / (6.0 * r.shape[1])


def immerkaer_response(gray: Tensor, caller: str = "immerkaer_response") -> Tensor:
    """``|I * M|`` with Immerkaer's mask ``M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` (zero on planes
    and ramps) over the valid pixels: ``[B, 1, H, W]`` (H, W >= 3) -> ``[B, 1, H - 2, W - 2]`` float64;
    its mean times ``sqrt(pi / 2) / 6`` is the noise std of :func:`noise_sigma`."""
    if gray.ndim != 4 or gray.shape[1] != 1 or min(gray.shape[-2:]) < 3:
        raise ValueError(f"{caller}: expected a [B, 1, H, W] grey batch with H, W >= 3, got {tuple(gray.shape)}")
    m = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=torch.float64,
                     device=gray.device).view(1, 1, 3, 3)
    return F.conv2d(gray.to(torch.float64), m).abs()
