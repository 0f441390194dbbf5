"""SR evaluation metrics (Y-PSNR, Y-SSIM, LPIPS metric) and the bicubic baseline."""

from __future__ import annotations

import math

import pytest
import torch

from degflow.metrics.image import eval_protocol, psnr_y, rgb_to_y, ssim_y
from degflow.core.resize import bicubic_baseline, resize_to_lr


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


def test_rgb_to_y_uses_bt601_matlab_coefficients():
    rgb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                        [0.0, 0.0, 1.0]]).view(5, 3, 1, 1)
    y = rgb_to_y(rgb).flatten() * 255
    expected = torch.tensor([16.0, 16 + 65.481 + 128.553 + 24.966, 16 + 65.481, 16 + 128.553,
                             16 + 24.966])
    assert torch.allclose(y, expected, atol=1e-4)
    assert math.isclose(y[1].item(), 235.0, abs_tol=1e-3)
    assert rgb_to_y(torch.rand(2, 3, 5, 7)).shape == (2, 1, 5, 7)


def test_psnr_y_of_constant_offset_is_closed_form():
    # A grey shift by d (on [0, 1]) moves Y by d * (65.481 + 128.553 + 24.966) / 255
    # = d * 219 / 255 everywhere, so mse = (d * 219 / 255)^2 on the [0, 1] Y scale.
    d = 10 / 255  # exactly 10 grey levels, survives 8-bit quantization
    target01 = 64 / 255
    target = torch.full((1, 3, 20, 20), target01 * 2 - 1)
    pred = torch.full_like(target, (target01 + d) * 2 - 1)
    expected = 10 * math.log10(1 / (d * 219 / 255) ** 2)
    got = psnr_y(pred, target)
    assert got.shape == (1,)
    assert got.dtype == torch.float64
    assert math.isclose(got.item(), expected, abs_tol=1e-4)


def test_psnr_y_shave_ignores_borders_and_identical_is_inf():
    x = _rand(2, 3, 32, 32)
    y = x.clone()
    y[..., :4, :] = -x[..., :4, :]  # corrupt only a 4-pixel border strip
    assert torch.isinf(psnr_y(x, x)).all()
    assert torch.isinf(psnr_y(x, y, shave=4)).all()
    assert torch.isfinite(psnr_y(x, y, shave=3)).all()
    assert torch.isfinite(psnr_y(x, y, shave=0)).all()


def test_psnr_y_quantize_flag_controls_8bit_rounding():
    x = torch.zeros(1, 3, 16, 16)
    y = x + 0.1 / 255  # far below one grey level
    assert torch.isinf(psnr_y(x, y, shave=0, quantize=True)).all()
    assert torch.isfinite(psnr_y(x, y, shave=0, quantize=False)).all()


def test_ssim_y_matches_skimage_gaussian_convention():
    from skimage.metrics import structural_similarity

    x = _rand(2, 3, 40, 48, seed=1)
    y = (x + 0.3 * _rand(2, 3, 40, 48, seed=2)).clamp(-1, 1)
    ours = ssim_y(x, y, shave=4)
    assert ours.shape == (2,)
    for i in range(2):
        def y255(t):
            t01 = torch.round(((t[i : i + 1].double() + 1) / 2).clamp(0, 1) * 255) / 255
            return (rgb_to_y(t01)[0, 0, 4:-4, 4:-4] * 255).numpy()

        ref = structural_similarity(y255(x), y255(y), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255)
        assert abs(ours[i].item() - ref) < 1e-4, (ours[i].item(), ref)
    assert torch.allclose(ssim_y(x, x), torch.ones(2, dtype=torch.float64))


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        psnr_y(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ssim_y(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))


def test_resize_to_lr_gives_true_lr_size():
    x = _rand(2, 3, 50, 37)
    lr = resize_to_lr(x, 4)
    assert lr.shape == (2, 3, round(50 / 4), round(37 / 4))
    assert resize_to_lr(x, 2.5).shape == (2, 3, 20, round(37 / 2.5))
    assert resize_to_lr(x[0], 3).shape == (3, 17, 12)
    assert lr.min() >= -1 and lr.max() <= 1


def test_bicubic_baseline_keeps_hr_size_range_and_scale_one_is_identity():
    x = _rand(2, 3, 48, 40)
    for s in (2, 3, 2.5, 4):
        b = bicubic_baseline(x, s)
        assert b.shape == x.shape
        assert b.min() >= -1 and b.max() <= 1
    assert torch.equal(bicubic_baseline(x, 1), x)
    # A smooth image survives down/up nearly unchanged; noise does not.
    ramp = torch.linspace(-0.8, 0.8, 48).view(1, 1, 48, 1).expand(1, 3, 48, 40)
    assert psnr_y(bicubic_baseline(ramp, 2), ramp).item() > 40
    assert psnr_y(bicubic_baseline(x, 4), x).max().item() < 20
    with pytest.raises(ValueError, match="scale"):
        bicubic_baseline(x, 0.5)


