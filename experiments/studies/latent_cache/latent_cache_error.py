"""How far the stage-2 latent cache is from encoding every crop: the latent of a crop
against the crop of the cached latent of the whole (transformed) image.

    python -m experiments.studies.latent_cache.latent_cache_error --rae-ckpt outputs/rae/<run>/checkpoints/last.pt

For ``--crops`` random stride-aligned training crops (the same sampler the LFM stage uses
with ``stage.latent_cache=true``) of each ``--sizes``, on the demo training photos, encodes
every knot image of the crop (HR, x2, x4) and compares with the cache. Reports, per crop
size: RMS and max |difference|, the RMS relative to the RMS of the latents themselves and to
the RMS of the degradation residual ``z_s - z_1`` (what the velocity network learns), and
the RMS by ring of latent pixels counted from the crop border (ring 0 = the outermost).
Writes ``experiments/studies/latent_cache/latent_cache_error.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[3]

from degflow.data.demo import demo_data
from degflow.infra.checkpoint import load_checkpoint
from degflow.metrics.image import psnr_y
from degflow.models.registry import build_model
from degflow.training.latent_cache import load_or_build_latent_cache
from degflow.training.lfm import aligned_training_set


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rae-ckpt", type=Path, required=True)
    parser.add_argument("--sizes", default="64,128,256", help="crop sides in pixels (multiples of 8)")
    parser.add_argument("--crops", type=int, default=48, help="random crops per size")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse / store the cache here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "experiments/studies/latent_cache/latent_cache_error.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rae_ckpt, rae_digest = load_checkpoint(args.rae_ckpt, kind="rae", with_digest=True)
    rae = build_model(rae_ckpt["models"]["rae"]).eval()
    demo = yaml.safe_load((REPO / "conf" / "data" / "demo.yaml").read_text())   # the demo defaults
    demo.pop("_target_")
    data = demo_data(**demo)
    cache = load_or_build_latent_cache(rae, data.train.records, data.train.scales, rae_digest.sha256,
                                       torch.device("cpu"), args.cache_dir)
    report = {"rae_ckpt": str(args.rae_ckpt), "rae_config": rae.config, "crops_per_size": args.crops, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        dataset = aligned_training_set(data.train, rae.stride)
        dataset.crop_size = size
        torch.manual_seed(0)
        diffs, cached_all, residual, psnr_own, psnr_cached = [], [], [], [], []
        for _ in range(args.crops):
            item = dataset[0]
            images = torch.cat([item["hr"][None], item["lr"]])          # [K,3,size,size]
            zc = cache.crops(item["where"][None], size)[0]
            with torch.no_grad():
                z, feats = rae.encode(images)                            # [K,C,n,n]
                hr_feats = [f[:1].expand(len(images), *f.shape[1:]) for f in feats]
                psnr_own.append(psnr_y(rae.decode(z, hr_feats).clamp(-1, 1), images))      # [K]
                psnr_cached.append(psnr_y(rae.decode(zc, hr_feats).clamp(-1, 1), images))
            diffs.append(z - zc)
            cached_all.append(zc)
            residual.append(zc[1:] - zc[:1])
        d, zc, res = torch.stack(diffs), torch.stack(cached_all), torch.stack(residual)   # [N,K,C,n,n]
        n = d.shape[-1]
        idx = torch.arange(n)
        ring = torch.minimum(torch.minimum(idx[:, None], idx[None, :]),
                             torch.minimum(n - 1 - idx[:, None], n - 1 - idx[None, :]))   # [n,n]
        by_ring = {int(r): rms(d[..., ring == r]) for r in ring.unique()}
        row = {"latent_pixels": n, "rms_diff": rms(d), "max_abs_diff": float(d.abs().max()),
               "rms_latent": rms(zc), "rms_residual_z_s_minus_z_1": rms(res),
               "rms_diff_over_rms_latent": rms(d) / rms(zc), "rms_diff_over_rms_residual": rms(d) / rms(res),
               "rms_diff_by_ring_from_border": by_ring,
               "rms_diff_per_knot": [rms(d[:, k]) for k in range(d.shape[1])],
               # what the LPIPS term decodes: D(z; HR skip features of the crop) against the crop,
               # with z the crop's own latent (uncached) or the cache's crop (cached), per knot
               "psnr_y_decode_own_latent_per_knot": torch.stack(psnr_own).mean(0).tolist(),
               "psnr_y_decode_cached_latent_per_knot": torch.stack(psnr_cached).mean(0).tolist()}
        report["sizes"][str(size)] = row
        print(f"crop {size}: rms diff {row['rms_diff']:.4f} (x{row['rms_diff_over_rms_latent']:.3f} of the latent RMS "
              f"{row['rms_latent']:.3f}, x{row['rms_diff_over_rms_residual']:.3f} of the residual RMS "
              f"{row['rms_residual_z_s_minus_z_1']:.3f}), max {row['max_abs_diff']:.3f}; by ring "
              + ", ".join(f"{r}: {v:.4f}" for r, v in by_ring.items())
              + f"; decoded Y-PSNR per knot, own latent {row['psnr_y_decode_own_latent_per_knot']}, cached "
              f"{row['psnr_y_decode_cached_latent_per_knot']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
