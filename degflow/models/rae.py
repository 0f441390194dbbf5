"""Residual autoencoder (RAE), stage 1 of DegFlow.

The encoder maps an image ``[B, 3, H, W]`` in [-1, 1] to a latent ``z`` of
``latent_channels`` channels at 1/8 resolution and also returns three hidden feature maps
(at 1, 1/2 and 1/4 resolution). The decoder rebuilds an image from a latent plus those
skip features. In DegFlow the skip features ALWAYS come from the HR image:
``decode(encode(lr)[0], encode(hr)[1])`` reconstructs the LR image, so the latent only has
to carry the degradation residual.

Architecture (``widths = (w0, w1, w2, w3)``, paper preset ``(128, 128, 256, 512)``; this is
the authors' skip autoencoder, generalised from ``base * (1, 1, 2, 4)`` to free widths):

Encoder
    stem      conv3x3 3 -> w0 (bias)
    levels[0] res units at w0                                   -> feats[0] (1/1)
    levels[1] conv3x3 stride 2 w0 -> w1, res units at w1        -> feats[1] (1/2)
    levels[2] conv3x3 stride 2 w1 -> w2, res units at w2        -> feats[2] (1/4)
    levels[3] conv3x3 stride 2 w2 -> w3, res units at w3
    conv_out  conv3x3 w3 -> latent                              -> z (1/8)
Decoder
    conv_in   conv3x3 latent -> w3
    levels[3] res units at w3, upsample w3 -> w2;  fuse[2]: conv1x1 on cat([x, feats[2]])
    levels[2] res units at w2, upsample w2 -> w1;  fuse[1]: conv1x1 on cat([x, feats[1]])
    levels[1] res units at w1, upsample w1 -> w0;  fuse[0]: conv1x1 on cat([x, feats[0]])
    levels[0] res units at w0 (no upsampling)
    out       GELU, conv3x3 w0 -> 3 (no final tanh; callers clamp at inference)

A residual unit is ``x + gain * block(x)`` with a per-channel gain initialised to zero, and
``block(x) = x + conv(GELU(norm(conv(GELU(norm(x))))))`` (two bias-free 3x3 convolutions;
the block has its own identity skip, as in the authors' code, so the gated update is
``gain * (x + f(x))``). ``norm="layer"`` is the authors' per-pixel LayerNorm over channels
(with bias, eps 1e-5); ``norm="group"`` is a GroupNorm alternative. Upsampling is
conv1x1 (c -> 4c) -> PixelShuffle(2) -> conv1x1 (c -> c_out). All other initialisation is
PyTorch's default, as in the authors' code.

The authors' released autoencoder weights load into the paper preset by renaming alone
(:func:`degflow.models.official.rae_key_map`, ``python -m degflow.convert_official``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RAE", "ChannelLayerNorm"]

_NORMS = ("layer", "group")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension at every pixel of ``[B, C, H, W]``.

    ``(x - mean_c) / sqrt(var_c + eps) * weight + bias`` with the biased variance.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm on the channels-last view: same function, ~3x faster than explicit
        # mean/var on CPU (agrees with the explicit formula to float rounding).
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "layer":
        return ChannelLayerNorm(channels)
    g = min(groups, channels)
    if channels % g:
        raise ValueError(
            f"RAE norm='group' needs every width divisible by the group count: width {channels} "
            f"is not divisible by groups={g} (config key model.rae.groups)"
        )
    return nn.GroupNorm(g, channels)


class _ResBlock(nn.Module):
    """``x + conv1(GELU(norm1(conv0(GELU(norm0(x))))))``; convolutions are 3x3 without bias."""

    def __init__(self, channels: int, norm: str, groups: int) -> None:
        super().__init__()
        self.norm0 = _make_norm(norm, channels, groups)
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = _make_norm(norm, channels, groups)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self.act(self.norm0(x)))
        h = self.conv1(self.act(self.norm1(h)))
        return x + h


class _GatedResUnit(nn.Module):
    """``x + gain * block(x)`` with a per-channel gain ``[1, C, 1, 1]`` initialised to zero."""

    def __init__(self, channels: int, norm: str, groups: int) -> None:
        super().__init__()
        self.block = _ResBlock(channels, norm, groups)
        self.gain = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gain * self.block(x)


class _EncoderLevel(nn.Module):
    """Optional stride-2 conv3x3 (with bias), then ``num_res_blocks`` gated residual units."""

    def __init__(self, in_ch: int, out_ch: int, down: bool, num_res_blocks: int, norm: str,
                 groups: int) -> None:
        super().__init__()
        if not down and in_ch != out_ch:
            raise ValueError(f"encoder level without downsampling cannot change width {in_ch} -> {out_ch}")
        self.down = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1) if down else nn.Identity()
        self.units = nn.ModuleList(_GatedResUnit(out_ch, norm, groups) for _ in range(num_res_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        for unit in self.units:
            x = unit(x)
        return x


class _DecoderLevel(nn.Module):
    """``num_res_blocks`` gated residual units, then optional PixelShuffle x2 upsampling."""

    def __init__(self, in_ch: int, out_ch: int, up: bool, num_res_blocks: int, norm: str,
                 groups: int) -> None:
        super().__init__()
        if not up and in_ch != out_ch:
            raise ValueError(f"decoder level without upsampling cannot change width {in_ch} -> {out_ch}")
        self.units = nn.ModuleList(_GatedResUnit(in_ch, norm, groups) for _ in range(num_res_blocks))
        if up:
            self.up = nn.Sequential(
                nn.Conv2d(in_ch, 4 * in_ch, 1),
                nn.PixelShuffle(2),
                nn.Conv2d(in_ch, out_ch, 1),
            )
        else:
            self.up = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return self.up(x)


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, widths: tuple[int, ...],
                 num_res_blocks: int, norm: str, groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        levels = [_EncoderLevel(widths[0], widths[0], False, num_res_blocks, norm, groups)]
        for i in range(1, len(widths)):
            levels.append(_EncoderLevel(widths[i - 1], widths[i], True, num_res_blocks, norm, groups))
        self.levels = nn.ModuleList(levels)
        self.conv_out = nn.Conv2d(widths[-1], latent_channels, 3, padding=1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for level in self.levels[:-1]:
            x = level(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.features(x)
        z = self.conv_out(self.levels[-1](feats[-1]))
        return z, feats


class _Decoder(nn.Module):
    def __init__(self, out_channels: int, latent_channels: int, widths: tuple[int, ...],
                 num_res_blocks: int, norm: str, groups: int) -> None:
        super().__init__()
        n = len(widths)
        self.conv_in = nn.Conv2d(latent_channels, widths[-1], 3, padding=1)
        # levels[i] / fuse[i] work at encoder level i's resolution and width; run coarse -> fine.
        levels = [_DecoderLevel(widths[0], widths[0], False, num_res_blocks, norm, groups)]
        for i in range(1, n):
            levels.append(_DecoderLevel(widths[i], widths[i - 1], True, num_res_blocks, norm, groups))
        self.levels = nn.ModuleList(levels)
        self.fuse = nn.ModuleList(nn.Conv2d(2 * widths[i], widths[i], 1) for i in range(n - 1))
        self.out = nn.Sequential(nn.GELU(), nn.Conv2d(widths[0], out_channels, 3, padding=1))

    def forward(self, z: torch.Tensor, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.conv_in(z)
        for i in range(len(self.levels) - 1, 0, -1):
            x = self.levels[i](x)
            x = self.fuse[i - 1](torch.cat([x, feats[i - 1]], dim=1))
        x = self.levels[0](x)
        return self.out(x)


class RAE(nn.Module):
    """Residual autoencoder with HR skip features (DegFlow stage 1).

    Args:
        in_channels: image channels (3).
        latent_channels: latent channels C_r (4 in the paper).
        widths: four feature widths (full, 1/2, 1/4, 1/8 resolution); the paper preset is
            ``(128, 128, 256, 512)`` (the authors' ``base_dim=128``).
        num_res_blocks: gated residual units per encoder level and per decoder level (2).
        norm: ``"layer"`` (authors: per-pixel LayerNorm over channels) or ``"group"``.
        groups: GroupNorm group count for ``norm="group"`` (ignored for ``"layer"``).

    ``self.config`` holds exactly these constructor arguments as plain Python types, so
    ``RAE(**rae.config)`` rebuilds the same module. ``stride = 8``: H and W must be multiples
    of 8 (synthesis pads before calling).

    Shapes: ``encode([B, 3, H, W]) -> (z [B, C_r, H/8, W/8], [f0 [B, w0, H, W],
    f1 [B, w1, H/2, W/2], f2 [B, w2, H/4, W/4]])``; ``decode(z, feats) -> [B, 3, H, W]``.
    """

    stride = 8

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        widths: Sequence[int] = (128, 128, 256, 512),
        num_res_blocks: int = 2,
        norm: str = "layer",
        groups: int = 32,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4:
            raise ValueError(
                f"RAE widths must have 4 entries (full, 1/2, 1/4, 1/8 resolution; stride "
                f"{self.stride}), got {list(widths)} (config key model.rae.widths)"
            )
        if any(w < 1 for w in widths) or in_channels < 1 or latent_channels < 1:
            raise ValueError(
                f"RAE channel counts must be positive: in_channels={in_channels}, "
                f"latent_channels={latent_channels}, widths={list(widths)}"
            )
        if num_res_blocks < 0:
            raise ValueError(f"RAE num_res_blocks must be >= 0, got {num_res_blocks} "
                             f"(config key model.rae.num_res_blocks)")
        if norm not in _NORMS:
            raise ValueError(f"RAE norm must be one of {list(_NORMS)}, got {norm!r} "
                             f"(config key model.rae.norm)")
        self.config = {
            "in_channels": int(in_channels),
            "latent_channels": int(latent_channels),
            "widths": list(widths),
            "num_res_blocks": int(num_res_blocks),
            "norm": str(norm),
            "groups": int(groups),
        }
        self.in_channels = int(in_channels)
        self.latent_channels = int(latent_channels)
        self.widths = widths
        self.encoder = _Encoder(in_channels, latent_channels, widths, num_res_blocks, norm, groups)
        self.decoder = _Decoder(in_channels, latent_channels, widths, num_res_blocks, norm, groups)

    # ------------------------------------------------------------------ checks
    def _check_image(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"RAE expects {name} of shape [B, {self.in_channels}, H, W], got {list(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"RAE input size {h}x{w} ({name}) is not a multiple of the stride {self.stride}: "
                f"H and W must be multiples of {self.stride} (pad the image first)"
            )

    def _check_latent(self, z: torch.Tensor, feats: Sequence[torch.Tensor]) -> None:
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"RAE.decode expects z of shape [B, {self.latent_channels}, h, w], got {list(z.shape)}"
            )
        if len(feats) != len(self.widths) - 1:
            raise ValueError(
                f"RAE.decode expects {len(self.widths) - 1} skip features (from encode(hr)[1]), "
                f"got {len(feats)}"
            )
        h, w = z.shape[-2:]
        for i, f in enumerate(feats):
            scale = self.stride // 2**i
            expected = [z.shape[0], self.widths[i], h * scale, w * scale]
            if list(f.shape) != expected:
                raise ValueError(
                    f"RAE.decode skip feature {i} must have shape {expected} for z of shape "
                    f"{list(z.shape)}, got {list(f.shape)} (pass encode(hr)[1] of the same HR size)"
                )

    # ------------------------------------------------------------------ API
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[B, 3, H, W] -> (z [B, C_r, H/8, W/8], [f0 (1/1), f1 (1/2), f2 (1/4)])``."""
        self._check_image(x, "x")
        return self.encoder(x)

    def features(self, hr: torch.Tensor) -> list[torch.Tensor]:
        """Only the skip features of ``hr`` (cheaper than ``encode``: skips the last level)."""
        self._check_image(hr, "hr")
        return self.encoder.features(hr)

    def decode(self, z: torch.Tensor, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(z [B, C_r, h, w], HR skip features) -> image [B, 3, 8h, 8w]`` (not clamped)."""
        self._check_latent(z, feats)
        return self.decoder(z, feats)

    def forward(self, x: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` from its latent and the skip features of ``hr`` (same shape)."""
        if x.shape != hr.shape:
            raise ValueError(f"RAE.forward expects x and hr of the same shape, got "
                             f"{list(x.shape)} and {list(hr.shape)}")
        if x is hr:
            z, feats = self.encode(x)
        else:
            z = self.encode(x)[0]
            feats = self.features(hr)
        return self.decoder(z, feats)
