"""Is ``degrade`` the same as ``synthesize.py``? On a trained model, with synthesize.py itself.

    python -m experiments.studies.online.equality --ckpt <lfm.pt> --hr <folder of HR images> --work <scratch dir> \
        --json <file>

Runs ``synthesize.py`` (its default scales 1.1, 1.2, ..., 4.0 and default solver, ``size=both``) on the
folder, then degrades each HR image read back from the output with :class:`degflow.generation.Degrader`
(default solver, ``max_scale`` = 4.0, the largest scale of the list): one image and one scale per call
(synthesize.py's batch of one), all images in one batch per scale (when they have one size), and all 30
scales as per-sample scales of one batch (the image repeated); counts the 8-bit values that differ from
the PNG files (true size, and HR size for the first way).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from degflow.core.scales import expand_scales, scale_key
from degflow.data.images import find_images, read_image
from degflow.generation import Degrader
from experiments._runner import publish

REPO = Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    out = args.work / "synth"
    subprocess.run([sys.executable, "synthesize.py", f"ckpt={args.ckpt}", f"input={args.hr}", f"out={out}",
                    "size=both", "threads=1", "progress=false"], cwd=REPO, check=True)
    torch.set_num_threads(1)
    scales = list(expand_scales({"start": 1.1, "stop": 4.0, "step": 0.1}))
    deg = Degrader.from_checkpoint(args.ckpt, max_scale=max(scales))
    names = [p.name for p in find_images(out / "HR")]
    hr = torch.stack([read_image(out / "HR" / n) for n in names])
    diff = {"one_image_lr": 0, "one_image_hr_size": 0, "all_images_lr": None, "per_sample_lr": 0, "values_lr": 0,
            "values_hr_size": 0}
    same_size = len({tuple(x.shape) for x in hr}) == 1
    if same_size:
        diff["all_images_lr"] = 0
    for s in scales:
        together = deg(hr, s).lr if same_size else None           # every image in one batch
        for i, n in enumerate(names):
            got = deg(hr[i:i + 1], s, size="both")                 # one image per call, as synthesize.py's batch_size=1
            ref_lr = read_image(out / "LR" / scale_key(s) / n)
            ref_hr = read_image(out / "LR_hrsize" / scale_key(s) / n)
            diff["one_image_lr"] += int((got.lr[0] != ref_lr).sum())
            diff["one_image_hr_size"] += int((got.hr_size[0] != ref_hr).sum())
            if together is not None:
                diff["all_images_lr"] += int((together[i] != ref_lr).sum())
            diff["values_lr"] += ref_lr.numel()
            diff["values_hr_size"] += ref_hr.numel()
    for i, n in enumerate(names):
        lrs = deg(hr[i:i + 1].expand(len(scales), -1, -1, -1), scales).lr
        for s, lr in zip(scales, lrs):
            diff["per_sample_lr"] += int((lr != read_image(out / "LR" / scale_key(s) / n)).sum())
    result = {"images": names, "scales": len(scales), "solver": deg.solver.to_dict(), **diff}
    return publish(args.json, result, json.dumps(result, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
