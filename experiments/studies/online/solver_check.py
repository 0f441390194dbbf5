"""Which solver for the online degradation? The LR of cheaper solvers against the default's and
against the real LR, at true LR size, on VALIDATION images only.

    python -m experiments.studies.online.solver_check --ckpt <lfm.pt> --hr <val>/HR --lr <val>/LR \
        --scales 1.1,1.25,1.5,2,2.5,3,3.5,4 --json <file>

For each solver (rk4/16/cubic = synthesize.py's default, 65 NFE; euler/8/cubic, 9 NFE; euler/4/cubic,
5 NFE): every HR image degraded at every scale by :class:`degflow.generation.Degrader` (one solve per
image, all scales as one batch of per-sample scales), then the mean over images of the Y-PSNR (8-bit,
no shave) against the real LR ``<lr>/x{s}/<name>.*`` and against the default solver's LR, and the wall
seconds (one thread).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from degflow.core.scales import scale_key
from degflow.core.solvers import SolverSpec
from degflow.data.images import find_images, read_image
from degflow.generation import Degrader
from degflow.metrics.image import psnr_y

SOLVERS = {"rk4/16/cubic": None, "euler/8/cubic": SolverSpec.create("euler", steps=8, output_mode="cubic"),
           "euler/4/cubic": SolverSpec.create("euler", steps=4, output_mode="cubic")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--lr", type=Path, required=True, help="folder with x{s}/ sub-folders of real LR (true size)")
    ap.add_argument("--scales", required=True)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    scales = [float(s) for s in args.scales.split(",")]
    outputs, seconds = {}, {}
    for name, solver in SOLVERS.items():
        deg = Degrader.from_checkpoint(args.ckpt, solver=solver)
        start = time.perf_counter()
        outputs[name] = {}
        for path in find_images(args.hr):
            hr = read_image(path)[None]
            lrs = deg(hr.expand(len(scales), -1, -1, -1), scales).lr
            for s, lr in zip(scales, lrs):
                real = read_image(next((args.lr / scale_key(s)).glob(path.stem + ".*")))
                outputs[name].setdefault(s, []).append((lr, real))
        seconds[name] = time.perf_counter() - start
    ref = outputs["rk4/16/cubic"]
    result = {"ckpt": args.ckpt, "images": len(find_images(args.hr)), "scales": scales, "seconds": seconds, "rows": {}}
    for name, by_scale in outputs.items():
        result["rows"][name] = {scale_key(s): {
            "vs_real": sum(float(psnr_y(a[None], b[None], shave=0)) for a, b in pairs) / len(pairs),
            "vs_default": sum(float(psnr_y(a[None], r[0][None], shave=0)) for (a, _), r in zip(pairs, ref[s]))
            / len(pairs)} for s, pairs in by_scale.items()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    keys = [scale_key(s) for s in scales]
    print("| solver | s (all images) | " + " | ".join(f"{k} vs real / vs rk4/16" for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, row in result["rows"].items():
        print(f"| {name} | {seconds[name]:.0f} | " + " | ".join(
            f"{row[k]['vs_real']:.2f} / {'=' if row[k]['vs_default'] == float('inf') else format(row[k]['vs_default'], '.1f')}"
            for k in keys) + " |")
    return result


if __name__ == "__main__":
    main()
