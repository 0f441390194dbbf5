"""Benchmark synthesis: cost of many scales, our solvers against the authors' sampler, memory.

    python -m experiments.tools.bench_synthesis --ckpt path/to/lfm.pt            # demo val images
    python -m experiments.tools.bench_synthesis --ckpt path/to/lfm.pt --images path/to/hr_folder
    python -m experiments.tools.bench_synthesis --random-small                   # smoke test, no checkpoint
    python -m experiments.tools.bench_synthesis --memory                         # paper-size 2040x1356 peak RSS
    python -m experiments.tools.bench_synthesis --memory --memory-size 1356x2040,4096x4096   # side by side
    python -m experiments.tools.bench_synthesis --batching             # batched tiles and scales vs one at a time

Writes ``experiments/tools/results/bench_synthesis.json`` (``--out``) and prints markdown tables.

1. Scale cost: one image, 1 scale (4.0) vs 30 scales (1.1, ..., 4.0) with the same solver
   and steps, for both ``solver.output_mode`` modes: NFE, seconds of the ODE solve alone, seconds
   of encode + solve (decoding aside) and of the whole call (medians of ``--repeats`` runs).
2. Reference: a sampler doing what the authors' does (scipy ``solve_ivp`` RK45,
   rtol = atol = 1e-5, starting from z_0 at t = 1e-3, the latent moved to numpy float64 at
   every evaluation) on the same model; for each of our settings (euler / midpoint / rk4 at
   several step counts, each with ``output_mode=grid`` and ``output_mode=cubic``, dopri5): NFE,
   seconds per image and, at every scale, Y-PSNR of ours
   vs the reference output and of both vs the real LR image (demo data only). Goal: a
   fixed-step setting within 0.05 dB of the reference at every scale with at most a third
   of its NFE.
3. Memory (``--memory``): a randomly initialised paper-size model (conf/model/rae/paper.yaml,
   conf/model/lfm/paper.yaml) on a random 2040x1356 image (``--memory-size``: one or more
   HxW, each in its own subprocess, one after another), default tiling;
   peak RSS from ``resource.getrusage``.
4. Batching (``--batching``): the same random paper-size model, encode + decode time with one
   tile and one scale per network call against ``decode_batch`` / ``tile_batch`` per call
   (interleaved rounds, medians) and the largest relative difference of the images.

Not a test: timings depend on the machine; numbers are only comparable on the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]

from degflow.core.scales import expand_scales, scale_label
from degflow.core.solvers import SolverSpec
from degflow.generation import Synthesizer
from degflow.infra.files import atomic_write_text
from degflow.metrics.image import psnr_y

AUTHORS_GRID = {"start": 1.1, "stop": 4.0, "step": 0.1}
FIXED = ([("euler", n) for n in (8, 16, 32, 64)] + [("midpoint", n) for n in (4, 8, 16, 32)]
         + [("rk4", n) for n in (2, 4, 8, 16, 32)])
#: (method, steps, output_mode): every fixed-step setting with both output modes, then dopri5
SETTINGS = ([(m, n, "grid") for m, n in FIXED] + [(m, n, "cubic") for m, n in FIXED]
            + [("dopri5", None, "grid")])
REF_T0 = 1e-3
REF_TOL = 1e-5


# ------------------------------------------------------------------------------ inputs
def random_small_checkpoint(path: Path, seed: int = 0) -> Path:
    """A stage-2 checkpoint of the small presets, randomly initialised, velocity output
    layer re-drawn so that v != 0 (written through ``LFMStage.state()``)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from degflow.core.losses import LossSettings
    from degflow.infra.checkpoint import save_checkpoint
    from degflow.training.lfm import LFMStage, SplineSettings

    torch.manual_seed(seed)
    rae = instantiate(OmegaConf.load(REPO / "conf/model/rae/small.yaml"))
    velocity = instantiate(OmegaConf.load(REPO / "conf/model/lfm/small.yaml"), _convert_="all")
    with torch.no_grad():
        velocity.conv_out.weight.normal_(0.0, 0.3)
    stage = LFMStage(rae, velocity, (1.0, 2.0, 4.0), SplineSettings(), LossSettings(lpips_weight=0.0),
                     SolverSpec.create("dopri5"), val_set=None, val_scales=(1.0, 2.0, 4.0),
                     device=torch.device("cpu"), rae_source={"path": "random"}, lpips_loss=None, lpips_metric=None)
    save_checkpoint(path, {"kind": "lfm", "step": 0, "optimizer": None, "scheduler": None, "rng": None,
                           "config": {}, "overrides": [], **stage.state()})
    return path


