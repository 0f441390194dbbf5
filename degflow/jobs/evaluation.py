"""Evaluation of generated LR images against real LR images, with the baselines beside them.

For every test image and every requested scale, each method generates an LR image from
the HR image (LR at HR pixel size, the RealSR convention) and is compared with the real LR
image of that scale:

- ``degflow``: the checkpoint's model under the configured solver (one ODE solve per image
  for all scales); NFE and seconds per image are recorded;
- ``bicubic``: :func:`degflow.metrics.image.bicubic_baseline` (down by s, back up);
- ``procedural``: the Real-ESRGAN second-order pipeline (:mod:`degflow.baselines.procedural`), seeded
  per (image, scale) so the table is reproducible;
- ``ae_interp``: the oracle spline through the REAL encoded training-scale latents
  (needs the real LR images at the training scales, so not a usable generator);
- ``stochastic``: the stochastic option (``noise=`` a fitted noise model, ``strength``): ``samples``
  noisy samples of degflow's LR per image and scale, each seeded by its (image, scale, sample);
  its metrics are the means over the samples, plus ``diversity``, the mean LPIPS between the
  samples of one image (SDFlow's measure); ``stochastic_mean``: the mean of those samples.
- ``kernel`` / ``kernel_noise``: linear degradation kernels fitted by least squares on the data
  option's training pairs, carried to any scale, without / with the noise model fitted on their
  residuals (:mod:`degflow.baselines.kernel_baseline`; config keys ``kernel_file``, ``kernel_cache``),
  the noise seeded per (image, scale) like ``procedural``.

Metrics per (image, scale, method): Y-PSNR and SSIM in the SR convention with a
configurable border shave (0 by default: LR vs LR), LPIPS (AlexNet), and the residual
noise statistics KL and AKLD and the residuals' spectrum distance (:mod:`degflow.metrics.noise`). Scales the model was trained
on are "seen", all others "held-out", and the two are summarized apart.

:func:`evaluate_folders` compares a folder written by ``synthesize.py`` with a folder of
real LR images in the same way. :func:`write_results` writes ``eval.json``, ``eval.md``
and ``eval.csv``. One bad image is reported (log, ``failures`` in eval.json) and skipped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from degflow.baselines.kernel_baseline import KernelDegradation, kernel_noise_seed
from degflow.baselines.procedural import procedural_seed, realesrgan
from degflow.core.resize import (bicubic_baseline, check_hr_size_output, lr_at_hr_size, resize_to_lr, sample_to_lr,
                                 upsample_to)
from degflow.core.scales import scale_label
from degflow.core.solvers import SolverSpec
from degflow.data.common import size_relation
from degflow.data.images import find_images, read_image
from degflow.data.options import build_data, option_of_target
from degflow.generation import StochasticOption, Synthesizer
from degflow.generation.stochastic import noisy_at_hr_size
from degflow.infra.checks import check_choice, check_int, check_number, check_positive_int
from degflow.infra.files import atomic_write_texts
from degflow.infra.runtime import resolve_device
from degflow.metrics.image import psnr_y, ssim_y
from degflow.metrics.noise import akld, histogram_kl, spectrum_distance
from degflow.metrics.perceptual import load_lpips
from degflow.viz.tables import csv_text, fmt, write_table
from degflow.viz.tables import markdown_table as table_lines

__all__ = [
    "METHODS",
    "FOLDER_METHODS",
    "METRICS",
    "EvalSettings",
    "EvalResult",
    "evaluation_split",
    "load_model",
    "evaluate_dataset",
    "evaluate_folders",
    "write_results",
]

log = logging.getLogger(__name__)

#: Methods of a checkpoint evaluation (config key ``methods``).
#: Methods that need a noise model (config key ``noise``).
STOCHASTIC_METHODS: tuple[str, ...] = ("stochastic", "stochastic_mean")
#: Methods that need the fitted kernel baseline (config keys ``kernel_file``, ``kernel_cache``).
KERNEL_METHODS: tuple[str, ...] = ("kernel", "kernel_noise")
#: Methods evaluated unless ``methods`` says otherwise (the stochastic and kernel ones need a fitted model).
DEFAULT_METHODS: tuple[str, ...] = ("degflow", "bicubic", "procedural", "ae_interp")
METHODS: tuple[str, ...] = DEFAULT_METHODS + STOCHASTIC_METHODS + KERNEL_METHODS
#: Methods of a folder evaluation: the generated folder plus the HR-only baselines.
FOLDER_METHODS: tuple[str, ...] = ("generated", "bicubic", "procedural", *KERNEL_METHODS)
#: Metric name -> (table header, higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    "psnr_y": ("PSNR-Y (dB)", True),
    "ssim_y": ("SSIM-Y", True),
    "lpips": ("LPIPS", False),
    "kl": ("KL", False),
    "akld": ("AKLD", False),
    "spec": ("Spectrum dist. (dB)", False),
    "diversity": ("Diversity (LPIPS)", True),
}
#: Where the noise statistics (KL, AKLD, spectrum distance) are measured (``eval.noise_stats``): ``hr``:
#: on the images scored at HR size; ``lr``: at true LR size, where sensor noise lives: the generated and
#: real LR sampled back to it (:func:`~degflow.core.resize.sample_to_lr`, the inverse of the bicubic
#: upsampling that brought true-size LR to HR size; meant for ``eval.hr_size_output=from_lr``), the HR
#: reference resized there (antialiased): at HR size the LR's noise is upsampled, so AKLD's 7 x 7 window sees about
#: 49 / s^2 independent noise values (1.5 at x4) and scores any added noise, even a second real capture's, as
#: worse than none (docs/STOCHASTIC.md).
NOISE_STATS: tuple[str, ...] = ("hr", "lr")
#: Metrics shown without a "best" mark (a description, not a score).
_UNRANKED = ("diversity",)
_SCALE_TOL = 1e-6


# ------------------------------------------------------------------------------ settings
@dataclass
class EvalSettings:
    """Plain evaluation settings (config keys of ``conf/evaluate.yaml``)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    shave: int = 0                                  # eval.shave
    lpips: bool = True                              # eval.lpips
    lpips_backbone_weights: str | None = None       # eval.lpips_backbone_weights
    max_images: int | None = None                   # eval.max_images
    procedural_seed: int = 0                        # procedural_seed
    allow_extrapolation: bool = False               # allow_extrapolation
    crop_size: int = 64                             # crops.size (HR pixels)
    crop_images: int = 1                            # crops.images
    hr_size_output: str = "decoded"                 # eval.hr_size_output (degflow.core.resize.HR_SIZE_OUTPUTS)
    noise_stats: str = "hr"                         # eval.noise_stats: where KL / AKLD / spectrum are measured
    noise: str | None = None                        # noise: a fitted noise model file (stochastic methods)
    strength: float = 1.0                           # strength of the noise (0 = deterministic)
    samples: int = 4                                # samples per image and scale (stochastic methods)
    noise_seed: int = 0                             # base seed of the samples

    def __post_init__(self) -> None:
        check_hr_size_output(self.hr_size_output, "eval.hr_size_output")
        check_choice(self.noise_stats, NOISE_STATS, "eval.noise_stats")
        check_int(self.shave, "eval.shave", minimum=0, hint=" (border pixels)")
        check_positive_int(self.max_images, "eval.max_images", allow_none=True)
        check_number(self.strength, "strength", low=0.0)
        check_int(self.samples, "samples", minimum=1)
        check_int(self.noise_seed, "noise_seed")


