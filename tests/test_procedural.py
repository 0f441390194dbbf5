"""The procedural (Real-ESRGAN second-order) degradation: defining properties of each piece."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from skimage import data as skdata

from degflow.baselines.filters import filter2d, jpeg_compress
from degflow.baselines.filters import jpeg_roundtrip as _jpeg_roundtrip
from degflow.baselines.procedural import (
    FIRST_ORDER,
    SECOND_ORDER,
    add_gaussian_noise,
    add_poisson_noise,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    sample_blur_kernel,
    sinc_kernel,
)
from degflow.baselines.procedural import realesrgan as degrade


def _photo(h=96, w=128) -> torch.Tensor:
    """A natural RGB crop in [-1, 1], [3, h, w]."""
    arr = skdata.astronaut()[100:100 + h, 150:150 + w]
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0


# ------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize("make", [
    lambda: gaussian_kernel(21, 2.0),
    lambda: gaussian_kernel(15, 0.7, 2.9, 0.6),
    lambda: generalized_gaussian_kernel(13, 1.5, 2.5, -1.0, beta=0.5),
    lambda: generalized_gaussian_kernel(21, 2.5, beta=4.0),
    lambda: plateau_kernel(9, 1.2, 0.4, 2.0, beta=1.0),
    lambda: plateau_kernel(21, 3.0, beta=2.0),
    lambda: sinc_kernel(7, math.pi / 3),
    lambda: sinc_kernel(21, math.pi / 5),
])
def test_every_kernel_family_sums_to_one(make):
    k = make()
    assert k.dtype == torch.float64
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_sampled_kernels_sum_to_one_and_are_padded_to_21():
    g = torch.Generator().manual_seed(0)
    for order in (FIRST_ORDER, SECOND_ORDER):
        for _ in range(60):
            k = sample_blur_kernel(order, g)
            assert k.shape == (21, 21)
            assert k.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("k", [
    gaussian_kernel(21, 2.3),
    generalized_gaussian_kernel(17, 1.7, beta=0.6),
    plateau_kernel(21, 2.0, beta=1.5),
    sinc_kernel(21, 1.3),
])
def test_isotropic_kernels_have_the_symmetries_of_the_square(k):
    for other in (k.T, k.flip(0), k.flip(1), torch.rot90(k, 1)):
        torch.testing.assert_close(other, k, rtol=0, atol=1e-15)


def test_anisotropic_kernel_is_not_isotropic_and_rotating_by_90_degrees_transposes_it():
    k = gaussian_kernel(21, 1.0, 3.0, 0.0)
    assert (k - k.T).abs().max() > 1e-3
    torch.testing.assert_close(gaussian_kernel(21, 1.0, 3.0, math.pi / 2), k.T, rtol=0, atol=1e-12)
    # theta and theta + pi describe the same ellipse
    torch.testing.assert_close(gaussian_kernel(21, 1.0, 3.0, 0.4), gaussian_kernel(21, 1.0, 3.0, 0.4 + math.pi),
                               rtol=0, atol=1e-12)


def test_axis_aligned_gaussian_is_the_product_of_scipy_normal_densities():
    ax = np.arange(-7, 8)
    ref = np.outer(stats.norm.pdf(ax, scale=2.5), stats.norm.pdf(ax, scale=1.2))  # rows: y (sigma_y)
    ref /= ref.sum()
    np.testing.assert_allclose(gaussian_kernel(15, 1.2, 2.5, 0.0).numpy(), ref, rtol=1e-12)


def test_rotated_gaussian_has_the_rotated_covariance():
    sx, sy, theta = 1.0, 2.0, 0.5
    k = gaussian_kernel(31, sx, sy, theta)           # wide enough that truncation is negligible
    ax = torch.arange(31, dtype=torch.float64) - 15
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    cov = torch.tensor([[(k * xx * xx).sum(), (k * xx * yy).sum()], [(k * xx * yy).sum(), (k * yy * yy).sum()]])
    r = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    expected = r @ torch.diag(torch.tensor([sx**2, sy**2], dtype=torch.float64)) @ r.T
    torch.testing.assert_close(cov, expected, rtol=2e-3, atol=2e-3)


def test_generalized_gaussian_with_beta_one_is_the_gaussian_and_plateau_is_flatter_in_the_middle():
    torch.testing.assert_close(generalized_gaussian_kernel(21, 1.5, 2.0, 0.3, beta=1.0),
                               gaussian_kernel(21, 1.5, 2.0, 0.3), rtol=0, atol=1e-15)
    g, p = generalized_gaussian_kernel(21, 2.0, beta=4.0), plateau_kernel(21, 2.0, beta=2.0)
    gauss = gaussian_kernel(21, 2.0)
    for k in (g, p):  # both are maximal at the centre and flatter there than the Gaussian
        assert k[10, 10] == k.max()
        assert k[10, 11] / k[10, 10] > gauss[10, 11] / gauss[10, 10]


def test_sinc_kernel_is_the_scaled_bessel_j1_low_pass():
    cutoff, size = 1.7, 13
    ax = np.arange(size) - size // 2
    r = np.hypot(*np.meshgrid(ax, ax))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    ref[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    ref /= ref.sum()
    # torch.special.bessel_j1 agrees with scipy to about 1e-7 (absolute)
    np.testing.assert_allclose(sinc_kernel(size, cutoff).numpy(), ref, rtol=0, atol=1e-7)


def test_filter2d_with_a_delta_kernel_is_the_identity_and_a_blur_keeps_the_mean_of_a_constant():
    x = torch.rand(2, 3, 20, 24)
    delta = torch.zeros(21, 21, dtype=torch.float64)
    delta[10, 10] = 1.0
    torch.testing.assert_close(filter2d(x, delta), x)
    const = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(filter2d(const, gaussian_kernel(21, 3.0)), const)


# ------------------------------------------------------------------------------ noise
@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_std_matches_sigma(gray):
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 3, 256, 256), 0.5)
    noise = (add_gaussian_noise(x, 12.0, gray, g) - x) * 255.0
    assert noise.std().item() == pytest.approx(12.0, rel=0.02)
    assert abs(noise.mean().item()) < 0.1
    if gray:  # one draw for the three channels
        torch.testing.assert_close(noise[:, 0], noise[:, 2])
    else:
        assert torch.corrcoef(torch.stack([noise[0, 0].flatten(), noise[0, 2].flatten()]))[0, 1].abs() < 0.02


def test_poisson_noise_variance_is_proportional_to_intensity():
    g = torch.Generator().manual_seed(0)
    x = torch.empty(1, 3, 256, 512)
    x[..., :256] = 0.2
    x[..., 256:] = 0.8
    x[..., 0, :256] = torch.arange(256) / 255.0   # 256 distinct 8-bit values -> L = 256 photon levels
    scale = 1.5
    noise = add_poisson_noise(x, scale, False, g, clip=False) - x
    v_dark, v_bright = noise[..., 1:, :256].var().item(), noise[..., 1:, 256:].var().item()
    assert v_bright / v_dark == pytest.approx(0.8 / 0.2, rel=0.05)
    assert v_bright == pytest.approx(scale**2 * 0.8 / 256, rel=0.05)
    assert abs(noise[..., 1:, 256:].mean().item()) < 1e-3


def test_gray_poisson_noise_is_the_same_in_every_channel():
    g = torch.Generator().manual_seed(1)
    x = (_photo()[None] + 1) / 2
    noise = add_poisson_noise(x, 1.0, True, g, clip=False) - x
    torch.testing.assert_close(noise[:, 0], noise[:, 1])
    assert noise.abs().max() > 0


# ------------------------------------------------------------------------------ JPEG
def test_jpeg_encoded_size_grows_and_error_shrinks_with_quality():
    arr = ((_photo().permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    sizes, errors = [], []
    for q in (10, 30, 50, 70, 90, 100):
        decoded, size = _jpeg_roundtrip(arr, q)
        sizes.append(size)
        errors.append(np.abs(decoded.astype(float) - arr).mean())
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert errors == sorted(errors, reverse=True)


def test_jpeg_compress_returns_8bit_images_of_the_same_shape():
    x = (_photo()[None] + 1) / 2
    y = jpeg_compress(x, 40)
    assert y.shape == x.shape
    torch.testing.assert_close(y * 255, (y * 255).round())
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(x, 0)


# ------------------------------------------------------------------------------ pipeline
@pytest.mark.parametrize("scale", [1.0, 1.1, 1.5, 2.0, 2.5, 3.3, 3.7, 4.0])
def test_output_size_is_exactly_round_h_over_s(scale):
    hr = _photo(97, 61)
    lr = degrade(hr, scale, seed=0)
    assert lr.shape == (3, round(97 / scale), round(61 / scale))
    assert degrade(hr, scale, seed=0, size="hr").shape == hr.shape


def test_output_is_8bit_and_in_range():
    lr = degrade(_photo()[None].repeat(2, 1, 1, 1), 2.5, seed=5)
    assert lr.min() >= -1 and lr.max() <= 1
    q = (lr + 1) / 2 * 255
    torch.testing.assert_close(q, q.round(), atol=1e-4, rtol=0)


def test_same_seed_same_output_different_seed_different_output():
    hr = _photo()
    a = degrade(hr, 3.0, seed=11)
    assert torch.equal(a, degrade(hr, 3.0, seed=11))
    assert torch.equal(a, degrade(hr, 3.0, generator=torch.Generator().manual_seed(11)))
    assert not torch.equal(a, degrade(hr, 3.0, seed=12))


def test_images_of_a_batch_get_their_own_draws():
    hr = _photo()[None].repeat(2, 1, 1, 1)
    lr = degrade(hr, 2.0, seed=3)
    assert not torch.equal(lr[0], lr[1])


def test_bad_arguments_are_refused():
    hr = _photo()
    with pytest.raises(ValueError, match="scale"):
        degrade(hr, 0.5)
    with pytest.raises(ValueError, match="size"):
        degrade(hr, 2.0, size="big")
    with pytest.raises(ValueError, match="not both"):
        degrade(hr, 2.0, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)
