"""How much of a real LR capture is a function of its HR image? The ceiling under the knot gap.

    python experiments/knot_ceiling.py --root /tmp/realsr_x4/split --out experiments/results/knot_ceiling_canon.json

The knot gap (``experiments/knot_gap.py``) compares generated LR with the *oracle*: the real LR
image passed through the model's own autoencoder. The oracle sees the real capture, so it also
reproduces what no HR -> LR generator can know: sensor noise, residual misalignment of the pair,
local exposure and colour differences. This script measures how close simple predictors of the
real LR get, scored exactly like ``python -m degflow.evaluate`` (LR bicubic-upsampled to HR size,
8-bit Y-PSNR, ``--shave``):

- ``bicubic``: antialiased bicubic downscaling (the evaluation's ``bicubic`` row);
- ``linear, one kernel``: the least-squares linear degradation (a free ``--support`` px kernel
  from the three HR channels to each LR channel, plus a bias; blur, subsampling phase, colour
  mixing and shift in one) fitted on the ``train`` split and applied to the others: a fair,
  trained baseline;
- ``linear, per image (other half)``: the same degradation fitted on one half of each image
  itself and scored on the other half (both halves): what a perfect per-image kernel estimator
  would reach; uses the image's own real LR, so it is a ceiling, not a method;
- ``linear, per image (in-sample)``: fitted and scored on the whole image (optimistic);
- ``noise``: Immerkaer's noise sigma of the real LR's Y channel (8-bit units; texture inflates
  it) and the Y-PSNR that white noise of that sigma alone would cost after the same upsampling.

Reads ``<root>/<split>/HR/*`` and ``<root>/<split>/x<scale>/*`` (or ``LR/x<scale>/``; true LR size) for
``train`` and each of ``--splits``. Prints a table, writes ``--out`` (json). Never point it at
an evaluation-only set to choose anything.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _runner import publish, results_parser  # noqa: E402

from degflow.data.images import read_image  # noqa: E402
from degflow.diagnostics import (linear_degradation_design, linear_degradation_normal_equations,  # noqa: E402
                                 noise_sigma, solve_linear_degradation)
from degflow.metrics import psnr_y, rgb_to_y  # noqa: E402
from degflow.resize import bicubic_baseline, upsample_to  # noqa: E402
from degflow.sr.pairs import find_pairs, pair_folder  # noqa: E402

METHODS = ("bicubic", "linear_global", "linear_image_halves", "linear_image_insample")
LABELS = {"bicubic": "bicubic", "linear_global": "linear, one kernel (fitted on train)",
          "linear_image_halves": "linear, per image (fitted on the other half)",
          "linear_image_insample": "linear, per image (in-sample)"}


def load_pairs(root: Path, split: str, scale: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(name, hr [3, H, W], lr [3, H/s, W/s])]`` of ``root/split`` (HR/ + x{s}/ or LR/x{s}/, paired
    by name as :func:`degflow.sr.pairs.find_pairs` does) with H, W cropped to multiples of ``scale``."""
    pairs = []
    for p in find_pairs([pair_folder(root / split, [scale], key="--scale")]):
        hr, lr = read_image(p.hr_path), read_image(p.lr_path)
        h, w = min(hr.shape[1] // scale, lr.shape[1]), min(hr.shape[2] // scale, lr.shape[2])
        pairs.append((p.name, hr[:, :h * scale, :w * scale], lr[:, :h, :w]))
    return pairs


def upsampled_noise_factor(scale: int, size: int = 256, seed: int = 0) -> float:
    """Variance of unit white noise at LR size after bicubic upsampling by ``scale`` (interior)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(1, 3, size, size, generator=g, dtype=torch.float64)
    up = torch.nn.functional.interpolate(n, scale_factor=scale, mode="bicubic", align_corners=False)
    return float(up[..., 16:-16, 16:-16].var())


def _halves_prediction(x: torch.Tensor, y: torch.Tensor, h: int, w: int, ridge: float) -> torch.Tensor:
    """Each half (top / bottom rows of the LR image) predicted by the kernel fitted on the other half.

    ``x [L, P]`` the image's design (:func:`linear_degradation_design`), ``y [L, 3]`` its LR pixels;
    returns ``[L, 3]``."""
    top = torch.zeros(h * w, dtype=torch.bool)
    top[: (h // 2) * w] = True
    out = torch.empty_like(y)
    for part in (top, ~top):
        xf, yf = x[~part], y[~part]
        out[part] = x[part] @ solve_linear_degradation(xf.T @ xf, xf.T @ yf, ridge)
    return out


def measure(root: Path, splits: list[str], scale: int, support: int, shave: int, ridge: float) -> dict:
    train = load_pairs(root, "train", scale)
    xtx = xty = None
    for _, hr, lr in train:
        a, b = linear_degradation_normal_equations(hr[None], lr[None], scale, support)
        xtx, xty = (a, b) if xtx is None else (xtx + a, xty + b)
    global_w = solve_linear_degradation(xtx, xty, ridge)
    factor = upsampled_noise_factor(scale)
    out = {"root": str(root), "scale": scale, "support": support, "shave": shave, "ridge": ridge,
           "train_images": len(train), "upsampled_noise_variance_factor": factor, "splits": {}}
    for split in ["train", *splits]:
        pairs = train if split == "train" else load_pairs(root, split, scale)
        rows = []
        for name, hr, lr in pairs:
            (H, W), (h, w) = hr.shape[-2:], lr.shape[-2:]
            real_up = upsample_to(lr[None], H, W)
            x = linear_degradation_design(hr[None], scale, support)[0]             # [L, P], built once per image
            y = lr.to(torch.float64).flatten(1).T                                   # [L, 3]
            linear = {"linear_global": x @ global_w,
                      "linear_image_halves": _halves_prediction(x, y, h, w, ridge),
                      "linear_image_insample": x @ solve_linear_degradation(x.T @ x, x.T @ y, ridge)}
            preds = {"bicubic": bicubic_baseline(hr[None], scale),
                     **{m: upsample_to(v.T.reshape(1, 3, h, w).to(hr.dtype).clamp(-1, 1), H, W)
                        for m, v in linear.items()}}
            row = {"name": name, **{m: float(psnr_y(p, real_up, shave=shave)) for m, p in preds.items()}}
            sigma = float(noise_sigma(rgb_to_y((lr[None] + 1) / 2)) * 255)
            row["noise_sigma_y8"] = sigma
            row["noise_cap"] = 10 * math.log10(255.0**2 / (factor * max(sigma, 1e-6) ** 2))   # finite: strict json
            rows.append(row)
            print(f"[{split}] {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "name"), flush=True)
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "name"}
        out["splits"][split] = {"images": len(rows), "mean": mean, "per_image": rows}
    return out


def table(result: dict) -> str:
    splits = list(result["splits"])
    lines = [f"x{result['scale']}, kernel support {result['support']} px, shave {result['shave']}: "
             f"mean Y-PSNR (dB) against the real LR, scored at HR size like degflow.evaluate",
             "| predictor | " + " | ".join(f"{s} ({result['splits'][s]['images']})" for s in splits) + " |",
             "|---|" + "---|" * len(splits)]
    for m in METHODS:
        lines.append(f"| {LABELS[m]} | " + " | ".join(f"{result['splits'][s]['mean'][m]:.2f}" for s in splits) + " |")
    lines.append("| noise sigma of the real LR, Y, 8-bit (Immerkaer) | "
                 + " | ".join(f"{result['splits'][s]['mean']['noise_sigma_y8']:.2f}" for s in splits) + " |")
    lines.append("| Y-PSNR that white noise of that sigma alone costs | "
                 + " | ".join(f"{result['splits'][s]['mean']['noise_cap']:.2f}" for s in splits) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = results_parser(__doc__, __doc__.split("\n\n")[1].strip())
    p.add_argument("--root", type=Path, required=True,
                   help="paired tree with train/ (fits the one-kernel baseline) and the --splits, each HR/ + x<scale>/")
    p.add_argument("--out", type=Path, required=True, help="json output")
    p.add_argument("--splits", default="val,test", help="comma-separated splits to score besides train (default %(default)s)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--support", type=int, default=16, help="kernel side in HR px (default %(default)s)")
    p.add_argument("--shave", type=int, default=0, help="border px dropped, as eval.shave (default %(default)s)")
    p.add_argument("--ridge", type=float, default=1e-8, help="ridge, relative to mean(diag(X^T X))")
    args = p.parse_args(argv)
    with torch.no_grad():
        result = measure(args.root, [s for s in args.splits.split(",") if s], args.scale, args.support, args.shave,
                         args.ridge)
    result["command"] = " ".join(["python", "experiments/knot_ceiling.py", *(argv if argv is not None else sys.argv[1:])])
    return publish(args.out, result, table(result))


if __name__ == "__main__":
    sys.exit(main())
