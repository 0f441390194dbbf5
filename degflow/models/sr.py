"""Super-resolution networks for the downstream comparison (``sr.network``).

Two compact networks, small enough to train for a few minutes on a CPU:

``edsr``
    A fixed-scale EDSR-style network (Lim et al., CVPR 2017 workshops): conv head, residual
    blocks without normalisation (scaled residuals), conv tail, sub-pixel (PixelShuffle)
    upsampling by the integer ``scale``, plus the bicubic upsampling of the input as a global
    residual (so a freshly initialised network starts at bicubic).
``liif``
    An arbitrary-scale LIIF-style network (Chen et al., CVPR 2021): the same residual encoder
    without upsampling gives one feature vector per LR pixel; an MLP decodes the RGB value at
    any continuous coordinate from the feature of a nearby LR pixel, the coordinate relative
    to that pixel and the cell size (the output pixel's extent, i.e. the scale). LIIF's local
    ensemble is used (the four nearest LR pixels, weighted by the area of the opposite
    rectangle); its 3x3 feature unfolding is not (it multiplies the MLP input by nine). The
    bicubic upsampling of the input is added as a global residual, as for ``edsr``.

Coordinates: a pixel's centre in [-1, 1] per axis, ``(2 i + 1) / n - 1`` for pixel i of n
(``align_corners=False`` convention); ``coord[..., 0]`` is the row (y), ``[..., 1]`` the
column (x). Images are ``[B, 3, H, W]`` in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from degflow.infra.checks import check_int, check_positive_int

__all__ = ["NETWORKS", "EDSR", "LIIF", "make_coord", "build_sr_model"]

#: The networks of config key ``sr.network``.
NETWORKS = ("edsr", "liif")


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, residual scaled by ``res_scale`` (EDSR: no batch norm)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.body(x)


class Encoder(nn.Module):
    """EDSR body: ``[B, 3, h, w]`` -> features ``[B, n_feats, h, w]`` (same resolution)."""

    def __init__(self, n_feats: int, n_blocks: int, res_scale: float = 1.0):
        super().__init__()
        self.head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_blocks)],
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.head(x)
        return h + self.body(h)


def _check_size(value: int, key: str) -> int:
    return check_positive_int(value, key)


class EDSR(nn.Module):
    """Fixed integer scale: LR ``[B, 3, h, w]`` -> SR ``[B, 3, scale*h, scale*w]``."""

    def __init__(self, scale: int, n_feats: int = 32, n_blocks: int = 4, res_scale: float = 1.0):
        super().__init__()
        if isinstance(scale, float) and scale.is_integer():
            scale = int(scale)
        check_int(scale, "the scale of sr.network=edsr", minimum=2,
                  hint=" (sub-pixel upsampling; use sr.network=liif for fractional scales)")
        self.scale = scale
        self.config = {"network": "edsr", "scale": scale, "n_feats": _check_size(n_feats, "sr.n_feats"),
                       "n_blocks": _check_size(n_blocks, "sr.n_blocks"), "res_scale": res_scale}
        self.encoder = Encoder(n_feats, n_blocks, res_scale)
        ups: list[nn.Module] = []
        if scale & (scale - 1) == 0:          # a power of two: x2 sub-pixel steps
            for _ in range(int(math.log2(scale))):
                ups += [nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1), nn.PixelShuffle(2)]
        else:
            ups += [nn.Conv2d(n_feats, scale * scale * n_feats, 3, padding=1), nn.PixelShuffle(scale)]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(n_feats, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, lr: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``lr`` ``[B, 3, h, w]`` -> ``[B, 3, s h, s w]``; ``size`` (if given) must be that size."""
        h, w = lr.shape[-2:]
        out_size = (self.scale * h, self.scale * w)
        if size is not None and tuple(size) != out_size:
            raise ValueError(f"edsr x{self.scale} turns a {h}x{w} image into {out_size[0]}x{out_size[1]}, "
                             f"not the requested {size[0]}x{size[1]}")
        base = F.interpolate(lr, size=out_size, mode="bicubic", align_corners=False)
        return base + self.tail(self.upsample(self.encoder(lr)))


