"""The fitted-kernel baseline: linear degradation kernels fitted on real pairs, at any scale >= 1.

The classical competitor of a learned degradation: estimate the camera's blur (with its
sub-pixel shift, colour mixing and offset) from real HR / LR pairs by least squares, one kernel
per training scale (:func:`fit_kernels`, the math in :mod:`degflow.baselines.kernel`), and
degrade any HR image with it (:class:`KernelDegradation`). Methods ``kernel`` (and, with the
noise model of :mod:`degflow.baselines.noise` fitted on the kernel's residuals, ``kernel_noise``)
of the evaluation, the synthesis job and the SR comparison.

The rule for a scale s that was not fitted (documented in docs/KERNEL_BASELINE.md): each fitted
kernel is a fixed shape in LR pixels (:func:`~degflow.baselines.kernel.resample_kernel`: what a
zoom does to a camera's optics and pixel aperture, both fixed on the sensor); between two
fitted scales the two carried kernels (and biases) are blended linearly in s; below the
smallest / above the largest fitted scale the nearest one is carried alone. s = 1 is the HR
image itself (the project's convention). The LR has the true size round(H/s) x round(W/s).

The file (:func:`save_kernel_file` / :func:`load_kernel_file`) is a degflow checkpoint of kind
``kernel`` (plain tensors and containers, sealed with the sha256 of its content, verified and
loaded with ``weights_only=True`` at every load, like every checkpoint) holding the kernels, the
rule, the noise model, the data's fingerprint and the fit's settings and statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from degflow.baselines.kernel import (
    apply_kernel,
    kernel_normal_equations,
    kernel_side,
    resample_kernel,
    solve_linear_degradation,
    split_weights,
)
from degflow.baselines.noise import NoiseModel
from degflow.baselines.procedural import procedural_seed
from degflow.core.resize import as_image_batch, lr_size
from degflow.core.scales import check_scale, scale_label
from degflow.infra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "KERNEL_FILE_VERSION",
    "KERNEL_KIND",
    "RULE",
    "KernelDegradation",
    "KernelFileError",
    "fit_kernels",
    "kernel_noise_seed",
    "load_kernel_file",
    "save_kernel_file",
]

#: The checkpoint kind of a kernel file, and the version of its ``kernel`` payload.
KERNEL_KIND = "kernel"
KERNEL_FILE_VERSION = 1
#: How a scale that was not fitted gets its kernel (recorded in every file).
RULE = "scale-normalised: kernels fixed in LR pixels, blended linearly in s between fitted scales"


class KernelFileError(CheckpointError):
    """A kernel file is missing, damaged, not a kernel file, or fitted for other data."""


@dataclass(frozen=True)
class KernelDegradation:
    """Linear degradation kernels fitted at ``scales``, usable at any scale >= 1.

    ``kernels[i]``: ``[3 out, 3 in, k_i, k_i]`` float64 on the HR-pixel lattice of scale
    ``scales[i]`` (``k_i = kernel_side(scales[i], support_lr)``), ``biases[i]``: ``[3]``;
    ``provenance``: plain data (the data's fingerprint and description, the fit's settings and
    statistics); ``noise``: the fitted noise model of ``kernel_noise`` (None: ``kernel`` only).
    """

    scales: tuple[float, ...]
    kernels: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    support_lr: float
    provenance: dict[str, Any] = field(default_factory=dict)
    noise: NoiseModel | None = None

    def __post_init__(self) -> None:
        if not self.scales or len(self.kernels) != len(self.scales) or len(self.biases) != len(self.scales):
            raise ValueError(f"kernel baseline: one kernel and bias per fitted scale expected, got {len(self.scales)} "
                             f"scales, {len(self.kernels)} kernels, {len(self.biases)} biases")
        if list(self.scales) != sorted(set(self.scales)) or self.scales[0] <= 1.0:
            raise ValueError(f"kernel baseline: fitted scales must be distinct, sorted and > 1, got {list(self.scales)}")
        for s, kern, bias in zip(self.scales, self.kernels, self.biases):
            k = kernel_side(s, self.support_lr)
            if tuple(kern.shape) != (3, 3, k, k) or tuple(bias.shape) != (3,):
                raise ValueError(f"kernel baseline: at x{scale_label(s)} expected a kernel [3, 3, {k}, {k}] and a bias "
                                 f"[3], got {tuple(kern.shape)} and {tuple(bias.shape)}")

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the training pairs the kernels were fitted on."""
        return (self.provenance.get("data") or {}).get("fingerprint")

    def kernel_at(self, scale: float) -> tuple[Tensor, Tensor]:
        """``(kernel [3, 3, k, k], bias [3])`` at ``scale`` > 1 by the rule of the module (:data:`RULE`)."""
        s = check_scale(scale, "scale")
        if s == 1.0:
            raise ValueError("kernel_at: scale 1 is the HR image itself (no kernel)")
        k = kernel_side(s, self.support_lr)
        fitted = list(self.scales)
        if s <= fitted[0] or s >= fitted[-1]:
            i = 0 if s <= fitted[0] else len(fitted) - 1
            return resample_kernel(self.kernels[i], fitted[i], s, k), self.biases[i].to(torch.float64)
        j = next(i for i in range(len(fitted) - 1) if fitted[i] <= s <= fitted[i + 1])
        w = (s - fitted[j]) / (fitted[j + 1] - fitted[j])
        kern = (1 - w) * resample_kernel(self.kernels[j], fitted[j], s, k) \
            + w * resample_kernel(self.kernels[j + 1], fitted[j + 1], s, k)
        bias = (1 - w) * self.biases[j].to(torch.float64) + w * self.biases[j + 1].to(torch.float64)
        return kern, bias

    def degrade(self, hr: Tensor, scale: float, *, noise_strength: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        """The LR image at true size ``round(H/s) x round(W/s)``, clamped to [-1, 1].

        Args:
            hr: ``[B, 3, H, W]`` or ``[3, H, W]`` in [-1, 1] (returned in the same layout).
            scale: any float >= 1 (1: a copy of ``hr``).
            noise_strength: 0 = the kernel alone (``kernel``); 1 = plus a sample of the fitted
                noise model (``kernel_noise``); other values scale the noise.
            generator: the noise's random source (required when ``noise_strength`` > 0).
        """
        s = check_scale(scale, "scale")
        single = hr.ndim == 3
        x = as_image_batch(hr, "hr")
        h, w = lr_size(x.shape[-2], x.shape[-1], s)
        if s == 1.0:
            lr = x.clone()
        else:
            kern, bias = self.kernel_at(s)
            lr = apply_kernel(x, kern, bias, (h, w)).clamp(-1.0, 1.0)
        if noise_strength:
            if self.noise is None:
                raise ValueError("kernel_noise: this kernel file holds no noise model (fitted without noise)")
            if generator is None:
                raise ValueError("kernel_noise: a torch.Generator is required to draw the noise")
            lr = self.noise.sample(lr, s, generator, noise_strength).clamp(-1.0, 1.0)
        return lr[0] if single else lr


def kernel_noise_seed(base: int, image: str, scale: float) -> int:
    """The seed of ``kernel_noise``'s noise for one (image, scale): the rule of
    :func:`~degflow.baselines.procedural.procedural_seed` on ``"kernel_noise:{image}"``, so the
    evaluation and the synthesis job draw the same noise for the same image, scale and base seed."""
    return procedural_seed(base, f"kernel_noise:{image}", scale)


# ------------------------------------------------------------------------------------------- fitting
def fit_kernels(pairs: Iterable[tuple[Tensor, Mapping[float, Tensor]]], scales: Sequence[float],
                support_lr: float = 4.0, ridge: float = 1e-8) -> tuple[dict[float, tuple[Tensor, Tensor]], dict[float, int]]:
    """Least-squares kernels, one per scale, over every training pair.

    Args:
        pairs: ``(hr [3, H, W], {scale: lr [3, h, w]})`` in [-1, 1], LR at true size; a pair
            may lack some scales.
        scales: the scales to fit (> 1).
        support_lr: kernel side in LR pixels (:func:`~degflow.baselines.kernel.kernel_side`).
        ridge: relative ridge of :func:`~degflow.baselines.kernel.solve_linear_degradation`.
    Returns:
        ``({scale: (kernel [3, 3, k, k], bias [3])}, {scale: LR pixels fitted on})``.
    Raises:
        ValueError when a scale has no pair.
    """
    wanted = [check_scale(s, "scales") for s in scales]
    if not wanted or min(wanted) <= 1.0:
        raise ValueError(f"kernel fit: scales > 1 expected, got {list(scales)}")
    sums: dict[float, tuple[Tensor, Tensor]] = {}
    counts = {s: 0 for s in wanted}
    for hr, lrs in pairs:
        for s, lr in lrs.items():
            s = float(s)
            if s not in counts:
                continue
            a, b = kernel_normal_equations(hr[None], lr[None], kernel_side(s, support_lr))
            sums[s] = (a, b) if s not in sums else (sums[s][0] + a, sums[s][1] + b)
            counts[s] += lr.shape[-2] * lr.shape[-1]
    empty = [scale_label(s) for s in wanted if not counts[s]]
    if empty:
        raise ValueError(f"kernel fit: no training pair at scale(s) {empty}")
    out = {s: split_weights(solve_linear_degradation(*sums[s], ridge), kernel_side(s, support_lr)) for s in wanted}
    return dict(sorted(out.items())), counts


# ------------------------------------------------------------------------------------------- file
def save_kernel_file(path: str | Path, model: KernelDegradation) -> str:
    """Write ``model`` as a degflow checkpoint of kind ``kernel`` (atomic, sealed with the sha256 of its
    content: :func:`degflow.infra.checkpoint.save_checkpoint`); returns that digest."""
    payload = {
        "version": KERNEL_FILE_VERSION,
        "scales": [float(s) for s in model.scales],
        "kernels": [k.to(torch.float64).contiguous() for k in model.kernels],
        "biases": [b.to(torch.float64).contiguous() for b in model.biases],
        "support_lr": float(model.support_lr),
        "rule": RULE,
        "provenance": {k: v for k, v in model.provenance.items() if k != "file"},
        "noise": None if model.noise is None else model.noise.to_dict(),
    }
    return save_checkpoint(path, {"kind": KERNEL_KIND, "kernel": payload})


def load_kernel_file(path: str | Path, fingerprint: str | None = None, key: str = "kernel_file") -> KernelDegradation:
    """A kernel file written by :func:`save_kernel_file`, loaded like a checkpoint
    (:func:`degflow.infra.checkpoint.load_checkpoint`: digest verified, ``weights_only=True``).

    Args:
        fingerprint: the fingerprint of the data it is used with (None: not checked).
        key: the config key that named the file, quoted in errors.
    Raises:
        KernelFileError: missing or damaged file (content that no longer matches its seal), untrusted
            file (pickled objects beyond plain tensors and containers), not a kernel file, another
            version, or fitted on data with another fingerprint. One line.
    """
    where = f"{key}={str(path)!r}"
    try:
        ckpt, found = load_checkpoint(path, kind=None, key=key, with_digest=True)
    except CheckpointError as err:
        raise KernelFileError(str(err)) from None
    if ckpt.get("kind") != KERNEL_KIND:
        raise KernelFileError(f"{where} is a {ckpt.get('kind')!r} checkpoint, not a kernel file (fit one: "
                              f"python -m degflow fit-kernel)")
    payload = ckpt.get("kernel")
    if not isinstance(payload, dict) or payload.get("version") != KERNEL_FILE_VERSION:
        raise KernelFileError(f"{where}: kernel file version {(payload or {}).get('version')!r}; this degflow reads "
                              f"version {KERNEL_FILE_VERSION}")
    data = (payload.get("provenance") or {}).get("data") or {}
    if fingerprint is not None and data.get("fingerprint") != fingerprint:
        raise KernelFileError(f"{where} was fitted on other data ({data.get('description', '?')}, fingerprint "
                              f"{str(data.get('fingerprint'))[:12]}) than this data (fingerprint {fingerprint[:12]}); "
                              f"drop {key}= to fit the kernels on this data")
    try:
        noise = None if payload.get("noise") is None else NoiseModel.from_dict(payload["noise"])
    except ValueError as err:
        raise KernelFileError(f"{where}: its noise model is {err}") from None
    provenance = {**(payload.get("provenance") or {}), "file": {"path": str(path), "sha256": found.sha256}}
    try:
        return KernelDegradation(tuple(payload["scales"]), tuple(payload["kernels"]), tuple(payload["biases"]),
                                 payload["support_lr"], provenance, noise)
    except (KeyError, TypeError, ValueError) as err:
        raise KernelFileError(f"{where}: inconsistent kernel file: {err}") from None
