"""Tests for degflow.core.solvers: ODE solving over torchdiffeq against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate as scipy_integrate
from torchdiffeq import odeint

from degflow.core.solvers import (
    FIXED_STEP_METHODS,
    FIXED_STEP_STAGES,
    SOLVER_METHODS,
    CountingField,
    SolverSpec,
    bounded_first_step,
    integrate,
    time_grid,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


def _exp_field(a: float):
    return lambda z, t: a * z


def _fixed(method: str, steps: int) -> SolverSpec:
    return SolverSpec.create(method, steps=steps)


# ----------------------------------------------------------------------- closed forms
@pytest.mark.parametrize(("method", "steps", "tol"), [("euler", 400, 6e-3), ("midpoint", 64, 3e-4), ("rk4", 16, 5e-6)])
def test_exponential_growth_matches_closed_form(method: str, steps: int, tol: float) -> None:
    a = 1.3
    z0 = torch.randn(3, 2, 4, 4, dtype=F64)
    times = [0.5, 1.0, 1.4]  # beyond 1: extrapolation is allowed
    out, _ = integrate(_exp_field(a), z0, times, _fixed(method, steps))
    assert out.shape == (3, *z0.shape)
    for i, t in enumerate(times):
        # relative error of the method at this step count (z0 entries are O(1))
        torch.testing.assert_close(out[i], z0 * math.exp(a * t), rtol=tol, atol=1e-12)


def test_dopri5_within_tolerance_on_exponential_and_cosine() -> None:
    spec = SolverSpec.create("dopri5")
    assert spec.rtol == 1e-5 and spec.atol == 1e-5 and spec.steps is None
    z0 = torch.randn(2, 3, dtype=F64)
    out, nfe = integrate(_exp_field(-0.8), z0, [0.3, 1.0], spec)
    torch.testing.assert_close(out[1], z0 * math.exp(-0.8), rtol=1e-4, atol=1e-4)
    assert nfe > 0
    out, _ = integrate(lambda z, t: torch.cos(3 * t).view(-1, 1).expand_as(z), z0, [0.7, 2.0], spec)
    for i, t in enumerate((0.7, 2.0)):
        torch.testing.assert_close(out[i], z0 + math.sin(3 * t) / 3, rtol=1e-4, atol=1e-4)


def test_time_dependent_cosine_field_fixed_step() -> None:
    z0 = torch.randn(4, 2, dtype=F64)

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (z.shape[0],)  # scalar t broadcast to [B]
        return torch.cos(t).view(-1, 1).expand_as(z)

    times = [0.25, 1.5, 0.9]  # unsorted
    out, _ = integrate(v, z0, times, _fixed("rk4", 32))
    for i, t in enumerate(times):
        torch.testing.assert_close(out[i], z0 + math.sin(t), rtol=0, atol=1e-8)


def test_cubic_in_t_field_is_integrated_exactly_by_rk4() -> None:
    # v = 4t^3 - 3t^2 + 2t + 1 -> z = z0 + t^4 - t^3 + t^2 + t; RK4 is exact for cubics in t
    z0 = torch.randn(2, 5, dtype=F64)

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (4 * t**3 - 3 * t**2 + 2 * t + 1).view(-1, 1).expand_as(z)

    times = [0.37, 1.0, 1.3]
    out, _ = integrate(v, z0, times, _fixed("rk4", 1))
    for i, t in enumerate(times):
        torch.testing.assert_close(out[i], z0 + (t**4 - t**3 + t**2 + t), rtol=0, atol=1e-12)
    # midpoint is exact for fields linear in t, euler for constant fields
    out, _ = integrate(lambda z, t: (2 * t + 1).view(-1, 1).expand_as(z), z0, [1.0], _fixed("midpoint", 3))
    torch.testing.assert_close(out[0], z0 + 2.0, rtol=0, atol=1e-12)
    out, _ = integrate(lambda z, t: torch.full_like(z, 0.5), z0, [0.8], _fixed("euler", 3))
    torch.testing.assert_close(out[0], z0 + 0.4, rtol=0, atol=1e-12)
    # and rk4 is NOT exact for a quartic (sanity check that the test can fail)
    out, _ = integrate(lambda z, t: (5 * t**4).view(-1, 1).expand_as(z), z0, [1.0], _fixed("rk4", 1))
    assert (out[0] - (z0 + 1.0)).abs().max() > 1e-3


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_error_shrinks_at_expected_order(method: str, order: int) -> None:
    z0 = torch.ones(1, 1, dtype=F64)
    exact = math.exp(1.0)
    errs = []
    for steps in (8, 16, 32):
        out, _ = integrate(_exp_field(1.0), z0, [1.0], _fixed(method, steps))
        errs.append(abs(out[0].item() - exact))
    for coarse, fine in zip(errs[:-1], errs[1:]):
        ratio = coarse / fine
        assert 2**order * 0.85 < ratio < 2**order * 1.15, (method, errs)


# -------------------------------------------------------------------------- grids
def test_time_grid_snaps_nearest_nodes_onto_targets() -> None:
    grid = time_grid([0.8123, 0.37], steps=4)
    assert grid.dtype == F64
    assert grid[0].item() == 0.0 and grid[-1].item() == 0.8123
    assert (grid[1:] > grid[:-1]).all()
    # 0.37 replaces its nearest uniform node 2 * 0.8123 / 4 = 0.406; the others stay
    h = 0.8123 / 4
    assert grid.tolist() == pytest.approx([0.0, h, 0.37, 3 * h, 0.8123], abs=1e-15)
    # a target within 1e-9 of a uniform point replaces it (no tiny interval)
    g2 = time_grid([1.0, 0.5 + 1e-12], steps=2)
    assert g2.tolist() == [0.0, 0.5 + 1e-12, 1.0]
    # repeated targets, t0
    assert time_grid([0.5, 0.5], steps=1).tolist() == [0.0, 0.5]
    assert time_grid([0.0], steps=3).tolist() == [0.0]
    assert time_grid([0.6], steps=2, t0=0.2).tolist() == pytest.approx([0.2, 0.4, 0.6])


@pytest.mark.parametrize("steps", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("n_targets", [1, 2, 7, 30])
def test_time_grid_cost_and_step_bounds(steps: int, n_targets: int) -> None:
    # targets like synthesis scales: evenly spread with an uneven start, plus random ones
    gen = torch.Generator().manual_seed(steps * 100 + n_targets)
    for targets in (torch.linspace(0.033, 1.0, n_targets, dtype=F64),
                    torch.rand(n_targets, generator=gen, dtype=F64) * 1.3 + 1e-3):
        grid = time_grid(targets, steps)
        t_end = float(targets.max())
        h = t_end / steps
        intervals = len(grid) - 1
        assert all(t in grid.tolist() for t in targets.tolist())
        assert (grid[1:] > grid[:-1]).all() and grid[-1].item() == t_end
        assert max(steps, len(set(targets.tolist()))) <= intervals <= steps + n_targets
        assert float(torch.diff(grid).max()) < 2 * h + 1e-12
    # targets at least one step apart cost no extra interval
    spread = torch.linspace(0.05, 1.0, n_targets, dtype=F64)
    if n_targets == 1 or (1.0 - 0.05) / (n_targets - 1) >= 1.0 / steps:
        assert len(time_grid(spread, steps)) - 1 == steps


def test_requested_times_lie_on_the_solver_grid() -> None:
    z0 = torch.randn(2, 3, dtype=F64)
    field = _exp_field(1.7)
    targets = [0.37, 0.8123]
    out, _ = integrate(field, z0, targets, _fixed("rk4", 4))
    grid = time_grid(targets, 4)
    for i, t in enumerate(targets):
        # a separate solve on the same steps, whose grid ends exactly at t
        sub = grid[grid <= t]
        assert sub[-1].item() == t
        separate = odeint(lambda tt, z: field(z, tt), z0, sub, method="rk4")[-1]
        torch.testing.assert_close(out[i], separate, rtol=0, atol=0)
    # plain torchdiffeq with a uniform step grid would linearly interpolate at 0.37
    interp = odeint(lambda tt, z: field(z, tt), z0, torch.tensor([0.0, 0.37, 0.8123], dtype=F64),
                    method="rk4", options={"step_size": 0.8123 / 4})
    assert (interp[1] - out[0]).abs().max() > 1e-3
    # the on-grid answer is the product of RK4 step factors 1 + x + x^2/2 + x^3/6 + x^4/24
    x = 1.7 * torch.diff(grid[grid <= 0.37])
    expected = z0 * torch.prod(1 + x + x**2 / 2 + x**3 / 6 + x**4 / 24)
    torch.testing.assert_close(out[0], expected, rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------- NFE
@pytest.mark.parametrize("method", FIXED_STEP_METHODS)
@pytest.mark.parametrize(("targets", "steps", "intervals"), [([0.5, 1.0], 4, 4), ([0.37, 0.8123], 4, 4), ([1.2, 0.1, 0.62], 3, 3), ([0.1, 0.11, 0.12, 1.0], 4, 6)])
def test_nfe_equals_intervals_times_stages(method: str, targets: list[float], steps: int, intervals: int) -> None:
    assert len(time_grid(targets, steps)) - 1 == intervals
    z0 = torch.randn(2, 2)
    calls = []

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t[0].item())
        return -z

    _, nfe = integrate(v, z0, targets, _fixed(method, steps))
    assert nfe == intervals * FIXED_STEP_STAGES[method] == len(calls)


@pytest.mark.parametrize("method", FIXED_STEP_METHODS)
@pytest.mark.parametrize("n_targets", [1, 5, 30])
def test_cubic_output_costs_one_extra_evaluation(method: str, n_targets: int) -> None:
    calls = []

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t[0].item())
        return -z * (1 + t.view(-1, 1))

    targets = torch.linspace(0.04, 1.0, n_targets).tolist()
    spec = SolverSpec.create(method, steps=8, output_mode="cubic")
    _, nfe = integrate(v, torch.randn(2, 2), targets, spec)
    assert nfe == 8 * FIXED_STEP_STAGES[method] + 1 == len(calls)


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_cubic_output_matches_closed_form_between_nodes(method: str, order: int) -> None:
    # dz/dt = -2 t z: z(t) = z0 exp(-t^2); outputs at times that are not nodes
    z0 = torch.randn(3, 2, dtype=F64)
    targets = [0.13, 0.5, 0.777, 1.0]
    exact = torch.stack([z0 * math.exp(-t * t) for t in targets])
    errs = []
    for steps in (16, 32, 64):
        out, _ = integrate(lambda z, t: -2 * t.view(-1, 1) * z, z0, targets,
                           SolverSpec.create(method, steps=steps, output_mode="cubic"))
        errs.append(float((out - exact).abs().max()))
    # the error shrinks at (at least) the method's order: Hermite output is third order
    expected = 2 ** min(order, 3)
    for coarse, fine in zip(errs[:-1], errs[1:]):
        assert coarse / fine > 0.8 * expected, errs
    assert errs[-1] < {"euler": 2e-2, "midpoint": 2e-4, "rk4": 1e-7}[method]


def test_dopri5_ignores_output_mode() -> None:
    z0 = torch.randn(2, 3, dtype=F64)
    a, _ = integrate(_exp_field(1.1), z0, [0.3, 1.0], SolverSpec.create("dopri5"))
    b, _ = integrate(_exp_field(1.1), z0, [0.3, 1.0], SolverSpec.create("dopri5", output_mode="cubic"))
    assert torch.equal(a, b)


def test_cubic_output_at_nodes_equals_plain_steps() -> None:
    field = _exp_field(1.3)
    z0 = torch.randn(2, 3, dtype=F64)
    out, _ = integrate(field, z0, [0.25, 0.5, 1.0], SolverSpec.create("rk4", steps=4, output_mode="cubic"))
    ref = odeint(lambda tt, z: field(z, tt), z0, torch.linspace(0, 1, 5, dtype=F64), method="rk4")
    torch.testing.assert_close(out, ref[[1, 2, 4]], rtol=1e-14, atol=1e-14)


def test_counting_field_reuses_only_the_same_state_and_time() -> None:
    f = CountingField(lambda z, t: z * t.view(-1, 1))
    z = torch.ones(3, 2)
    a = f(torch.tensor(0.5), z)
    assert f(torch.tensor(0.5), z) is a and f.nfe == 1
    f(torch.tensor(0.5), z.clone())
    f(torch.tensor(0.75), z)
    assert f.nfe == 3


def test_dopri5_nfe_is_what_the_field_counted() -> None:
    calls = []

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.sin(z) + t.view(-1, 1)

    _, nfe = integrate(v, torch.randn(3, 2), [0.5, 1.0], SolverSpec.create("dopri5"))
    assert nfe == len(calls) > 6


def test_counting_field_counts_and_resets() -> None:
    f = CountingField(lambda z, t: z * t.view(-1, 1))
    z = torch.ones(3, 2)
    out = f(torch.tensor(0.5), z)
    f(torch.tensor(0.25), z)
    assert f.nfe == 2 and torch.equal(out, torch.full((3, 2), 0.5))
    f.reset()
    assert f.nfe == 0
    with pytest.raises(ValueError, match="shaped like z"):
        CountingField(lambda z, t: z[0])(torch.tensor(0.0), z)


# ------------------------------------------------------------- one solve, ordering
def test_one_solve_gives_all_requested_times_in_requested_order() -> None:
    z0 = torch.randn(2, 3, dtype=F64)
    seen: list[float] = []

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t[0].item())
        return 0.9 * z

    times = [1.0, 0.0, 0.5, 0.5, 0.25, 1.2]
    out, nfe = integrate(v, z0, times, _fixed("rk4", 8))
    assert out.shape == (6, 2, 3)
    assert torch.equal(out[1], z0)  # time 0 is z0 itself
    assert torch.equal(out[2], out[3])
    for i, t in enumerate(times):
        torch.testing.assert_close(out[i], z0 * math.exp(0.9 * t), rtol=2e-5, atol=1e-12)
    # a single forward sweep: evaluation times never go back, and the solve starts at 0 once
    assert all(b >= a for a, b in zip(seen[:-1], seen[1:]))
    assert seen.count(0.0) == 1 and nfe == len(seen)
    # tensor input for times works the same
    out_t, _ = integrate(v, z0, torch.tensor(times), _fixed("rk4", 8))
    torch.testing.assert_close(out_t, out)


def test_all_zero_times_return_z0_without_evaluations() -> None:
    z0 = torch.randn(2, 3)
    out, nfe = integrate(lambda z, t: z, z0, [0.0, 0.0], SolverSpec.create("dopri5"))
    assert nfe == 0 and out.shape == (2, 2, 3) and torch.equal(out[0], z0) and torch.equal(out[1], z0)


@pytest.mark.parametrize("method", SOLVER_METHODS)
def test_dtype_device_and_grad_mode_follow_the_caller(method: str) -> None:
    spec = SolverSpec.create(method, steps=8 if method in FIXED_STEP_METHODS else None)
    dtypes = []

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtypes.append(t.dtype)
        return -0.5 * z

    z0 = torch.randn(2, 3, dtype=torch.float32, requires_grad=True)
    out, _ = integrate(v, z0, [1.0], spec)
    assert out.dtype == torch.float32 and out.device == z0.device
    assert set(dtypes) == {torch.float32}
    out.sum().backward()
    # linear ODE: out = R z0 elementwise, so d(sum out)/d z0 = R, close to exp(-0.5)
    factor = (out[0] / z0).detach()
    torch.testing.assert_close(z0.grad, factor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z0.grad, torch.full_like(z0, math.exp(-0.5)), rtol=5e-2, atol=0)
    with torch.no_grad():
        out, _ = integrate(v, z0, [1.0], spec)
    assert not out.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_integrate_on_cuda() -> None:
    z0 = torch.randn(2, 3, device="cuda")
    out, _ = integrate(_exp_field(1.0), z0, [0.5, 1.0], _fixed("rk4", 8))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out[1], z0 * math.e, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="rk45"), r"solver\.method.*'dopri5', 'euler', 'midpoint', 'rk4'"),
        (dict(method="euler"), r"solver\.steps.*None"),
        (dict(method="rk4", steps=0), r"solver\.steps.*integer >= 1"),
        (dict(method="rk4", steps=2.5), r"solver\.steps.*integer >= 1"),
        (dict(method="midpoint", steps=4, rtol=1e-5), r"solver\.rtol.*no tolerance"),
        (dict(method="euler", steps=4, atol=1e-5), r"solver\.atol.*no tolerance"),
        (dict(method="dopri5", steps=10, rtol=1e-5, atol=1e-5), r"solver\.steps.*adaptive"),
        (dict(method="dopri5"), r"solver\.rtol.*None"),
        (dict(method="dopri5", rtol=1e-5), r"solver\.atol.*None"),
        (dict(method="dopri5", rtol=-1.0, atol=1e-5), r"solver\.rtol.*> 0"),
        (dict(method="rk4", steps=4, output_mode="linear"), r"solver\.output_mode.*'grid', 'cubic'"),
    ],
)
def test_solver_spec_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SolverSpec(**kwargs)


def test_solver_spec_create_defaults_only_for_dopri5() -> None:
    assert SolverSpec.create("dopri5", rtol=1e-6, atol=1e-7) == SolverSpec("dopri5", None, 1e-6, 1e-7)
    assert SolverSpec.create("rk4", steps=10) == SolverSpec("rk4", steps=10)
    with pytest.raises(ValueError, match=r"solver\.steps"):
        SolverSpec.create("dopri5", steps=10)
    with pytest.raises(ValueError, match=r"solver\.atol"):
        SolverSpec.create("dopri5", rtol=1e-4)


def test_integrate_rejects_bad_times() -> None:
    z0 = torch.zeros(1, 2)
    spec = _fixed("euler", 2)
    with pytest.raises(ValueError, match=">= 0"):
        integrate(lambda z, t: z, z0, [0.5, -0.1], spec)
    with pytest.raises(ValueError, match="at least one time"):
        integrate(lambda z, t: z, z0, [], spec)
    with pytest.raises(ValueError, match="finite"):
        integrate(lambda z, t: z, z0, [float("nan")], spec)
    with pytest.raises(ValueError, match=r"solver\.steps"):
        time_grid([1.0], steps=0)
    with pytest.raises(ValueError, match=">= t0"):
        time_grid([0.1], steps=2, t0=0.5)


@pytest.mark.parametrize("field_kind", ["toy", "slow"])
def test_dopri5_never_evaluates_the_field_outside_zero_to_t_max(field_kind: str) -> None:
    """torchdiffeq's dopri5 alone probes past the last time (first-step heuristic, last step):
    ~1.56 for the toy field, ~52 for the slow one. Bounded: every evaluation in [0, t_max]."""
    seen: list[float] = []

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.extend(t.tolist())
        if field_kind == "toy":
            return torch.sin(z) + t.view(-1, 1)
        return 1e-3 * torch.sin(z)

    z0 = torch.full((2, 3), 5.0)
    out, nfe = integrate(v, z0, [0.5, 1.0], SolverSpec.create("dopri5"))
    assert min(seen) >= 0.0 and max(seen) <= 1.0
    assert nfe == len(seen) // 2  # every evaluation counted (B = 2 times per call)
    ref = scipy_integrate.solve_ivp(
        lambda t, y: (np.sin(y) + t) if field_kind == "toy" else 1e-3 * np.sin(y),
        (0.0, 1.0), np.full(6, 5.0), rtol=1e-9, atol=1e-9).y[:, -1]
    np.testing.assert_allclose(out[1].reshape(-1).numpy(), ref, atol=1e-3)


def test_bounded_first_step_caps_the_probe_at_t_end() -> None:
    probes: list[float] = []

    def f(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        probes.append(float(t))
        return 1e-3 * torch.ones_like(z)

    z0 = torch.full((4,), 5.0, dtype=F64)
    h = bounded_first_step(f, torch.tensor(0.0, dtype=F64), z0, f(torch.tensor(0.0), z0),
                           1e-5, 1e-5, 4, 0.25)
    assert 0 < h <= 0.25 and max(probes) <= 0.25


@pytest.mark.slow
def test_dopri5_integrates_the_velocity_network_which_refuses_t_above_1() -> None:
    """The network raises for t outside [0, 1]; an unbounded dopri5 asked it about t > 1."""
    from degflow.models.unet import VelocityUNet

    net = VelocityUNet(nf=16, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0, image_size=8).eval()
    for m in net.modules():  # non-zero output (the last conv starts at zero)
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    z0 = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out, nfe = integrate(net, z0, [0.5, 1.0], SolverSpec.create("dopri5"))
    assert out.shape == (2, 2, 4, 8, 8) and bool(torch.isfinite(out).all()) and nfe > 6
