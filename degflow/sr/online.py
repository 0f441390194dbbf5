"""Online SR training data: HR crops degraded on the fly, a new scale every batch.

The way Real-ESRGAN-style toolboxes train (degrade each batch inside the training step) and the
way arbitrary-scale SR trains (LIIF: a new continuous scale per batch), with the degradation a
choice of one config key (:data:`ONLINE_DEGRADATIONS`, ``online.degradation``):

``degflow``     the learned degradation (:class:`degflow.generation.Degrader`, a stage-2 checkpoint)
``procedural``  the Real-ESRGAN second-order pipeline (:mod:`degflow.baselines.procedural`; its JPEG
                step runs on the CPU whatever the device)
``bicubic``     antialiased bicubic downscaling
``kernel``      the kernels fitted on real pairs (:mod:`degflow.baselines.kernel_baseline`); ``kernel_noise``
                with a sample of their fitted noise drawn from each sample's seed

Every degradation has one interface (:class:`OnlineDegradation`): HR crops ``[B, 3, Q, Q]`` in
[-1, 1], one scale and one seed per sample -> the true-size LR of each sample (8-bit values), a
sample's output depending only on its own crop, scale and seed. Another degradation registers with
:func:`register_online_degradation` (a factory taking the options dict).

One batch (:class:`OnlineBatcher`, the same code on the CPU and on the GPU):

1. scales: one per batch (``per=batch``, default) or one per sample (``per=sample``), uniform in
   ``scale_range`` (:class:`ScaleSampler`, rounded to 4 decimals), seeds one per sample, all from
   one ``torch.Generator``;
2. the degradation of the whole ``Q x Q`` HR crop (``Q = hr_crop``: large enough for an LR patch and
   its context at every scale; a multiple of the degflow model's pad multiple, so no padding enters
   its latent);
3. an LR patch of ``lr_patch`` pixels at a random position of the LR at least ``context`` HR pixels
   from the crop's edges (where a crop's degradation differs from the whole image's) and the HR
   patch covering it (:func:`degflow.data.sr_pairs.aligned_patch`, the rule of the offline sets), as
   Real-ESRGAN crops its training pair after degrading a larger crop.

Two ways to run it:

- **CPU workers** (small models, CPU-only users): :class:`HRCropDataset` (random HR crops with a
  random flip / rotation, seeded by the sample index) and :class:`OnlineCollate` as the
  ``collate_fn`` of a ``torch.utils.data.DataLoader``: workers return finished batches; the batch
  of a given index is the same whatever the number of workers.
- **GPU, in the training step** (the Real-ESRGAN way): a plain DataLoader of :class:`HRCropDataset`
  (default collate) and ``batcher(crops.to(device), generator)`` inside the step.

Both log what they drew: every :class:`OnlineBatch` carries its scales and seeds
(:meth:`OnlineBatch.record`), and :class:`ScaleLog` collects and summarises them (the batcher
appends to its ``log`` itself when it runs in the training process).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from degflow.baselines import procedural
from degflow.baselines.kernel_baseline import KernelDegradation, load_kernel_file
from degflow.core.resize import resize_to_lr
from degflow.core.scales import check_scale, scale_label
from degflow.data.images import read_image
from degflow.data.sr_pairs import aligned_patch
from degflow.data.transforms import NUM_DIHEDRAL, dihedral
from degflow.generation.degrade import Degrader, quantize_8bit

__all__ = ["ONLINE_DEGRADATIONS", "SCALE_LAWS", "SCALE_PER", "BicubicOnline", "DegflowOnline", "HRCropDataset", "KernelOnline",
           "OnlineBatch", "OnlineBatcher", "OnlineCollate", "OnlineDegradation", "ProceduralOnline", "ScaleLog", "ScaleSampler",
           "build_online_degradation", "context_lr", "default_hr_crop", "mixed_source", "online_source", "random_hr_crop",
           "register_online_degradation"]

#: How scales are drawn (``online.per``): one for the whole batch (LIIF-style batches of one scale) or one per sample.
SCALE_PER: tuple[str, ...] = ("batch", "sample")
#: Decimals the drawn scales are rounded to (exact in logs and folder labels).
SCALE_DECIMALS = 4
#: How scales are distributed (``online.scale_law``): uniform in s, or uniform in the cell size 1/s.
SCALE_LAWS: tuple[str, ...] = ("uniform", "cell")


class OnlineDegradation(Protocol):
    """What the online data path calls: ``deg(hr, scales, seeds) -> [lr_b]``.

    ``hr``: ``[B, 3, Q, Q]`` float in [-1, 1] on any device; ``scales``, ``seeds``: one per sample.
    Returns ``B`` tensors ``[3, round(Q/s_b), round(Q/s_b)]`` in [-1, 1] with 8-bit values, on
    ``hr``'s device; sample b depends only on ``hr[b]``, ``scales[b]`` and ``seeds[b]``.
    """

    name: str

    def __call__(self, hr: Tensor, scales: Sequence[float], seeds: Sequence[int]) -> list[Tensor]: ...

    def to(self, device: torch.device | str) -> OnlineDegradation: ...

    def describe(self) -> dict[str, Any]: ...


#: name -> factory(options) of every online degradation (config key ``online.degradation``).
ONLINE_DEGRADATIONS: dict[str, Callable[[Mapping[str, Any]], OnlineDegradation]] = {}


def register_online_degradation(name: str) -> Callable:
    """Decorator: register ``factory(options: Mapping) -> OnlineDegradation`` under ``name``."""
    def add(factory: Callable[[Mapping[str, Any]], OnlineDegradation]) -> Callable:
        if name in ONLINE_DEGRADATIONS:
            raise ValueError(f"online degradation {name!r} is registered twice")
        ONLINE_DEGRADATIONS[name] = factory
        return factory
    return add


def build_online_degradation(name: str, options: Mapping[str, Any] | None = None) -> OnlineDegradation:
    """The degradation ``name`` (:data:`ONLINE_DEGRADATIONS`) built from ``options`` (``ckpt``,
    ``device``, ``solver``, ``precision`` for degflow; each factory reads what it needs)."""
    if name not in ONLINE_DEGRADATIONS:
        raise ValueError(f"online.degradation={name!r} is not one of {sorted(ONLINE_DEGRADATIONS)}")
    return ONLINE_DEGRADATIONS[name](dict(options or {}))


def _per_sample(hr: Tensor, scales: Sequence[float], seeds: Sequence[int]) -> int:
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise ValueError(f"hr: expected HR crops [B, 3, H, W] in [-1, 1], got shape {tuple(hr.shape)}")
    b = hr.shape[0]
    if len(scales) != b or len(seeds) != b:
        raise ValueError(f"expected one scale and one seed per sample ({b}), got {len(scales)} and {len(seeds)}")
    return b


class BicubicOnline:
    """Antialiased bicubic downscaling to round(H/s) x round(W/s), 8-bit values."""

    name = "bicubic"

    def __call__(self, hr: Tensor, scales: Sequence[float], seeds: Sequence[int]) -> list[Tensor]:
        _per_sample(hr, scales, seeds)
        return [quantize_8bit(resize_to_lr(x.float(), check_scale(s))).to(hr.dtype) for x, s in zip(hr, scales)]

    def to(self, device: torch.device | str) -> BicubicOnline:
        return self

    def describe(self) -> dict[str, Any]:
        return {"kind": "bicubic"}


class ProceduralOnline:
    """Real-ESRGAN second-order degradation, sample b drawn from ``seeds[b]``
    (:func:`degflow.baselines.procedural.realesrgan`; JPEG on the CPU)."""

    name = "procedural"

    def __init__(self, settings: procedural.ProceduralSettings | None = None):
        self.settings = settings or procedural.ProceduralSettings()

    def __call__(self, hr: Tensor, scales: Sequence[float], seeds: Sequence[int]) -> list[Tensor]:
        _per_sample(hr, scales, seeds)
        return [procedural.realesrgan(x, check_scale(s), seed=int(seed), settings=self.settings, size="lr")
                for x, s, seed in zip(hr, scales, seeds)]

    def to(self, device: torch.device | str) -> ProceduralOnline:
        return self

    def describe(self) -> dict[str, Any]:
        return {"kind": "procedural", "settings": "published (Real-ESRGAN x4plus)"
                if self.settings == procedural.ProceduralSettings() else repr(self.settings)}


class DegflowOnline:
    """The learned degradation (:class:`~degflow.generation.Degrader`): one solve per batch.
    Deterministic: the seeds reach only an optional ``noise`` hook (issue #27), through a generator
    seeded with the batch's first seed."""

    name = "degflow"

    def __init__(self, degrader: Degrader, noise=None):
        if not isinstance(degrader, Degrader):
            raise ValueError(f"DegflowOnline needs a Degrader, got {type(degrader).__name__}")
        self.degrader, self.noise = degrader, noise

    def __call__(self, hr: Tensor, scales: Sequence[float], seeds: Sequence[int]) -> list[Tensor]:
        _per_sample(hr, scales, seeds)
        one = len(set(scales)) == 1
        extra = {"noise": self.noise, "seed": int(seeds[0])} if self.noise is not None else {}
        out = self.degrader(hr, scales[0] if one else list(scales), **extra).lr
        return list(out.unbind(0)) if one else out

    def to(self, device: torch.device | str) -> DegflowOnline:
        self.degrader.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return self.degrader.describe()


class KernelOnline:
    """The fitted-kernel baseline (:class:`~degflow.baselines.kernel_baseline.KernelDegradation`), sample b
    at its own scale; with ``noise`` a sample of the fitted noise drawn from a generator seeded with ``seeds[b]``."""

    def __init__(self, kernel: KernelDegradation, noise: bool = False):
        if noise and kernel.noise is None:
            raise ValueError("online.degradation=kernel_noise: the kernel baseline holds no noise model")
        self.kernel, self.noise = kernel, noise
        self.name = "kernel_noise" if noise else "kernel"

    def __call__(self, hr: Tensor, scales: Sequence[float], seeds: Sequence[int]) -> list[Tensor]:
        _per_sample(hr, scales, seeds)
        return [quantize_8bit(self.kernel.degrade(
            x.float(), check_scale(s), noise_strength=1.0 if self.noise else 0.0,
            generator=torch.Generator().manual_seed(int(seed)) if self.noise else None)).to(hr.dtype)
            for x, s, seed in zip(hr, scales, seeds)]

    def to(self, device: torch.device | str) -> KernelOnline:
        return self                     # the kernels follow the HR crops' device

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "scales": [scale_label(s) for s in self.kernel.scales],
                "data_fingerprint": self.kernel.fingerprint,
                "kernel_sha256": (self.kernel.provenance.get("file") or {}).get("sha256")}


