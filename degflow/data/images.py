"""Robust image reading and writing.

``read_image`` returns an RGB float tensor ``[3, H, W]`` in [-1, 1] for any image a user
is likely to hand us, and refuses (``ImageReadError``) what cannot be read faithfully:

- 8-bit RGB: as is.
- grayscale (``1``, ``L``, ``I;16*``, ``I``): replicated to three channels.
- palette (``P``): converted to RGB (or to RGBA first when it declares transparency).
- RGBA / LA / PA: the alpha channel is dropped when it is fully opaque; an image with any
  transparent pixel is refused (a transparent pixel has no defined colour).
- 16-bit PNG (grey, grey+alpha, RGB, RGBA): kept at 16-bit precision (divided by 65535).
  Pillow decodes 16-bit colour PNGs to 8 bits; we recover the low bytes with Pillow's own
  decoder and refuse the file if that is not possible, never truncating silently.
- 16-bit colour TIFF: read with ``tifffile`` when installed, otherwise refused.
- CMYK / YCbCr: converted to RGB by Pillow.
- EXIF orientation: applied.
- truncated / corrupt / unreadable files: ``ImageReadError`` naming the file and reason.

Every conversion is reported with ``logging`` at INFO level (once per file and conversion
per process, so re-reading a file in a training loop does not flood the log).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor

from degflow.infra.files import atomic_write_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "read_image_size",
    "write_image",
    "find_images",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Pillow raw modes for 16-bit big/little-endian samples: decoding a file a second time
# with the opposite byte order makes Pillow's 16 -> 8 bit unpacker return the low bytes.
_SWAP_16 = {"RGB;16B": "RGB;16L", "RGB;16L": "RGB;16B",
            "RGBA;16B": "RGBA;16L", "RGBA;16L": "RGBA;16B"}


_logged: set[str] = set()


def _info(msg: str, *args) -> None:
    """Log a conversion at INFO, once per distinct message (file + what was done) per
    process, so training loops that re-read a file do not flood the log."""
    text = msg % args if args else msg
    if text not in _logged:
        if len(_logged) > 100_000:
            _logged.clear()
        _logged.add(text)
        log.info(text)


class ImageReadError(ValueError):
    """An image file that cannot be read faithfully (names the file and the reason)."""


def _fail(path: Path, reason: str) -> ImageReadError:
    return ImageReadError(f"cannot read image {path}: {reason}")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise _fail(path, "file does not exist")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    try:
        return Image.open(path)
    except Exception as e:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise _fail(path, f"{type(e).__name__}: {e}") from None


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header only (fast), after EXIF orientation.

    Raises ImageReadError when the header cannot be parsed.
    """
    path = Path(path)
    im = _open(path)
    with im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
    if orientation in (5, 6, 7, 8):  # transposing orientations swap the sides
        w, h = h, w
    return w, h


