"""How much of a real LR capture is a function of its HR image? The ceiling under the knot gap.

    python -m experiments.studies.knot_ceiling.knot_ceiling --root outputs/realsr_x4/split --out experiments/studies/knot_ceiling/knot_ceiling_canon.json

The knot gap (``experiments/studies/knot_gap/knot_gap.py``) compares generated LR with the *oracle*: the real LR
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
- ``... + tile registration``: bicubic, the one-kernel fit and each ``--generated`` folder with
  every ``--register-tile`` px block of its LR moved by the sub-pixel translation that best
  matches the real LR (:func:`registration.register_tiles`, within ``--register-range`` px).
  Two numbers per block move content but cannot blur, denoise or recolour it, so the gain is the
  pair's local misregistration left by the dataset's alignment, which the HR image does not
  determine and the oracle reproduces. It needs the real LR: a decomposition, not a method;
- ``--generated LABEL=DIR``: LR images a model generated for the ``--generated-split`` HR
  images (``DIR/<name>.png``, true LR size, e.g. ``synthesize.py out=... scales=[4]`` then
  ``DIR=out/LR/x4``), scored the same way;
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

from degflow.baselines.kernel import (
    linear_degradation_design,
    linear_degradation_normal_equations,
    solve_linear_degradation,
)
from degflow.core.resize import resize_to_lr, upsample_to
from degflow.data.images import read_image
from degflow.data.sr_pairs import find_pairs, pair_folder
from degflow.metrics.image import psnr_y, rgb_to_y
from degflow.metrics.noise import noise_sigma
from experiments._runner import publish, results_parser
from experiments.studies.knot_ceiling.registration import register_tiles

METHODS = ("bicubic", "linear_global", "linear_image_halves", "linear_image_insample")
LABELS = {"bicubic": "bicubic", "linear_global": "linear, one kernel (fitted on train)",
          "linear_image_halves": "linear, per image (fitted on the other half)",
          "linear_image_insample": "linear, per image (in-sample)"}
#: Predictors that are also scored after tile registration (besides every --generated one).
REGISTERED = ("bicubic", "linear_global")


def load_pairs(root: Path, split: str, scale: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(name, hr [3, H, W], lr [3, H/s, W/s])]`` of ``root/split`` (HR/ + x{s}/ or LR/x{s}/, paired
    by name as :func:`degflow.data.sr_pairs.find_pairs` does) with H, W cropped to multiples of ``scale``."""
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


def load_generated(folder: Path, name: str, lr: torch.Tensor) -> torch.Tensor:
    """The generated LR ``folder/<name>.png`` cropped to the real LR's ``[3, h, w]``."""
    path = folder / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"--generated: expected {path} (one LR image per HR image of the split, "
                                f"named like it), found none")
    gen = read_image(path)
    h, w = lr.shape[-2:]
    if gen.shape[-2] < h or gen.shape[-1] < w:
        raise ValueError(f"--generated: {path} is {gen.shape[-1]}x{gen.shape[-2]}, smaller than the real LR "
                         f"{w}x{h}; expected true LR size (synthesize.py size=lr)")
    return gen[:, :h, :w]