def _kernel_online(options: Mapping[str, Any], noise: bool) -> OnlineDegradation:
    kernel = options.get("kernel")
    if kernel is None:
        if not options.get("kernel_file"):
            raise ValueError(f"online.degradation={'kernel_noise' if noise else 'kernel'} needs the fitted kernel "
                             f"baseline (kernel= or kernel_file=, python -m degflow fit-kernel)")
        kernel = load_kernel_file(options["kernel_file"])
    return KernelOnline(kernel, noise)


@register_online_degradation("kernel")
def _kernel(options: Mapping[str, Any]) -> OnlineDegradation:
    return _kernel_online(options, noise=False)


@register_online_degradation("kernel_noise")
def _kernel_noise(options: Mapping[str, Any]) -> OnlineDegradation:
    return _kernel_online(options, noise=True)


@register_online_degradation("bicubic")
def _bicubic(options: Mapping[str, Any]) -> OnlineDegradation:
    return BicubicOnline()


@register_online_degradation("procedural")
def _procedural(options: Mapping[str, Any]) -> OnlineDegradation:
    return ProceduralOnline()


@register_online_degradation("degflow")
def _degflow(options: Mapping[str, Any]) -> OnlineDegradation:
    from degflow.core.solvers import SolverSpec

    if not options.get("ckpt"):
        raise ValueError("online.degradation=degflow needs ckpt= (a stage-2 checkpoint)")
    solver = options.get("solver")
    solver = SolverSpec.create(**solver) if isinstance(solver, Mapping) else solver
    deg = Degrader.from_checkpoint(options["ckpt"], device=options.get("device", "cpu"), solver=solver,
                                   precision=options.get("precision", "fp32"), max_scale=options.get("max_scale"))
    noise = None
    if options.get("noise"):               # the stochastic option (degflow.generation.stochastic)
        from degflow.generation.stochastic import StochasticOption

        noise = StochasticOption.load(options["noise"], options.get("strength", 1.0),
                                      checkpoint_sha256=deg.synth.checkpoint_sha256, key="stochastic.noise")
    return DegflowOnline(deg, noise)