def _load_full(im: Image.Image, path: Path) -> None:
    """Decode every pixel, refusing truncated data whatever Pillow's process-wide
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` says: it is off for this decode and restored after,
    so other code in the process keeps its own setting."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        im.load()
    except Exception as e:
        raise _fail(path, f"{type(e).__name__}: {e} (file truncated or corrupt?)") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _png_bit_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG IHDR chunk, None for other formats."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_png16_colour(path: Path, im: Image.Image) -> np.ndarray:
    """16-bit colour PNG -> uint16 array [H, W, C] (C = 3 or 4) without losing bits.

    Pillow's PNG decoder unfilters the 16-bit data and then keeps the high byte of each
    sample (raw mode 'RGB;16B'). Decoding a second time with the little-endian raw mode
    keeps the other byte. Both decodes go through Pillow's C decoder (fast, handles every
    PNG filter); if the tile layout is not what we expect, we refuse rather than guess.
    """
    tiles = list(im.tile)
    ok = (len(tiles) >= 1 and all(getattr(t, "codec_name", None) == "zip" for t in tiles)
          and all(isinstance(t.args, str) and t.args in _SWAP_16 for t in tiles))
    if not ok:
        raise _fail(path, f"16-bit colour PNG with an unexpected decoder layout "
                          f"({[tuple(t) for t in tiles]}); Pillow would truncate it to 8 bits, "
                          f"so it is refused. Convert it to 8-bit or 16-bit grayscale PNG, or "
                          f"16-bit TIFF.")
    _load_full(im, path)
    hi = np.asarray(im)
    im_lo = _open(path)
    with im_lo:
        im_lo.tile = [t._replace(args=_SWAP_16[t.args]) for t in im_lo.tile]
        _load_full(im_lo, path)
        lo = np.asarray(im_lo)
    if hi.shape != lo.shape:
        raise _fail(path, "16-bit PNG: inconsistent decodes, refusing to guess")
    return (hi.astype(np.uint16) << 8) | lo.astype(np.uint16)


def _read_tiff16_colour(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        raise _fail(path, "16-bit colour TIFF: Pillow would truncate it to 8 bits and the "
                          "'tifffile' package is not installed; install tifffile or convert "
                          "the file to 8-bit") from None
    try:
        arr = tifffile.imread(path)
    except Exception as e:
        raise _fail(path, f"tifffile: {type(e).__name__}: {e}") from None
    if arr.ndim == 4:  # pages
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.dtype != np.uint16:
        raise _fail(path, f"16-bit TIFF with unexpected layout {arr.shape} {arr.dtype}")
    return arr


def _alpha_check(path: Path, alpha: np.ndarray, max_value: int, mode: str) -> None:
    if alpha.size and int(alpha.min()) < max_value:
        n = int((alpha < max_value).sum())
        raise _fail(path, f"mode {mode} has {n} transparent or semi-transparent pixel(s) "
                          f"(alpha < {max_value}); transparent pixels have no defined colour. "
                          f"Flatten the image onto a background first.")


def _to_tensor(arr: np.ndarray, max_value: float) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32) / max_value)
    if x.ndim == 2:
        x = x[..., None].expand(-1, -1, 3)
    return (x.permute(2, 0, 1) * 2.0 - 1.0).contiguous().clamp_(-1.0, 1.0)


def read_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as an RGB float32 tensor ``[3, H, W]`` in [-1, 1].

    Raises ImageReadError (a ValueError) naming the file for unreadable, truncated,
    transparent or otherwise unfaithfully readable images. Conversions are logged at INFO.
    """
    path = Path(path)
    im = _open(path)
    with im:
        fmt = im.format
        mode = im.mode
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            _info("%s: %s file has %d frames/pages; using the first one", path, fmt, n_frames)
        # 16-bit colour data that Pillow would truncate to 8 bits.
        png = _png_bit_depth(path) if fmt == "PNG" else None
        arr16 = None
        if png is not None and png[0] == 16 and png[1] in (2, 6):
            arr16 = _read_png16_colour(path, im)
        elif png is not None and png[0] == 16 and png[1] == 4:
            raise _fail(path, "16-bit grayscale+alpha PNG: Pillow cannot decode it without "
                              "truncating to 8 bits; refused. Drop the alpha channel or "
                              "convert to 16-bit grayscale.")
        elif fmt == "TIFF" and mode in ("RGB", "RGBA", "RGBX"):
            bits = im.tag_v2.get(258, (8,)) if hasattr(im, "tag_v2") else (8,)
            bits = bits if isinstance(bits, tuple) else (bits,)
            if max(bits) > 8:
                arr16 = _read_tiff16_colour(path)
        if arr16 is not None:
            desc = f"{arr16.shape[-1] * 16}-bit {'RGBA' if arr16.shape[-1] == 4 else 'RGB'}"
            if arr16.shape[-1] == 4:
                _alpha_check(path, arr16[..., 3], 65535, desc)
                _info("%s: %s with fully opaque alpha: alpha dropped", path, desc)
            _info("%s: %s %s kept at 16-bit precision (divided by 65535)", path, fmt, desc)
            return _to_tensor(arr16[..., :3], 65535.0)

        _load_full(im, path)
        orientation = 1
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            pass
        if orientation not in (1, None):
            im = ImageOps.exif_transpose(im)
            _info("%s: applied EXIF orientation %s", path, orientation)

        if mode == "RGB":
            return _to_tensor(np.asarray(im), 255.0)
        if mode in ("1", "L"):
            _info("%s: grayscale (mode %s) converted to RGB by channel replication",
                     path, mode)
            return _to_tensor(np.asarray(im.convert("L")), 255.0)
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(im)
            if mode == "I":
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi > 65535:
                    raise _fail(path, f"32-bit integer image (mode I) with values in "
                                      f"[{lo}, {hi}], outside the 16-bit range [0, 65535]")
            _info("%s: 16-bit grayscale (mode %s) kept at 16-bit precision (divided by "
                     "65535) and converted to RGB by channel replication", path, mode)
            return _to_tensor(arr.astype(np.float32), 65535.0)
        if mode in ("P", "PA"):
            transparent = mode == "PA" or "transparency" in im.info
            if transparent:
                rgba = im.convert("RGBA")
                _alpha_check(path, np.asarray(rgba)[..., 3], 255, f"{mode} (palette with "
                             f"transparency)")
                _info("%s: palette image (mode %s) declares transparency but every "
                         "pixel is opaque: converted to RGB", path, mode)
                return _to_tensor(np.asarray(rgba)[..., :3], 255.0)
            _info("%s: palette image (mode P) converted to RGB", path)
            return _to_tensor(np.asarray(im.convert("RGB")), 255.0)
        if mode in ("RGBA", "LA", "La", "RGBa"):
            if mode in ("La", "RGBa"):
                raise _fail(path, f"mode {mode} (premultiplied alpha) is not supported")
            arr = np.asarray(im)
            _alpha_check(path, arr[..., -1], 255, mode)
            _info("%s: mode %s with fully opaque alpha: alpha dropped%s", path, mode,
                     ", grayscale replicated to RGB" if mode == "LA" else "")
            return _to_tensor(arr[..., 0] if mode == "LA" else arr[..., :3], 255.0)
        if mode in ("CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
            try:
                rgb = im.convert("RGB")
            except Exception as e:
                raise _fail(path, f"mode {mode} cannot be converted to RGB: {e}") from None
            _info("%s: mode %s converted to RGB by Pillow", path, mode)
            return _to_tensor(np.asarray(rgb), 255.0)
        raise _fail(path, f"unsupported image mode {mode!r} ({fmt}); supported: RGB, L, 1, "
                          f"I;16, I, P, PA, RGBA, LA, CMYK, YCbCr, 16-bit PNG/TIFF")


def write_image(path: str | os.PathLike, x: Tensor) -> None:
    """Write ``x`` ([3, H, W] or [1, 3, H, W] in [-1, 1]) as an 8-bit RGB PNG, atomically.

    Written with :func:`degflow.infra.files.atomic_write_bytes`: readers never see a half-written
    file.
    """
    path = Path(path)
    if not isinstance(x, Tensor):
        raise ValueError(f"write_image expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"write_image expects an RGB image [3, H, W] in [-1, 1]; got shape "
                         f"{tuple(x.shape)}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_image writes PNG files; got {path} (use a .png name)")
    x = x.detach().float().cpu().clamp(-1.0, 1.0)
    arr = ((x + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    atomic_write_bytes(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))


def find_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files (by extension, case-insensitive) under ``root``, sorted.

    Hidden files (names starting with '.') are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)