def load_images(args, scales: list[float]) -> list[dict]:
    """``[{"name", "hr": [1,3,H,W], "real": {s: [1,3,H,W]} or {}}]``."""
    if args.images:
        from degflow.data.images import find_images, read_image

        paths = find_images(args.images)[: args.max_images]
        out = []
        for p in paths:
            x = read_image(p)
            h, w = x.shape[-2:]
            side = args.max_side
            top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
            out.append({"name": p.name, "hr": x[None, :, top:top + side, left:left + side], "real": {}})
        return out
    from degflow.data import build_data

    bundle = build_data("demo", train_scales=(1, 2, 4), val_scales=(1.0, *[s for s in scales if s != 1.0]),
                        val_max_size=args.max_side, samples_per_epoch=1)
    out = []
    for i in range(min(len(bundle.val), args.max_images)):
        item = bundle.val[i]
        real = {float(s): item["lr"][j][None] for j, s in enumerate(item["scales"].tolist())}
        out.append({"name": item["name"], "hr": item["hr"][None], "real": real})
    return out


# ------------------------------------------------------------------------------ reference
def reference_generate(synth: Synthesizer, hr: torch.Tensor, scales: list[float]) -> tuple[dict, int, float]:
    """The authors' sampler: scipy RK45 (rtol = atol = 1e-5) from z_0 placed at t = 1e-3,
    float64 numpy state, the latent moved to torch and back at every evaluation."""
    from scipy.integrate import solve_ivp

    times = synth.scale_times(scales)
    with torch.no_grad():
        h, w = hr.shape[-2:]
        z0, feats = synth.rae.encode(synth._pad(hr.to(synth.device)))
        shape = z0.shape
        nfe = 0

        def f(t, y):
            nonlocal nfe
            nfe += 1
            z = torch.from_numpy(y.reshape(shape)).to(synth.device, torch.float32)
            v = synth._velocity(z, torch.full((shape[0],), float(t), device=synth.device))
            return v.cpu().numpy().astype(np.float64).reshape(-1)

        t_eval = sorted({max(t, REF_T0) for t in times.values()})
        start = time.perf_counter()
        sol = solve_ivp(f, (REF_T0, t_eval[-1]), z0.cpu().numpy().astype(np.float64).reshape(-1),
                        method="RK45", rtol=REF_TOL, atol=REF_TOL, t_eval=t_eval)
        solve = time.perf_counter() - start
        images = {}
        for s, t in times.items():
            y = sol.y[:, t_eval.index(max(t, REF_T0))]
            z = torch.from_numpy(y.reshape(shape)).to(synth.device, torch.float32)
            images[s] = synth.rae.decode(z, feats).clamp(-1, 1)[..., :h, :w].cpu()
    return images, nfe, solve


