"""KL / AKLD of degradation residuals against independent numpy / scipy computations."""

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from degflow.metrics.noise import akld, histogram_kl, local_variance, residual_8bit, residual_histogram


def _scene(seed=0, b=2, h=40, w=48):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(b, 3, h, w, generator=g) * 1.6 - 0.8
    return hr, g


def _noisy(hr, sigma, g):
    return (hr + sigma * torch.randn(hr.shape, generator=g)).clamp(-1, 1)


def _ref_kl(gen, real, hr):
    """numpy histogram (bins of 4 on [-260, 260)), +1 smoothing, scipy's KL (entropy(p, q))."""
    to8 = lambda x: np.round(np.clip((x.numpy().astype(np.float64) + 1) / 2, 0, 1) * 255)
    edges = np.arange(-260, 261, 4)
    out = []
    for i in range(hr.shape[0]):
        hists = []
        for x in (real, gen):
            n, _ = np.histogram((to8(x[i]) - to8(hr[i])).ravel(), edges)
            hists.append((n + 1) / (n.sum() + len(n)))
        out.append(stats.entropy(hists[0], hists[1]))
    return np.array(out)


def _ref_akld(gen, real, hr):
    """DANet's AKLD with scipy.ndimage (mirror = torch's reflect padding)."""
    to01 = lambda x: np.round(np.clip((x.numpy().astype(np.float64) + 1) / 2, 0, 1) * 255) / 255
    ax = np.arange(7) - 3
    g1 = np.exp(-ax**2 / (2 * 1.4**2))
    win = np.outer(g1, g1) / np.outer(g1, g1).sum()
    out = []
    for i in range(hr.shape[0]):
        var = []
        for x in (gen, real):
            r2 = (to01(x[i]) - to01(hr[i])) ** 2
            var.append(np.maximum(np.stack([ndimage.correlate(c, win, mode="mirror") for c in r2]), 1e-10))
        rho = np.clip(var[0] / var[1], 0.1, 10)
        out.append(np.mean(0.5 * (rho - 1 - np.log(rho))))
    return np.array(out)


def test_histogram_kl_matches_numpy_histogram_and_scipy_entropy():
    hr, g = _scene()
    real, gen = _noisy(hr, 0.05, g), _noisy(hr, 0.12, g)
    np.testing.assert_allclose(histogram_kl(gen, real, hr).numpy(), _ref_kl(gen, real, hr), rtol=1e-10)


def test_akld_matches_scipy_reference():
    hr, g = _scene(1)
    real, gen = _noisy(hr, 0.04, g), _noisy(hr, 0.1, g)
    np.testing.assert_allclose(akld(gen, real, hr).numpy(), _ref_akld(gen, real, hr), rtol=1e-9)


def test_both_are_zero_for_identical_degradations_and_grow_with_the_mismatch():
    hr, g = _scene(2, h=64, w=64)
    real = _noisy(hr, 0.05, g)
    assert histogram_kl(real, real, hr).abs().max() < 1e-12
    assert akld(real, real, hr).abs().max() < 1e-12
    kls = [histogram_kl(_noisy(hr, s, g), real, hr).mean().item() for s in (0.05, 0.1, 0.2)]
    aklds = [akld(_noisy(hr, s, g), real, hr).mean().item() for s in (0.05, 0.1, 0.2)]
    assert kls == sorted(kls) and aklds == sorted(aklds)


def test_akld_of_a_constant_variance_ratio_is_the_gaussian_kl():
    # 8-bit residuals of constant size 10 (real) and 20 (generated): local variances are exact, rho = 4
    hr = torch.zeros(1, 3, 16, 16)
    real = torch.full_like(hr, 10 / 127.5)
    gen = torch.full_like(hr, 20 / 127.5)
    expected = 0.5 * (4.0 - 1.0 - np.log(4.0))
    assert akld(gen, real, hr).item() == pytest.approx(expected, rel=1e-6)


