"""The scale <-> time convention of degflow, written once.

A *scale* ``s >= 1`` is a downscaling factor (``s = 1`` is the HR image). The flow lives
on a time axis ``t`` with ``t = 0`` at the HR image and ``t = 1`` at the largest training
scale. A :class:`TimeMap` is the monotone piecewise-linear map between the two, defined
by anchor points ``(scales[i], times[i])``; beyond the last anchor it extrapolates
linearly with the slope of the last segment (synthesis may ask for scales beyond the
training range).

Three ways to build one (config key ``spline.knots``):

* ``nominal``: ``t = (s - 1) / (s_max - 1)``, e.g. knots ``(1, 2, 4)`` -> ``(0, 1/3, 1)``.
* ``optical``: each nominal label has a true optical ratio (RealSR: x2 ~ 2.1, x3 ~ 3.0,
  x4 ~ 3.75) and ``t = (eff - 1) / (eff_max - 1)``, so nominal x3 -> 2.0 / 2.75 = 0.727.
* ``times``: arbitrary explicit knot times (e.g. learned ones).

No ``999 * t`` anywhere: the library's time is ``t`` in ``[0, 1]`` (beyond 1 only when
extrapolating).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

__all__ = ["TIME_MAP_KINDS", "TimeMap", "build_time_map"]

#: Valid values of ``kind`` for :func:`build_time_map` (config key ``spline.knots``).
TIME_MAP_KINDS: tuple[str, ...] = ("nominal", "optical", "times")

_KEY = "spline.knots"

def _as_float_tuple(values: Any, name: str) -> tuple[float, ...]:
    """Convert a sequence (or 1-D tensor/array) of numbers to a tuple of finite floats."""
    if isinstance(values, (str, bytes)) or isinstance(values, Mapping):
        raise ValueError(
            f"{_KEY}: expected {name} as a sequence of numbers, got {type(values).__name__} "
            f"{values!r}"
        )
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist()
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{_KEY}: expected {name} as a sequence of numbers, got {values!r}"
        ) from exc
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{_KEY}: expected finite {name}, got {out}")
    return out


def _check_knot_scales(knot_scales: Any) -> tuple[float, ...]:
    """Validate knot scale labels: at least two, strictly increasing, starting at 1.0."""
    scales = _as_float_tuple(knot_scales, "knot scales")
    if len(scales) < 2:
        raise ValueError(
            f"{_KEY}: expected at least two knot scales (the HR scale 1.0 and at least one "
            f"LR scale), got {len(scales)}: {scales}"
        )
    if any(b <= a for a, b in zip(scales[:-1], scales[1:])):
        raise ValueError(
            f"{_KEY}: expected strictly increasing knot scales, got {scales}"
        )
    if scales[0] != 1.0:
        raise ValueError(
            f"{_KEY}: expected the first knot scale to be 1.0 (the HR image itself), "
            f"got {scales}"
        )
    return scales


def _piecewise_linear(x: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    """Piecewise-linear interpolation through ``(xs, ys)`` with linear extrapolation."""
    i = bisect.bisect_right(xs, x) - 1
    i = min(max(i, 0), len(xs) - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _piecewise_linear_tensor(x: Tensor, xs: tuple[float, ...], ys: tuple[float, ...]) -> Tensor:
    """Tensor version of :func:`_piecewise_linear` (elementwise, any shape, differentiable in ``x``)."""
    xs_t = torch.tensor(xs, dtype=x.dtype, device=x.device)
    ys_t = torch.tensor(ys, dtype=x.dtype, device=x.device)
    flat = x.reshape(-1)
    i = torch.searchsorted(xs_t, flat.detach().contiguous(), right=True) - 1
    i = i.clamp(0, len(xs) - 2)
    x0, x1, y0, y1 = xs_t[i], xs_t[i + 1], ys_t[i], ys_t[i + 1]
    out = y0 + (flat - x0) * (y1 - y0) / (x1 - x0)
    return out.reshape(x.shape)


@dataclass(frozen=True)
class TimeMap:
    """Monotone piecewise-linear map between scales ``s >= 1`` and times ``t >= 0``.

    Attributes:
        scales: anchor scales, strictly increasing, ``scales[0] == 1.0``. Shape ``[S]``
            as a tuple of floats.
        times: anchor times, strictly increasing, ``times[0] == 0.0``; same length.

    Between anchors the map is linear; beyond the last anchor it extrapolates with the
    last segment's slope. Scales below 1 and times below 0 are rejected.
    """

    scales: tuple[float, ...]
    times: tuple[float, ...]

    def __post_init__(self) -> None:
        scales = _as_float_tuple(self.scales, "anchor scales")
        times = _as_float_tuple(self.times, "anchor times")
        if len(scales) != len(times):
            raise ValueError(
                f"{_KEY}: expected as many anchor times as anchor scales, got "
                f"{len(scales)} scales {scales} and {len(times)} times {times}"
            )
        scales = _check_knot_scales(scales)
        if any(b <= a for a, b in zip(times[:-1], times[1:])):
            raise ValueError(
                f"{_KEY}: expected strictly increasing anchor times, got {times} "
                f"for scales {scales}"
            )
        if times[0] != 0.0:
            raise ValueError(
                f"{_KEY}: expected scale 1.0 to map to time 0.0, got time {times[0]}"
            )
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "times", times)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def nominal(cls, knot_scales: Sequence[float]) -> "TimeMap":
        """Nominal map ``t = (s - 1) / (s_max - 1)``.

        Args:
            knot_scales: knot labels, e.g. ``(1, 2, 4)`` -> times ``(0, 1/3, 1)``.
        """
        scales = _check_knot_scales(knot_scales)
        s_max = scales[-1]
        return cls(scales, tuple((s - 1.0) / (s_max - 1.0) for s in scales))

    @classmethod
    def explicit(
        cls,
        knot_scales: Sequence[float],
        effective_scales: Mapping[float, float] | Sequence[float],
    ) -> "TimeMap":
        """Optical map: ``t = (eff(s) - 1) / (eff(s_max) - 1)``.

        Args:
            knot_scales: knot labels (nominal scales), e.g. ``(1, 2, 4)``.
            effective_scales: true optical ratio of each label, either a mapping
                ``{label: ratio}`` (may hold extra labels, e.g. RealSR
                ``{1: 1.0, 2: 2.1, 3: 3.0, 4: 3.75}``; every label becomes an anchor, and
                ``s_max`` is the largest *knot* label) or a sequence paired with
                ``knot_scales``. Label 1 must have ratio 1.0 and ratios must increase
                with the labels.
        """
        knots = _check_knot_scales(knot_scales)
        if isinstance(effective_scales, Mapping):
            try:
                pairs = {float(k): float(v) for k, v in effective_scales.items()}
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"{_KEY}: expected effective scales as {{label: ratio}} numbers, got "
                    f"{effective_scales!r}"
                ) from exc
            missing = [s for s in knots if s not in pairs]
            if missing:
                raise ValueError(
                    f"{_KEY}: effective scales must give a ratio for every knot label "
                    f"{knots}; missing {missing}, got labels {sorted(pairs)}"
                )
        else:
            eff = _as_float_tuple(effective_scales, "effective scales")
            if len(eff) != len(knots):
                raise ValueError(
                    f"{_KEY}: expected one effective scale per knot scale, got "
                    f"{len(eff)} effective scales {eff} for {len(knots)} knots {knots}"
                )
            pairs = dict(zip(knots, eff))
        labels = tuple(sorted(pairs))
        ratios = tuple(pairs[s] for s in labels)
        if not all(math.isfinite(v) for v in labels + ratios):
            raise ValueError(f"{_KEY}: expected finite effective scales, got {pairs}")
        if labels[0] != 1.0 or ratios[0] != 1.0:
            raise ValueError(
                f"{_KEY}: expected the smallest label to be 1.0 with effective scale 1.0 "
                f"(the HR image), got label {labels[0]} -> {ratios[0]}"
            )
        if any(b <= a for a, b in zip(ratios[:-1], ratios[1:])):
            raise ValueError(
                f"{_KEY}: expected effective scales strictly increasing with the labels, "
                f"got {dict(zip(labels, ratios))}"
            )
        eff_max = pairs[knots[-1]]
        return cls(labels, tuple((r - 1.0) / (eff_max - 1.0) for r in ratios))

    @classmethod
    def from_times(
        cls, knot_scales: Sequence[float], knot_times: Sequence[float]
    ) -> "TimeMap":
        """Map with explicit knot times (e.g. learned ones); ``knot_times[0]`` must be 0.

        Args:
            knot_scales: knot labels ``[K]``, strictly increasing, starting at 1.0.
            knot_times: times ``[K]``, strictly increasing, starting at 0.0.
        """
        scales = _check_knot_scales(knot_scales)
        times = _as_float_tuple(knot_times, "knot times")
        if len(times) != len(scales):
            raise ValueError(
                f"{_KEY}: expected one knot time per knot scale, got {len(times)} times "
                f"{times} for {len(scales)} knots {scales}"
            )
        return cls(scales, times)

    # ------------------------------------------------------------------- mapping
    @overload
    def scale_to_time(self, s: float) -> float: ...
    @overload
    def scale_to_time(self, s: Tensor) -> Tensor: ...
    @overload
    def scale_to_time(self, s: np.ndarray) -> np.ndarray: ...
    @overload
    def scale_to_time(self, s: Sequence[float]) -> list[float]: ...

    def scale_to_time(self, s: Any) -> Any:
        """Time of scale(s) ``s >= 1``.

        Args:
            s: a number (returns float), a tensor of any shape (returns a tensor of the
                same shape, dtype — float for integer input — and device), a numpy array
                (returns an array) or a sequence of numbers (returns a list of floats).
        """
        return self._apply(s, self.scales, self.times, "scale", 1.0)

    @overload
    def time_to_scale(self, t: float) -> float: ...
    @overload
    def time_to_scale(self, t: Tensor) -> Tensor: ...
    @overload
    def time_to_scale(self, t: np.ndarray) -> np.ndarray: ...
    @overload
    def time_to_scale(self, t: Sequence[float]) -> list[float]: ...

    def time_to_scale(self, t: Any) -> Any:
        """Scale of time(s) ``t >= 0``; the inverse of :meth:`scale_to_time`.

        Accepts and returns the same kinds as :meth:`scale_to_time`.
        """
        return self._apply(t, self.times, self.scales, "time", 0.0)

    def knot_times(self, knot_scales: Sequence[float]) -> tuple[float, ...]:
        """Times ``[K]`` of the given scale labels, as plain floats."""
        labels = _as_float_tuple(knot_scales, "knot scales")
        return tuple(self.scale_to_time(s) for s in labels)

    def _apply(
        self, x: Any, xs: tuple[float, ...], ys: tuple[float, ...], name: str, lo: float
    ) -> Any:
        if isinstance(x, Tensor):
            xt = x if torch.is_floating_point(x) else x.to(torch.get_default_dtype())
            if bool((xt < lo).any()) or bool(torch.isnan(xt).any()):
                raise ValueError(
                    f"expected every {name} >= {lo} (no NaN), got min "
                    f"{float(xt.detach().min())}"
                )
            return _piecewise_linear_tensor(xt, xs, ys)
        if isinstance(x, np.ndarray):
            out = self._apply(torch.from_numpy(np.asarray(x, dtype=np.float64)), xs, ys, name, lo)
            return out.numpy()
        if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
            v = float(x)
            if not v >= lo:
                raise ValueError(f"expected a {name} >= {lo}, got {v}")
            return _piecewise_linear(v, xs, ys)
        if isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
            return [self._apply(float(v), xs, ys, name, lo) for v in x]
        raise ValueError(
            f"expected a {name} as a number, tensor, numpy array or sequence of numbers, "
            f"got {type(x).__name__}"
        )

    # ------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, list[float]]:
        """Plain-Python form ``{"scales": [...], "times": [...]}`` for checkpoints."""
        return {"scales": [float(s) for s in self.scales], "times": [float(t) for t in self.times]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TimeMap":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or set(data) != {"scales", "times"}:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(
                f"expected a time-map dict with exactly the keys ['scales', 'times'], got {got}"
            )
        return cls(tuple(data["scales"]), tuple(data["times"]))


def build_time_map(
    kind: str,
    knot_scales: Sequence[float],
    effective_scales: Mapping[float, float] | Sequence[float] | None = None,
    knot_times: Sequence[float] | None = None,
) -> TimeMap:
    """Build a :class:`TimeMap` from plain config values (config key ``spline.knots``).

    Args:
        kind: ``"nominal"`` (``t = (s-1)/(s_max-1)``), ``"optical"`` (needs
            ``effective_scales``, see :meth:`TimeMap.explicit`) or ``"times"`` (needs
            ``knot_times``, see :meth:`TimeMap.from_times`).
        knot_scales: knot labels ``[K]``, e.g. ``(1, 2, 4)``.
        effective_scales: optical ratios, only for ``kind="optical"``.
        knot_times: explicit times ``[K]``, only for ``kind="times"``.
    """
    if kind not in TIME_MAP_KINDS:
        raise ValueError(
            f"{_KEY}: unknown time-map kind {kind!r}; valid kinds are {list(TIME_MAP_KINDS)}"
        )
    if kind != "optical" and effective_scales is not None:
        raise ValueError(
            f"{_KEY}: effective scales are only used by kind 'optical', got kind {kind!r} "
            f"with effective scales {effective_scales!r}"
        )
    if kind != "times" and knot_times is not None:
        raise ValueError(
            f"{_KEY}: knot times are only used by kind 'times', got kind {kind!r} with "
            f"knot times {knot_times!r}"
        )
    if kind == "nominal":
        return TimeMap.nominal(knot_scales)
    if kind == "optical":
        if effective_scales is None:
            raise ValueError(
                f"{_KEY}: kind 'optical' needs effective scales (label -> optical ratio, "
                f"e.g. {{1: 1.0, 2: 2.1, 3: 3.0, 4: 3.75}}), got None"
            )
        return TimeMap.explicit(knot_scales, effective_scales)
    if knot_times is None:
        raise ValueError(f"{_KEY}: kind 'times' needs knot times (one per knot scale), got None")
    return TimeMap.from_times(knot_scales, knot_times)