# ------------------------------------------------------------------------------ sections
def scale_cost(synth: Synthesizer, hr: torch.Tensor, repeats: int) -> list[dict]:
    many = expand_scales(AUTHORS_GRID)
    rows = []
    settings = [("rk4", 16, "grid"), ("rk4", 16, "cubic"), ("rk4", 32, "grid"), ("rk4", 32, "cubic"),
                ("euler", 64, "grid"), ("euler", 64, "cubic")]
    for method, steps, mode in settings:
        spec = SolverSpec.create(method, steps=steps, output_mode=mode)
        row = {"solver": f"{method}/{steps}/{mode}"}
        cases = (("1", [4.0]), ("30", many))
        runs: dict[str, list] = {label: [] for label, _ in cases}
        for label, scales in cases:
            synth.generate(hr, scales, solver=spec)                                   # warm-up
        for _ in range(repeats):
            # 1 and 30 scales alternate, so a machine that slows down or speeds up during the
            # benchmark affects both sides of the ratio alike
            for label, scales in cases:
                res = synth.generate(hr, scales, solver=spec)
                runs[label].append((res, _encode_seconds(synth, hr)))
        for label, _ in cases:
            row[f"nfe_{label}"] = runs[label][0][0].nfe
            row[f"solve_s_{label}"] = float(np.median([r.solve_seconds for r, _ in runs[label]]))
            row[f"encode_solve_s_{label}"] = float(np.median([r.solve_seconds + e for r, e in runs[label]]))
            row[f"total_s_{label}"] = float(np.median([r.seconds for r, _ in runs[label]]))
        row["nfe_ratio"] = row["nfe_30"] / row["nfe_1"]
        row["solve_ratio"] = row["solve_s_30"] / row["solve_s_1"]
        row["encode_solve_ratio"] = row["encode_solve_s_30"] / row["encode_solve_s_1"]
        row["total_ratio"] = row["total_s_30"] / row["total_s_1"]
        rows.append(row)
    return rows


def _encode_seconds(synth: Synthesizer, hr: torch.Tensor) -> float:
    with torch.no_grad():
        synth._sync()
        start = time.perf_counter()
        synth.rae.encode(synth._pad(hr.to(synth.device)))
        synth._sync()
        return time.perf_counter() - start


def against_reference(synth: Synthesizer, images: list[dict], scales: list[float]) -> dict:
    per_image = []
    for item in images:
        start = time.perf_counter()
        ref, nfe, _ = reference_generate(synth, item["hr"], scales)
        seconds = time.perf_counter() - start
        per_image.append({"ref": ref, "ref_nfe": nfe, "ref_s": seconds})
    result = {"reference": {"method": "scipy RK45", "rtol": REF_TOL, "atol": REF_TOL, "t0": REF_T0,
                            "nfe": float(np.mean([p["ref_nfe"] for p in per_image])),
                            "seconds_per_image": float(np.mean([p["ref_s"] for p in per_image]))},
              "settings": []}
    has_real = all(item["real"] for item in images)
    if has_real:
        result["reference"]["psnr_vs_real"] = {
            scale_label(s): float(np.mean([float(psnr_y(p["ref"][s], item["real"][s]))
                                           for p, item in zip(per_image, images)])) for s in scales}
    for method, steps, mode in SETTINGS:
        spec = SolverSpec.create(method, steps=steps, output_mode=mode)
        nfes, secs, vs_ref, vs_real = [], [], {s: [] for s in scales}, {s: [] for s in scales}
        for item, p in zip(images, per_image):
            res = synth.generate(item["hr"], scales, solver=spec)
            nfes.append(res.nfe)
            secs.append(res.seconds)
            for s in scales:
                vs_ref[s].append(float(psnr_y(res.images[s].cpu(), p["ref"][s])))
                if has_real:
                    vs_real[s].append(float(psnr_y(res.images[s].cpu(), item["real"][s])))
        row = {"solver": method if steps is None else f"{method}/{steps}/{mode}", "nfe": float(np.mean(nfes)),
               "seconds_per_image": float(np.mean(secs)),
               "psnr_vs_reference": {scale_label(s): float(np.mean(v)) for s, v in vs_ref.items()}}
        if has_real:
            row["psnr_vs_real"] = {scale_label(s): float(np.mean(v)) for s, v in vs_real.items()}
            row["max_abs_delta_db_vs_reference_metric"] = max(
                abs(row["psnr_vs_real"][k] - result["reference"]["psnr_vs_real"][k]) for k in row["psnr_vs_real"])
        row["min_psnr_vs_reference"] = min(row["psnr_vs_reference"].values())
        result["settings"].append(row)
    ref_nfe = result["reference"]["nfe"]
    ok = [r for r in result["settings"] if not r["solver"].startswith("dopri5") and r["nfe"] <= ref_nfe / 3
          and (r.get("max_abs_delta_db_vs_reference_metric", 0.0) <= 0.05)]
    result["goal"] = ("fixed-step setting with |delta Y-PSNR vs real| <= 0.05 dB at every scale (vs the "
                      "reference's) and NFE <= reference NFE / 3" if has_real else
                      "no real LR images: only PSNR vs the reference is reported")
    result["cheapest_meeting_goal"] = min(ok, key=lambda r: r["nfe"])["solver"] if ok and has_real else None
    return result


