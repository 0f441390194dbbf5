"""``data=demo``: real photographs shipped inside the scikit-image wheel, degraded by a
procedural, camera-like process that is defined at every continuous scale s >= 1.

Nothing is downloaded: the photos are read directly from ``skimage/data/`` (never through
scikit-image's network fetchers).

The degradation ``simulate_camera(hr, s, seed)`` mimics what zooming out does to a real camera
capture, each effect growing smoothly and non-linearly with u = s - 1 (all vanish at s = 1):

1. optical blur at HR resolution: Gaussian PSF, sigma = 0.3 u^1.5 HR pixels;
2. sensor sampling: antialiased bicubic downsampling to round(H/s) x round(W/s), on a
   grid anchored at the top-left corner with a step of exactly s HR pixels (so LR pixels
   move continuously with s);
3. sensor noise at LR resolution, signal dependent (shot + read noise):
   std^2 = a(s) x + b(s)^2, a = 3e-4 u^1.6, b = 2.5e-3 u^1.3 (x in [0, 1]); LR pixel (i, j)
   always gets the same unit noise value for a given seed, so it is continuous in s;
4. ISP colour and tone: white-balance shift (red up, blue down, ~ tanh(0.6 u^1.5)),
   veiling-glare contrast loss, a gamma curve whose exponent grows like 1 - exp(-u^2/2),
   and a saturation loss;
5. JPEG compression of the LR image (Pillow, in memory, 4:2:0) with quality
   q(s) = 92 - 32 (1 - exp(-0.9 u^1.2)), a fractional quality blending the two nearest
   integer qualities, faded in over s in [1, 1.5];
6. bicubic upsampling back to H x W on the same grid (the RealSR convention: LR stored at
   HR size), and
   8-bit quantization (as if stored as PNG).

s = 1 returns the HR image exactly. The result is deterministic given (image, s, seed).

Splits: the five TRAIN_IMAGES are cut into a top part (training crops) and a bottom band
of ``val_fraction`` of their height (validation: checkpoint selection and the sweep
objective); each part is degraded on its own, so no validation pixel reaches a training
image. The two TEST_IMAGES are the test split, built only when ``bundle.test`` is read.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from degflow.baselines.filters import gaussian_blur, jpeg_fractional
from degflow.core.scales import check_scale, check_scales, format_scales
from degflow.data.common import (
    DataBundle,
    MemoryRecord,
    Report,
    ValImageDataset,
    check_crop_fits,
    check_loader_args,
    make_bundle,
)
from degflow.data.images import read_image
from degflow.infra.checks import check_int, check_number, check_positive_int

__all__ = ["simulate_camera", "demo_data", "demo_image_paths", "demo_test_split", "scan_demo", "skimage_data_dir",
           "TRAIN_IMAGES", "TEST_IMAGES", "jpeg_quality"]

log = logging.getLogger(__name__)

TRAIN_IMAGES = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "hubble_deep_field.jpg")
TEST_IMAGES = ("chelsea.png", "motorcycle_right.png")
_VAL_SEED_OFFSET = 100  # validation bands get their own noise seeds


# ------------------------------------------------------------------- degradation


def _blur_sigma(u: float) -> float:
    return 0.3 * u ** 1.5


def _noise_params(u: float) -> tuple[float, float]:
    return 3e-4 * u ** 1.6, 2.5e-3 * u ** 1.3


def jpeg_quality(scale: float) -> float:
    """The (fractional) JPEG quality used at ``scale``: 92 near s = 1, ~61 at s = 4."""
    u = max(float(scale) - 1.0, 0.0)
    return 92.0 - 32.0 * (1.0 - math.exp(-0.9 * u ** 1.2))


def _cubic(x: Tensor, a: float = -0.75) -> Tensor:
    """Keys cubic convolution kernel (a = -0.75, as torch / OpenCV bicubic)."""
    x = x.abs()
    x2, x3 = x * x, x * x * x
    near = (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
    far = a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
    return torch.where(x <= 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _resample_matrix(n_out: int, n_in: int, step: float) -> Tensor:
    """[n_out, n_in] bicubic resampling matrix with a corner-anchored grid: output pixel i
    sits at input coordinate (i + 0.5) * step - 0.5 (pixel-area convention, exact ``step``
    input pixels per output pixel, not n_in / n_out). For step > 1 (downsampling) the
    kernel is stretched by ``step`` (antialiasing). Borders replicate.

    Because the grid is anchored at the top-left corner with the exact step, output pixel
    i moves continuously with the scale; a change of n_out only adds / removes the last
    row or column. This is what makes :func:`simulate_camera` continuous in s."""
    stretch = max(step, 1.0)
    support = 2.0 * stretch
    centers = (torch.arange(n_out, dtype=torch.float64) + 0.5) * step - 0.5
    offs = torch.arange(-math.ceil(support) - 1, math.ceil(support) + 2, dtype=torch.float64)
    j = torch.floor(centers)[:, None] + offs[None, :]  # [n_out, taps]
    w = _cubic((j - centers[:, None]) / stretch)
    idx = j.clamp(0, n_in - 1).long()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.scatter_add_(1, idx, w)
    m = m / m.sum(dim=1, keepdim=True)
    return m.float()


def _resample(x: Tensor, out_h: int, out_w: int, step: float) -> Tensor:
    """Separable resampling of [B, C, H, W] to [B, C, out_h, out_w] (see _resample_matrix)."""
    mh = _resample_matrix(out_h, x.shape[-2], step)
    mw = _resample_matrix(out_w, x.shape[-1], step)
    return torch.matmul(torch.matmul(mh, x), mw.t())


def _noise_field(seed: int, height: int, width: int) -> Tensor:
    """Unit-variance noise [4, height, width] (1 luminance + 3 chroma channels), drawn at
    the HR size from ``seed``; LR pixel (i, j) uses entry (i, j) whatever the scale, so the
    noise moves continuously with s together with the LR pixel grid."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(4, height, width, generator=g, dtype=torch.float32)


