"""Knot-gap diagnosis: where does generated LR lose to the model's own oracle at the training knots?

    python -m experiments.studies.knot_gap.knot_gap --ckpt outputs/lfm/default/checkpoints/last.pt --out knot_gap.json

On the VALIDATION split of the data the checkpoint was trained on (its stored config), each
image centre-cropped to a multiple of the training crop size (``--tile``, default
``data.crop_size``), it reports:

(a) velocity regression error along the path: E ||v(mu(t), t) - mu'(t)||^2 per time bin, and
    relative to E ||mu'(t)||^2, on the whole latent and on training-size latent tiles;
(b) integration error: the validation solver (the checkpoint's ``solver``) vs a fine
    reference solve (rk4, ``--ref-steps`` steps) at each knot, latent MSE and relative to the
    way from z_0 to the real knot latent;
(c) drift: the generated latent at each knot (solved from t = 0) vs the real encoded knot
    latent, also when solved from the previous REAL knot (one segment only), and the decoded
    Y-PSNR at each knot: generated, oracle (the real knot latent decoded: ``ae_interp`` at a
    knot), and the reference solve;
(d) size shift: the same images generated (and the oracle decoded) tile by tile at the
    training crop size, merged, and scored like the full-size result.

Y-PSNR follows the checkpoint's ``eval.protocol``. Prints a table, writes ``--out`` (json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from degflow.core.scales import scale_key
from degflow.core.solvers import SolverSpec, integrate
from degflow.data.transforms import center_crop
from degflow.generation import Synthesizer
from degflow.metrics.image import eval_protocol
from degflow.training import instantiate
from experiments._runner import publish
from experiments.studies.knot_gap.gap import latent_error, merge_tiles, split_tiles, velocity_error_by_time


def _solve(field, z0: torch.Tensor, t0: float, times: list[float], solver: SolverSpec) -> torch.Tensor:
    """States ``[T, B, C, h, w]`` at ``times`` solving ``field`` (an image's
    :meth:`Synthesizer.field`) from ``z0`` at time ``t0``."""
    states, _ = integrate(lambda z, t: field(z, t + t0), z0, [t - t0 for t in times], solver)
    return states


def diagnose(ckpt: Path, max_images: int | None, bins: int, ref_steps: int, tile: int | None,
             device: str) -> dict:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    config = raw["config"]
    solver = SolverSpec.create(**raw["extra"]["solver"])
    del raw
    synth = Synthesizer.from_checkpoint(ckpt, device=device, solver=solver, tile_size=None)
    protocol = eval_protocol(config["eval"]["protocol"])
    data = instantiate(config["data"])
    train_scales = synth.train_scales
    knot_t = synth.time_map.knot_times(train_scales)
    kt = torch.tensor(knot_t)
    tile = tile or int(config["data"]["crop_size"])
    path = synth.spline_path
    reference = SolverSpec.create(method="rk4", steps=ref_steps, output_mode="grid")
    edges = torch.linspace(0.0, knot_t[-1], bins + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    acc: dict[str, list] = {}

    def add(key: str, value) -> None:
        acc.setdefault(key, []).append(torch.as_tensor(value, dtype=torch.float64).flatten())

    count = len(data.val) if max_images is None else min(len(data.val), max_images)
    with torch.no_grad():
        for i in range(count):
            item = data.val[i]
            scales = [float(s) for s in item["scales"].tolist()]
            real = {1.0: item["hr"], **{s: item["lr"][j] for j, s in enumerate(scales)}}
            imgs = [real[s] for s in train_scales]                           # K x [3,H,W]
            h, w = imgs[0].shape[-2:]
            h, w = h - h % tile, w - w % tile
            if h < tile or w < tile:
                print(f"skipping validation image {i}: smaller than one {tile}-px tile", flush=True)
                continue
            imgs = torch.stack([center_crop(x, h, w) for x in imgs])[:, None].to(synth.device)   # [K,1,3,H,W]
            z_list, feats = [], None
            for k in range(len(train_scales)):
                z, f = synth.rae.encode(synth._pad(imgs[k]))
                z_list.append(z)
                feats = f if k == 0 else feats
            knots = torch.stack(z_list, 1)                                    # [1,K,C,h,w]
            z0 = knots[:, 0]

            def decode(z: torch.Tensor) -> torch.Tensor:
                return synth.rae.decode(z, feats).clamp(-1, 1)[..., :h, :w]

            # (a) velocity error per time bin, whole latent and training-size latent tiles
            field = synth.field(z0, imgs[0])                                  # conditioned as the net takes it
            err, tgt = velocity_error_by_time(field, knots, kt, mids, path)  # [T,1]
            add("a_err_full", err[:, 0]); add("a_tgt_full", tgt[:, 0])
            lt = tile // synth.rae.stride
            lh, lw = h // synth.rae.stride, w // synth.rae.stride
            tiles = split_tiles(knots[..., :lh, :lw].flatten(0, 1), lt)                    # [K*n,C,lt,lt]
            tiles = tiles.view(len(train_scales), -1, *tiles.shape[1:]).transpose(0, 1)     # [n,K,C,lt,lt]
            hr_tiles = split_tiles(imgs[0], tile)                              # [n,3,tile,tile]
            field_t = synth.field(tiles[:, 0], hr_tiles)
            err_t, tgt_t = velocity_error_by_time(field_t, tiles, kt, mids, path)   # [T,n]
            add("a_err_tiles", err_t.mean(1)); add("a_tgt_tiles", tgt_t.mean(1))

            # (b) + (c): solves from t = 0 with the validation solver and the reference
            later = list(knot_t[1:])
            gen = _solve(field, z0, 0.0, later, solver)                       # [K-1,1,C,h,w]
            ref = _solve(field, z0, 0.0, later, reference)
            for k, s in enumerate(train_scales[1:], start=1):
                key = scale_key(s)
                real_z = knots[:, k]
                way = (real_z - z0).pow(2).flatten(1).mean(1)                  # [1]
                mse = latent_error(gen[k - 1], ref[k - 1], z0)[0]
                add(f"b_integration_mse_{key}", mse); add(f"b_integration_rel_{key}", mse / way)
                mse, rel = latent_error(gen[k - 1], real_z, z0)
                add(f"c_drift_mse_{key}", mse); add(f"c_drift_rel_{key}", rel)
                seg = _solve(field, knots[:, k - 1], knot_t[k - 1], [knot_t[k]], solver)[0]
                mse, rel = latent_error(seg, real_z, knots[:, k - 1])
                add(f"c_segment_mse_{key}", mse); add(f"c_segment_rel_{key}", rel)
                target = imgs[k]
                add(f"c_psnr_gen_{key}", protocol.psnr_y(decode(gen[k - 1]), target))
                add(f"c_psnr_ref_{key}", protocol.psnr_y(decode(ref[k - 1]), target))
                add(f"c_psnr_oracle_{key}", protocol.psnr_y(decode(real_z), target))
                add(f"c_psnr_segment_{key}", protocol.psnr_y(decode(seg), target))

            # (d) the same images generated / decoded tile by tile at the training crop size
            z0_t, feats_t = synth.rae.encode(hr_tiles)
            gen_t = _solve(synth.field(z0_t, hr_tiles), z0_t, 0.0, later, solver)
            for k, s in enumerate(train_scales[1:], start=1):
                key = scale_key(s)
                fake = merge_tiles(synth.rae.decode(gen_t[k - 1], feats_t).clamp(-1, 1), 1, h, w)
                z_real_t = synth.rae.encode(split_tiles(imgs[k], tile))[0]
                oracle = merge_tiles(synth.rae.decode(z_real_t, feats_t).clamp(-1, 1), 1, h, w)
                add(f"d_psnr_gen_tiles_{key}", protocol.psnr_y(fake, imgs[k]))
                add(f"d_psnr_oracle_tiles_{key}", protocol.psnr_y(oracle, imgs[k]))
            print(f"image {i + 1}/{count} ({h}x{w}) done", flush=True)

    mean = {k: torch.cat(v).mean(0) if k.startswith("a_") else torch.cat(v).mean() for k, v in
            ((k, [x[None] if k.startswith("a_") else x for x in v]) for k, v in acc.items())}
    out: dict = {
        "ckpt": str(ckpt), "images": len(acc.get("a_err_full", [])), "tile": tile, "crop": "centre, multiple of tile",
        "solver": solver.to_dict(), "reference_solver": reference.to_dict(), "protocol": protocol.to_dict(),
        "knot_times": dict(zip((scale_key(s) for s in train_scales), knot_t)),
        "velocity": {
            "t": mids.tolist(),
            "mse_full": mean["a_err_full"].tolist(), "relative_full": (mean["a_err_full"] / mean["a_tgt_full"]).tolist(),
            "mse_tiles": mean["a_err_tiles"].tolist(),
            "relative_tiles": (mean["a_err_tiles"] / mean["a_tgt_tiles"]).tolist(),
        },
        "knots": {},
    }
    for s in train_scales[1:]:
        key = scale_key(s)
        out["knots"][key] = {name: float(mean[f"{part}_{name}_{key}"]) for part, name in (
            ("b", "integration_mse"), ("b", "integration_rel"), ("c", "drift_mse"), ("c", "drift_rel"),
            ("c", "segment_mse"), ("c", "segment_rel"), ("c", "psnr_gen"), ("c", "psnr_ref"), ("c", "psnr_oracle"),
            ("c", "psnr_segment"), ("d", "psnr_gen_tiles"), ("d", "psnr_oracle_tiles"))}
        row = out["knots"][key]
        row["gap_full"] = row["psnr_oracle"] - row["psnr_gen"]
        row["gap_tiles"] = row["psnr_oracle_tiles"] - row["psnr_gen_tiles"]
    return out


def table(result: dict) -> str:
    v = result["velocity"]
    lines = [f"checkpoint {result['ckpt']}  ({result['images']} validation images, tiles {result['tile']} px)",
             "(a) velocity error E|v - mu'|^2 per t bin (relative = / E|mu'|^2)",
             "  t      mse_full  rel_full  mse_tiles rel_tiles"]
    for t, a, b, c, d in zip(v["t"], v["mse_full"], v["relative_full"], v["mse_tiles"], v["relative_tiles"]):
        lines.append(f"  {t:.3f}  {a:8.4f}  {b:8.3f}  {c:8.4f}  {d:8.3f}")
    lines.append("(b, c) at each knot: latent errors (rel = share of |z_k - z_0|^2) and decoded Y-PSNR (dB)")
    lines.append("  knot  integ_rel  drift_rel  segment_rel | gen    ref    segment oracle  gap  | tiles: gen  oracle  gap")
    for key, r in result["knots"].items():
        lines.append(f"  {key:<5} {r['integration_rel']:9.4f}  {r['drift_rel']:9.3f}  {r['segment_rel']:11.3f} | "
                     f"{r['psnr_gen']:.2f}  {r['psnr_ref']:.2f}  {r['psnr_segment']:.2f}  {r['psnr_oracle']:.2f}  "
                     f"{r['gap_full']:.2f} | {r['psnr_gen_tiles']:.2f}  {r['psnr_oracle_tiles']:.2f}  "
                     f"{r['gap_tiles']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="stage-2 checkpoint (its data config gives the validation split)")
    p.add_argument("--out", type=Path, required=True, help="json output")
    p.add_argument("--max-images", type=int, default=None, help="first N validation images (default all)")
    p.add_argument("--bins", type=int, default=10, help="time bins for (a) (default %(default)s)")
    p.add_argument("--ref-steps", type=int, default=256, help="reference solve: rk4 steps (default %(default)s)")
    p.add_argument("--tile", type=int, default=None, help="tile side in HR px for (a), (d) (default data.crop_size)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    result = diagnose(args.ckpt, args.max_images, args.bins, args.ref_steps, args.tile, args.device)
    return publish(args.out, result, table(result))


if __name__ == "__main__":
    sys.exit(main())