def measure(root: Path, splits: list[str], scale: int, support: int, shave: int, ridge: float,
            register_tile: int = 32, register_range: float = 2.0, generated: dict[str, Path] | None = None,
            generated_split: str = "test") -> dict:
    generated = generated or {}
    if generated and generated_split not in ["train", *splits]:
        raise ValueError(f"--generated-split {generated_split!r} is not scored; scored splits: {['train', *splits]}")
    train = load_pairs(root, "train", scale)
    xtx = xty = None
    for _, hr, lr in train:
        a, b = linear_degradation_normal_equations(hr[None], lr[None], scale, support)
        xtx, xty = (a, b) if xtx is None else (xtx + a, xty + b)
    global_w = solve_linear_degradation(xtx, xty, ridge)
    factor = upsampled_noise_factor(scale)
    out = {"root": str(root), "scale": scale, "support": support, "shave": shave, "ridge": ridge,
           "register_tile": register_tile, "register_range": register_range,
           "generated": {k: str(v) for k, v in generated.items()},
           "generated_split": generated_split if generated else None,
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
            lr_preds = {"bicubic": resize_to_lr(hr, scale).to(torch.float64),
                        **{m: v.T.reshape(3, h, w).clamp(-1, 1) for m, v in linear.items()}}
            if split == generated_split:
                lr_preds.update({label: load_generated(folder, name, lr).to(torch.float64)
                                 for label, folder in generated.items()})
            moved = {}
            for m in [*REGISTERED, *(generated if split == generated_split else ())]:
                lr_preds[f"{m}+registered"], shifts = register_tiles(lr_preds[m], lr.to(torch.float64),
                                                                     register_tile, register_range)
                moved[m] = float((shifts.norm(dim=-1) > 0.5).to(torch.float64).mean())
            # bicubic: resize_to_lr then upsample_to, exactly the evaluation's bicubic_baseline row
            preds = {m: upsample_to(v[None].to(hr.dtype), H, W) for m, v in lr_preds.items()}
            row = {"name": name, **{m: float(psnr_y(p, real_up, shave=shave)) for m, p in preds.items()}}
            sigma = float(noise_sigma(rgb_to_y((lr[None] + 1) / 2)) * 255)
            row.update({f"{m}_tiles_moved": v for m, v in moved.items()})
            row["noise_sigma_y8"] = sigma
            row["noise_cap"] = 10 * math.log10(255.0**2 / (factor * max(sigma, 1e-6) ** 2))   # finite: strict json
            rows.append(row)
            print(f"[{split}] {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "name"), flush=True)
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "name"}
        out["splits"][split] = {"images": len(rows), "mean": mean, "per_image": rows}
    return out


def table(result: dict) -> str:
    splits = list(result["splits"])
    lines = [f"x{result['scale']}, kernel support {result['support']} px, registration tiles "
             f"{result.get('register_tile', 32)} px within {result.get('register_range', 2.0)} px, shave {result['shave']}: "
             f"mean Y-PSNR (dB) against the real LR, scored at HR size like degflow.evaluate",
             "| predictor | " + " | ".join(f"{s} ({result['splits'][s]['images']})" for s in splits) + " |",
             "|---|" + "---|" * len(splits)]

    def row(label: str, key: str, fmt: str = "{:.2f}") -> None:
        cells = [result["splits"][s]["mean"].get(key) for s in splits]
        if any(c is not None for c in cells):
            lines.append(f"| {label} | " + " | ".join("-" if c is None else fmt.format(c) for c in cells) + " |")

    labels = {**LABELS, **{g: f"generated: {g}" for g in result.get("generated", {})}}
    for m in METHODS:
        row(labels[m], m)
    for m in [*REGISTERED, *result.get("generated", {})]:
        if m not in METHODS:
            row(labels[m], m)
        row(f"{labels[m]} + tile registration", f"{m}+registered")
        row("share of its tiles moved by > 0.5 px", f"{m}_tiles_moved")
    row("noise sigma of the real LR, Y, 8-bit (Immerkaer)", "noise_sigma_y8")
    row("Y-PSNR that white noise of that sigma alone costs", "noise_cap")
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
    p.add_argument("--register-tile", type=int, default=32,
                   help="registration block side in LR px (default %(default)s)")
    p.add_argument("--register-range", type=float, default=2.0,
                   help="largest registration shift in LR px (default %(default)s)")
    p.add_argument("--generated", action="append", default=[], metavar="LABEL=DIR",
                   help="generated LR images DIR/<name>.png of the --generated-split images, scored as LABEL "
                        "(repeatable)")
    p.add_argument("--generated-split", default="test", help="the split --generated images belong to (default %(default)s)")
    args = p.parse_args(argv)
    generated = {}
    for item in args.generated:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder or label in generated or label in METHODS:
            p.error(f"--generated: expected a new LABEL=DIR (LABEL not one of {list(METHODS)} and not repeated), "
                    f"got {item!r}")
        if not Path(folder).is_dir():
            p.error(f"--generated {item}: {folder} is not a folder")
        generated[label] = Path(folder)
    if args.register_tile < 1 or args.register_range < 0:
        p.error(f"--register-tile (>= 1) and --register-range (>= 0) expected, got {args.register_tile} "
                f"and {args.register_range}")
    with torch.no_grad():
        result = measure(args.root, [s for s in args.splits.split(",") if s], args.scale, args.support, args.shave,
                         args.ridge, args.register_tile, args.register_range, generated, args.generated_split)
    result["command"] = " ".join(["python", "experiments/studies/knot_ceiling/knot_ceiling.py", *(argv if argv is not None else sys.argv[1:])])
    return publish(args.out, result, table(result))


if __name__ == "__main__":
    sys.exit(main())
