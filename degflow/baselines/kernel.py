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

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_degradation_design", "linear_degradation_normal_equations", "solve_linear_degradation",
           "apply_linear_degradation", "kernel_side", "sampling_centres", "window_taps", "hr_lattices",
           "kernel_normal_equations", "split_weights", "apply_kernel", "resample_kernel"]


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


# ------------------------------------------------------------------ any scale: the fitted kernel baseline
#
# At a float scale s the LR pixel (i, j) of an H x W image sampled to h x w pixels sits at the HR
# coordinate c(i) = (i + 1/2) H / h - 1/2 (pixel centres, the convention of torch's resize with
# align_corners=False). Its regression inputs are the HR image sampled on a k x k lattice of whole
# HR pixels around that centre, c(i) + m - (k - 1) / 2 for m = 0 .. k-1 (Keys cubic interpolation,
# a = -1/2, edges replicated). When the sampling step H / h is an integer q and k - q is even, every
# lattice point is an HR pixel and the inputs are exactly the HR window of the integer fit above.

#: Keys' cubic-convolution parameter of the HR sampling and of kernel resampling (third order: exact on quadratics).
KEYS_A = -0.5


def _keys(x: Tensor) -> Tensor:
    """Keys cubic convolution kernel (a = -1/2) at offsets ``x`` (any shape)."""
    x = x.abs()
    near = ((KEYS_A + 2) * x - (KEYS_A + 3)) * x * x + 1
    far = ((KEYS_A * x - 5 * KEYS_A) * x + 8 * KEYS_A) * x - 4 * KEYS_A
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def kernel_side(scale: float, support_lr: float) -> int:
    """Side k (HR pixels) of the kernel at ``scale``: the smallest integer >= ``support_lr * scale``
    with the parity of ``round(scale)`` (so at an integer scale every lattice point is an HR pixel)."""
    if not scale >= 1.0 or not support_lr > 0:
        raise ValueError(f"kernel: scale ({scale!r}) >= 1 and support_lr ({support_lr!r}) > 0 expected")
    k = max(1, math.ceil(support_lr * scale - 1e-9))
    return k + (k - round(scale)) % 2