def _methods(value: Sequence[str] | str, valid: Sequence[str], allow_empty: bool = False) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else list(value)
    bad = [m for m in values if m not in valid]
    if bad or not (values or allow_empty):
        raise ValueError(f"methods={values!r}: expected a {'' if allow_empty else 'non-empty '}list of {list(valid)}"
                         + (f"; unknown {bad}" if bad else ""))
    return tuple(dict.fromkeys(values))


def _match(scale: float, available: Sequence[float]) -> float | None:
    return next((a for a in available if abs(a - scale) < _SCALE_TOL), None)


def _requested(scales: Sequence[float] | None, sources: Mapping[str, Sequence[float]], where: str) -> list[float]:
    """The scales to evaluate (config key ``scales``): every requested scale must be offered
    by every source (``{description: available scales}``); None = the scales all of them offer."""
    first = next(iter(sources.values()))
    if scales is None:
        wanted = [s for s in first if all(_match(s, other) is not None for other in sources.values())]
    else:
        wanted = []
        for s in (float(v) for v in scales):
            for what, available in sources.items():
                if _match(s, available) is None:
                    raise ValueError(f"scales: x{scale_label(s)} is not in {what} ({where}); it has "
                                     f"{['x' + scale_label(a) for a in sorted(available)]}")
            wanted.append(_match(s, first))
    if not wanted:
        raise ValueError(f"scales: nothing to evaluate: {', '.join(sources)} share no scale > 1 ({where})")
    return sorted(set(wanted))


def evaluation_split(bundle: Any, split: str = "test"):
    """The images a data option offers for evaluation (config key ``eval.split``).

    ``test`` (the default): the data option's test split (``bundle.test``: full, uncropped images,
    read from disk only now); training and sweeps never read it. ``val``: the validation split
    (``bundle.val``, centre-cropped as training validates), where settings may be compared and chosen.
    """
    if split not in ("test", "val"):
        raise ValueError(f"eval.split={split!r} is not one of ['test', 'val']")
    return bundle.test if split == "test" else bundle.val


def load_model(ckpt: str | Path, device: str, solver: Mapping[str, Any] | None, precision: str = "fp32",
               tile_size: int | None = 1024, tile_overlap: int = 256) -> Synthesizer:
    """A stage-2 checkpoint as a :class:`Synthesizer` under ``solver`` (the config's
    ``solver`` group as a dict; None: :data:`degflow.generation.DEFAULT_SOLVER`, as for
    :meth:`Synthesizer.from_checkpoint`). Raises
    :class:`~degflow.infra.checkpoint.CheckpointError` naming ``ckpt`` for a wrong or broken file."""
    spec = SolverSpec.create(**solver) if solver is not None else None
    return Synthesizer.from_checkpoint(ckpt, device=device, solver=spec, precision=precision,
                                       tile_size=tile_size, tile_overlap=tile_overlap)


