"""What a training run tells its user, beside its checkpoints.

- a log line of the losses every ``stage.log_every`` steps and one of the validation summary
  (into the run folder's ``train.log`` and the console; readable when stdout is a file);
- ``loss_curve.png``: losses and validation Y-PSNR vs step, redrawn at every validation from
  ``history.jsonl``;
- at the end, where everything is: metrics, checkpoints, history, pictures, the log.

The training loop calls these functions; nothing here changes what is trained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from degflow.infra.console import say

log = logging.getLogger(__name__)

__all__ = ["LOG_FILE", "LOSS_CURVE", "log_losses", "after_validation", "write_loss_curve", "run_outputs",
           "announce_outputs"]

LOG_FILE = "train.log"          # Hydra names it after train.py; runs started from Python use the same name
LOSS_CURVE = "loss_curve.png"
_SHOWN_FIRST = ("loss",)


def log_losses(kind: str, step: int, total: int, scalars: Mapping[str, float]) -> None:
    """One line: ``[lfm step 50/500] loss=0.1234 fm=0.1 lpips=0.2 lr=9.9e-04 steps/s=3.1``."""
    names = [k for k in _SHOWN_FIRST if k in scalars] + sorted(k for k in scalars if k not in _SHOWN_FIRST)
    parts = [f"{('steps/s' if k == 'steps_per_s' else k)}={scalars[k]:.4g}" for k in names]
    log.info("[%s step %d/%d] %s", kind, step, total, " ".join(parts))


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``{run_dir}/history.jsonl`` (a last line cut short by a kill is skipped)."""
    path = Path(run_dir) / "history.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def write_loss_curve(run_dir: str | Path, title: str = "") -> Path | None:
    """Draw ``{run_dir}/loss_curve.png`` from ``history.jsonl`` (atomic); None if nothing was logged."""
    from degflow.viz.plots import plot_loss_curve

    return plot_loss_curve(read_history(run_dir), Path(run_dir) / LOSS_CURVE, title=title)


def after_validation(run_dir: str | Path, kind: str, step: int, total: int, summary: str) -> None:
    """Log the validation summary and redraw the loss curve.

    A failure to draw is logged, never fatal: the run's checkpoint matters more than its picture.
    """
    log.info("[%s step %d/%d] validation: %s", kind, step, total, summary)
    try:
        name = Path(run_dir).name
        write_loss_curve(run_dir, title=kind if name in (kind, "default") else f"{kind}: {name}")
    except (OSError, ValueError, RuntimeError) as err:
        log.warning("loss curve not drawn: %s", err)


def run_outputs(run_dir: str | Path) -> dict[str, Path]:
    """What a finished run left and where: the files and folders that exist, by kind."""
    run_dir = Path(run_dir)
    images = run_dir / "images"
    strips = sorted(images.glob("*.png")) if images.is_dir() else []
    candidates = {
        "run folder": run_dir,
        "metrics": run_dir / "metrics.json",
        "checkpoint": run_dir / "checkpoints" / "last.pt",
        "history": run_dir / "history.jsonl",
        "loss curve": run_dir / LOSS_CURVE,
        "image strip": strips[-1] if strips else images / "none",
        "log": run_dir / LOG_FILE,
    }
    return {k: p for k, p in candidates.items() if p.exists()}


def announce_outputs(run_dir: str | Path, kind: str) -> str:
    """Log (and print, when no console handler shows the log) where the run's results, checkpoints and pictures are; returns the text."""
    run_dir = Path(run_dir)
    lines = [f"{kind} run finished. Results in {run_dir}/"]
    lines += [f"  {k + ':':13s}{p.relative_to(run_dir)}" for k, p in run_outputs(run_dir).items() if k != "run folder"]
    if kind == "rae":
        lines.append("  next: python train.py stage=lfm   (uses the newest finished RAE run; or rae_ckpt=<checkpoint>)")
    elif kind == "lfm":
        lines.append(f"  next: python synthesize.py ckpt={Path(run_dir) / 'checkpoints' / 'last.pt'} "
                     "input=<HR folder> out=<dataset folder>")
    text = "\n".join(lines)
    say(log, text)
    return text
