"""How far can ANY noise added to the deterministic LR go on the demo data? The demo degradation can be
drawn again with other noise seeds, so the true noise is known there.

On the demo validation split (the bottom bands of the training photos; never the test photos), at
x2 / x3 / x4, every candidate is scored against the real LR (data seed 0) with KL, AKLD and the
spectrum distance, twice: at HR size from true-size LR (``eval.noise_stats=hr``: the LR images
bicubic-upsampled to the HR grid) and at true LR size (``eval.noise_stats=lr``: the generated and real LR
sampled back to true size, the HR image resized there):

- ``deterministic``: the checkpoint's LR;
- ``+ fitted noise xS``: plus one sample of the noise model at strength S;
- ``+ true noise``: plus ``(real_1 - real_2) / sqrt(2)``, the difference of two other draws of the real
  degradation (data seeds 1 and 2): noise with the real noise's distribution, independent of draw 0;
- ``second real draw``: the real LR of data seed 1 (the same scene, blur, colour and JPEG, another
  noise draw): what a perfect stochastic generator would score;
- ``mean of 8 real draws``: the mean of the real LR of data seeds 3-10 (the real degradation with its
  noise averaged away): what a perfect *deterministic* generator would score. A noise statistic that
  scores it better than the second real draw prefers no noise to the true noise.

    python -m experiments.studies.stochastic.oracle_noise --ckpt <demo lfm> --noise <noise model> \\
        --out experiments/studies/stochastic/oracle_noise.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from degflow.core.resize import lr_at_hr_size, resize_to_lr, sample_to_lr
from degflow.data.options import build_data, option_defaults
from degflow.generation import StochasticOption, Synthesizer
from degflow.generation.stochastic import noisy_at_hr_size
from degflow.metrics.noise import akld, histogram_kl, spectrum_distance
from experiments._runner import publish

SCALES = (2.0, 3.0, 4.0)
STRENGTHS = (0.5, 1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--noise", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    settings = {k: v for k, v in option_defaults("demo").items() if k != "_target_"}
    draws = [build_data("demo", **{**settings, "seed": seed}).val for seed in (0, 1, 2)]
    synth = Synthesizer.from_checkpoint(args.ckpt)
    noise = StochasticOption.load(args.noise, 1.0, checkpoint_sha256=synth.checkpoint_sha256)
    rows: dict[str, dict[str, list[list[float]]]] = {}
    more = [build_data("demo", **{**settings, "seed": seed}).val for seed in range(3, 11)]
    for i in range(len(draws[0])):
        items = [d[i] for d in draws]
        hr = items[0]["hr"][None]
        scales = [float(x) for x in items[0]["scales"]]
        decoded = synth.generate(hr, [s for s in scales if s in SCALES]).images
        for j, s in enumerate(scales):
            if s not in SCALES:
                continue
            real, one, two = (it["lr"][j][None] for it in items)
            lr, ref = resize_to_lr(decoded[s], s), resize_to_lr(hr, s)
            det = lr_at_hr_size(decoded[s], s, "from_lr")
            mean = torch.stack([d[i]["lr"][j] for d in more]).mean(0, keepdim=True)
            cands = {"deterministic": det, "+ true noise": (det + (one - two) / 2 ** 0.5).clamp(-1, 1),
                     "second real draw": one, "mean of 8 real draws": mean}
            for st in STRENGTHS:
                option = StochasticOption(noise.model, st)
                sample = option.sample(lr, s, option.seeds(0, [str(i)], s), hr=ref)
                cands[f"+ fitted noise x{st:g}"] = noisy_at_hr_size(decoded[s], lr, sample, s, "from_lr")
            small_real = sample_to_lr(real, s)              # eval.noise_stats=lr: the LR back at true size
            for name, x in cands.items():
                small = sample_to_lr(x, s)
                rows.setdefault(f"x{s:g}", {}).setdefault(name, []).append(
                    [float(histogram_kl(x, real, hr)), float(akld(x, real, hr)), float(spectrum_distance(x, real, hr, s)),
                     float(histogram_kl(small, small_real, ref)), float(akld(small, small_real, ref)),
                     float(spectrum_distance(small, small_real, ref, 1.0))])
    keys = ("kl", "akld", "spec", "kl_lr", "akld_lr", "spec_lr")
    table = {scale: {name: dict(zip(keys, torch.tensor(v).mean(0).tolist())) for name, v in by.items()}
             for scale, by in rows.items()}
    lines = ["| scale | candidate | KL at HR size | AKLD at HR size | spectrum dB at HR size | KL at LR size | "
             "AKLD at LR size | spectrum dB at LR size |", "|---|---|---|---|---|---|---|---|"]
    for scale, by in table.items():
        for name, m in by.items():
            lines.append(f"| {scale} | {name} | {m['kl']:.4f} | {m['akld']:.4f} | {m['spec']:.2f} | {m['kl_lr']:.4f} | "
                         f"{m['akld_lr']:.4f} | {m['spec_lr']:.2f} |")
    record = {"command": "python -m experiments.studies.stochastic.oracle_noise " + " ".join(sys.argv[1:] if argv is None else argv),
              "checkpoint_sha256": synth.checkpoint_sha256, "noise_sha256": noise.sha256, "split": "val",
              "images": len(draws[0]), "results": table, "markdown": lines}
    return publish(args.out, record, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
