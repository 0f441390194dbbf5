"""Why do SR networks trained on camera-like LR score below bicubic interpolation at x1.5?

Measured on the demo VALIDATION bands (the bottom quarter of each training photo, the ``demo_val``
test set of ``sr-compare`` with ``sr_setup.val_scales``; never the test photos), for every ``liif``
network of an ``sr-compare`` output folder:

    python -m experiments.studies.x15_anomaly.measure --out <sr-compare out> --json <file>
    # a run made with cache=<other folder>: --cache <that folder>

Per network and validation scale (mean over the 5 validation bands, the scoring protocol of
``degflow/sr/scoring.py``: Y in [16, 235], 8-bit, shave = ceil(s)):

- ``psnr``: Y-PSNR of the SR output against the HR band;
- ``bias``: mean of Y(SR) - Y(HR) in 8-bit levels (a global brightness error);
- ``psnr_offset``: Y-PSNR after removing each image's mean Y difference (what is left without the
  global brightness error);
- ``psnr_cell4``: Y-PSNR when the network is told the output is x4 (the cell of a x4 output) while
  it still upsamples the x1.5 LR to the HR size: how much the network's output depends on the scale
  it is given (a network that ignores the cell gives the same number);

plus, per scale, the same numbers for bicubic interpolation of the real LR, and ``lr_bias``: the
mean Y difference between the real LR (bicubic-upsampled) and the HR, i.e. the colour / tone shift
the degradation itself adds at that scale.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from degflow.core.resize import upsample_to
from degflow.data.images import read_image
from degflow.data.sr_pairs import find_pairs, pair_folder
from degflow.metrics.image import psnr_y, rgb_to_y
from degflow.models.sr import build_sr_model, make_coord
from degflow.sr.fit import load_sr_checkpoint
from degflow.sr.scoring import sr_shave


def _y255(x: torch.Tensor, shave: int) -> torch.Tensor:
    """``[1, 3, H, W]`` in [-1, 1] -> 8-bit-quantised Y on the 0..255 scale, border shaved."""
    x01 = torch.round(((x.double() + 1) / 2).clamp(0, 1) * 255) / 255
    y = rgb_to_y(x01) * 255
    return y[..., shave:-shave, shave:-shave] if shave else y


def _psnr_of(y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
    return float(10 * torch.log10(255.0 ** 2 / (y_pred - y_true).pow(2).mean()))


@torch.no_grad()
def liif_with_cell(model, lr: torch.Tensor, size: tuple[int, int], cell_scale: float) -> torch.Tensor:
    """The LIIF network's output at ``size`` with the cell of an output ``cell_scale`` times the LR
    (the scale the network is told), instead of the true one."""
    h, w = lr.shape[-2:]
    feat = model.encoder(lr)
    coord = make_coord(*size, lr.device, lr.dtype).view(1, -1, 2)
    cell = torch.tensor([2.0 / (h * cell_scale), 2.0 / (w * cell_scale)], dtype=lr.dtype).expand_as(coord)
    res = torch.cat([model.query(feat, coord[:, i:i + 65536], cell[:, i:i + 65536])
                     for i in range(0, coord.shape[1], 65536)], dim=1)
    res = res.transpose(1, 2).reshape(1, 3, *size)
    return (F.interpolate(lr, size=size, mode="bicubic", align_corners=False) + res).clamp(-1, 1)


def measure(out: Path, cache_root: Path | None = None) -> dict:
    cache = (out / "cache" if cache_root is None else cache_root) / "demo"
    prepared = json.loads((cache / "prepared.json").read_text())
    pairs = find_pairs([pair_folder(cache / "val", prepared["val_scales"], "demo_val")])
    data = [(p.scale, read_image(p.hr_path)[None], read_image(p.lr_path)[None]) for p in pairs]
    rows: dict[str, dict] = {}
    # bicubic interpolation and the tone shift of the real LR itself
    ref: dict[float, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for s, hr, lr in data:
        sh = sr_shave(s)
        up = upsample_to(lr, *hr.shape[-2:])
        yp, yt = _y255(up, sh), _y255(hr, sh)
        ref[s]["psnr"].append(float(psnr_y(up, hr, shave=sh)[0]))
        ref[s]["bias"].append(float((yp - yt).mean()))
        ref[s]["psnr_offset"].append(_psnr_of(yp - (yp - yt).mean(), yt))
    rows["(bicubic interpolation)"] = {f"x{s:g}": {k: sum(v) / len(v) for k, v in d.items()} for s, d in sorted(ref.items())}
    for ckpt in sorted((out / "runs" / "liif").glob("*/seed-*/checkpoints/last.pt")):
        name = f"{ckpt.parents[2].name} {ckpt.parents[1].name}"
        state = load_sr_checkpoint(ckpt)
        if state["step"] < state["settings"]["steps"]:
            continue
        cfg = dict(state["model_config"])
        cfg.pop("network")
        model = build_sr_model("liif", None, **cfg)
        model.load_state_dict(state["model"])
        model.eval()
        acc: dict[float, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for s, hr, lr in data:
            sh = sr_shave(s)
            with torch.no_grad():
                sr = model(lr, tuple(hr.shape[-2:])).clamp(-1, 1)
            yp, yt = _y255(sr, sh), _y255(hr, sh)
            acc[s]["psnr"].append(float(psnr_y(sr, hr, shave=sh)[0]))
            acc[s]["bias"].append(float((yp - yt).mean()))
            acc[s]["psnr_offset"].append(_psnr_of(yp - (yp - yt).mean(), yt))
            if s < 4:
                acc[s]["psnr_cell4"].append(float(psnr_y(liif_with_cell(model, lr, tuple(hr.shape[-2:]), 4.0), hr,
                                                         shave=sh)[0]))
        rows[name] = {f"x{s:g}": {k: sum(v) / len(v) for k, v in d.items()} for s, d in sorted(acc.items())}
    return {"val_scales": prepared["val_scales"], "images": len({p.name for p in pairs}), "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="an sr-compare out folder (sr_setup=demo, val_scales set)")
    ap.add_argument("--cache", type=Path, default=None, help="the run's cache= folder (default: <out>/cache)")
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("x15_anomaly.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args.out, args.cache)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    scales = [f"x{s:g}" for s in result["val_scales"]]
    for key in ("psnr", "bias", "psnr_offset", "psnr_cell4"):
        print(f"\n{key}\n| network | " + " | ".join(scales) + " |\n|---|" + "---|" * len(scales))
        for name, row in result["rows"].items():
            cells = [row.get(s, {}).get(key) for s in scales]
            print(f"| {name} | " + " | ".join("–" if v is None or (isinstance(v, float) and math.isnan(v))
                                                else f"{v:.2f}" for v in cells) + " |")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