def test_the_two_evaluation_protocols_are_named_and_differ_as_documented():
    ours, authors = eval_protocol("ours"), eval_protocol("authors")
    assert (ours.quantize, ours.shave, ours.crop, ours.multiple_of) == (True, 4, "center", 8)
    assert (authors.quantize, authors.shave, authors.crop, authors.multiple_of) == (False, 0, "top_left", 64)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 70, 90, generator=g) * 2 - 1
    b = (a + 0.05 * torch.randn(1, 3, 70, 90, generator=g)).clamp(-1, 1)
    # the authors score floats with no shave: Y-PSNR straight from the definition
    ya, yb = [(((x.double() + 1) / 2) * torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64)
               .view(1, 3, 1, 1)).sum(1) + 16.0 for x in (a, b)]
    expected = 10 * math.log10(255.0**2 / float(((ya - yb) ** 2).mean()))
    assert authors.psnr_y(a, b).item() == pytest.approx(expected, abs=1e-9)
    assert ours.psnr_y(a, b).item() == pytest.approx(psnr_y(a, b, shave=4, quantize=True).item())
    assert abs(ours.psnr_y(a, b).item() - authors.psnr_y(a, b).item()) > 1e-3
    assert authors.to_dict() == {"name": "authors", "quantize": False, "shave": 0, "crop": "top_left",
                                 "multiple_of": 64}
    with pytest.raises(ValueError, match=r"eval\.protocol='paper' is not one of \['ours', 'authors'\]"):
        eval_protocol("paper")


def test_validation_crops_images_as_the_protocol_says():
    from degflow.training.rae import validation_items

    x = torch.arange(70 * 90, dtype=torch.float32).view(1, 70, 90).expand(3, 70, 90)
    items = [{"name": "a", "hr": x.clone(), "lr": x.expand(2, 3, 70, 90).clone(),
              "scales": torch.tensor([2.0, 4.0])}]
    authors = next(validation_items(items, None, torch.device("cpu"), eval_protocol("authors")))
    assert authors["hr"].shape == (1, 3, 64, 64) and torch.equal(authors["hr"][0], x[:, :64, :64])
    assert authors["lr"].shape == (1, 2, 3, 64, 64)
    ours = next(validation_items(items, None, torch.device("cpu"), eval_protocol("ours")))
    assert ours["hr"].shape == (1, 3, 64, 88) and torch.equal(ours["hr"][0], x[:, 3:67, 1:89])


def _keys_resample(x, out_size):
    """Independent reference: separable Keys cubic (a = -0.75, PyTorch's) interpolation of a 2-D numpy
    array at the centres of an ``out_size`` grid (half-pixel convention, replicated borders)."""
    import numpy as np

    def kernel(t):
        a, t = -0.75, np.abs(t)
        return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))

    def along(arr, n_out, axis):
        n_in = arr.shape[axis]
        pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        base = np.floor(pos).astype(int)
        out = 0
        for k in range(-1, 3):
            idx = np.clip(base + k, 0, n_in - 1)
            w = kernel(pos - (base + k))
            out = out + np.take(arr, idx, axis=axis) * (w[:, None] if axis == 0 else w[None, :])
        return out

    return along(along(x, out_size[0], 0), out_size[1], 1)


def test_sample_to_lr_is_bicubic_point_sampling_and_undoes_the_upsampling():
    import numpy as np

    from degflow.core.resize import lr_size, sample_to_lr, upsample_to

    g = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 48, 40, generator=g, dtype=torch.float64) * 1.6 - 0.8
    got = sample_to_lr(hr, 4.0)
    assert got.shape[-2:] == lr_size(48, 40, 4.0)
    ref = _keys_resample(hr[0, 1].numpy(), got.shape[-2:])
    assert np.allclose(got[0, 1].numpy(), np.clip(ref, -1, 1), atol=1e-10)
    for s, tol in ((3.0, 1e-6), (4.0, 0.03), (2.0, 0.05)):          # relative RMS, white noise
        h, w = lr_size(96, 96, s)
        lr = torch.rand(1, 3, h, w, generator=g, dtype=torch.float64) - 0.5
        back = sample_to_lr(upsample_to(lr, 96, 96), s)
        assert float((back - lr).pow(2).mean().sqrt() / lr.pow(2).mean().sqrt()) < tol, s
