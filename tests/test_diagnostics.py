"""Knot-gap diagnostics (degflow/diagnostics.py) against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from degflow.diagnostics import latent_error, merge_tiles, split_tiles, velocity_error_by_time
from degflow.solvers import SolverSpec, integrate
from degflow.spline import evaluate_path


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
