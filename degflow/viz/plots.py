"""Evaluation pictures as PNG (matplotlib, Agg backend: no display needed).

- :func:`plot_metric_vs_scale`: one panel per metric, one line per method, held-out
  scales shaded;
- :func:`plot_psnr_vs_nfe`: the accuracy / speed frontier of solver settings;
- :func:`plot_method_bars`: one metric per panel, methods as bars grouped by test set,
  error bars = spread over seeds;
- :func:`plot_crops`: a labelled strip of zoomed crops, one column per scale, one row per
  image source (real LR, the model, the baselines);
- :func:`plot_loss_curve`: a training run's losses (and validation Y-PSNR) vs step, from
  the rows of its ``history.jsonl``.

Inputs are the plain structures of :class:`degflow.jobs.evaluation.EvalResult` (per-scale means,
crops), so the functions also serve results read back from ``eval.json``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from degflow.core.scales import parse_scale  # noqa: E402
from degflow.infra.files import atomic_write_bytes  # noqa: E402

__all__ = ["plot_metric_vs_scale", "plot_psnr_vs_nfe", "plot_method_bars", "plot_crops", "plot_loss_curve"]

_LABELS = {
    "psnr_y": "PSNR-Y (dB) ↑",
    "ssim_y": "SSIM-Y ↑",
    "lpips": "LPIPS ↓",
    "kl": "KL ↓",
    "akld": "AKLD ↓",
}
_MARKERS = ("o", "s", "^", "D", "v", "P")
_DASHES = ("-", "--", "-.", ":")


def _save(fig: plt.Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return Path(path)


def plot_metric_vs_scale(per_scale: Mapping[str, Mapping[str, Mapping[str, object]]], path: str | Path,
                         metrics: Sequence[str] = tuple(_LABELS)) -> Path:
    """Metric vs scale for every method.

    ``per_scale``: ``{method: {scale label: {metric: value, "heldout": bool | None}}}``
    (:meth:`EvalResult.per_scale`). Metrics without any value are left out.
    """
    metrics = [m for m in metrics if any(v.get(m) is not None for rows in per_scale.values() for v in rows.values())]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.2 * max(1, len(metrics)), 3.4), squeeze=False)
    heldout = sorted({float(s) for rows in per_scale.values() for s, v in rows.items() if v.get("heldout")})
    for ax, metric in zip(axes[0], metrics):
        for k, (method, rows) in enumerate(per_scale.items()):
            pts = sorted((float(s), v[metric]) for s, v in rows.items() if v.get(metric) is not None)
            if pts:  # distinct markers and dashes, so methods with equal values stay visible
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS[k % len(_MARKERS)],
                        linestyle=_DASHES[k % len(_DASHES)], label=method)
        for s in heldout:
            ax.axvspan(s - 0.08, s + 0.08, color="0.85", zorder=0)
        ax.set_xlabel("scale s")
        ax.set_title(_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if heldout:
        fig.suptitle("grey bands: held-out scales (never seen in training)", fontsize=9, y=1.02)
    return _save(fig, path)


def plot_psnr_vs_nfe(points: Sequence[Mapping[str, object]], path: str | Path, metric: str = "psnr_y") -> Path:
    """Held-out metric vs NFE, one point per solver setting.

    ``points``: ``{"label": str, "group": str, "nfe": float, metric: float}`` each (e.g. one
    per sweep job); one line per ``group`` (e.g. the solver method), ordered by NFE.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    pts = [p for p in points if p.get("nfe") is not None and p.get(metric) is not None]
    groups = list(dict.fromkeys(str(p.get("group", "")) for p in pts))
    for k, group in enumerate(groups):
        line = sorted((p for p in pts if str(p.get("group", "")) == group), key=lambda p: float(p["nfe"]))
        ax.plot([float(p["nfe"]) for p in line], [float(p[metric]) for p in line],
                marker=_MARKERS[k % len(_MARKERS)], linestyle=_DASHES[k % len(_DASHES)], label=group or None)
        for p in line:
            ax.annotate(str(p["label"]), (float(p["nfe"]), float(p[metric])), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    if any(groups):
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("NFE (velocity evaluations per image)")
    ax.set_ylabel(_LABELS.get(metric, metric) + " held-out")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_method_bars(values: Mapping[str, Mapping[str, Mapping[str, tuple[float | None, float | None]]]],
                     path: str | Path) -> Path:
    """Grouped bars: ``values[metric][group][method] = (mean, sd)`` (sd None: no error bar).

    One panel per metric, one bar group per ``group`` (e.g. a test set), one bar colour per
    method; the error bars show ``sd`` (e.g. the spread over training seeds).
    """
    metrics = list(values)
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.2 * max(1, len(metrics)), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        groups = list(values[metric])
        methods = list(dict.fromkeys(m for g in groups for m in values[metric][g]))
        width = 0.8 / max(1, len(methods))
        for k, method in enumerate(methods):
            xs, ys, errs = [], [], []
            for i, g in enumerate(groups):
                mean, sd = values[metric][g].get(method, (None, None))
                if mean is not None:
                    xs.append(i + (k - (len(methods) - 1) / 2) * width)
                    ys.append(mean)
                    errs.append(sd or 0.0)
            ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=method)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_title(_LABELS.get(metric, metric))
        ax.grid(alpha=0.3, axis="y")
        finite = [v[0] for g in groups for v in values[metric][g].values() if v[0] is not None]
        if finite and metric == "psnr_y":  # PSNR bars start near the data, not at 0 dB
            ax.set_ylim(min(finite) - 2.0, max(finite) + 1.0)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def _display(x: torch.Tensor, zoom: int) -> torch.Tensor:
    """``[3, h, w]`` in [-1, 1] -> ``[h * zoom, w * zoom, 3]`` in [0, 1] (nearest: pixels stay visible)."""
    x = x.detach().float().cpu().clamp(-1, 1)
    if zoom > 1:
        x = F.interpolate(x[None], scale_factor=zoom, mode="nearest")[0]
    return ((x + 1) / 2).permute(1, 2, 0)


