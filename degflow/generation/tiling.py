"""Tiling as pure functions: tile spans along an axis, blending windows, the blending loop.

Tiles overlap by ``overlap`` pixels; over each overlap two complementary sin^2 ramps sum to
one, and the outermost quarter of each overlap (next to a crop edge) gets weight 0: it is
context only. Used by :class:`degflow.generation.Synthesizer` for the RAE, which is local.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["Span", "tile_spans", "tile_grid", "ramp", "window", "tile_batches", "blend_tile_batches", "blend_tiles"]

#: ``(start, end)`` of a tile along one axis (end exclusive).
Span = tuple[int, int]


def tile_spans(length: int, tile: int, overlap: int) -> list[Span]:
    """``[(start, end)]`` along one axis: starts ``0, tile - overlap, ...``, the last span
    clipped to ``length`` (it is still longer than ``overlap``); one span if it all fits."""
    if length <= tile:
        return [(0, length)]
    spans, start = [], 0
    while True:
        end = min(start + tile, length)
        spans.append((start, end))
        if end >= length:
            return spans
        start += tile - overlap


def tile_grid(height: int, width: int, tile: int | None, overlap: int) -> tuple[list[Span], list[Span]] | None:
    """Tile spans ``(rows, cols)`` of a ``height x width`` image, or None when it fits one
    tile (or ``tile`` is None: never tile)."""
    if tile is None or max(height, width) <= tile:
        return None
    return tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)


def ramp(overlap: int) -> torch.Tensor:
    """Rising window ``[overlap]`` (float64) over an overlap band: 0 on the first quarter
    (context next to the neighbour's side), a sin^2 ramp in the middle, 1 on the last quarter.
    ``ramp + ramp.flip(0) == 1``, so two tiles' windows sum to one over their band."""
    margin = overlap // 4
    width = overlap - 2 * margin
    k = torch.arange(overlap, dtype=torch.float64)
    return torch.sin(0.5 * math.pi * ((k - margin + 0.5) / width).clamp(0.0, 1.0)) ** 2


def window(spans: list[Span], i: int, overlap: int) -> torch.Tensor:
    """1-D blending weights ``[end - start]`` (float64) of span ``i``: ramps only where a
    neighbour overlaps."""
    start, end = spans[i]
    w = torch.ones(end - start, dtype=torch.float64)
    if len(spans) > 1 and overlap > 0:
        r = ramp(overlap)
        if i > 0:
            w[:overlap] *= r
        if i < len(spans) - 1:
            w[-overlap:] *= r.flip(0)
    return w


def tile_batches(rows: list[Span], cols: list[Span], batch: int) -> list[list[tuple[int, int]]]:
    """The tiles ``(i, j)`` of a grid in groups of at most ``batch`` tiles of one shape (one
    forward pass each): row-major order of each shape's first tile; ``batch=1``: every tile
    alone, row-major."""
    if batch == 1:
        return [[(i, j)] for i in range(len(rows)) for j in range(len(cols))]
    shapes: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, (y0, y1) in enumerate(rows):
        for j, (x0, x1) in enumerate(cols):
            shapes.setdefault((y1 - y0, x1 - x0), []).append((i, j))
    return [tiles[k:k + batch] for tiles in shapes.values() for k in range(0, len(tiles), batch)]


def blend_tile_batches(rows: list[Span], cols: list[Span], overlap: int,
                       work: Callable[[list[tuple[int, int]]], Iterator[tuple[tuple[int, int], Any, torch.Tensor]]],
                       batch: int, device: torch.device | str = "cpu") -> dict[Any, torch.Tensor]:
    """The one blending loop of every tiled path.

    ``work(tiles)`` gets a group of :func:`tile_batches` (up to ``batch`` tiles of one shape)
    and yields ``((i, j), key, [B, C, y1 - y0, x1 - x0])`` for the tiles at ``rows[i] x cols[j]``
    (a generator, so few outputs are alive at a time); the outputs of each key are weighted
    with :func:`window` (``overlap`` wide) and normalised.
    Returns ``{key: [B, C, rows[-1][1], cols[-1][1]]}`` on ``device``.
    """
    acc: dict[Any, torch.Tensor] = {}
    weight = torch.zeros(1, 1, rows[-1][1], cols[-1][1], dtype=torch.float64, device=device)
    windows: dict[tuple[int, int], torch.Tensor] = {}

    def win(i: int, j: int) -> torch.Tensor:
        if (i, j) not in windows:
            windows[(i, j)] = (window(rows, i, overlap)[:, None] * window(cols, j, overlap)[None, :]).to(device)
        return windows[(i, j)]                                                  # [h_t, w_t]

    for group in tile_batches(rows, cols, batch):
        for (i, j), key, out in work(group):
            (y0, y1), (x0, x1) = rows[i], cols[j]
            if key not in acc:
                acc[key] = out.new_zeros(*out.shape[:2], *weight.shape[-2:])
            acc[key][..., y0:y1, x0:x1] += out * win(i, j).to(out.dtype)
        for i, j in group:
            (y0, y1), (x0, x1) = rows[i], cols[j]
            weight[..., y0:y1, x0:x1] += win(i, j)
            del windows[(i, j)]
    for out in acc.values():
        out.div_(weight.to(out.dtype))
    return acc


def blend_tiles(rows: list[Span], cols: list[Span], overlap: int,
                tile: Callable[[int, int], Iterator[tuple[Any, torch.Tensor]]],
                device: torch.device | str = "cpu") -> dict[Any, torch.Tensor]:
    """:func:`blend_tile_batches` one tile at a time: ``tile(i, j)`` yields ``(key, [B, C,
    y1 - y0, x1 - x0])`` for the tile at ``rows[i] x cols[j]``."""
    return blend_tile_batches(rows, cols, overlap, lambda group: (((i, j), key, out) for i, j in group
                                                                  for key, out in tile(i, j)), 1, device)
