"""Benchmark the online degradation inside an SR training step: HR crops per second of each
degradation and its share of the step.

    python -m experiments.tools.bench_online                               # CPU, the threads torch has
    OMP_NUM_THREADS=1 python -m experiments.tools.bench_online --threads 1
    python -m experiments.tools.bench_online --device cuda --batch 32 --precision fp32,bf16
    python -m experiments.tools.bench_online --ckpt path/to/lfm.pt         # a trained model's architecture
    python -m experiments.tools.bench_online --solver default,euler/4      # synthesize.py's solver and a cheap one

Writes ``experiments/tools/results/bench_online.json`` (``--out``; one entry per device kind) and prints
a markdown table. Not a test: timings depend on the machine and its load (recorded: ``os.getloadavg``
before and after).

What one SR training step is here: the comparison's (``conf/sr_compare.yaml``): ``--batch`` random
HR crops of the demo photos (image, position, flip / rotation) -> :class:`degflow.sr.online.OnlineBatcher`
(a scale per batch uniform in ``--scale-range``, the degradation of the whole crop, the aligned
``--lr-patch`` LR patch) -> the ``liif`` network's L1 step on ``--query-pixels`` HR pixels per sample
(forward, backward, Adam). Timed apart: **degrade** (the batcher call: degradation + patch cut) and
**SR step** (everything else of the step, crop sampling included); share = degrade / (degrade + SR step).

Degradations: ``degflow`` (a :class:`~degflow.generation.Degrader`: ``--ckpt``, or randomly initialised
networks of ``conf/model/{rae,lfm}/small.yaml`` with ``--cond-channels``; the cost of a solve does not
depend on the weights; one entry per ``--precision`` and ``--solver``: ``default`` = synthesize.py's
rk4/16/cubic, 65 NFE; ``euler/4`` = euler, 4 steps, cubic output, 5 NFE, as ``online.solver`` of the comparison),
``procedural`` (Real-ESRGAN second order; its JPEG step always on the CPU), ``bicubic``. Configurations are
interleaved round by round (``--rounds`` x ``--steps`` steps after ``--warmup``), so load from other
processes hits all of them alike; the table reports medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]

from degflow.core.solvers import SolverSpec
from degflow.core.timemap import TimeMap
from degflow.data.demo import demo_image_paths
from degflow.data.images import read_image
from degflow.generation import DEFAULT_SOLVER, Degrader, Synthesizer
from degflow.infra.files import atomic_write_text
from degflow.infra.runtime import resolve_device
from degflow.models.rae import RAE
from degflow.models.sr import build_sr_model
from degflow.models.unet import VelocityUNet
from degflow.sr.fit import SRTrainSettings, sr_loss
from degflow.sr.online import (
    BicubicOnline,
    DegflowOnline,
    OnlineBatcher,
    ProceduralOnline,
    ScaleSampler,
    random_hr_crop,
)


def _preset(kind: str) -> dict:
    cfg = yaml.safe_load((REPO / "conf" / "model" / kind / "small.yaml").read_text())
    cfg.pop("_target_")
    return cfg


def parse_solver(text: str) -> SolverSpec:
    """``default`` (synthesize.py's solver) or ``method/steps`` (cubic output), e.g. ``euler/4``."""
    if text == "default":
        return DEFAULT_SOLVER
    method, _, steps = text.partition("/")
    if not steps.isdigit():
        raise SystemExit(f"--solver: {text!r} is neither 'default' nor method/steps (e.g. euler/4)")
    return SolverSpec.create(method, steps=int(steps), output_mode="cubic")


def degflow_degrader(args: argparse.Namespace, device: torch.device, precision: str,
                     solver: SolverSpec = DEFAULT_SOLVER) -> Degrader:
    """The checkpoint's model, or random small networks (the architecture sets the cost)."""
    if args.ckpt:
        return Degrader.from_checkpoint(args.ckpt, device=device, solver=solver, precision=precision)
    torch.manual_seed(0)
    rae = RAE(**_preset("rae"))
    velocity = VelocityUNet(**{**_preset("lfm"), "cond_channels": args.cond_channels})
    synth = Synthesizer(rae, velocity, TimeMap.nominal([1.0, 2.0, 4.0]), solver, device=device,
                        precision=precision)
    return Degrader(synth)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--ckpt", default=None, help="a stage-2 checkpoint (default: random small networks)")
    ap.add_argument("--cond-channels", type=int, default=0, help="random networks: the velocity's condition")
    ap.add_argument("--degradations", default="degflow,procedural,bicubic")
    ap.add_argument("--precision", default="fp32", help="degflow: fp32 and/or bf16, comma separated")
    ap.add_argument("--solver", default="default", help="degflow: default and/or method/steps, comma separated")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr-patch", type=int, default=24)
    ap.add_argument("--query-pixels", type=int, default=1024)
    ap.add_argument("--scale-range", default="1,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "tools" / "results" / "bench_online.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    low, high = (float(v) for v in args.scale_range.split(","))
    images = [((read_image(p) + 1) * 127.5).round().to(torch.uint8) for p in demo_image_paths()[0]]

    configs = {}
    for name in args.degradations.split(","):
        if name == "degflow":
            for prec in args.precision.split(","):
                for text in args.solver.split(","):
                    label = f"degflow {prec}" + ("" if text == "default" else f" {text}")
                    configs[label] = DegflowOnline(degflow_degrader(args, device, prec, parse_solver(text)))
        elif name == "procedural":
            configs["procedural"] = ProceduralOnline()
        elif name == "bicubic":
            configs["bicubic"] = BicubicOnline()
        else:
            raise SystemExit(f"--degradations: {name!r} is not one of degflow, procedural, bicubic")
    settings = SRTrainSettings(batch_size=args.batch, lr_patch=args.lr_patch, query_pixels=args.query_pixels)
    runs = {}
    for key, deg in configs.items():
        batcher = OnlineBatcher(deg, ScaleSampler(low, high), args.lr_patch)
        torch.manual_seed(0)
        model = build_sr_model("liif", None, n_feats=32, n_blocks=4, mlp_hidden=64, mlp_layers=3).to(device)
        runs[key] = {"batcher": batcher, "model": model, "opt": torch.optim.Adam(model.parameters(), lr=2e-4),
                     "g": torch.Generator().manual_seed(0), "degrade": [], "step": []}

    def one_step(r: dict) -> tuple[float, float]:
        g, batcher = r["g"], r["batcher"]
        _sync(device)
        t0 = time.perf_counter()
        picks = [images[int(torch.randint(len(images), (1,), generator=g))] for _ in range(args.batch)]
        crops = torch.stack([random_hr_crop(x, batcher.hr_crop, g) for x in picks]).to(device)
        _sync(device)
        t1 = time.perf_counter()
        batch = batcher(crops, g)
        _sync(device)
        t2 = time.perf_counter()
        loss = sr_loss(r["model"], batch.pairs(), settings.query_pixels, g)
        r["opt"].zero_grad(set_to_none=True)
        loss.backward()
        r["opt"].step()
        _sync(device)
        t3 = time.perf_counter()
        return t2 - t1, (t1 - t0) + (t3 - t2)

    load_before = os.getloadavg()
    for r in runs.values():
        for _ in range(args.warmup):
            one_step(r)
    for _ in range(args.rounds):
        for r in runs.values():
            d = s = 0.0
            for _ in range(args.steps):
                a, b = one_step(r)
                d, s = d + a, s + b
            r["degrade"].append(d / args.steps)
            r["step"].append(s / args.steps)
    load_after = os.getloadavg()

    rows = {}
    for key, r in runs.items():
        d, s = statistics.median(r["degrade"]), statistics.median(r["step"])
        shares = [a / (a + b) for a, b in zip(r["degrade"], r["step"])]
        rows[key] = {"degrade_s": d, "sr_step_s": s, "hr_crops_per_s": args.batch / d, "share": statistics.median(shares),
                     "hr_crop": r["batcher"].hr_crop, "degrade_rounds": r["degrade"], "step_rounds": r["step"]}
    entry = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
             else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
             "torch": torch.__version__, "cuda": torch.version.cuda, "load_before": list(load_before),
             "load_after": list(load_after), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
             "rows": rows}
    record = json.loads(args.out.read_text()) if args.out.is_file() else {}
    record[device.type] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"device {entry['device']} ({entry['device_name']}), {entry['threads']} thread(s), batch {args.batch}, "
          f"LR patch {args.lr_patch}, scales U({low:g}, {high:g}) per batch; load average {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f}")
    print("\n| degradation | HR crop (px) | degrade s / batch | HR crops / s | SR step s (rest) | degrade share of the step |")
    print("|---|---|---|---|---|---|")
    for key, row in rows.items():
        print(f"| {key} | {row['hr_crop']} | {row['degrade_s']:.4f} | {row['hr_crops_per_s']:.1f} | "
              f"{row['sr_step_s']:.4f} | {100 * row['share']:.0f} % |")
    print(f"\nwrote {args.out}")
    return record


if __name__ == "__main__":
    main()
