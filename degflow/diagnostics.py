"""Knot-gap diagnostics: where the generated latent leaves the path it was trained on.

Pure functions over a velocity field ``v(z [B, C, H, W], t [B]) -> [B, C, H, W]`` and the
knot latents of real images; ``experiments/knot_gap.py`` runs them on a trained checkpoint.

- :func:`velocity_error_by_time`: the regression error of v on the path, per time
  (E || v(mu(t), t) - mu'(t) ||^2, the flow-matching loss without its time average);
- :func:`latent_error`: per-sample mean squared error of a latent and its share of a
  reference displacement (how much of the way from z_0 to the knot was missed);
- :func:`split_tiles` / :func:`merge_tiles`: non-overlapping square tiles, to score the
  same images at the training crop size.

How much of a real LR capture is a function of its HR image at all (the ceiling a
deterministic HR -> LR generator can reach; ``experiments/knot_ceiling.py``):

- :func:`linear_degradation_design`, :func:`linear_degradation_normal_equations`,
  :func:`solve_linear_degradation`, :func:`apply_linear_degradation`: the least-squares linear
  degradation LR = blur-and-subsample(HR) with a free ``support x support`` kernel from all three
  input channels to each output channel, plus a bias per channel (normal equations add up over
  images, so one kernel can be fitted to a whole training set);
- :func:`noise_sigma`: Immerkaer's fast noise-standard-deviation estimate of a grey image;
- :func:`shift_image`, :func:`register_tiles`: the best sub-pixel translation of a prediction,
  tile by tile, onto the real LR (how much of the error is the pair's local misregistration).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from degflow.spline import evaluate_path

__all__ = ["velocity_error_by_time", "latent_error", "split_tiles", "merge_tiles",
           "linear_degradation_design", "linear_degradation_normal_equations", "solve_linear_degradation",
           "apply_linear_degradation", "noise_sigma", "shift_image", "register_tiles"]

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
        path: ``cubic`` | ``linear`` (:func:`degflow.spline.evaluate_path`).
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


def _degradation_padding(height: int, width: int, scale: int, support: int) -> int:
    if scale < 1 or support < scale or (support - scale) % 2:
        raise ValueError(f"linear degradation: the kernel support ({support}) must be >= the integer scale "
                         f"({scale}) and differ from it by an even number")
    if height % scale or width % scale:
        raise ValueError(f"linear degradation: the HR size {height}x{width} must be a multiple of the scale {scale}")
    return (support - scale) // 2


def linear_degradation_design(hr: Tensor, scale: int, support: int) -> Tensor:
    """Regression inputs of the linear degradation: one row per LR pixel.

    LR pixel ``(i, j)`` sees the ``support x support`` HR window centred on the HR block
    ``[s i, s i + s) x [s j, s j + s)`` (edges replicated), all three channels, and a 1 for
    the bias.

    Args:
        hr: ``[B, 3, H, W]``, H and W multiples of ``scale``.
        scale: integer scale s.
        support: kernel side k (k >= s, k - s even).
    Returns:
        ``[B, (H/s) (W/s), 3 k^2 + 1]`` float64, rows in raster order of the LR image.
    """
    b, c, h, w = hr.shape
    pad = _degradation_padding(h, w, scale, support)
    x = F.pad(hr.to(torch.float64), (pad, pad, pad, pad), mode="replicate")
    cols = F.unfold(x, kernel_size=support, stride=scale)                        # [B, C k^2, hw/s^2]
    ones = torch.ones(b, 1, cols.shape[-1], dtype=cols.dtype, device=cols.device)
    return torch.cat([cols, ones], 1).transpose(1, 2)                            # [B, L, C k^2 + 1]


def linear_degradation_normal_equations(hr: Tensor, lr: Tensor, scale: int, support: int) -> tuple[Tensor, Tensor]:
    """``(X^T X, X^T Y)`` of the least-squares fit LR ~ X W over a batch (they add up over batches).

    Args:
        hr: ``[B, 3, H, W]``.
        lr: ``[B, 3, H/s, W/s]`` the real LR images.
        scale, support: as in :func:`linear_degradation_design`.
    Returns:
        ``([P, P], [P, 3])`` float64 with ``P = 3 k^2 + 1``.
    """
    b, c, h, w = hr.shape
    if lr.shape != (b, c, h // scale, w // scale):
        raise ValueError(f"linear degradation: LR of shape {tuple(lr.shape)} for HR {tuple(hr.shape)} at x{scale}; "
                         f"expected {(b, c, h // scale, w // scale)}")
    x = linear_degradation_design(hr, scale, support).flatten(0, 1)              # [B L, P]
    y = lr.to(torch.float64).flatten(2).transpose(1, 2).flatten(0, 1)            # [B L, 3]
    return x.T @ x, x.T @ y


def solve_linear_degradation(xtx: Tensor, xty: Tensor, ridge: float = 1e-8) -> Tensor:
    """Weights ``[P, 3]`` from the normal equations, with a ridge of ``ridge * mean(diag(X^T X))``."""
    lam = ridge * float(torch.diagonal(xtx).mean())
    eye = torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device)
    return torch.linalg.solve(xtx + lam * eye, xty)


def apply_linear_degradation(hr: Tensor, weights: Tensor, scale: int, support: int) -> Tensor:
    """LR predicted by a fitted linear degradation.

    Args:
        hr: ``[B, 3, H, W]``.
        weights: ``[3 k^2 + 1, 3]`` from :func:`solve_linear_degradation`.
    Returns:
        ``[B, 3, H/s, W/s]`` in the dtype of ``hr`` (not clamped).
    """
    b, c, h, w = hr.shape
    out = linear_degradation_design(hr, scale, support) @ weights.to(torch.float64)   # [B, L, 3]
    return out.transpose(1, 2).reshape(b, 3, h // scale, w // scale).to(hr.dtype)


def noise_sigma(gray: Tensor) -> Tensor:
    """Immerkaer's noise standard deviation estimate (Immerkaer 1996, "Fast noise variance estimation").

    sigma = sqrt(pi / 2) / (6 (H - 2) (W - 2)) * sum |I * M| over the valid pixels, with the
    Laplacian-difference mask M = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] (blind to planes and
    ramps; texture inflates it, so it over-estimates on detailed images).

    Args:
        gray: ``[B, 1, H, W]`` (H, W >= 3).
    Returns:
        ``[B]`` float64, in the units of ``gray``.
    """
    if gray.ndim != 4 or gray.shape[1] != 1 or min(gray.shape[-2:]) < 3:
        raise ValueError(f"noise_sigma: expected a [B, 1, H, W] grey batch with H, W >= 3, got {tuple(gray.shape)}")
    m = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=torch.float64,
                     device=gray.device).view(1, 1, 3, 3)
    r = F.conv2d(gray.to(torch.float64), m).abs().flatten(1)                      # [B, (H-2)(W-2)]
    return math.sqrt(math.pi / 2) * r.sum(1) / (6.0 * r.shape[1])


def _keys_weights(frac: Tensor) -> Tensor:
    """Keys cubic-convolution weights (a = -0.5) of the taps at offsets -1, 0, 1, 2 for fractions ``[N]`` -> ``[N, 4]``."""
    d = (frac[:, None] - torch.arange(-1, 3, dtype=frac.dtype, device=frac.device)).abs()    # distances to the taps
    near = (1.5 * d - 2.5) * d * d + 1                                                  # |d| <= 1
    far = ((-0.5 * d + 2.5) * d - 4) * d + 2                                            # 1 < |d| < 2
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _shift_axis(x: Tensor, shifts: Tensor, dim: int) -> Tensor:
    """``out[n](..., i, ...) = x[n](..., i + shifts[n], ...)`` along ``dim`` (-1 or -2) of ``x [N, C, H, W]``."""
    n, size = x.shape[0], x.shape[dim]
    whole = torch.floor(shifts)
    weights = _keys_weights(shifts - whole)                                              # [N, 4]
    reach = int(whole.abs().max()) + 2 if n else 2
    pad = (reach, reach, 0, 0) if dim == -1 else (0, 0, reach, reach)
    xp = F.pad(x, pad, mode="replicate")
    base = torch.arange(size, device=x.device).view(1, size) + whole.long().view(n, 1) + reach   # [N, size]
    shape = [n, 1, 1, 1]
    shape[dim] = size
    out = torch.zeros_like(x)
    for k in range(4):                                                                   # taps at -1, 0, 1, 2
        index = (base + (k - 1)).view(shape).expand(*x.shape)
        out += weights[:, k].view(n, 1, 1, 1).to(x) * torch.gather(xp.expand(n, *xp.shape[1:]), dim, index)
    return out


def shift_image(x: Tensor, shifts: Tensor) -> Tensor:
    """Sub-pixel translations of one image: ``out[n](y, x) = x(y + dy_n, x + dx_n)``.

    Separable Keys cubic convolution with a = -0.5 (third-order accurate: it reproduces
    quadratics exactly, unlike torch's bicubic with a = -0.75), edges replicated.

    Args:
        x: ``[C, H, W]``.
        shifts: ``[N, 2]`` as ``(dx, dy)`` in pixels.
    Returns:
        ``[N, C, H, W]`` in the dtype of ``x``.
    """
    if x.ndim != 3 or shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError(f"shift_image: expected x [C, H, W] and shifts [N, 2], got {tuple(x.shape)} and "
                         f"{tuple(shifts.shape)}")
    s = shifts.to(torch.float64)
    batch = x[None].expand(s.shape[0], *x.shape)
    return _shift_axis(_shift_axis(batch, s[:, 0], -1), s[:, 1], -2)


def register_tiles(pred: Tensor, real: Tensor, tile: int = 32, max_shift: float = 2.0,
                   coarse: float = 0.25, fine: float = 0.05) -> tuple[Tensor, Tensor]:
    """Each ``tile x tile`` block of ``pred`` moved by the translation that best matches ``real``.

    A grid search in ``[-max_shift, max_shift]^2`` with step ``coarse``, then ``fine`` steps
    within one coarse step of the best; the criterion is the tile's mean squared error (a flat
    tile keeps any shift: its error barely changes). Two numbers per tile can move content but
    cannot blur, sharpen, denoise or recolour it, so what registration gains is the pair's local
    misalignment, not its degradation.

    Args:
        pred: ``[C, H, W]`` a predicted LR image; real: ``[C, H, W]`` the real LR image.
        tile: block side in pixels (the last row and column of blocks may be smaller).
    Returns:
        ``(registered [C, H, W], shifts [rows, cols, 2])`` with shifts as ``(dx, dy)`` pixels
        (``registered(y, x) = pred(y + dy, x + dx)`` inside each block).
    """
    if pred.shape != real.shape or pred.ndim != 3:
        raise ValueError(f"register_tiles: expected two [C, H, W] images of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(real.shape)}")
    if tile < 1 or max_shift < 0 or coarse <= 0 or fine <= 0:
        raise ValueError(f"register_tiles: tile ({tile}) >= 1, max_shift ({max_shift}) >= 0 and the steps "
                         f"({coarse}, {fine}) > 0 expected")
    c, h, w = pred.shape
    pad = int(math.ceil(max_shift + coarse)) + 2
    padded = F.pad(pred[None], (pad, pad, pad, pad), mode="replicate")[0]
    n = int(round(max_shift / coarse))
    axis = torch.arange(-n, n + 1, dtype=pred.dtype, device=pred.device) * coarse
    coarse_grid = torch.cartesian_prod(axis, axis)                                    # [N, 2]
    m = int(round(coarse / fine))
    local = torch.cartesian_prod(*(torch.arange(-m, m + 1, dtype=pred.dtype, device=pred.device) * fine,) * 2)
    out = torch.empty_like(pred)
    rows, cols = -(-h // tile), -(-w // tile)
    shifts = torch.zeros(rows, cols, 2, dtype=pred.dtype, device=pred.device)
    for r in range(rows):
        for q in range(cols):
            i, j = r * tile, q * tile
            th, tw = min(tile, h - i), min(tile, w - j)
            window = padded[:, i:i + th + 2 * pad, j:j + tw + 2 * pad]
            target = real[:, i:i + th, j:j + tw]

            def best(candidates: Tensor) -> tuple[Tensor, Tensor]:
                moved = shift_image(window, candidates)[:, :, pad:pad + th, pad:pad + tw]   # [N, C, th, tw]
                k = int((moved - target).pow(2).flatten(1).mean(1).argmin())
                return candidates[k], moved[k]

            start, _ = best(coarse_grid)
            shifts[r, q], out[:, i:i + th, j:j + tw] = best(start + local)
    return out, shifts