# ----------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class ScaleSampler:
    """Scales in ``[low, high]`` (rounded to :data:`SCALE_DECIMALS` decimals), one per batch or one per
    sample (``per``), drawn by ``law``: ``uniform`` in s (LIIF's U(1, 4)) or ``cell``: uniform in the
    cell size 1/s (density proportional to 1/s^2: half of the draws of [1, 4] below s = 1.6);
    config ``online.scale_range``, ``online.per``, ``online.scale_law``."""

    low: float
    high: float
    per: str = "batch"
    law: str = "uniform"

    def __post_init__(self) -> None:
        lo, hi = check_scale(self.low, "online.scale_range"), check_scale(self.high, "online.scale_range")
        if hi < lo:
            raise ValueError(f"online.scale_range=[{self.low}, {self.high}]: expected [low, high] with low <= high")
        if self.per not in SCALE_PER:
            raise ValueError(f"online.per={self.per!r} is not one of {list(SCALE_PER)}")
        if self.law not in SCALE_LAWS:
            raise ValueError(f"online.scale_law={self.law!r} is not one of {list(SCALE_LAWS)}")

    def draw(self, n: int, generator: torch.Generator) -> list[float]:
        """``n`` scales (all equal with ``per=batch``) from ``generator``."""
        k = 1 if self.per == "batch" else n
        u = torch.rand(k, generator=generator, dtype=torch.float64).tolist()
        if self.law == "uniform":
            scales = [self.low + (self.high - self.low) * v for v in u]
        else:                       # 1/s uniform between 1/high and 1/low
            scales = [1.0 / (1.0 / self.low + (1.0 / self.high - 1.0 / self.low) * v) for v in u]
        scales = [min(max(round(v, SCALE_DECIMALS), self.low), self.high) for v in scales]
        return scales * n if self.per == "batch" else scales