MEMORY_CHILD = r"""
import json, resource, sys, time, torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from degflow.generation import Synthesizer
from degflow.core.solvers import SolverSpec
from degflow.core.timemap import TimeMap
h, w, n_scales = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
rae = instantiate(OmegaConf.load(sys.argv[1] + "/conf/model/rae/paper.yaml"))
vel = instantiate(OmegaConf.load(sys.argv[1] + "/conf/model/lfm/paper.yaml"), _convert_="all")
synth = Synthesizer(rae, vel, TimeMap.nominal([1, 2, 4]), SolverSpec.create("euler", steps=1))
x = torch.rand(1, 3, h, w) * 2 - 1
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scales = [1.0 + 3.0 * (i + 1) / n_scales for i in range(n_scales)]
start = time.perf_counter()
res = synth.generate(x, scales)
print(json.dumps({"height": h, "width": w, "scales": n_scales, "tile_size": synth.tile_size,
                  "tile_overlap": synth.tile_overlap, "tiles": res.tiles, "nfe": res.nfe,
                  "solver": "euler/1", "seconds": time.perf_counter() - start,
                  "rss_after_model_build_gib": base / 2**20,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "threads": torch.get_num_threads()}))
"""


def memory(height: int, width: int, n_scales: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(REPO), str(height), str(width), str(n_scales)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "platform": platform.platform(),
            "processor": platform.processor()}


