"""Training one SR network on a training set: seeded, resumable, L1 loss on random patches.

:func:`train_sr` draws every batch from one ``torch.Generator`` seeded with ``seed`` (patch
positions, flips / rotations and, for ``liif``, the queried HR pixels), so a run is a pure
function of (data, settings, seed). It writes ``{run_dir}/checkpoints/last.pt`` every
``ckpt_every`` steps and at the end (atomically; model, optimizer, generator state, step,
loss history); calling it again on the same folder continues from there, and a finished run
returns at once. Checkpoints are loaded with ``weights_only=True``.

Learning rate: Adam, cosine decay from ``lr`` to ``lr * min_lr_ratio`` over ``steps``.

Networks (:mod:`degflow.models.sr`): ``edsr`` trains on whole HR patches (every pair must
have its scale); ``liif`` on ``query_pixels`` random pixels of each sample's HR patch with
their coordinates and cell size, so one batch mixes any scales.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from degflow.data.sr_pairs import sample_patches
from degflow.infra.checks import check_positive_int
from degflow.infra.digests import damage_message, describe_load_error, file_digest, save_sealed
from degflow.models.sr import make_coord

__all__ = ["SRTrainSettings", "load_sr_checkpoint", "sr_loss", "train_sr"]


@dataclass(frozen=True)
class SRTrainSettings:
    """Training settings (config node ``sr``)."""

    steps: int = 600
    batch_size: int = 8
    lr_patch: int = 24               # LR patch side (pixels)
    lr: float = 2e-4
    min_lr_ratio: float = 0.01
    query_pixels: int = 1024         # liif: HR pixels queried per sample
    ckpt_every: int = 200
    log_every: int = 50

    def __post_init__(self):
        for key in ("steps", "batch_size", "lr_patch", "query_pixels", "ckpt_every", "log_every"):
            v = getattr(self, key)
            check_positive_int(v, f"sr.{key}")
        if not self.lr > 0 or not 0 < self.min_lr_ratio <= 1:
            raise ValueError(f"sr.lr must be > 0 and sr.min_lr_ratio in (0, 1]; got {self.lr!r}, "
                             f"{self.min_lr_ratio!r}")


def _learning_rate(s: SRTrainSettings, step: int) -> float:
    """Cosine from ``lr`` (step 0) to ``lr * min_lr_ratio`` (the last step)."""
    frac = step / max(1, s.steps - 1)
    lo = s.lr * s.min_lr_ratio
    return lo + 0.5 * (s.lr - lo) * (1 + math.cos(math.pi * frac))


def sr_loss(model: nn.Module, batch: list[tuple[Tensor, Tensor, float]], query_pixels: int,
           generator: torch.Generator) -> Tensor:
    """The L1 loss of one batch ``[(lr [3, p, p], hr [3, P, P], scale)]``: ``edsr`` on whole HR patches,
    ``liif`` on ``query_pixels`` random HR pixels per sample (drawn from ``generator``)."""
    lr = torch.stack([b[0] for b in batch])                                   # [B, 3, p, p]
    if model.config["network"] == "edsr":
        scales = {b[2] for b in batch}
        if scales != {float(model.scale)}:
            raise ValueError(f"sr.network=edsr x{model.scale} cannot train on pairs at scale(s) "
                             f"{sorted(scales)}; use pairs at x{model.scale} only, or sr.network=liif")
        hr = torch.stack([b[1] for b in batch])                               # [B, 3, s p, s p]
        if hr.shape[-1] != model.scale * lr.shape[-1]:
            raise ValueError(f"HR patch {hr.shape[-1]} px is not x{model.scale} of the LR patch "
                             f"{lr.shape[-1]} px: the LR images are not true-LR-size x{model.scale} images")
        return F.l1_loss(model(lr), hr)
    coords, cells, bases, targets = [], [], [], []
    for lr_p, hr_p, _ in batch:
        size = hr_p.shape[-1]
        idx = torch.randint(size * size, (query_pixels,), generator=generator)         # [Q]
        coords.append(make_coord(size, size).view(-1, 2)[idx])                          # [Q, 2]
        cells.append(torch.full((query_pixels, 2), 2.0 / size))
        base = F.interpolate(lr_p[None], size=(size, size), mode="bicubic", align_corners=False)[0]
        bases.append(base.view(3, -1)[:, idx].t())                                     # [Q, 3]
        targets.append(hr_p.reshape(3, -1)[:, idx].t())
    pred = model.forward_points(lr, torch.stack(coords), torch.stack(cells), torch.stack(bases))
    return F.l1_loss(pred, torch.stack(targets))


def load_sr_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`train_sr`, its digest verified first (``weights_only=True``:
    no code is unpickled). ValueError, one line naming the file, for a damaged or unreadable one."""
    path = Path(path)
    found = file_digest(path)
    if not found.intact:
        raise ValueError(damage_message(found))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # cut short, or not a plain-tensor file
        raise ValueError(f"{str(path)!r} could not be read as an SR checkpoint: {describe_load_error(err)}") from None


