"""The one set of argument checks: integers, numbers, booleans and choices from configs and callers.

Each returns the value (as the expected type) or raises ValueError naming the config key, what
was expected and what arrived. Booleans are never integers here (``True`` is not a step count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_number", "check_positive_int"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, key: str, *, minimum: int | None = None, allow_none: bool = False,
              hint: str = "") -> int | None:
    """``value`` as an int (>= ``minimum`` when given); ``None`` only with ``allow_none``.
    ``hint`` follows the expectation in the message (``" (border pixels)"``)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        what = f"an integer{'' if minimum is None else f' >= {minimum}'}"
        raise ValueError(f"{key} must be {what}{hint}{' or null' if allow_none else ''}, got {value!r}")
    return int(value)


def check_positive_int(value: Any, key: str, allow_none: bool = False, hint: str = "") -> int | None:
    """``value`` as an int >= 1 (``None`` only with ``allow_none``)."""
    return check_int(value, key, minimum=1, allow_none=allow_none, hint=hint)


def check_number(value: Any, key: str, *, low: float | None = None, high: float | None = None,
                 open_low: bool = False, open_high: bool = False, allow_none: bool = False,
                 hint: str = "") -> float | None:
    """``value`` as a finite float within ``[low, high]`` (ends excluded with ``open_low`` / ``open_high``)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and low is not None:
        ok = float(value) > low if open_low else float(value) >= low
    if ok and high is not None:
        ok = float(value) < high if open_high else float(value) <= high
    if not ok:
        if low is not None and high is not None:
            where = f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        elif low is not None:
            where = f" {'>' if open_low else '>='} {low:g}"
        elif high is not None:
            where = f" {'<' if open_high else '<='} {high:g}"
        else:
            where = ""
        what = "a number" if where else "a finite number"
        raise ValueError(f"{key} must be {what}{where}{hint}{' or null' if allow_none else ''}, got {value!r}")
    return float(value)


def check_bool(value: Any, key: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0 / 1 / "true")."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def check_choice(value: Any, options: Sequence[str], key: str) -> str:
    """``value`` if it is one of ``options``: ``key='x' is not one of ['a', 'b']`` otherwise."""
    if value not in options:
        raise ValueError(f"{key}={value!r} is not one of {list(options)}")
    return value