def _colour_tone(x: Tensor, u: float) -> Tensor:
    """Camera ISP colour/tone drift with zoom: x in [0, 1], [B, 3, h, w]."""
    wb = math.tanh(0.6 * u ** 1.5)
    gains = torch.tensor([1.0 + 0.07 * wb, 1.0 + 0.01 * wb, 1.0 - 0.09 * wb], dtype=x.dtype)
    x = x * gains.view(1, 3, 1, 1)
    glare = 0.05 * (1.0 - math.exp(-0.8 * u))  # veiling glare lifts blacks, lowers contrast
    x = x * (1.0 - glare) + glare * 0.35
    gamma = 1.0 + 0.22 * (1.0 - math.exp(-0.5 * u * u))  # midtones darker as s grows
    x = x.clamp(0.0, 1.0) ** gamma
    sat = 1.0 - 0.18 * math.tanh(0.4 * u ** 1.3)
    lum = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return (lum + sat * (x - lum)).clamp(0.0, 1.0)


def simulate_camera(hr: Tensor, scale: float, seed: int = 0) -> Tensor:
    """Camera-like degradation of ``hr`` ([3, H, W] or [B, 3, H, W] in [-1, 1]) at scale
    ``scale`` >= 1; returns the LR image at HR size, same shape, in [-1, 1].

    Deterministic given (image, scale, seed); every element of a batch uses the same
    ``seed`` (so ``simulate_camera(batch)[b] == simulate_camera(batch[b])``). ``scale == 1`` returns
    the input unchanged (a copy).
    """
    if not isinstance(hr, Tensor) or hr.ndim not in (3, 4) or hr.shape[-3] != 3:
        raise ValueError(f"simulate_camera expects an RGB image [3, H, W] or batch [B, 3, H, W]; got "
                         f"{tuple(hr.shape) if isinstance(hr, Tensor) else type(hr).__name__}")
    s = check_scale(scale, "scale")
    if s == 1.0:
        return hr.clone()
    batched = hr.ndim == 4
    x = (hr if batched else hr.unsqueeze(0)).detach().float().cpu()
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 0.5)
    H, W = x.shape[-2:]
    u = s - 1.0
    # 1. optical blur
    x = gaussian_blur(x, _blur_sigma(u))
    # 2. sensor sampling
    lh, lw = max(1, round(H / s)), max(1, round(W / s))
    x = _resample(x, lh, lw, s).clamp(0.0, 1.0)
    # 3. signal-dependent sensor noise
    a, b = _noise_params(u)
    n = _noise_field(seed, H, W)[:, :lh, :lw]
    noise = 0.8 * n[0:1] + 0.6 * n[1:4]  # luminance-correlated + per-channel, unit variance
    std = (a * x + b * b).sqrt()
    x = (x + std * noise.unsqueeze(0)).clamp(0.0, 1.0)
    # 4. colour / tone
    x = _colour_tone(x, u)
    # 5. JPEG, faded in near s = 1 so the process stays continuous there
    q = jpeg_quality(s)
    w_jpeg = 1.0 - math.exp(-u / 0.15)
    x = torch.stack([(1.0 - w_jpeg) * xi + w_jpeg * jpeg_fractional(xi, q) for xi in x])
    # 6. back to HR size, 8-bit levels
    x = _resample(x, H, W, 1.0 / s).clamp(0.0, 1.0)
    x = (x * 255.0).round() / 255.0
    out = (x * 2.0 - 1.0).to(hr.dtype).to(hr.device)
    return out if batched else out[0]


