"""Image-quality metrics in the SR evaluation protocol (resizing lives in :mod:`degflow.core.resize`).

All metrics take images in [-1, 1], ``[B, 3, H, W]`` (a single ``[3, H, W]`` image is
treated as B = 1) and return per-image ``[B]`` tensors (float64 for PSNR / SSIM).

Protocol (as in the SR literature, e.g. BasicSR's ``test_y_channel`` evaluation):
images are mapped to [0, 1], quantized to 8 bit (as if saved to PNG), converted to the
ITU-R BT.601 luma Y in [16, 235] / 255, a ``shave``-pixel border is dropped, then
PSNR (data range 1, i.e. 255 on the 0..255 Y scale) or SSIM (Gaussian 11x11, sigma 1.5,
K1 = 0.01, K2 = 0.03, data range 255 on the 0..255 Y scale, 'valid' filtering) is computed.
Y itself is not rounded after conversion.

LPIPS, the perceptual metric, is :func:`degflow.metrics.perceptual.load_lpips` with ``net="alex"``.

Evaluation protocols (config key ``eval.protocol``, recorded in every metrics file):

``ours`` (default)
    8-bit quantization, 4-pixel shave, images centre-cropped to a multiple of 8 (the SR
    literature's Y-channel protocol above).
``authors``
    the DegFlow authors' scoring: float images (no quantization), no shave, a bottom/right
    crop to a multiple of 64 (the top-left corner is kept).

Numbers under the two protocols are not comparable with each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from degflow.core.resize import as_image_batch

__all__ = [
    "EVAL_PROTOCOLS",
    "EvalProtocol",
    "eval_protocol",
    "rgb_to_y",
    "psnr_y",
    "ssim_y",
]

# ITU-R BT.601 (MATLAB rgb2ycbcr) luma for R, G, B in [0, 1] -> Y on the 0..255 scale.
_Y_OFFSET = 16.0
_Y_COEFFS = (65.481, 128.553, 24.966)


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = as_image_batch(pred, "pred"), as_image_batch(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    return pred, target


def rgb_to_y(x01: Tensor) -> Tensor:
    """BT.601 luma of RGB in [0, 1]: ``[B, 3, H, W]`` -> ``[B, 1, H, W]`` in [16, 235] / 255.

    Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 (MATLAB ``rgb2ycbcr`` convention).
    """
    x01 = as_image_batch(x01, "x01")
    w = torch.tensor(_Y_COEFFS, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return ((x01 * w).sum(dim=1, keepdim=True) + _Y_OFFSET) / 255.0


def _to_y(x: Tensor, quantize: bool) -> Tensor:
    """[-1, 1] RGB batch -> float64 Y in [16, 235] / 255, ``[B, 1, H, W]``."""
    x01 = ((x.detach().to(torch.float64) + 1.0) / 2.0).clamp(0.0, 1.0)
    if quantize:
        x01 = torch.round(x01 * 255.0) / 255.0
    return rgb_to_y(x01)


def _shave(y: Tensor, shave: int) -> Tensor:
    if not isinstance(shave, int) or shave < 0:
        raise ValueError(f"shave must be an integer >= 0 (border pixels dropped), got {shave!r}.")
    if shave == 0:
        return y
    h, w = y.shape[-2:]
    if h <= 2 * shave or w <= 2 * shave:
        raise ValueError(
            f"shave={shave} leaves nothing of a {h}x{w} image; use a smaller shave."
        )
    return y[..., shave:-shave, shave:-shave]


def psnr_y(pred: Tensor, target: Tensor, shave: int = 4, quantize: bool = True) -> Tensor:
    """Y-channel PSNR in dB per image, ``[B]`` float64 (``inf`` for identical images).

    Args:
        pred, target: ``[B, 3, H, W]`` in [-1, 1].
        shave: border pixels dropped on each side before measuring.
        quantize: round both to 8 bit first (as when the images are saved as PNG).
    """
    pred, target = _pair(pred, target)
    yp = _shave(_to_y(pred, quantize), shave)
    yt = _shave(_to_y(target, quantize), shave)
    mse = (yp - yt).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)  # mse == 0 -> inf


def _gaussian_window(size: int, sigma: float, dtype, device) -> Tensor:
    """The normalised 1-D Gaussian ``[size]``; the 2-D window is its outer product (separable)."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """'valid' filtering of ``[B, 1, H, W]`` with the separable window ``g`` (rows, then columns):
    the same as one 2-D convolution with ``g g^T``, about size/2 times fewer operations."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim_y(
    pred: Tensor,
    target: Tensor,
    shave: int = 4,
    quantize: bool = True,
    window_size: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Y-channel SSIM per image, ``[B]`` float64.

    Wang et al. SSIM on Y in 0..255 (data range 255, K1 = 0.01, K2 = 0.03), Gaussian window
    ``window_size`` x ``window_size`` with std ``sigma``, 'valid' filtering (no padding),
    mean over the SSIM map. Matches ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``.
    """
    pred, target = _pair(pred, target)
    yp = _shave(_to_y(pred, quantize), shave) * 255.0
    yt = _shave(_to_y(target, quantize), shave) * 255.0
    h, w = yp.shape[-2:]
    if h < window_size or w < window_size:
        raise ValueError(
            f"SSIM needs at least {window_size}x{window_size} pixels after shaving; "
            f"got {h}x{w}."
        )
    win = _gaussian_window(window_size, sigma, yp.dtype, yp.device)
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    mu_p = _filter_valid(yp, win)
    mu_t = _filter_valid(yt, win)
    var_p = _filter_valid(yp * yp, win) - mu_p**2
    var_t = _filter_valid(yt * yt, win) - mu_t**2
    cov = _filter_valid(yp * yt, win) - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / (
        (mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


@dataclass(frozen=True)
class EvalProtocol:
    """How generated images are scored (config key ``eval.protocol``).

    Attributes:
        name: ``ours`` or ``authors`` (see the module docstring).
        quantize: round to 8 bit before measuring.
        shave: border pixels dropped on each side.
        crop: where the image is cropped to a multiple of ``multiple_of`` before generation
            and scoring: ``center`` or ``top_left`` (bottom/right rows and columns dropped).
        multiple_of: both sides are cropped to a multiple of this.
    """

    name: str
    quantize: bool
    shave: int
    crop: str
    multiple_of: int

    def psnr_y(self, pred: Tensor, target: Tensor) -> Tensor:
        """:func:`psnr_y` under this protocol: ``[B, 3, H, W]`` pair -> ``[B]``."""
        return psnr_y(pred, target, shave=self.shave, quantize=self.quantize)

    def ssim_y(self, pred: Tensor, target: Tensor) -> Tensor:
        """:func:`ssim_y` under this protocol: ``[B, 3, H, W]`` pair -> ``[B]``."""
        return ssim_y(pred, target, shave=self.shave, quantize=self.quantize)

    def to_dict(self) -> dict[str, object]:
        """Plain dict recorded in metrics files."""
        return asdict(self)


#: The named evaluation protocols (config key ``eval.protocol``).
EVAL_PROTOCOLS: dict[str, EvalProtocol] = {
    "ours": EvalProtocol("ours", quantize=True, shave=4, crop="center", multiple_of=8),
    "authors": EvalProtocol("authors", quantize=False, shave=0, crop="top_left", multiple_of=64),
}


def eval_protocol(name: str) -> EvalProtocol:
    """The protocol called ``name``; ValueError naming ``eval.protocol`` and the options."""
    if name not in EVAL_PROTOCOLS:
        raise ValueError(f"eval.protocol={name!r} is not one of {list(EVAL_PROTOCOLS)} (ours: 8-bit, "
                         f"4-pixel shave, centre crop to x8; authors: float, no shave, "
                         f"bottom/right crop to x64)")
    return EVAL_PROTOCOLS[name]
