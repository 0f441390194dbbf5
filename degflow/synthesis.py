"""Generation of LR images at any scale from HR images: the one code path for validation,
the Python API and the ``synthesize.py`` CLI.

Encode the HR image once (latent z_0 and skip features H_HR), integrate dz/dt = v(z, t) from
t = 0 to every requested t(s) in ONE solve, decode each latent with H_HR, clamp to [-1, 1].
Images whose size is not a multiple of the model's stride are padded (replicate) and
cropped back, never resized.

Large images are tiled (:attr:`Synthesizer.tile_size`, :attr:`Synthesizer.tile_overlap`, HR
pixels), but only where it is exact up to the tile edges: the RAE. The RAE is local
(per-pixel LayerNorm, convolutions), the velocity U-Net is not (GroupNorm statistics and
self-attention over its whole input). So the HR image is encoded tile by tile and the tile
latents are blended into ONE latent of the whole image; the ODE is solved once on that
latent (1/8 of the pixels per side, small even for 2K images); each tile is then decoded
from its crop of the solved latent with its own HR skip features, and the decoded tiles are
blended in image space. Blending uses complementary cosine ramps over the overlaps (the
outermost quarter of each overlap, next to a crop edge, gets weight 0: it is context only).
Tile origins lie on multiples of :attr:`Synthesizer.pad_multiple`, so every tile sees the
same downsampling grids as the whole image would.

:func:`synthesize_folder` turns a folder of HR images into an SR training set (see its
docstring for the layout, the manifest and the resume / sharding rules).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from degflow import __version__
from degflow.checkpoint import CheckpointError, atomic_write_text, build_model, file_sha256, load_checkpoint
from degflow.metrics import bicubic_baseline, resize_to_lr
from degflow.solvers import SolverSpec, integrate
from degflow.spline import PATH_KINDS, evaluate_path
from degflow.timemap import TimeMap

__all__ = [
    "BASELINES",
    "OUTPUT_SIZES",
    "SynthesisResult",
    "Synthesizer",
    "FolderSummary",
    "expand_scales",
    "scale_label",
    "synthesize_folder",
]

log = logging.getLogger(__name__)

#: Values of ``size`` (config key ``size``): true LR size, HR size (RealSR convention), both.
OUTPUT_SIZES: tuple[str, ...] = ("lr", "hr", "both")
#: Comparison baselines (config key ``baseline``).
BASELINES: tuple[str, ...] = ("bicubic", "ae_interp")

_SCALE_DECIMALS = 10


# ------------------------------------------------------------------------------ scales
def scale_label(scale: float) -> str:
    """Folder label of a scale without trailing zeros: ``2.0 -> "2"``, ``2.25 -> "2.25"``.

    Exact to 10 decimals (unlike ``%g``, which keeps 6 significant digits).
    """
    text = f"{round(float(scale), _SCALE_DECIMALS):.{_SCALE_DECIMALS}f}".rstrip("0").rstrip(".")
    return text


def expand_scales(spec: Any, key: str = "scales") -> list[float]:
    """The config node ``scales`` as a plain sorted list of unique scales.

    Args:
        spec: a number, a list of numbers (``[1.5, 2.25, 3.7]``), or a mapping
            ``{start, stop, step}``: ``start, start + step, ...`` up to and including ``stop``
            (within 1e-9), each value computed as ``start + i * step`` and rounded to 10
            decimals, so there is no float drift (``1.1 + 2 * 0.1 -> 1.3``).
    Raises:
        ValueError naming ``key`` for anything else, for scales < 1, a step <= 0 or
        ``stop < start``.
    """
    def number(v: Any, what: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"{key}: {what} must be a finite number, got {v!r}")
        return float(v)

    if isinstance(spec, Mapping):
        if set(spec) != {"start", "stop", "step"}:
            raise ValueError(
                f"{key}: a scale range needs exactly the keys start, stop, step (e.g. "
                f"{key}.start=1.1 {key}.stop=4.0 {key}.step=0.1), got keys {sorted(spec)}"
            )
        start, stop, step = (number(spec[k], f"{key}.{k}") for k in ("start", "stop", "step"))
        if step <= 0:
            raise ValueError(f"{key}.step must be > 0, got {step!r}")
        if stop < start:
            raise ValueError(f"{key}.stop ({stop!r}) must be >= {key}.start ({start!r})")
        count = math.floor((stop - start) / step + 1e-9) + 1
        values = [round(start + i * step, _SCALE_DECIMALS) for i in range(count)]
    elif isinstance(spec, (list, tuple)):
        values = [round(number(v, "every scale"), _SCALE_DECIMALS) for v in spec]
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        values = [round(number(spec, "the scale"), _SCALE_DECIMALS)]
    else:
        raise ValueError(
            f"{key}: expected a list of scales ({key}=[1.5,2.25,3.7]) or a range "
            f"({key}.start=1.1 {key}.stop=4.0 {key}.step=0.1), got {spec!r}"
        )
    if not values:
        raise ValueError(f"{key}: no scales requested")
    bad = [v for v in values if v < 1.0]
    if bad:
        raise ValueError(f"{key}: every scale must be >= 1 (1 = the HR image itself), got {bad}")
    return sorted(set(values))


# ------------------------------------------------------------------------------ tiling
def _tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
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


def _ramp(overlap: int) -> torch.Tensor:
    """Rising window ``[overlap]`` over an overlap band: 0 on the first quarter (context
    next to the neighbour's side), a sin^2 ramp in the middle, 1 on the last quarter.
    ``ramp + ramp.flip(0) == 1``, so two tiles' windows sum to one over their band."""
    margin = overlap // 4
    width = overlap - 2 * margin
    k = torch.arange(overlap, dtype=torch.float64)
    r = torch.sin(0.5 * math.pi * ((k - margin + 0.5) / width).clamp(0.0, 1.0)) ** 2
    return r


def _window(spans: list[tuple[int, int]], i: int, overlap: int) -> torch.Tensor:
    """1-D blending weights ``[end - start]`` of span ``i``: ramps only where a neighbour overlaps."""
    start, end = spans[i]
    w = torch.ones(end - start, dtype=torch.float64)
    if len(spans) > 1 and overlap > 0:
        ramp = _ramp(overlap)
        if i > 0:
            w[:overlap] *= ramp
        if i < len(spans) - 1:
            w[-overlap:] *= ramp.flip(0)
    return w


# ------------------------------------------------------------------------------ synthesizer
@dataclass
class SynthesisResult:
    """Output of :meth:`Synthesizer.generate`.

    ``images[s]`` is ``[B, 3, H, W]`` in [-1, 1] at HR pixel size for each decoded scale s.
    ``nfe`` counts velocity evaluations (one solve, tiled or not), ``seconds`` the whole call
    (encode, solve, decode, blending), ``solve_seconds`` the ODE solves alone.
    """

    images: dict[float, torch.Tensor]
    times: dict[float, float]
    nfe: int
    seconds: float
    solve_seconds: float = 0.0
    tiles: int = 1


class Synthesizer:
    """A trained DegFlow model ready to generate: frozen RAE + velocity field + time map.

    Use :meth:`from_checkpoint` with a stage-2 (``lfm``) checkpoint, then call the object:
    ``synth(hr_batch, scales) -> {scale: lr_batch}`` (tensors in [-1, 1], LR at HR size, or at
    true LR size with ``size="lr"``).

    Args (beyond the models): ``tile_size`` / ``tile_overlap`` in HR pixels (images with a
    side above ``tile_size`` are tiled; ``None`` never tiles). Both are rounded to multiples
    of :attr:`pad_multiple` (tile down, overlap up); the overlap must be at most half a tile.
    ``train_scales`` and ``spline_path`` are needed only by :meth:`interpolate_real`.
    """

    def __init__(self, rae: torch.nn.Module, velocity: torch.nn.Module, time_map: TimeMap,
                 solver: SolverSpec, device: torch.device | str = "cpu", precision: str = "fp32",
                 max_trained_scale: float | None = None, *, tile_size: int | None = 1024,
                 tile_overlap: int = 256, train_scales: Sequence[float] | None = None,
                 spline_path: str = "cubic", checkpoint_sha256: str | None = None):
        self.device = torch.device(device)
        # eval() only: training validation passes the live velocity net, whose parameters must
        # keep requires_grad (generation itself runs under no_grad)
        self.rae = rae.to(self.device).eval()
        self.velocity = velocity.to(self.device).eval()
        self.time_map = time_map
        self.solver = solver
        self.precision = precision
        self.max_trained_scale = max_trained_scale if max_trained_scale is not None else time_map.scales[-1]
        levels = len(velocity.config.get("ch_mult", (1,))) - 1
        self.pad_multiple = int(rae.stride) * (2 ** levels)
        self.tile_size, self.tile_overlap = self._tiling(tile_size, tile_overlap)
        self.train_scales = tuple(float(s) for s in train_scales) if train_scales is not None else None
        if spline_path not in PATH_KINDS:
            raise ValueError(f"spline_path={spline_path!r} is not one of {list(PATH_KINDS)}")
        self.spline_path = spline_path
        self.checkpoint_sha256 = checkpoint_sha256
        self._warned: set[float] = set()

    def _tiling(self, tile_size: int | None, tile_overlap: int) -> tuple[int | None, int]:
        if tile_size is None:
            return None, 0
        for key, val in (("tile_size", tile_size), ("tile_overlap", tile_overlap)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ValueError(f"{key}: expected an integer >= 0 (HR pixels), got {val!r}")
        m = self.pad_multiple
        tile = max(m, tile_size // m * m)
        overlap = -(-tile_overlap // m) * m
        if 2 * overlap > tile:
            raise ValueError(
                f"tile_overlap={tile_overlap} (rounded up to {overlap}, a multiple of the model's "
                f"pad multiple {m}) must be at most half of tile_size={tile_size} (rounded down "
                f"to {tile}); use a larger tile_size or a smaller tile_overlap"
            )
        if (tile, overlap) != (tile_size, tile_overlap):
            log.info("tiling: tile_size %d -> %d, tile_overlap %d -> %d (multiples of %d)",
                     tile_size, tile, tile_overlap, overlap, m)
        return tile, overlap

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu",
                        solver: SolverSpec | None = None, precision: str = "fp32", *,
                        tile_size: int | None = 1024, tile_overlap: int = 256) -> "Synthesizer":
        """Load a stage-2 checkpoint (self-contained: RAE weights, velocity net, knot times, solver).

        ``device="auto"`` picks CUDA when present. ``solver=None`` uses the checkpoint's solver.
        Raises :class:`~degflow.checkpoint.CheckpointError` (naming ``ckpt``) for a missing,
        corrupt, stage-1 or incomplete checkpoint.
        """
        from degflow.training.loop import resolve_device

        ckpt = load_checkpoint(path, kind="lfm", key="ckpt")
        try:
            rae = build_model(ckpt["models"]["rae"])
            velocity = build_model(ckpt["models"]["velocity"])
            time_map = TimeMap.from_dict(ckpt["time_map"])
            train_scales = [float(s) for s in ckpt["train_scales"]]
            stored_solver = ckpt["extra"]["solver"]
            spline_path = ckpt["extra"].get("spline", {}).get("path", "cubic")
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"ckpt={str(path)!r} is an incomplete or inconsistent stage-2 checkpoint "
                f"({type(err).__name__}: {err})"
            ) from None
        if solver is None:
            solver = SolverSpec.create(**stored_solver)
        return cls(rae, velocity, time_map, solver, device=resolve_device(str(device)),
                   precision=precision, max_trained_scale=max(train_scales), tile_size=tile_size,
                   tile_overlap=tile_overlap, train_scales=train_scales, spline_path=spline_path,
                   checkpoint_sha256=file_sha256(path))

    # -------------------------------------------------------------------------- times
    def scale_times(self, scales: Sequence[float], allow_extrapolation: bool = False) -> dict[float, float]:
        """Time t(s) of each scale; scales beyond the trained range need ``allow_extrapolation``
        (then a warning, once per scale)."""
        out = {}
        for s in scales:
            s = float(s)
            if not math.isfinite(s) or s < 1.0:
                raise ValueError(f"scales: every scale must be a finite number >= 1 (1 = the HR image), got {s:g}")
            if s > self.max_trained_scale + 1e-9:
                if not allow_extrapolation:
                    raise ValueError(
                        f"scales: {s:g} lies outside the trained range [1, {self.max_trained_scale:g}]; "
                        "set allow_extrapolation=true to extrapolate the trajectory anyway"
                    )
                if s not in self._warned:
                    self._warned.add(s)
                    log.warning("scale %g lies outside the trained range [1, %g]: extrapolating "
                                "(allow_extrapolation=true)", s, self.max_trained_scale)
            out[s] = float(self.time_map.scale_to_time(s))
        return out

    def _velocity(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The network was trained on t in [0, 1]; beyond (extrapolation) the trajectory
        # continues with the velocity field of t = 1.
        t = t.clamp(max=1.0)
        if self.precision == "bf16" and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.velocity(z, t).to(z.dtype)
        return self.velocity(z, t)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    # -------------------------------------------------------------------------- tiling
    def _blend_tiles(self, rows: list[tuple[int, int]], cols: list[tuple[int, int]], overlap: int,
                     tile: Callable[[int, int], Iterator[tuple[Any, torch.Tensor]]]) -> dict[Any, torch.Tensor]:
        """The one blending loop of every tiled path.

        ``tile(i, j)`` yields ``(key, [B, C, y1 - y0, x1 - x0])`` for the tile at
        ``rows[i] x cols[j]`` (a generator, so one output is alive at a time); the outputs of
        each key are weighted with the tiling ramps (:func:`_window`, ``overlap`` wide) and
        normalised. Returns ``{key: [B, C, rows[-1][1], cols[-1][1]]}``.
        """
        acc: dict[Any, torch.Tensor] = {}
        weight = torch.zeros(1, 1, rows[-1][1], cols[-1][1], dtype=torch.float64, device=self.device)
        for i, (y0, y1) in enumerate(rows):
            wy = _window(rows, i, overlap)
            for j, (x0, x1) in enumerate(cols):
                wx = _window(cols, j, overlap)
                win = (wy[:, None] * wx[None, :]).to(self.device)                  # [h_t, w_t]
                for key, out in tile(i, j):
                    if key not in acc:
                        acc[key] = out.new_zeros(*out.shape[:2], *weight.shape[-2:])
                    acc[key][..., y0:y1, x0:x1] += out * win.to(out.dtype)
                weight[..., y0:y1, x0:x1] += win
        for out in acc.values():
            out.div_(weight.to(out.dtype))
        return acc

    def _tiled(self, work: Callable[[list[torch.Tensor]], dict[float, torch.Tensor]],
               inputs: list[torch.Tensor]) -> tuple[dict[float, torch.Tensor], int]:
        """Run ``work`` on aligned crops of ``inputs`` (each ``[B, 3, H, W]``) and blend.

        ``work(crops) -> {key: [B, 3, h, w]}`` in [-1, 1]. Untiled when the image fits in one
        tile. Returns ``(images, tiles)``.
        """
        h, w = inputs[0].shape[-2:]
        if self.tile_size is None or max(h, w) <= self.tile_size:
            return work(inputs), 1
        rows = _tile_spans(h, self.tile_size, self.tile_overlap)
        cols = _tile_spans(w, self.tile_size, self.tile_overlap)

        def tile(i: int, j: int) -> Iterator[tuple[float, torch.Tensor]]:
            (y0, y1), (x0, x1) = rows[i], cols[j]
            yield from work([x[..., y0:y1, x0:x1] for x in inputs]).items()

        images = self._blend_tiles(rows, cols, self.tile_overlap, tile)
        return {k: v.clamp_(-1, 1) for k, v in images.items()}, len(rows) * len(cols)

    # -------------------------------------------------------------------------- generation
    def _tile_grid(self, h: int, w: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
        """Tile spans ``(rows, cols)`` of a padded ``h x w`` image, or None when it fits one tile."""
        if self.tile_size is None or max(h, w) <= self.tile_size:
            return None
        return _tile_spans(h, self.tile_size, self.tile_overlap), _tile_spans(w, self.tile_size, self.tile_overlap)

    def _encode_tiled(self, x: torch.Tensor, rows: list[tuple[int, int]], cols: list[tuple[int, int]]) -> torch.Tensor:
        """Latent ``[B, C, H/8, W/8]`` of the padded image ``x [B, 3, H, W]``, encoded tile by
        tile and blended with the tiling ramps at latent resolution."""
        st = int(self.rae.stride)

        def tile(i: int, j: int) -> Iterator[tuple[int, torch.Tensor]]:
            (y0, y1), (x0, x1) = rows[i], cols[j]
            yield 0, self.rae.encode(x[..., y0:y1, x0:x1])[0]

        return self._blend_tiles([(a // st, b // st) for a, b in rows], [(a // st, b // st) for a, b in cols],
                                 self.tile_overlap // st, tile)[0]

    def _decode_tiled(self, x: torch.Tensor, latents: dict[float, torch.Tensor],
                      rows: list[tuple[int, int]], cols: list[tuple[int, int]]) -> dict[float, torch.Tensor]:
        """Decode ``latents[s] [B, C, H/8, W/8]`` tile by tile with each tile's own HR skip
        features from the padded image ``x [B, 3, H, W]``; blend in image space."""
        st = int(self.rae.stride)

        def tile(i: int, j: int) -> Iterator[tuple[float, torch.Tensor]]:
            (y0, y1), (x0, x1) = rows[i], cols[j]
            feats = self.rae.features(x[..., y0:y1, x0:x1])
            for s, z in latents.items():
                yield s, self.rae.decode(z[..., y0 // st:y1 // st, x0 // st:x1 // st], feats).clamp(-1, 1)

        return {s: img.clamp_(-1, 1) for s, img in self._blend_tiles(rows, cols, self.tile_overlap, tile).items()}

    @torch.no_grad()
    def generate(self, hr: torch.Tensor, scales: Sequence[float], allow_extrapolation: bool = False,
                 solver: SolverSpec | None = None, *, decode: Sequence[float] | None = None) -> SynthesisResult:
        """Generate LR images at HR size for every scale, from ONE ODE solve.

        Args:
            hr: ``[B, 3, H, W]`` HR images in [-1, 1] (any H, W >= 1).
            scales: requested scales s >= 1 (exact values; nothing is rounded to a grid: every
                t(s) is a step of the fixed-step grid with ``solver.interp=grid``).
            solver: overrides :attr:`solver` for this call.
            decode: the subset of ``scales`` to decode (default: all). The solve still
                covers every scale, so the step grid (and the result) does not depend on it.
        Returns:
            :class:`SynthesisResult` with ``images[s]`` of shape ``[B, 3, H, W]``.
        """
        if hr.dim() != 4 or hr.shape[1] != 3:
            raise ValueError(f"hr must be [B, 3, H, W], got shape {tuple(hr.shape)}")
        times = self.scale_times(scales, allow_extrapolation)
        wanted = list(times) if decode is None else [float(s) for s in decode]
        missing = [s for s in wanted if s not in times]
        if missing:
            raise ValueError(f"decode: scales {missing} are not among the requested scales {list(times)}")
        solver = solver or self.solver
        self._sync()
        start = time.perf_counter()
        hr = hr.to(self.device, torch.float32)
        h, w = hr.shape[-2:]
        x = self._pad(hr)
        grid = self._tile_grid(*x.shape[-2:])
        if grid is None:
            z0, feats = self.rae.encode(x)
        else:
            z0, feats = self._encode_tiled(x, *grid), None
        unique = sorted(set(times.values()))
        self._sync()
        solve_start = time.perf_counter()
        states, nfe = integrate(self._velocity, z0, unique, solver)               # [T,B,C,h,w]
        self._sync()
        solve = time.perf_counter() - solve_start
        latents = {s: states[unique.index(times[s])] for s in wanted}
        del states
        if grid is None:
            images = {s: self.rae.decode(z, feats).clamp(-1, 1)[..., :h, :w] for s, z in latents.items()}
            tiles = 1
        else:
            images = {s: img[..., :h, :w] for s, img in self._decode_tiled(x, latents, *grid).items()}
            tiles = len(grid[0]) * len(grid[1])
        self._sync()
        return SynthesisResult(images=images, times=times, nfe=nfe, seconds=time.perf_counter() - start,
                               solve_seconds=solve, tiles=tiles)

    def __call__(self, hr: torch.Tensor, scales: Sequence[float], allow_extrapolation: bool = False,
                 size: str = "hr") -> dict[float, torch.Tensor]:
        """``synth(hr_batch, scales) -> {scale: lr_batch}`` (see :meth:`generate`).

        ``size="hr"``: LR images at HR pixel size ``[B, 3, H, W]``; ``size="lr"``: at true LR
        size ``[B, 3, round(H/s), round(W/s)]`` (antialiased bicubic of the HR-size decode,
        :func:`degflow.metrics.resize_to_lr`).
        """
        if size not in ("hr", "lr"):
            raise ValueError(f"size={size!r} is not one of ['hr', 'lr']")
        images = self.generate(hr, scales, allow_extrapolation).images
        if size == "lr":
            images = {s: resize_to_lr(x, s) for s, x in images.items()}
        return images

    # -------------------------------------------------------------------------- ae_interp
    def _interp_and_decode(self, crops: list[torch.Tensor], times: dict[float, float]) -> dict[float, torch.Tensor]:
        assert self.train_scales is not None
        h, w = crops[0].shape[-2:]
        b = crops[0].shape[0]
        z_hr, hr_feats = self.rae.encode(self._pad(crops[0]))
        # one knot at a time: peak memory of a single encode
        knots = torch.stack([z_hr] + [self.rae.encode(self._pad(x))[0] for x in crops[1:]], dim=1)  # [B,K,C,h,w]
        knot_times = torch.tensor(self.time_map.knot_times(self.train_scales), device=self.device)
        images = {}
        for s, t in times.items():
            point = evaluate_path(self.spline_path, knot_times, knots, torch.full((b,), t, device=self.device))
            images[s] = self.rae.decode(point.value, hr_feats).clamp(-1, 1)[..., :h, :w]
        return images

    @torch.no_grad()
    def interpolate_real(self, hr: torch.Tensor, real: Mapping[float, torch.Tensor], scales: Sequence[float],
                         allow_extrapolation: bool = False) -> SynthesisResult:
        """The oracle baseline ``ae_interp``: decode the path (the checkpoint's spline kind)
        through the REAL encoded latents of the training scales, at t(s).

        Args:
            hr: ``[B, 3, H, W]`` HR images in [-1, 1].
            real: ``{train_scale: [B, 3, H, W]}`` real LR images at HR pixel size, one per
                training scale > 1 (:attr:`train_scales`).
        """
        if self.train_scales is None:
            raise ValueError("interpolate_real needs the training scales (build the Synthesizer with "
                             "from_checkpoint, or pass train_scales=...)")
        times = self.scale_times(scales, allow_extrapolation)
        knot_images = [hr.to(self.device, torch.float32)]
        for s in self.train_scales[1:]:
            x = next((v for k, v in real.items() if abs(float(k) - s) < 1e-9), None)
            if x is None:
                raise ValueError(f"ae_interp needs a real LR image at every training scale "
                                 f"{[scale_label(v) for v in self.train_scales[1:]]}; x{scale_label(s)} is missing")
            if x.shape != hr.shape:
                raise ValueError(f"ae_interp: the real x{scale_label(s)} image has shape {tuple(x.shape)}, "
                                 f"expected the HR shape {tuple(hr.shape)} (LR stored at HR size)")
            knot_images.append(x.to(self.device, torch.float32))
        start = time.perf_counter()
        images, tiles = self._tiled(lambda crops: self._interp_and_decode(crops, times), knot_images)
        return SynthesisResult(images=images, times=times, nfe=0, seconds=time.perf_counter() - start,
                               tiles=tiles)



# ------------------------------------------------------------------------------ folders
@dataclass
class FolderSummary:
    """What :func:`synthesize_folder` did (this shard only)."""

    images: int                      # images in this shard
    processed: int                   # images generated in this run
    skipped: int                     # images whose every output already existed
    failed: int                      # images with at least one error (see ``failures``)
    outputs_written: int
    seconds: float
    failures: list[dict[str, str]] = field(default_factory=list)
    manifest: str = ""
    failed_file: str = ""

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise (2, usage errors, is raised as ValueError)."""
        return 1 if self.failed else 0

    def line(self) -> str:
        return (f"images {self.images}: {self.processed} processed, {self.skipped} skipped (complete), "
                f"{self.failed} failed; {self.outputs_written} outputs written; {self.seconds:.1f} s")


@dataclass
class _Output:
    kind: str           # "hr" | "degflow" | "bicubic" | "ae_interp"
    size: str           # "lr" | "hr"
    scale: float
    rel: str            # path relative to out, posix


@dataclass
class _Item:
    path: Path
    source: str         # path relative to input, posix
    name: str           # output name relative to each scale folder, posix, ends with .png
    pending: list[_Output]  # outputs still to write


_MANAGED = ("HR", "LR", "LR_hrsize", "baselines")
_SETTINGS_FILE = "synthesis.json"


def _output_names(paths: list[Path], root: Path) -> dict[Path, str]:
    """Output name per source: its path under ``root`` with a ``.png`` suffix, subfolders kept.
    Sources that would collide (``a.jpg`` and ``a.png``) keep their extension (``a.jpg.png``)."""
    plain = {p: p.relative_to(root).with_suffix(".png").as_posix() for p in paths}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name] = counts.get(name, 0) + 1
    names = {p: (n if counts[n] == 1 else p.relative_to(root).as_posix() + ".png") for p, n in plain.items()}
    if len(set(names.values())) != len(names):
        raise ValueError(f"input: source files map to the same output name; rename them: "
                         f"{sorted(n for n in names.values() if list(names.values()).count(n) > 1)}")
    return names


def _in_shard(source: str, shard: int, num_shards: int) -> bool:
    """Stable assignment of a source (relative path) to a shard: sha256 of the path."""
    return int(hashlib.sha256(source.encode("utf-8")).hexdigest(), 16) % num_shards == shard


def _read_manifest(path: Path) -> tuple[dict[str, str], bool]:
    """``{output: line}`` of a manifest (last line per output wins) and whether the file had
    duplicate or unreadable lines."""
    lines: dict[str, str] = {}
    dirty = False
    if not path.is_file():
        return lines, False
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            output = json.loads(raw)["output"]
        except (ValueError, KeyError, TypeError):
            dirty = True
            continue
        dirty |= output in lines
        lines[output] = raw
    return lines, dirty


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines with one write (O_APPEND) and fsync."""
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _find_real_lr(root: Path, name: str, scale: float) -> Path | None:
    """The real LR image ``{root}/x{s}/{name without suffix}.{any image extension}``."""
    from degflow.data.images import IMAGE_EXTENSIONS

    stem = root / f"x{scale_label(scale)}" / name[: -len(".png")]
    for ext in IMAGE_EXTENSIONS:
        for candidate in (Path(f"{stem}{ext}"), Path(f"{stem}{ext.upper()}")):
            if candidate.is_file():
                return candidate
    return None


def _load_real_lr(root: Path, item: _Item, scales: Sequence[float], hr: torch.Tensor) -> dict[float, torch.Tensor]:
    """Real LR images of one HR image ``[3, H, W]`` at HR size (true-LR-size files are
    bicubic-upsampled), for the ae_interp baseline."""
    from degflow.data.common import size_relation, upsample_to
    from degflow.data.images import read_image

    h, w = hr.shape[-2:]
    real = {}
    for s in scales:
        path = _find_real_lr(root, item.name, s)
        if path is None:
            raise ValueError(f"ae_interp: no real LR image x{scale_label(s)}/{item.name[:-len('.png')]}.* "
                             f"under baseline_lr_root={str(root)!r}")
        x = read_image(path)
        relation = size_relation((w, h), (x.shape[-1], x.shape[-2]), s)
        if relation is None:
            raise ValueError(f"ae_interp: real LR {path} is {x.shape[-1]}x{x.shape[-2]}, neither the HR size "
                             f"{w}x{h} nor about HR/{scale_label(s)}")
        real[s] = x if relation == "same" else upsample_to(x, h, w)
    return real


def _check_folders(input_dir: Path, out_dir: Path) -> None:
    if not input_dir.is_dir():
        raise ValueError(f"input={str(input_dir)!r} is not a folder of HR images")
    src, dst = input_dir.resolve(), out_dir.resolve()
    if dst == src or dst.is_relative_to(src):
        raise ValueError(f"out={str(out_dir)!r} lies inside input={str(input_dir)!r}; the outputs would be "
                         "read back as inputs on the next run. Choose an out folder outside the input folder")
    for sub in _MANAGED:
        if src == dst / sub or src.is_relative_to(dst / sub):
            raise ValueError(f"input={str(input_dir)!r} lies inside out/{sub}, which synthesis writes; "
                             "choose another out folder")


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix outputs of different generation settings in one out folder."""
    path = out_dir / _SETTINGS_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if isinstance(old, dict):
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if diff:
                raise ValueError(
                    f"out={str(out_dir)!r} holds outputs generated with other settings "
                    f"({'; '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                    f"resuming would mix them. Use a new out folder (or delete {path} to force it)"
                )
            return
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def synthesize_folder(
    synth: Synthesizer,
    input_dir: str | Path,
    out_dir: str | Path,
    scales: Sequence[float],
    *,
    size: str = "lr",
    batch_size: int = 1,
    allow_extrapolation: bool = False,
    shard: int = 0,
    num_shards: int = 1,
    baselines: Sequence[str] = (),
    baseline_lr_root: str | Path | None = None,
    progress: bool = True,
    after_image: Callable[[str], None] | None = None,
) -> FolderSummary:
    """Turn a folder of HR images into an SR training set at every scale.

    Layout under ``out_dir`` (``name`` = the source's path under ``input_dir``, subfolders
    kept, suffix ``.png``; label = the scale without trailing zeros, ``x2``, ``x2.25``)::

        HR/name.png                        the source as PNG, at its own size
        LR/x{label}/name.png               size=lr|both: true LR size round(H/s) x round(W/s)
                                           size=hr: HR pixel size (RealSR convention)
        LR_hrsize/x{label}/name.png        size=both: HR pixel size
        baselines/{bicubic|ae_interp}/LR[/_hrsize]/x{label}/name.png   same layout
        manifest.jsonl                     one JSON line per output file
        failed.jsonl                       {"file", "error"} per failure of this run
        synthesis.json                     generation settings (checkpoint, solver, tiling)

    With ``num_shards > 1`` the manifest and failure files are ``manifest.shard{i}-of-{n}.jsonl``
    and ``failed.shard{i}-of-{n}.jsonl``; a source belongs to shard ``sha256(name) % n``.

    Resumable: every file is written to a temporary name and renamed; the manifest gets the
    lines of an image in one append after its files. An output counts as done when its file
    exists and a manifest line records it; an image whose outputs are all done is skipped.
    Stale manifest lines (file deleted) and duplicates are dropped at start.

    One bad image never stops the run: errors are recorded in the summary and the failure
    file. Configuration errors (no images, out inside input, scales outside the trained range
    without ``allow_extrapolation``, ...) raise ``ValueError``.

    Args:
        synth: the model (its tiling, solver and precision are used as they are).
        scales: requested scales (exact, >= 1).
        size: ``"lr"``, ``"hr"`` or ``"both"`` (config key ``size``).
        batch_size: images of the same size generated together.
        baselines: any of ``"bicubic"`` and ``"ae_interp"`` (needs ``baseline_lr_root``
            holding real LR images ``x{label}/name.*`` at every training scale).
        after_image: called with the source name after each image is complete (tests use it
            to simulate a kill).
    """
    from tqdm.auto import tqdm

    from degflow.data.images import ImageReadError, find_images, read_image, read_image_size

    started = time.perf_counter()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if size not in OUTPUT_SIZES:
        raise ValueError(f"size={size!r} is not one of {list(OUTPUT_SIZES)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for key, val in (("shard", shard), ("num_shards", num_shards)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise ValueError(f"{key} must be an integer, got {val!r}")
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} num_shards={num_shards}: need num_shards >= 1 and 0 <= shard < num_shards")
    baselines = tuple(dict.fromkeys(baselines))
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"baseline: {unknown} not among {list(BASELINES)}")
    lr_root = Path(baseline_lr_root) if baseline_lr_root else None
    if "ae_interp" in baselines:
        if lr_root is None or not lr_root.is_dir():
            raise ValueError("baseline=ae_interp needs baseline_lr_root= a folder of real LR images laid out as "
                             f"x{{scale}}/name.png, got {baseline_lr_root!r}")
        if synth.train_scales is None:
            raise ValueError("baseline=ae_interp needs a Synthesizer that knows its training scales (from_checkpoint)")
    scales = [float(s) for s in scales]
    if not scales:
        raise ValueError("scales: no scales requested")
    times = synth.scale_times(scales, allow_extrapolation)       # refuses out-of-range scales now
    _check_folders(input_dir, out_dir)
    sources = find_images(input_dir)
    if not sources:
        from degflow.data.images import IMAGE_EXTENSIONS

        raise ValueError(f"input={str(input_dir)!r} holds no images (searched recursively for "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    names = _output_names(sources, input_dir)

    settings = {
        "checkpoint_sha256": synth.checkpoint_sha256, "solver": asdict(synth.solver), "precision": synth.precision,
        "tile_size": synth.tile_size, "tile_overlap": synth.tile_overlap,
        "LR_folder": "HR pixel size" if size == "hr" else "true LR size",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, settings)
    suffix = "" if num_shards == 1 else f".shard{shard}-of-{num_shards}"
    manifest, failed_file = out_dir / f"manifest{suffix}.jsonl", out_dir / f"failed{suffix}.jsonl"
    recorded = _recorded_outputs(out_dir, manifest)

    sizes = {"lr": ("lr",), "hr": ("hr",), "both": ("lr", "hr")}[size]
    items: list[_Item] = []
    for path in sources:
        source = path.relative_to(input_dir).as_posix()
        if not _in_shard(source, shard, num_shards):
            continue
        name = names[path]
        outputs = [_Output("hr", "hr", 1.0, f"HR/{name}")]
        for kind in ("degflow", *baselines):
            prefix = "" if kind == "degflow" else f"baselines/{kind}/"
            for s in scales:
                for sz in sizes:
                    folder = "LR" if sz == "lr" or size == "hr" else "LR_hrsize"
                    outputs.append(_Output(kind, sz, s, f"{prefix}{folder}/x{scale_label(s)}/{name}"))
        items.append(_Item(path, source, name,
                           [o for o in outputs if not (o.rel in recorded and (out_dir / o.rel).is_file())]))
    if not items:
        log.info("shard %d of %d holds none of the %d input images", shard, num_shards, len(sources))
    todo = [it for it in items if it.pending]

    bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="synthesize", dynamic_ncols=True)
    job = _FolderJob(synth, out_dir, scales, times, allow_extrapolation, baselines, lr_root, manifest,
                     failed_file, bar, after_image)
    groups: dict[tuple[int, int], list[_Item]] = {}
    for item in todo:                           # batches of equal size, sized from the file headers
        try:
            w, h = read_image_size(item.path)
        except (ImageReadError, OSError) as err:
            job.fail(item, err, count=True)
            continue
        groups.setdefault((h, w), []).append(item)
    for group in groups.values():
        for k in range(0, len(group), batch_size):
            loaded: dict[tuple[int, ...], list[tuple[_Item, torch.Tensor]]] = {}
            for item in group[k:k + batch_size]:
                try:
                    x = read_image(item.path)
                except (ImageReadError, OSError) as err:
                    job.fail(item, err, count=True)
                    continue
                loaded.setdefault(tuple(x.shape), []).append((item, x))
            for pairs in loaded.values():
                job.run([it for it, _ in pairs], torch.stack([x for _, x in pairs]))
    bar.close()
    if not job.failures:
        failed_file.unlink(missing_ok=True)
    summary = FolderSummary(
        images=len(items), processed=job.processed, skipped=len(items) - len(todo),
        failed=len({f["file"] for f in job.failures}), outputs_written=job.written,
        seconds=time.perf_counter() - started, failures=job.failures, manifest=str(manifest),
        failed_file=str(failed_file) if job.failures else "",
    )
    log.info("synthesis: %s", summary.line())
    return summary


def _recorded_outputs(out_dir: Path, manifest: Path) -> set[str]:
    """Outputs recorded in any manifest of ``out_dir``. This job's own manifest is cleaned
    first: lines of deleted files, duplicates and a partial last line (a kill mid-append)
    are dropped, atomically."""
    own, dirty = _read_manifest(manifest)
    stale = [o for o in own if not (out_dir / o).is_file()]
    if dirty or stale:
        for o in stale:
            del own[o]
        atomic_write_text(manifest, "".join(line + "\n" for line in own.values()))
        log.info("manifest %s: dropped the lines of %d deleted outputs and any duplicate or partial line",
                 manifest.name, len(stale))
    recorded = set(own)
    for other in out_dir.glob("manifest*.jsonl"):
        if other != manifest:
            recorded |= set(_read_manifest(other)[0])
    return recorded


class _FolderJob:
    """The generating and writing half of :func:`synthesize_folder` (one per run)."""

    def __init__(self, synth: Synthesizer, out_dir: Path, scales: list[float], times: dict[float, float],
                 allow_extrapolation: bool, baselines: tuple[str, ...], lr_root: Path | None, manifest: Path,
                 failed_file: Path, bar, after_image: Callable[[str], None] | None):
        self.synth, self.out_dir, self.scales, self.times = synth, out_dir, scales, times
        self.allow_extrapolation, self.baselines, self.lr_root = allow_extrapolation, baselines, lr_root
        self.manifest, self.failed_file, self.bar, self.after_image = manifest, failed_file, bar, after_image
        self.solver = asdict(synth.solver)
        self.failures: list[dict[str, str]] = []
        self.processed = self.written = 0
        atomic_write_text(failed_file, "")                  # failures of this run only

    def fail(self, item: _Item, err: BaseException, count: bool = False) -> None:
        """Record a failure of ``item``; ``count`` advances the progress bar (item given up)."""
        record = {"file": item.source, "error": f"{type(err).__name__}: {err}"}
        self.failures.append(record)
        _append_lines(self.failed_file, [json.dumps(record)])
        log.error("%s: %s", item.source, record["error"])
        if count:
            self.bar.update(1)

    def run(self, batch: list[_Item], hr: torch.Tensor) -> None:
        """Generate and write a same-size batch ``hr [B, 3, H, W]``; on an error, retry image
        by image, so one bad image fails alone."""
        try:
            self._generate_and_write(batch, hr)
        except Exception as err:  # noqa: BLE001 - one bad image must not stop the run
            if len(batch) == 1:
                self.fail(batch[0], err, count=True)
                return
            log.warning("batch of %d failed (%s: %s); retrying image by image", len(batch), type(err).__name__, err)
            for i, item in enumerate(batch):
                self.run([item], hr[i:i + 1])
            return
        for item in batch:
            self.processed += 1
            self.bar.update(1)
            self.bar.set_postfix(written=self.written, failed=len(self.failures), refresh=False)
            if self.after_image is not None:
                self.after_image(item.source)

    def _generate_and_write(self, batch: list[_Item], hr: torch.Tensor) -> None:
        from degflow.data.images import ImageReadError

        synth = self.synth
        needed = sorted({o.scale for it in batch for o in it.pending if o.kind == "degflow"})
        results: dict[str, SynthesisResult | None] = {}
        if needed:
            results["degflow"] = synth.generate(hr, self.scales, self.allow_extrapolation, decode=needed)
        if any(o.kind == "ae_interp" for it in batch for o in it.pending):
            train = synth.train_scales[1:]
            try:
                real = [_load_real_lr(self.lr_root, it, train, hr[i]) for i, it in enumerate(batch)]
                stacked = {s: torch.stack([r[s] for r in real]) for s in train}
                results["ae_interp"] = synth.interpolate_real(hr, stacked, self.scales, self.allow_extrapolation)
            except (ImageReadError, ValueError, OSError) as err:
                if len(batch) > 1:
                    raise                                   # retried image by image
                self.fail(batch[0], err)                    # the image's other outputs are still written
                results["ae_interp"] = None
        for b, item in enumerate(batch):
            self._write(item, hr, b, len(batch), results)

    def _write(self, item: _Item, hr: torch.Tensor, b: int, batch: int,
               results: dict[str, SynthesisResult | None]) -> None:
        """Write the pending outputs of image ``b``, then append their manifest lines at once."""
        from degflow.data.images import write_image

        lines, written = [], set()
        for out in item.pending:
            entry: dict[str, Any] = {"source": item.source, "output": out.rel, "kind": out.kind, "size": out.size,
                                     "scale": out.scale, "t": self.times.get(out.scale), "solver": None, "nfe": 0,
                                     "seconds": 0.0}
            if out.kind == "hr":
                image = hr[b]
                entry["t"] = 0.0
            elif out.kind == "bicubic":
                image = hr[b] if out.size == "lr" else bicubic_baseline(hr[b:b + 1], out.scale)[0]
                entry["t"] = None
            else:
                result = results[out.kind]
                if result is None:
                    continue                                # its failure is recorded already
                image = result.images[out.scale][b]
                entry.update(nfe=result.nfe, tiles=result.tiles, seconds=result.seconds / batch)
                if out.kind == "degflow":
                    entry["solver"] = self.solver
            if out.size == "lr" and out.kind != "hr":
                image = resize_to_lr(image, out.scale)
            write_image(self.out_dir / out.rel, image)
            entry.update(height=int(image.shape[-2]), width=int(image.shape[-1]),
                         checkpoint_sha256=self.synth.checkpoint_sha256, degflow_version=__version__)
            lines.append(json.dumps(entry))
            written.add(out.rel)
        _append_lines(self.manifest, lines)
        item.pending = [o for o in item.pending if o.rel not in written]
        self.written += len(lines)