# ------------------------------------------------------------------------------ result
@dataclass
class EvalResult:
    """Everything one evaluation measured (plain data, JSON-ready except ``crops``).

    ``records``: one dict per (image, method, scale) with the metric values;
    ``costs``: one dict per (image, method) with ``seconds`` (and ``nfe`` for degflow);
    ``failures``: ``{"image", "error"}`` per skipped image; ``crops``: zoomed crops for the
    picture strip, ``{image: {row: {scale: [3, h, w]}}}`` (rows "real" and the methods).
    """

    methods: tuple[str, ...]
    scales: list[float]
    seen_scales: list[float] | None
    settings: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    crops: dict[str, dict[str, dict[float, Tensor]]] = field(default_factory=dict)
    images: int = 0

    def heldout(self, scale: float) -> bool | None:
        """True for a scale the model never saw, None when unknown (folder mode without seen_scales)."""
        if self.seen_scales is None:
            return None
        return _match(scale, self.seen_scales) is None

    def per_scale(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{method: {scale label: {metric: mean over images, "n": images, "heldout": bool}}}``."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for m in self.methods:
            out[m] = {}
            for s in self.scales:
                rows = [r for r in self.records if r["method"] == m and abs(r["scale"] - s) < _SCALE_TOL]
                if rows:
                    out[m][scale_label(s)] = {**_means(rows), "n": len(rows), "heldout": self.heldout(s)}
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per method: metric means over (image, scale) pairs for ``seen``, ``heldout`` and
        ``all`` scales, and the mean ``seconds_per_image`` / ``nfe`` (null where not measured)."""
        out = {}
        for m in self.methods:
            rows = [r for r in self.records if r["method"] == m]
            groups = {"all": rows}
            if self.seen_scales is not None:
                groups["seen"] = [r for r in rows if not self.heldout(r["scale"])]
                groups["heldout"] = [r for r in rows if self.heldout(r["scale"])]
            costs = [c for c in self.costs if c["method"] == m]
            nfes = [c["nfe"] for c in costs if c.get("nfe") is not None]
            out[m] = {
                **{g: (_means(v) if v else None) for g, v in groups.items()},
                "seconds_per_image": _mean([c["seconds"] for c in costs]),
                "nfe": _mean(nfes),
            }
        return out

    def objective(self, method: str, metric: str = "psnr_y") -> float | None:
        """``metric`` of ``method`` averaged over the held-out scales (all scales when none
        is held out): the value a sweep optimizes."""
        summary = self.summary().get(method)
        if not summary:
            return None
        group = summary.get("heldout") or summary.get("all")
        return None if group is None else group.get(metric)

    def to_json(self, objective: float | None = None) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "images": self.images,
            "scales": [scale_label(s) for s in self.scales],
            "seen_scales": None if self.seen_scales is None else [scale_label(s) for s in self.seen_scales],
            "objective": objective,
            "summary": self.summary(),
            "per_scale": self.per_scale(),
            "records": [{k: _finite(v) for k, v in r.items()} for r in self.records],
            "costs": self.costs,
            "failures": self.failures,
        }


def _finite(v: Any) -> Any:
    """Non-finite floats (PSNR of identical images) as None, so eval.json stays strict JSON."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    return {k: _mean([r.get(k) for r in rows]) for k in METRICS}


# ------------------------------------------------------------------------------ measuring
class _Scorer:
    """All metrics of one generated image against the real one (both ``[1, 3, H, W]``)."""

    def __init__(self, settings: EvalSettings, device: torch.device):
        self.shave = settings.shave
        self.device = device
        self.noise_stats = settings.noise_stats
        self.lpips = load_lpips("alex", settings.lpips_backbone_weights, device=device) if settings.lpips else None

    def __call__(self, fake: Tensor, real: Tensor, hr: Tensor, scale: float = 1.0) -> dict[str, float]:
        fake, real, hr = fake.float().cpu(), real.float().cpu(), hr.float().cpu()
        if fake.shape != real.shape:
            raise ValueError(f"generated image of shape {tuple(fake.shape)} vs real {tuple(real.shape)}")
        stats, stats_scale = (fake, real, hr), scale
        if self.noise_stats == "lr" and scale != 1.0:   # the LR back at true size; the HR reference resized there
            stats, stats_scale = (sample_to_lr(fake, scale), sample_to_lr(real, scale), resize_to_lr(hr, scale)), 1.0
        out = {
            "psnr_y": float(psnr_y(fake, real, shave=self.shave)),
            "ssim_y": float(ssim_y(fake, real, shave=self.shave)),
            "kl": float(histogram_kl(*stats)),
            "akld": float(akld(*stats)),
            "spec": float(spectrum_distance(*stats, stats_scale)),
            "diversity": None,
        }
        if self.lpips is not None:
            with torch.no_grad():
                out["lpips"] = float(self.lpips(fake.to(self.device), real.to(self.device)))
        else:
            out["lpips"] = None
        return out

    def scored_samples(self, samples: Sequence[Tensor], real: Tensor, hr: Tensor, scale: float) -> dict[str, float]:
        """Metrics of each sample, averaged, and ``diversity``: the mean LPIPS over the pairs of
        samples (None with one sample or LPIPS off)."""
        each = [self(x, real, hr, scale) for x in samples]
        out = {k: _mean([e[k] for e in each]) for k in each[0] if k != "diversity"}
        if self.lpips is not None and len(samples) > 1:
            with torch.no_grad():
                pairs = [float(self.lpips(a.float().to(self.device), b.float().to(self.device)))
                         for i, a in enumerate(samples) for b in samples[i + 1:]]
            out["diversity"] = _mean(pairs)
        else:
            out["diversity"] = None
        return out


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _hr_baselines(methods: Sequence[str], hr: Tensor, scales: Sequence[float], name: str,
                  seed: int, kernel: KernelDegradation | None = None
                  ) -> tuple[dict[str, dict[float, Tensor]], dict[str, float]]:
    """bicubic / procedural / kernel LR images at HR size ``{method: {scale: [1, 3, H, W]}}`` (the
    kernel's true-size LR bicubic-upsampled, like the procedural one) and seconds."""
    images: dict[str, dict[float, Tensor]] = {}
    seconds: dict[str, float] = {}
    hr_cpu = hr.float().cpu()
    if "bicubic" in methods:
        images["bicubic"], seconds["bicubic"] = _timed(lambda: {s: bicubic_baseline(hr_cpu, s) for s in scales})
    if "procedural" in methods:
        images["procedural"], seconds["procedural"] = _timed(lambda: {
            s: realesrgan(hr_cpu, s, seed=procedural_seed(seed, name, s), size="hr") for s in scales})
    for method, strength in (("kernel", 0.0), ("kernel_noise", 1.0)):
        if method in methods:
            images[method], seconds[method] = _timed(lambda: {s: upsample_to(kernel.degrade(
                hr_cpu, s, noise_strength=strength,
                generator=torch.Generator().manual_seed(kernel_noise_seed(seed, name, s))), *hr_cpu.shape[-2:])
                for s in scales})
    return images, seconds


def _center_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw].detach().float().cpu()


