"""A signal-dependent, spatially correlated noise model at true LR size: the stochastic part of a
degradation, fitted on the residual between real LR images and a generator's deterministic LR.

A deterministic generator (degflow's ODE, a fitted kernel) gives one LR image per HR image and
scale; two real captures of one scene differ by noise it cannot predict. This module models the
part of the real degradation the prediction lacks as zero-mean Gaussian noise, independent of the
prediction, whose level follows the predicted image and whose spatial and colour correlation are
measured on real pairs.
Images are in [-1, 1], ``[B, 3, h, w]`` at true LR size. At scale ``s``::

    n = sigma(x, s) * f          x: the predicted LR; sigma^2 per RGB channel from a table over
                                 (that channel's intensity, the luminance gradient magnitude)
    f = O^T L g                  O: the orthonormal opponent basis (luminance, two chroma),
                                 L: Cholesky factor of the components' covariance
    g_c = k_c(s) * w_c           w: white N(0, 1); k_c: the zero-phase square root of the
                                 measured power spectrum of component c (unit energy)

and a sample is ``x + strength * n``, clamped to [-1, 1] (``strength`` 0 returns ``x`` exactly).

Why this form: the variance table is the signal-dependent part of camera noise models (shot +
read noise grow with intensity; the Poisson-Gaussian noise level function) with a second axis for
local structure, where residuals of a generator concentrate (edges, misregistration); the
opponent basis with its own spectrum per component is what demosaicking and 4:2:0 JPEG make of
sensor noise (luminance-correlated across RGB, chroma smoother than luminance), so plain white
noise of the right variance is not what is fitted. A Gaussian with a learned variance function and
spectrum is the maximum-likelihood stationary-Gaussian fit of those statistics; it has no network
to train, so it fits in seconds on a few dozen images and adds no ODE work at sampling.

Fit (:func:`fit`), from ``(predicted, real, scale[, HR])`` tuples at one or more scales (the knots),
``target="residual"`` (the default): the statistics of ``r = real - predicted``, the part of the real
LR the prediction does not explain:

1. gradient bin edges: quantiles of the predicted images' luminance gradient magnitude;
2. per knot, channel and (intensity, gradient) bin: the variance of ``r`` about the bin's mean,
   shrunk toward the channel's variance with a prior weight of ``prior`` pixels;
3. per knot: ``u = r / sigma(x)`` in the opponent basis; its covariance (scaled so the RGB channels
   have unit variance) and, per component, the Welch power spectrum over ``patch x patch`` tiles
   (mean removed, Hann window; the DC bin replaced by its neighbours' mean), normalized to mean 1.

``target="excess"`` (needs ``HR``, the HR image resized to true LR size) fits what the real
degradation residual ``b = real - HR`` has beyond the predicted one ``a = predicted - HR`` instead:
noise independent of the prediction adds ``E[n^2]`` to ``E[a^2]``, so per bin ``E[b^2] - E[a^2]``
(negative values 0), the opponent covariance ``Cov(b) - Cov(a)`` (made positive semi-definite) and the
spectrum ``P_b - P_a`` (negative values 0). The two differ by ``2 E[a (a - b)]``: the residual fit
counts the prediction's own errors that the real LR does not share, the excess fit counts a
prediction that is too clean (too little blur) as missing noise. Measured on validation data
(docs/STOCHASTIC.md) neither is better everywhere; ``residual`` is the default.

``conditional=True`` (needs ``HR``; the ``fit-noise`` default) models the real LR given the predicted LR
``x`` and the HR image ``y`` at true LR size, per knot::

    sample = clamp(x + min(strength, 1) * mu + strength * sigma * f, -1, 1)
    mu = W * [x, y] + b           the residual's conditional mean: a w x w linear filter of the six
                                  channels, ridge least squares on all pixels
    log sigma^2 = v . (1, c, c^2) the noise level function of the corrected intensity c = x + mu, per
                  + beta (p - p_ref)  channel, least squares on log r^2 + 1.2704 (unbiased for Gaussian r)
                                  over the flat pixels (HR texture at most its flat_quantile); p: the HR
                                  image's own noise level (hr_noise_level), the photo's exposure
    f                             as above, its covariance and spectra from the flat pixels and tiles
    (sigma^2 as below with the default variance="energy"; the noise level function normalizes r for f)

The noise level function: camera noise depends on the signal, not on the scene's texture; where the
HR image is textured the residual also holds what the mean cannot predict (blur and misregistration of
real pairs), which is not what differs between two captures, so the noise is measured where the scene
is flat (the noise level function of single-image noise estimation, Liu et al., PAMI 2008) and applied
everywhere.

The photo term (``photo_level``): the photos of one camera are taken at different exposures, and a
photo's noise level differs from the noise level function's by a factor of about 2.5 in variance on
the Canon pairs of docs/STOCHASTIC.md; the HR image, taken by the same camera at the same setting,
carries a trace of it. After the noise level function, each pair's mean of ``log r^2 + 1.2704 -
log sigma^2`` over its flat pixels is regressed (weighted by those pixels) on its HR image's
:func:`hr_noise_level` ``p``: ``beta`` and ``p_ref`` per knot, the level at ``p_ref`` in the intercept.

The level sampled (``level``). Least squares on ``log r^2`` gives the geometric mean ``v_geo`` of the
local variance at an intensity; the true local level still varies about it (a camera's processing
smooths some flat areas more than others, photos differ in exposure): its spread is measured on the
flat pixels as ``s^2 = 2 log mean(r^2 / v_geo)`` (log-normal spread; 0.3 to 0.8 on the data of
docs/STOCHASTIC.md, with the photo term). Where the true variance ``v`` is not known, the level that puts the least noise
where a real capture has none, the smallest expected ``KL(N(0, v_g) || N(0, v))`` (AKLD's per-pixel
divergence), is the harmonic mean ``1 / E[1 / v] = v_geo exp(-s^2 / 2)`` (``harmonic``, the default,
chosen on validation data and by cross-validation on the training photos); the reverse divergence (a pooled histogram's, like KL's) is smallest at
the arithmetic mean ``v_geo exp(+s^2 / 2)``; ``geometric`` keeps ``v_geo``, the midpoint of the two.

The variance sampled (``variance``). ``r = real - corrected`` holds the real LR's noise and also the
corrected LR's own error where the real LR does not share it (``r = (real - y) - (corrected - y)``):
a sample ``corrected + n`` whose noise has ``r``'s level carries that error twice, once in the corrected
LR and once in the noise. On the Canon pairs of docs/STOCHASTIC.md this happens where the scene is
flattest (the camera's processing smoothed the real LR there; the prediction is rougher): the samples'
residual energy overshoots the real one there, which AKLD punishes most. ``energy`` (the default,
chosen by cross-validation on the training photos and confirmed on the validation splits) matches the
sample's residual energy to the real one instead, at the scale AKLD compares them (:func:`local_energy`,
a 7 x 7 Gaussian window)::

    log E = u . (1, c, c^2, t, log e)   the real LR's local residual energy E = local_energy(real - y),
                                        least squares on every pixel, at the level chosen (harmonic:
                                        lowered by its spread, measured like s^2 above); t: the HR
                                        image's texture, e = local_energy(corrected - y): the corrected
                                        LR's own residual energy (energy_features)
    sigma^2 = max(E - e, energy_floor * E)

so the noise tops the corrected LR's own residual up to the real one: much where the prediction is
cleaner than the real LR, little (the floor) where it is already as rough. Between knots ``E`` is
interpolated and ``e`` is the corrected LR's own energy at s. Below the first knot nothing was fitted:
``E`` grows from 0 at s = 1 with the square of ``(s - 1) / (knot - 1)`` (a residual's energy grows with
the square of a small degradation) and no mean correction is applied (the prediction's error there is
not the knot's scaled down: on the demo validation split a scaled correction made KL worse at x1.5
with every weight tried; both chosen there among linear and quadratic ramps). ``residual`` samples the
noise level function of ``r`` itself (the default before; the photo term applies to it only).

Between knots every quantity is interpolated linearly in s; from s = 1 (the HR image itself: no
noise) to the first knot the variance rises linearly from 0 with the first knot's correlations
(energy models: as above); beyond the last knot the last knot's model holds.

Files: :meth:`NoiseModel.save` / :func:`load_noise_model` (a degflow checkpoint of kind ``noise``:
plain tensors and containers, sealed with its digest and verified on load like every checkpoint,
``weights_only=True``, with ``meta`` saying what it was fitted on).
Per-image seeds that do not depend on order, batching or shards: :func:`noise_seed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from degflow.baselines.filters import gaussian_blur
from degflow.core.scales import check_scale, scale_label
from degflow.infra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from degflow.infra.runtime import key_seed
from degflow.metrics.noise import immerkaer_response, local_variance

__all__ = ["ENERGY_FEATURES", "LEVELS", "OPPONENT", "TARGETS", "VARIANCES", "VARIANCE_FEATURES", "NoiseModel",
           "energy_features", "fit", "gradient_magnitude", "hr_noise_level", "load_noise_model", "local_energy",
           "noise_seed", "texture", "variance_features"]

#: Rows: the orthonormal opponent basis (luminance, red-blue, green-magenta) of RGB.
OPPONENT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, -2.0, 1.0]], dtype=torch.float64)
OPPONENT = OPPONENT / OPPONENT.norm(dim=1, keepdim=True)
#: BT.601 luminance weights (the gradient feature).
_LUMA = (0.299, 0.587, 0.114)
_KIND = "noise"


def _as_batch(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < 1:
        raise ValueError(f"{name} must be an RGB image [3, h, w] or batch [B, 3, h, w] in [-1, 1], "
                         f"got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values")
    return x


def gradient_magnitude(x: Tensor) -> Tensor:
    """Luminance gradient magnitude (central differences, replicated borders), the second axis of
    the variance table: ``[B, 3, h, w]`` in [-1, 1] -> ``[B, 1, h, w]`` float64."""
    w = torch.tensor(_LUMA, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    y = (x.to(torch.float64) * w).sum(1, keepdim=True)
    p = F.pad(y, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    return (gx * gx + gy * gy).sqrt()


def _intensity_position(x: Tensor, bins: int) -> Tensor:
    """Continuous bin coordinate of intensities ``x`` in [-1, 1]: bin i is centred at
    ``(i + 0.5) / bins`` on the [0, 1] scale; clamped to [0, bins - 1]."""
    return (((x.to(torch.float64) + 1) / 2).clamp(0, 1) * bins - 0.5).clamp(0, bins - 1)


def _hann(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    w = torch.hann_window(n, periodic=False, dtype=dtype, device=device)
    w2 = w[:, None] * w[None, :]
    return w2 / w2.pow(2).mean().sqrt()          # mean(w^2) = 1: the periodogram keeps the variance


def _kernels(spectra: Tensor, radius: int) -> Tensor:
    """Colouring kernels ``[C, 2r+1, 2r+1]`` (unit energy) from power spectra ``[C, P, P]`` (mean 1):
    the zero-phase square root of each spectrum, centred and cropped."""
    p = spectra.shape[-1]
    k = torch.fft.ifft2(spectra.clamp_min(0).sqrt()).real
    k = torch.fft.fftshift(k, dim=(-2, -1))[..., p // 2 - radius:p // 2 + radius + 1, p // 2 - radius:p // 2 + radius + 1]
    return k / k.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()


def noise_seed(base: int, image: str, scale: float, sample: int = 0) -> int:
    """The seed of one sample of one (image, scale): ``crc32("{base}:{image}:{scale label}:{sample}")``
    masked to 31 bits. It depends on nothing else (not the order, batch or shard of the image), so
    a dataset, an evaluation and a resumed run draw the same noise for the same key."""
    return key_seed(base, image, scale_label(scale), sample)


@dataclass(frozen=True)
class NoiseModel:
    """A fitted noise model (:func:`fit`); K knots, I intensity bins, G gradient bins, P patch size.

    ``scales`` ``[K]`` knot scales (ascending, > 1); ``variance`` ``[K, 3, I, G]`` per-RGB-channel
    variance tables (units of images in [-1, 1]); ``gradient_edges`` ``[G - 1]``;
    ``covariance`` ``[K, 3, 3]`` of the normalized residual in the opponent basis;
    ``spectra`` ``[K, 3, P, P]`` per opponent component, mean 1; ``radius``: colouring kernels
    are ``2 radius + 1`` wide; ``meta``: plain provenance (what it was fitted on).

    Conditional models (``fit(conditional=True)``, module docstring) also hold ``mean_filter``
    ``[K, 3, 6, w, w]`` and ``mean_bias`` ``[K, 3]`` (the residual's conditional mean: a linear
    filter of the predicted LR and the HR image at true LR size) and ``log_variance``
    ``[K, F]`` (``log sigma^2`` linear in the features of :func:`variance_features`); then
    ``variance`` is the table of the corrected residual, kept for inspection, and sampling needs
    the HR image. ``photo_level`` ``[K, 2]`` (``fit(photo_level=True)``): per knot ``(beta, p_ref)``,
    the photo's level ``beta (p - p_ref)`` added to ``log sigma^2``, ``p`` the HR image's
    :func:`hr_noise_level`; ``None``: no photo term (files written before it).
    ``energy`` ``[K, E]`` and ``energy_floor`` (``fit(variance="energy")``, module docstring): the
    log local energy of the real LR's residual linear in :func:`energy_features`; a sample's noise
    variance is that energy less the corrected LR's own, at least ``energy_floor`` times it.
    ``None``: the noise level function ``log_variance`` is the noise variance (``variance="residual"``,
    and files written before the energy model).
    """

    scales: tuple[float, ...]
    variance: Tensor
    gradient_edges: Tensor
    covariance: Tensor
    spectra: Tensor
    radius: int
    meta: dict[str, Any] = field(default_factory=dict)
    mean_filter: Tensor | None = None
    mean_bias: Tensor | None = None
    log_variance: Tensor | None = None
    photo_level: Tensor | None = None
    energy: Tensor | None = None
    energy_floor: float | None = None

    @property
    def conditional(self) -> bool:
        """True when the model has a conditional mean and variance (its samples need the HR image)."""
        return self.mean_filter is not None

    # ---------------------------------------------------------------- per scale
    def _weights(self, scale: float) -> tuple[int, int, float, float]:
        """``(i, j, a, b)``: the model at ``scale`` is ``a * knot_i + b * knot_j`` for the variance
        and ``(1 - b') knot_i + b' knot_j`` for the correlations (see the module docstring)."""
        s = check_scale(scale, "scale")
        knots = self.scales
        if s <= knots[0]:
            return 0, 0, (s - 1.0) / (knots[0] - 1.0), 0.0
        for i in range(len(knots) - 1):
            if s <= knots[i + 1]:
                w = (s - knots[i]) / (knots[i + 1] - knots[i])
                return i, i + 1, 1.0 - w, w
        return len(knots) - 1, len(knots) - 1, 1.0, 0.0

    def at_scale(self, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(variance [3, I, G], covariance [3, 3], spectra [3, P, P])`` interpolated at ``scale``."""
        i, j, a, b = self._weights(scale)
        variance = a * self.variance[i] + b * self.variance[j]
        c = b / (a + b) if a + b > 0 else 0.0
        covariance = (1 - c) * self.covariance[i] + c * self.covariance[j]
        spectra = (1 - c) * self.spectra[i] + c * self.spectra[j]
        return variance, covariance, spectra

    def variance_map(self, lr: Tensor, scale: float, hr: Tensor | None = None) -> Tensor:
        """Per-pixel noise variance of the predicted LR ``lr [B, 3, h, w]`` at ``scale``: ``[B, 3, h, w]``
        float64. Table models: intensity axis interpolated linearly between bin centres, gradient axis
        by bin. Conditional models (``hr``: the HR image at true LR size, required) evaluate the
        log-linear variance at the prediction corrected by the conditional mean."""
        lr = _as_batch(lr, "lr")
        if not self.conditional:
            table = self.at_scale(scale)[0].to(lr.device)                      # [3, I, G]
            return _lookup(table, lr, self.gradient_edges.to(lr.device))
        return self._conditional(lr, scale, hr)[1]

    def mean_correction(self, lr: Tensor, scale: float, hr: Tensor) -> Tensor:
        """The conditional mean of ``real - predicted`` at ``scale`` (conditional models): ``[B, 3, h, w]``
        float64, interpolated between knots like the variance (0 at scale 1; energy models: 0 below the
        first knot, module docstring)."""
        lr = _as_batch(lr, "lr")
        return self._conditional(lr, scale, hr)[0]

    def _conditional(self, lr: Tensor, scale: float, hr: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(mean [B, 3, h, w], variance [B, 3, h, w])`` of a conditional model, float64."""
        if not self.conditional:
            raise ValueError("this noise model has no conditional mean (fitted with conditional=False)")
        if hr is None:
            raise ValueError("this noise model is conditioned on the HR image: pass hr= (the HR image at true LR "
                             "size, the size of lr)")
        hr = _as_batch(hr, "hr")
        if hr.shape != lr.shape:
            raise ValueError(f"hr must be the HR image at true LR size, the shape of lr {tuple(lr.shape)}; "
                             f"got {tuple(hr.shape)}")
        assert self.mean_filter is not None and self.mean_bias is not None and self.log_variance is not None
        i, j, a, b = self._weights(scale)
        x, ref = lr.to(torch.float64), hr.to(torch.float64).to(lr.device)
        dev = lr.device
        energy = self.energy is not None
        level = None if self.photo_level is None or energy else hr_noise_level(ref)         # [B]

        mean, var = torch.zeros_like(x), torch.zeros_like(x)   # energy models: var accumulates the real LR's energy
        below = energy and float(scale) < self.scales[0]          # energy models below the first knot: no mean
        for k, wgt in ((i, a), (j, b)):                 # each knot's mean and variance, then interpolated
            if wgt > 0:
                mu = _apply_filter(x, ref, self.mean_filter[k].to(dev), self.mean_bias[k].to(dev))
                cor = (x + mu).clamp(-1, 1)
                if energy:
                    assert self.energy is not None
                    knot_var = (energy_features(cor, ref) @ self.energy[k].to(dev)).clamp(max=_LOG_VAR_MAX).exp()
                else:
                    log_var = variance_features(cor) @ self.log_variance[k].to(dev)
                    if level is not None:
                        log_var = log_var + _photo_offset(level, self.photo_level[k]).view(-1, 1, 1, 1)
                    knot_var = log_var.clamp(max=_LOG_VAR_MAX).exp()
                mean = mean + (0.0 if below else wgt) * mu
                var = var + (wgt * wgt if below else wgt) * knot_var
        if energy:       # the real LR's energy, interpolated in s (0 at s = 1), less the corrected LR's own at s
            assert self.energy_floor is not None
            own = local_energy((x + mean).clamp(-1, 1) - ref)
            var = torch.maximum(var - own, self.energy_floor * var)
        return mean, var

    def field(self, shape: Sequence[int], scale: float, generators: Sequence[torch.Generator],
              device: torch.device | str = "cpu") -> Tensor:
        """The unit-variance correlated field ``f [B, 3, h, w]`` (float64) at ``scale``; image b's
        white noise comes from ``generators[b]`` alone (drawn on the CPU, so a seed gives the same
        field on every device)."""
        b, _, h, w = shape
        if len(generators) != b:
            raise ValueError(f"generator: one generator per image expected ({b}), got {len(generators)}")
        _, covariance, spectra = self.at_scale(scale)
        r = self.radius
        white = torch.stack([torch.randn(3, h + 2 * r, w + 2 * r, generator=g, dtype=torch.float64) for g in generators])
        white = white.to(device)
        kernels = _kernels(spectra, r).to(device)[:, None]                      # [3, 1, k, k]
        g = F.conv2d(white, kernels, groups=3)                                  # [B, 3, h, w]
        chol = torch.linalg.cholesky(covariance + 1e-9 * torch.eye(3, dtype=covariance.dtype)).to(device)
        mix = OPPONENT.to(device).T @ chol                                      # RGB <- components
        return torch.einsum("ij,bjhw->bihw", mix, g)

    def sample(self, lr: Tensor, scale: float, generator: torch.Generator | Sequence[torch.Generator],
               strength: float = 1.0, hr: Tensor | None = None) -> Tensor:
        """One noisy sample of the predicted LR ``lr`` (``[B, 3, h, w]`` or ``[3, h, w]`` in [-1, 1], true
        LR size): ``clamp(lr + strength * sigma(lr, s) * f, -1, 1)`` in the dtype of ``lr``; for a
        conditional model ``clamp(lr + min(strength, 1) * mu + strength * sigma * f, -1, 1)`` with the
        conditional mean ``mu`` and variance ``sigma^2`` of ``hr`` (the HR image at true LR size, the
        shape of ``lr``; required).

        ``generator``: one ``torch.Generator`` (used for the images in order) or one per image (then
        each image's noise depends on its own generator only). ``strength`` >= 0 scales the noise
        (0: ``lr`` itself, exactly; 1: as fitted; > 1: stronger; the mean correction fades in up to 1
        and stays there).
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
                or strength < 0:
            raise ValueError(f"strength must be a finite number >= 0 (0 = deterministic, 1 = as fitted), got {strength!r}")
        single = isinstance(lr, Tensor) and lr.ndim == 3
        x = _as_batch(lr, "lr")
        if strength == 0:
            out = x.clone()
        else:
            gens = [generator] * x.shape[0] if isinstance(generator, torch.Generator) else list(generator)
            if self.conditional:
                mean, variance = self._conditional(x, scale, None if hr is None else _as_batch(hr, "hr"))
                base = x.to(torch.float64) + min(float(strength), 1.0) * mean
            else:
                variance, base = self.variance_map(x, scale), x.to(torch.float64)
            noise = variance.sqrt() * self.field(x.shape, scale, gens, x.device)
            out = (base + float(strength) * noise).clamp(-1, 1).to(x.dtype)
        return out[0] if single else out

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "variance": self.variance, "gradient_edges": self.gradient_edges,
                "covariance": self.covariance, "spectra": self.spectra, "radius": int(self.radius),
                "meta": dict(self.meta), "mean_filter": self.mean_filter, "mean_bias": self.mean_bias,
                "log_variance": self.log_variance, "photo_level": self.photo_level, "energy": self.energy,
                "energy_floor": self.energy_floor}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseModel:
        """The model of :meth:`to_dict`; ValueError when a field is missing or inconsistent."""
        try:
            scales = tuple(float(s) for s in d["scales"])
            model = cls(scales=scales, variance=d["variance"].to(torch.float64),
                        gradient_edges=d["gradient_edges"].to(torch.float64),
                        covariance=d["covariance"].to(torch.float64), spectra=d["spectra"].to(torch.float64),
                        radius=int(d["radius"]), meta=dict(d.get("meta") or {}),
                        energy_floor=None if d.get("energy_floor") is None else float(d["energy_floor"]),
                        **{key: None if d.get(key) is None else d[key].to(torch.float64)
                           for key in ("mean_filter", "mean_bias", "log_variance", "photo_level", "energy")})
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"not a noise model ({type(err).__name__}: {err})") from None
        k = len(scales)
        ok = (k >= 1 and all(s > 1 for s in scales) and list(scales) == sorted(set(scales))
              and model.variance.ndim == 4 and model.variance.shape[:2] == (k, 3)
              and model.gradient_edges.shape == (model.variance.shape[3] - 1,)
              and model.covariance.shape == (k, 3, 3) and model.spectra.ndim == 4 and model.spectra.shape[:2] == (k, 3)
              and 0 <= model.radius < model.spectra.shape[-1] // 2
              and bool((model.variance >= 0).all()) and bool(torch.isfinite(model.spectra).all())
              and _conditional_ok(model, k))
        if not ok:
            raise ValueError("not a noise model: inconsistent shapes or values "
                             f"(scales {list(scales)}, variance {tuple(model.variance.shape)}, "
                             f"covariance {tuple(model.covariance.shape)}, spectra {tuple(model.spectra.shape)})")
        return model

    def save(self, path: str | Path) -> str:
        """Write the model as a degflow checkpoint of kind ``noise`` (atomically, sealed with its digest);
        returns the digest (the file's ``checkpoint_sha256``)."""
        return save_checkpoint(path, {"kind": _KIND, "noise_model": self.to_dict()})


def load_noise_model(path: str | Path, key: str = "noise", *, with_digest: bool = False
                     ) -> NoiseModel | tuple[NoiseModel, str]:
    """Load a noise model file like every checkpoint (digest verified, ``weights_only=True``);
    :class:`CheckpointError` naming ``key`` for a missing, damaged, corrupt or other-kind file.
    ``with_digest``: return ``(model, sha256)``, the file's digest (what manifests record)."""
    ckpt, digest = load_checkpoint(path, kind=None, key=key, with_digest=True)
    if ckpt.get("kind") != _KIND:
        raise CheckpointError(f"{key}={str(path)!r} is a {ckpt.get('kind')!r} checkpoint, not a noise model "
                              "(fit one with `python -m degflow fit-noise`)")
    try:
        model = NoiseModel.from_dict(ckpt["noise_model"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{key}={str(path)!r}: {err}") from None
    return (model, digest.sha256) if with_digest else model


def _lookup(table: Tensor, x: Tensor, edges: Tensor) -> Tensor:
    """``table [3, I, G]`` read at every pixel of ``x [B, 3, h, w]``: linear in intensity, by bin in gradient."""
    bins_i, bins_g = table.shape[1:]
    pos = _intensity_position(x, bins_i)                                        # [B, 3, h, w]
    lo = pos.floor().long().clamp(max=bins_i - 1)
    hi = (lo + 1).clamp(max=bins_i - 1)
    w = pos - lo
    gbin = torch.bucketize(gradient_magnitude(x), edges).expand_as(x)         # [B, 3, h, w]
    flat = table.reshape(3, -1)
    b = x.shape[0]

    def at(i: Tensor) -> Tensor:
        idx = (i * bins_g + gbin).transpose(0, 1).reshape(3, -1)               # [3, B h w]
        return flat.gather(1, idx).reshape(3, b, *x.shape[-2:]).transpose(0, 1)

    return (1 - w) * at(lo) + w * at(hi)


# ------------------------------------------------------------------------------ conditional parts
#: Features of the conditional log-variance, the noise level function (:func:`variance_features`), in order.
VARIANCE_FEATURES: tuple[str, ...] = ("1", "intensity", "intensity^2")
#: Offset of ``E[log chi^2_1]``: ``log r^2 + 1.2704`` is unbiased for ``log sigma^2`` of a Gaussian ``r``.
_LOG_CHI2_OFFSET = 1.2704
_LOG_VAR_MAX = 2.0               # variance at most e^2 (images in [-1, 1]): a guard against extrapolation
_TEXTURE_FLOOR = 1e-6
_RESIDUAL_FLOOR = 1e-8


def texture(x: Tensor) -> Tensor:
    """``log`` of the local energy of the luminance's high-pass (``x`` minus its Gaussian blur, std 1
    pixel; energy averaged with the same Gaussian): ``[B, 3, h, w]`` -> ``[B, 1, h, w]`` float64. Low
    values are flat regions, where the noise fit of conditional models looks."""
    y = x.to(torch.float64).mean(1, keepdim=True)

    def blur(v: Tensor) -> Tensor:                       # 5 taps, std 1 pixel
        return gaussian_blur(v, 1.0, radius=2, border="replicate")

    return (blur((y - blur(y)) ** 2) + _TEXTURE_FLOOR).log()


def hr_noise_level(hr: Tensor) -> Tensor:
    """The HR image's own noise level, a proxy for the exposure it was taken at: ``log`` of the mean
    absolute response of Immerkaer's mask (``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, blind to planes and
    ramps) on the luminance, over the flat half of the image (:func:`texture` at most its median):
    ``[B, 3, h, w]`` -> ``[B]`` float64; NaN for an image under 3 x 3 pixels."""
    hr = _as_batch(hr, "hr").to(torch.float64)
    if min(hr.shape[-2:]) < 3:
        return torch.full((hr.shape[0],), float("nan"), dtype=torch.float64, device=hr.device)
    response = immerkaer_response(hr.mean(1, keepdim=True)).flatten(1)          # [B, (h-2)(w-2)]
    tex = texture(hr)[..., 1:-1, 1:-1].flatten(1)
    flat = tex <= tex.median(dim=1, keepdim=True).values
    return ((response * flat).sum(1) / flat.sum(1) + _TEXTURE_FLOOR).log()


def _photo_offset(level: Tensor, term: Tensor) -> Tensor:
    """``beta (p - p_ref)`` per image (``term = (beta, p_ref)``; 0 where ``p`` is not finite): ``[B]``."""
    off = term[0].to(level) * (level - term[1].to(level))
    return torch.where(torch.isfinite(off), off, torch.zeros_like(off))


def variance_features(corrected: Tensor) -> Tensor:
    """Per-pixel features of the conditional log-variance (:data:`VARIANCE_FEATURES`): the noise level
    function of the corrected LR's intensity, per channel: ``[B, 3, h, w]`` in [-1, 1] -> ``[B, 3, h, w, 3]``
    float64 (``log sigma^2 = v0 + v1 c + v2 c^2``)."""
    c = corrected.to(torch.float64)
    return torch.stack([torch.ones_like(c), c, c * c], dim=-1)


def _flat_masks(data: list, quantile: float) -> list[Tensor]:
    """Per pair, the pixels ``[B, 1, h, w]`` whose HR :func:`texture` is at most the ``quantile`` of
    the knot's pixels (a strided subsample): the flat regions."""
    tex = [texture(hr) for *_, hr in data]
    flat = torch.cat([t.flatten() for t in tex])
    threshold = torch.quantile(flat[:: max(1, flat.numel() // 2_000_000)], quantile)
    return [t <= threshold for t in tex]


def _apply_filter(x: Tensor, hr: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The mean filter: ``conv(cat[x, hr], weight [3, 6, w, w]) + bias [3]`` with replicated borders,
    ``[B, 3, h, w]`` float64."""
    r = weight.shape[-1] // 2
    inp = F.pad(torch.cat([x, hr], 1).to(torch.float64), (r, r, r, r), mode="replicate")
    return F.conv2d(inp, weight.to(torch.float64), bias.to(torch.float64))


#: Features of the energy model's log local energy (:func:`energy_features`), in order.
ENERGY_FEATURES: tuple[str, ...] = ("1", "intensity", "intensity^2", "HR texture", "log own energy")
_ENERGY_EPS = 1e-6               # added to local energies before the log (a 0.13-grey-level residual)


def local_energy(x: Tensor) -> Tensor:
    """Local energy of a residual ``x [B, C, h, w]`` (images in [-1, 1]): the 7 x 7 Gaussian-weighted
    (std 1.4 pixels) mean of ``x^2`` per channel, float64, AKLD's local variance
    (:func:`degflow.metrics.noise.local_variance`): the scale at which the energy model matches the
    real residual."""
    return local_variance(x)


def energy_features(corrected: Tensor, hr: Tensor) -> Tensor:
    """Per-pixel features of the energy model's log local energy (:data:`ENERGY_FEATURES`): the
    corrected LR's intensity ``c`` and ``c^2`` per channel, the HR image's :func:`texture` and ``log`` of
    the corrected LR's own residual energy ``e = local_energy(corrected - hr)`` (+ 1e-6):
    ``[B, 3, h, w]`` twice (in [-1, 1], the same size) -> ``[B, 3, h, w, 5]`` float64."""
    c, y = corrected.to(torch.float64), hr.to(torch.float64)
    own = (local_energy(c - y) + _ENERGY_EPS).log()
    return torch.stack([torch.ones_like(c), c, c * c, texture(y).expand_as(c), own], dim=-1)


def _fit_log_energy(corrected: list) -> tuple[Tensor, float]:
    """Least squares of ``log(local_energy(real - HR) + 1e-6)`` on :func:`energy_features` over every
    pixel of the ``(corrected, real, scale, HR)`` pairs: the coefficients ``[E]`` and the spread
    ``s^2 = 2 log mean(E_real / exp(fit))`` of the real local energy about the fit (floored at 0)."""
    e = len(ENERGY_FEATURES)
    rows = [(energy_features(cor, hr), (local_energy(real - hr) + _ENERGY_EPS).log()) for cor, real, _, hr in corrected]
    ata = torch.zeros(e, e, dtype=torch.float64)
    atb = torch.zeros(e, dtype=torch.float64)
    for phi, t in rows:
        phi, t = phi.reshape(-1, e), t.reshape(-1)
        ata, atb = ata + phi.T @ phi, atb + phi.T @ t
    coef = torch.linalg.solve(ata + 1e-9 * torch.diagonal(ata).mean() * torch.eye(e, dtype=torch.float64), atb)
    total = sum(float((t - phi @ coef).exp().sum()) for phi, t in rows)
    count = sum(t.numel() for _, t in rows)
    return coef, max(0.0, 2.0 * math.log(total / count)) if count and total > 0 else 0.0


def _conditional_ok(model: NoiseModel, k: int) -> bool:
    parts = (model.mean_filter, model.mean_bias, model.log_variance)
    if all(p is None for p in parts):
        return model.energy is None and model.energy_floor is None
    if any(p is None for p in parts):
        return False
    mf, mb, lv = parts
    pl, en, floor = model.photo_level, model.energy, model.energy_floor
    return (mf.ndim == 5 and mf.shape[:3] == (k, 3, 6) and mf.shape[3] == mf.shape[4] and mf.shape[3] % 2 == 1
            and mb.shape == (k, 3) and lv.shape == (k, len(VARIANCE_FEATURES))
            and all(bool(torch.isfinite(p).all()) for p in parts)
            and (pl is None or (pl.shape == (k, 2) and bool(torch.isfinite(pl).all())))
            and (en is None) == (floor is None)
            and (en is None or (en.shape == (k, len(ENERGY_FEATURES)) and bool(torch.isfinite(en).all())
                                and 0.0 <= float(floor) <= 1.0)))


def _fit_mean(data: list, window: int, ridge: float) -> tuple[Tensor, Tensor]:
    """Ridge least squares of ``real - predicted`` on the ``window x window`` neighbourhoods of
    ``[predicted, HR]`` plus a constant: ``(weight [3, 6, w, w], bias [3])``."""
    r = window // 2
    p = 6 * window * window + 1
    xtx = torch.zeros(p, p, dtype=torch.float64)
    xty = torch.zeros(p, 3, dtype=torch.float64)
    for pred, real, _, hr in data:
        inp = F.pad(torch.cat([pred, hr], 1), (r, r, r, r), mode="replicate")
        cols = F.unfold(inp, window)                                            # [B, 6 w w, h w]
        x = torch.cat([cols, torch.ones_like(cols[:, :1])], 1).transpose(1, 2).reshape(-1, p)
        y = (real - pred).flatten(2).transpose(1, 2).reshape(-1, 3)
        xtx, xty = xtx + x.T @ x, xty + x.T @ y
    lam = ridge * torch.diagonal(xtx).mean()
    w = torch.linalg.solve(xtx + lam * torch.eye(p, dtype=torch.float64), xty)   # [P, 3]
    return w[:-1].T.reshape(3, 6, window, window).contiguous(), w[-1].clone()


def _fit_log_variance(corrected: list, flat: list[Tensor]) -> Tensor:
    """Least squares of ``log(r^2) + 1.2704`` on :func:`variance_features` over the flat pixels
    (``r = real - corrected``): the noise level function ``[F]``."""
    f = len(VARIANCE_FEATURES)
    ata = torch.zeros(f, f, dtype=torch.float64)
    atb = torch.zeros(f, dtype=torch.float64)
    for (cor, real, _, _), mask in zip(corrected, flat):
        m = mask.expand_as(cor)
        phi = variance_features(cor)[m]                                          # [N, F]
        t = ((real - cor)[m] ** 2 + _RESIDUAL_FLOOR).log() + _LOG_CHI2_OFFSET
        ata, atb = ata + phi.T @ phi, atb + phi.T @ t
    if not bool(ata[0, 0] > 0):
        raise ValueError("no flat pixel to fit the noise level on")
    return torch.linalg.solve(ata + 1e-9 * torch.diagonal(ata).mean() * torch.eye(f, dtype=torch.float64), atb)


def _fit_photo_level(corrected: list, flat: list[Tensor], log_variance: Tensor,
                     levels: list[Tensor]) -> tuple[float, float, float]:
    """The photo term: per pair the mean of ``log r^2 + 1.2704 - log sigma^2`` over its flat pixels (its level
    relative to the noise level function) and its HR image's :func:`hr_noise_level` ``p`` (``levels``, per
    pair ``[B]``); weighted (by flat
    pixels) least squares of the one on the other: ``(beta, p_ref, shift)``, ``p_ref`` the weighted mean of
    ``p`` and ``shift`` the mean level at ``p_ref`` (added to the intercept). ``(0, 0, 0)`` without two
    distinct levels."""
    rows = []
    for (cor, real, _, _), mask, p in zip(corrected, flat, levels):
        m = mask.expand_as(cor)
        if not bool(m.any()):
            continue
        e = ((real - cor)[m] ** 2 + _RESIDUAL_FLOOR).log() + _LOG_CHI2_OFFSET - variance_features(cor)[m] @ log_variance
        level = float(p.mean())
        if math.isfinite(level):
            rows.append((float(e.mean()), level, float(m.sum())))
    if len(rows) < 2:
        return 0.0, 0.0, 0.0
    e, p, n = (torch.tensor(c, dtype=torch.float64) for c in zip(*rows))
    p_ref, e_ref = float((n * p).sum() / n.sum()), float((n * e).sum() / n.sum())
    sxx = float((n * (p - p_ref) ** 2).sum())
    beta = float((n * (p - p_ref) * (e - e_ref)).sum()) / sxx if sxx > 0 else 0.0
    return beta, p_ref, e_ref


def _level_spread(corrected: list, flat: list[Tensor], log_variance: Tensor, offsets: list[float]) -> float:
    """``s^2 = 2 log mean(r^2 / sigma^2)`` over the flat pixels (``r = real - corrected``, ``sigma^2`` the
    fitted level plus each pair's photo offset, ``offsets``): the spread of the true local log-variance
    about the fitted one, were it log-normal (then ``E[r^2 / sigma^2] = exp(s^2 / 2)``); 0 when the
    level explains the noise (floored at 0)."""
    total, count = 0.0, 0
    for (cor, real, _, _), mask, off in zip(corrected, flat, offsets):
        m = mask.expand_as(cor)
        var = (variance_features(cor)[m] @ log_variance + off).clamp(max=_LOG_VAR_MAX).exp()
        total, count = total + float(((real - cor)[m] ** 2 / var).sum()), count + int(m.sum())
    return max(0.0, 2.0 * math.log(total / count)) if count and total > 0 else 0.0


def _flat_moments(normalized: list[Tensor], flat: list[Tensor], patch: int) -> tuple[Tensor, Tensor | int, int, int]:
    """Like :func:`_normalized_moments`, from the flat parts only: the covariance over flat pixels, the
    Welch spectrum over the ``patch`` tiles that are at least half flat."""
    cov, power, count, tiles = torch.zeros(3, 3, dtype=torch.float64), 0, 0, 0
    for u, mask in zip(normalized, flat):
        v = _opponent(u - u.mean(dim=(0, 2, 3), keepdim=True))
        m = mask.expand_as(v)
        pix = v.transpose(0, 1)[m.transpose(0, 1)].reshape(3, -1)
        cov, count = cov + pix @ pix.T, count + pix.shape[1]
        if min(v.shape[-2:]) < patch:
            continue
        t, keep = _tiles(v, patch), _tiles(mask.to(torch.float64), patch).mean(dim=(1, 2, 3)) >= 0.5
        t = t[keep]
        if t.shape[0]:
            t = (t - t.mean(dim=(-2, -1), keepdim=True)) * _hann(patch, torch.float64, v.device)
            power, tiles = power + torch.fft.fft2(t).abs().pow(2).sum(0) / (patch * patch), tiles + t.shape[0]
    return cov, power, count, tiles


# ------------------------------------------------------------------------------ fitting
#: What the noise is fitted to (``fit(target=...)``): ``excess`` = the real LR's degradation residual
#: ``real - HR`` minus the prediction's ``predicted - HR`` in second-order statistics (needs the HR at
#: true LR size); ``residual`` = the statistics of ``real - predicted`` itself.
TARGETS: tuple[str, ...] = ("excess", "residual")
#: The noise level a conditional model samples (``fit(level=...)``, module docstring).
LEVELS: tuple[str, ...] = ("harmonic", "geometric")
#: What a conditional model's noise variance is (``fit(variance=...)``, module docstring): ``energy``
#: tops the corrected LR's own local residual energy up to the real LR's; ``residual`` is the level of
#: ``real - corrected``.
VARIANCES: tuple[str, ...] = ("energy", "residual")


def _pairs(pairs: Sequence[tuple], needs_hr: str | None) -> list[tuple[Tensor, Tensor, float, Tensor | None]]:
    out = []
    for i, item in enumerate(pairs):
        if not (isinstance(item, (tuple, list)) and len(item) in (3, 4)):
            raise ValueError(f"pairs[{i}]: expected (predicted LR, real LR, scale[, HR at true LR size]), got "
                             f"{type(item).__name__}")
        pred, real, s = item[:3]
        pred, real = _as_batch(pred, f"pairs[{i}] predicted"), _as_batch(real, f"pairs[{i}] real")
        hr = _as_batch(item[3], f"pairs[{i}] HR") if len(item) == 4 and item[3] is not None else None
        if pred.shape != real.shape or (hr is not None and hr.shape != pred.shape):
            raise ValueError(f"pairs[{i}]: predicted {tuple(pred.shape)}, real {tuple(real.shape)}"
                             + ("" if hr is None else f" and HR {tuple(hr.shape)}")
                             + " LR differ in shape (all at true LR size)")
        if needs_hr and hr is None:
            raise ValueError(f"pairs[{i}]: {needs_hr} needs the HR image at true LR size as a 4th item "
                             "(predicted, real, scale, HR)")
        s = check_scale(s, f"pairs[{i}] scale")
        if s == 1.0:
            raise ValueError(f"pairs[{i}]: scale 1 is the HR image itself; the noise model is fitted at scales > 1")
        out.append((pred.to(torch.float64).cpu(), real.to(torch.float64).cpu(), s,
                    None if hr is None else hr.to(torch.float64).cpu()))
    if not out:
        raise ValueError("pairs: no (predicted LR, real LR, scale) pair to fit on")
    return out


def _tiles(x: Tensor, patch: int) -> Tensor:
    """Non-overlapping ``patch x patch`` tiles of ``x [B, C, h, w]``: ``[N, C, patch, patch]``."""
    t = x.unfold(2, patch, patch).unfold(3, patch, patch)                      # [B, C, nh, nw, p, p]
    return t.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1], patch, patch)


def _opponent(x: Tensor) -> Tensor:
    return torch.einsum("ij,bjhw->bihw", OPPONENT, x)


def _welch(v: Tensor, patch: int) -> tuple[Tensor, int]:
    """Sum of the periodograms ``[C, patch, patch]`` of the tiles of ``v [B, C, h, w]`` (mean removed,
    Hann window) and the number of tiles."""
    if min(v.shape[-2:]) < patch:
        return torch.zeros(v.shape[1], patch, patch, dtype=torch.float64), 0
    t = _tiles(v, patch)
    t = (t - t.mean(dim=(-2, -1), keepdim=True)) * _hann(patch, torch.float64, v.device)
    return torch.fft.fft2(t).abs().pow(2).sum(0) / (patch * patch), t.shape[0]


def _bin_sums(x: Tensor, pred: Tensor, edges: Tensor, bins_i: int, bins_g: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel and (intensity, gradient) bin of ``pred``: pixel count, sum and sum of squares of
    ``x`` (both ``[B, 3, h, w]``) -> three ``[3, I G]``."""
    ibin = _intensity_position(pred, bins_i).round().long()
    gbin = torch.bucketize(gradient_magnitude(pred), edges).expand_as(pred)
    idx = (ibin * bins_g + gbin).transpose(0, 1).reshape(3, -1)
    vals = x.transpose(0, 1).reshape(3, -1)
    n = torch.zeros(3, bins_i * bins_g, dtype=torch.float64)
    return (n.scatter_add(1, idx, torch.ones_like(vals)), n.scatter_add(1, idx, vals),
            n.scatter_add(1, idx, vals * vals))


def _psd(c: Tensor) -> Tensor:
    """The nearest positive semi-definite matrix of a symmetric ``c [3, 3]`` (negative eigenvalues to 0)."""
    w, q = torch.linalg.eigh((c + c.T) / 2)
    return q @ torch.diag(w.clamp_min(0)) @ q.T


def _finish(cov: Tensor, power: Tensor) -> tuple[Tensor, Tensor]:
    """Covariance scaled to unit variance per RGB channel (in the opponent basis) and spectra with the DC
    bin from its neighbours, normalized to mean 1 (flat where a component has no power)."""
    rgb = OPPONENT.T @ cov @ OPPONENT
    d = torch.diag(rgb)
    d = torch.where(d > 1e-20, d, torch.ones_like(d)).rsqrt()
    rgb = d[:, None] * rgb * d[None, :]
    power = power.clone()
    power[:, 0, 0] = (power[:, 0, 1] + power[:, 1, 0] + power[:, 0, -1] + power[:, -1, 0]) / 4
    mean = power.mean(dim=(-2, -1), keepdim=True)
    flat = torch.ones_like(power)
    return OPPONENT @ rgb @ OPPONENT.T, torch.where(mean > 1e-30, power / mean.clamp_min(1e-30), flat)


def _fit_knot(data: list, target: str, edges: Tensor, bins_i: int, bins_g: int, patch: int,
              prior: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(variance [3, I, G], covariance [3, 3], spectra [3, P, P])`` of one knot's pairs."""
    nb = bins_i * bins_g
    if target == "residual":                     # the statistics of real - predicted
        n, s1, s2 = (torch.zeros(3, nb, dtype=torch.float64) for _ in range(3))
        for pred, real, _, _ in data:
            dn, d1, d2 = _bin_sums(real - pred, pred, edges, bins_i, bins_g)
            n, s1, s2 = n + dn, s1 + d1, s2 + d2
        total = n.sum(1, keepdim=True)
        channel = (s2.sum(1, keepdim=True) - s1.sum(1, keepdim=True) ** 2 / total) / total
        table = ((s2 - s1 * s1 / n.clamp_min(1) + prior * channel) / (n + prior).clamp_min(1e-12)).clamp_min(0)
        table = table.reshape(3, bins_i, bins_g)
        cov, power, count, tiles = _normalized_moments(
            ((real - pred) / _lookup(table, pred, edges).clamp_min(1e-12).sqrt() for pred, real, _, _ in data), patch)
    else:                                        # what the real residual has beyond the predicted one
        n, sa, sb = (torch.zeros(3, nb, dtype=torch.float64) for _ in range(3))
        cov, power, count, tiles = torch.zeros(3, 3, dtype=torch.float64), 0, 0, 0
        for pred, real, _, hr in data:
            a, b = pred - hr, real - hr
            dn, _, da = _bin_sums(a, pred, edges, bins_i, bins_g)
            _, _, db = _bin_sums(b, pred, edges, bins_i, bins_g)
            n, sa, sb = n + dn, sa + da, sb + db
            va, vb = _opponent(a), _opponent(b)
            fa, fb = va.transpose(0, 1).reshape(3, -1), vb.transpose(0, 1).reshape(3, -1)
            cov, count = cov + fb @ fb.T - fa @ fa.T, count + fa.shape[1]
            (pa, k), (pb, _) = _welch(va, patch), _welch(vb, patch)
            power, tiles = power + (pb - pa), tiles + k
        excess = sb - sa
        channel = (excess.sum(1, keepdim=True) / n.sum(1, keepdim=True)).clamp_min(0)
        table = ((excess + prior * channel) / (n + prior).clamp_min(1e-12)).clamp_min(0).reshape(3, bins_i, bins_g)
        cov = _psd(cov / count) * count
        power = power.clamp_min(0) if tiles else power
    return table, *_correlation(cov, power, count, tiles, data[0][2], patch)


def _normalized_moments(normalized: Any, patch: int) -> tuple[Tensor, Tensor | int, int, int]:
    """Opponent-basis second moments and summed Welch periodograms of normalized residuals
    ``u [B, 3, h, w]`` (each image's mean removed): ``(cov sum, power sum, pixels, tiles)``."""
    cov, power, count, tiles = torch.zeros(3, 3, dtype=torch.float64), 0, 0, 0
    for u in normalized:
        v = _opponent(u - u.mean(dim=(0, 2, 3), keepdim=True))
        flat = v.transpose(0, 1).reshape(3, -1)
        cov, count = cov + flat @ flat.T, count + flat.shape[1]
        p, k = _welch(v, patch)
        power, tiles = power + p, tiles + k
    return cov, power, count, tiles


def _correlation(cov: Tensor, power: Tensor | int, count: int, tiles: int, scale: float,
                 patch: int) -> tuple[Tensor, Tensor]:
    """``(covariance [3, 3], spectra [3, P, P])`` from summed moments (ValueError without a tile)."""
    if tiles == 0:
        raise ValueError(f"scale {scale_label(scale)}: no LR image of at least patch={patch} pixels per side to "
                         "measure the noise spectrum on; give larger images or a smaller patch")
    assert isinstance(power, Tensor)
    return _finish(cov / count, power / tiles)


def fit(pairs: Sequence[tuple], *, target: str = "residual", intensity_bins: int = 8, gradient_bins: int = 4,
        patch: int = 32, radius: int = 7, prior: float = 64.0, conditional: bool = False, mean_window: int = 5,
        ridge: float = 1e-3, flat_quantile: float = 0.5, level: str = "harmonic", photo_level: bool = True,
        variance: str = "energy", energy_floor: float = 0.05, meta: dict[str, Any] | None = None) -> NoiseModel:
    """Fit a :class:`NoiseModel` on ``(predicted LR, real LR, scale[, HR at true LR size])`` tuples (each
    image ``[B, 3, h, w]`` or ``[3, h, w]`` in [-1, 1], all of a tuple the same size: true LR size), one
    knot per distinct scale.

    ``target`` (:data:`TARGETS`, module docstring): ``residual`` (the default) fits the statistics of
    ``real - predicted``; ``excess`` (needs the HR item) fits what ``real - HR`` has beyond
    ``predicted - HR`` in second-order statistics. ``intensity_bins`` x ``gradient_bins``: the variance table;
    ``patch``: Welch tile side (LR pixels; every knot needs at least one image of that size);
    ``radius``: colouring kernels of side ``2 radius + 1`` (< patch / 2); ``prior``: pixels of shrinkage of
    each bin toward its channel's value; ``meta``: plain data stored with the model. ValueError for bad input.

    ``conditional`` (needs the HR item; ``target="residual"`` only): per knot, first the conditional mean
    of the residual, a ``mean_window`` x ``mean_window`` linear filter of ``[predicted, HR]`` fitted by ridge
    least squares (``ridge`` times the mean diagonal of the normal matrix), then the noise level function of
    what is left (:func:`variance_features`, least squares on ``log r^2``) on the flat pixels (HR
    :func:`texture` at most its ``flat_quantile``), then the correlations of the normalized residual on
    those pixels and on the tiles that are at least half flat (module docstring). ``level``
    (:data:`LEVELS`): the noise level sampled where the true one is uncertain: ``geometric`` (the least
    squares fit of ``log r^2``), or ``harmonic`` (the default: that level times ``exp(-s^2 / 2)``, ``s^2``
    the spread of the local log-variance about it, measured on the flat pixels; module docstring).
    ``photo_level``: a level per photo, linear in its HR image's :func:`hr_noise_level` (fitted on the
    pairs' flat pixels after the noise level function; module docstring). ``variance``
    (:data:`VARIANCES`): what a sample's noise variance is: ``energy`` (the default) the real LR's
    local residual energy predicted from :func:`energy_features` (least squares on every pixel, at
    the ``level`` chosen), less the corrected LR's own, at least ``energy_floor`` (in [0, 1]) times
    it; ``residual`` the noise level function itself (module docstring).
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not one of {list(TARGETS)}")
    for key, val, low in (("intensity_bins", intensity_bins, 1), ("gradient_bins", gradient_bins, 1),
                          ("patch", patch, 4), ("radius", radius, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {val!r}")
    if not radius < patch // 2:
        raise ValueError(f"radius={radius} must be below patch / 2 = {patch // 2}")
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not prior >= 0:
        raise ValueError(f"prior must be a number >= 0 (pixels), got {prior!r}")
    if not isinstance(conditional, bool):
        raise ValueError(f"conditional must be true or false, got {conditional!r}")
    if conditional:
        if target != "residual":
            raise ValueError(f"conditional=True fits the residual real - predicted: target must be 'residual', got {target!r} "
                             "(the excess fit is the table model's: conditional=False)")
        if isinstance(mean_window, bool) or not isinstance(mean_window, int) or mean_window < 1 or mean_window % 2 == 0:
            raise ValueError(f"mean_window must be an odd integer >= 1, got {mean_window!r}")
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge > 0:
            raise ValueError(f"ridge must be a number > 0, got {ridge!r}")
        if isinstance(flat_quantile, bool) or not isinstance(flat_quantile, (int, float)) or not 0 < flat_quantile <= 1:
            raise ValueError(f"flat_quantile must be a number in (0, 1], got {flat_quantile!r}")
        if level not in LEVELS:
            raise ValueError(f"level={level!r} is not one of {list(LEVELS)}")
        if not isinstance(photo_level, bool):
            raise ValueError(f"photo_level must be true or false, got {photo_level!r}")
        if variance not in VARIANCES:
            raise ValueError(f"variance={variance!r} is not one of {list(VARIANCES)}")
        if isinstance(energy_floor, bool) or not isinstance(energy_floor, (int, float)) \
                or not 0 <= energy_floor <= 1:
            raise ValueError(f"energy_floor must be a number in [0, 1], got {energy_floor!r}")
    data = _pairs(pairs, "conditional=True" if conditional else "target='excess'" if target == "excess" else None)
    scales = sorted({d[2] for d in data})

    # gradient bin edges: quantiles of the predicted images' gradient magnitude (a strided subsample)
    grads = torch.cat([gradient_magnitude(d[0]).flatten() for d in data])
    grads = grads[:: max(1, grads.numel() // 2_000_000)]
    q = torch.linspace(0, 1, gradient_bins + 1, dtype=torch.float64)[1:-1]
    edges = torch.quantile(grads, q) if gradient_bins > 1 else torch.zeros(0, dtype=torch.float64)
    info: dict[str, Any] = {"target": target, "pairs": len(data),
                            "pixels_per_scale": {scale_label(s): int(sum(d[0].numel() // 3 for d in data if d[2] == s))
                                                 for s in scales}}
    if not conditional:
        knots = [_fit_knot([d for d in data if d[2] == s], target, edges, intensity_bins, gradient_bins, patch, prior)
                 for s in scales]
        return NoiseModel(scales=tuple(scales), variance=torch.stack([k[0] for k in knots]), gradient_edges=edges,
                          covariance=torch.stack([k[1] for k in knots]), spectra=torch.stack([k[2] for k in knots]),
                          radius=radius, meta={**info, **(meta or {})})
    tables, covs, spectra, filters, biases, logvars, energies = [], [], [], [], [], [], []
    spreads: dict[str, float] = {}
    energy_spreads: dict[str, float] = {}
    photos: list[tuple[float, float]] = []
    for s in scales:
        knot = [d for d in data if d[2] == s]
        weight, bias = _fit_mean(knot, mean_window, float(ridge))
        corrected = [((pred + _apply_filter(pred, hr, weight, bias)).clamp(-1, 1), real, sc, hr)
                     for pred, real, sc, hr in knot]
        table = _fit_knot(corrected, "residual", edges, intensity_bins, gradient_bins, patch, prior)[0]
        flat = _flat_masks(knot, flat_quantile)
        logvar = _fit_log_variance(corrected, flat)
        unit = torch.eye(len(VARIANCE_FEATURES), dtype=torch.float64)[0]          # the intercept
        offsets = [0.0] * len(corrected)                                         # each pair's photo term
        if photo_level:
            levels = [hr_noise_level(hr) for *_, hr in corrected]
            beta, p_ref, shift = _fit_photo_level(corrected, flat, logvar, levels)
            logvar = logvar + shift * unit
            photos.append((beta, p_ref))
            term = torch.tensor((beta, p_ref), dtype=torch.float64)
            offsets = [float(_photo_offset(p, term).mean()) for p in levels]
        spread = _level_spread(corrected, flat, logvar, offsets)
        if level == "harmonic":                  # v_geo exp(-s^2 / 2) = 1 / E[1 / v] for log-normal v
            logvar = logvar - spread / 2 * unit
        spreads[scale_label(s)] = spread
        if variance == "energy":
            coef, energy_spreads[scale_label(s)] = _fit_log_energy(corrected)
            if level == "harmonic":              # the intercept lowered by half the spread, as for the level
                coef = coef.clone()
                coef[0] -= energy_spreads[scale_label(s)] / 2
            energies.append(coef)
        normalized = [(real - cor) / (variance_features(cor) @ logvar + off).clamp(max=_LOG_VAR_MAX).exp().sqrt()
                      for (cor, real, _, _), off in zip(corrected, offsets)]
        cov, spec = _correlation(*_flat_moments(normalized, flat, patch), s, patch)
        for acc, val in zip((tables, covs, spectra, filters, biases, logvars), (table, cov, spec, weight, bias, logvar)):
            acc.append(val)
    info.update(conditional=True, mean_window=mean_window, ridge=float(ridge), flat_quantile=float(flat_quantile),
                level=level, log_variance_spread=spreads, photo_level=bool(photo_level), variance=variance)
    if variance == "energy":
        info.update(energy_floor=float(energy_floor), energy_spread=energy_spreads)
    return NoiseModel(scales=tuple(scales), variance=torch.stack(tables), gradient_edges=edges,
                      covariance=torch.stack(covs), spectra=torch.stack(spectra), radius=radius,
                      meta={**info, **(meta or {})}, mean_filter=torch.stack(filters), mean_bias=torch.stack(biases),
                      log_variance=torch.stack(logvars),
                      photo_level=torch.tensor(photos, dtype=torch.float64) if photo_level else None,
                      energy=torch.stack(energies) if energies else None,
                      energy_floor=float(energy_floor) if energies else None)