def sampling_centres(n_out: int, n_in: int) -> Tensor:
    """HR coordinates ``[n_out]`` (float64) of the centres of ``n_out`` LR pixels sampled from ``n_in`` HR pixels."""
    return (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5


def window_taps(n_out: int, n_in: int, k: int, start: int = 0, stop: int | None = None) -> tuple[Tensor, Tensor]:
    """Keys interpolation of the k-point lattices of LR pixels ``start .. stop - 1`` along one axis.

    Lattice point ``(i - start) k + m`` samples the HR axis at ``c(i) + m - (k - 1) / 2``
    (:func:`sampling_centres`) from 4 HR pixels, edges replicated.

    Returns:
        ``(index [N, 4] long, weight [N, 4] float64)`` with ``N = (stop - start) k``.
    """
    stop = n_out if stop is None else stop
    offsets = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    pos = (sampling_centres(n_out, n_in)[start:stop, None] + offsets).flatten()        # [N]
    taps = torch.floor(pos)[:, None] + torch.arange(-1, 3, dtype=torch.float64)        # [N, 4]
    return taps.clamp(0, n_in - 1).long(), _keys(taps - pos[:, None])


def _sample_axis(x: Tensor, index: Tensor, weight: Tensor, dim: int) -> Tensor:
    """``x`` resampled along ``dim`` at the lattice points of :func:`window_taps` (4-tap weighted gathers)."""
    shape = [1] * x.ndim
    shape[dim] = -1
    out = 0
    for t in range(4):
        out = out + x.index_select(dim, index[:, t].to(x.device)) * weight[:, t].to(x).view(shape)
    return out


def _row_chunks(h: int, w: int, k: int, budget: int = 1 << 22) -> list[tuple[int, int]]:
    """LR row ranges whose HR lattices (3 w k^2 values per row) stay within ``budget`` numbers."""
    rows = max(1, budget // max(1, 3 * w * k * k))
    return [(r, min(h, r + rows)) for r in range(0, h, rows)]


def hr_lattices(hr: Tensor, out_hw: tuple[int, int], k: int, rows: tuple[int, int] | None = None) -> Tensor:
    """The HR image sampled on the k x k lattice of every LR pixel of rows ``rows`` (all rows: None).

    Args:
        hr: ``[B, 3, H, W]``.
        out_hw: the LR size ``(h, w)``.
        k: lattice side (HR pixels).
    Returns:
        ``[B, 3, r, k, w, k]`` float64 (``r`` LR rows; lattice rows before LR columns before lattice columns).
    """
    b, c, H, W = hr.shape
    h, w = out_hw
    start, stop = rows if rows is not None else (0, h)
    x = _sample_axis(hr.to(torch.float64), *window_taps(h, H, k, start, stop), dim=2)  # [B, 3, r k, W]
    x = _sample_axis(x, *window_taps(w, W, k), dim=3)                                  # [B, 3, r k, w k]
    return x.view(b, c, stop - start, k, w, k)


def kernel_normal_equations(hr: Tensor, lr: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(X^T X, X^T Y)`` of LR ~ (HR lattice) . kernel + bias over a batch at the LR's own size.

    Args:
        hr: ``[B, 3, H, W]``; lr: ``[B, 3, h, w]`` the real LR at true size (any h <= H, w <= W).
        k: lattice side (:func:`kernel_side`).
    Returns:
        ``([P, P], [P, 3])`` float64, ``P = 3 k^2 + 1`` (the weights' rows: input channel, lattice row,
        lattice column, then the bias), summable over batches.
    """
    if hr.ndim != 4 or lr.ndim != 4 or hr.shape[:2] != lr.shape[:2] or hr.shape[1] != 3:
        raise ValueError(f"kernel fit: expected HR [B, 3, H, W] and LR [B, 3, h, w], got {tuple(hr.shape)} "
                         f"and {tuple(lr.shape)}")
    h, w = lr.shape[-2:]
    if h > hr.shape[-2] or w > hr.shape[-1]:
        raise ValueError(f"kernel fit: LR {w}x{h} larger than its HR {hr.shape[-1]}x{hr.shape[-2]}")
    p = 3 * k * k + 1
    xtx = torch.zeros(p, p, dtype=torch.float64, device=hr.device)
    xty = torch.zeros(p, 3, dtype=torch.float64, device=hr.device)
    for start, stop in _row_chunks(h, w, k):
        x = hr_lattices(hr, (h, w), k, (start, stop))                                  # [B, 3, r, k, w, k]
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(-1, p - 1)                             # [B r w, 3 k^2]
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)
        y = lr[:, :, start:stop].to(torch.float64).permute(0, 2, 3, 1).reshape(-1, 3)  # [B r w, 3]
        xtx += x.T @ x
        xty += x.T @ y
    return xtx, xty


def split_weights(weights: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``[3 k^2 + 1, 3]`` regression weights -> ``(kernel [3 out, 3 in, k, k], bias [3])``."""
    if weights.shape != (3 * k * k + 1, 3):
        raise ValueError(f"kernel weights of shape {tuple(weights.shape)}, expected {(3 * k * k + 1, 3)}")
    return weights[:-1].T.reshape(3, 3, k, k).clone(), weights[-1].clone()


def apply_kernel(hr: Tensor, kernel: Tensor, bias: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """LR of size ``out_hw`` that a kernel predicts (not clamped).

    Args:
        hr: ``[B, 3, H, W]``.
        kernel: ``[3, 3, k, k]`` (output channel, input channel, lattice row, lattice column), HR pixels.
        bias: ``[3]``.
        out_hw: ``(h, w)``.
    Returns:
        ``[B, 3, h, w]`` in the dtype of ``hr``.
    """
    k = kernel.shape[-1]
    h, w = out_hw
    kern = kernel.to(torch.float64).to(hr.device)
    out = torch.empty(hr.shape[0], 3, h, w, dtype=torch.float64, device=hr.device)
    for start, stop in _row_chunks(h, w, k):
        x = hr_lattices(hr, out_hw, k, (start, stop))                                  # [B, 3, r, k, w, k]
        out[:, :, start:stop] = torch.einsum("bcrmwn,ocmn->borw", x, kern)
    return (out + bias.to(out).view(1, 3, 1, 1)).to(hr.dtype)


def resample_kernel(kernel: Tensor, from_scale: float, to_scale: float, k_out: int) -> Tensor:
    """A kernel fitted at ``from_scale`` carried to ``to_scale`` with its shape fixed in LR pixels.

    The kernel is a function of the offset in LR pixels (offset in HR pixels / scale): it is stretched
    by ``to_scale / from_scale`` (Keys interpolation; a Keys low-pass of the same width when it
    shrinks) onto a ``k_out`` lattice; each source weight's mass is kept (what falls outside the
    lattice is spread over it like a flat kernel's), so the DC gain of every channel pair (the
    colour matrix) is exactly unchanged. At ``to_scale == from_scale`` and the same side it is the
    identity.

    Args:
        kernel: ``[..., k, k]``.
    Returns:
        ``[..., k_out, k_out]`` float64.
    """
    k = kernel.shape[-1]
    a = from_scale / to_scale                          # target lattice spacing, in source samples
    pos = (torch.arange(k_out, dtype=torch.float64) - (k_out - 1) / 2) * a + (k - 1) / 2
    width = max(a, 1.0)
    r = _keys((torch.arange(k, dtype=torch.float64)[None, :] - pos[:, None]) / width)  # [k_out, k]
    mass = r.sum(0, keepdim=True)                      # how much of each source sample the lattice receives
    r = torch.where(mass > 0.5, r / mass.clamp_min(0.5), r)
    kernel = kernel.to(torch.float64)
    out = r @ kernel @ r.T                                                              # [..., k_out, k_out]
    flat = r @ torch.ones(k, k, dtype=torch.float64) @ r.T
    missing = kernel.sum((-2, -1)) - out.sum((-2, -1))                                 # [...]
    return out + missing[..., None, None] * flat / flat.sum()
