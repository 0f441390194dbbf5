"""Experiment loggers: wandb (offline by default) or none, plus a local history file.

Every logger also appends its scalars to ``{run_dir}/history.jsonl`` so runs can be compared
without any tracker. A resumed run first calls :meth:`NullLogger.rewind` with its checkpoint's
step: rows logged after that step (by the interrupted process, which will redo those steps)
are dropped, so every step appears once.

The wandb run id is kept in ``{run_dir}/wandb_id.txt``: a resumed job (same run directory,
e.g. a requeued SLURM job) continues the same wandb run. wandb's step only goes forward, so
after a rewind the resumed run sends wandb nothing up to the highest step the interrupted
process had logged (kept in ``{run_dir}/wandb_step.txt``): wandb keeps those values, which an
exact resume reproduces anyway, and never sees a step twice or a step go back.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import torch

from degflow.infra.files import atomic_write_text

log = logging.getLogger(__name__)

LOGGER_KINDS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (inf, nan) replaced by None, recursively, so
    ``json.dumps(..., allow_nan=False)`` writes strict JSON (e.g. PSNR of identical images)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class NullLogger:
    """Console-free logger that only keeps ``history.jsonl`` in the run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._history = self.run_dir / "history.jsonl"

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record scalar ``metrics`` at ``step``."""
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self._history, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")

    def rewind(self, step: int) -> int:
        """Forget what was logged after ``step`` (a resumed run redoes those steps).

        ``history.jsonl`` is rewritten atomically without its rows past ``step`` (and without a
        last line cut short by a kill). Returns the highest step the file held (0 if none).
        """
        if not self._history.exists():
            return 0
        lines = self._history.read_text(encoding="utf-8").splitlines()
        kept, high = [], 0
        for line in lines:
            try:
                row_step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
            high = max(high, row_step)
            if row_step <= step:
                kept.append(line)
        if len(kept) != len(lines):
            log.info("history.jsonl: dropped %d row(s) logged after step %d", len(lines) - len(kept), step)
            atomic_write_text(self._history, "".join(line + "\n" for line in kept))
        return high

    def log_image(self, key: str, image: torch.Tensor, step: int, caption: str = "") -> None:
        """Record an image ``[3, H, W]`` in [-1, 1] (saved as PNG under ``{run_dir}/images``)."""
        from degflow.data.images import write_image

        write_image(self.run_dir / "images" / f"{key.replace('/', '_')}_{int(step):07d}.png", image)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (idempotent)."""


class WandbLogger(NullLogger):
    """Weights & Biases logger; ``mode='offline'`` needs no account and no network."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any], mode: str = "offline",
                 project: str = "degflow", entity: str | None = None, group: str | None = None,
                 tags: list[str] | tuple[str, ...] = (), name: str | None = None):
        super().__init__(run_dir)
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={mode!r} is not one of {list(WANDB_MODES)}")
        import wandb

        self._step_file = self.run_dir / "wandb_step.txt"
        self._logged_through = int(self._step_file.read_text()) if self._step_file.exists() else 0
        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self._wandb = wandb
        self._run = wandb.init(
            dir=str(self.run_dir), id=run_id, resume="allow", mode=mode, project=project, entity=entity,
            group=group, tags=list(tags), name=name or self.run_dir.name, config=config,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        self._finished = False

    def rewind(self, step: int) -> int:
        high = super().rewind(step)
        if high > self._logged_through:  # wandb holds rows up to here: do not send them again
            self._logged_through = high
            atomic_write_text(self._step_file, f"{high}\n")
        return high

    def log(self, metrics: dict[str, Any], step: int) -> None:
        super().log(metrics, step)
        if step > self._logged_through:
            self._run.log({k: _plain(v) for k, v in metrics.items()}, step=int(step))

    def log_image(self, key: str, image: torch.Tensor, step: int, caption: str = "") -> None:
        super().log_image(key, image, step, caption)
        if step <= self._logged_through:
            return
        array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        self._run.log({key: self._wandb.Image(array, caption=caption)}, step=int(step))

    def finish(self, exit_code: int = 0) -> None:
        if not self._finished:
            self._finished = True
            self._run.finish(exit_code=exit_code)


def build_logger(kind: str, run_dir: str | Path, config: dict[str, Any], **options: Any) -> NullLogger:
    """Create the logger selected by ``logger.kind`` (``none`` or ``wandb``)."""
    if kind == "none":
        return NullLogger(run_dir)
    if kind == "wandb":
        return WandbLogger(run_dir, config, **options)
    raise ValueError(f"logger.kind={kind!r} is not one of {list(LOGGER_KINDS)} (choose with logger=wandb|none)")
