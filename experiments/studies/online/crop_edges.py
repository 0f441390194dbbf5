"""How far into an HR crop does degflow's LR differ from the LR of the whole image? (The online path
degrades crops; the offline sets degrade whole images.)

    python -m experiments.studies.online.crop_edges --ckpt <lfm.pt> --hr <folder of HR images> --scale 4 \
        --crops 96,160 --json <file>

For every image, the LR of the whole image (true size) and of ``--per-image`` random crops of each
side in ``--crops`` (origins on multiples of the scale, so both LR grids coincide), degraded with the
online solver (euler, 4 steps, cubic output) on one thread; per LR pixel of the crop, its distance d to
the crop's nearest edge in LR pixels; reported: Y-PSNR (8-bit, BT.601) of crop-LR vs whole-image-LR
over the pixels with d in each band. The bicubic LR of the same crops is measured the same way (its
edge effect is only the downscaling kernel's border handling).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from degflow.core.resize import resize_to_lr
from degflow.core.solvers import SolverSpec
from degflow.data.images import find_images, read_image
from degflow.generation import Degrader
from degflow.generation.degrade import quantize_8bit
from degflow.metrics.image import rgb_to_y

BANDS = ((0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 1000))


def _y(x: torch.Tensor) -> torch.Tensor:
    return rgb_to_y(((x.double() + 1) / 2).clamp(0, 1)[None])[0, 0] * 255


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--scale", type=int, required=True, help="an integer scale (both LR grids coincide)")
    ap.add_argument("--crops", default="96,160")
    ap.add_argument("--per-image", type=int, default=3)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    s = args.scale
    deg = Degrader.from_checkpoint(args.ckpt, solver=SolverSpec.create("euler", steps=4, output_mode="cubic"))
    g = torch.Generator().manual_seed(0)
    sq: dict[str, dict[int, dict[str, list[float]]]] = {}
    for path in find_images(args.hr):
        hr = read_image(path)[None]
        hh, ww = (v - v % s for v in hr.shape[-2:])
        hr = hr[..., :hh, :ww]
        whole = {"degflow": deg(hr, float(s)).lr[0], "bicubic": quantize_8bit(resize_to_lr(hr[0], s))}
        for side in (int(c) for c in args.crops.split(",")):
            for _ in range(args.per_image):
                top = int(torch.randint((hh - side) // s + 1, (1,), generator=g)) * s
                left = int(torch.randint((ww - side) // s + 1, (1,), generator=g)) * s
                crop = hr[..., top:top + side, left:left + side]
                got = {"degflow": deg(crop, float(s)).lr[0], "bicubic": quantize_8bit(resize_to_lr(crop[0], s))}
                n = side // s
                i = torch.arange(n)
                d1 = torch.minimum(i, n - 1 - i)
                dist = torch.minimum(d1[:, None], d1[None, :])
                for kind in got:
                    ref = whole[kind][:, top // s:top // s + n, left // s:left // s + n]
                    err = (_y(got[kind]) - _y(ref)) ** 2
                    for lo, hi in BANDS:
                        m = (dist >= lo) & (dist < hi)
                        if m.any():
                            acc = sq.setdefault(kind, {}).setdefault(side, {}).setdefault(f"{lo}-{hi}", [0.0, 0])
                            acc[0] += float(err[m].sum())
                            acc[1] += int(m.sum())
    result = {"ckpt": args.ckpt, "scale": s, "images": len(find_images(args.hr)), "per_image": args.per_image,
              "psnr_by_distance": {kind: {str(side): {b: (10 * torch.log10(torch.tensor(255.0 ** 2 / (v[0] / v[1])))
                                                         .item() if v[0] > 0 else float("inf")) for b, v in bands.items()}
                                          for side, bands in by_side.items()} for kind, by_side in sq.items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["psnr_by_distance"], indent=1))
    return result


if __name__ == "__main__":
    main()
