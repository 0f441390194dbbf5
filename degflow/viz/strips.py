"""Pictures for people: image strips for loggers and reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def labelled_strip(rows: Mapping[str, Sequence[torch.Tensor]], columns: Sequence[str], title: str = "",
                   max_tile: int = 192, gap: int = 2) -> torch.Tensor:
    """:func:`image_strip` with a caption left of each row and a label above each column.

    ``rows``: ``{caption: [image per column]}``, images ``[3, H, W]`` in [-1, 1];
    ``columns``: one label per column (e.g. ``"x2.5*\\nt=0.50"``). Drawn with matplotlib
    (Agg, no display needed). Returns ``[3, H', W']`` in [-1, 1], ready for a logger.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captions = list(rows)
    if any(len(rows[c]) != len(columns) for c in captions):
        raise ValueError(f"every row needs one image per column ({len(columns)}), got "
                         f"{ {c: len(rows[c]) for c in captions} }")
    grid = image_strip([list(rows[c]) for c in captions], max_tile=max_tile, gap=gap)   # [3, Hg, Wg]
    th = (grid.shape[1] + gap) // len(captions)
    tw = (grid.shape[2] + gap) // len(columns)
    dpi = 100
    fig = plt.figure(figsize=((grid.shape[2] + 150) / dpi, (grid.shape[1] + 60 + (24 if title else 0)) / dpi),
                     dpi=dpi)
    ax = fig.add_axes((130 / (grid.shape[2] + 150), 10 / fig.bbox.height,
                       grid.shape[2] / (grid.shape[2] + 150), grid.shape[1] / fig.bbox.height))
    ax.imshow(((grid + 1) / 2).permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([j * tw + (tw - gap) / 2 for j in range(len(columns))], list(columns), fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks([i * th + (th - gap) / 2 for i in range(len(captions))], captions, fontsize=9)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    fig.canvas.draw()
    rgba = torch.frombuffer(bytearray(fig.canvas.buffer_rgba()), dtype=torch.uint8)
    width, height = fig.canvas.get_width_height()
    plt.close(fig)
    rgb = rgba.view(height, width, 4)[..., :3].permute(2, 0, 1).float()             # [3, H', W']
    return rgb / 127.5 - 1
