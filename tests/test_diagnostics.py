"""Study and kernel diagnostics against closed forms: the knot-gap study's helpers
(experiments/studies/knot_gap/gap.py), the least-squares linear degradation
(degflow/baselines/kernel.py), Immerkaer's noise level (degflow/metrics/noise.py) and the knot-ceiling
study's registration (experiments/studies/knot_ceiling/registration.py)."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.studies.knot_gap.gap import latent_error, merge_tiles, split_tiles, velocity_error_by_time
from degflow.core.solvers import SolverSpec, integrate
from degflow.core.spline import evaluate_path


def test_the_exact_path_derivative_has_zero_velocity_error_and_a_constant_offset_its_square():
    torch.manual_seed(0)
    knots = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)                  # [B,K,C,H,W]
    kt = torch.tensor([0.0, 1 / 3, 1.0], dtype=torch.float64)
    times = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    b = knots.shape[0]

    def exact(z, t):   # knows each sample's path: mu'(t) (the field the loss is minimised by)
        return evaluate_path("cubic", kt, knots, t).d1

    err, tgt = velocity_error_by_time(exact, knots, kt, times)
    assert err.shape == tgt.shape == (3, b) and float(err.abs().max()) < 1e-24
    err, tgt = velocity_error_by_time(lambda z, t: exact(z, t) + 0.5, knots, kt, times)
    assert err.flatten().tolist() == pytest.approx([0.25] * 3 * b)
    err, tgt = velocity_error_by_time(lambda z, t: torch.zeros_like(z), knots, kt, times)
    assert torch.allclose(err, tgt)                                          # v = 0: relative error 1


def test_a_field_with_a_known_solution_lands_on_its_knots_and_drift_measures_a_wrong_field():
    # dz/dt = -z: z(t) = z0 exp(-t); knots on the exact solution at t = 0, 1/3, 1
    torch.manual_seed(1)
    z0 = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    kt = [0.0, 1 / 3, 1.0]
    solve = SolverSpec.create(method="rk4", steps=64, output_mode="grid")
    states, _ = integrate(lambda z, t: -z, z0, kt[1:], solve)
    for k, t in enumerate(kt[1:]):
        mse, rel = latent_error(states[k], z0 * math.exp(-t), z0)
        assert float(mse.max()) < 1e-14 and float(rel.max()) < 1e-10
    # a field that does not move at all misses the whole way: relative error exactly 1
    mse, rel = latent_error(z0, z0 * math.exp(-1.0), z0)
    assert rel.tolist() == pytest.approx([1.0, 1.0])
    assert mse.tolist() == pytest.approx(((z0 - z0 * math.exp(-1)) ** 2).flatten(1).mean(1).tolist())


def test_tiles_split_row_major_and_merge_back_exactly():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    tiles = split_tiles(x, 4)
    assert tiles.shape == (2 * 2 * 3, 3, 4, 4)
    assert torch.equal(tiles[1], x[0, :, 0:4, 4:8]) and torch.equal(tiles[3], x[0, :, 4:8, 0:4])
    assert torch.equal(tiles[6], x[1, :, 0:4, 0:4])
    assert torch.equal(merge_tiles(tiles, 2, 8, 12), x)
    with pytest.raises(ValueError, match="multiples of the tile size 5"):
        split_tiles(x, 5)


# --- how much of a real LR image is a linear function of its HR image -------------------------------------


def _conv_reference(hr, weights, scale, support):
    """The same degradation as a strided convolution (an independent implementation)."""
    k, pad = support, (support - scale) // 2
    w = weights[:-1].T.reshape(3, 3, k, k)                                   # [out, in, k, k]
    x = torch.nn.functional.pad(hr.double(), (pad,) * 4, mode="replicate")
    return torch.nn.functional.conv2d(x, w.double(), weights[-1].double(), stride=scale)


def test_a_linear_degradation_is_a_strided_convolution_and_is_recovered_exactly_by_least_squares():
    from degflow.baselines.kernel import (apply_linear_degradation, linear_degradation_normal_equations,
                                     solve_linear_degradation)
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(2, 3, 64, 72, generator=g, dtype=torch.float64) * 2 - 1
    scale, support = 4, 8
    true_w = torch.randn(3 * support**2 + 1, 3, generator=g, dtype=torch.float64) * 0.05
    lr = apply_linear_degradation(hr, true_w, scale, support)
    assert lr.shape == (2, 3, 16, 18)
    assert torch.allclose(lr, _conv_reference(hr, true_w, scale, support), atol=1e-12)
    xtx, xty = linear_degradation_normal_equations(hr, lr, scale, support)
    fitted = solve_linear_degradation(xtx, xty, ridge=0.0)
    assert torch.allclose(fitted, true_w, atol=1e-8)
    # normal equations add up: two halves of the batch give the fit of the whole
    a = linear_degradation_normal_equations(hr[:1], lr[:1], scale, support)
    b = linear_degradation_normal_equations(hr[1:], lr[1:], scale, support)
    assert torch.allclose(solve_linear_degradation(a[0] + b[0], a[1] + b[1], ridge=0.0), fitted, atol=1e-8)


def test_linear_degradation_rejects_sizes_it_cannot_tile():
    from degflow.baselines.kernel import linear_degradation_design, linear_degradation_normal_equations
    with pytest.raises(ValueError, match="multiple of the scale 4"):
        linear_degradation_design(torch.zeros(1, 3, 30, 32), 4, 8)
    with pytest.raises(ValueError, match="differ from it by an even number"):
        linear_degradation_design(torch.zeros(1, 3, 32, 32), 4, 7)
    with pytest.raises(ValueError, match="expected"):
        linear_degradation_normal_equations(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 16, 16), 4, 8)


def test_immerkaer_noise_sigma_matches_its_formula_and_finds_the_noise_of_a_smooth_image():
    import numpy as np
    from scipy.signal import convolve2d

    from degflow.metrics.noise import noise_sigma
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 1, 40, 50, generator=g, dtype=torch.float64)
    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    ref = [math.sqrt(math.pi / 2) * np.abs(convolve2d(x[0].numpy(), m, mode="valid")).sum() / (6 * 38 * 48)
           for x in img]
    assert noise_sigma(img).tolist() == pytest.approx(ref, rel=1e-12)
    yy, xx = torch.meshgrid(*(torch.arange(256, dtype=torch.float64),) * 2, indexing="ij")
    ramp = (0.3 + 0.001 * yy + 0.002 * xx)[None, None]                         # a plane: no noise
    assert float(noise_sigma(ramp)) < 1e-12
    noisy = ramp + 0.02 * torch.randn(ramp.shape, generator=g, dtype=torch.float64)
    assert float(noise_sigma(noisy)) == pytest.approx(0.02, rel=0.03)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        noise_sigma(torch.zeros(1, 3, 8, 8))


def _smooth_image(seed: int = 0, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]


def test_an_integer_shift_moves_pixels_exactly_and_a_subpixel_shift_moves_a_wave():
    from experiments.studies.knot_ceiling.registration import shift_image
    x = _smooth_image()
    moved = shift_image(x, torch.tensor([[2.0, -1.0], [0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(moved[1], x, atol=1e-12)
    # out(y, x) = in(y + dy, x + dx) with dx = 2, dy = -1, away from the replicated edges
    assert torch.allclose(moved[0][:, 1:, :-2], x[:, :-1, 2:], atol=1e-12)
    # Keys cubic convolution (a = -0.5) reproduces a quadratic exactly at any sub-pixel shift
    yy, xx = torch.meshgrid(*(torch.arange(40, dtype=torch.float64),) * 2, indexing="ij")
    quad = lambda dx, dy: (0.01 * (xx + dx) ** 2 - 0.02 * (xx + dx) * (yy + dy) + 0.3 * (yy + dy))[None]  # noqa: E731
    shifts = torch.tensor([[0.35, -0.6], [-1.45, 1.2]], dtype=torch.float64)
    moved = shift_image(quad(0, 0), shifts)
    for m, (dx, dy) in zip(moved, shifts.tolist()):
        assert (m - quad(dx, dy))[:, 4:-4, 4:-4].abs().max() < 1e-10


def test_tile_registration_recovers_known_local_shifts_and_leaves_aligned_tiles_alone():
    """A 'real' image whose top-left and top-right 32 px tiles are the prediction moved by known
    sub-pixel shifts (on the 0.05 px grid), the rest untouched: every shift is found and the
    registered prediction equals the real image."""
    from experiments.studies.knot_ceiling.registration import register_tiles, shift_image
    pred = _smooth_image(1)
    known = {(0, 0): (0.3, -0.45), (0, 1): (-1.2, 0.65)}
    real = pred.clone()
    for (r, q), (dx, dy) in known.items():
        moved = shift_image(pred, torch.tensor([[dx, dy]], dtype=torch.float64))[0]
        real[:, r * 32:(r + 1) * 32, q * 32:(q + 1) * 32] = moved[:, r * 32:(r + 1) * 32, q * 32:(q + 1) * 32]
    registered, shifts = register_tiles(pred, real, tile=32, max_shift=2.0)
    assert shifts.shape == (2, 2, 2)
    for (r, q), (dx, dy) in known.items():
        assert shifts[r, q].tolist() == pytest.approx([dx, dy], abs=1e-9)
    assert shifts[1].abs().max() < 1e-12
    assert (registered - real).abs().max() < 1e-9
    same, zero = register_tiles(pred, pred, tile=24)                           # ragged last row / column
    assert zero.shape == (3, 3, 2) and zero.abs().max() < 1e-12 and torch.allclose(same, pred, atol=1e-12)
    with pytest.raises(ValueError, match=r"two \[C, H, W\] images of one shape"):
        register_tiles(pred, pred[:, :32])
