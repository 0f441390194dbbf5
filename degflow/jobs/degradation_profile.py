"""Does a model's LR degrade like the real LR, scale by scale? The figures of the demo model card.

:func:`degradation_profile` scores a stage-2 model on images that have a real LR at every
requested scale (the demo test split): per scale, the generated LR (from the HR image only) and,
for comparison, the real LR, the bicubic LR and the oracle ``ae_interp`` (the spline through the
real encoded knots), each with

- ``detail``: :func:`degflow.metrics.degradation.detail_ratio`, the share of the HR image's fine
  detail (above 1/8 cycle per HR pixel) the LR image at HR size keeps: the blur measure;
- ``noise``: :func:`degflow.metrics.degradation.lr_noise_sigma`, Immerkaer's sigma at the true LR
  size on the 8-bit scale: the noise measure;
- ``psnr_y`` against the real LR (``eval.protocol=ours``: 8-bit, 4-pixel shave);

and per training scale (knot) the autoencoder's own reconstruction of the real LR
(``decode(encode(real LR), HR skips)``): if the autoencoder cannot represent the real degradation,
no training of stage 2 can make the generated LR follow it.

:func:`follows_real` is the acceptance test of the card: the generated detail and noise within a
factor of the real ones at every scale. Numbers are means over the images (arithmetic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from degflow.core.resize import bicubic_baseline
from degflow.core.scales import find_scale, scale_key
from degflow.data.transforms import crop_to_multiple
from degflow.generation import Synthesizer
from degflow.metrics.degradation import detail_ratio, lr_noise_sigma
from degflow.metrics.image import EVAL_PROTOCOLS

__all__ = ["MEASURES", "degradation_profile", "follows_real", "profile_table"]

#: the per-image measures of every row of a profile
MEASURES = ("detail", "noise", "psnr_y")
_PROTOCOL = EVAL_PROTOCOLS["ours"]


def _measures(x: Tensor, hr: Tensor, real: Tensor | None, scale: float) -> dict[str, float]:
    out = {"detail": float(detail_ratio(x, hr)[0]), "noise": float(lr_noise_sigma(x, scale)[0])}
    if real is not None:
        out["psnr_y"] = float(_PROTOCOL.psnr_y(x, real)[0])
    return out


def _mean(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


@torch.no_grad()
def degradation_profile(synth: Synthesizer, items: Iterable[Mapping[str, Any]], scales: Sequence[float],
                        oracle: bool = True) -> dict[str, Any]:
    """Per scale and per knot means over ``items`` (module docstring).

    Args:
        synth: the model (:meth:`Synthesizer.from_checkpoint`); its RAE and training scales are used
            for the knot reconstructions.
        items: dataset items ``{"name", "hr": [3, H, W], "lr": [S, 3, H, W], "scales": [S]}`` in
            [-1, 1] (``bundle.test`` of ``data=demo``), holding a real LR at every scale of
            ``scales`` and of ``synth.train_scales`` above 1; each image is centre-cropped to a
            multiple of 8.
        scales: the scales profiled (> 1).
        oracle: also the oracle ``ae_interp`` and the knot reconstructions (twice the time).
    Returns:
        ``{"images": [names], "scales": {"x2.5": {"real" | "degflow" | "bicubic" | "ae_interp":
        {measure: mean}}}, "knots": {"x2": {"psnr_y", "detail", "detail_real"}}}`` (no ``ae_interp``
        and no knots without ``oracle``).
    """
    scales = [float(s) for s in scales]
    knots = [float(s) for s in synth.train_scales if float(s) != 1.0] if oracle else []
    per_scale: dict[float, dict[str, list[dict[str, float]]]] = {s: {} for s in scales}
    per_knot: dict[float, list[dict[str, float]]] = {s: [] for s in knots}
    names = []
    device = synth.device
    for item in items:
        hr = crop_to_multiple(item["hr"], _PROTOCOL.multiple_of)[None].float()             # [1, 3, H, W]
        lr = crop_to_multiple(item["lr"], _PROTOCOL.multiple_of).float()                    # [S, 3, H, W]
        stored = [float(s) for s in item["scales"].tolist()]                               # float32 values
        found = {s: find_scale(s, stored, tol=1e-5) for s in (*scales, *knots)}
        missing = [scale_key(s) for s, f in found.items() if f is None]
        if missing:
            raise ValueError(f"degradation_profile: image {item['name']} has no real LR at {missing}")
        real = {s: lr[stored.index(f):stored.index(f) + 1] for s, f in found.items()}
        names.append(str(item["name"]))
        generated = synth(hr.to(device), scales)
        methods = {"real": real, "degflow": generated, "bicubic": {s: bicubic_baseline(hr, s) for s in scales}}
        if oracle:
            methods["ae_interp"] = synth.interpolate_real(hr.to(device), {s: real[s].to(device) for s in knots},
                                                          scales).images
        for s in scales:
            for method, images in methods.items():
                per_scale[s].setdefault(method, []).append(
                    _measures(images[s].cpu(), hr, None if method == "real" else real[s], s))
        hr_feats = synth.rae.features(hr.to(device))
        for s in knots:
            recon = synth.rae.decode(synth.rae.encode(real[s].to(device))[0], hr_feats).clamp(-1, 1).cpu()
            per_knot[s].append({"psnr_y": float(_PROTOCOL.psnr_y(recon, real[s])[0]),
                                "detail": float(detail_ratio(recon, hr)[0]),
                                "detail_real": float(detail_ratio(real[s], hr)[0])})
    if not names:
        raise ValueError("degradation_profile: no images")
    return {"images": names,
            "scales": {scale_key(s): {m: _mean(rows) for m, rows in per_scale[s].items()} for s in scales},
            "knots": {scale_key(s): _mean(rows) for s, rows in per_knot.items()}}


def follows_real(profile: Mapping[str, Any], factor: float = 2.0) -> dict[str, dict[str, bool]]:
    """``{scale: {"detail": ok, "noise": ok}}``: the generated value within ``factor`` of the real one
    (``real / factor <= generated <= real * factor``)."""
    out = {}
    for key, row in profile["scales"].items():
        gen, real = row["degflow"], row["real"]
        out[key] = {m: real[m] / factor <= gen[m] <= real[m] * factor for m in ("detail", "noise")}
    return out


def profile_table(profile: Mapping[str, Any], factor: float = 2.0) -> str:
    """The profile as a Markdown table, one row per scale: detail and noise of the real and the
    generated LR (and bicubic), their ratio, and the Y-PSNR of the generated LR and of bicubic."""
    checks = follows_real(profile, factor)
    lines = ["| scale | detail kept: real / generated (bicubic) | noise sigma: real / generated (bicubic) | "
             f"within x{factor:g} | Y-PSNR generated (bicubic) |",
             "|---|---|---|---|---|"]
    for key, row in profile["scales"].items():
        r, g, b = row["real"], row["degflow"], row["bicubic"]
        ok = "yes" if all(checks[key].values()) else "no: " + ", ".join(m for m, v in checks[key].items() if not v)
        lines.append(f"| {key} | {r['detail']:.3f} / {g['detail']:.3f} ({b['detail']:.3f}) | "
                     f"{r['noise']:.2f} / {g['noise']:.2f} ({b['noise']:.2f}) | {ok} | "
                     f"{g['psnr_y']:.2f} ({b['psnr_y']:.2f}) |")
    return "\n".join(lines)
