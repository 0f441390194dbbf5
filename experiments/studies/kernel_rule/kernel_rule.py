"""How well does the kernel baseline carry fitted kernels to scales it was not fitted at?

    python -m experiments.studies.kernel_rule.kernel_rule --out experiments/studies/kernel_rule/kernel_rule_demo.json

The demo data has real (procedural camera) LR at every scale, so the rule of
:mod:`degflow.baselines.kernel_baseline` (kernels fixed in LR pixels, blended linearly in s between
fitted scales) can be checked where ground truth exists. Kernels are fitted on the TRAINING split and
scored on the VALIDATION split (the bottom bands of the training photos; the test photos are never
read), at every ``--scales`` scale:

- ``fitted at x2, x4``: what ``methods=[kernel]`` does on ``data=demo`` (the rule between two knots);
- ``fitted at x4 only``: the one-training-scale rule, as for the Canon x4 pairs;
- ``fitted at the scale itself``: a least-squares kernel fitted on the training split's own LR at that
  scale (the demo can make it; real data cannot): the ceiling of any rule for this kernel size;
- ``bicubic``: the evaluation's bicubic row.

Scoring as ``python -m degflow.evaluate`` scores the kernel: its true-size LR bicubic-upsampled to HR
size against the real LR at HR size, 8-bit BT.601 Y-PSNR, no shave, mean over the validation images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from degflow.baselines.kernel_baseline import KernelDegradation, fit_kernels
from degflow.core.resize import bicubic_baseline, upsample_to
from degflow.core.scales import scale_label
from degflow.data import build_data
from degflow.data.kernel_fit import SUPPORT_LR, bundle_pairs
from degflow.metrics.image import psnr_y
from experiments._runner import publish, results_parser

ROWS = {"rule_2_4": "fitted at x2, x4 (the rule between them)", "rule_4": "fitted at x4 only (one-scale rule)",
        "own": "fitted at the scale itself (ceiling)", "bicubic": "bicubic"}


def _model(pairs, scales) -> KernelDegradation:
    fitted, _ = fit_kernels(((p.hr, {s: p.lr[s] for s in scales}) for p in pairs), scales, SUPPORT_LR)
    return KernelDegradation(tuple(fitted), tuple(k for k, _ in fitted.values()), tuple(b for _, b in fitted.values()),
                             SUPPORT_LR)


def measure(scales: list[float]) -> dict:
    grid = sorted({1.0, 2.0, 4.0, *scales})
    bundle = build_data("demo", train_scales=grid, val_scales=grid, val_max_size=None)
    pairs = bundle_pairs(bundle)                                       # training split, every scale
    models = {"rule_2_4": _model(pairs, [2.0, 4.0]), "rule_4": _model(pairs, [4.0])}
    own = {s: _model(pairs, [s]) for s in scales}
    sums: dict[str, dict[float, list[float]]] = {r: {s: [] for s in scales} for r in ROWS}
    for i in range(len(bundle.val)):
        item = bundle.val[i]
        hr = item["hr"][None]
        h, w = hr.shape[-2:]
        for j, s in enumerate(float(v) for v in item["scales"]):
            if s not in scales:
                continue
            real = item["lr"][j][None]
            preds = {**{r: m.degrade(hr, s) for r, m in models.items()}, "own": own[s].degrade(hr, s)}
            scored = {r: upsample_to(p, h, w) for r, p in preds.items()} | {"bicubic": bicubic_baseline(hr, s)}
            for r, p in scored.items():
                sums[r][s].append(float(psnr_y(p, real, shave=0)))
    return {"data": bundle.description, "support_lr": SUPPORT_LR, "validation_images": len(bundle.val),
            "scales": [scale_label(s) for s in scales],
            "mean_psnr_y": {r: {scale_label(s): sum(v) / len(v) for s, v in per.items()} for r, per in sums.items()}}


def table(result: dict) -> str:
    scales = result["scales"]
    lines = [(f"demo validation split ({result['validation_images']} images), Y-PSNR (dB) of the kernel's LR, "
              f"scored like degflow.evaluate"), "| kernel | " + " | ".join(f"x{s}" for s in scales) + " |",
             "|---|" + "---|" * len(scales)]
    for r, label in ROWS.items():
        lines.append(f"| {label} | " + " | ".join(f"{result['mean_psnr_y'][r][s]:.2f}" for s in scales) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = results_parser(__doc__, __doc__.split("\n\n")[1].strip())
    p.add_argument("--out", type=Path, required=True, help="json output")
    p.add_argument("--scales", default="1.5,2,2.5,3,3.5,4", help="validation scales (default %(default)s)")
    args = p.parse_args(argv)
    with torch.no_grad():
        result = measure([float(s) for s in args.scales.split(",")])
    result["command"] = " ".join(["python -m experiments.studies.kernel_rule.kernel_rule",
                                  *(argv if argv is not None else sys.argv[1:])])
    return publish(args.out, result, table(result))


if __name__ == "__main__":
    sys.exit(main())
