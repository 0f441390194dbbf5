"""The fitted-kernel baseline of a data source: its training pairs, their fingerprint, the fit, the cache.

:class:`~degflow.baselines.kernel_baseline.KernelDegradation` is fitted on the *training* pairs
of a data option (:func:`bundle_pairs`: ``bundle.train``'s records at the option's training
scales, never its validation or test split) or of a pair folder (:func:`folder_pairs`: the SR
comparison's real training pairs), with the real LR at its true size: files stored at true
size are used as they are; LR held or stored at HR size (the demo's, RealSR V2) is taken back
to true size by antialiased bicubic (:func:`degflow.core.resize.resize_to_lr`), the way the
evaluation's ``from_lr`` scoring and the SR comparison's demo pairs make it.

:func:`kernel_baseline` fits once and caches the file under ``cache_dir`` by the pairs'
fingerprint (:func:`pairs_fingerprint`: names, scales and 8-bit pixels) and the fit settings,
or loads an explicit ``kernel_file`` (refused when it was fitted on other data).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from degflow import __version__
from degflow.baselines.kernel import apply_kernel
from degflow.baselines.kernel_baseline import (
    KernelDegradation,
    KernelFileError,
    fit_kernels,
    load_kernel_file,
    save_kernel_file,
)
from degflow.baselines.noise import fit as fit_noise
from degflow.core.resize import resize_to_lr
from degflow.core.scales import scale_label
from degflow.data.common import MemoryRecord, size_relation
from degflow.data.images import read_image
from degflow.data.sr_pairs import PairFolder, find_pairs
from degflow.metrics.image import psnr_y

__all__ = [
    "RIDGE",
    "SUPPORT_LR",
    "TrainingPair",
    "bundle_pairs",
    "folder_pairs",
    "kernel_baseline",
    "pairs_fingerprint",
]

log = logging.getLogger(__name__)

#: Kernel side in LR pixels (16 HR pixels at x4: the knot-ceiling study's kernel).
SUPPORT_LR = 4.0
#: Ridge of the least-squares fit, relative to mean(diag(X^T X)).
RIDGE = 1e-8


@dataclass(frozen=True)
class TrainingPair:
    """One training HR image and its real LR images at true size (``[3, H, W]``, ``{scale: [3, h, w]}``)."""

    name: str
    hr: Tensor
    lr: dict[float, Tensor]


def _true_size(lr: Tensor, hr: Tensor, scale: float, where: str) -> Tensor:
    """``lr`` at true LR size: as it is when stored so, ``resize_to_lr`` when stored at HR size."""
    (h, w), (lh, lw) = hr.shape[-2:], lr.shape[-2:]
    relation = size_relation((w, h), (lw, lh), scale)
    if relation is None:
        raise ValueError(f"kernel fit: {where} is {lw}x{lh}, neither its HR size {w}x{h} nor about 1/{scale_label(scale)} of it")
    return resize_to_lr(lr, scale) if relation == "same" else lr


def bundle_pairs(bundle: Any) -> list[TrainingPair]:
    """The training pairs of a data option's :class:`~degflow.data.common.DataBundle` at its training
    scales > 1 (``bundle.train.records``; validation and test are never read). Records decoded into
    memory from files (:mod:`degflow.data.memory`, LR resized to HR size) are read from their files."""
    scales = [float(s) for s in bundle.train_scales if float(s) > 1.0]
    if not scales:
        raise ValueError(f"kernel fit: the data has no training scale > 1 (data.train_scales="
                         f"{list(bundle.train_scales)}); the kernel baseline needs real LR of the training images")
    records = list(getattr(bundle.train, "records", None) or [])
    if not records:
        raise ValueError(f"kernel fit: the data has no training pairs ({bundle.description})")
    out = []
    for rec in records:
        source = getattr(rec, "source", None)     # files held in memory by degflow.data.memory: [HR, LR per scale]
        if isinstance(rec, MemoryRecord) and source:
            files = dict(zip([float(s) for s in bundle.train.scales], source[1:]))
            hr = read_image(source[0])
            lrs = {s: _true_size(read_image(files[s]), hr, s, str(files[s])) for s in scales}
        elif isinstance(rec, MemoryRecord):
            hr = rec.hr_image
            lrs = {s: _true_size(rec.lr_images[s], hr, s, f"{rec.name} x{scale_label(s)}") for s in scales}
        else:
            hr = read_image(rec.hr)
            lrs = {s: _true_size(read_image(rec.lr[s]), hr, s, str(rec.lr[s])) for s in scales}
        out.append(TrainingPair(rec.name, hr, lrs))
    return out


def folder_pairs(folder: PairFolder) -> list[TrainingPair]:
    """The pairs of a pair folder (``HR/`` + ``LR/x{s}/`` or ``x{s}/``), each HR image read once."""
    try:
        pairs = find_pairs([folder])
    except ValueError as err:
        raise ValueError(f"kernel fit: {err}") from None
    by_name: dict[str, TrainingPair] = {}
    for p in pairs:
        if p.name not in by_name:
            by_name[p.name] = TrainingPair(p.name, read_image(p.hr_path), {})
        pair = by_name[p.name]
        pair.lr[float(p.scale)] = _true_size(read_image(p.lr_path), pair.hr, p.scale, str(p.lr_path))
    return [by_name[n] for n in sorted(by_name)]


def _u8(x: Tensor) -> bytes:
    return ((x.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).contiguous().numpy().tobytes()


def pairs_fingerprint(pairs: Sequence[TrainingPair]) -> str:
    """sha256 over the pairs sorted by name: each name, size and 8-bit HR pixels, then per scale
    its label, size and 8-bit true-size LR pixels (the same pixels give the same fingerprint
    whatever folder or option they come from)."""
    h = hashlib.sha256()
    for pair in sorted(pairs, key=lambda p: p.name):
        h.update(f"{pair.name}|{tuple(pair.hr.shape)}|".encode())
        h.update(_u8(pair.hr))
        for s in sorted(pair.lr):
            h.update(f"x{scale_label(s)}|{tuple(pair.lr[s].shape)}|".encode())
            h.update(_u8(pair.lr[s]))
    return h.hexdigest()


def _fit(pairs: Sequence[TrainingPair], description: str, fingerprint: str, support_lr: float,
         ridge: float) -> KernelDegradation:
    start = time.perf_counter()
    scales = sorted({s for p in pairs for s in p.lr})
    fitted, pixels = fit_kernels(((p.hr, p.lr) for p in pairs), scales, support_lr, ridge)
    model = KernelDegradation(tuple(fitted), tuple(k for k, _ in fitted.values()), tuple(b for _, b in fitted.values()),
                              support_lr)
    psnr: dict[float, list[float]] = {s: [] for s in scales}
    residuals = []
    for p in pairs:
        for s, real in p.lr.items():
            pred = apply_kernel(p.hr[None], *model.kernel_at(s), tuple(real.shape[-2:]))[0].clamp(-1, 1)  # at its size
            psnr[s].append(float(psnr_y(pred[None], real[None], shave=0)))
            residuals.append((pred, real, s))
    # the noise model of issue 27, on the residual real LR - kernel LR at the training scales (kernel_noise)
    try:
        noise_model, noise_note = fit_noise(residuals, meta={"predictor": "kernel", "data_fingerprint": fingerprint}), None
    except ValueError as err:                  # e.g. LR images smaller than the noise model's spectrum tiles
        noise_model, noise_note = None, str(err)
        log.warning("kernel baseline: no noise model (kernel_noise unavailable): %s", err)
    provenance = {
        "data": {"fingerprint": fingerprint, "description": description, "images": len(pairs),
                 "names": sorted(p.name for p in pairs),
                 "pairs": {scale_label(s): sum(1 for p in pairs if s in p.lr) for s in scales}},
        "fit": {"support_lr": support_lr, "ridge": ridge, "lr_pixels": {scale_label(s): n for s, n in pixels.items()},
                "train_psnr_y_true_size": {scale_label(s): sum(v) / len(v) for s, v in psnr.items()},
                "seconds": time.perf_counter() - start,
                "noise": "fitted on real LR - kernel LR" if noise_model is not None else f"not fitted: {noise_note}"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "degflow_version": __version__,
    }
    log.info("kernel baseline fitted on %d images at %s in %.1f s; training Y-PSNR (true LR size) %s",
             len(pairs), ", ".join("x" + scale_label(s) for s in scales), provenance["fit"]["seconds"],
             ", ".join(f"x{k} {v:.2f}" for k, v in provenance["fit"]["train_psnr_y_true_size"].items()))
    return KernelDegradation(model.scales, model.kernels, model.biases, support_lr, provenance, noise_model)


def kernel_baseline(pairs: Sequence[TrainingPair] | None, description: str = "", *, kernel_file: str | Path | None = None,
                    cache_dir: str | Path | None = None, noise: bool = False, support_lr: float = SUPPORT_LR,
                    ridge: float = RIDGE, key: str = "kernel_file") -> KernelDegradation:
    """The kernel baseline of ``pairs``: loaded from ``kernel_file``, from the cache, or fitted now.

    Args:
        pairs: the training pairs (:func:`bundle_pairs`, :func:`folder_pairs`); None only with
            ``kernel_file`` (then the data cannot be checked).
        description: one line naming the data (recorded in the file).
        kernel_file: an explicit fitted file (must exist; refused when fitted on other pairs).
        cache_dir: where fitted files are kept, named by the pairs' fingerprint and the fit
            settings (None: fit without caching). A damaged cache file is fitted again.
        noise: the noise model is needed (method ``kernel_noise``): refuse a file without one.
            (A fit always fits it, on the kernels' residuals, when the LR images are large enough.)
    Raises:
        ValueError (:class:`KernelFileError` for files) naming ``key``.
    """
    if kernel_file is not None:
        fingerprint = pairs_fingerprint(pairs) if pairs is not None else None
        model = load_kernel_file(kernel_file, fingerprint, key)
        return _with_noise(model, noise, f"{key}={str(kernel_file)!r}")
    if not pairs:
        raise ValueError("kernel fit: no training pairs (give the data's training pairs, or kernel_file=)")
    fingerprint = pairs_fingerprint(pairs)
    path = None
    if cache_dir is not None:
        settings = hashlib.sha256(f"{support_lr!r}|{ridge!r}".encode()).hexdigest()[:8]
        path = Path(cache_dir) / f"kernel-{fingerprint[:16]}-{settings}.pt"
        if path.is_file():
            try:
                model = load_kernel_file(path, fingerprint, "kernel cache")
                log.info("kernel baseline: %s (cached, fitted on the same pairs)", path)
                return _with_noise(model, noise, str(path))
            except KernelFileError as err:
                log.warning("kernel baseline: fitting again: %s", err)
    model = _fit(pairs, description, fingerprint, support_lr, ridge)
    if path is not None:
        digest = save_kernel_file(path, model)
        log.info("kernel baseline: saved %s", path)
        model = replace(model, provenance={**model.provenance, "file": {"path": str(path), "sha256": digest}})
    return _with_noise(model, noise, "the fitted kernels")


def _with_noise(model: KernelDegradation, noise: bool, what: str) -> KernelDegradation:
    if noise and model.noise is None:
        raise KernelFileError(f"{what}: no noise model, so no kernel_noise "
                              f"({(model.provenance.get('fit') or {}).get('noise', 'fitted without one')})")
    return model
