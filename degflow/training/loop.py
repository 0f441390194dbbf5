"""The training loop shared by both stages: schedule, resume, validation, checkpoints.

A stage (``degflow/training/rae.py``, ``degflow/training/lfm.py``) subclasses :class:`Stage`
and says what one step computes, how to validate, and what its checkpoint carries. This
module owns everything else, identically for both stages:

- Adam with linear warm-up then cosine decay to ``min_lr``;
- resume by default: a run directory that holds ``checkpoints/last.pt`` continues from it
  (model, optimizer, scheduler, step, RNG state), which is what a requeued cluster job needs;
- atomic checkpoints: ``last.pt`` at every validation and at the end, ``step_XXXXXXX.pt``
  every ``ckpt_every`` steps;
- validation every ``val_every`` steps and at the end, a one-line summary, ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from degflow.checkpoint import (
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from degflow.loggers import json_safe

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation schedule of one stage (config group ``stage``)."""

    name: str
    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float | None = None
    val_every: int = 500
    ckpt_every: int = 1000
    log_every: int = 25

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "val_every", "ckpt_every", "log_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"stage.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"stage.lr must be > 0 and 0 <= stage.min_lr <= stage.lr, got lr={self.lr}, "
                             f"min_lr={self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"stage.warmup_steps must be >= 0, got {self.warmup_steps}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


@dataclass
class RunContext:
    """Where and how a stage runs: run directory, device, precision, logger, resolved config."""

    run_dir: Path
    device: torch.device
    precision: str = "fp32"
    logger: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    resume: bool = True
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices): model initialisation, data
    sampling and noise draws of a fresh run then depend on ``seed`` alone (config ``seed``)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: str) -> torch.device:
    """``device`` config value -> torch.device: ``auto`` picks CUDA when present, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r} was requested but CUDA is not available here; use device=auto or cpu")
        return torch.device(spec)
    raise ValueError(f"device={spec!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:N']")


def autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision='bf16'`` (CUDA, or CPU: fast on CPUs with AMX / AVX512-BF16,
    slow elsewhere); a no-op for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def warmup_cosine(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def infinite_batches(dataset, batch_size: int, num_workers: int, device: torch.device) -> Iterator[dict]:
    """Endless shuffled batches from ``dataset`` (items: dicts of tensors and names)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
    )
    if len(loader) == 0:
        raise ValueError(f"the training set yields {len(dataset)} samples per epoch, fewer than "
                         f"stage.batch_size={batch_size}")
    while True:
        for batch in loader:
            yield {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Stage:
    """One training stage. Subclasses set ``kind`` and implement the hooks below."""

    kind: str = ""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def training_set(self, dataset):
        """The dataset batches are drawn from (default: the data option's training set)."""
        return dataset

    def train_modules(self) -> list[torch.nn.Module]:
        """Modules switched to train() mode during steps (and back to eval() for validation)."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch and scalars to log."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any]:
        """Validation metrics: ``{"scales": {str(s): {metric: value}}, "summary": str, ...}``."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Checkpoint fields beyond the loop's own (``models``, ``train_scales``, ``time_map``, ``extra``)."""
        raise NotImplementedError

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore trainable weights from a checkpoint written by :meth:`state`."""
        raise NotImplementedError


def fit(stage: Stage, train_set, settings: TrainSettings, ctx: RunContext) -> dict[str, Any]:
    """Train ``stage`` for ``settings.steps`` steps, resuming from ``{run_dir}/checkpoints/last.pt``.

    Returns the final validation metrics (also written to ``{run_dir}/metrics.json``).
    """
    params = stage.trainable_parameters()
    # fused: one kernel for all parameters (same update; ~4x faster than the per-tensor loop on CPU)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    optimizer = torch.optim.Adam(params, lr=settings.lr, betas=settings.betas, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, settings.steps, settings.warmup_steps, settings.lr, settings.min_lr)
        / settings.lr,
    )
    step = 0
    last = ctx.ckpt_dir / "last.pt"
    if ctx.resume and last.exists():
        ckpt = load_checkpoint(last, kind=stage.kind, key="resume")
        stage.load_state(ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d", last, step)
    else:
        torch.manual_seed(ctx.seed)

    def save(path: Path) -> None:
        save_checkpoint(path, {
            "kind": stage.kind, "step": step, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": capture_rng_state(), "config": ctx.config,
            "overrides": list(ctx.overrides), **stage.state(),
        })

    def validate() -> dict[str, Any]:
        for m in stage.train_modules():
            m.eval()
        t0 = time.perf_counter()
        metrics = stage.validate(step)
        images = metrics.pop("images", {})
        metrics.update(stage=stage.kind, step=step, overrides=list(ctx.overrides),
                       validation_seconds=round(time.perf_counter() - t0, 3))
        atomic_write_text(ctx.run_dir / "metrics.json",
                          json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
        flat = {f"val/{s}/{k}": v for s, row in metrics["scales"].items() for k, v in row.items()
                if isinstance(v, (int, float))}
        if ctx.logger is not None:
            ctx.logger.log(flat, step)
            for key, (image, caption) in images.items():
                ctx.logger.log_image(key, image, step, caption)
        tqdm.write(f"[{stage.kind} step {step}/{settings.steps}] {metrics['summary']}")
        for m in stage.train_modules():
            m.train()
        return metrics

    metrics: dict[str, Any] | None = None
    if step >= settings.steps:
        log.info("run already finished (%d/%d steps); validating the final weights", step, settings.steps)
        metrics = validate()
        return metrics

    batches = infinite_batches(train_set, settings.batch_size, ctx.num_workers, ctx.device)
    for m in stage.train_modules():
        m.train()
    bar = tqdm(total=settings.steps, initial=step, desc=f"{stage.kind}", dynamic_ncols=True,
               disable=not ctx.progress, mininterval=1.0)
    t_last = time.perf_counter()
    while step < settings.steps:
        batch = next(batches)
        with autocast(ctx.device, ctx.precision):
            loss, scalars = stage.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}; last good checkpoint: {last}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip is not None:
            scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, settings.grad_clip))
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % settings.log_every == 0 or step == settings.steps:
            now = time.perf_counter()
            scalars.update(loss=float(loss.detach()), lr=scheduler.get_last_lr()[0],
                           steps_per_s=settings.log_every / max(now - t_last, 1e-9))
            t_last = now
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            if ctx.logger is not None:
                ctx.logger.log({f"train/{k}": v for k, v in scalars.items()}, step)
        validating = step % settings.val_every == 0 or step == settings.steps
        if validating:
            metrics = validate()
        if step % settings.ckpt_every == 0:
            save(ctx.ckpt_dir / f"step_{step:07d}.pt")
        if validating or step % settings.ckpt_every == 0:
            save(last)
    bar.close()
    assert metrics is not None
    return metrics
