"""Which noise variance and level should the conditional noise model sample? K-fold cross-validation by
photo on the TRAINING split of a data option (validation and test images are never read).

The training photos are split into ``--folds`` folds (photo i in fold i mod K). For each fold the noise
model is fitted the way ``fit-noise`` fits it (8 random 64-pixel crops per photo and knot, seeded by the
fold) on the other folds' photos, once per variant (``fit.variance=residual`` with ``fit.level``
geometric / harmonic x ``fit.photo_level`` false / true, and ``fit.variance=energy``, the default), and
scored on the held-out photos, whole, at every knot: KL, AKLD and the spectrum distance of
``--samples`` samples and of the deterministic LR against the real LR, at true LR size (what
``eval.noise_stats=lr`` measures). A variant chosen here has seen no image it is scored on, and the
validation split stays for the confirmation.

    python -m experiments.studies.stochastic.level_cv --ckpt <lfm> --data data=demo --out level_cv_demo.json
    python -m experiments.studies.stochastic.level_cv --ckpt <canon lfm> --data data=paired data.root=<split> \\
        'data.train_scales=[1,4]' data.crop_size=64 --out level_cv_canon.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from degflow.baselines.noise import fit, noise_seed
from degflow.cli.quickstart import compose_config
from degflow.core.scales import scale_label
from degflow.data.options import build_data, option_of_target
from degflow.generation import Synthesizer
from degflow.jobs.noise_fit import crop_pairs, noise_fit_pairs
from degflow.metrics.noise import akld, histogram_kl, spectrum_distance
from experiments._runner import publish

VARIANTS = {"residual, geometric": ("geometric", False, "residual"), "residual, harmonic": ("harmonic", False, "residual"),
            "residual, geometric + photo": ("geometric", True, "residual"),
            "residual, harmonic + photo": ("harmonic", True, "residual"),
            "energy (the default)": ("harmonic", True, "energy")}


def _scores(x: torch.Tensor, real: torch.Tensor, hr: torch.Tensor) -> list[float]:
    return [float(histogram_kl(x, real, hr)), float(akld(x, real, hr)), float(spectrum_distance(x, real, hr, 1.0))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--data", nargs="+", default=["data=demo"], help="Hydra overrides naming the data option the "
                   "checkpoint was trained on, as for fit-noise")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = compose_config("fit_noise", [*args.data, f"ckpt={args.ckpt}", "out=unused.pt"])["data"]
    bundle = build_data(option_of_target(data.pop("_target_", "")), **data)      # as fit-noise builds it
    synth = Synthesizer.from_checkpoint(args.ckpt)
    knots = [float(s) for s in synth.train_scales or () if float(s) > 1]
    records = list(bundle.train.records)
    photos = [noise_fit_pairs(synth, [rec], knots, crops=0, crop_size=64, seed=0) for rec in records]
    rows: dict[tuple[str, str], list[list[float]]] = {}
    for fold in range(args.folds):
        held = [i for i in range(len(photos)) if i % args.folds == fold]
        train = crop_pairs([pair for i, ph in enumerate(photos) if i % args.folds != fold for pair in ph],
                           crops=8, crop_size=64, generator=torch.Generator().manual_seed(fold))   # fit-noise's
        models = {name: fit(train, conditional=True, level=lv, photo_level=ph, variance=var)
                  for name, (lv, ph, var) in VARIANTS.items()}
        for i in held:
            for pred, real, s, hr in photos[i]:
                x, r, h = pred[None], real[None], hr[None]
                rows.setdefault((scale_label(s), "deterministic"), []).append(_scores(x, r, h))
                for name, model in models.items():
                    for k in range(args.samples):
                        g = torch.Generator().manual_seed(noise_seed(fold, records[i].name, s, k))
                        rows.setdefault((scale_label(s), name), []).append(_scores(model.sample(x, s, g, hr=h), r, h))
        print(f"fold {fold + 1}/{args.folds}: {len(held)} held-out photos scored", flush=True)
    means = {f"x{s} {name}": [sum(c) / len(c) for c in zip(*v)] for (s, name), v in rows.items()}
    lines = [(f"K-fold cross-validation by photo on the training split ({len(photos)} photos, {args.folds} folds, "
             f"{args.samples} samples per photo and scale; statistics at true LR size)"), "",
             "| scale, variance and level sampled | KL | AKLD | spectrum dB |", "|---|---|---|---|"]
    lines += [f"| {key} | {v[0]:.4f} | {v[1]:.4f} | {v[2]:.2f} |" for key, v in means.items()]
    record = {"command": "python -m experiments.studies.stochastic.level_cv "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "split": "train", "photos": len(photos), "folds": args.folds, "samples": args.samples,
              "means": {k: {"kl": v[0], "akld": v[1], "spec": v[2]} for k, v in means.items()}, "markdown": lines}
    return publish(args.out, record, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