# ----------------------------------------------------------------------------- batches
@dataclass
class OnlineBatch:
    """One training batch: ``lr`` ``[B, 3, p, p]``; ``hr`` ``[B, 3, P, P]`` (one scale per batch) or
    a list of ``[3, P_b, P_b]`` (per-sample scales); the scales and seeds drawn."""

    lr: Tensor
    hr: Tensor | list[Tensor]
    scales: list[float]
    seeds: list[int]
    index: int | None = None

    def pairs(self) -> list[tuple[Tensor, Tensor, float]]:
        """``[(lr_b, hr_b, s_b)]``, the sample format of :func:`degflow.sr.fit.train_sr`."""
        return [(self.lr[b], self.hr[b], s) for b, s in enumerate(self.scales)]

    def record(self) -> dict[str, Any]:
        """What was drawn (one JSON line of a :class:`ScaleLog`)."""
        return {"batch": self.index, "scales": self.scales, "seeds": self.seeds}


@dataclass
class ScaleLog:
    """The scales (and seeds) of every batch drawn: :meth:`add`, :meth:`summary`, :meth:`write_jsonl`."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, batch: OnlineBatch) -> None:
        self.records.append(batch.record())

    def summary(self, bins: Sequence[float] = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)) -> dict[str, Any]:
        """Count, min, max, mean of the sample scales and counts per ``[bins[i], bins[i+1])``."""
        scales = [s for r in self.records for s in r["scales"]]
        if not scales:
            return {"batches": 0, "samples": 0}
        edges = list(bins)
        counts = {f"[{scale_label(a)}, {scale_label(b)})": sum(a <= s < b for s in scales)
                  for a, b in itertools.pairwise(edges)}
        counts[f">= {scale_label(edges[-1])}"] = sum(s >= edges[-1] for s in scales)
        return {"batches": len(self.records), "samples": len(scales), "min": min(scales), "max": max(scales),
                "mean": sum(scales) / len(scales), "counts": counts}

    def write_jsonl(self, path: str | Path) -> None:
        from degflow.infra.files import atomic_write_text

        atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in self.records))


def context_lr(context: int, scale: float) -> int:
    """LR pixels kept between the LR patch and the degraded crop's edge: ``ceil(context / scale)``."""
    return math.ceil(context / scale - 1e-9) if context else 0


