"""Tests for degflow.core.spline: natural cubic spline and linear paths through latent knots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from degflow.core.spline import (
    PATH_KINDS,
    PathPoint,
    cubic_spline,
    evaluate_path,
    extrapolation_time,
    linear_path,
    natural_cubic_moments,
)

scipy_interpolate = pytest.importorskip("scipy.interpolate")

KNOT_TIMES = {
    2: [0.0, 1.0],
    3: [0.0, 1.0 / 3.0, 1.0],
    4: [0.0, 0.4, 0.727, 1.0],  # uneven, like an optical RealSR map
    5: [0.0, 0.15, 0.4, 0.727, 1.0],
}
LATENT = (2, 3, 4)  # C, H, W
B = 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


def _eval_times(times: list[float]) -> np.ndarray:
    """Interior points, every knot exactly, and a little extrapolation on both sides."""
    grid = np.linspace(times[0], times[-1], 23)
    return np.concatenate([grid, np.asarray(times), [times[0] - 0.05, times[-1] + 0.1]])


def _reference(times: list[float], knots: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    """scipy natural spline values and derivatives 0..3, shape [4, len(t), B, ...]; outside
    the knots, degflow's extrapolation rule (linear with scipy's slope at the end knot)."""
    out = np.empty((4, len(t)) + knots.shape[:1] + knots.shape[2:])
    te = np.clip(t, times[0], times[-1])
    step = (t - te).reshape(-1, *([1] * (knots.ndim - 2)))
    inside = (t == te).reshape(step.shape)
    for b in range(knots.shape[0]):
        cs = scipy_interpolate.CubicSpline(times, knots[b], axis=0, bc_type="natural")
        out[0, :, b] = cs(te) + step * cs(te, 1)
        out[1, :, b] = cs(te, 1)
        for nu in (2, 3):
            out[nu, :, b] = cs(te, nu) * inside
    return out


def _ours(times: list[float], knots: torch.Tensor, t: np.ndarray) -> np.ndarray:
    """All evaluation times in one batched call: sample (i, b) is knots[b] at t[i]."""
    n, b = len(t), knots.shape[0]
    kt = torch.tensor(times, dtype=knots.dtype)
    rep = knots.unsqueeze(0).expand(n, *knots.shape).reshape(n * b, *knots.shape[1:])
    tt = torch.tensor(t, dtype=knots.dtype).repeat_interleave(b)
    p = cubic_spline(kt, rep, tt)
    return np.stack([x.reshape(n, b, *knots.shape[2:]).double().numpy() for x in (p.value, p.d1, p.d2, p.d3)])


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_cubic_spline_matches_scipy_natural_cubic_spline(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    times = KNOT_TIMES[k]
    knots64 = torch.randn(B, k, *LATENT, generator=gen, dtype=torch.float64)
    t = _eval_times(times)
    ref = _reference(times, knots64.numpy(), t)

    # float64: essentially exact
    ours64 = _ours(times, knots64, t)
    for nu in range(4):
        scale = max(1.0, np.abs(ref[nu]).max())
        np.testing.assert_allclose(ours64[nu], ref[nu], rtol=0, atol=1e-10 * scale, err_msg=f"d{nu}")

    # float32: computed in float32, to float32 precision relative to each quantity's scale
    ours32 = _ours(times, knots64.float(), t)
    for nu in range(4):
        scale = max(1.0, np.abs(ref[nu]).max())
        np.testing.assert_allclose(ours32[nu], ref[nu], rtol=0, atol=1e-5 * scale, err_msg=f"d{nu}")


@pytest.mark.parametrize("k", [3, 5])
def test_moments_are_scipy_second_derivatives_at_knots(k: int) -> None:
    times = KNOT_TIMES[k]
    knots = torch.randn(B, k, 5, dtype=torch.float64)
    m = natural_cubic_moments(torch.tensor(times, dtype=torch.float64), knots)
    assert m.shape == knots.shape
    for b in range(B):
        cs = scipy_interpolate.CubicSpline(times, knots[b].numpy(), axis=0, bc_type="natural")
        np.testing.assert_allclose(m[b].numpy(), cs(np.asarray(times), 2), atol=1e-10)


def test_natural_boundary_second_derivative_zero_at_both_ends() -> None:
    times = torch.tensor(KNOT_TIMES[4], dtype=torch.float64)
    knots = torch.randn(B, 4, *LATENT, dtype=torch.float64)
    m = natural_cubic_moments(times, knots)
    assert torch.equal(m[:, 0], torch.zeros_like(m[:, 0]))
    assert torch.equal(m[:, -1], torch.zeros_like(m[:, -1]))
    for tv in (0.0, 1.0):
        p = cubic_spline(times, knots, torch.full((B,), tv, dtype=torch.float64))
        assert p.d2.abs().max() < 1e-12
    # interior moments are generically non-zero: the system was really solved
    assert m[:, 1:-1].abs().min() > 0


def test_spline_passes_through_knots_and_is_c1_c2_continuous() -> None:
    times = KNOT_TIMES[5]
    kt = torch.tensor(times, dtype=torch.float64)
    knots = torch.randn(B, 5, *LATENT, dtype=torch.float64)
    for i, ti in enumerate(times):
        p = cubic_spline(kt, knots, torch.full((B,), ti, dtype=torch.float64))
        torch.testing.assert_close(p.value, knots[:, i], rtol=0, atol=1e-12)
    eps = 1e-7
    jumps3 = []
    for ti in times[1:-1]:
        left = cubic_spline(kt, knots, torch.full((B,), ti - eps, dtype=torch.float64))
        right = cubic_spline(kt, knots, torch.full((B,), ti + eps, dtype=torch.float64))
        assert (left.segment + 1 == right.segment).all()  # really two different cubics
        # a continuous quantity moves at most 2 eps * |its derivative| across the knot;
        # a jump would be O(1)
        for name, nxt in (("value", "d1"), ("d1", "d2"), ("d2", "d3")):
            diff = (getattr(left, name) - getattr(right, name)).abs()
            rate = torch.maximum(getattr(left, nxt).abs(), getattr(right, nxt).abs())
            assert (diff <= 2 * eps * rate * 1.01 + 1e-9).all(), (name, ti, float(diff.max()))
        jumps3.append(float((left.d3 - right.d3).abs().max()))
    # third derivative is piecewise constant and jumps at interior knots (it is a spline)
    assert min(jumps3) > 1e-3


def test_segment_convention_and_right_time() -> None:
    times = torch.tensor([0.0, 0.4, 0.727, 1.0], dtype=torch.float64)
    knots = torch.randn(6, 4, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.4, 0.727, 1.0, 1.05], dtype=torch.float64)
    for fn in (cubic_spline, linear_path):
        p = fn(times, knots, t)
        assert p.segment.dtype == torch.long
        assert p.segment.tolist() == [0, 0, 1, 2, 2, 2]
        torch.testing.assert_close(p.right_time, times[[1, 1, 2, 3, 3, 3]])
    below = cubic_spline(times, knots, torch.full((6,), -0.1, dtype=torch.float64))
    assert below.segment.tolist() == [0] * 6


def test_two_knot_cubic_is_the_straight_line() -> None:
    knots = torch.randn(4, 2, 3, dtype=torch.float64)
    times = torch.tensor([0.0, 1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.9, 1.0], dtype=torch.float64)
    c, l = cubic_spline(times, knots, t), linear_path(times, knots, t)
    torch.testing.assert_close(c.value, l.value)
    torch.testing.assert_close(c.d1, l.d1)
    assert c.d2.abs().max() == 0 and c.d3.abs().max() == 0


def test_gradients_flow_to_knots_and_knot_times_gradcheck() -> None:
    torch.manual_seed(0)
    knots = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    times = torch.tensor([0.0, 0.35, 0.7, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.2, 0.8], dtype=torch.float64)

    def fn(kt: torch.Tensor, kn: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = cubic_spline(kt, kn, t)
        return p.value, p.d1, p.d2, p.d3

    assert torch.autograd.gradcheck(fn, (times, knots))
    # per-sample knot times [B, K]
    times_b = torch.tensor([[0.0, 0.3, 0.6, 1.0], [0.0, 0.4, 0.75, 1.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (times_b, knots))
    assert torch.autograd.gradcheck(lambda kt, kn: natural_cubic_moments(kt, kn), (times, knots))
    # the interior knot times really receive a gradient
    loss = sum(x.square().sum() for x in fn(times, knots))
    loss.backward()
    assert times.grad is not None and times.grad[1:3].abs().min() > 0
    assert knots.grad is not None and knots.grad.abs().sum() > 0


def test_per_sample_knot_times_match_separate_evaluations() -> None:
    knots = torch.randn(2, 3, 4, dtype=torch.float64)
    times_b = torch.tensor([[0.0, 0.3, 1.0], [0.0, 0.6, 1.0]], dtype=torch.float64)
    t = torch.tensor([0.5, 0.5], dtype=torch.float64)
    joint = cubic_spline(times_b, knots, t)
    for b in range(2):
        single = cubic_spline(times_b[b], knots[b : b + 1], t[b : b + 1])
        torch.testing.assert_close(joint.value[b], single.value[0])
        torch.testing.assert_close(joint.d3[b], single.d3[0])


def test_linear_path_facts() -> None:
    times = torch.tensor([0.0, 0.25, 1.0])
    knots = torch.randn(3, 3, 2, 2)
    p = linear_path(times, knots, torch.tensor([0.25, 0.125, 0.625]))
    torch.testing.assert_close(p.value[0], knots[0, 1])
    torch.testing.assert_close(p.value[1], 0.5 * (knots[1, 0] + knots[1, 1]))
    torch.testing.assert_close(p.value[2], 0.5 * (knots[2, 1] + knots[2, 2]))
    torch.testing.assert_close(p.d1[1], (knots[1, 1] - knots[1, 0]) / 0.25)
    torch.testing.assert_close(p.d1[2], (knots[2, 2] - knots[2, 1]) / 0.75)
    assert p.d2.abs().max() == 0 and p.d3.abs().max() == 0
    assert p.value.dtype == torch.float32 and p.value.shape == (3, 2, 2)
    e = evaluate_path("linear", times, knots, torch.tensor([0.25, 0.125, 0.625]))
    torch.testing.assert_close(e.value, p.value)


def test_evaluate_path_dispatch_and_types() -> None:
    assert PATH_KINDS == ("cubic", "linear")
    times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    knots = torch.randn(2, 3, 1, dtype=torch.float64)
    t = torch.tensor([0.1, 0.7], dtype=torch.float64)
    p = evaluate_path("cubic", times, knots, t)
    assert isinstance(p, PathPoint)
    torch.testing.assert_close(p.value, cubic_spline(times, knots, t).value)
    # scalar t is broadcast to all samples; float32 knots with float64 times give float32
    q = cubic_spline(times, knots.float(), 0.3)
    assert q.value.dtype == torch.float32 and q.value.shape == (2, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cubic_spline_on_cuda_matches_cpu() -> None:
    times = torch.tensor(KNOT_TIMES[4])
    knots = torch.randn(B, 4, *LATENT)
    t = torch.rand(B)
    cpu = cubic_spline(times, knots, t)
    gpu = cubic_spline(times.cuda(), knots.cuda(), t.cuda())
    torch.testing.assert_close(gpu.d1.cpu(), cpu.d1, rtol=1e-5, atol=1e-5)
    assert gpu.segment.device.type == "cuda"


@pytest.mark.parametrize(
    ("times", "knots_shape", "t_shape", "match"),
    [
        ([0.0, 0.5, 0.5, 1.0], (2, 4, 3), (2,), "strictly increasing"),
        ([0.0, 0.7, 0.3], (2, 3, 3), (2,), "strictly increasing"),
        ([0.0], (2, 1, 3), (2,), "at least two knots"),
        ([0.0, 0.5, 1.0], (2, 4, 3), (2,), "K=4"),
        ([0.0, 1.0], (2,), (2,), r"\[B, K, \.\.\.\]"),
        ([0.0, 0.5, 1.0], (2, 3, 3), (3,), "one time per sample"),
    ],
)
def test_bad_knots_raise_clear_errors(times, knots_shape, t_shape, match) -> None:
    for kind in PATH_KINDS:
        with pytest.raises(ValueError, match=match):
            evaluate_path(kind, torch.tensor(times), torch.zeros(knots_shape), torch.zeros(t_shape))


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"spline\.path.*'cubic', 'linear'"):
        evaluate_path("quadratic", torch.tensor([0.0, 1.0]), torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\[2, 3\]"):  # per-sample times with wrong B
        natural_cubic_moments(torch.zeros(3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="floating-point"):
        natural_cubic_moments(torch.tensor([0.0, 1.0]), torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("fn", [cubic_spline, linear_path])
def test_beyond_the_knots_every_path_continues_with_the_end_velocity(fn) -> None:
    """The one extrapolation rule: the velocity is frozen at the end knot (extrapolation_time),
    so the path continues linearly with the end slope, the same as integrating
    dz/dt = mu'(extrapolation_time(t)) from the last knot."""
    times = torch.tensor(KNOT_TIMES[3], dtype=torch.float64)
    knots = torch.randn(B, 3, *LATENT, dtype=torch.float64)
    end = fn(times, knots, torch.ones(B, dtype=torch.float64))
    for tv in (1.1, 1.5):
        p = fn(times, knots, torch.full((B,), tv, dtype=torch.float64))
        torch.testing.assert_close(p.value, end.value + (tv - 1.0) * end.d1, rtol=0, atol=1e-12)
        torch.testing.assert_close(p.d1, end.d1, rtol=0, atol=1e-12)
        assert p.d2.abs().max() == 0 and p.d3.abs().max() == 0
        held = extrapolation_time(torch.full((B,), tv, dtype=torch.float64), 0.0, 1.0)
        torch.testing.assert_close(held, torch.ones(B, dtype=torch.float64))
    # the cubic's continuation is C2 at the last knot (natural boundary: mu''(t_K) = 0)
    assert end.d2.abs().max() < 1e-12


def test_extrapolation_time_clamps_into_the_knot_range() -> None:
    t = torch.tensor([-0.2, 0.0, 0.5, 1.0, 1.3])
    assert extrapolation_time(t, 0.0, 1.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    per_sample = extrapolation_time(t, torch.zeros(5), torch.full((5,), 0.8))
    assert per_sample.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.8, 0.8])
