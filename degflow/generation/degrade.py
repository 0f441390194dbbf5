"""``degrade(hr, scale)``: the learned degradation as a library call inside an SR training loop.

:class:`Degrader` is the generation core (:class:`~degflow.generation.Synthesizer`) called the
way Real-ESRGAN-style training loops call their degradation: built once from a stage-2
checkpoint, moved to the training device, then called on every batch of HR crops with one
scale per batch or one scale per sample (any float s >= 1). It adds nothing to the model: one
encode, ONE ODE solve for every requested time, one decode per sample, exactly as
``synthesize.py`` does; then the true-LR-size antialiased bicubic downscale and the 8-bit
quantisation that ``synthesize.py``'s PNG files carry. No file is read or written per call.

The time grid and what it means for equality and independence
--------------------------------------------------------------
The fixed-step solvers step on a grid over ``[0, t_end]``. ``synthesize.py`` sets ``t_end`` to
the time of the LARGEST scale it was asked for, so one image's output depends (by the solver's
truncation error, about 1e-5 in [-1, 1] at the default rk4/16) on which scales were requested
beside it. A training loop that asks for a new scale every batch must not see that, so
:class:`Degrader` always integrates to the time of :attr:`Degrader.max_scale` (default: the
largest training scale of the checkpoint), whatever the batch asks for:

- with the default solver (rk4, 16 steps, ``output_mode=cubic``: a uniform grid with cubic
  Hermite output between nodes) the result of a sample depends only on its own HR crop and
  scale; other samples in the batch change it only by float rounding of batched kernels
  (:data:`INDEPENDENCE_ATOL`, tested);
- it equals ``synthesize.py``'s LR for the same HR, checkpoint and solver whenever
  ``synthesize.py``'s largest requested scale is ``max_scale`` (the default scale range 1.1 ...
  4.0 with a checkpoint trained up to x4, for instance): bit-identical 8-bit values for the
  same batch composition (tested);
- with ``output_mode=grid`` (the grid snaps onto every requested time) or ``dopri5`` (steps
  chosen from the error of the whole batch) the result of a sample depends on the other
  samples' scales or contents; :attr:`Degrader.independent` says which case holds.

Images are ``[B, 3, H, W]`` float tensors (float32, bfloat16, float16 or float64) in
``value_range`` (default [-1, 1], the project's convention; ``(0, 1)`` for BasicSR / LIIF-style
loops); outputs come back in the same range, dtype and device. Everything runs under
``torch.no_grad`` on the Degrader's own modules, so it can sit beside a training step (the
outputs are plain tensors, usable as inputs of the SR network). ``precision="bf16"`` autocasts
the velocity network (CUDA or CPU), as in ``synthesize.py``.

The deterministic degradation draws nothing at random. A stochastic option (issue #27) plugs in
through ``noise=``: a :class:`NoiseHook` called per sample on the true-size LR before the 8-bit
quantisation, with a ``torch.Generator`` (from ``seed=`` or ``generator=``); ``noise=None``
leaves the output unchanged.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from degflow.core.resize import check_hr_size_output, lr_size, resize_to_lr, upsample_to
from degflow.core.scales import check_scale, scale_label
from degflow.core.solvers import SolverSpec
from degflow.generation.synthesizer import Synthesizer

__all__ = ["DEGRADE_SIZES", "INDEPENDENCE_ATOL", "VALUE_RANGES", "Degraded", "Degrader", "NoiseHook",
           "quantize_8bit"]

#: What :meth:`Degrader.__call__` returns (``size=``): the LR at true size, at HR pixel size, or both.
DEGRADE_SIZES: tuple[str, ...] = ("lr", "hr", "both")
#: Accepted ``value_range`` of the images: the project's [-1, 1] or the SR toolboxes' [0, 1].
VALUE_RANGES: tuple[tuple[float, float], ...] = ((-1.0, 1.0), (0.0, 1.0))
#: Largest difference (in [-1, 1] units, before the 8-bit quantisation) between a sample degraded
#: alone and inside a batch, with the default solver on CPU, fp32 (tests/test_degrade.py); after the
#: 8-bit quantisation a pixel can then differ by one level where the value lies on a rounding edge.
INDEPENDENCE_ATOL = 1e-5
#: Tolerance of the input range check (values this far outside ``value_range`` are accepted:
#: bfloat16 rounding of images that were in range).
_RANGE_SLACK = 1e-2


class NoiseHook(Protocol):
    """A stochastic part added to the deterministic LR (issue #27 plugs in here).

    Called once per sample with its true-size LR ``lr [1, 3, h, w]`` (float32, in [-1, 1], not yet
    quantised), its scale, the call's generator and, when the hook takes an ``hr`` keyword, that
    sample's HR image at true LR size (``[1, 3, h, w]`` in [-1, 1]; a three-argument hook is called
    without it); returns the new ``[1, 3, h, w]`` (clamped to [-1, 1] afterwards).
    Draw every random number from ``generator`` so a seed reproduces the batch.
    """

    def __call__(self, lr: Tensor, scale: float, generator: torch.Generator, hr: Tensor | None = None) -> Tensor: ...


def _takes_hr(hook: Any) -> bool:
    """Whether a noise hook takes the ``hr=`` keyword (hooks written for the three-argument form
    ``hook(lr, scale, generator)`` keep working: they are called without it)."""
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "hr" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def quantize_8bit(x: Tensor) -> Tensor:
    """``x`` in [-1, 1] -> the same values after an 8-bit PNG round trip, float32.

    The arithmetic of :func:`degflow.data.images.write_image` (``round((x + 1) * 127.5)``) then of
    :func:`~degflow.data.images.read_image` (``v / 255 * 2 - 1``), so an image quantised here equals
    the file ``synthesize.py`` writes, read back, bit for bit.
    """
    return (_levels(x) / 255.0 * 2.0 - 1.0).clamp(-1.0, 1.0)


def _levels(x: Tensor) -> Tensor:
    """8-bit levels 0..255 (float32) of ``x`` in [-1, 1], rounded as ``write_image`` rounds."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()


