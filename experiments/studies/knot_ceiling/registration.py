"""Per-tile sub-pixel registration (study-only): how much of a prediction's error against the
real LR is the pair's local misregistration.

- :func:`shift_image`: a separable Keys (a = -0.5) cubic-convolution shift, exact on quadratics;
- :func:`register_tiles`: the best sub-pixel translation of a prediction onto the real LR,
  tile by tile.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["shift_image", "register_tiles"]


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
