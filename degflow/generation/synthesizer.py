"""The generation core: a trained DegFlow model that turns HR images into LR images at any scale.

:class:`Synthesizer` is the one code path of training validation, the Python API and the
``synthesize.py`` CLI. Encode the HR image once (latent z_0 and skip features H_HR),
integrate dz/dt = v(z, t) from t = 0 to every requested t(s) in ONE solve, decode each
latent with H_HR, clamp to [-1, 1]. Images whose size is not a multiple of the model's
stride are padded (replicate) and cropped back, never resized. :meth:`Synthesizer.interpolate_real`
is the one ``ae_interp`` oracle (the path through the real encoded LR latents), used by the
synthesis baselines and by LFM validation alike.

Large images are tiled (:attr:`Synthesizer.tile_size`, :attr:`Synthesizer.tile_overlap`, HR
pixels), but only where it is exact up to the tile edges: the RAE. The RAE is local
(per-pixel LayerNorm, convolutions), the velocity U-Net is not (GroupNorm statistics and
self-attention over its whole input). So the HR image is encoded tile by tile and the tile
latents are blended into ONE latent of the whole image; the ODE is solved once on that
latent (1/8 of the pixels per side, small even for 2K images); each tile is then decoded
from its crop of the solved latent with its own HR skip features, and the decoded tiles are
blended in image space (:mod:`degflow.generation.tiling`). Tile origins lie on multiples of
:attr:`Synthesizer.pad_multiple`, so every tile sees the same downsampling grids as the
whole image would.

On a GPU the work is batched: up to :attr:`Synthesizer.tile_batch` same-shape tiles per
encoder call and :attr:`Synthesizer.decode_batch` latents (scales) per decoder call, the
skip features repeated for each; an out-of-memory error halves the batch and retries. The
images agree with one tile and one scale at a time (the CPU default) to 1e-5 relative
(``tests/test_accel.py``: max |difference| / max |image|; measured 0 untiled, below 1e-6 tiled).

The default solver of :meth:`Synthesizer.from_checkpoint` and of ``synthesize.py`` is
:data:`DEFAULT_SOLVER` (rk4, 16 steps, cubic output), not the solver stored in the
checkpoint (which validation used); pass ``solver=`` to choose another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from degflow.core.resize import resize_to_lr
from degflow.core.scales import Scales, check_scale, find_scale, scale_key, scale_label
from degflow.core.solvers import SolverSpec, integrate
from degflow.core.spline import PATH_KINDS, evaluate_path, extrapolation_time
from degflow.core.timemap import TimeMap
from degflow.generation.condition import condition_kind, velocity_condition
from degflow.generation.stochastic import StochasticOption, noisy_at_hr_size
from degflow.generation.tiling import Span, blend_tile_batches, blend_tiles, tile_grid
from degflow.infra.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from degflow.infra.checks import check_int, check_positive_int
from degflow.infra.conf import synthesis_defaults
from degflow.infra.runtime import autocast, check_precision, resolve_device
from degflow.models.registry import build_model

__all__ = ["DEFAULT_SOLVER", "ScaleTimes", "SynthesisResult", "Synthesizer"]

log = logging.getLogger(__name__)

#: The solver of :meth:`Synthesizer.from_checkpoint` and of ``synthesize.py`` unless one is
#: given, read from its one home ``conf/synthesize.yaml`` (rk4, 16 uniform steps, cubic Hermite
#: output: any number of scales for +1 NFE; within 0.02 dB of scipy RK45 in
#: ``experiments/tools/bench_synthesis.py``).
DEFAULT_SOLVER = SolverSpec.create(**synthesis_defaults()["solver"])

#: internal key of the per-sample decode in the latents / images dicts (never a valid scale).
_PER_SAMPLE = -1.0


#: ``decode_batch: auto``: latents per decoder call on a GPU (1 on the CPU, where batching
#: gains nothing and costs memory); halved after an out-of-memory error.
AUTO_DECODE_BATCH = 8
#: ``tile_batch: auto``: same-shape tiles per encoder call on a GPU (1 on the CPU).
AUTO_TILE_BATCH = 4


def _batch_setting(value: int | str, key: str, device: torch.device, auto: int) -> int:
    """A batch setting: ``"auto"`` (``auto`` on CUDA, 1 elsewhere) or a positive integer."""
    if value == "auto":
        return auto if device.type == "cuda" else 1
    return check_positive_int(value, key, hint=f" or 'auto' ({auto} on a GPU, 1 on the CPU)")


class ScaleTimes(dict):
    """``{scale: t(s)}``: requested scales turned into trajectory times once, by
    :meth:`Synthesizer.scale_times` (validated, in range or extrapolation allowed). Passing it
    to :meth:`Synthesizer.generate` reuses the times instead of converting the scales again."""


@dataclass
class SynthesisResult:
    """Output of :meth:`Synthesizer.generate`.

    ``images[s]`` is ``[B, 3, H, W]`` in [-1, 1] at HR pixel size for each decoded scale s
    (or, with ``generate(per_sample=...)``, :attr:`per_sample` holds one decode per sample).
    ``nfe`` counts velocity evaluations (one solve, tiled or not), ``seconds`` the whole call
    (encode, solve, decode, blending), ``solve_seconds`` the ODE solves alone.
    """

    images: dict[float, torch.Tensor]
    times: dict[float, float]
    nfe: int
    seconds: float
    solve_seconds: float = 0.0
    tiles: int = 1
    #: ``[B, 3, H, W]``: sample b decoded at its own scale ``per_sample[b]`` (``generate(per_sample=...)``;
    #: then ``images`` is empty), else None.
    per_sample: torch.Tensor | None = None


class Synthesizer:
    """A trained DegFlow model ready to generate: frozen RAE + velocity field + time map.

    Use :meth:`from_checkpoint` with a stage-2 (``lfm``) checkpoint, then call the object:
    ``synth(hr_batch, scales) -> {scale: lr_batch}`` (tensors in [-1, 1], LR at HR size, or at
    true LR size with ``size="lr"``).

    Args (beyond the models): ``tile_size`` / ``tile_overlap`` in HR pixels (images with a
    side above ``tile_size`` are tiled; ``None`` never tiles). Both are rounded to multiples
    of :attr:`pad_multiple` (tile down, overlap up); a tile is at least one pad multiple and
    the overlap at most half a tile (ValueError naming the key otherwise).
    ``train_scales`` and ``spline_path`` are needed only by :meth:`interpolate_real`.
    ``decode_batch`` / ``tile_batch``: latents per decoder call and same-shape tiles per
    encoder call, ``"auto"`` (:data:`AUTO_DECODE_BATCH` / :data:`AUTO_TILE_BATCH` on CUDA, 1
    on the CPU) or a positive integer.
    """

    def __init__(self, rae: torch.nn.Module, velocity: torch.nn.Module, time_map: TimeMap,
                 solver: SolverSpec, device: torch.device | str = "cpu", precision: str = "fp32",
                 max_trained_scale: float | None = None, *, tile_size: int | None = 1024,
                 tile_overlap: int = 256, train_scales: Sequence[float] | None = None,
                 spline_path: str = "cubic", checkpoint_sha256: str | None = None,
                 decode_batch: int | str = "auto", tile_batch: int | str = "auto"):
        self.device = torch.device(device)
        # eval() only: training validation passes the live velocity net, whose parameters must
        # keep requires_grad (generation itself runs under no_grad)
        self.rae = rae.to(self.device).eval()
        self.velocity = velocity.to(self.device).eval()
        self.time_map = time_map
        self.solver = solver
        self.precision = check_precision(precision)
        self.max_trained_scale = max_trained_scale if max_trained_scale is not None else time_map.scales[-1]
        self.last_knot_time = float(time_map.scale_to_time(self.max_trained_scale))
        levels = len(velocity.config.get("ch_mult", (1,))) - 1
        self.pad_multiple = int(rae.stride) * (2 ** levels)
        self.tile_size, self.tile_overlap = self._tiling(tile_size, tile_overlap)
        self.train_scales = tuple(float(s) for s in train_scales) if train_scales is not None else None
        if spline_path not in PATH_KINDS:
            raise ValueError(f"spline_path={spline_path!r} is not one of {list(PATH_KINDS)}")
        self.spline_path = spline_path
        self.checkpoint_sha256 = checkpoint_sha256
        self.decode_batch = _batch_setting(decode_batch, "decode_batch", self.device, AUTO_DECODE_BATCH)
        self.tile_batch = _batch_setting(tile_batch, "tile_batch", self.device, AUTO_TILE_BATCH)
        self._warned: set[float] = set()

    def _tiling(self, tile_size: int | None, tile_overlap: int) -> tuple[int | None, int]:
        if tile_size is None:
            return None, 0
        for key, val in (("tile_size", tile_size), ("tile_overlap", tile_overlap)):
            check_int(val, key, minimum=0, hint=" (HR pixels)")
        m = self.pad_multiple
        if tile_size < m:
            raise ValueError(
                f"tile_size={tile_size} is below the smallest tile of this model, {m} HR pixels (its "
                f"pad multiple: tiles are whole multiples of it); use tile_size >= {m} (with "
                f"tile_overlap at most half of it), or tile_size=null to never tile"
            )
        tile = tile_size // m * m
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
                        tile_size: int | None = 1024, tile_overlap: int = 256, decode_batch: int | str = "auto",
                        tile_batch: int | str = "auto") -> "Synthesizer":
        """Load a stage-2 checkpoint (self-contained: RAE weights, velocity net, knot times, solver).
        The velocity net is the EMA of its weights (``models.velocity_ema``) when the checkpoint
        has one (``stage.ema_decay``), else the trained weights.

        ``device="auto"`` picks CUDA when present. ``solver=None`` uses :data:`DEFAULT_SOLVER`
        (rk4, 16 steps, cubic output), the default of ``synthesize.py`` too; the solver the
        checkpoint's validation used is ``ckpt["extra"]["solver"]``.
        Raises :class:`~degflow.infra.checkpoint.CheckpointError` (naming ``ckpt``) for a missing,
        corrupt, stage-1 or incomplete checkpoint. ``path`` may name a shipped model (``"demo"``,
        :data:`degflow.infra.checkpoint.SHIPPED_MODELS`).
        """
        path = resolve_checkpoint(path)
        ckpt, digest = load_checkpoint(path, kind="lfm", key="ckpt", with_digest=True)   # verified
        try:
            rae = build_model(ckpt["models"]["rae"])
            # the EMA of the velocity weights when the run kept one (stage.ema_decay)
            velocity = build_model(ckpt["models"].get("velocity_ema", ckpt["models"]["velocity"]))
            time_map = TimeMap.from_dict(ckpt["time_map"])
            train_scales = [float(s) for s in ckpt["train_scales"]]
            spline_path = ckpt["extra"].get("spline", {}).get("path", "cubic")
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"ckpt={str(path)!r} is an incomplete or inconsistent stage-2 checkpoint "
                f"({type(err).__name__}: {err})"
            ) from None
        return cls(rae, velocity, time_map, DEFAULT_SOLVER if solver is None else solver,
                   device=resolve_device(device),
                   precision=precision, max_trained_scale=max(train_scales), tile_size=tile_size,
                   tile_overlap=tile_overlap, train_scales=train_scales, spline_path=spline_path,
                   checkpoint_sha256=digest.sha256, decode_batch=decode_batch, tile_batch=tile_batch)

    def to(self, device: torch.device | str) -> "Synthesizer":
        """Move the networks to ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); returns self."""
        self.device = resolve_device(device)
        self.rae.to(self.device)
        self.velocity.to(self.device)
        return self

    # -------------------------------------------------------------------------- times
    def scale_times(self, scales: Sequence[float] | ScaleTimes, allow_extrapolation: bool = False) -> ScaleTimes:
        """Time t(s) of each scale (:class:`ScaleTimes`), computed once: a ``ScaleTimes`` passes
        through unchanged, :class:`~degflow.core.scales.Scales` are not validated again. Scales
        beyond the trained range need ``allow_extrapolation`` (then a warning, once per scale)."""
        if isinstance(scales, ScaleTimes):
            return scales
        out = ScaleTimes()
        for s in scales:
            s = float(s) if isinstance(scales, Scales) else check_scale(s, "scales")
            if s > self.max_trained_scale + 1e-9:
                if not allow_extrapolation:
                    raise ValueError(
                        f"scales: {scale_label(s)} lies outside the trained range "
                        f"[1, {scale_label(self.max_trained_scale)}]; "
                        "set allow_extrapolation=true to extrapolate the trajectory anyway"
                    )
                if s not in self._warned:
                    self._warned.add(s)
                    log.warning("scale %s lies outside the trained range [1, %s]: extrapolating "
                                "(allow_extrapolation=true)", scale_label(s), scale_label(self.max_trained_scale))
            out[s] = float(self.time_map.scale_to_time(s))
        return out

    def _velocity(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        # degflow's one extrapolation rule (degflow.core.spline.extrapolation_time): beyond the
        # last knot the trajectory continues with the velocity field of the last knot.
        t = extrapolation_time(t, 0.0, self.last_knot_time)
        with autocast(self.device, self.precision):
            if cond is None:
                return self.velocity(z, t).to(z.dtype)
            return self.velocity(z, t, cond).to(z.dtype)

    @property
    def condition(self) -> str:
        """What the velocity is conditioned on (:mod:`degflow.generation.condition`)."""
        cond_channels = int(getattr(self.velocity, "cond_channels", 0))
        if not cond_channels:          # any velocity module without a condition (the authors' v(z, t), test fields)
            return "none"
        return condition_kind(cond_channels, int(self.velocity.config["in_channels"]), int(self.rae.stride))

    def field(self, z0: torch.Tensor, hr: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The velocity field ``(z [B, C, h, w], t [B]) -> [B, C, h, w]`` of a solve that starts
        at the HR latent ``z0 [B, C, h, w]`` of the (padded) HR image ``hr [B, 3, 8h, 8w]``:
        conditioned as the network takes it (``model.lfm.cond_channels``: nothing, ``z0``, or
        ``z0`` and the HR pixels, which need ``hr``)."""
        cond = velocity_condition(self.condition, z0, hr, int(self.rae.stride))
        if cond is None:
            return self._velocity
        return lambda z, t: self._velocity(z, t, cond)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    # -------------------------------------------------------------------------- tiling
    def _tiled(self, work: Callable[[list[torch.Tensor]], dict[float, torch.Tensor]],
               inputs: list[torch.Tensor]) -> tuple[dict[float, torch.Tensor], int]:
        """Run ``work`` on aligned crops of ``inputs`` (each ``[B, 3, H, W]``) and blend.

        ``work(crops) -> {key: [B, 3, h, w]}`` in [-1, 1]. Untiled when the image fits in one
        tile. Returns ``(images, tiles)``.
        """
        grid = tile_grid(*inputs[0].shape[-2:], self.tile_size, self.tile_overlap)
        if grid is None:
            return work(inputs), 1
        rows, cols = grid

        def tile(i: int, j: int) -> Iterator[tuple[float, torch.Tensor]]:
            (y0, y1), (x0, x1) = rows[i], cols[j]
            yield from work([x[..., y0:y1, x0:x1] for x in inputs]).items()

        images = blend_tiles(rows, cols, self.tile_overlap, tile, self.device)
        return {k: v.clamp_(-1, 1) for k, v in images.items()}, len(rows) * len(cols)

    # -------------------------------------------------------------------------- generation
    def _encode_tiled(self, x: torch.Tensor, rows: list[Span], cols: list[Span]) -> torch.Tensor:
        """Latent ``[B, C, H/8, W/8]`` of the padded image ``x [B, 3, H, W]``, encoded tile by
        tile (up to :attr:`tile_batch` tiles of one shape per encoder call) and blended with
        the tiling ramps at latent resolution."""
        st = int(self.rae.stride)
        b = x.shape[0]

        def encode(tiles: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], int, torch.Tensor]]:
            crops = [x[..., rows[i][0]:rows[i][1], cols[j][0]:cols[j][1]] for i, j in tiles]
            z = self._batched(lambda xs: self.rae.encode(torch.cat(xs))[0], crops)
            for n, tile in enumerate(tiles):
                yield tile, 0, z[n * b:(n + 1) * b]

        return blend_tile_batches([(a // st, e // st) for a, e in rows], [(a // st, e // st) for a, e in cols],
                                  self.tile_overlap // st, encode, self.tile_batch, self.device)[0]

    def _decode(self, latents: dict[float, torch.Tensor], feats: list[torch.Tensor]
                ) -> Iterator[tuple[float, torch.Tensor]]:
        """``(scale, decoded [B, 3, H, W] clamped to [-1, 1])`` of every latent ``[B, C, h, w]``
        with the skip features ``feats`` (of a ``[B, ...]`` batch), :attr:`decode_batch` latents
        per decoder call (the features repeated once per latent of the call)."""
        items = list(latents.items())
        b = items[0][1].shape[0] if items else 0
        start = 0
        while start < len(items):
            chunk = items[start:start + self.decode_batch]
            try:
                if len(chunk) == 1:
                    out = self.rae.decode(chunk[0][1], feats)
                else:
                    out = self.rae.decode(torch.cat([z for _, z in chunk]), [f.repeat(len(chunk), *([1] * (f.dim() - 1)))
                                                                           for f in feats])
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                self._shrink("decode_batch", len(chunk))
                continue
            for n, (s, _) in enumerate(chunk):
                yield s, out[n * b:(n + 1) * b].clamp(-1, 1)
            start += len(chunk)

    def _decode_tiled(self, x: torch.Tensor, latents: dict[float, torch.Tensor],
                      rows: list[Span], cols: list[Span]) -> dict[float, torch.Tensor]:
        """Decode ``latents[s] [B, C, H/8, W/8]`` tile by tile with each tile's own HR skip
        features from the padded image ``x [B, 3, H, W]`` (scales batched as in :meth:`_decode`);
        blend in image space."""
        st = int(self.rae.stride)

        def tile(i: int, j: int) -> Iterator[tuple[float, torch.Tensor]]:
            (y0, y1), (x0, x1) = rows[i], cols[j]
            feats = self.rae.features(x[..., y0:y1, x0:x1])
            yield from self._decode({s: z[..., y0 // st:y1 // st, x0 // st:x1 // st] for s, z in latents.items()}, feats)

        return {s: img.clamp_(-1, 1) for s, img in blend_tiles(rows, cols, self.tile_overlap, tile, self.device).items()}

    def _batched(self, run: Callable[[list[torch.Tensor]], torch.Tensor], parts: list[torch.Tensor]) -> torch.Tensor:
        """``run(parts)``, or on a CUDA out-of-memory error ``run`` on halves, concatenated (and
        :attr:`tile_batch` lowered for the next calls)."""
        try:
            return run(parts)
        except torch.OutOfMemoryError:
            if len(parts) == 1:
                raise
            self._shrink("tile_batch", len(parts))
            half = len(parts) // 2
            return torch.cat([self._batched(run, parts[:half]), self._batched(run, parts[half:])])

    def _shrink(self, name: str, tried: int) -> None:
        """Halve the batch setting ``name`` after an out-of-memory error at ``tried`` items."""
        value = max(1, tried // 2)
        setattr(self, name, value)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("%s: out of memory with %d per call on %s; using %d from now on", name, tried, self.device, value)

    @torch.no_grad()
    def generate(self, hr: torch.Tensor, scales: Sequence[float] | ScaleTimes, allow_extrapolation: bool = False,
                 solver: SolverSpec | None = None, *, decode: Sequence[float] | None = None,
                 per_sample: Sequence[float] | None = None) -> SynthesisResult:
        """Generate LR images at HR size for every scale, from ONE ODE solve.

        Args:
            hr: ``[B, 3, H, W]`` HR images in [-1, 1] (any H, W >= 1).
            scales: requested scales s >= 1 (exact values; nothing is rounded to a grid: every
                t(s) is a step of the fixed-step grid with ``solver.output_mode=grid``), or the
                :class:`ScaleTimes` of :meth:`scale_times` (a job generating many batches converts
                its scales to times once).
            solver: overrides :attr:`solver` for this call.
            decode: the subset of ``scales`` to decode (default: all). The solve still
                covers every scale, so the step grid (and the result) does not depend on it.
            per_sample: instead of ``decode``, one scale per sample (``B`` values, each among
                ``scales``): sample b is decoded at ``per_sample[b]`` only, all samples in one
                decoder pass (:attr:`SynthesisResult.per_sample`). The solve is the same.
        Returns:
            :class:`SynthesisResult` with ``images[s]`` of shape ``[B, 3, H, W]``.
        """
        if hr.dim() != 4 or hr.shape[1] != 3:
            raise ValueError(f"hr must be [B, 3, H, W], got shape {tuple(hr.shape)}")
        times = self.scale_times(scales, allow_extrapolation)
        if per_sample is not None:
            if decode is not None:
                raise ValueError("generate: pass decode or per_sample, not both")
            wanted = [float(s) for s in per_sample]
            if len(wanted) != hr.shape[0]:
                raise ValueError(f"per_sample: expected one scale per sample ({hr.shape[0]}), got {len(wanted)}")
        else:
            wanted = list(times) if decode is None else [float(s) for s in decode]
        missing = [s for s in wanted if s not in times]
        if missing:
            raise ValueError(f"{'decode' if per_sample is None else 'per_sample'}: scales {missing} are not among "
                             f"the requested scales {list(times)}")
        solver = solver or self.solver
        self._sync()
        start = time.perf_counter()
        hr = hr.to(self.device, torch.float32)
        h, w = hr.shape[-2:]
        x = self._pad(hr)
        grid = tile_grid(*x.shape[-2:], self.tile_size, self.tile_overlap)
        if grid is None:
            z0, feats = self.rae.encode(x)
        else:
            z0, feats = self._encode_tiled(x, *grid), None
        unique = sorted(set(times.values()))
        self._sync()
        solve_start = time.perf_counter()
        states, nfe = integrate(self.field(z0, x), z0, unique, solver)               # [T,B,C,h,w]
        self._sync()
        solve = time.perf_counter() - solve_start
        if per_sample is None:
            latents = {s: states[unique.index(times[s])] for s in wanted}
        else:       # sample b's state at its own time, all samples decoded together
            rows = torch.tensor([unique.index(times[s]) for s in wanted], device=states.device)
            latents = {_PER_SAMPLE: states[rows, torch.arange(len(wanted), device=states.device)]}
        del states
        if grid is None:
            images = {s: img[..., :h, :w] for s, img in self._decode(latents, feats)}
            tiles = 1
        else:
            images = {s: img[..., :h, :w] for s, img in self._decode_tiled(x, latents, *grid).items()}
            tiles = len(grid[0]) * len(grid[1])
        self._sync()
        return SynthesisResult(images=images, times=times, nfe=nfe, seconds=time.perf_counter() - start,
                               solve_seconds=solve, tiles=tiles, per_sample=images.pop(_PER_SAMPLE, None))

    def __call__(self, hr: torch.Tensor, scales: Sequence[float], allow_extrapolation: bool = False,
                 size: str = "hr", *, noise: StochasticOption | None = None, seed: int = 0
                 ) -> dict[float, torch.Tensor]:
        """``synth(hr_batch, scales) -> {scale: lr_batch}`` (see :meth:`generate`).

        ``size="hr"``: LR images at HR pixel size ``[B, 3, H, W]``; ``size="lr"``: at true LR
        size ``[B, 3, round(H/s), round(W/s)]`` (antialiased bicubic of the HR-size decode,
        :func:`degflow.core.resize.resize_to_lr`).

        ``noise``: the stochastic option (:class:`~degflow.generation.stochastic.StochasticOption`):
        each call draws a new sample from ``seed`` (image b of the batch uses the seed
        ``noise_seed(seed, str(b), s, 0)``: the same ``seed`` gives the same sample); the noise
        is added at true LR size (for ``size="hr"``: the decoded LR plus the noise upsampled to HR
        size). Without it (the default), or at strength 0, the output is the deterministic LR.
        """
        if size not in ("hr", "lr"):
            raise ValueError(f"size={size!r} is not one of ['hr', 'lr']")
        images = self.generate(hr, scales, allow_extrapolation).images
        if noise is None:
            return {s: resize_to_lr(x, s) for s, x in images.items()} if size == "lr" else images
        out = {}
        for s, decoded in images.items():
            lr = resize_to_lr(decoded, s)
            noisy = noise.sample(lr, s, noise.seeds(seed, [str(b) for b in range(lr.shape[0])], s),
                                 hr=resize_to_lr(hr.to(lr.device, lr.dtype), s))
            out[s] = noisy if size == "lr" else noisy_at_hr_size(decoded, lr, noisy, s, "decoded")
        return out

    # -------------------------------------------------------------------------- ae_interp
    def _decode_real_path(self, crops: list[torch.Tensor], times: dict[float, float]) -> dict[float, torch.Tensor]:
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
        through the REAL encoded latents of the training scales, at t(s). The one copy of it:
        LFM validation (``psnr_y_ae_interp``) and the ``baseline=ae_interp`` outputs both call it.

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
            key = find_scale(s, real, tol=1e-9)
            if key is None:
                raise ValueError(f"ae_interp needs a real LR image at every training scale "
                                 f"{[scale_key(v) for v in self.train_scales[1:]]}; {scale_key(s)} is missing")
            x = real[key]
            if x.shape != hr.shape:
                raise ValueError(f"ae_interp: the real {scale_key(s)} image has shape {tuple(x.shape)}, "
                                 f"expected the HR shape {tuple(hr.shape)} (LR stored at HR size)")
            knot_images.append(x.to(self.device, torch.float32))
        start = time.perf_counter()
        images, tiles = self._tiled(lambda crops: self._decode_real_path(crops, times), knot_images)
        return SynthesisResult(images=images, times=times, nfe=0, seconds=time.perf_counter() - start,
                               tiles=tiles)