def test_residual_histogram_puts_each_residual_in_its_bin_of_width_four():
    r = torch.tensor([[-260.0, -257.0, -256.0, 0.0, 3.0, 4.0, 255.0]])
    p = residual_histogram(r)
    counts = torch.round(p * (r.numel() + p.shape[1])) - 1
    assert p.shape == (1, 130)
    assert counts[0, 0] == 2 and counts[0, 1] == 1 and counts[0, 65] == 2 and counts[0, 66] == 1
    assert counts[0, (255 + 260) // 4] == 1 and counts.sum() == r.numel()


def test_local_variance_of_constant_residual_is_its_square():
    r = torch.full((1, 3, 9, 9), 0.25, dtype=torch.float64)
    torch.testing.assert_close(local_variance(r), torch.full_like(r, 0.0625))


def test_shapes_must_agree():
    hr, g = _scene()
    with pytest.raises(ValueError, match="same shape"):
        akld(hr[..., :-1], hr, hr)
    assert residual_8bit(hr, hr).abs().max() == 0


def _ref_radial_spectrum(r: np.ndarray, fmax: float, bands: int) -> np.ndarray:
    """numpy reference of residual_spectrum for one image [C, H, W]: loops over frequency bins."""
    c, h, w = r.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    win /= np.sqrt((win ** 2).mean())
    power = np.mean([np.abs(np.fft.fft2((x - x.mean()) * win)) ** 2 for x in r], axis=0) / (h * w)
    sums, counts = np.zeros(bands), np.zeros(bands)
    for i, fy in enumerate(np.fft.fftfreq(h)):
        for j, fx in enumerate(np.fft.fftfreq(w)):
            rad = np.hypot(fy, fx)
            if rad == 0 or rad > fmax:
                continue
            k = min(int(np.ceil(rad / fmax * bands)) - 1, bands - 1)
            sums[k] += power[i, j]
            counts[k] += 1
    return sums / counts


def test_residual_spectrum_matches_a_numpy_loop():
    from degflow.metrics.noise import residual_spectrum

    g = torch.Generator().manual_seed(3)
    r = torch.randn(2, 3, 24, 30, generator=g, dtype=torch.float64)
    got = residual_spectrum(r, 0.25, 6).numpy()
    for b in range(2):
        assert np.allclose(got[b], _ref_radial_spectrum(r[b].numpy(), 0.25, 6))


def test_spectrum_of_white_noise_is_flat_and_of_filtered_noise_follows_the_filter():
    from degflow.metrics.noise import residual_spectrum

    g = torch.Generator().manual_seed(4)
    white = torch.randn(4, 3, 128, 128, generator=g, dtype=torch.float64)
    flat = residual_spectrum(white).mean(0)
    assert torch.allclose(flat, torch.ones_like(flat), rtol=0.08)
    smooth = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(white, (1, 1, 0, 0), mode="circular"),
                                            (1, 3), stride=1)              # [1, 1, 1] / 3 along x
    falling = residual_spectrum(smooth).mean(0)
    assert bool((falling[1:] < falling[:-1]).all())                        # a low-pass falls with frequency
    assert float(falling[0]) == pytest.approx(float(flat[0]) * 0.9, rel=0.15)   # |H|^2 ~ (1 + 2 cos 2 pi f)^2 / 9 near 0


def test_spectrum_distance_tells_white_from_correlated_noise_that_kl_and_akld_accept():
    from degflow.metrics.noise import spectrum_distance

    hr, g = _scene(seed=5, b=1, h=96, w=96)
    white = torch.randn(hr.shape, generator=g)
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(torch.randn(hr.shape, generator=g), (1, 1, 1, 1),
                                                                 mode="circular"), 3, stride=1) * 3  # unit variance
    real, fake = (hr + 0.06 * box).clamp(-1, 1), (hr + 0.06 * white).clamp(-1, 1)
    same = (hr + 0.06 * torch.roll(box, 7, dims=-1)).clamp(-1, 1)
    assert float(spectrum_distance(real, real, hr)) == 0
    # variance matched: white noise passes KL and AKLD as well as another draw of the real noise does
    assert float(histogram_kl(fake, real, hr)) < 0.01
    assert float(akld(fake, real, hr)) <= 1.2 * float(akld(same, real, hr))
    assert float(spectrum_distance(fake, real, hr)) > 4 * float(spectrum_distance(same, real, hr))
    assert float(spectrum_distance(fake, real, hr)) > 2.0                  # dB
    # scale keeps the LR band only (here its low frequencies, where the box filter passes 9x the power)
    assert float(spectrum_distance(fake, real, hr, scale=4.0)) > 2.0
