"""The least-squares linear degradation: LR = blur-and-subsample(HR) with a free kernel.

A ``support x support`` kernel from all three HR channels to each LR channel, plus a bias per
channel, at an integer scale s; the normal equations add up over images, so one kernel can be
fitted to a whole training set (the classical "estimate the camera's kernel from real pairs"
competitor of a learned degradation).

- :func:`linear_degradation_design`: one regression row per LR pixel;
- :func:`linear_degradation_normal_equations`: ``(X^T X, X^T Y)`` of a batch;
- :func:`solve_linear_degradation`: the weights, with a tiny ridge;
- :func:`apply_linear_degradation`: the LR a fitted kernel predicts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_degradation_design", "linear_degradation_normal_equations", "solve_linear_degradation",
           "apply_linear_degradation"]


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
