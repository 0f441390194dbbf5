"""Paths through latent knots: natural cubic spline and piecewise-linear (pure functions).

A path passes through ``K`` knots ``(t_k, P_k)``: knot times ``t_0 < ... < t_{K-1}``
(shared ``[K]`` or per sample ``[B, K]``) and knot values ``P`` of shape ``[B, K, ...]``
(any trailing latent dims, e.g. ``C, H, W``). Each latent element gets its own 1-D curve.

Natural cubic spline, moment form on segment ``[t_i, t_{i+1}]`` with
``h = t_{i+1} - t_i``, ``A = (t_{i+1} - t) / h``, ``B = (t - t_i) / h``::

    mu(t)   = A P_i + B P_{i+1} + ((A^3 - A) M_i + (B^3 - B) M_{i+1}) h^2 / 6
    mu'(t)  = (P_{i+1} - P_i) / h + (h / 6) ((1 - 3 A^2) M_i + (3 B^2 - 1) M_{i+1})
    mu''(t) = A M_i + B M_{i+1}
    mu'''(t)= (M_{i+1} - M_i) / h

where the moments ``M`` (second derivatives at the knots) solve the tridiagonal system
``h_{k-1} M_{k-1} + 2 (h_{k-1} + h_k) M_k + h_k M_{k+1}
= 6 ((P_{k+1} - P_k) / h_k - (P_k - P_{k-1}) / h_{k-1})`` for interior ``k`` with the
natural boundary ``M_0 = M_{K-1} = 0``.

Outside the knots (``t < t_0`` or ``t > t_{K-1}``) every path follows degflow's ONE
extrapolation rule, :func:`extrapolation_time`: the velocity is evaluated at the time
clamped to the knot range, i.e. the field is frozen at the end knot. For a path whose
velocity is ``mu'(t)`` this continues linearly with the end slope:
``mu(t) = mu(t_e) + (t - t_e) mu'(t_e)``, ``mu'(t) = mu'(t_e)``, ``mu'' = mu''' = 0``
(``t_e`` the nearest end knot). For the natural cubic spline (``M = 0`` at the ends) this
continuation is C2, unlike continuing the end cubic. Generation beyond the largest training
scale uses the same rule on the learned field: ``dz/dt = v(z, extrapolation_time(t, 0, t_K))``.

Everything is differentiable with respect to the knot values *and* the knot times
(learnable interior knot times are trained through it), works in float32/float64 on any
device. Config key for the path kind: ``spline.path``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PATH_KINDS",
    "PathPoint",
    "cubic_spline",
    "evaluate_path",
    "extrapolation_time",
    "linear_path",
    "natural_cubic_moments",
]

#: Valid values of ``kind`` for :func:`evaluate_path` (config key ``spline.path``).
PATH_KINDS: tuple[str, ...] = ("cubic", "linear")


@dataclass
class PathPoint:
    """A path evaluated at one time per sample.

    Attributes:
        value: ``mu(t)``, ``[B, ...]``.
        d1: ``mu'(t)``, ``[B, ...]``.
        d2: ``mu''(t)``, ``[B, ...]`` (zeros for the linear path).
        d3: ``mu'''(t)``, ``[B, ...]`` (zeros for the linear path).
        segment: ``LongTensor [B]``, index ``i`` of the segment ``[t_i, t_{i+1}]`` used.
        right_time: ``[B]``, the segment's right knot time ``t_{i+1}``.
    """

    value: Tensor
    d1: Tensor
    d2: Tensor
    d3: Tensor
    segment: Tensor
    right_time: Tensor


def _prepare(knot_times: Tensor, knots: Tensor) -> Tensor:
    """Validate knots and return knot times as ``[B, K]`` in the knots' dtype and device."""
    if not isinstance(knots, Tensor) or not isinstance(knot_times, Tensor):
        raise ValueError(
            "expected knot_times and knots as torch tensors, got "
            f"{type(knot_times).__name__} and {type(knots).__name__}"
        )
    if knots.ndim < 2:
        raise ValueError(
            f"expected knots of shape [B, K, ...] (batch, knots, latent dims), got shape "
            f"{tuple(knots.shape)}"
        )
    if not torch.is_floating_point(knots):
        raise ValueError(f"expected floating-point knots (float32/float64), got {knots.dtype}")
    batch, k = knots.shape[0], knots.shape[1]
    if k < 2:
        raise ValueError(
            f"spline.knots: expected at least two knots on the K axis of knots [B, K, ...], "
            f"got K={k} (shape {tuple(knots.shape)})"
        )
    if knot_times.ndim not in (1, 2):
        raise ValueError(
            f"expected knot_times of shape [K] or [B, K], got shape {tuple(knot_times.shape)}"
        )
    expected = (k,) if knot_times.ndim == 1 else (batch, k)
    if tuple(knot_times.shape) != expected:
        raise ValueError(
            f"expected knot_times of shape {list(expected)} to match knots "
            f"{tuple(knots.shape)} (K={k}), got shape {tuple(knot_times.shape)}"
        )
    kt = knot_times.to(device=knots.device, dtype=knots.dtype)
    if not bool((kt[..., 1:] > kt[..., :-1]).all()):
        raise ValueError(
            f"spline.knots: expected strictly increasing knot times, got "
            f"{kt.detach().cpu().tolist()}"
        )
    return kt.expand(batch, k) if kt.ndim == 1 else kt


def _prepare_t(t: Tensor | float, knots: Tensor) -> Tensor:
    """Return ``t`` as ``[B]`` in the knots' dtype/device (a 0-dim ``t`` is broadcast)."""
    batch = knots.shape[0]
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.expand(batch)
    if tuple(t.shape) != (batch,):
        raise ValueError(
            f"expected t of shape [B] = [{batch}] (one time per sample) or a scalar, got "
            f"shape {tuple(t.shape)}"
        )
    return t.to(device=knots.device, dtype=knots.dtype)


def extrapolation_time(t: Tensor, t_first: Tensor | float, t_last: Tensor | float) -> Tensor:
    """The time at which a velocity is evaluated for the path time ``t``: ``t`` clamped to
    ``[t_first, t_last]``. This is degflow's one extrapolation rule beyond the knots (see the
    module docstring): the field is frozen at the end knot.

    Args:
        t: times, any shape (e.g. ``[B]``).
        t_first, t_last: first and last knot time (floats, or tensors broadcastable to ``t``).
    Returns:
        ``t`` clamped, same shape and dtype.
    """
    lo = torch.as_tensor(t_first, dtype=t.dtype, device=t.device)
    hi = torch.as_tensor(t_last, dtype=t.dtype, device=t.device)
    return torch.minimum(torch.maximum(t, lo), hi)


def _moments_flat(kt: Tensor, flat: Tensor, shared: bool) -> Tensor:
    """Moments for ``kt [B, K]`` and ``flat [B, K, N]``; returns ``[B, K, N]``."""
    batch, k, n_el = flat.shape
    if k == 2:
        return torch.zeros_like(flat)
    h = kt[:, 1:] - kt[:, :-1]  # [B, K-1]
    slopes = (flat[:, 1:] - flat[:, :-1]) / h.unsqueeze(-1)  # [B, K-1, N]
    rhs = 6.0 * (slopes[:, 1:] - slopes[:, :-1])  # [B, K-2, N]
    diag = 2.0 * (h[:, :-1] + h[:, 1:])  # [B, K-2]
    off = h[:, 1:-1]  # [B, K-3]
    if shared:
        # One matrix for the whole batch: solve [K-2, K-2] against [K-2, B*N].
        mat = (
            torch.diag_embed(diag[0])
            + torch.diag_embed(off[0], offset=1)
            + torch.diag_embed(off[0], offset=-1)
        )
        sol = torch.linalg.solve(mat, rhs.transpose(0, 1).reshape(k - 2, batch * n_el))
        inner = sol.reshape(k - 2, batch, n_el).transpose(0, 1)
    else:
        mat = (
            torch.diag_embed(diag)
            + torch.diag_embed(off, offset=1)
            + torch.diag_embed(off, offset=-1)
        )
        inner = torch.linalg.solve(mat, rhs)  # [B, K-2, N]
    zero = torch.zeros_like(flat[:, :1])
    return torch.cat([zero, inner, zero], dim=1)


def natural_cubic_moments(knot_times: Tensor, knots: Tensor) -> Tensor:
    """Second derivatives ``M`` of the natural cubic spline at the knots.

    Args:
        knot_times: ``[K]`` or ``[B, K]``, strictly increasing (uneven spacing allowed).
        knots: ``[B, K, ...]`` knot values, ``K >= 2`` (``K = 2`` gives ``M = 0``, a line).

    Returns:
        ``[B, K, ...]`` moments with ``M[:, 0] = M[:, K-1] = 0``; differentiable with
        respect to both ``knots`` and ``knot_times``.
    """
    kt = _prepare(knot_times, knots)
    batch, k = knots.shape[:2]
    flat = knots.reshape(batch, k, -1)
    return _moments_flat(kt, flat, shared=knot_times.ndim == 1).reshape(knots.shape)


def _locate(kt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Segment index ``[B]`` (knot on the right's segment; last knot in the last segment;
    outside values in the end segments) and its left/right knot times ``[B]``."""
    k = kt.shape[1]
    idx = torch.searchsorted(
        kt.detach().contiguous(), t.detach().unsqueeze(1).contiguous(), right=True
    )
    idx = (idx.squeeze(1) - 1).clamp(0, k - 2)
    t_left = kt.gather(1, idx.unsqueeze(1)).squeeze(1)
    t_right = kt.gather(1, (idx + 1).unsqueeze(1)).squeeze(1)
    return idx, t_left, t_right


def _pick(flat: Tensor, idx: Tensor) -> Tensor:
    """``flat [B, K, N]`` at per-sample knot ``idx [B]`` -> ``[B, N]``."""
    return flat[torch.arange(flat.shape[0], device=flat.device), idx]


def cubic_spline(knot_times: Tensor, knots: Tensor, t: Tensor | float) -> PathPoint:
    """Natural cubic spline through the knots, with derivatives up to third order.

    Args:
        knot_times: ``[K]`` or ``[B, K]``, strictly increasing.
        knots: ``[B, K, ...]``.
        t: ``[B]`` (or a scalar for all samples), normally in ``[t_0, t_{K-1}]``. A ``t``
            exactly at an interior knot belongs to the segment on its right; ``t_{K-1}``
            belongs to the last segment; ``t`` outside the range continues linearly with
            the end knot's slope (:func:`extrapolation_time`; segment and right_time are
            those of the end segment).

    Returns:
        :class:`PathPoint` with value/d1/d2/d3 of shape ``[B, ...]``.
    """
    kt = _prepare(knot_times, knots)
    t = _prepare_t(t, knots)
    batch, k = knots.shape[:2]
    trailing = knots.shape[2:]
    flat = knots.reshape(batch, k, -1)
    moments = _moments_flat(kt, flat, shared=knot_times.ndim == 1)
    t_out = t
    t = extrapolation_time(t, kt[:, 0], kt[:, -1])
    idx, t_left, t_right = _locate(kt, t)
    h = (t_right - t_left).unsqueeze(1)  # [B, 1]
    a = ((t_right - t).unsqueeze(1)) / h
    b = ((t - t_left).unsqueeze(1)) / h
    p0, p1 = _pick(flat, idx), _pick(flat, idx + 1)
    m0, m1 = _pick(moments, idx), _pick(moments, idx + 1)
    value = a * p0 + b * p1 + ((a**3 - a) * m0 + (b**3 - b) * m1) * (h * h / 6.0)
    d1 = (p1 - p0) / h + (h / 6.0) * ((1.0 - 3.0 * a * a) * m0 + (3.0 * b * b - 1.0) * m1)
    d2 = a * m0 + b * m1
    d3 = (m1 - m0) / h
    value, d2, d3 = _continue(t_out, t, value, d1, d2, d3)
    shape = (batch, *trailing)
    return PathPoint(
        value=value.reshape(shape),
        d1=d1.reshape(shape),
        d2=d2.reshape(shape),
        d3=d3.reshape(shape),
        segment=idx,
        right_time=t_right,
    )


def _continue(t: Tensor, t_held: Tensor, value: Tensor, d1: Tensor, d2: Tensor,
              d3: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Linear continuation outside the knots (the extrapolation rule).

    ``t, t_held [B]``; ``value, d1, d2, d3 [B, N]`` evaluated at ``t_held``. Returns value,
    d2, d3 at ``t``: ``value + (t - t_held) d1``, and zero d2 / d3 where ``t != t_held``."""
    dt = (t - t_held).unsqueeze(1)                                          # [B, 1]
    inside = (dt == 0).to(d2.dtype)
    return value + dt * d1, d2 * inside, d3 * inside


def linear_path(knot_times: Tensor, knots: Tensor, t: Tensor | float) -> PathPoint:
    """Piecewise-linear path through the knots (``d2 = d3 = 0``).

    Same arguments, segment convention and extrapolation as :func:`cubic_spline`.
    """
    kt = _prepare(knot_times, knots)
    t = _prepare_t(t, knots)
    batch, k = knots.shape[:2]
    flat = knots.reshape(batch, k, -1)
    t_out = t
    t = extrapolation_time(t, kt[:, 0], kt[:, -1])
    idx, t_left, t_right = _locate(kt, t)
    h = (t_right - t_left).unsqueeze(1)
    b = ((t - t_left).unsqueeze(1)) / h
    p0, p1 = _pick(flat, idx), _pick(flat, idx + 1)
    d1 = (p1 - p0) / h
    value = p0 + b * (p1 - p0) + (t_out - t).unsqueeze(1) * d1
    shape = (batch, *knots.shape[2:])
    zeros = torch.zeros(shape, dtype=knots.dtype, device=knots.device)
    return PathPoint(
        value=value.reshape(shape),
        d1=d1.reshape(shape),
        d2=zeros,
        d3=zeros.clone(),
        segment=idx,
        right_time=t_right,
    )


def evaluate_path(kind: str, knot_times: Tensor, knots: Tensor, t: Tensor | float) -> PathPoint:
    """Evaluate the path of the given kind (config key ``spline.path``).

    Args:
        kind: ``"cubic"`` (natural cubic spline) or ``"linear"``.
        knot_times: ``[K]`` or ``[B, K]``.
        knots: ``[B, K, ...]``.
        t: ``[B]`` or a scalar.
    """
    if kind == "cubic":
        return cubic_spline(knot_times, knots, t)
    if kind == "linear":
        return linear_path(knot_times, knots, t)
    raise ValueError(f"spline.path: unknown path kind {kind!r}; valid kinds are {list(PATH_KINDS)}")
