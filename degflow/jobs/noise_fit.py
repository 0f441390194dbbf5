"""The noise-fit job: a stage-2 checkpoint's deterministic LR vs the real LR of the training split,
at true LR size and at the checkpoint's training knots -> a :class:`~degflow.baselines.noise.NoiseModel`.

``python -m degflow fit-noise ckpt=<lfm> data=<the option it was trained on> out=noise.pt``.
For every training image (the data option's ``train`` split only; validation and test images are
never read): one ODE solve for all knots, each decoded LR resized to true LR size
(:func:`~degflow.core.resize.resize_to_lr`, what ``synthesize.py`` writes), the real LR at true
LR size (the file itself where it is stored at true size, else the stored HR-size image resized the
same way) and the HR image resized the same way (the reference of the degradation residuals). ``crops`` random aligned crops of ``crop_size`` LR pixels per image and knot (seeded by
``seed``; ``crops=0``: the whole images, no randomness) are the fit's pairs. The file records the
checkpoint's sha256, the data, split, crops and seed it came from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from degflow.baselines.noise import LEVELS, VARIANCES, NoiseModel, fit
from degflow.core.resize import lr_size, resize_to_lr, sample_to_lr
from degflow.core.scales import scale_label
from degflow.core.solvers import SolverSpec
from degflow.data.images import read_image
from degflow.data.options import build_data, option_of_target
from degflow.generation import Synthesizer
from degflow.infra.checks import check_bool, check_choice, check_int, check_number

__all__ = ["crop_pairs", "fit_noise", "noise_fit_pairs", "real_lr_true_size", "run"]

log = logging.getLogger(__name__)


def real_lr_true_size(record: Any, scale: float, stored: Tensor) -> Tensor:
    """The real LR of ``record`` at ``scale`` at true LR size ``[3, round(H/s), round(W/s)]``: the file
    itself when it is stored at true size and has exactly that size, else ``stored`` (the LR at HR
    size ``[3, H, W]`` as the data option loads it) sampled back to true size by
    :func:`~degflow.core.resize.sample_to_lr` (the inverse of the bicubic upsampling that made it HR-size;
    an antialiased resize would low-pass its noise a second time). The evaluation's
    ``eval.noise_stats=lr`` reads real LR the same way."""
    h, w = stored.shape[-2:]
    files = getattr(record, "lr", None)
    if isinstance(files, Mapping) and scale in files and record.relation(scale) == "true":
        x = read_image(files[scale])
        if tuple(x.shape[-2:]) == lr_size(h, w, scale):
            return x
    return sample_to_lr(stored[None], scale)[0]


def noise_fit_pairs(synth: Synthesizer, records: Sequence[Any], scales: Sequence[float], *, crops: int,
                    crop_size: int, seed: int) -> list[tuple[Tensor, Tensor, float, Tensor]]:
    """``(predicted LR, real LR, scale, HR)`` at true LR size from ``records`` (objects with
    ``load(scales) -> (hr [3, H, W], lr [S, 3, H, W])``, the data options' records): whole images
    (``crops=0``) or ``crops`` random aligned crops of ``crop_size`` LR pixels (at most the image)
    per image and scale, drawn from ``torch.Generator().manual_seed(seed)`` in record order."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for rec in records:
        hr, lrs = rec.load(scales)
        decoded = synth.generate(hr[None], list(scales)).images
        whole = [(resize_to_lr(decoded[s][0].cpu(), s), real_lr_true_size(rec, s, lrs[k]), s,
                  resize_to_lr(hr, s))                      # the HR image at true LR size
                 for k, s in enumerate(scales)]
        pairs += whole if crops == 0 else crop_pairs(whole, crops=crops, crop_size=crop_size, generator=gen)
    return pairs


def crop_pairs(pairs: Sequence[tuple[Tensor, Tensor, float, Tensor]], *, crops: int, crop_size: int,
               generator: torch.Generator) -> list[tuple[Tensor, Tensor, float, Tensor]]:
    """``crops`` random aligned crops of ``crop_size`` LR pixels (at most the image) of each
    ``(predicted, real, scale, HR)`` pair (images ``[3, h, w]``), drawn from ``generator`` in order."""
    out = []
    for pred, real, s, ref in pairs:
        h, w = pred.shape[-2:]
        ch, cw = min(crop_size, h), min(crop_size, w)
        for _ in range(crops):
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            box = (..., slice(top, top + ch), slice(left, left + cw))
            out.append((pred[box], real[box], s, ref[box]))
    return out


def fit_noise(synth: Synthesizer, bundle: Any, *, seed: int = 0, crops: int = 8, crop_size: int = 64,
              **fit_options: Any) -> NoiseModel:
    """Fit the noise model of ``synth`` on the training split of a data option's ``bundle`` at the
    checkpoint's knots > 1 (ValueError when the data lacks one); ``fit_options`` go to
    :func:`degflow.baselines.noise.fit`."""
    check_int(seed, "seed")
    check_int(crops, "crops", minimum=0)
    check_int(crop_size, "crop_size", minimum=1)
    knots = [float(s) for s in synth.train_scales or () if float(s) > 1.0]
    records = list(bundle.train.records)
    available = [float(s) for s in bundle.train_scales]
    missing = [s for s in knots if s not in available]
    if not knots or missing:
        raise ValueError(f"data: the checkpoint's training knots {[scale_label(s) for s in knots]} must all be "
                         f"training scales of the data (data.train_scales={[scale_label(s) for s in available]}); "
                         "fit the noise on the data the checkpoint was trained on")
    start = time.perf_counter()
    pairs = noise_fit_pairs(synth, records, knots, crops=crops, crop_size=crop_size, seed=seed)
    meta = {"generator": "degflow", "checkpoint_sha256": synth.checkpoint_sha256, "data": bundle.description,
            "split": "train", "images": len(records), "knots": knots, "crops": crops, "crop_size": crop_size,
            "seed": seed, "solver": synth.solver.to_dict()}
    model = fit(pairs, meta=meta, **fit_options)
    log.info("noise model fitted on %d pairs (%d training images, knots %s) in %.1f s", len(pairs), len(records),
             [scale_label(s) for s in knots], time.perf_counter() - start)
    return model


def run(config: Mapping[str, Any]) -> dict[str, Any]:
    """The job of ``python -m degflow fit-noise`` from a plain config (``conf/fit_noise.yaml``):
    writes the model to ``out`` and returns ``{"path", "model"}``."""
    out = Path(config["out"])
    if out.suffix != ".pt":
        raise ValueError(f"out={str(out)!r}: give the noise model's file name, ending in .pt")
    f = config["fit"]
    check_bool(f.get("conditional", False), "fit.conditional")
    if f.get("conditional", False):          # the config keys, not the library's argument names, in errors
        check_int(f.get("mean_window", 5), "fit.mean_window", minimum=1)
        if f.get("mean_window", 5) % 2 == 0:
            raise ValueError(f"fit.mean_window must be odd (a centred window), got {f['mean_window']}")
        check_number(f.get("ridge", 1e-3), "fit.ridge", low=0.0, open_low=True)
        check_number(f.get("flat_quantile", 0.5), "fit.flat_quantile", low=0.0, high=1.0, open_low=True)
        check_choice(f.get("level", "harmonic"), LEVELS, "fit.level")
        check_bool(f.get("photo_level", True), "fit.photo_level")
        check_choice(f.get("variance", "energy"), VARIANCES, "fit.variance")
        check_number(f.get("energy_floor", 0.05), "fit.energy_floor", low=0.0, high=1.0)
        if f.get("target") != "residual":
            raise ValueError(f"fit.target={f.get('target')!r} needs fit.conditional=false (the conditional model "
                             "fits the residual real - deterministic LR: fit.target=residual)")
    synth = Synthesizer.from_checkpoint(config["ckpt"], device=config["device"],
                                        solver=SolverSpec.create(**config["solver"]), precision=config["precision"],
                                        tile_size=config["tile_size"], tile_overlap=config["tile_overlap"])
    data_settings = dict(config["data"])
    bundle = build_data(option_of_target(data_settings.pop("_target_", "")), **data_settings)
    model = fit_noise(synth, bundle, seed=config["seed"], crops=f["crops"], crop_size=f["crop_size"],
                      target=f["target"], intensity_bins=f["intensity_bins"], gradient_bins=f["gradient_bins"], patch=f["patch"],
                      radius=f["radius"], prior=f["prior"], conditional=f.get("conditional", False),
                      mean_window=f.get("mean_window", 5), ridge=f.get("ridge", 1e-3),
                      flat_quantile=f.get("flat_quantile", 0.5), level=f.get("level", "harmonic"),
                      photo_level=f.get("photo_level", True), variance=f.get("variance", "energy"),
                      energy_floor=f.get("energy_floor", 0.05))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return {"path": out, "model": model}