def plot_crops(crops: Mapping[str, Mapping[float, torch.Tensor]], path: str | Path, title: str = "",
               heldout: Mapping[float, bool | None] | None = None, zoom: int = 2) -> Path:
    """A strip of zoomed crops: rows = image sources (``"real"`` first), columns = scales.

    ``crops``: ``{row name: {scale: [3, h, w] in [-1, 1]}}``, all crops of the same size.
    Columns are titled with the scale (``held-out`` marked), rows with their source.
    """
    rows = ["real"] + [r for r in crops if r != "real"] if "real" in crops else list(crops)
    scales = sorted({float(s) for r in rows for s in crops[r]})
    fig, axes = plt.subplots(len(rows), len(scales), figsize=(1.9 * len(scales), 1.9 * len(rows) + 0.4),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j, s in enumerate(scales):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            img = next((v for k, v in crops[row].items() if abs(float(k) - s) < 1e-6), None)
            if img is not None:
                ax.imshow(_display(img, zoom).numpy(), interpolation="nearest")
            if i == 0:
                mark = " (held-out)" if heldout and heldout.get(s) else ""
                ax.set_title(f"x{s:g}{mark}", fontsize=9)
            if j == 0:
                ax.set_ylabel("real LR" if row == "real" else row, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


#: history keys that are not losses (drawn nowhere, or in their own panel)
_NOT_LOSSES = ("train/lr", "train/steps_per_s", "train/data_wait", "train/gpu_peak_gib", "train/grad_norm")


def plot_loss_curve(history: Sequence[Mapping[str, object]], path: str | Path, title: str = "") -> Path | None:
    """Training losses vs step (log y), and validation Y-PSNR per scale vs step when logged.

    ``history``: rows of ``history.jsonl``, ``{"step": int, "train/<name>": float, ...,
    "val/<scale>/psnr_y": float, ...}``. Returns None (nothing written) when no row holds a loss.
    """
    losses = sorted({k for row in history for k in row if k.startswith("train/") and k not in _NOT_LOSSES
                     and not k.startswith("train/knot_t")}, key=lambda k: (k != "train/loss", k))
    val = sorted({k for row in history for k in row if k.startswith("val/") and k.endswith("/psnr_y")},
                 key=lambda k: parse_scale(k.split("/")[1].removeprefix("x")) or 0.0)

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(row["step"]), float(row[key])) for row in history
               if isinstance(row.get(key), (int, float)) and row.get("step") is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    if not any(series(k)[0] for k in losses):
        return None
    panels = 2 if val else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    for k, key in enumerate(losses):
        steps, values = series(key)
        if steps and all(v > 0 for v in values):
            ax.plot(steps, values, linestyle=_DASHES[k % len(_DASHES)], label=key.removeprefix("train/"))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if val:
        ax = axes[0][1]
        for k, key in enumerate(val):
            steps, values = series(key)
            ax.plot(steps, values, marker=_MARKERS[k % len(_MARKERS)], linestyle=_DASHES[k % len(_DASHES)],
                    label=key.split("/")[1])
        ax.set_xlabel("step")
        ax.set_title("validation " + _LABELS["psnr_y"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