def make_coord(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """Pixel-centre coordinates of an ``height`` x ``width`` grid: ``[height, width, 2]`` (y, x) in (-1, 1)."""
    ys = (2 * torch.arange(height, device=device, dtype=dtype) + 1) / height - 1
    xs = (2 * torch.arange(width, device=device, dtype=dtype) + 1) / width - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


class LIIF(nn.Module):
    """Arbitrary scale: LR ``[B, 3, h, w]`` -> the image at any output size (any float scale)."""

    def __init__(self, n_feats: int = 32, n_blocks: int = 4, mlp_hidden: int = 64, mlp_layers: int = 3,
                 res_scale: float = 1.0):
        super().__init__()
        self.config = {"network": "liif", "n_feats": _check_size(n_feats, "sr.n_feats"),
                       "n_blocks": _check_size(n_blocks, "sr.n_blocks"),
                       "mlp_hidden": _check_size(mlp_hidden, "sr.mlp_hidden"),
                       "mlp_layers": _check_size(mlp_layers, "sr.mlp_layers"), "res_scale": res_scale}
        self.encoder = Encoder(n_feats, n_blocks, res_scale)
        layers: list[nn.Module] = []
        width = n_feats + 4                       # feature, relative coordinate (2), cell (2)
        for _ in range(mlp_layers - 1):
            layers += [nn.Linear(width, mlp_hidden), nn.ReLU(inplace=True)]
            width = mlp_hidden
        last = nn.Linear(width, 3)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    def query(self, feat: Tensor, coord: Tensor, cell: Tensor) -> Tensor:
        """RGB residual at continuous coordinates.

        Args:
            feat: encoder features ``[B, C, h, w]``.
            coord: query points ``[B, Q, 2]`` (y, x) in [-1, 1].
            cell: output pixel size ``[B, Q, 2]`` in the same units (2 / H, 2 / W).
        Returns:
            ``[B, Q, 3]``.
        """
        b, c, h, w = feat.shape
        lr_coord = make_coord(h, w, feat.device, feat.dtype).permute(2, 0, 1).unsqueeze(0).expand(b, 2, h, w)
        ry, rx = 1.0 / h, 1.0 / w                 # half an LR pixel
        eps = 1e-6
        preds, areas = [], []
        for vy in (-1, 1):
            for vx in (-1, 1):
                shifted = coord.clone()
                shifted[..., 0] += vy * ry + eps
                shifted[..., 1] += vx * rx + eps
                shifted.clamp_(-1 + 1e-6, 1 - 1e-6)
                grid = shifted.flip(-1).unsqueeze(1)                          # [B, 1, Q, 2] as (x, y)
                q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0].transpose(1, 2)
                q_coord = F.grid_sample(lr_coord, grid, mode="nearest", align_corners=False)[:, :, 0].transpose(1, 2)
                rel = (coord - q_coord) * torch.tensor([h, w], device=feat.device, dtype=feat.dtype) / 2
                rel_cell = cell * torch.tensor([h, w], device=feat.device, dtype=feat.dtype) / 2
                preds.append(self.mlp(torch.cat([q_feat, rel, rel_cell], dim=-1)))   # [B, Q, 3]
                areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)               # [B, Q]
        total = torch.stack(areas).sum(dim=0)
        # each prediction is weighted by the area of the rectangle opposite its LR pixel
        out = sum(p * (a / total).unsqueeze(-1) for p, a in zip(preds, areas[::-1]))
        return out

    def forward(self, lr: Tensor, size: tuple[int, int], max_queries: int = 65536) -> Tensor:
        """``lr`` ``[B, 3, h, w]`` -> ``[B, 3, H, W]`` with ``size = (H, W)`` (the scale is H / h);
        queried in chunks of ``max_queries`` pixels."""
        height, width = int(size[0]), int(size[1])
        feat = self.encoder(lr)
        b = lr.shape[0]
        coord = make_coord(height, width, lr.device, lr.dtype).view(1, -1, 2).expand(b, -1, -1)
        cell = torch.tensor([2.0 / height, 2.0 / width], device=lr.device, dtype=lr.dtype).expand_as(coord)
        chunks = [self.query(feat, coord[:, i:i + max_queries], cell[:, i:i + max_queries])
                  for i in range(0, coord.shape[1], max_queries)]
        res = torch.cat(chunks, dim=1).transpose(1, 2).reshape(b, 3, height, width)
        base = F.interpolate(lr, size=(height, width), mode="bicubic", align_corners=False)
        return base + res

    def forward_points(self, lr: Tensor, coord: Tensor, cell: Tensor, base: Tensor) -> Tensor:
        """Training: the prediction at sampled points ``coord`` / ``cell`` ``[B, Q, 2]`` given the
        bicubic base already sampled there, ``base`` ``[B, Q, 3]``; returns ``[B, Q, 3]``."""
        return base + self.query(self.encoder(lr), coord, cell)


def build_sr_model(network: str, scale: float | None = None, **settings) -> nn.Module:
    """The network of config key ``sr.network`` (``edsr`` needs the integer ``scale``)."""
    if network == "edsr":
        if scale is None:
            raise ValueError("sr.network=edsr is a fixed-scale network: set its scale (sr.scale)")
        settings = {k: v for k, v in settings.items() if k in ("n_feats", "n_blocks", "res_scale")}
        return EDSR(scale, **settings)
    if network == "liif":
        settings = {k: v for k, v in settings.items() if k in ("n_feats", "n_blocks", "mlp_hidden", "mlp_layers",
                                                                "res_scale")}
        return LIIF(**settings)
    raise ValueError(f"sr.network={network!r} is not one of {list(NETWORKS)} (edsr: fixed integer scale; "
                     f"liif: any scale)")
