"""Stage-2 losses: flow matching on the spline path, and LPIPS on Taylor extrapolations.

L = L_FM + lambda * w * LPIPS(D(z_hat; H_HR), x_{k+1}), where
  L_FM  = || v(mu(t), t) - mu'(t) ||^2                      (mean over C, H, W)
  z_hat = mu(t) + v dt + mu''(t) dt^2 / 2 + mu'''(t) dt^3 / 6,   dt = t_{k+1} - t
extrapolates from the path point at t to the right knot t_{k+1} of its segment with the
network velocity as the first-order term and the spline's own higher derivatives.
Because the spline is cubic, z_hat is exact when v = mu'(t), so the term penalises the
velocity error perceptually, weighted by dt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from degflow.core.spline import PathPoint

SEGMENT_WEIGHTINGS = ("none", "inverse_distance")
#: VGG pooling of the perceptual loss (``loss.lpips_pooling``): ``avg`` is the authors' loss
#: (piq's LPIPS with ``replace_pooling=True``), ``max`` the lpips package's own network.
LPIPS_POOLINGS = ("avg", "max")
#: How the training times t are drawn (``loss.time_sampling``): ``uniform`` on [t_0, t_K-1]
#: (the paper), or ``knots``: segment by length, then more mass near both ends of the segment
#: (:func:`sample_times`).
TIME_SAMPLINGS = ("uniform", "knots")
#: The authors' constant in 1 / (dt / segment_length + eps).
INVERSE_DISTANCE_EPS = 1e-3


@dataclass(frozen=True)
class LossSettings:
    """Config group ``loss``."""

    lpips_weight: float = 0.1
    taylor_order: int = 3
    segment_weighting: str = "none"
    lpips_net: str = "vgg"
    lpips_pooling: str = "avg"
    lpips_backbone_weights: str | None = None
    time_sampling: str = "uniform"
    knot_concentration: float = 0.5

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"loss.time_sampling={self.time_sampling!r} is not one of {list(TIME_SAMPLINGS)} "
                             "(uniform: t ~ U over the knot range; knots: extra mass near every knot)")
        if isinstance(self.knot_concentration, bool) or not 0.0 <= float(self.knot_concentration) < 1.0:
            raise ValueError(f"loss.knot_concentration must be in [0, 1) (0 = uniform), got "
                             f"{self.knot_concentration!r}")
        if self.lpips_weight < 0:
            raise ValueError(f"loss.lpips_weight must be >= 0, got {self.lpips_weight}")
        if self.taylor_order not in (1, 2, 3):
            raise ValueError(f"loss.taylor_order must be one of [1, 2, 3], got {self.taylor_order!r}")
        if self.segment_weighting not in SEGMENT_WEIGHTINGS:
            raise ValueError(
                f"loss.segment_weighting={self.segment_weighting!r} is not one of {list(SEGMENT_WEIGHTINGS)}"
            )
        if self.lpips_pooling not in LPIPS_POOLINGS:
            raise ValueError(
                f"loss.lpips_pooling={self.lpips_pooling!r} is not one of {list(LPIPS_POOLINGS)} "
                f"(avg: the authors' VGG-LPIPS with average pooling; max: the lpips package's)"
            )
        if self.lpips_pooling == "avg" and self.lpips_net != "vgg":
            raise ValueError(
                f"loss.lpips_pooling='avg' is defined for loss.lpips_net='vgg' only, got "
                f"lpips_net={self.lpips_net!r}; set loss.lpips_pooling=max for {self.lpips_net!r}"
            )


def flow_matching_loss(velocity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared velocity error.

    Args:
        velocity: ``[B, C, H, W]`` network output v(mu(t), t).
        target: ``[B, C, H, W]`` path derivative mu'(t).
    Returns:
        ``[B]`` mean over C, H, W of (velocity - target)^2.
    """
    return (velocity.float() - target.float()).pow(2).flatten(1).mean(1)