class _Collector:
    """Scores every method's images of one HR image and records them in an EvalResult."""

    def __init__(self, result: EvalResult, scorer: _Scorer, settings: EvalSettings):
        self.result, self.scorer, self.settings = result, scorer, settings

    def add(self, name: str, hr: Tensor, real: Mapping[float, Tensor], outputs: Mapping[str, Mapping[float, Tensor]],
            costs: Mapping[str, Mapping[str, Any]]) -> None:
        records = []
        for method in self.result.methods:
            for s, fake in outputs[method].items():
                if isinstance(fake, Tensor):
                    metrics = self.scorer(fake, real[s], hr, s)
                else:                                   # a stochastic method's samples
                    metrics = self.scorer.scored_samples(fake, real[s], hr, s)
                records.append({"image": name, "method": method, "scale": s,
                                "heldout": self.result.heldout(s), **metrics})
        # everything of this image measured: only now does it count
        self.result.records += records
        self.result.costs += [{"image": name, "method": m, **c} for m, c in costs.items()]
        self.result.images += 1
        if len(self.result.crops) < self.settings.crop_images:
            size = self.settings.crop_size
            rows = {"real": {s: _center_crop(x, size)[0] for s, x in real.items()}}
            rows.update({m: {s: _center_crop(x if isinstance(x, Tensor) else x[0], size)[0]
                             for s, x in outputs[m].items()} for m in self.result.methods})
            self.result.crops[name] = rows
        line = ", ".join(f"{m} {fmt(_mean([r['psnr_y'] for r in records if r['method'] == m]), None, 'psnr_y')}"
                         for m in self.result.methods)
        log.info("[%d] %s: mean PSNR-Y over %d scales: %s", self.result.images, name, len(self.result.scales), line)

    def fail(self, name: str, err: BaseException) -> None:
        self.result.failures.append({"image": name, "error": f"{type(err).__name__}: {err}"})
        log.warning("skipped image %s: %s: %s", name, type(err).__name__, err)


def _check_some_images(result: EvalResult, what: str) -> None:
    if result.images == 0:
        first = result.failures[0]["error"] if result.failures else "no images"
        raise ValueError(f"no image of {what} could be evaluated ({len(result.failures)} failed; first: {first})")


def _check_kernel(methods: Sequence[str], kernel: KernelDegradation | None) -> None:
    wanted = [m for m in methods if m in KERNEL_METHODS]
    if wanted and kernel is None:
        raise ValueError(f"methods: {wanted} need the fitted kernel baseline: kernel_file=<file> (python -m degflow "
                         f"fit-kernel), or, with a checkpoint, the data option's training pairs")
    if "kernel_noise" in wanted and kernel.noise is None:
        raise ValueError("methods: kernel_noise needs a kernel baseline fitted with its noise model")


def _kernel_record(methods: Sequence[str], kernel: KernelDegradation | None) -> dict[str, Any]:
    """What the results record of the kernel baseline: its data, fit and rule (none without it)."""
    if kernel is None or not any(m in KERNEL_METHODS for m in methods):
        return {}
    return {"kernel": {"scales": [scale_label(s) for s in kernel.scales], "support_lr": kernel.support_lr,
                       "data": {k: v for k, v in (kernel.provenance.get("data") or {}).items() if k != "names"},
                       "fit": kernel.provenance.get("fit"), "file": kernel.provenance.get("file")}}


