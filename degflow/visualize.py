"""Pictures for people: image strips for loggers and reports."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def image_strip(rows: list[list[torch.Tensor]], max_tile: int = 192, gap: int = 2) -> torch.Tensor:
    """Tile images into a grid, one list per row, each image ``[3, H, W]`` in [-1, 1].

    Tiles are resized (area) so their longer side is at most ``max_tile`` pixels; images of
    one grid must share a size. Returns ``[3, H_grid, W_grid]`` in [-1, 1] with white gaps.
    """
    h, w = rows[0][0].shape[-2:]
    factor = min(1.0, max_tile / max(h, w))
    th, tw = max(1, round(h * factor)), max(1, round(w * factor))
    n_cols = max(len(r) for r in rows)
    grid = torch.ones(3, len(rows) * (th + gap) - gap, n_cols * (tw + gap) - gap)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            tile = image.detach().float().cpu().clamp(-1, 1)
            if (th, tw) != tuple(tile.shape[-2:]):
                tile = F.interpolate(tile[None], size=(th, tw), mode="area")[0]
            grid[:, i * (th + gap): i * (th + gap) + th, j * (tw + gap): j * (tw + gap) + tw] = tile
    return grid
