"""Scales: their one text label, their validation, and the CLI's list / range syntax.

A scale s >= 1 is a downscaling factor (1 = the HR image itself). Every text form of a scale
comes from :func:`scale_label` (exact to :data:`SCALE_DECIMALS` decimals, no trailing
zeros): folder names (``x2.25``), metric-table keys (``x2.5``) and log lines alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from degflow.infra.checks import check_number

__all__ = [
    "SCALE_DECIMALS",
    "Scales",
    "check_scale",
    "check_scales",
    "expand_scales",
    "find_scale",
    "format_scales",
    "parse_scale",
    "scale_key",
    "scale_label",
]

#: Decimals a scale is exact to in labels and in :func:`expand_scales`.
SCALE_DECIMALS = 10


def scale_label(scale: float) -> str:
    """Text of a scale without trailing zeros: ``2.0 -> "2"``, ``2.25 -> "2.25"``.

    Exact to 10 decimals (unlike ``%g``, which keeps 6 significant digits).
    """
    return f"{round(float(scale), SCALE_DECIMALS):.{SCALE_DECIMALS}f}".rstrip("0").rstrip(".")


def scale_key(scale: float) -> str:
    """Folder name and metric-table key of a scale: ``2.0 -> "x2"``, ``2.5 -> "x2.5"``."""
    return f"x{scale_label(scale)}"


def format_scales(scales: Iterable[float]) -> str:
    """``(1.0, 2.0, 2.5) -> "1,2,2.5"`` (log lines)."""
    return ",".join(scale_label(s) for s in scales)


class Scales(tuple):
    """Requested scales validated once: finite numbers >= 1, exact to :data:`SCALE_DECIMALS`
    decimals, sorted, unique. :func:`expand_scales` builds it; code that receives a
    ``Scales`` does not validate them again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Scales({format_scales(self)})"


def check_scale(value: Any, key: str = "scale") -> float:
    """``value`` as a float scale, or ValueError naming ``key``.

    A scale is a finite number >= 1 (1 = the HR image). Numbers of any numeric type
    (numpy / tensor scalars included) are accepted; text and booleans are not.
    """
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{key}: a scale must be a finite number >= 1 (1 = the HR image), got {value!r}")
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: a scale must be a finite number >= 1 (1 = the HR image), got {value!r}") from None
    if not math.isfinite(s) or s < 1.0:
        raise ValueError(f"{key}: every scale must be a finite number >= 1 (1 = the HR image), got {value!r}")
    return s


def check_scales(scales: Any, key: str) -> tuple[float, ...]:
    """Validate a list of knot scales from the config (``data.train_scales``,
    ``data.val_scales``): sorted, unique, each >= 1, starting with 1.0 (the HR knot) and with
    at least one LR scale. Returns floats."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable):
        raise ValueError(f"{key} must be a list of scales like [1, 2, 4]; got {scales!r}")
    out = [check_scale(v, f"{key} = {list(scales)!r}") for v in scales]
    if sorted(set(out)) != out:
        raise ValueError(f"{key} must be sorted and without duplicates; got {out!r} "
                         f"(did you mean {sorted(set(out))!r}?)")
    if not out or out[0] != 1.0:
        raise ValueError(f"{key} must start with 1 (the HR image is the first knot); got "
                         f"{out!r} (did you mean {[1.0] + out!r}?)")
    if len(out) < 2:
        raise ValueError(f"{key} needs at least one LR scale > 1 besides 1; got {out!r}")
    return tuple(out)


def parse_scale(text: str) -> float | None:
    """The scale a folder name like ``"2.5"`` stands for, or None if it is not a scale."""
    try:
        return check_scale(float(text))
    except ValueError:
        return None


def find_scale(scale: float, available: Iterable[float], tol: float = 1e-6) -> float | None:
    """The entry of ``available`` equal to ``scale`` within ``tol``, or None."""
    for a in available:
        if abs(float(a) - float(scale)) < tol:
            return a
    return None


def expand_scales(spec: Any, key: str = "scales") -> Scales:
    """The config node ``scales`` as sorted, unique, validated :class:`Scales` (the one place
    requested scales are validated).

    Args:
        spec: a number, a list of numbers (``[1.5, 2.25, 3.7]``), or a mapping
            ``{start, stop, step}``: ``start, start + step, ...`` up to and including ``stop``
            (within 1e-9), each value computed as ``start + i * step`` and rounded to 10
            decimals, so there is no float drift (``1.1 + 2 * 0.1 -> 1.3``).
    Raises:
        ValueError naming ``key`` for anything else, for scales < 1, a step <= 0 or
        ``stop < start``.
    """
    def number(v: Any, what: str) -> float:
        return check_number(v, f"{key}: {what}")

    if isinstance(spec, Scales):
        return spec
    if isinstance(spec, Mapping):
        if set(spec) != {"start", "stop", "step"}:
            raise ValueError(
                f"{key}: a scale range needs exactly the keys start, stop, step (e.g. "
                f"{key}.start=1.1 {key}.stop=4.0 {key}.step=0.1), got keys {sorted(spec)}"
            )
        start, stop, step = (number(spec[k], f"{key}.{k}") for k in ("start", "stop", "step"))
        if step <= 0:
            raise ValueError(f"{key}.step must be > 0, got {step!r}")
        if stop < start:
            raise ValueError(f"{key}.stop ({stop!r}) must be >= {key}.start ({start!r})")
        count = math.floor((stop - start) / step + 1e-9) + 1
        values = [round(start + i * step, SCALE_DECIMALS) for i in range(count)]
    elif isinstance(spec, (list, tuple)):
        values = [round(number(v, "every scale"), SCALE_DECIMALS) for v in spec]
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        values = [round(number(spec, "the scale"), SCALE_DECIMALS)]
    else:
        raise ValueError(
            f"{key}: expected a list of scales ({key}=[1.5,2.25,3.7]) or a range "
            f"({key}.start=1.1 {key}.stop=4.0 {key}.step=0.1), got {spec!r}"
        )
    if not values:
        raise ValueError(f"{key}: no scales requested")
    for v in values:
        check_scale(v, key)
    return Scales(sorted(set(values)))
