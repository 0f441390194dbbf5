"""Knot-gap diagnostics (study-only): where the generated latent leaves the path it was trained on.

Pure functions over a velocity field ``v(z [B, C, H, W], t [B]) -> [B, C, H, W]`` and the
knot latents of real images; ``knot_gap.py`` beside this file runs them on a trained checkpoint.

- :func:`velocity_error_by_time`: the regression error of v on the path, per time
  (E || v(mu(t), t) - mu'(t) ||^2, the flow-matching loss without its time average);
- :func:`latent_error`: per-sample mean squared error of a latent and its share of a
  reference displacement (how much of the way from z_0 to the knot was missed);
- :func:`split_tiles` / :func:`merge_tiles`: non-overlapping square tiles, to score the
  same images at the training crop size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from degflow.core.spline import evaluate_path

__all__ = ["velocity_error_by_time", "latent_error", "split_tiles", "merge_tiles"]

Velocity = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def velocity_error_by_time(velocity: Velocity, knots: Tensor, knot_times: Tensor, times: Tensor,
                           path: str = "cubic") -> tuple[Tensor, Tensor]:
    """Squared velocity error against the path derivative at each time, for every sample.

    Args:
        velocity: ``(z [B, C, H, W], t [B]) -> [B, C, H, W]``.
        knots: ``[B, K, C, H, W]`` knot latents (index 0 = the HR latent).
        knot_times: ``[K]`` increasing knot times.
        times: ``[T]`` times at which to compare.
        path: ``cubic`` | ``linear`` (:func:`degflow.core.spline.evaluate_path`).
    Returns:
        ``(error [T, B], target [T, B])``: mean over C, H, W of (v - mu')^2 and of mu'^2
        (so ``error / target`` is the relative error; 1 = no better than v = 0).
    """
    b = knots.shape[0]
    errors, targets = [], []
    for t in times.tolist():
        tt = torch.full((b,), float(t), dtype=knots.dtype, device=knots.device)
        point = evaluate_path(path, knot_times.to(knots), knots, tt)
        v = velocity(point.value, tt).to(knots.dtype)                         # [B,C,H,W]
        errors.append((v - point.d1).pow(2).flatten(1).mean(1))               # [B]
        targets.append(point.d1.pow(2).flatten(1).mean(1))                    # [B]
    return torch.stack(errors), torch.stack(targets)


def latent_error(estimate: Tensor, reference: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
    """How far ``estimate`` lands from ``reference``, absolutely and relative to the way there.

    Args:
        estimate: ``[B, C, H, W]`` e.g. the generated latent at a knot time.
        reference: ``[B, C, H, W]`` e.g. the real encoded knot latent.
        start: ``[B, C, H, W]`` where the way began (the HR latent z_0).
    Returns:
        ``(mse [B], relative [B])``: mean over C, H, W of (estimate - reference)^2, and
        ``||estimate - reference||^2 / ||reference - start||^2`` (1 = no closer than staying
        at ``start``; nan where reference == start).
    """
    diff = (estimate - reference).flatten(1).pow(2)
    way = (reference - start).flatten(1).pow(2).sum(1)
    return diff.mean(1), diff.sum(1) / way


def split_tiles(x: Tensor, size: int) -> Tensor:
    """Non-overlapping ``size x size`` tiles, row-major per image.

    Args:
        x: ``[B, C, H, W]`` with H and W multiples of ``size``.
    Returns:
        ``[B * (H/size) * (W/size), C, size, size]``.
    """
    b, c, h, w = x.shape
    if size < 1 or h % size or w % size:
        raise ValueError(f"split_tiles: H={h} and W={w} must be multiples of the tile size {size}")
    tiles = x.view(b, c, h // size, size, w // size, size).permute(0, 2, 4, 1, 3, 5)   # [B,h',w',C,s,s]
    return tiles.reshape(-1, c, size, size)


def merge_tiles(tiles: Tensor, batch: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`split_tiles`: ``[B * (H/s) * (W/s), C, s, s]`` -> ``[B, C, H, W]``."""
    n, c, size, _ = tiles.shape
    rows, cols = height // size, width // size
    if rows * size != height or cols * size != width or n != batch * rows * cols:
        raise ValueError(f"merge_tiles: {n} tiles of {size} px do not make {batch} image(s) of {height}x{width}")
    grid = tiles.view(batch, rows, cols, c, size, size).permute(0, 3, 1, 4, 2, 5)       # [B,C,h',s,w',s]
    return grid.reshape(batch, c, height, width)