def taylor_extrapolate(point: PathPoint, velocity: torch.Tensor, dt: torch.Tensor, order: int) -> torch.Tensor:
    """Extrapolate from the path point by ``dt`` with a Taylor expansion of order 1..3.

    Args:
        point: the path at t (``value``, ``d2``, ``d3`` of shape ``[B, C, H, W]``).
        velocity: ``[B, C, H, W]`` first-order term (the network's velocity).
        dt: ``[B]`` step to the right knot of each sample's segment.
        order: 1, 2 or 3.
    Returns:
        ``[B, C, H, W]`` z_hat = value + v dt (+ d2 dt^2/2) (+ d3 dt^3/6).
    """
    dt = dt.view(-1, *([1] * (velocity.dim() - 1))).to(velocity.dtype)     # [B,1,1,1]
    z = point.value + velocity * dt
    if order >= 2:
        z = z + point.d2 * dt.pow(2) / 2
    if order >= 3:
        z = z + point.d3 * dt.pow(3) / 6
    return z


def segment_weights(dt: torch.Tensor, segment_length: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-sample weights of the perceptual term (config key ``loss.segment_weighting``).

    ``none``: 1. ``inverse_distance``: the authors' optional 1/r weighting (off in the paper),
    exactly ``1 / (dt / segment_length + 1e-3)``: the distance to the right knot as a fraction
    of the segment, so a sample next to the knot weighs up to 1000x one at the segment's start.
    The weights are constants of the loss (detached): they never move learned knot times.

    Args:
        dt: ``[B]`` distance from t to the right knot of its segment.
        segment_length: ``[B]`` length of that segment (``t_{k+1} - t_k``).
    Returns:
        ``[B]`` weights.
    """
    if weighting == "none":
        return torch.ones_like(dt)
    if weighting == "inverse_distance":
        return 1.0 / (dt.detach() / segment_length.detach() + INVERSE_DISTANCE_EPS)
    raise ValueError(f"loss.segment_weighting={weighting!r} is not one of {list(SEGMENT_WEIGHTINGS)}")


def knot_warp(x: torch.Tensor, concentration: float) -> torch.Tensor:
    """Monotone map of [0, 1] onto itself: ``(1 - a) x + a (1 - cos(pi x)) / 2``, ``a = concentration``.

    Applied to x ~ U(0, 1) it gives density ``1 / ((1 - a) + a pi/2 sin(pi g^-1))``: ``1 / (1 - a)``
    at both ends and ``1 / (1 - a + a pi / 2)`` in the middle (a = 0.5: 2.0 vs 0.78).
    """
    return (1.0 - concentration) * x + concentration * (1.0 - torch.cos(math.pi * x)) / 2


def sample_times(u: torch.Tensor, knot_times: torch.Tensor, kind: str = "uniform",
                 concentration: float = 0.5) -> torch.Tensor:
    """Training times from uniform numbers (config keys ``loss.time_sampling``, ``loss.knot_concentration``).

    ``uniform``: ``t = t_0 + u (t_last - t_0)``. ``knots``: the same t picks the segment (so each
    segment keeps its share, its length), and the position inside the segment is warped by
    :func:`knot_warp`, which puts more mass near both of its knots (the ends of the path
    included). A monotone function of ``u``: one draw per row.

    Args:
        u: ``[B]`` numbers in [0, 1).
        knot_times: ``[K]`` increasing knot times.
    Returns:
        ``[B]`` times in [t_0, t_last].
    """
    t = knot_times[0] + u * (knot_times[-1] - knot_times[0])                  # [B]
    if kind == "uniform":
        return t
    if kind != "knots":
        raise ValueError(f"loss.time_sampling={kind!r} is not one of {list(TIME_SAMPLINGS)}")
    seg = torch.searchsorted(knot_times.contiguous(), t.contiguous(), right=True).clamp(1, len(knot_times) - 1) - 1
    left, right = knot_times[seg], knot_times[seg + 1]                         # [B]
    x = ((t - left) / (right - left)).clamp(0.0, 1.0)
    return left + (right - left) * knot_warp(x, concentration)
