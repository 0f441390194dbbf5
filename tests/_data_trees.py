"""Helpers for the data tests: synthetic images and RealSR / paired trees (not a test file)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from degflow.data.options import DATA_OPTIONS, option_defaults


def scan(option: str, deep: bool = False, **settings):
    """The validator's scan of ``data=<option>`` (train, val and test splits) with
    ``settings`` over the option's defaults (conf/data/<option>.yaml)."""
    return DATA_OPTIONS[option].scan({**option_defaults(option), **settings}, deep)


def rand_image(h: int, w: int, seed: int) -> np.ndarray:
    """A random uint8 RGB image [h, w, 3]."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def ramp_image(h: int, w: int) -> np.ndarray:
    """Smooth, position-coding image: R ramps with x, G with y, B with x + y."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 20 + 215 * x / max(w - 1, 1)
    g = 20 + 215 * y / max(h - 1, 1)
    b = 20 + 215 * (x + y) / max(w + h - 2, 1)
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_png16(path: Path, arr: np.ndarray) -> Path:
    """Minimal 16-bit PNG writer (grey [h, w], RGB [h, w, 3] or RGBA [h, w, 4] uint16):
    Pillow cannot write 16-bit colour PNGs."""
    h, w = arr.shape[:2]
    ctype = {2: 0, 3: {3: 2, 4: 6}.get(arr.shape[-1])}[arr.ndim]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# Pixel-wise LR functions: lr[s] = LR_FUNCS[s](hr), exact in [-1, 1] up to float rounding:
# scale 2 -> negative, 3 -> channel roll, 4 -> another channel order.
LR_FUNCS = {
    2: lambda a: 255 - a,
    3: lambda a: a[..., [1, 2, 0]],
    4: lambda a: a[..., [2, 0, 1]],
}
LR_FUNCS_T = {
    2: lambda t: -t,
    3: lambda t: t[..., [1, 2, 0], :, :],
    4: lambda t: t[..., [2, 0, 1], :, :],
}


def make_realsr(root: Path, cams=("Canon",), splits=None, n: int = 3, h: int = 40,
                w: int = 56, v3: bool = False, ramp: bool = False) -> Path:
    """RealSR ordered tree: {root}/{cam}/{split}/{s}/{cam}_{idx}_HR.png + _LR{s}.png.

    V2 (default): LR = LR_FUNCS[s](HR) at HR size. V3: LR = bicubic downscale of HR to
    round(size / s). The same HR is stored in every scale folder."""
    splits = splits or {"Train": (2, 3, 4), "Test": (2, 3, 4)}
    for ci, cam in enumerate(cams):
        for si, (split, scales) in enumerate(splits.items()):
            for i in range(1, n + 1):
                hr = ramp_image(h, w) if ramp else rand_image(h, w, 1000 * ci + 100 * si + i)
                for s in scales:
                    d = root / cam / split / str(s)
                    save(d / f"{cam}_{i:03d}_HR.png", hr)
                    if v3:
                        lr = np.asarray(Image.fromarray(hr).resize(
                            (round(w / s), round(h / s)), Image.BICUBIC))
                    else:
                        lr = LR_FUNCS[s](hr)
                    save(d / f"{cam}_{i:03d}_LR{s}.png", np.ascontiguousarray(lr))
    return root


def make_paired(root: Path, scales=(2, 4), n: int = 6, h: int = 40, w: int = 56,
                true_size: bool = False, ext: str = ".png") -> Path:
    """{root}/HR/img_{i}.png + {root}/x{s}/img_{i}.png."""
    for i in range(n):
        hr = rand_image(h, w, i)
        save(root / "HR" / f"img_{i:02d}{ext}", hr)
        for s in scales:
            if true_size:
                lr = np.asarray(Image.fromarray(hr).resize((round(w / s), round(h / s)),
                                                           Image.BICUBIC))
            else:
                lr = LR_FUNCS[s](hr)
            save(root / f"x{s}" / f"img_{i:02d}{ext}", np.ascontiguousarray(lr))
    return root


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
