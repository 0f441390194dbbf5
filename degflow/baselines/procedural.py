"""Procedural real-world degradation: the Real-ESRGAN "second-order" model, at any float scale.

The degradation SR practitioners use today when they have no real LR images (Wang et al.,
"Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data", ICCVW
2021). Written here from the paper and the parameter values published with it (the
``train_realesrnet_x4plus.yml`` options of the authors' release); the facts carried over are
the kernel families, the probabilities, the ranges and the order of operations:

first order   blur (kernel, always) -> random resize -> Gaussian or Poisson noise -> JPEG
second order  blur (kernel, p = 0.8) -> random resize relative to the target size
              -> Gaussian or Poisson noise
final         {resize to the target size + sinc filter (p = 0.8), JPEG} in random order (p = 0.5)

Blur kernels (side drawn from 7, 9, ..., 21; zero-padded to 21): with ``sinc_prob`` a 2-D
sinc (circular low-pass, cutoff in [pi/3, pi] for sides < 13, else [pi/5, pi]), otherwise one of
six families drawn with ``kernel_prob``: isotropic / anisotropic Gaussian,
generalized Gaussian ``exp(-0.5 q^beta)`` and plateau ``1 / (1 + q^beta)`` (each iso or aniso),
with ``q = x^T Sigma^-1 x``, ``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``,
``theta ~ U(-pi, pi)``; beta is drawn from ``[beta_lo, 1]`` or ``[1, beta_hi]`` with
probability 1/2 each. Resizes use area, bilinear or bicubic (uniformly). Gaussian noise has
std ``sigma / 255`` with sigma drawn from ``noise_range``; Poisson noise is shot noise of
the 8-bit image with ``2^ceil(log2(#distinct values))`` photon levels, multiplied by a
``poisson_scale_range`` factor; either is grayscale (one draw for all three channels) with
``gray_noise_prob``. JPEG here is a real codec (Pillow, 4:2:0 chroma subsampling) at an integer
quality from ``jpeg_range`` (the authors use a differentiable re-implementation).

Differences from the x4 original, all forced by "any float scale": the second-order resize
and the final resize aim at round(H/s) x round(W/s) instead of H // 4; and every random
choice is drawn from one ``torch.Generator``, so the same seed gives the same image.
Note that the first order does not depend on s (its resize is relative to the HR size), so
near s = 1 the result is about as degraded as the published x4 / x2 settings make it; that
is the method as published, applied at a scale it was not designed for.
The authors' unsharp masking of the ground truth (``gt_usm``) is a training-target trick
of their SR model, not part of the degradation, and is not applied.

Images are float tensors in [-1, 1] at the interface (project convention); the pipeline
works on [0, 1] internally, like the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from degflow.baselines.filters import filter2d, jpeg_compress
from degflow.core.scales import scale_label
from degflow.infra.checks import check_positive_int
from degflow.infra.runtime import key_seed

__all__ = [
    "KERNEL_KINDS",
    "RESIZE_MODES",
    "DegradationOrder",
    "ProceduralSettings",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "sample_blur_kernel",
    "add_gaussian_noise",
    "add_poisson_noise",
    "realesrgan",
    "procedural_seed",
]

#: Blur kernel families, in the order of ``DegradationOrder.kernel_prob``.
KERNEL_KINDS: tuple[str, ...] = (
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso",
)
#: Interpolation modes of the random resizes (drawn uniformly).
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
#: Largest kernel side; every sampled kernel is zero-padded to it.
MAX_KERNEL_SIZE = 21


@dataclass(frozen=True)
class DegradationOrder:
    """Parameters of one degradation order (Real-ESRGAN option names in brackets)."""

    blur_prob: float                          # probability of the blur [second_blur_prob]
    blur_sigma: tuple[float, float]           # sigma_x, sigma_y range [blur_sigma]
    resize_range: tuple[float, float]         # down factors [lo, 1), up factors [1, hi] [resize_range]
    noise_range: tuple[float, float]          # Gaussian sigma on the 0..255 scale [noise_range]
    poisson_scale_range: tuple[float, float]  # Poisson noise multiplier [poisson_scale_range]
    resize_prob: tuple[float, float, float]   # up, down, keep [resize_prob]
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # over KERNEL_KINDS
    sinc_prob: float = 0.1                    # sinc instead of a Gaussian-family kernel
    betag_range: tuple[float, float] = (0.5, 4.0)  # generalized-Gaussian shape beta
    betap_range: tuple[float, float] = (1.0, 2.0)  # plateau shape beta
    gaussian_noise_prob: float = 0.5          # Gaussian noise, else Poisson noise
    gray_noise_prob: float = 0.4              # same noise in the three channels
    jpeg_range: tuple[float, float] = (30.0, 95.0)  # JPEG quality

    def __post_init__(self) -> None:
        if len(self.kernel_prob) != len(KERNEL_KINDS):
            raise ValueError(f"kernel_prob needs one probability per kind {list(KERNEL_KINDS)}, "
                             f"got {list(self.kernel_prob)}")
        if len(self.resize_prob) != 3:
            raise ValueError(f"resize_prob needs three probabilities (up, down, keep), got {list(self.resize_prob)}")


#: Published first-order parameters.
FIRST_ORDER = DegradationOrder(
    blur_prob=1.0, blur_sigma=(0.2, 3.0), resize_range=(0.15, 1.5), noise_range=(1.0, 30.0),
    poisson_scale_range=(0.05, 3.0), resize_prob=(0.2, 0.7, 0.1),
)
#: Published second-order parameters.
SECOND_ORDER = DegradationOrder(
    blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_range=(0.3, 1.2), noise_range=(1.0, 25.0),
    poisson_scale_range=(0.05, 2.5), resize_prob=(0.3, 0.4, 0.3),
)


@dataclass(frozen=True)
class ProceduralSettings:
    """The whole pipeline: two orders, the final sinc filter and the kernel sides."""

    first: DegradationOrder = FIRST_ORDER
    second: DegradationOrder = SECOND_ORDER
    final_sinc_prob: float = 0.8
    final_jpeg_first_prob: float = 0.5        # JPEG before (else after) the final resize + sinc
    kernel_sizes: tuple[int, ...] = field(default=tuple(range(7, MAX_KERNEL_SIZE + 1, 2)))


# ------------------------------------------------------------------------------ kernels
def _check_kernel_size(size: int) -> None:
    if check_positive_int(size, "kernel size", hint=" (odd)") % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 1, got {size!r}")


def _offsets(size: int) -> tuple[Tensor, Tensor]:
    """Pixel offsets from the kernel centre: ``(x, y)``, each ``[K, K]`` float64 (x along W)."""
    _check_kernel_size(size)
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """``q = v^T Sigma^-1 v`` at every offset v, ``[K, K]``, for the rotated covariance
    ``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``."""
    if not (sigma_x > 0 and sigma_y > 0):
        raise ValueError(f"kernel sigmas must be > 0, got sigma_x={sigma_x!r}, sigma_y={sigma_y!r}")
    xx, yy = _offsets(size)
    c, s = math.cos(theta), math.sin(theta)
    # coordinates in the rotated frame: u along the sigma_x axis, w along the sigma_y axis
    u = c * xx + s * yy
    w = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (w / sigma_y) ** 2


def _normalized(k: Tensor) -> Tensor:
    return k / k.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> Tensor:
    """Bivariate Gaussian ``exp(-q / 2)``, normalized to sum 1: ``[K, K]`` float64.

    ``sigma_y=None`` is the isotropic kernel (``sigma_y = sigma_x``).
    """
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalized(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None,
                                theta: float = 0.0, beta: float = 1.0) -> Tensor:
    """Generalized Gaussian ``exp(-q^beta / 2)`` (beta = 1: Gaussian), sum 1: ``[K, K]``."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalized(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta) ** beta))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None = None,
                   theta: float = 0.0, beta: float = 1.0) -> Tensor:
    """Plateau-shaped ``1 / (1 + q^beta)``, sum 1: ``[K, K]`` float64."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalized(1.0 / (1.0 + _quadratic_form(size, sigma_x, sigma_y, theta) ** beta))


def sinc_kernel(size: int, cutoff: float) -> Tensor:
    """2-D sinc (ideal circular low-pass with angular cutoff ``cutoff`` in (0, pi]), sum 1.

    ``h(r) = cutoff J1(cutoff r) / (2 pi r)`` (J1: Bessel function of the first kind), with its
    limit ``cutoff^2 / (4 pi)`` at r = 0; truncated to ``[K, K]`` and normalized.
    """
    if not 0 < cutoff <= math.pi:
        raise ValueError(f"sinc cutoff must lie in (0, pi], got {cutoff!r}")
    xx, yy = _offsets(size)
    r = torch.sqrt(xx**2 + yy**2)
    safe = torch.where(r > 0, r, torch.ones_like(r))
    k = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    k = torch.where(r > 0, k, torch.full_like(k, cutoff**2 / (4 * math.pi)))
    return _normalized(k)


def _pad_kernel(k: Tensor, size: int = MAX_KERNEL_SIZE) -> Tensor:
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


# ------------------------------------------------------------------------------ random draws
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo) + (float(hi) - float(lo)) * float(torch.rand((), generator=g, dtype=torch.float64))


def _bernoulli(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g, dtype=torch.float64)) < p


def _choice(g: torch.Generator, probs: tuple[float, ...]) -> int:
    return int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=g))


def _beta(g: torch.Generator, lo: float, hi: float) -> float:
    # half of the draws below 1 (heavier tails / sharper plateau), half above
    return _uniform(g, lo, 1.0) if _bernoulli(g, 0.5) else _uniform(g, 1.0, hi)


def sample_blur_kernel(order: DegradationOrder, g: torch.Generator,
                       kernel_sizes: tuple[int, ...] = ProceduralSettings().kernel_sizes) -> Tensor:
    """One random blur kernel of an order, zero-padded to ``[21, 21]`` float64, sum 1."""
    size = kernel_sizes[_choice(g, (1.0,) * len(kernel_sizes))]
    if _bernoulli(g, order.sinc_prob):
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return _pad_kernel(sinc_kernel(size, _uniform(g, lo, math.pi)))
    kind = KERNEL_KINDS[_choice(g, order.kernel_prob)]
    sigma_x = _uniform(g, *order.blur_sigma)
    if kind.endswith("aniso"):
        sigma_y, theta = _uniform(g, *order.blur_sigma), _uniform(g, -math.pi, math.pi)
    else:
        sigma_y, theta = sigma_x, 0.0
    if kind.startswith("generalized"):
        k = generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _beta(g, *order.betag_range))
    elif kind.startswith("plateau"):
        k = plateau_kernel(size, sigma_x, sigma_y, theta, _beta(g, *order.betap_range))
    else:
        k = gaussian_kernel(size, sigma_x, sigma_y, theta)
    return _pad_kernel(k)


# ------------------------------------------------------------------------------ operations
def _luma(x01: Tensor) -> Tensor:
    """ITU-R BT.601 luma ``[B, 1, H, W]`` of RGB ``[B, 3, H, W]`` (weights 0.299, 0.587, 0.114)."""
    w = torch.tensor((0.299, 0.587, 0.114), dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 * w).sum(dim=1, keepdim=True)


def add_gaussian_noise(x01: Tensor, sigma: float, gray: bool, g: torch.Generator, clip: bool = True) -> Tensor:
    """``x01 + n``, ``n ~ N(0, (sigma / 255)^2)`` i.i.d. per pixel (and per channel unless ``gray``).

    ``x01``: ``[B, C, H, W]`` in [0, 1]; ``sigma`` on the 0..255 scale. ``clip`` to [0, 1].
    """
    b, c, h, w = x01.shape
    noise = torch.randn((b, 1 if gray else c, h, w), generator=g, dtype=torch.float64)
    out = x01 + (noise * (sigma / 255.0)).to(x01.dtype).to(x01.device).expand(b, c, h, w)
    return out.clamp(0.0, 1.0) if clip else out


def add_poisson_noise(x01: Tensor, scale: float, gray: bool, g: torch.Generator, clip: bool = True) -> Tensor:
    """Shot noise: ``x01 + scale * (Poisson(v * L) / L - v)`` per image.

    ``v`` is the image quantized to 8 bit (its luma when ``gray``, the same noise then added to
    every channel) and ``L = 2^ceil(log2(#distinct values of v))`` photon levels, so the noise
    variance at intensity v is ``scale^2 v / L``: proportional to the intensity.
    ``x01``: ``[B, C, H, W]`` in [0, 1].
    """
    out = []
    for img in x01:                                                               # [C, H, W]
        v = _luma(img[None])[0] if gray else img
        v = torch.round(v.clamp(0.0, 1.0).to(torch.float64) * 255.0) / 255.0
        levels = 2.0 ** math.ceil(math.log2(max(len(torch.unique(v)), 1)))
        shot = torch.poisson((v * levels).cpu(), generator=g) / levels
        noise = ((shot.to(v.device) - v) * scale).to(x01.dtype).expand_as(img)
        out.append(img + noise)
    res = torch.stack(out)
    return res.clamp(0.0, 1.0) if clip else res


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _random_resize(x: Tensor, order: DegradationOrder, base: tuple[float, float], g: torch.Generator) -> Tensor:
    """Resize to ``base * f`` with f up in [1, hi], down in [lo, 1] or kept, random mode."""
    direction = _choice(g, order.resize_prob)                                   # 0 up, 1 down, 2 keep
    lo, hi = order.resize_range
    factor = _uniform(g, 1.0, hi) if direction == 0 else _uniform(g, lo, 1.0) if direction == 1 else 1.0
    mode = RESIZE_MODES[_choice(g, (1.0,) * len(RESIZE_MODES))]
    return _resize(x, (int(base[0] * factor), int(base[1] * factor)), mode)


def _random_noise(x: Tensor, order: DegradationOrder, g: torch.Generator) -> Tensor:
    if _bernoulli(g, order.gaussian_noise_prob):
        sigma = _uniform(g, *order.noise_range)
        return add_gaussian_noise(x, sigma, _bernoulli(g, order.gray_noise_prob), g)
    scale = _uniform(g, *order.poisson_scale_range)
    return add_poisson_noise(x, scale, _bernoulli(g, order.gray_noise_prob), g)


def _random_jpeg(x: Tensor, order: DegradationOrder, g: torch.Generator) -> Tensor:
    return jpeg_compress(x.clamp(0.0, 1.0), round(_uniform(g, *order.jpeg_range)))


def _degrade_one(x01: Tensor, scale: float, settings: ProceduralSettings, g: torch.Generator) -> Tensor:
    """``[1, 3, H, W]`` in [0, 1] -> ``[1, 3, round(H/s), round(W/s)]`` in [0, 1], 8-bit values."""
    h, w = x01.shape[-2:]
    target = (max(1, round(h / scale)), max(1, round(w / scale)))
    kernel1 = sample_blur_kernel(settings.first, g, settings.kernel_sizes)
    kernel2 = sample_blur_kernel(settings.second, g, settings.kernel_sizes)
    final_sinc = None
    if _bernoulli(g, settings.final_sinc_prob):
        size = settings.kernel_sizes[_choice(g, (1.0,) * len(settings.kernel_sizes))]
        final_sinc = sinc_kernel(size, _uniform(g, math.pi / 3, math.pi))

    # first order
    out = filter2d(x01, kernel1) if _bernoulli(g, settings.first.blur_prob) else x01
    out = _random_resize(out, settings.first, (h, w), g)
    out = _random_noise(out, settings.first, g)
    out = _random_jpeg(out, settings.first, g)
    # second order
    if _bernoulli(g, settings.second.blur_prob):
        out = filter2d(out, kernel2)
    out = _random_resize(out, settings.second, (h / scale, w / scale), g)
    out = _random_noise(out, settings.second, g)

    # final: [resize to target + sinc] and JPEG, in random order
    def resize_and_sinc(y: Tensor) -> Tensor:
        y = _resize(y, target, RESIZE_MODES[_choice(g, (1.0,) * len(RESIZE_MODES))])
        return filter2d(y, final_sinc) if final_sinc is not None else y

    if _bernoulli(g, settings.final_jpeg_first_prob):
        out = resize_and_sinc(_random_jpeg(out, settings.second, g))
    else:
        out = _random_jpeg(resize_and_sinc(out), settings.second, g)
    return torch.round(out.clamp(0.0, 1.0) * 255.0) / 255.0


def realesrgan(hr: Tensor, scale: float, *, seed: int | None = None, generator: torch.Generator | None = None,
            settings: ProceduralSettings | None = None, size: str = "lr") -> Tensor:
    """Real-ESRGAN second-order degradation of HR images to scale ``scale`` (any float >= 1).

    Args:
        hr: ``[B, 3, H, W]`` (or ``[3, H, W]``, returned in the same layout) in [-1, 1].
        scale: downscaling factor s >= 1.
        seed / generator: the source of every random choice (give at most one; default seed 0).
            The same seed gives the same output; images of a batch get successive draws.
        settings: pipeline parameters (default: the published ones).
        size: ``"lr"``: ``[B, 3, round(H/s), round(W/s)]``; ``"hr"``: that image bicubically
            resized back to ``[B, 3, H, W]`` (the RealSR convention of LR at HR pixel size, as
            :func:`degflow.metrics.image.bicubic_baseline` does it).
    Returns:
        Degraded images in [-1, 1] (8-bit values), on the device of ``hr``.
    """
    if size not in ("lr", "hr"):
        raise ValueError(f"size={size!r} is not one of ['lr', 'hr']")
    if seed is not None and generator is not None:
        raise ValueError("realesrgan: pass seed or generator, not both")
    s = float(scale)
    if not math.isfinite(s) or s < 1.0:
        raise ValueError(f"scale must be a finite number >= 1 (downscaling factor), got {scale!r}")
    single = hr.ndim == 3
    hb = hr[None] if single else hr
    if hb.ndim != 4 or hb.shape[1] != 3:
        raise ValueError(f"hr must be [3, H, W] or [B, 3, H, W] in [-1, 1], got shape {tuple(hr.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else int(seed))
    settings = settings or ProceduralSettings()
    x01 = ((hb.detach().to(torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0)
    lr = torch.cat([_degrade_one(x01[i:i + 1], s, settings, g) for i in range(hb.shape[0])]) * 2.0 - 1.0
    if size == "hr":
        lr = F.interpolate(lr, size=tuple(hb.shape[-2:]), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)
    lr = lr.to(hr.dtype)
    return lr[0] if single else lr


def procedural_seed(base: int, image: str, scale: float) -> int:
    """The seed of :func:`realesrgan` for one (image, scale) of a baseline set: independent of
    the order of the images and of the other images and scales, stable across processes and
    machines (``crc32("{base}:{image}:{scale label}") & 0x7FFFFFFF``).

    ``image`` is the image's name without suffix, subfolders kept (``"sub/0001"``), as
    ``python -m degflow.evaluate`` and ``synthesize.py baseline=procedural`` both name it, so
    the two draw the same degradation for the same image, scale and ``base``
    (config key ``procedural_seed``).
    """
    return key_seed(base, image, scale_label(scale))