# ------------------------------------------------------------------------- data


def skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError:  # pragma: no cover - skimage is a dependency
        raise ValueError("data=demo needs scikit-image (its wheel ships the demo photos); "
                         "install scikit-image or use data=paired / data=realsr") from None
    return Path(skimage.__file__).resolve().parent / "data"


def demo_image_paths() -> tuple[list[Path], list[Path]]:
    """(train, test) photo paths inside the installed scikit-image package (validation is a
    held-out band of the training photos); ValueError listing the missing ones if the wheel
    does not ship them."""
    d = skimage_data_dir()
    train = [d / n for n in TRAIN_IMAGES]
    test = [d / n for n in TEST_IMAGES]
    missing = [str(p) for p in train + test if not p.is_file()]
    if missing:
        raise ValueError(f"data=demo: scikit-image's bundled photos are missing: {missing}; "
                         f"reinstall scikit-image from its wheel, or use data=paired")
    return train, test


def _check_fraction(val_fraction) -> float:
    check_number(val_fraction, "data.val_fraction", low=0.0, high=1.0, open_low=True, open_high=True,
                 hint=" (the bottom band of each training photo held out for validation)")
    return float(val_fraction)


def _split_rows(height: int, val_fraction: float) -> int:
    """First row of the validation band of a training photo ``height`` rows high."""
    return height - max(1, round(val_fraction * height))


def scan_demo(train_scales, val_scales, val_fraction, deep: bool = True,
              roles: tuple[str, ...] = ("train", "val", "test")) -> Report:
    """What the validator prints for data=demo (the photos, their train / val split, the
    test photos); problems for missing or unreadable photos. The test photos are opened only
    when ``roles`` has ``"test"``."""
    from degflow.data.images import ImageReadError, read_image_size

    ts = check_scales(train_scales, "data.train_scales")
    vs = check_scales(val_scales, "data.val_scales")
    fraction = _check_fraction(val_fraction)
    report = Report(kind="demo", root="scikit-image package data",
                    layout="procedural degradation (any scale)")
    try:
        train, test = demo_image_paths()
    except ValueError as e:
        report.problems.append(str(e))
        return report
    report.lines.append(
        f"demo: {len(train)} train photos (bottom {fraction:g} of each held out for "
        f"validation) / {len(test)} test photos from {train[0].parent}; train scales "
        f"{format_scales(ts)}, val / test scales "
        f"{format_scales(vs)} (LR synthesized)")
    for role, paths in (("train+val", train if {"train", "val"} & set(roles) else []),
                        ("test", test if "test" in roles else [])):
        for p in paths:
            try:
                x = read_image(p) if deep else None
                w, h = (x.shape[-1], x.shape[-2]) if deep else read_image_size(p)
                report.lines.append(f"  {role}: {p.name}: {w}x{h}")
            except ImageReadError as e:
                report.problems.append(f"unreadable: {e}")
    return report