# ------------------------------------------------------------------------------ checkpoint on a dataset
def evaluate_dataset(synth: Synthesizer, dataset: Any, data_scales: Sequence[float],
                     scales: Sequence[float] | None, settings: EvalSettings,
                     description: str = "", kernel: KernelDegradation | None = None) -> EvalResult:
    """Evaluate a model and the baselines on a dataset of aligned HR / real-LR images.

    Args:
        synth: the model (its solver is the one evaluated).
        dataset: items ``{"name", "hr": [3, H, W], "lr": [S, 3, H, W], "scales": [S]}``
            (a data option's evaluation split, :func:`evaluation_split`).
        data_scales: the scales the data has (``data.val_scales``; 1 = HR is ignored).
        scales: scales to evaluate (config key ``scales``); None = every data scale > 1.
        settings: metric and method settings.
        kernel: the fitted kernel baseline of methods ``kernel`` / ``kernel_noise``.
    Raises:
        ValueError naming the key for a requested scale the data lacks (``scales``), scales
        beyond the trained range without ``allow_extrapolation``, or ae_interp without the
        real images of the training scales (``methods``).
    """
    methods = _methods(settings.methods, METHODS)
    _check_kernel(methods, kernel)
    available = [float(s) for s in data_scales if float(s) > 1.0]
    wanted = _requested(scales, {"the data": available},
                        f"data.val_scales={[scale_label(a) for a in data_scales]}")
    if "degflow" in methods:
        synth.scale_times(wanted, settings.allow_extrapolation)          # fails early, naming `scales`
    noise = _stochastic_option(methods, settings, synth)
    train_scales = [float(s) for s in synth.train_scales or ()]
    knots = [s for s in train_scales if s > 1.0] if "ae_interp" in methods else []
    if knots:
        missing = [s for s in knots if _match(s, available) is None]
        if missing:
            raise ValueError(f"methods: ae_interp needs the real LR images at the checkpoint's training scales "
                             f"{[scale_label(s) for s in knots]}, but the data has no "
                             f"{['x' + scale_label(s) for s in missing]} (data.val_scales="
                             f"{[scale_label(a) for a in data_scales]}); drop ae_interp from methods")
    result = EvalResult(methods=methods, scales=wanted, seen_scales=train_scales or None,
                        settings={"data": description, "methods": list(methods), "shave": settings.shave,
                                  "solver": synth.solver.to_dict(), "checkpoint_sha256": synth.checkpoint_sha256,
                                  "procedural_seed": settings.procedural_seed,
                                  "hr_size_output": settings.hr_size_output, "noise_stats": settings.noise_stats,
                                  **_kernel_record(methods, kernel),
                                  **({} if noise is None else noise.record(settings.noise_seed, settings.samples))})
    collector = _Collector(result, _Scorer(settings, synth.device), settings)
    n = len(dataset) if settings.max_images is None else min(len(dataset), settings.max_images)
    for i in range(n):
        name = _item_name(dataset, i)
        try:
            item = dataset[i]
            name = str(item.get("name", name))
            hr = item["hr"][None]                                                       # [1, 3, H, W]
            lrs = item["lr"]                                                            # [S, 3, H, W]
            item_scales = [float(v) for v in item["scales"]]                           # [S]
            real = {}
            for s in set(wanted) | set(knots):
                j = next((k for k, v in enumerate(item_scales) if abs(v - s) < _SCALE_TOL), None)
                if j is None:
                    raise ValueError(f"item has no real LR image at x{scale_label(s)}")
                real[s] = lrs[j][None]
                if real[s].shape != hr.shape:
                    raise ValueError(f"real x{scale_label(s)} image has shape {tuple(real[s].shape)}, "
                                     f"the HR {tuple(hr.shape)}")
            outputs, costs = _model_outputs(synth, methods, hr, real, wanted, knots, settings, name, noise)
            base, seconds = _hr_baselines(methods, hr, wanted, name, settings.procedural_seed, kernel)
            outputs.update(base)
            costs.update({m: {"seconds": t, "nfe": None} for m, t in seconds.items()})
            collector.add(name, hr, {s: real[s] for s in wanted}, outputs, costs)
        except (ValueError, OSError, RuntimeError) as err:
            collector.fail(name, err)
    _check_some_images(result, "the dataset")
    return result


def _item_name(dataset: Any, i: int) -> str:
    records = getattr(dataset, "records", None)
    try:
        return str(records[i].name) if records is not None else f"#{i}"
    except (AttributeError, IndexError):
        return f"#{i}"


def _stochastic_option(methods: Sequence[str], settings: EvalSettings, synth: Synthesizer) -> StochasticOption | None:
    """The noise model of the stochastic methods (None when none is evaluated); ValueError naming
    ``noise`` when one is asked for without a file, or the file was fitted for another checkpoint."""
    if not any(m in STOCHASTIC_METHODS for m in methods):
        return None
    if not settings.noise:
        raise ValueError(f"methods: {[m for m in methods if m in STOCHASTIC_METHODS]} need noise=<a noise model file> "
                         "(python -m degflow fit-noise ckpt=<this checkpoint> ... out=noise.pt)")
    return StochasticOption.load(settings.noise, settings.strength, checkpoint_sha256=synth.checkpoint_sha256)


def _model_outputs(synth: Synthesizer, methods: Sequence[str], hr: Tensor, real: Mapping[float, Tensor],
                   scales: Sequence[float], knots: Sequence[float], settings: EvalSettings, name: str = "",
                   noise: StochasticOption | None = None) -> tuple[dict[str, dict[float, Any]], dict[str, dict[str, Any]]]:
    outputs: dict[str, dict[float, Any]] = {}
    costs: dict[str, dict[str, Any]] = {}

    def scored(x: Tensor, s: float) -> Tensor:
        return lr_at_hr_size(x, s, settings.hr_size_output, key="eval.hr_size_output")

    stochastic = [m for m in STOCHASTIC_METHODS if m in methods]
    if "degflow" in methods or stochastic:
        res = synth.generate(hr, scales, settings.allow_extrapolation)
        if "degflow" in methods:
            outputs["degflow"] = {s: scored(res.images[s], s) for s in scales}
            costs["degflow"] = {"seconds": res.seconds, "nfe": res.nfe}
    if stochastic:
        assert noise is not None
        start = time.perf_counter()
        samples: dict[float, list[Tensor]] = {}
        for s in scales:                         # noise at true LR size, scored at HR size like the LR
            lr, ref = resize_to_lr(res.images[s], s), resize_to_lr(hr.to(res.images[s].device), s)
            samples[s] = [noisy_at_hr_size(res.images[s], lr, noise.sample(lr, s, noise.seeds(settings.noise_seed,
                                                                                               [name], s, k), hr=ref),
                                           s, settings.hr_size_output) for k in range(settings.samples)]
        seconds = res.seconds + (time.perf_counter() - start) / settings.samples
        if "stochastic" in methods:
            outputs["stochastic"] = samples
            costs["stochastic"] = {"seconds": seconds, "nfe": res.nfe}
        if "stochastic_mean" in methods:
            outputs["stochastic_mean"] = {s: torch.stack(v).mean(0) for s, v in samples.items()}
            costs["stochastic_mean"] = {"seconds": seconds * settings.samples, "nfe": res.nfe}
    if "ae_interp" in methods:
        res = synth.interpolate_real(hr, {s: real[s] for s in knots}, scales, settings.allow_extrapolation)
        outputs["ae_interp"] = {s: scored(res.images[s], s) for s in scales}
        costs["ae_interp"] = {"seconds": res.seconds, "nfe": None}
    return outputs, costs