def batching(args) -> dict:
    """Paper-size random model on a random ``--batching-size`` image at ``--batching-scales``
    scales, tiled (``--batching-tile``): ``generate`` with one tile and one scale per network
    call against ``decode_batch`` / ``tile_batch`` = ``--batching-batch``, interleaved rounds;
    medians, their ratio and the largest relative difference of the images."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from degflow.core.timemap import TimeMap

    torch.manual_seed(0)
    rae = instantiate(OmegaConf.load(REPO / "conf/model/rae/paper.yaml"))
    vel = instantiate(OmegaConf.load(REPO / "conf/model/lfm/paper.yaml"), _convert_="all")
    h, w = (int(v) for v in args.batching_size.split("x"))
    x = torch.rand(1, 3, h, w) * 2 - 1
    n = args.batching_scales
    scales = [1.0 + 3.0 * (i + 1) / n for i in range(n)]
    batch = args.batching_batch
    synths = {k: Synthesizer(rae, vel, TimeMap.nominal([1, 2, 4]), SolverSpec.create("euler", steps=2),
                             device=args.device, tile_size=args.batching_tile, tile_overlap=args.batching_tile // 4,
                             decode_batch=b, tile_batch=b) for k, b in (("one", 1), ("batched", batch))}
    seconds: dict[str, list[float]] = {k: [] for k in synths}
    images = {}
    load = [round(v, 2) for v in os.getloadavg()]
    for _ in range(args.repeats):
        for k, synth in synths.items():
            res = synth.generate(x, scales)
            seconds[k].append(res.seconds - res.solve_seconds)          # encode + decode + blending
            images[k] = res.images
    rel = max(float((images["batched"][s] - images["one"][s]).abs().max()) / float(images["one"][s].abs().max())
              for s in scales)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {"image": f"{w}x{h}", "scales": n, "tile_size": args.batching_tile, "tiles": res.tiles,
            "batch": batch, "device": args.device, "threads": torch.get_num_threads(),
            "seconds_without_solve": seconds, "median_one": med["one"], "median_batched": med["batched"],
            "one_over_batched": med["one"] / med["batched"], "max_rel_diff": rel,
            "loadavg_before": load, "loadavg_after": [round(v, 2) for v in os.getloadavg()]}


# ------------------------------------------------------------------------------ report
def markdown(report: dict) -> str:
    lines = []
    if "scale_cost" in report:
        lines += ["### Cost of 30 scales vs 1 (one image, same solver and steps; medians)", "",
                  "| solver/steps/output_mode | NFE 1 | NFE 30 | encode+solve 1 (s) | encode+solve 30 (s) | ratio | "
                  "with decode 1 (s) | with decode 30 (s) | ratio |", "|---|---|---|---|---|---|---|---|---|"]
        for r in report["scale_cost"]:
            lines.append(f"| {r['solver']} | {r['nfe_1']} | {r['nfe_30']} | {r['encode_solve_s_1']:.3f} | "
                         f"{r['encode_solve_s_30']:.3f} | {r['encode_solve_ratio']:.2f} | {r['total_s_1']:.3f} | "
                         f"{r['total_s_30']:.3f} | {r['total_ratio']:.2f} |")
        lines.append("")
    if "reference" in report:
        ref = report["reference"]["reference"]
        lines += [f"### Against the reference sampler (scipy RK45, tol {ref['rtol']:g}, t0 {ref['t0']:g}): "
                  f"NFE {ref['nfe']:.0f}, {ref['seconds_per_image']:.2f} s/image", "",
                  "| solver/steps/output_mode | NFE | s/image | min PSNR vs ref (dB) | max abs delta vs real (dB) |",
                  "|---|---|---|---|---|"]
        for r in report["reference"]["settings"]:
            delta = r.get("max_abs_delta_db_vs_reference_metric")
            lines.append(f"| {r['solver']} | {r['nfe']:.0f} | {r['seconds_per_image']:.3f} | "
                         f"{r['min_psnr_vs_reference']:.2f} | {'n/a' if delta is None else f'{delta:.3f}'} |")
        lines += ["", f"cheapest fixed-step setting meeting the goal: {report['reference']['cheapest_meeting_goal']}",
                  ""]
    if "batching" in report:
        b = report["batching"]
        lines += [f"### Batched tiles and scales: paper-size model, {b['image']}, {b['scales']} scales, tiles "
                  f"{b['tile_size']} ({b['tiles']} tiles), {b['device']} with {b['threads']} thread(s): encode + "
                  f"decode {b['median_one']:.2f} s one at a time, {b['median_batched']:.2f} s with {b['batch']} per "
                  f"call (x{b['one_over_batched']:.2f}); images differ by at most {b['max_rel_diff']:.1e} relative",
                  ""]
    for m in report.get("memory", {}).values():
        lines += [f"### Memory: paper-size model, {m['width']}x{m['height']}, {m['scales']} scale(s), tiles "
                  f"{m['tile_size']}/{m['tile_overlap']} ({m['tiles']} tiles): peak RSS {m['peak_rss_gib']:.2f} GiB "
                  f"({m['seconds']:.0f} s on {m['threads']} threads)", ""]
    return "\n".join(lines)


def write_report(args, report: dict) -> None:
    """Write ``report`` to ``args.out``, keeping the sections of an earlier run that this one did not rerun."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.batching:
        report = {**old, "batching": report["batching"]}
    elif args.memory:                       # keep the other sections of an earlier run, and vice versa
        report = {**old, "memory": {**old.get("memory", {}), **report["memory"]}}
    else:
        if "memory" in old:
            report["memory"] = old["memory"]
        if args.only is not None:                       # keep the section that was not rerun
            if old.get("checkpoint", {}).get("sha256") != report["checkpoint"]["sha256"]:
                sys.exit(f"--only: {args.out} holds results of another checkpoint; rerun every section")
            for key in ("scale_cost", "reference"):
                if key not in report and key in old:
                    report[key] = old[key]
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="stage-2 (lfm) checkpoint")
    parser.add_argument("--random-small", action="store_true", help="build a random small checkpoint (smoke test)")
    parser.add_argument("--images", type=Path, help="folder of HR images (default: the demo val images)")
    parser.add_argument("--max-images", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=256, help="center crop of each image (pixels)")
    parser.add_argument("--scales", default="1.5,2,2.5,3,3.5,4", help="scales of the reference comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("scale_cost", "reference"),
                        help="run one section and keep the other sections of the results file")
    parser.add_argument("--memory", action="store_true", help="measure only the paper-size memory cases")
    parser.add_argument("--memory-size", default="1356x2040",
                        help="HxW of the memory case; comma-separated for several, one subprocess each, in order "
                             "(e.g. 1356x2040,4096x4096)")
    parser.add_argument("--memory-scales", type=int, default=1)
    parser.add_argument("--batching", action="store_true",
                        help="measure only batched tiles and scales (decode_batch / tile_batch) against one at a time")
    parser.add_argument("--batching-size", default="512x768", help="HxW of the --batching image")
    parser.add_argument("--batching-scales", type=int, default=8)
    parser.add_argument("--batching-tile", type=int, default=256, help="tile_size of --batching")
    parser.add_argument("--batching-batch", type=int, default=4, help="decode_batch and tile_batch of --batching")
    parser.add_argument("--out", type=Path, default=REPO / "experiments/tools/results/bench_synthesis.json")
    args = parser.parse_args()

    report: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "torch": torch.__version__, "threads": torch.get_num_threads(),
                                "device": args.device}}
    if args.batching:
        report["batching"] = batching(args)
    elif args.memory:
        sizes = [tuple(int(v) for v in size.split("x")) for size in args.memory_size.split(",")]
        report["memory"] = {}
        for h, w in sizes:  # one child process per size; the file is rewritten after each
            load = [round(x, 2) for x in os.getloadavg()]
            report["memory"][f"{h}x{w}_{args.memory_scales}_scales"] = {
                **memory(h, w, args.memory_scales), "loadavg_before": load,
                "loadavg_after": [round(x, 2) for x in os.getloadavg()], "sizes_in_this_run": args.memory_size}
            write_report(args, report)
            print(json.dumps(report["memory"][f"{h}x{w}_{args.memory_scales}_scales"]), flush=True)
    else:
        if args.random_small == bool(args.ckpt):
            parser.error("give exactly one of --ckpt or --random-small")
        tmp = None
        if args.random_small:
            tmp = tempfile.TemporaryDirectory()
            args.ckpt = random_small_checkpoint(Path(tmp.name) / "random_small.pt")
        synth = Synthesizer.from_checkpoint(args.ckpt, device=args.device)
        scales = [float(s) for s in args.scales.split(",")]
        images = load_images(args, scales)
        report["checkpoint"] = {"path": "random-small" if args.random_small else str(args.ckpt),
                                "sha256": synth.checkpoint_sha256}
        report["images"] = {"names": [i["name"] for i in images], "sizes": [list(i["hr"].shape[-2:]) for i in images],
                            "source": str(args.images) if args.images else "demo val (degflow.data.demo)"}
        if args.only in (None, "scale_cost"):
            report["scale_cost"] = scale_cost(synth, images[0]["hr"], args.repeats)
        if args.only in (None, "reference"):
            report["reference"] = against_reference(synth, images, scales)
        if tmp is not None:
            tmp.cleanup()
    write_report(args, report)
    print(markdown(report))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
