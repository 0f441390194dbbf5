"""Image operations of the procedural degradations (the demo data's camera and Real-ESRGAN):
blur and JPEG, one implementation each, with the variants named for what they do.

- :func:`gaussian_blur`: separable isotropic Gaussian (the demo camera's optical blur);
- :func:`filter2d`: any 2-D kernel, a true convolution (Real-ESRGAN's kernel families, the
  fitted linear degradation);
- :func:`jpeg_roundtrip`: one encode / decode by Pillow's codec (uint8 in, uint8 out), used by
- :func:`jpeg_compress` (a batch at an integer quality, Real-ESRGAN) and
- :func:`jpeg_fractional` (one image at a fractional quality: the blend of the two nearest integer
  qualities, so the result moves continuously with the quality; the demo camera).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["filter2d", "gaussian_blur", "jpeg_compress", "jpeg_fractional", "jpeg_roundtrip"]


def gaussian_blur(x: Tensor, sigma: float, radius: int | None = None, border: str = "reflect") -> Tensor:
    """Separable Gaussian blur of ``x [B, C, H, W]``: ``radius`` (default ceil(3 sigma)) taps each side,
    ``border`` ``reflect`` (replicated when the image is smaller than the radius) or ``replicate``;
    ``sigma < 1e-3`` returns ``x``."""
    if sigma < 1e-3:
        return x
    radius = max(1, math.ceil(3.0 * sigma)) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype).to(x.device)
    c = x.shape[1]
    h, w = x.shape[-2:]
    mode = "reflect" if border == "reflect" and radius < min(h, w) else "replicate"
    x = F.pad(x, (radius, radius, 0, 0), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode=mode)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def filter2d(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve every channel of ``x [B, C, H, W]`` with ``kernel [K, K]`` (K odd), same size.

    Borders are reflected (replicated when the image is smaller than the kernel radius).
    """
    k = kernel.shape[-1]
    c = x.shape[1]
    pad = k // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(x.dtype).to(x.device).expand(c, 1, k, k)
    # conv2d is a correlation; flip the kernel so this is a true convolution
    return F.conv2d(xp, weight.flip(-1, -2), groups=c)


def jpeg_roundtrip(arr: np.ndarray, quality: int, subsampling: int | None = None) -> tuple[np.ndarray, int]:
    """``[H, W, 3]`` uint8 -> (decoded ``[H, W, 3]`` uint8, encoded size in bytes): Pillow's
    baseline JPEG at ``quality`` (1..100); ``subsampling`` as Pillow takes it (None: its
    default, 4:2:0)."""
    buf = io.BytesIO()
    options = {} if subsampling is None else {"subsampling": subsampling, "optimize": False}
    Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=int(quality), **options)
    size = buf.tell()
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy(), size


def jpeg_compress(x01: Tensor, quality: int) -> Tensor:
    """Encode and decode every image of ``x01 [B, 3, H, W]`` (in [0, 1]) as JPEG at ``quality``
    (1..100, Pillow's baseline codec with 4:2:0 chroma subsampling). Returns [0, 1], 8-bit values."""
    q = int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")
    out = []
    for img in x01:
        arr = (img.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        decoded = jpeg_roundtrip(arr, q)[0]
        out.append(torch.from_numpy(decoded).permute(2, 0, 1).to(x01.dtype) / 255.0)
    return torch.stack(out).to(x01.device)


def jpeg_fractional(x01: Tensor, quality: float) -> Tensor:
    """JPEG round trip of one image ``[3, h, w]`` in [0, 1] at a fractional quality: the blend
    of the two nearest integer qualities (4:2:0), so the result is continuous in ``quality``
    (clamped to [1, 100])."""
    arr = (x01.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)

    def enc(q: int) -> Tensor:
        decoded = jpeg_roundtrip(arr, q, subsampling=2)[0]
        return torch.from_numpy(np.asarray(decoded, dtype=np.float32) / 255.0).permute(2, 0, 1)

    q = min(max(quality, 1.0), 100.0)
    lo = math.floor(q)
    frac = q - lo
    out = enc(lo)
    if frac > 1e-6:
        out = (1.0 - frac) * out + frac * enc(lo + 1)
    return out