# ------------------------------------------------------------------------------ folders
def _scale_folders(root: Path, key: str) -> dict[float, Path]:
    """``{scale: root/x{label}}`` for every ``x<number>`` subfolder of ``root``."""
    if not root.is_dir():
        raise ValueError(f"{key}={str(root)!r} is not a folder (expected x<scale>/ subfolders, e.g. x2/, x2.5/)")
    out = {}
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and sub.name.startswith("x"):
            try:
                s = float(sub.name[1:])
            except ValueError:
                continue
            if math.isfinite(s) and s >= 1.0:
                out[s] = sub
    if not out:
        raise ValueError(f"{key}={str(root)!r} has no x<scale>/ subfolders (e.g. x2/, x2.5/); "
                         f"for a synthesize.py output folder pass its LR/ or LR_hrsize/ folder")
    return out


def _stems(folder: Path) -> dict[str, Path]:
    """``{relative path without suffix: file}`` of the images under ``folder``."""
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in find_images(folder)}


def _at_hr_size(x: Tensor, hr: Tensor, path: Path, scale: float) -> Tensor:
    h, w = hr.shape[-2:]
    relation = size_relation((w, h), (x.shape[-1], x.shape[-2]), scale)
    if relation is None:
        raise ValueError(f"size mismatch: {path} is {x.shape[-1]}x{x.shape[-2]}, but its HR image is {w}x{h}; "
                         f"expected the same size or about 1/{scale_label(scale)} of it")
    return x if relation == "same" else upsample_to(x, h, w)


def evaluate_folders(generated: str | Path, real: str | Path, hr: str | Path, scales: Sequence[float] | None,
                     settings: EvalSettings, seen_scales: Sequence[float] | None = None,
                     device: str | torch.device = "cpu", kernel: KernelDegradation | None = None) -> EvalResult:
    """Compare a folder of generated LR images with a folder of real LR images.

    Layout: ``generated/x{s}/name.png`` (e.g. ``synthesize.py``'s ``out/LR`` or
    ``out/LR_hrsize``), ``real/x{s}/name.*`` and ``hr/name.*``; LR images at true LR size
    or HR size (true-size ones are bicubic-upsampled to HR size, as the data options do).
    Method ``generated`` is the folder; ``bicubic`` / ``procedural`` / ``kernel`` /
    ``kernel_noise`` in ``settings.methods`` are computed from the HR images (the kernel ones
    with ``kernel``, a fitted file). An image is evaluated when its HR image and every
    requested scale exist in both folders; others are reported in ``failures``.

    Raises:
        ValueError naming the key (``generated``, ``real``, ``hr``, ``scales``) for a missing or
        empty folder, or a requested scale missing from a folder.
    """
    # the folder is the generator; of the configured methods only the HR-only baselines apply
    methods = ("generated",) + tuple(m for m in _methods(settings.methods, METHODS, allow_empty=True)
                                     if m in FOLDER_METHODS)
    _check_kernel(methods, kernel)
    gen_root, real_root, hr_root = Path(generated), Path(real), Path(hr)
    gen_dirs, real_dirs = _scale_folders(gen_root, "generated"), _scale_folders(real_root, "real")
    if not hr_root.is_dir():
        raise ValueError(f"hr={str(hr_root)!r} is not a folder of HR images")
    hr_files = _stems(hr_root)
    if not hr_files:
        raise ValueError(f"hr={str(hr_root)!r} holds no images")
    wanted = _requested(scales, {f"generated={str(gen_root)!r}": list(gen_dirs), f"real={str(real_root)!r}": list(real_dirs)},
                        "x<scale>/ folders")
    gen_files = {s: _stems(gen_dirs[s]) for s in wanted}
    real_files = {s: _stems(real_dirs[_match(s, list(real_dirs))]) for s in wanted}
    for s in wanted:
        if not gen_files[s]:
            raise ValueError(f"generated={str(gen_dirs[s])!r} holds no images")
        if not real_files[s]:
            raise ValueError(f"real={str(real_dirs[_match(s, list(real_dirs))])!r} holds no images")
    names = sorted(set().union(*(gen_files[s].keys() for s in wanted)))
    if settings.max_images is not None:
        names = names[: settings.max_images]
    result = EvalResult(methods=methods, scales=wanted,
                        seen_scales=None if seen_scales is None else [float(s) for s in seen_scales],
                        settings={"generated": str(gen_root), "real": str(real_root), "hr": str(hr_root),
                                  "methods": list(methods), "shave": settings.shave,
                                  "procedural_seed": settings.procedural_seed, **_kernel_record(methods, kernel)})
    collector = _Collector(result, _Scorer(settings, torch.device(device)), settings)
    for name in names:
        try:
            if name not in hr_files:
                raise ValueError(f"no HR image {name}.* under hr={str(hr_root)!r}")
            hr_img = read_image(hr_files[name])[None]
            real_imgs, gen_imgs = {}, {}
            for s in wanted:
                for key, files, dest in (("generated", gen_files[s], gen_imgs), ("real", real_files[s], real_imgs)):
                    if name not in files:
                        raise ValueError(f"no {key} image x{scale_label(s)}/{name}.*")
                    dest[s] = _at_hr_size(read_image(files[name])[None], hr_img, files[name], s)
            outputs: dict[str, dict[float, Tensor]] = {"generated": gen_imgs}
            base, seconds = _hr_baselines(methods, hr_img, wanted, name, settings.procedural_seed, kernel)
            outputs.update(base)
            costs = {m: {"seconds": t, "nfe": None} for m, t in seconds.items()}
            collector.add(name, hr_img, real_imgs, outputs, costs)
        except (ValueError, OSError, RuntimeError) as err:
            collector.fail(name, err)
    _check_some_images(result, f"generated={str(gen_root)!r}")
    return result


# ------------------------------------------------------------------------------ writing
def _scale_header(result: EvalResult, s: float) -> str:
    return f"x{scale_label(s)}" + ("*" if result.heldout(s) else "")


