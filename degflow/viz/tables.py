"""Tables of results: the one number formatter, seed statistics, Markdown and CSV writers.

Every results table degflow writes (evaluation, sweep reports, the SR comparison, the
experiment scripts) formats its numbers with :func:`fmt` and is written with
:func:`markdown_table` / :func:`write_csv`, so one metric reads the same everywhere.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from degflow.infra.files import atomic_write_text

__all__ = ["DIGITS", "fmt", "fmt_value", "mean_sd", "markdown_table", "write_csv", "csv_text"]

#: Decimals per metric (PSNR and seconds 2, NFE 0, everything else 4).
DIGITS = {"psnr_y": 2, "seconds": 2, "seconds_per_image": 2, "nfe": 0}
_DEFAULT_DIGITS = 4


def fmt(mean: float | None, sd: float | None = None, metric: str = "") -> str:
    """``31.25 ± 0.40`` (PSNR 2 decimals, others 4; no spread when ``sd`` is None; ``–`` for no value)."""
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        return "–"
    digits = DIGITS.get(metric, _DEFAULT_DIGITS)
    text = f"{mean:.{digits}f}"
    return text if sd is None else f"{text} ± {sd:.{digits}f}"


def fmt_value(value: Any, metric: str = "") -> str:
    """A table cell: numbers through :func:`fmt` (ints as they are), None empty, anything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return fmt(value, None, metric)
    return str(value)


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None for one value) and count of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, sd, len(vals)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a GitHub Markdown table (cells already formatted)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text with a header line; None becomes an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Atomically write :func:`csv_text`."""
    atomic_write_text(path, csv_text(header, rows))
