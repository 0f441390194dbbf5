"""The training loop shared by both stages: schedule, resume, validation, checkpoints.

A stage (``degflow/training/rae.py``, ``degflow/training/lfm.py``) subclasses :class:`Stage`
and says what one step computes, how to validate, and what its checkpoint carries. This
module owns everything else, identically for both stages:

- Adam with linear warm-up then cosine decay to ``min_lr``;
- exact resume by default: a run directory that holds ``checkpoints/last.pt`` continues from
  it (model, optimizer, scheduler, step, RNG state) as if never interrupted: the batch of
  step k is a pure function of (seed, k) (``sampling.py``), every other random draw comes
  from the restored RNG state, and ``history.jsonl`` forgets what was logged after the
  checkpoint. This is what a requeued cluster job needs;
- atomic checkpoints: ``last.pt`` every ``ckpt_every`` steps, every ``ckpt_minutes`` minutes,
  at every validation, at the end and on a stop signal (``stop.py``); a kept
  ``step_XXXXXXX.pt`` copy every ``keep_every`` steps when set;
- validation every ``val_every`` steps and at the end, a one-line summary, ``metrics.json``;
- at every log step, besides the losses: steps per second and the data-wait share of the
  step time (:data:`TIMING_SCALARS`); nothing in a step waits for the GPU except the loss
  values the stage reads (scalars such as the gradient norm are read at log steps only);
- data parallel when the job has several processes (``distributed.py``): each takes its rows of
  the same global batch, DDP averages the gradients, rank 0 alone logs, validates and writes
  files while the others wait at a barrier, and every decision that must match across ranks
  (stop, non-finite loss, an overdue checkpoint) is agreed on by all of them.

What the run tells its user (loss and validation lines in ``train.log``, ``loss_curve.png``,
progress bars only on a terminal) lives in ``run_report.py`` and ``degflow/infra/console.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from degflow.infra.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from degflow.infra.checks import check_positive_int
from degflow.infra.cluster import SINGLE, DistEnv
from degflow.infra.console import bar_safe_logging, progress_bar
from degflow.infra.files import atomic_write_text
from degflow.infra.runtime import autocast
from degflow.training.distributed import (
    agree,
    barrier,
    data_parallel_loss,
    from_main,
    local_batch_size,
    mean_over_ranks,
)
from degflow.training.loggers import json_safe
from degflow.training.run_report import after_validation, log_losses
from degflow.training.sampling import RowDraws, step_seed, train_batches
from degflow.training.stop import StopSignals

log = logging.getLogger(__name__)

#: Logged training scalars that measure the machine, not the run (a resumed run logs other
#: values): steps per second, ``data_wait``, the share of the step time spent waiting for
#: the next batch (DataLoader workers, ``num_workers``, keep it near 0 on a GPU), and on a
#: GPU ``gpu_peak_gib``, the peak memory allocated by this process so far.
TIMING_SCALARS = ("steps_per_s", "data_wait", "gpu_peak_gib")


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
    ckpt_every: int = 100
    ckpt_minutes: float | None = 5.0
    keep_every: int | None = None
    log_every: int = 25

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "val_every", "ckpt_every", "log_every", "keep_every"):
            value = getattr(self, key)
            if value is None and key == "keep_every":
                continue
            check_positive_int(value, f"stage.{key}", allow_none=key == "keep_every")
        if self.ckpt_minutes is not None and not self.ckpt_minutes > 0:
            raise ValueError(f"stage.ckpt_minutes must be > 0 or null (off), got {self.ckpt_minutes!r}")
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
    dist: DistEnv = SINGLE  # this process's rank in a data-parallel job (one process: SINGLE)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def warmup_cosine(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step``: linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class Stage:
    """One training stage. Subclasses set ``kind`` and implement the hooks below."""

    kind: str = ""
    progress: bool = True  # draw validation's progress bar (set by fit from RunContext.progress)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def training_set(self, dataset):
        """The dataset batches are drawn from (default: the data option's training set)."""
        return dataset

    def train_modules(self) -> list[torch.nn.Module]:
        """Modules switched to train() mode during steps (and back to eval() for validation)."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (this process's rows) and scalars to log; per-row random numbers
        come from ``batch["draws"]`` (a :class:`~degflow.training.sampling.RowDraws`)."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any]:
        """Validation metrics: ``{"scales": {str(s): {metric: value}}, "summary": str, ...}``."""
        raise NotImplementedError

    def after_step(self, updates: int) -> None:
        """Called after every optimizer step (``updates`` = steps done so far), e.g. to move an EMA."""

    def state(self) -> dict[str, Any]:
        """Checkpoint fields beyond the loop's own (``models``, ``train_scales``, ``time_map``, ``extra``)."""
        raise NotImplementedError

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore trainable weights from a checkpoint written by :meth:`state`."""
        raise NotImplementedError


def fit(stage: Stage, train_set, settings: TrainSettings, ctx: RunContext) -> dict[str, Any]:
    """Train ``stage`` for ``settings.steps`` steps, resuming from ``{run_dir}/checkpoints/last.pt``.

    Returns the final validation metrics (also written to ``{run_dir}/metrics.json``).
    Raises :class:`~degflow.training.stop.TrainingStopped` after a stop signal, once
    ``last.pt`` holds the step it stopped at.
    """
    params = stage.trainable_parameters()
    dp = ctx.dist  # data parallel: rank 0 of 1 in a plain run (every helper below is then a no-op)
    stage.progress = ctx.progress and dp.is_main  # validation's bar (run_report / console)
    local_batch_size(settings.batch_size, dp.world_size)  # refuses a global batch the ranks cannot share
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
    stale_files = [*ctx.run_dir.glob(".*.tmp"), *ctx.ckpt_dir.glob(".*.tmp")] if dp.is_main else []
    for stale in stale_files:  # temp files of a killed write
        log.info("removing %s, left by an interrupted write", stale)
        stale.unlink(missing_ok=True)
    if ctx.resume and last.exists():
        ckpt = load_checkpoint(last, kind=stage.kind, key="resume")
        stage.load_state(ckpt)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        del ckpt
        log.info("resumed from %s at step %d", last, step)
    else:
        torch.manual_seed(ctx.seed)
    if ctx.logger is not None:
        ctx.logger.rewind(step)  # steps after the checkpoint are redone: forget what they logged
    saved_at = time.monotonic()

    def save(path: Path) -> None:
        nonlocal saved_at
        if dp.is_main:
            save_checkpoint(path, {
                "kind": stage.kind, "step": step, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": capture_rng_state(), "config": ctx.config,
                "overrides": list(ctx.overrides), **stage.state(),
            })
        barrier(dp)  # no rank goes on (or exits) before the checkpoint is on disk
        saved_at = time.monotonic()

    def validate() -> dict[str, Any] | None:
        """Rank 0 validates and writes metrics.json; the other ranks wait and get None."""
        if not dp.is_main:
            barrier(dp)
            return None
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
        after_validation(ctx.run_dir, stage.kind, step, settings.steps, metrics["summary"])
        for m in stage.train_modules():
            m.train()
        barrier(dp)
        return metrics

    metrics: dict[str, Any] | None = None
    if step >= settings.steps:
        final = ctx.run_dir / "metrics.json"  # written by the final validation, just before last.pt
        if final.is_file() and json.loads(final.read_text()).get("step") == step:
            log.info("run already finished (%d/%d steps); its final metrics are in %s", step, settings.steps, final)
            return json.loads(final.read_text())
        log.info("run already finished (%d/%d steps); validating the final weights", step, settings.steps)
        return from_main(validate(), dp)

    batches = train_batches(train_set, ctx.seed, step, settings.batch_size, ctx.num_workers, ctx.device,
                            dp.rank, dp.world_size)
    step_loss = data_parallel_loss(stage.loss, params, ctx.device, dp)  # stage.loss itself for one process
    for m in stage.train_modules():
        m.train()
    bar = progress_bar(requested=ctx.progress and dp.is_main, total=settings.steps, initial=step,
                       desc=f"{stage.kind}", mininterval=1.0)
    t_last = time.perf_counter()
    waited = stepping = 0.0  # seconds waiting for batches / in steps, since the last log line
    with StopSignals() as stop, contextlib.closing(bar), contextlib.closing(batches), \
            bar_safe_logging(bar):  # closing: workers end
        while step < settings.steps:
            t_step = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - t_step
            batch["draws"] = RowDraws(ctx.seed, step, dp.rank, dp.world_size)  # the loss's per-row draws
            torch.manual_seed(step_seed(ctx.seed, step, dp.rank))  # draws inside the networks (dropout)
            with autocast(ctx.device, ctx.precision):
                loss, scalars = step_loss(batch)
            if agree([int(not torch.isfinite(loss))], dp)[0]:  # on any rank: all stop here
                raise FloatingPointError(f"non-finite loss (here {loss.item()}) at step {step}; "
                                         f"last good checkpoint: {last}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:  # a tensor: read at log steps only (no wait for the GPU here)
                scalars["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            stage.after_step(step)
            stepping += time.perf_counter() - t_step
            bar.update(1)
            if step % settings.log_every == 0 or step == settings.steps:
                scalars = {k: float(v) for k, v in scalars.items()}
                scalars = mean_over_ranks({**scalars, "loss": float(loss.detach())}, dp)  # of the global batch
                now = time.perf_counter()
                # data_wait: the share of the steps' time spent waiting for the next batch
                scalars.update(lr=scheduler.get_last_lr()[0],
                               steps_per_s=settings.log_every / max(now - t_last, 1e-9),
                               data_wait=waited / max(stepping, 1e-9))
                t_last, waited, stepping = now, 0.0, 0.0
                if ctx.device.type == "cuda":
                    scalars["gpu_peak_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
                bar.set_postfix(loss=f"{scalars['loss']:.4g}")
                if ctx.logger is not None:
                    ctx.logger.log({f"train/{k}": v for k, v in scalars.items()}, step)
                if dp.is_main:
                    log_losses(stage.kind, step, settings.steps, scalars)
            validating = step % settings.val_every == 0 or step == settings.steps
            if validating:
                metrics = validate()
            keep = settings.keep_every is not None and step % settings.keep_every == 0
            overdue = settings.ckpt_minutes is not None and time.monotonic() - saved_at >= 60 * settings.ckpt_minutes
            # a signal any rank got, and rank 0's clock, decide for all ranks (the same saves, the same stop)
            signum, overdue = agree([stop.signum or 0, int(overdue and dp.is_main)], dp)
            if signum:
                stop.request(signum)
            if keep:
                save(ctx.ckpt_dir / f"step_{step:07d}.pt")
            if validating or overdue or keep or signum or step % settings.ckpt_every == 0:
                save(last)
            if signum and step < settings.steps:
                bar.clear()
                # raises TrainingStopped, or hands the signal to the launcher's own handler
                stop.after_checkpoint(step, settings.steps, last, chain=dp.is_main, may_continue=not dp.enabled)
        if stop.requested:
            log.warning("a stop signal arrived as training finished: the run is complete (%s)", last)
    metrics = from_main(metrics, dp)
    assert metrics is not None
    return metrics