@dataclass
class Degraded:
    """The output of one :meth:`Degrader.__call__`.

    Attributes:
        lr: true-size LR, round(H/s) x round(W/s): one tensor ``[B, 3, h, w]`` when the batch has
            one scale, a list of ``[3, h_b, w_b]`` when the scale is given per sample (always a list
            then, even if the sizes agree); None when ``size="hr"``.
        hr_size: the LR at HR pixel size ``[B, 3, H, W]`` (``size="hr"`` or ``"both"``), else None.
        scales: the scale of each sample (``B`` floats).
        nfe: velocity evaluations of the one solve; seconds: wall time of the call.
    """

    lr: Tensor | list[Tensor] | None
    hr_size: Tensor | None
    scales: tuple[float, ...]
    nfe: int
    seconds: float


class Degrader:
    """The learned degradation as a callable: ``degrader(hr_batch, scale) -> Degraded``.

    Build it once (:meth:`from_checkpoint`, or around a :class:`Synthesizer`), move it with
    :meth:`to`, call it on every batch::

        deg = Degrader.from_checkpoint("lfm.pt", device="cuda")
        out = deg(hr, 2.7)                       # one scale for the batch: out.lr [B, 3, h, w]
        out = deg(hr, [1.3, 2.7, 3.9, 2.0])      # one scale per sample: out.lr is a list

    Args:
        synth: the generation core (its solver, precision and tiling are used as they are).
        max_scale: the largest scale a call may ask for; the solve always runs to its time (see
            the module docstring). Default: the largest training scale of the checkpoint. Above
            the trained range it needs ``allow_extrapolation``.
        allow_extrapolation: allow ``max_scale`` above the trained range (degflow's extrapolation rule).
        value_range: ``(-1, 1)`` (default) or ``(0, 1)``: the range of inputs and outputs.
        quantize: round the outputs to 8-bit levels, as ``synthesize.py``'s PNG files and
            Real-ESRGAN's online pipeline do (default True).
        hr_size_output: what the HR-size output is (``size="hr"`` / ``"both"``), as in
            ``synthesize.py``: ``decoded`` (the decoder's output) or ``from_lr`` (the true-size LR
            bicubic-upsampled back).
    """

    def __init__(self, synth: Synthesizer, *, max_scale: float | None = None, allow_extrapolation: bool = False,
                 value_range: tuple[float, float] = (-1.0, 1.0), quantize: bool = True,
                 hr_size_output: str = "decoded"):
        if not isinstance(synth, Synthesizer):
            raise ValueError(f"Degrader needs a Synthesizer (or use Degrader.from_checkpoint), got "
                             f"{type(synth).__name__}")
        self.synth = synth
        top = synth.max_trained_scale if max_scale is None else check_scale(max_scale, "max_scale")
        # validated (and the trained-range rule applied) once, here
        self._horizon = synth.scale_times([top], allow_extrapolation)
        self._allow_extrapolation = bool(allow_extrapolation)
        self.max_scale = float(top)
        vr = tuple(float(v) for v in value_range)
        if vr not in VALUE_RANGES:
            raise ValueError(f"value_range={tuple(value_range)!r} is not one of {list(VALUE_RANGES)}")
        self.value_range = vr
        if not isinstance(quantize, bool):
            raise ValueError(f"quantize: expected true or false, got {quantize!r}")
        self.quantize = quantize
        self.hr_size_output = check_hr_size_output(hr_size_output)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu", solver: SolverSpec | None = None,
                        precision: str = "fp32", *, max_scale: float | None = None,
                        allow_extrapolation: bool = False, value_range: tuple[float, float] = (-1.0, 1.0),
                        quantize: bool = True, hr_size_output: str = "decoded", tile_size: int | None = 1024,
                        tile_overlap: int = 256) -> Degrader:
        """Load a stage-2 checkpoint (:meth:`Synthesizer.from_checkpoint`: the EMA velocity when
        stored, ``solver=None`` = :data:`~degflow.generation.synthesizer.DEFAULT_SOLVER`, the
        default of ``synthesize.py``). A stage-1 (``rae``), corrupt or missing file raises
        :class:`~degflow.infra.checkpoint.CheckpointError` (a ValueError) naming the file."""
        synth = Synthesizer.from_checkpoint(path, device=device, solver=solver, precision=precision,
                                            tile_size=tile_size, tile_overlap=tile_overlap)
        return cls(synth, max_scale=max_scale, allow_extrapolation=allow_extrapolation, value_range=value_range,
                   quantize=quantize, hr_size_output=hr_size_output)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.synth.device

    @property
    def solver(self) -> SolverSpec:
        return self.synth.solver

    @property
    def independent(self) -> bool:
        """True when a sample's output does not depend on the other samples of its batch (beyond
        float rounding): a fixed-step solver with ``output_mode=cubic`` (the default)."""
        return self.solver.is_fixed_step and self.solver.output_mode == "cubic"

    def to(self, device: torch.device | str) -> Degrader:
        """Move the model to ``device``; returns self."""
        self.synth.to(device)
        return self

    def describe(self) -> dict[str, object]:
        """What a run should record about its degradation (settings and checkpoint digest)."""
        return {"kind": "degflow", "checkpoint_sha256": self.synth.checkpoint_sha256, "solver": self.solver.to_dict(),
                "precision": self.synth.precision, "max_scale": self.max_scale, "value_range": list(self.value_range),
                "quantize": self.quantize, "hr_size_output": self.hr_size_output, "independent": self.independent}

    # ------------------------------------------------------------------ checks
    def _check_hr(self, hr: Tensor) -> None:
        if not isinstance(hr, Tensor):
            raise ValueError(f"hr: expected a torch.Tensor [B, 3, H, W], got {type(hr).__name__}")
        if hr.ndim != 4 or hr.shape[1] != 3 or hr.shape[0] < 1:
            raise ValueError(f"hr: expected a batch of RGB images [B, 3, H, W] (B >= 1), got shape {tuple(hr.shape)}"
                             + ("; add a batch dimension with hr[None]" if hr.ndim == 3 else ""))
        if not torch.is_floating_point(hr):
            raise ValueError(f"hr: expected a floating-point tensor (float32 or bfloat16) in {list(self.value_range)}, "
                             f"got dtype {hr.dtype}; an 8-bit image converts as x.float() / 255"
                             + (" * 2 - 1" if self.value_range == (-1.0, 1.0) else ""))
        lo, hi = self.value_range
        mn, mx = float(hr.min()), float(hr.max())
        if not (math.isfinite(mn) and math.isfinite(mx)) or mn < lo - _RANGE_SLACK or mx > hi + _RANGE_SLACK:
            raise ValueError(f"hr: values must lie in [{lo:g}, {hi:g}] (value_range={self.value_range}), got "
                             f"[{mn:.4g}, {mx:.4g}]" + ("; images in [0, 255] divide by 255 first"
                                                          if mx > 2 else ""))

    def _check_scales(self, scale: float | Sequence[float] | Tensor, batch: int) -> tuple[tuple[float, ...], bool]:
        """``(one float per sample, per_sample)`` from a scale or a sequence of B scales."""
        per_sample = isinstance(scale, (Sequence, Tensor)) and not isinstance(scale, (str, bytes)) \
            and not (isinstance(scale, Tensor) and scale.ndim == 0)
        if per_sample:
            values = scale.detach().cpu().reshape(-1).tolist() if isinstance(scale, Tensor) else list(scale)
            if len(values) != batch:
                raise ValueError(f"scale: expected one scale for the batch or one per sample ({batch}), got "
                                 f"{len(values)} values")
            scales = tuple(check_scale(v, "scale") for v in values)
        else:
            scales = (check_scale(scale, "scale"),) * batch
        over = sorted({s for s in scales if s > self.max_scale + 1e-9})
        if over:
            raise ValueError(f"scale: {', '.join(scale_label(s) for s in over)} lies above max_scale="
                             f"{scale_label(self.max_scale)} (the solve runs to t(max_scale) for every batch); "
                             f"build the Degrader with a larger max_scale (above the trained range it needs "
                             f"allow_extrapolation=True)")
        return scales, per_sample

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, hr: Tensor, scale: float | Sequence[float] | Tensor, *, size: str = "lr",
                 noise: NoiseHook | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None) -> Degraded:
        """Degrade a batch of HR crops.

        Args:
            hr: ``[B, 3, H, W]`` floating point in :attr:`value_range` (any device; any H, W whose
                LR keeps at least one pixel).
            scale: one float >= 1 for the whole batch, or ``B`` floats (a sequence or a 1-D tensor),
                each at most :attr:`max_scale`.
            size: ``"lr"`` (true LR size), ``"hr"`` (HR pixel size) or ``"both"``.
            noise: an optional :class:`NoiseHook` (the stochastic option of issue #27); needs
                ``seed`` or ``generator``, and ``hr_size_output="from_lr"`` for an HR-size output.
            seed / generator: the source of the hook's random numbers (at most one).
        Returns:
            :class:`Degraded`, on ``hr``'s device and dtype, in :attr:`value_range`.
        """
        start = time.perf_counter()
        if size not in DEGRADE_SIZES:
            raise ValueError(f"size={size!r} is not one of {list(DEGRADE_SIZES)}")
        self._check_hr(hr)
        b, _, height, width = hr.shape
        scales, per_sample = self._check_scales(scale, b)
        for s in sorted(set(scales)):
            lr_size(height, width, s)                    # every LR keeps at least one pixel
        if noise is not None:
            if seed is not None and generator is not None:
                raise ValueError("degrade: pass seed or generator, not both")
            if seed is None and generator is None:
                raise ValueError("noise= draws random numbers: pass seed= or generator= so the batch is reproducible")
            if size != "lr" and self.hr_size_output == "decoded":
                raise ValueError("noise= is added to the true-size LR: an HR-size output with noise needs "
                                 "hr_size_output='from_lr'")
            if generator is None:
                generator = torch.Generator().manual_seed(int(seed))
        lo, _ = self.value_range
        x = hr.float() if lo == -1.0 else hr.float() * 2.0 - 1.0      # [-1, 1]
        wanted = sorted(set(scales))
        times = self.synth.scale_times(wanted, self._allow_extrapolation)
        times[self.max_scale] = self._horizon[self.max_scale]       # the solve always ends at t(max_scale)
        if per_sample and len(wanted) > 1:
            result = self.synth.generate(x, times, per_sample=scales)
            decoded = result.per_sample
        else:
            result = self.synth.generate(x, times, decode=wanted[:1])
            decoded = result.images[wanted[0]]
        lrs, hr_sizes = [], []
        wants_hr = noise is not None and _takes_hr(noise)
        for i, s in enumerate(scales):
            one = decoded[i:i + 1]
            lr = None
            if size != "hr" or self.hr_size_output == "from_lr":
                lr = resize_to_lr(one, s)
                if noise is not None:
                    extra = {"hr": resize_to_lr(x[i:i + 1], s)} if wants_hr else {}
                    lr = noise(lr, s, generator, **extra).float().clamp(-1.0, 1.0)
            if size != "lr":
                hr_sizes.append(one if self.hr_size_output == "decoded" else upsample_to(lr, height, width))
            lrs.append(lr)
        out_lr = None
        if size != "hr":
            lrs = [self._finish(v, hr) for v in lrs]
            out_lr = [v[0] for v in lrs] if per_sample else torch.cat(lrs)
        out_hr = self._finish(torch.cat(hr_sizes), hr) if size != "lr" else None
        return Degraded(lr=out_lr, hr_size=out_hr, scales=scales, nfe=result.nfe,
                        seconds=time.perf_counter() - start)

    def _finish(self, x: Tensor, like: Tensor) -> Tensor:
        """``x`` in [-1, 1] -> 8-bit levels (``quantize``) in the caller's range, dtype and device."""
        zero_one = self.value_range[0] == 0.0
        if self.quantize:
            x = _levels(x) / 255.0 if zero_one else quantize_8bit(x)
        else:
            x = (x.clamp(-1.0, 1.0) + 1.0) * 0.5 if zero_one else x.clamp(-1.0, 1.0)
        return x.to(device=like.device, dtype=like.dtype)