def _limit_side(x: Tensor, max_side: int | None, name: str) -> Tensor:
    h, w = x.shape[-2:]
    if max_side is None or max(h, w) <= max_side:
        return x
    f = max_side / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    y = F.interpolate(x.unsqueeze(0), size=(nh, nw), mode="bicubic", align_corners=False,
                      antialias=True)[0]
    y = ((y.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # 8-bit levels, like a photo
    log.info("demo: %s downscaled from %dx%d to %dx%d (data.max_side=%d)", name, w, h, nw, nh,
             max_side)
    return y


def _image_seed(seed: int, index: int) -> int:
    return int(seed) * 1000003 + index


def _records(images: list[tuple[str, Tensor]], scales, seed: int, offset: int) -> list[MemoryRecord]:
    """Memory records of ``images`` with their LR at every scale > 1; image i uses noise seed
    ``_image_seed(seed, offset + i)``."""
    recs = []
    for i, (name, hr) in enumerate(images):
        sd = _image_seed(seed, offset + i)
        lrs = {s: simulate_camera(hr, s, sd) for s in scales if s != 1.0}
        recs.append(MemoryRecord(name=name, hr_image=hr, lr_images=lrs))
    return recs


def _load(paths: list[Path], max_side: int | None) -> list[tuple[str, Tensor]]:
    return [(p.stem, _limit_side(read_image(p), max_side, p.name)) for p in paths]


def demo_test_split(scales, seed: int = 0, max_side: int | None = 512) -> ValImageDataset:
    """The demo's test split (the two TEST_IMAGES, full size, LR at every scale of ``scales`` above 1, sorted),
    exactly as ``bundle.test`` of :func:`demo_data` with the same ``seed`` / ``max_side`` builds it,
    without degrading the training photos first."""
    scales = check_scales(sorted({1.0, *(float(s) for s in scales)}), "scales")
    train_paths, test_paths = demo_image_paths()
    recs = _records(_load(test_paths, max_side), scales, seed, len(train_paths))
    return ValImageDataset(recs, [s for s in scales if s != 1.0], 1, None)


def demo_data(*, train_scales, val_scales, crop_size, samples_per_epoch, multiple_of,
              val_max_size, seed, max_side, val_fraction) -> DataBundle:
    """The default data option: 5 scikit-image photos for training, the bottom
    ``val_fraction`` band of each for validation, 2 more photos as the test split; degraded
    by :func:`simulate_camera` at every train / val scale once at construction (full images / bands,
    then cropped), cached in memory. The test photos are read and degraded only when
    ``bundle.test`` is read. Defaults: conf/data/demo.yaml (:func:`degflow.data.build_data`)."""
    train_scales, val_scales, crop_size, samples_per_epoch, multiple_of, val_max_size = check_loader_args(
        train_scales, val_scales, crop_size, samples_per_epoch, multiple_of, val_max_size)
    max_side = check_positive_int(max_side, "data.max_side", allow_none=True)
    check_int(seed, "data.seed")
    fraction = _check_fraction(val_fraction)

    train_paths, test_paths = demo_image_paths()

    photos = _load(train_paths, max_side)
    cut = [_split_rows(x.shape[-2], fraction) for _, x in photos]
    train_imgs = [(n, x[:, :r]) for (n, x), r in zip(photos, cut)]
    val_imgs = [(f"{n}_val", x[:, r:]) for (n, x), r in zip(photos, cut)]
    check_crop_fits([MemoryRecord(n, x, {}) for n, x in train_imgs], crop_size, "demo training")  # before degrading
    for n, x in val_imgs:
        if min(x.shape[-2:]) < multiple_of:
            raise ValueError(f"data.multiple_of={multiple_of} is larger than the demo "
                             f"validation band {n} ({x.shape[-1]}x{x.shape[-2]}); raise "
                             f"data.val_fraction or lower data.multiple_of")
    train_recs = _records(train_imgs, train_scales, seed, 0)
    val_recs = _records(val_imgs, val_scales, seed, _VAL_SEED_OFFSET)

    def test_set() -> ValImageDataset:
        return demo_test_split(val_scales, seed, max_side)

    summary = (f"demo: {len(train_recs)} scikit-image photos (max side {max_side}) for training, "
               f"their bottom {fraction:g} for validation, {len(test_paths)} test photos "
               f"(evaluation only); procedural camera degradation (seed {seed}); "
               f"train scales {format_scales(train_scales)}, val scales {format_scales(val_scales)}")
    return make_bundle(train_recs, val_recs, train_scales, val_scales, crop_size=crop_size,
                       samples_per_epoch=samples_per_epoch, multiple_of=multiple_of,
                       val_max_size=val_max_size, summary=summary, test=test_set)
