"""The stochastic option of generation: many LR per HR image, a fitted noise model on top of the
deterministic trajectory, with one strength control.

The ODE from the HR latent is deterministic: one LR per (HR image, scale). The stochastic option
adds a sample of a :class:`~degflow.baselines.noise.NoiseModel` (fitted by ``python -m degflow
fit-noise`` on the residual real LR - this checkpoint's own LR at its training knots) to the
deterministic LR **at true LR size**, where sensor noise lives (docs/STOCHASTIC.md says why there
and not in the latent). ``strength`` scales the noise: 0 returns the deterministic LR exactly,
1 the fitted noise, > 1 more of it. A conditional model (the ``fit-noise`` default) also corrects the
LR by the residual's conditional mean given the LR and the HR image, so every path passes the HR
image at true LR size (``hr=``).

The same option is :class:`~degflow.generation.Degrader`'s noise hook (``degrader(hr, s, noise=option,
seed=...)``: the SR training loops' online path, where one generator per batch draws the samples in order).

Seeds (datasets, evaluation, :meth:`Synthesizer.__call__`): sample ``k`` of image ``name`` at scale
``s`` draws its noise from ``noise_seed(seed, name, s, k)`` (:func:`degflow.baselines.noise.noise_seed`), so it depends on
nothing else: not the order, batch, shard or device of the run, nor the other scales or samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from degflow.baselines.noise import NoiseModel, load_noise_model, noise_seed
from degflow.core.resize import lr_at_hr_size
from degflow.infra.checks import check_number

__all__ = ["StochasticOption", "noisy_at_hr_size"]


@dataclass(frozen=True)
class StochasticOption:
    """A noise model with its strength (0 = deterministic, 1 = as fitted, > 1 = stronger) and the
    sha256 of its file (recorded in manifests and results)."""

    model: NoiseModel
    strength: float = 1.0
    sha256: str | None = None

    def __post_init__(self) -> None:
        check_number(self.strength, "strength", low=0.0)

    @classmethod
    def load(cls, path: str | Path, strength: float = 1.0, *, checkpoint_sha256: str | None = None,
             key: str = "noise") -> StochasticOption:
        """Load a noise model file for a checkpoint. ``checkpoint_sha256``: the stage-2 checkpoint it
        will be used with; a model fitted for another checkpoint (its ``meta``) is refused, naming
        ``key``, because its residual statistics belong to that checkpoint's LR."""
        check_number(strength, "strength", low=0.0)
        model, sha256 = load_noise_model(path, key=key, with_digest=True)
        fitted_for = model.meta.get("checkpoint_sha256")
        if checkpoint_sha256 is not None and fitted_for is not None and fitted_for != checkpoint_sha256:
            raise ValueError(f"{key}={str(path)!r} was fitted for the checkpoint with sha256 {str(fitted_for)[:12]}..., "
                             f"not this one ({checkpoint_sha256[:12]}...); fit one for this checkpoint: "
                             "python -m degflow fit-noise ckpt=<this checkpoint> ...")
        return cls(model=model, strength=float(strength), sha256=sha256)

    def seeds(self, base: int, images: Sequence[str], scale: float, sample: int = 0) -> list[int]:
        """The seed of sample ``sample`` of each image at ``scale`` (:func:`noise_seed`)."""
        return [noise_seed(base, name, scale, sample) for name in images]

    def sample(self, lr: Tensor, scale: float, seeds: Sequence[int], hr: Tensor | None = None) -> Tensor:
        """``lr [B, 3, h, w]`` (deterministic, true LR size, [-1, 1]) plus ``strength`` times a noise
        sample; image b's noise from ``seeds[b]`` alone. Strength 0 returns ``lr`` unchanged (a copy).
        ``hr``: the HR images at true LR size (the shape of ``lr``), needed by conditional models."""
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return self.model.sample(lr, scale, generators, strength=self.strength, hr=hr)

    def __call__(self, lr: Tensor, scale: float, generator: torch.Generator, hr: Tensor | None = None) -> Tensor:
        """The :class:`~degflow.generation.degrade.NoiseHook` of :class:`~degflow.generation.Degrader`:
        ``degrader(hr, scale, noise=option, seed=...)`` adds a sample to each true-size LR ``[1, 3, h, w]``,
        drawn from the call's ``generator`` (``hr``: that image's HR at true LR size)."""
        return self.model.sample(lr, scale, generator, strength=self.strength, hr=hr)

    def record(self, base_seed: int, samples: int) -> dict[str, Any]:
        """What results files and manifests record about the option."""
        return {"noise_sha256": self.sha256, "strength": self.strength, "noise_seed": base_seed, "samples": samples,
                "noise_fitted_for": self.model.meta.get("checkpoint_sha256")}


def noisy_at_hr_size(decoded: Tensor, lr: Tensor, noisy: Tensor, scale: float, mode: str) -> Tensor:
    """The HR-size LR of a stochastic sample: the deterministic HR-size LR
    (:func:`~degflow.core.resize.lr_at_hr_size` of ``decoded [B, 3, H, W]`` under ``mode``) plus the
    noise ``noisy - lr`` (true LR size) bicubic-upsampled to H x W, clamped to [-1, 1]. With
    ``mode="from_lr"`` this is the upsampled noisy LR (up to the clamp); a zero noise gives the
    deterministic HR-size LR exactly."""
    base = lr_at_hr_size(decoded, scale, mode)
    noise = noisy.to(base.dtype) - lr.to(base.dtype)
    if not bool(noise.any()):
        return base.clone()
    up = torch.nn.functional.interpolate(noise, size=base.shape[-2:], mode="bicubic", align_corners=False)
    return (base + up).clamp(-1, 1)
