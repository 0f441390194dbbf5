"""How much does the noise level of one photo differ from the noise model's, and does the HR photo
show it? On the TRAINING pairs of a paired data option (nothing here is chosen on test data).

For each of the first ``--images`` training pairs at ``--scale``: the deterministic LR of the checkpoint,
corrected by the conditional noise model's mean; in the flat half of the image (HR texture at most its
median, as the fit) the mean of ``log r^2 + 1.2704`` (``r`` = real LR - corrected LR) minus the mean of
the model's ``log sigma^2``: the photo's noise level relative to the model's, in log variance. Beside
it, the no-reference noise level (Immerkaer) of the HR photo's and the real LR's luminance.

    python -m experiments.studies.stochastic.noise_level_per_photo --ckpt <canon lfm> \\
        --noise <fit seed 0, fit.variance=residual> --root <canon split> --out noise_level_per_photo.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from degflow.baselines.noise import load_noise_model, texture
from degflow.core.resize import resize_to_lr
from degflow.data import build_data
from degflow.data.options import option_defaults
from degflow.generation import Synthesizer
from degflow.jobs.noise_fit import real_lr_true_size
from degflow.metrics.noise import noise_sigma
from experiments._runner import publish


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--noise", required=True, type=Path, help="a conditional noise model of --ckpt")
    p.add_argument("--root", required=True, type=Path, help="the paired data root (train/ is read)")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = {k: v for k, v in option_defaults("paired").items() if k != "_target_"}
    bundle = build_data("paired", **{**settings, "root": str(args.root), "train_scales": [1, args.scale]})
    synth = Synthesizer.from_checkpoint(args.ckpt)
    model = load_noise_model(args.noise)
    if not model.conditional or model.energy is not None:     # the noise level function is what is compared
        raise SystemExit("error: --noise must be a conditional noise model with the residual variance "
                         "(fit-noise fit.conditional=true fit.variance=residual): this study compares each photo's "
                         "noise level with its noise level function")
    s, rows = args.scale, []
    for rec in list(bundle.train.records)[: args.images]:
        hr, lrs = rec.load([s])
        lr = resize_to_lr(synth.generate(hr[None], [s]).images[s], s)
        real, ref = real_lr_true_size(rec, s, lrs[0])[None], resize_to_lr(hr[None], s)
        cor = (lr + model.mean_correction(lr, s, ref)).clamp(-1, 1)
        var = model.variance_map(lr, s, ref)
        t = texture(ref)
        flat = (t <= t.median()).expand_as(lr)
        level = float(((real - cor)[flat] ** 2 + 1e-8).log().mean() + 1.2704 - var[flat].log().mean())
        rows.append({"image": rec.name, "log_level_ratio": level,
                     "hr_noise_sigma": float(noise_sigma(hr[None].mean(1, keepdim=True))),
                     "lr_noise_sigma": float(noise_sigma(real.mean(1, keepdim=True)))})
    ratio = torch.tensor([r["log_level_ratio"] for r in rows], dtype=torch.float64)
    hr_sigma = torch.tensor([r["hr_noise_sigma"] for r in rows], dtype=torch.float64)
    corr = float(torch.corrcoef(torch.stack([ratio, hr_sigma]))[0, 1])
    lines = ["| image | log(photo level / model level) | HR noise sigma | real LR noise sigma |", "|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['log_level_ratio']:+.2f} | {r['hr_noise_sigma']:.4f} | {r['lr_noise_sigma']:.4f} |"
              for r in rows]
    lines.append(f"\nSD of the log ratio over photos {float(ratio.std()):.2f}; correlation with the HR noise sigma {corr:.2f}")
    record = {"command": "python -m experiments.studies.stochastic.noise_level_per_photo "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "split": "train", "scale": s, "rows": rows, "sd_log_ratio": float(ratio.std()),
              "corr_with_hr_sigma": corr, "markdown": lines}
    return publish(args.out, record, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
