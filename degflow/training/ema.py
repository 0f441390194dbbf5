"""Exponential moving average (EMA) of the velocity network's weights (``stage.ema_decay``).

After each optimizer step ``n`` (1-based: the number of updates so far) every EMA parameter
moves towards the live one:

    ema <- d_n ema + (1 - d_n) theta,    d_n = min(decay, (1 + n) / (10 + n))

The warm-up factor ``(1 + n) / (10 + n)`` (the usual TensorFlow-style EMA warm-up) keeps the
average from remembering the random initial weights: at n = 500 it is 0.982 (an averaging
horizon of about 55 steps), so the EMA means something in a 500-step CPU run, and it reaches
0.999 only after about 9000 steps. Buffers (none in the U-Net today) are copied.
The EMA weights are what validation and synthesis use when a run has them (the checkpoint's
``models.velocity_ema``).
"""

from __future__ import annotations

import torch

from degflow.infra.checks import check_number

__all__ = ["check_ema_decay", "ema_decay_at", "ema_update_"]


def check_ema_decay(decay: float | None) -> float | None:
    """``stage.ema_decay``: None (off) or a number in (0, 1); ValueError otherwise."""
    if decay is None:
        return None
    return check_number(decay, "stage.ema_decay", low=0.0, high=1.0, open_low=True, open_high=True,
                        hint=" such as 0.999 (null: no EMA)")


def ema_decay_at(updates: int, decay: float) -> float:
    """The decay used after the ``updates``-th optimizer step: ``min(decay, (1 + n) / (10 + n))``."""
    if updates < 1:
        raise ValueError(f"updates must be >= 1 (the EMA moves after an optimizer step), got {updates}")
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def ema_update_(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """In place: ``ema_p <- decay * ema_p + (1 - decay) * p`` for every parameter; buffers copied.

    ``ema`` and ``model`` must have the same architecture (same parameter names and shapes).
    """
    live = dict(model.named_parameters())
    for name, p in ema.named_parameters():
        p.lerp_(live[name].detach().to(p.dtype), 1.0 - decay)
    live_buffers = dict(model.named_buffers())
    for name, b in ema.named_buffers():
        b.copy_(live_buffers[name])