def default_hr_crop(lr_patch: int, high: float, multiple: int = 1, context: int = 0, low: float | None = None) -> int:
    """The smallest HR crop side Q whose LR holds an LR patch of ``lr_patch`` pixels plus ``context`` HR pixels
    (:func:`context_lr`) on each side at every scale in ``[low, high]`` (``round(Q / s) >= lr_patch +
    2 context_lr(context, s)``, checked on a 1e-3 grid of scales), rounded up to a multiple of ``multiple``."""
    low = high if low is None else low
    grid = [high] + [low + (high - low) * k / 1000 for k in range(1000)]

    def fits(q: int) -> bool:
        return all(round(q / s) >= lr_patch + 2 * context_lr(context, s) for s in grid)

    q = max(lr_patch, math.floor((lr_patch - 0.5) * high))
    while not fits(q):
        q += 1
    return -(-q // multiple) * multiple


class OnlineBatcher:
    """The training-step helper: HR crops -> an :class:`OnlineBatch` (module docstring, steps 1-3).

    Args:
        degradation: an :class:`OnlineDegradation` (:func:`build_online_degradation`).
        sampler: the :class:`ScaleSampler`.
        lr_patch: LR patch side in pixels (``sr.lr_patch``).
        hr_crop: HR crop side the degradation sees (``online.hr_crop``); None: the smallest that
            holds the LR patch and its context at every scale of the sampler, rounded up to the
            degradation's pad multiple (degflow) so no padding enters its latent, and, for one integer
            scale s (``[s, s]``: a fixed-scale network), to a multiple of s (HR patch = s x LR patch).
        context: HR pixels of the degraded crop kept between the LR patch and the crop's edges
            (``online.context``; :func:`context_lr` LR pixels): the degradation of a crop differs
            from that of the whole image near the crop's edges (degflow: by 33 dB Y-PSNR at the
            outermost LR pixel, 41 dB from 2-4 LR pixels in, Canon x4; docs/ONLINE.md).
        log: a :class:`ScaleLog` every batch is added to (None: none).
    """

    def __init__(self, degradation: OnlineDegradation, sampler: ScaleSampler, lr_patch: int,
                 hr_crop: int | None = None, log: ScaleLog | None = None, context: int = 12):
        if isinstance(lr_patch, bool) or not isinstance(lr_patch, int) or lr_patch < 1:
            raise ValueError(f"sr.lr_patch must be a positive integer, got {lr_patch!r}")
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"online.context must be an integer >= 0 (HR pixels), got {context!r}")
        self.degradation, self.sampler, self.lr_patch, self.log = degradation, sampler, lr_patch, log
        self.context = context
        multiple = degradation.degrader.synth.pad_multiple if isinstance(degradation, DegflowOnline) else 1
        if sampler.low == sampler.high and float(sampler.high).is_integer():
            # one integer scale (a fixed-scale network): the LR is exactly crop / s, the HR patch lr_patch x s
            multiple = math.lcm(multiple, int(sampler.high))
        smallest = default_hr_crop(lr_patch, sampler.high, context=context, low=sampler.low)
        if hr_crop is None:
            hr_crop = default_hr_crop(lr_patch, sampler.high, multiple, context, sampler.low)
        elif isinstance(hr_crop, bool) or not isinstance(hr_crop, int) or hr_crop < smallest:
            raise ValueError(f"online.hr_crop={hr_crop!r}: an LR patch of sr.lr_patch={lr_patch} pixels with "
                             f"online.context={context} HR pixels around it at scales up to "
                             f"{scale_label(sampler.high)} needs an HR crop of at least {smallest} pixels")
        self.hr_crop = hr_crop
        self.count = 0

    def __call__(self, hr: Tensor, generator: torch.Generator, index: int | None = None) -> OnlineBatch:
        """``hr`` ``[B, 3, Q, Q]`` (Q = :attr:`hr_crop`) in [-1, 1] on the training device -> the batch.
        Every random choice comes from ``generator`` (a CPU generator)."""
        if hr.ndim != 4 or hr.shape[1] != 3 or tuple(hr.shape[-2:]) != (self.hr_crop, self.hr_crop):
            raise ValueError(f"expected HR crops [B, 3, {self.hr_crop}, {self.hr_crop}] (online.hr_crop), got "
                             f"shape {tuple(hr.shape)}")
        b = hr.shape[0]
        scales = self.sampler.draw(b, generator)
        seeds = torch.randint(2**31 - 1, (b,), generator=generator).tolist()
        lrs = self.degradation(hr, scales, seeds)
        lr_out, hr_out = [], []
        for i, lr in enumerate(lrs):
            h, w = lr.shape[-2:]
            c = min(context_lr(self.context, scales[i]), (h - self.lr_patch) // 2, (w - self.lr_patch) // 2)
            top = c + int(torch.randint(h - self.lr_patch - 2 * c + 1, (1,), generator=generator))
            left = c + int(torch.randint(w - self.lr_patch - 2 * c + 1, (1,), generator=generator))
            lr_p, hr_p = aligned_patch(hr[i], lr, self.lr_patch, top, left)
            lr_out.append(lr_p)
            hr_out.append(hr_p)
        same = len({tuple(x.shape) for x in hr_out}) == 1
        if index is None:           # the log's length (restored with a resumed run) or this batcher's count
            index = len(self.log.records) if self.log is not None else self.count
        batch = OnlineBatch(lr=torch.stack(lr_out), hr=torch.stack(hr_out) if same else hr_out, scales=scales,
                            seeds=seeds, index=index)
        self.count += 1
        if self.log is not None:
            self.log.add(batch)
        return batch


# ----------------------------------------------------------------------------- HR crops
def random_hr_crop(image: Tensor, side: int, generator: torch.Generator) -> Tensor:
    """A random ``side x side`` crop of ``image`` ``[3, H, W]`` (uint8, or float in [-1, 1]) with one
    of the 8 flips / rotations, as float32 in [-1, 1]."""
    h, w = image.shape[-2:]
    if min(h, w) < side:
        raise ValueError(f"an HR image of {w}x{h} pixels is smaller than the HR crop {side} (online.hr_crop)")
    top = int(torch.randint(h - side + 1, (1,), generator=generator))
    left = int(torch.randint(w - side + 1, (1,), generator=generator))
    k = int(torch.randint(NUM_DIHEDRAL, (1,), generator=generator))
    crop = dihedral(image[:, top:top + side, left:left + side], k)
    return crop.float() / 127.5 - 1.0 if image.dtype == torch.uint8 else crop.float()


def _mix(seed: int, index: int) -> int:
    """A generator seed for item ``index`` of a run seeded ``seed`` (independent of worker order)."""
    return (int(seed) * 1_000_003 + int(index) * 7919 + 1) % (2**63 - 1)


class HRCropDataset(torch.utils.data.Dataset):
    """Random HR crops for the online path: item i is a crop of a random image, drawn from a
    generator seeded by ``(seed, i)`` only, so any worker produces the same item i.

    Args:
        images: HR images (``[3, H, W]`` uint8 or [-1, 1] tensors, or image paths, read on first use).
        side: the crop side (``OnlineBatcher.hr_crop``).
        length: number of items (e.g. steps x batch size).
        seed: the run's seed.
    Items: ``(crop [3, side, side] float32 in [-1, 1], i)``.
    """

    def __init__(self, images: Sequence[Tensor | str | Path], side: int, length: int, seed: int = 0):
        if not images:
            raise ValueError("HRCropDataset needs at least one HR image")
        self.images = list(images)
        self.side, self.length, self.seed = int(side), int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def _image(self, j: int) -> Tensor:
        x = self.images[j]
        if not isinstance(x, Tensor):
            x = ((read_image(x) + 1.0) * 127.5).round().to(torch.uint8)
            self.images[j] = x
        return x

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        g = torch.Generator().manual_seed(_mix(self.seed, i))
        j = int(torch.randint(len(self.images), (1,), generator=g))
        return random_hr_crop(self._image(j), self.side, g), int(i)


class OnlineCollate:
    """``collate_fn`` for CPU workers: stacks the HR crops of :class:`HRCropDataset` and runs the
    :class:`OnlineBatcher` in the worker, with a generator seeded by the batch's first item index
    (the batch is the same whatever the number of workers). Returns an :class:`OnlineBatch` whose
    ``index`` is that first item index; log it in the training process (:class:`ScaleLog`)."""

    def __init__(self, batcher: OnlineBatcher, seed: int = 0):
        if batcher.log is not None:
            raise ValueError("OnlineCollate runs the batcher in the DataLoader workers, whose copies of a log are "
                             "lost: build the batcher with log=None and add each batch to a ScaleLog in the "
                             "training loop")
        self.batcher, self.seed = batcher, int(seed)

    def __call__(self, items: Sequence[tuple[Tensor, int]]) -> OnlineBatch:
        crops = torch.stack([c for c, _ in items])
        first = int(items[0][1])
        g = torch.Generator().manual_seed(_mix(self.seed + 1, first))
        return self.batcher(crops, g, index=first)


def mixed_source(online: Callable[[torch.Generator], list], offline: Callable[[torch.Generator], list],
                 offline_fraction: float) -> Callable[[torch.Generator], list]:
    """A batch source drawing each batch from ``offline`` with probability ``offline_fraction`` (the
    real pairs beside the online degradation, as the offline set ``degflow`` mixes them), else from
    ``online``; the choice comes from the run's generator."""
    if not 0.0 <= float(offline_fraction) <= 1.0:
        raise ValueError(f"online.real_fraction must lie in [0, 1], got {offline_fraction!r}")

    def source(generator: torch.Generator) -> list:
        pick = float(torch.rand((), generator=generator, dtype=torch.float64)) < offline_fraction
        return offline(generator) if pick else online(generator)

    return source


def online_source(images: Sequence[Tensor], batcher: OnlineBatcher, batch_size: int,
                  device: torch.device | str = "cpu") -> Callable[[torch.Generator], list[tuple[Tensor, Tensor, float]]]:
    """The in-process batch source of :func:`degflow.sr.fit.train_sr`: ``source(generator)`` draws
    ``batch_size`` random HR crops (image, position, flip / rotation) of ``images`` (``[3, H, W]``
    uint8) and runs ``batcher`` on ``device``, every choice from the run's one generator (so a run
    resumes exactly). Returns the batch as ``[(lr_b, hr_b, s_b)]``."""
    if not images:
        raise ValueError("the online training set has no HR image")
    usable = [x for x in images if min(x.shape[-2:]) >= batcher.hr_crop]
    if not usable:
        raise ValueError(f"every HR image is smaller than the HR crop {batcher.hr_crop} (online.hr_crop)")

    def source(generator: torch.Generator) -> list[tuple[Tensor, Tensor, float]]:
        picks = [usable[int(torch.randint(len(usable), (1,), generator=generator))] for _ in range(batch_size)]
        crops = torch.stack([random_hr_crop(x, batcher.hr_crop, generator) for x in picks]).to(device)
        return batcher(crops, generator).pairs()

    return source
