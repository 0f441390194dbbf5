"""How much does a sample's degflow LR depend on the rest of its batch? Measured on a trained model.

    python -m experiments.studies.online.independence --ckpt <lfm.pt> --json <file>

A batch of ``--batch`` random HR crops (``--crop`` pixels, the demo training photos) with a scale per
sample uniform in [1, 4] is degraded at once and each sample alone (default solver, fp32, one
thread): the largest absolute difference before the 8-bit rounding (in [-1, 1] units, the quantity
``INDEPENDENCE_ATOL`` bounds) and the share of 8-bit pixels that differ after it; then the same
batch again, bit-identical (the same call gives the same batch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from degflow.data.demo import demo_image_paths
from degflow.data.images import read_image
from degflow.generation import Degrader
from degflow.generation.degrade import INDEPENDENCE_ATOL
from degflow.sr.online import ScaleSampler, random_hr_crop
from experiments._runner import publish


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = [read_image(p) for p in demo_image_paths()[0]]
    hr = torch.stack([random_hr_crop(images[i % len(images)], args.crop, g) for i in range(args.batch)])
    scales = ScaleSampler(1.0, 4.0, "sample").draw(args.batch, g)
    raw = Degrader.from_checkpoint(args.ckpt, quantize=False)
    q8 = Degrader(raw.synth)
    together, together_q = raw(hr, scales).lr, q8(hr, scales).lr
    worst, changed, pixels = 0.0, 0, 0
    for i, s in enumerate(scales):
        alone, alone_q = raw(hr[i:i + 1], s).lr[0], q8(hr[i:i + 1], s).lr[0]
        worst = max(worst, float((together[i] - alone).abs().max()))
        changed += int((together_q[i] != alone_q).sum())
        pixels += alone_q.numel()
    again = q8(hr, scales).lr
    result = {"ckpt": args.ckpt, "batch": args.batch, "crop": args.crop, "scales": scales,
              "max_abs_diff": worst, "atol": INDEPENDENCE_ATOL, "changed_8bit_values": changed, "values": pixels,
              "repeat_identical": all(torch.equal(a, b) for a, b in zip(again, together_q))}
    return publish(args.json, result, json.dumps(result, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
