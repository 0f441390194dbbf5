"""Blur and noise measures of one LR image (degflow.metrics.degradation), against independent numpy references."""

import math

import numpy as np
import pytest
import torch

from degflow.metrics.degradation import band_energy, detail_ratio, lr_noise_sigma


def _numpy_band_energy(img: np.ndarray, low: float) -> float:
    """Reference: BT.601 luma of an [H, W, 3] image in [0, 1], numpy's Hann window and FFT."""
    y = (16 + 65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0
    y = y - y.mean()
    h, w = y.shape
    power = np.abs(np.fft.fft2(y * np.outer(np.hanning(h), np.hanning(w)))) ** 2
    f = np.maximum(np.abs(np.fft.fftfreq(h))[:, None], np.abs(np.fft.fftfreq(w))[None, :])
    return float(power[f >= low].sum())


def _to_batch(img01: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img01).permute(2, 0, 1)[None].float() * 2 - 1


def test_band_energy_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.1, 0.9, size=(40, 56, 3)).astype(np.float32)
    for low in (0.0, 0.125, 0.3):
        ref = _numpy_band_energy(img.astype(np.float64), low)
        assert float(band_energy(_to_batch(img), low)) == pytest.approx(ref, rel=1e-5)


def test_detail_ratio_is_one_for_the_hr_image_and_the_squared_amplitude_of_a_damped_copy():
    yy, xx = np.mgrid[0:64, 0:64]
    detail = 0.2 * np.sin(2 * math.pi * 0.3 * xx) * np.sin(2 * math.pi * 0.27 * yy)    # all above 1/8 cycle/px
    base = 0.5 + 0.2 * np.sin(2 * math.pi * 0.03 * xx)                                # all below
    hr = np.repeat((base + detail)[..., None], 3, axis=2)
    half = np.repeat((base + 0.5 * detail)[..., None], 3, axis=2)
    assert float(detail_ratio(_to_batch(hr), _to_batch(hr))) == pytest.approx(1.0)
    # the window leaks a little of the low-frequency base upward: 1/4 within 2 %
    assert float(detail_ratio(_to_batch(half), _to_batch(hr))) == pytest.approx(0.25, rel=0.02)


def test_detail_ratio_falls_with_blur_and_refuses_a_flat_reference():
    from degflow.baselines.filters import gaussian_blur   # the demo camera's optical blur, an independent blur

    torch.manual_seed(0)
    hr = torch.rand(1, 3, 64, 64) * 2 - 1
    ratios = [float(detail_ratio(gaussian_blur(hr, s), hr)) for s in (0.5, 1.0, 2.0)]
    assert 1.0 > ratios[0] > ratios[1] > ratios[2] > 0.0
    with pytest.raises(ValueError, match="flat image"):
        detail_ratio(hr, torch.zeros_like(hr))
    with pytest.raises(ValueError, match="same shape"):
        detail_ratio(hr[..., :32], hr)


def test_lr_noise_sigma_finds_gaussian_noise_at_the_true_lr_size():
    g = torch.Generator().manual_seed(1)
    flat = torch.full((1, 3, 96, 96), 0.0)
    assert float(lr_noise_sigma(flat, 2.0)) < 1e-9
    # grey noise of 4 levels of Y (studio range: 219 levels from black to white), at scale 1 measured as it is
    noise = torch.randn(1, 1, 48, 48, generator=g) * (4.0 * 2 / 219)
    lr = noise.expand(1, 3, 48, 48)
    assert float(lr_noise_sigma(lr, 1.0)) == pytest.approx(4.0, rel=0.05)