def markdown_table(result: EvalResult, title: str = "degflow evaluation") -> str:
    """The paper-ready Markdown tables: a summary (seen / held-out) and one table per metric
    with methods as rows and scales as columns (``*`` = held-out scale, best value bold).
    A metric measured for no method at no scale (LPIPS with ``eval.lpips=false``) has no column
    and no table; a line names it."""
    per_scale, summary = result.per_scale(), result.summary()
    metrics = {k: v for k, v in METRICS.items()
               if any(row.get(k) is not None for rows in per_scale.values() for row in rows.values())}
    lines = [f"# {title}", ""]
    for k, v in result.settings.items():
        lines.append(f"- {k}: `{json.dumps(v) if not isinstance(v, str) else v}`")
    lines.append(f"- images: {result.images} evaluated, {len(result.failures)} skipped")
    if len(metrics) < len(METRICS):
        lines.append(f"- not measured: {', '.join(METRICS[k][0] for k in METRICS if k not in metrics)}")
    lines += ["", "## Summary", ""]
    groups = ["seen", "heldout"] if result.seen_scales is not None else ["all"]
    header = ["method"] + [f"{metrics[m][0]} {g}" for g in groups for m in metrics] + ["NFE", "s / image"]
    rows = []
    for m in result.methods:
        row = [m]
        for g in groups:
            vals = summary[m].get(g) or {}
            row += [fmt(vals.get(k), None, k) for k in metrics]   # "–": not measured, or infinite PSNR
        rows.append(row + [fmt(summary[m]["nfe"], None, "nfe"), fmt(summary[m]["seconds_per_image"], None, "seconds")])
    lines += table_lines(header, rows)
    if result.seen_scales is not None:
        lines += ["", f"Seen (training) scales: {', '.join('x' + scale_label(s) for s in result.seen_scales)}; "
                      "every other scale is held out (marked *)."]
    for metric, (label, higher) in metrics.items():
        lines += ["", f"## {label} ({'higher' if higher else 'lower'} is better)", ""]
        header = ["method"] + [_scale_header(result, s) for s in result.scales]
        rows = []
        best = {}
        for s in result.scales:
            vals = [per_scale[m].get(scale_label(s), {}).get(metric) for m in result.methods]
            vals = [v for v in vals if v is not None]
            best[s] = (max if higher else min)(vals) if vals and metric not in _UNRANKED else None
        for m in result.methods:
            row = [m]
            for s in result.scales:
                v = per_scale[m].get(scale_label(s), {}).get(metric)
                cell = fmt(v, None, metric)
                row.append(f"**{cell}**" if v is not None and v == best[s] else cell)
            rows.append(row)
        lines += table_lines(header, rows)
    if result.failures:
        lines += ["", "## Skipped images", ""] + [f"- {f['image']}: {f['error']}" for f in result.failures]
    return "\n".join(lines) + "\n"


def csv_table(result: EvalResult) -> str:
    """One row per (method, scale): mean metrics over the images."""
    strength = result.settings.get("strength")          # recorded when a stochastic method was evaluated
    return csv_text(["method", "scale", "heldout", "n", *METRICS, *(["strength"] if strength is not None else [])],
                    [[m, label, vals["heldout"], vals["n"], *(None if vals[k] is None else f"{vals[k]:.6f}"
                                                              for k in METRICS),
                      *([strength if m in STOCHASTIC_METHODS else None] if strength is not None else [])]
                     for m, rows in result.per_scale().items() for label, vals in rows.items()])


def write_results(result: EvalResult, out_dir: str | Path, objective: float | None = None) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.md`` and ``eval.csv`` into ``out_dir`` as one set (all or none:
    :func:`~degflow.infra.files.atomic_write_texts`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "markdown": out / "eval.md", "csv": out / "eval.csv"}
    atomic_write_texts({paths["json"]: json.dumps(result.to_json(objective), indent=1, allow_nan=False) + "\n",
                        paths["markdown"]: markdown_table(result), paths["csv"]: csv_table(result)})
    return paths


# ------------------------------------------------------------------------------ jobs
def _solver_label(solver: Mapping[str, Any] | None) -> str:
    if not solver:
        return "?"
    if solver.get("steps") is None:
        return f"{solver['method']} rtol={solver.get('rtol'):g}"
    return f"{solver['method']}/{solver['steps']}" + ("" if solver.get("output_mode", "grid") == "grid" else f"/{solver['output_mode']}")


