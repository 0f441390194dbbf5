"""What the velocity is conditioned on (config key ``model.lfm.cond_channels``).

The condition is concatenated to the state ``z`` at the velocity network's input
(:class:`degflow.models.unet.VelocityUNet`). Which condition a network takes follows from its
``cond_channels`` and the autoencoder's latent channels C and stride s:

- ``0``: none, the authors' unconditional v(z, t);
- ``C``: the HR latent, v(z, t | z_0);
- ``C + 3 s^2``: the HR latent and the HR pixels at latent resolution (space-to-depth:
  each latent pixel sees the s x s RGB block it encodes), v(z, t | z_0, HR). The 4-channel
  latent keeps little of the HR detail that decides what a camera's blur removes; the
  pixels give the velocity all of it.

Training (:mod:`degflow.training.lfm`), the :class:`~degflow.generation.Synthesizer` and the
diagnostics all build the condition here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CONDITIONS", "condition_kind", "velocity_condition"]

#: condition kinds, by what they feed the velocity.
CONDITIONS = ("none", "latent", "latent+pixels")


def condition_kind(cond_channels: int, latent_channels: int, stride: int) -> str:
    """The condition a velocity with ``cond_channels`` input condition channels takes.

    Raises ValueError naming ``model.lfm.cond_channels`` and the valid values otherwise.
    """
    kinds = {0: "none", latent_channels: "latent", latent_channels + 3 * stride**2: "latent+pixels"}
    if cond_channels not in kinds:
        raise ValueError(f"model.lfm.cond_channels={cond_channels} is not one of 0 (unconditional v(z, t)), "
                         f"{latent_channels} (the HR latent z_0: the autoencoder's latent channels) or "
                         f"{latent_channels + 3 * stride**2} (z_0 and the HR pixels at latent resolution, "
                         f"{latent_channels} + 3 x {stride}^2)")
    return kinds[cond_channels]


def velocity_condition(kind: str, z0: Tensor, hr: Tensor | None, stride: int) -> Tensor | None:
    """The condition tensor of a solve (or training step) that starts at ``z0``.

    Args:
        kind: one of :data:`CONDITIONS` (:func:`condition_kind`).
        z0: ``[B, C, h, w]`` the HR latent.
        hr: ``[B, 3, s h, s w]`` the (padded) HR image in [-1, 1] that ``z0`` encodes; needed
            for ``latent+pixels`` only.
        stride: the autoencoder's stride s.
    Returns:
        None, ``z0``, or ``[B, C + 3 s^2, h, w]`` = ``cat(z0, pixel_unshuffle(hr, s))``.
    """
    if kind == "none":
        return None
    if kind == "latent":
        return z0
    if kind != "latent+pixels":
        raise ValueError(f"condition kind {kind!r} is not one of {list(CONDITIONS)}")
    if hr is None:
        raise ValueError("a velocity conditioned on the HR pixels (model.lfm.cond_channels = C + 3 s^2) needs "
                         "the HR image")
    b, _, h, w = z0.shape
    if hr.shape != (b, 3, h * stride, w * stride):
        raise ValueError(f"the HR image of shape {tuple(hr.shape)} does not match the latent {tuple(z0.shape)} "
                         f"at stride {stride}: expected {(b, 3, h * stride, w * stride)}")
    return torch.cat([z0, F.pixel_unshuffle(hr.to(z0.dtype), stride)], dim=1)
