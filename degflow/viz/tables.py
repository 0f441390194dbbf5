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

__all__ = ["DIGITS", "csv_text", "fmt", "fmt_cell", "markdown_table", "mean_sd", "metric_of", "write_csv",
           "write_table"]

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


def metric_of(column: str) -> str:
    """The metric a column holds, for its number of decimals: ``x2*/psnr_y``, ``psnr_y_heldout``
    and ``heldout_psnr_y`` hold ``psnr_y``; ``nfe``; ``seconds_per_image``, ``job_seconds``."""
    name = column.rsplit("/", 1)[-1]
    if "psnr" in name:
        return "psnr_y"
    if name == "nfe":
        return "nfe"
    return "seconds" if "seconds" in name else name


def fmt_cell(value: Any, column: str = "") -> str:
    """A Markdown table cell: floats through :func:`fmt` with the decimals of the column's
    metric (:func:`metric_of`), integers and text as they are, ``–`` for no value."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return fmt(value, None, metric_of(column))
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


def write_table(out_dir: str | Path, stem: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *,
                title: str, before: Sequence[str] = (), after: Sequence[str] = (),
                shown: Sequence[str] | None = None) -> dict[str, Path]:
    """The one writer of result tables (sweep reports, evaluation sweeps): ``{stem}.md`` (a title,
    ``before`` lines, the table of the ``shown`` columns formatted by :func:`fmt_cell`, ``after``
    lines) and ``{stem}.csv`` (every column, raw values), atomically. Returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = [i for i, h in enumerate(header) if shown is None or h in shown]
    table = markdown_table([header[i] for i in cols], [[fmt_cell(row[i], header[i]) for i in cols] for row in rows])
    text = "\n".join([f"# {title}", "", *before, *([""] if before else []), *table,
                       *([""] if after else []), *after]) + "\n"
    paths = {"markdown": out / f"{stem}.md", "csv": out / f"{stem}.csv"}
    atomic_write_text(paths["markdown"], text)
    write_csv(paths["csv"], header, rows)
    return paths