def write_plots(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """``metric_vs_scale.png`` and one ``crops_<image>.png`` per kept crop set."""
    from degflow.viz.plots import plot_crops, plot_metric_vs_scale

    out = Path(out_dir)
    paths = [plot_metric_vs_scale(result.per_scale(), out / "metric_vs_scale.png")]
    heldout = {s: result.heldout(s) for s in result.scales}
    for i, (name, rows) in enumerate(result.crops.items()):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        paths.append(plot_crops(rows, out / f"crops_{i}_{safe}.png", title=f"{name}: centre crops at HR pixel size",
                                heldout=heldout))
    return paths


def collect_sweep(root: str | Path, out_dir: str | Path | None = None, metric: str = "psnr_y") -> dict[str, Path]:
    """Combine the ``eval.json`` files under a sweep folder (one per solver setting) into
    ``sweep.md`` / ``sweep.csv`` (model rows: solver, NFE, s / image, seen and held-out
    metrics) and ``psnr_vs_nfe.png``. Raises ValueError naming ``collect`` when none is found."""
    from degflow.viz.plots import plot_psnr_vs_nfe

    root = Path(root)
    files = sorted(root.rglob("eval.json")) if root.is_dir() else []
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            summary = data["summary"]
            model = summary["stochastic"] if "stochastic" in summary else summary["degflow"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        solver = data["settings"].get("solver") or {}
        strength = data["settings"].get("strength") if "stochastic" in summary else None
        label = _solver_label(solver) + ("" if strength is None else f" strength={strength:g}")
        row = {"label": label, "group": solver.get("method", "?"),
               "run": str(f.parent.relative_to(root)),
               "nfe": model.get("nfe"), "seconds_per_image": model.get("seconds_per_image")}
        for g in ("seen", "heldout"):
            for k in METRICS:
                row[f"{k}_{g}"] = (model.get(g) or {}).get(k)
        rows.append(row)
    if not rows:
        raise ValueError(f"collect={str(root)!r}: no eval.json with a degflow model result under it")
    rows.sort(key=lambda r: (r["nfe"] is None, r["nfe"] or 0))
    out = Path(out_dir) if out_dir is not None else root
    cols = ["label", "nfe", "seconds_per_image"] + [f"{k}_{g}" for g in ("heldout", "seen") for k in METRICS] + ["run"]
    paths = {**write_table(out, "sweep", cols, [[r[c] for c in cols] for r in rows], title="Solver sweep"),
             "plot": out / "psnr_vs_nfe.png"}
    plot_psnr_vs_nfe([{"label": r["label"], "group": r["group"], "nfe": r["nfe"],
                       metric: r[f"{metric}_heldout"] if r[f"{metric}_heldout"] is not None else r[f"{metric}_seen"]}
                      for r in rows], paths["plot"], metric=metric)
    return paths


def _kernel(config: Mapping[str, Any], methods: Sequence[str], data: Any, description: str) -> KernelDegradation | None:
    """The kernel baseline when a kernel method is asked for: ``kernel_file``, else fitted on ``data``'s
    training pairs (cached under ``kernel_cache``); None otherwise."""
    from degflow.data.kernel_fit import bundle_pairs, kernel_baseline

    if not any(m in KERNEL_METHODS for m in methods):
        return None
    if data is None and not config.get("kernel_file"):
        raise ValueError("methods: kernel / kernel_noise in folder mode need kernel_file=<a fitted kernel file> "
                         "(python -m degflow fit-kernel data=...)")
    return kernel_baseline(bundle_pairs(data) if data is not None else None, description,
                           kernel_file=config.get("kernel_file"), cache_dir=config.get("kernel_cache"),
                           noise="kernel_noise" in methods)


def run(config: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """One evaluation job from a plain config (``conf/evaluate.yaml``) into ``out_dir``.

    Dispatches on the keys: ``collect`` (combine a sweep), ``generated`` (folder mode) or
    ``ckpt`` (a checkpoint on ``data``'s evaluation split). Returns
    ``{"objective": float | None, "paths": {...}}``.
    """
    if config.get("collect"):  # written into the sweep folder itself unless out= is given
        return {"objective": None,
                "paths": collect_sweep(config["collect"], config.get("out"), config.get("objective", "psnr_y"))}
    out = Path(config["out"]) if config.get("out") else Path(out_dir)
    ev = config["eval"]
    settings = EvalSettings(
        methods=tuple(config["methods"]) if not isinstance(config["methods"], str) else (config["methods"],),
        shave=ev["shave"], lpips=ev["lpips"], lpips_backbone_weights=ev["lpips_backbone_weights"],
        max_images=ev["max_images"], procedural_seed=config["procedural_seed"],
        allow_extrapolation=config["allow_extrapolation"], crop_size=config["crops"]["size"],
        crop_images=config["crops"]["images"], hr_size_output=ev["hr_size_output"],
        noise_stats=ev.get("noise_stats", "hr"),
        noise=config.get("noise"), strength=config.get("strength", 1.0), samples=config.get("samples", 4),
        noise_seed=config.get("noise_seed", 0),
    )
    scales = config.get("scales")
    if scales is not None and not isinstance(scales, (list, tuple)):
        scales = [scales]
    metric = config.get("objective", "psnr_y")
    if metric not in METRICS:
        raise ValueError(f"objective={metric!r} is not one of {list(METRICS)}")
    if config.get("generated"):
        for key in ("real",):
            if not config.get(key):
                raise ValueError(f"{key}: folder mode (generated=...) needs real=<folder with x<s>/ real LR images>")
        hr = config.get("hr") or str(Path(config["generated"]).parent / "HR")
        kernel = _kernel(config, settings.methods, None, "")
        result = evaluate_folders(config["generated"], config["real"], hr, scales, settings,
                                  seen_scales=config.get("seen_scales"), device=resolve_device(config["device"]),
                                  kernel=kernel)
        objective = result.objective("generated", metric)
    else:
        if not config.get("ckpt"):
            raise ValueError("ckpt: give a stage-2 checkpoint (ckpt=path/to/lfm.ckpt), or generated=... real=... "
                             "to evaluate a folder, or collect=... to combine a sweep")
        synth = load_model(config["ckpt"], config["device"], config["solver"], config["precision"],
                           config["tile_size"], config["tile_overlap"])
        data_settings = dict(config["data"])
        data = build_data(option_of_target(data_settings.pop("_target_", "")), **data_settings)
        split = ev.get("split", "test")
        kernel = _kernel(config, settings.methods, data, data.description)
        result = evaluate_dataset(synth, evaluation_split(data, split), data.val_scales, scales, settings,
                                  description=data.description, kernel=kernel)
        result.settings.update(checkpoint=str(config["ckpt"]), split=split)
        model_row = "stochastic" if "stochastic" in result.methods else "degflow"
        objective = result.objective(model_row, metric) if model_row in result.methods else None
    paths = write_results(result, out, objective)
    if config.get("plots", True):
        paths["plots"] = write_plots(result, out)
    return {"objective": objective, "paths": paths, "result": result}
