"""degflow.data.images: robust reading (conversions logged, unfaithful inputs refused),
atomic PNG writing, image discovery."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from _data_trees import rand_image, save, truncate, write_png16
from degflow.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    find_images,
    read_image,
    read_image_size,
    write_image,
)


def to8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def to16(x: torch.Tensor) -> np.ndarray:
    return ((x.double() + 1) / 2 * 65535).round().long().permute(1, 2, 0).numpy()


@pytest.fixture
def info_log(caplog):
    caplog.set_level(logging.INFO, logger="degflow.data")
    return caplog


def test_rgb8_png_is_read_exactly_in_minus1_1(tmp_path):
    a = rand_image(9, 13, 0)
    x = read_image(save(tmp_path / "a.png", a))
    assert x.dtype == torch.float32 and x.shape == (3, 9, 13)
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to8(x), a)


def test_grayscale_is_replicated_to_rgb_and_logged(tmp_path, info_log):
    g = rand_image(8, 8, 1)[..., 0]
    p = tmp_path / "g.png"
    Image.fromarray(g).convert("L").save(p)
    x = read_image(p)
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert np.array_equal(to8(x)[..., 0], g)
    assert any("g.png" in r.message and "grayscale" in r.message for r in info_log.records)


def test_palette_is_converted_to_rgb(tmp_path, info_log):
    a = rand_image(10, 10, 2)
    p = tmp_path / "p.png"
    Image.fromarray(a).quantize(16).save(p)
    x = read_image(p)
    ref = np.asarray(Image.open(p).convert("RGB"))
    assert np.array_equal(to8(x), ref)
    assert any("palette" in r.message for r in info_log.records)


def test_palette_with_a_used_transparent_index_is_refused(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] * 128)
    im.putpixel((1, 1), 1)
    p = tmp_path / "pt.png"
    im.save(p, transparency=1)
    with pytest.raises(ImageReadError, match="pt.png.*transparent"):
        read_image(p)


def test_rgba_fully_opaque_drops_alpha_and_logs(tmp_path, info_log):
    a = rand_image(6, 7, 3)
    rgba = np.concatenate([a, np.full((6, 7, 1), 255, np.uint8)], -1)
    x = read_image(save(tmp_path / "o.png", rgba))
    assert np.array_equal(to8(x), a)
    assert any("o.png" in r.message and "alpha dropped" in r.message for r in info_log.records)


def test_rgba_with_a_transparent_pixel_is_refused_naming_the_file(tmp_path):
    rgba = np.concatenate([rand_image(6, 7, 3), np.full((6, 7, 1), 255, np.uint8)], -1)
    rgba[2, 3, 3] = 0
    p = save(tmp_path / "t.png", rgba)
    with pytest.raises(ImageReadError, match=r"t\.png.*1 transparent"):
        read_image(p)


def test_la_opaque_is_gray_replicated(tmp_path):
    la = np.stack([rand_image(5, 5, 4)[..., 0], np.full((5, 5), 255, np.uint8)], -1)
    p = tmp_path / "la.png"
    Image.fromarray(la).save(p)
    assert Image.open(p).mode == "LA"
    x = read_image(p)
    assert np.array_equal(to8(x)[..., 1], la[..., 0])


def test_16bit_grayscale_png_keeps_16bit_precision(tmp_path, info_log):
    g = np.random.default_rng(5).integers(0, 65536, (7, 9)).astype(np.uint16)
    x = read_image(write_png16(tmp_path / "g16.png", g))
    assert np.array_equal(to16(x)[..., 0], g)
    assert np.array_equal(to16(x)[..., 2], g)
    assert any("16-bit" in r.message for r in info_log.records)


def test_16bit_rgb_png_keeps_16bit_precision_where_pillow_would_truncate(tmp_path):
    a = np.random.default_rng(6).integers(0, 65536, (7, 9, 3)).astype(np.uint16)
    p = write_png16(tmp_path / "rgb16.png", a)
    assert np.asarray(Image.open(p)).dtype == np.uint8  # Pillow alone would lose 8 bits
    assert np.array_equal(to16(read_image(p)), a)


def test_16bit_rgba_png_opaque_kept_transparent_refused(tmp_path):
    a = np.random.default_rng(7).integers(0, 65536, (4, 5, 4)).astype(np.uint16)
    a[..., 3] = 65535
    assert np.array_equal(to16(read_image(write_png16(tmp_path / "o16.png", a))), a[..., :3])
    a[0, 0, 3] = 100
    with pytest.raises(ImageReadError, match="t16.png"):
        read_image(write_png16(tmp_path / "t16.png", a))


def test_16bit_rgb_tiff_keeps_precision(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(8).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, a, photometric="rgb")
    assert np.array_equal(to16(read_image(p)), a)


def test_cmyk_jpeg_is_converted_to_rgb_and_logged(tmp_path, info_log):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=100)
    x = read_image(p)
    r, g, b = to8(x)[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60  # cyan/magenta/yellow ink 0/255/255 -> red
    assert any("CMYK" in m.message for m in info_log.records)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file_is_refused_naming_it_even_if_pillow_was_told_to_allow_it_and_the_setting_stays(tmp_path, ext):
    p = truncate(save(tmp_path / f"cut{ext}", rand_image(64, 64, 9)))
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # someone else's global setting
    try:
        with pytest.raises(ImageReadError, match=f"cut\\{ext}.*truncated"):
            read_image(p)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # ... which reading left as it was
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_garbage_and_missing_files_raise_imagereaderror_which_is_a_valueerror(tmp_path):
    p = tmp_path / "junk.png"
    p.write_text("not an image")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(p)
    with pytest.raises(ValueError, match="nope.png.*does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image_size(p)


def test_exif_orientation_is_applied(tmp_path, info_log):
    ex = Image.Exif()
    ex[0x0112] = 6
    p = tmp_path / "o.jpg"
    Image.new("RGB", (6, 4), (10, 20, 30)).save(p, exif=ex)
    assert read_image(p).shape == (3, 6, 4)
    assert read_image_size(p) == (4, 6)
    assert any("orientation" in r.message for r in info_log.records)


def test_write_image_is_atomic_8bit_png_and_round_trips(tmp_path):
    x = torch.rand(3, 5, 6) * 2 - 1
    p = tmp_path / "sub" / "out.png"
    write_image(p, x)
    write_image(p, x)  # overwrite in place
    assert [q.name for q in p.parent.iterdir()] == ["out.png"]  # no temp file left
    assert Image.open(p).mode == "RGB"
    assert (read_image(p) - x).abs().max() <= 1 / 127.5 + 1e-6
    write_image(tmp_path / "b.png", x.unsqueeze(0))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        write_image(tmp_path / "c.png", torch.zeros(4, 5, 6))
    with pytest.raises(ValueError, match="PNG"):
        write_image(tmp_path / "c.jpg", x)


def test_find_images_sorted_recursive_by_extension(tmp_path):
    for name in ["b.PNG", "a.jpg", "sub/c.tiff", "notes.txt", ".hidden.png", "sub/d.webp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.jpg", "b.PNG", "sub/c.tiff", "sub/d.webp"]
    assert [p.name for p in find_images(tmp_path, recursive=False)] == ["a.jpg", "b.PNG"]
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
    with pytest.raises(ValueError, match="missing"):
        find_images(tmp_path / "missing")