def train_sr(model: nn.Module, data: Sequence[tuple[Tensor, Tensor, float]] | None, settings: SRTrainSettings,
             seed: int, run_dir: str | Path, log=print, *,
             source: Callable[[torch.Generator], list[tuple[Tensor, Tensor, float]]] | None = None,
             scale_log=None) -> dict:
    """Train ``model`` on ``data`` (:func:`degflow.data.sr_pairs.load_pairs`) in ``run_dir``; resumes.

    Build ``model`` after seeding torch with ``seed`` (its initialisation is part of the run).
    ``source`` replaces ``data`` by a batch source ``source(generator) -> [(lr, hr, scale)]`` drawing
    from the run's generator (the online path, :func:`degflow.sr.online.online_source`); its
    ``scale_log`` (:class:`degflow.sr.online.ScaleLog`) is saved in the checkpoint and restored on resume.

    Returns ``{"steps", "seconds" (this call's training wall time), "seconds_total" (all
    attempts), "loss_history" [[step, mean L1 of the last log_every steps], ...], "resumed_from"}``.
    """
    if (source is None) == (data is None):
        raise ValueError("train_sr: give the training pairs (data) or an online batch source (source), not both")
    if source is None:
        def source(g: torch.Generator) -> list[tuple[Tensor, Tensor, float]]:
            return sample_patches(data, settings.batch_size, settings.lr_patch, g)
    ckpt_path = Path(run_dir) / "checkpoints" / "last.pt"
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(int(seed))
    step, history, seconds_before, resumed_from = 0, [], 0.0, None
    if ckpt_path.is_file():
        state = load_sr_checkpoint(ckpt_path)
        if state["settings"] != asdict(settings) or state["model_config"] != model.config or state["seed"] != seed:
            raise ValueError(f"{ckpt_path} was written with other settings ({state['settings']}, "
                             f"{state['model_config']}, seed {state['seed']}); use a new run folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, history, seconds_before = int(state["step"]), list(state["loss_history"]), float(state["seconds"])
        if scale_log is not None:
            scale_log.records = list(state.get("scale_log", []))
        resumed_from = step
        log(f"resumed from {ckpt_path} at step {step}")

    def save(seconds: float) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                 "step": step, "loss_history": history, "seconds": seconds, "seed": seed,
                 "settings": asdict(settings), "model_config": model.config}
        if scale_log is not None:
            state["scale_log"] = scale_log.records
        save_sealed(ckpt_path, state)           # atomic, with its digest (docs/INTEGRITY.md)

    model.train()
    start, running = time.perf_counter(), []
    while step < settings.steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(settings, step)
        batch = source(generator)
        loss = sr_loss(model, batch, settings.query_pixels, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running.append(loss.item())
        if step % settings.log_every == 0 or step == settings.steps:
            history.append([step, sum(running) / len(running)])
            log(f"step {step}/{settings.steps} L1 {history[-1][1]:.4f} ({time.perf_counter() - start:.0f} s)")
            running = []
        if step % settings.ckpt_every == 0 or step == settings.steps:
            save(seconds_before + time.perf_counter() - start)
    model.eval()
    seconds = time.perf_counter() - start
    return {"steps": step, "seconds": seconds, "seconds_total": seconds_before + seconds,
            "loss_history": history, "resumed_from": resumed_from}
