"""Benchmark training throughput: steps/s and a per-part breakdown of both stages, and the
stage-2 step against a reference step that does what the authors' loop does.

    python -m experiments.tools.bench_training                       # CPU: small + paper presets
    python -m experiments.tools.bench_training --ours fp32,fp32+channels_last,bf16   # layouts side by side
    python -m experiments.tools.bench_training --device cuda --ours bf16+channels_last --compile
    python -m experiments.tools.bench_training --against main --out /tmp/against.json   # vs another revision

Writes ``experiments/tools/results/bench_training.json`` (``--out``; one entry per device kind) and
prints markdown tables. Not a test: timings depend on the machine.

What runs (randomly initialised networks of ``conf/model/{rae,lfm}/{small,paper}.yaml``; the
cost of a step does not depend on the weights), on the demo photos downscaled to
``--max-side`` and held in memory:

- **RAE step** (stage 1, as :class:`degflow.training.rae.RAEStage`): data, encoder forward
  (HR + the picked target), decoder forward, backward, optimizer.
- **LFM step, ours** (:class:`degflow.training.lfm.LFMStage` with ``stage.latent_cache``):
  knot latents from the latent cache, one HR pass for the decoder's skip features
  (``RAE.features``), velocity forward, Taylor extrapolation, decoder + LPIPS (VGG) forward,
  their backward, velocity backward, fused Adam (as ``fit`` builds it); one configuration per
  ``--ours`` variant: fp32 or bf16 autocast, optionally ``+channels_last`` (NHWC weights and
  activations of the velocity network, the RAE and LPIPS, as ``channels_last=true`` does in
  training: the same function, another memory layout); ``--compile`` applies to all of ours.
  The frozen RAE and LPIPS run as the stage holds them (bf16: once cast to bf16,
  :func:`degflow.training.accel.held_for_precision`; ``+recast`` keeps them fp32, so autocast
  casts them at every call, as before), the latent cache resident on a GPU when it fits
  (:func:`degflow.training.latent_cache.place_latent_cache`).
- **LFM step, reference**: what the authors' ``training_step`` does: every image of the
  crop tuple (HR, x2, x3, x4; x3 is encoded and then dropped) through the full encoder at
  every step, fp32, no cache, unaligned crops, torch's default (unfused) Adam; the rest is the
  same computation.

The backward pass is split exactly: first the perceptual term back to the extrapolated
latent (decoder + LPIPS backward), then that gradient and the flow-matching loss through the
velocity network (velocity backward); the summed gradients equal ``loss.backward()``.
Configurations are interleaved round by round (``--rounds`` x ``--steps`` steps each, after
``--warmup`` steps) so load from other processes hits all of them alike; the tables report
medians over rounds and, for ours vs reference, the median of the per-round ratios. Batches
come from ``--workers`` DataLoader workers (default as training's ``num_workers=auto``); the
"data" part is the wait for the next batch, and ``data_wait_share`` its share of the step.
``--against REV`` alternates whole runs of the benchmark between a temporary checkout of
``REV`` and this one and reports the ratio of their seconds per step (same machine, same run). ``--profile N``
adds one step of each configuration under torch.profiler (its N costliest operators).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]

from degflow.core.losses import LossSettings, flow_matching_loss, taylor_extrapolate
from degflow.core.solvers import SolverSpec
from degflow.core.spline import evaluate_path
from degflow.data.demo import demo_data
from degflow.infra.cluster import resolve_workers
from degflow.infra.files import atomic_write_text
from degflow.infra.runtime import autocast, resolve_device
from degflow.metrics.perceptual import load_lpips
from degflow.models.rae import RAE
from degflow.models.unet import VelocityUNet
from degflow.training.accel import accelerate
from degflow.training.latent_cache import load_or_build_latent_cache, place_latent_cache
from degflow.training.lfm import LFMStage, SplineSettings, aligned_training_set
from degflow.training.sampling import train_batches

WEIGHTS = REPO.parent / "shared" / "weights" / "vgg16_features.pth"


def preset(kind: str, name: str) -> dict:
    cfg = yaml.safe_load((REPO / "conf" / "model" / kind / f"{name}.yaml").read_text())
    cfg.pop("_target_")
    return cfg


class Clock:
    """Per-part wall time of one step; synchronises CUDA before every reading."""

    def __init__(self, device: torch.device):
        self.device, self.parts = device, {}
        self.last = self.start = self.now()

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def mark(self, part: str) -> None:
        t = self.now()
        self.parts[part] = self.parts.get(part, 0.0) + t - self.last
        self.last = t


# ---------------------------------------------------------------------------- stage 1
def rae_step(rae, batches, optimizer, clock: Clock, precision: str) -> None:
    batch = next(batches)
    clock.mark("data")
    hr, lr = batch["hr"], batch["lr"]
    with autocast(clock.device, precision):
        images = torch.cat([hr[:, None], lr], dim=1)
        pick = torch.randint(images.shape[1], (hr.shape[0],), device=hr.device)
        target = images[torch.arange(hr.shape[0], device=hr.device), pick]
        _, hr_feats = rae.encode(hr)
        z, _ = rae.encode(target)
        clock.mark("encoder fwd")
        recon = rae.decode(z, hr_feats)
        loss = torch.nn.functional.mse_loss(recon.float(), target.float())
        clock.mark("decoder fwd")
    loss.backward()
    clock.mark("backward (enc+dec)")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    clock.mark("optimizer")


# ---------------------------------------------------------------------------- stage 2
def lfm_step(stage: LFMStage, batches, optimizer, clock: Clock, precision: str, reference: bool) -> None:
    batch = next(batches)
    clock.mark("data")
    hr, lr = batch["hr"], batch["lr"]
    b = hr.shape[0]
    with autocast(clock.device, precision):
        with torch.no_grad():
            images = torch.cat([hr[:, None], lr], dim=1)                      # [B,K',3,H,W]
            if reference:  # HR, x2, x3, x4 all encoded; x3 dropped (authors' training_step)
                latents, hr_feats = stage.encode_knots(images)
                keep = [0, 1, 3]
                knots, images = latents[:, keep], images[:, keep]
            else:
                knots = stage.latent_cache.crops(batch["where"], hr.shape[-1]).to(hr.device)
                hr_feats = stage.rae_step.features(hr)
        clock.mark("encoder (knots + HR skips)")
        knot_times = stage.knots()
        t = knot_times[0] + torch.rand(b, device=hr.device) * (knot_times[-1] - knot_times[0])
        point = evaluate_path(stage.spline.path, knot_times, knots, t)
        v = stage.velocity(point.value, t)
        fm = flow_matching_loss(v, point.d1).mean()
        z_hat = taylor_extrapolate(point, v.float(), point.right_time - t, stage.loss_settings.taylor_order)
        clock.mark("velocity fwd")
        z_leaf = z_hat.detach().requires_grad_()
        x_hat = stage.rae_step.decode(z_leaf, hr_feats)
        target = images[torch.arange(b, device=hr.device), point.segment + 1]
        perceptual = stage.lpips_loss(x_hat.float(), target.float()).mean()
        clock.mark("decoder+LPIPS fwd")
    (stage.loss_settings.lpips_weight * perceptual).backward()
    clock.mark("decoder+LPIPS bwd")
    torch.autograd.backward([fm, z_hat], [torch.ones_like(fm), z_leaf.grad])
    clock.mark("velocity bwd")
    torch.nn.utils.clip_grad_norm_(stage.trainable_parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    clock.mark("optimizer")


# ------------------------------------------------------------------------------ setup
def build(args, device: torch.device) -> tuple[dict, dict]:
    """Runnable configurations ``{name: step()}`` and one-time costs (cache builds)."""
    demo = yaml.safe_load((REPO / "conf" / "data" / "demo.yaml").read_text())
    demo.pop("_target_")
    demo.update(crop_size=args.crop, samples_per_epoch=10**6, max_side=args.max_side, val_max_size=64)
    data3 = demo_data(**{**demo, "train_scales": [1, 2, 3, 4], "val_scales": [1, 2, 3, 4]})
    data2 = demo_data(**{**demo, "train_scales": [1, 2, 4], "val_scales": [1, 2, 4]})
    if args.records:
        for d in (data3, data2):
            d.train.records = d.train.records[:args.records]
    lpips = load_lpips("vgg", str(args.lpips_weights) if args.lpips_weights else None, device=device,
                       pooling=LossSettings().lpips_pooling)
    steps, once = {}, {}
    for name in args.presets:
        torch.manual_seed(0)
        batch = args.batch[name]
        # stage 1
        rae = accelerate(RAE(**preset("rae", name)).to(device), False, args.compile)
        opt = torch.optim.Adam(rae.parameters(), lr=1e-4, betas=(0.5, 0.9), fused=True)
        batches = train_batches(data2.train, 0, 0, batch, args.workers, device)
        steps[f"rae {name}"] = (lambda r=rae, bt=batches, o=opt: lambda c: rae_step(r, bt, o, c, "fp32"))()
        # stage 2: the frozen RAE, one velocity network per configuration
        frozen = RAE(**preset("rae", name)).to(device).eval().requires_grad_(False)
        t0 = time.perf_counter()
        before = set(args.cache_dir.glob("*.pt")) if args.cache_dir and args.cache_dir.is_dir() else set()
        cache = place_latent_cache(load_or_build_latent_cache(
            frozen, data2.train.records, data2.train.scales, f"bench-{name}", device, args.cache_dir), device)
        loaded = args.cache_dir is not None and not (set(args.cache_dir.glob("*.pt")) - before)
        once[f"latent cache {'load' if loaded else 'build'} {name}"] = {
            "seconds": round(time.perf_counter() - t0, 2), "mib": round(cache.nbytes / 2**20, 2),
            "images": f"{len(data2.train.records)} records x 8 transforms x 3 knots, max side {args.max_side}",
            "loadavg_1min": round(os.getloadavg()[0], 2)}
        variants = [(f"ours {v}", v) for v in args.ours] + [("reference", None)]
        for label, variant in variants:
            reference = variant is None
            precision, *flags = (variant or "fp32").split("+")
            channels_last, recast = "channels_last" in flags, "recast" in flags
            torch.manual_seed(1)
            velocity = VelocityUNet(**preset("lfm", name)).to(device)
            switched = not reference and (channels_last or args.compile)
            if not reference:
                velocity = accelerate(velocity, channels_last, args.compile)
            # as build_lfm_stage: the stage holds the frozen networks in the compute dtype (bf16: its
            # own copies), then the switches go on its velocity, encoder, decoder and LPIPS
            stage = LFMStage(copy.deepcopy(frozen) if switched else frozen, velocity, (1.0, 2.0, 4.0),
                             SplineSettings(), LossSettings(), SolverSpec.create(method="euler", steps=2), None,
                             (1.0, 2.0, 4.0), device, rae_source={},
                             lpips_loss=copy.deepcopy(lpips) if switched else lpips, lpips_metric=None,
                             latent_cache=None if reference else cache,
                             # +recast: the frozen networks held in fp32, autocast casts them at every call
                             precision="fp32" if recast else precision)
            if switched:
                for module in stage.frozen_modules():
                    accelerate(module, channels_last, args.compile)
            dataset = data3.train if reference else aligned_training_set(data2.train, frozen.stride)
            # ours: Adam fused as in degflow.training.loop.fit; reference: torch's default Adam
            opt = torch.optim.Adam(stage.trainable_parameters(), lr=2e-4, fused=None if reference else True)
            batches = train_batches(dataset, 0, 0, batch, args.workers, device)
            steps[f"lfm {name} {label}"] = (lambda s=stage, bt=batches, o=opt, p=precision, r=reference:
                                            lambda c: lfm_step(s, bt, o, c, p, r))()
            stage.velocity.train()
    return steps, once


def profile_step(step, device: torch.device, top: int) -> list[dict]:
    """One step under ``torch.profiler``: the ``top`` operators by self time (ms, calls)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(Clock(device))
    rows = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total if device.type == "cuda"
                  else e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms": round((e.self_device_time_total if device.type == "cuda"
                                            else e.self_cpu_time_total) / 1000, 1), "calls": e.count} for e in rows]


def machine_load() -> dict:
    """Load average and the other busy processes (what else loaded the machine)."""
    out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    busy = []
    for line in out.splitlines()[1:]:
        pid, pcpu, cmd = line.split(None, 2)
        if float(pcpu) >= 10 and int(pid) != os.getpid():
            busy.append(f"{pcpu}% {cmd.strip()[:90]}")
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "busy_processes": busy[:12]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--ours", default="fp32,bf16",
                        help="'ours' LFM variants: <precision>[+channels_last][+recast], precision fp32 | bf16 "
                             "(autocast, CUDA or CPU); +recast: the frozen RAE and LPIPS kept in fp32, so bf16 "
                             "autocast casts their weights at every call (as before they were held in bf16); the "
                             "reference is fp32, NCHW")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the latent caches here between runs")
    parser.add_argument("--lpips-weights", type=Path, default=WEIGHTS if WEIGHTS.is_file() else None,
                        help="VGG-16 backbone file of the LPIPS loss (default: ../shared/weights/vgg16_features.pth "
                             "when present; the cost of a step does not depend on the weights)")
    parser.add_argument("--compile", action="store_true", help="torch.compile, ours only")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--workers", default="auto",
                        help="DataLoader workers preparing the batches of every configuration: auto (as training's "
                             "num_workers=auto: none on the CPU, the allocation less one, at most 4, on a GPU) | N")
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--crop", type=int, default=64, help="training crop side, pixels")
    parser.add_argument("--batch", default="small=8,paper=2", help="batch size per preset")
    parser.add_argument("--max-side", type=int, default=128, help="demo photos downscaled to this side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    parser.add_argument("--profile", type=int, default=0,
                        help="after the timed rounds, one more step of each configuration under torch.profiler: "
                             "its N most expensive operators (self time)")
    parser.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    parser.add_argument("--records", type=int, default=None, help="use only the first N demo training photos")
    parser.add_argument("--tag", default="", help="results key suffix: '<device type>-<tag>'")
    parser.add_argument("--out", type=Path, default=REPO / "experiments/tools/results/bench_training.json")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="compare with the code of git revision REV: whole runs of this benchmark (the other "
                             "arguments as given, each run in its own process) alternate between a temporary checkout "
                             "of REV and this one; reports the per-configuration ratio of seconds per step")
    parser.add_argument("--against-repeats", type=int, default=3, help="--against: runs of each checkout")
    args = parser.parse_args()
    if args.against:
        compare_against(args)
        return
    args.presets = args.presets.split(",")
    args.ours = args.ours.split(",")
    for v in args.ours:
        precision, *flags = v.split("+")
        if precision not in ("fp32", "bf16") or not set(flags) <= {"channels_last", "recast"}:
            parser.error(f"--ours: {v!r} is not <precision>[+channels_last][+recast] with precision fp32 or bf16")
    args.batch = {k: int(v) for k, v in (kv.split("=") for kv in args.batch.split(","))}
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.workers = resolve_workers(args.workers if args.workers == "auto" else int(args.workers), device.type)[0]
    print(f"device {device}, torch.get_num_threads()={torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, crop {args.crop}, batch {args.batch}, "
          f"ours variants={args.ours}, compile={args.compile}", flush=True)
    load_before = machine_load()
    steps, once = build(args, device)
    if args.only:
        steps = {k: v for k, v in steps.items() if k in args.only.split(",")}
    warmup_seconds = {}
    for name, step in steps.items():
        clock = Clock(device)
        for _ in range(args.warmup):
            step(clock)
        warmup_seconds[name] = clock.now() - clock.start   # with --compile: includes compiling
        print(f"warmed up {name} in {warmup_seconds[name]:.1f}s", flush=True)
    rounds: dict[str, list[dict]] = {k: [] for k in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            clock = Clock(device)
            for _ in range(args.steps):
                step(clock)
            rounds[name].append({k: v / args.steps for k, v in clock.parts.items()})
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {sum(rounds[k][-1].values()):.3f}s" for k in steps), flush=True)
    profiles = {name: profile_step(step, device, args.profile) for name, step in steps.items()} if args.profile else {}
    results = {}
    for name, rows in rounds.items():
        totals = [sum(row.values()) for row in rows]
        results[name] = {"seconds_per_step": statistics.median(totals), "steps_per_s": 1 / statistics.median(totals),
                         "parts": {k: statistics.median(row[k] for row in rows) for k in rows[0]},
                         # the share of the step spent waiting for the batch (the "data" part)
                         "data_wait_share": statistics.median(row["data"] / sum(row.values()) for row in rows),
                         "warmup_seconds": warmup_seconds[name],
                         "round_seconds": totals}
    ratios = {}
    for name in args.presets:
        ref = rounds.get(f"lfm {name} reference")
        for p in args.ours:
            ours = rounds.get(f"lfm {name} ours {p}")
            if ours and ref:
                per_round = [sum(b.values()) / sum(a.values()) for a, b in zip(ours, ref)]
                ratios[f"{name} ours {p}"] = {"median": statistics.median(per_round), "per_round": per_round}
    entry = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__, "platform": platform.platform(), "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_before": load_before, "load_after": machine_load(), "one_time": once,
        "results": results, "lfm_speedup_reference_over_ours": ratios, "profiles": profiles,
    }
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report[device.type + (f"-{args.tag}" if args.tag else "")] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print_tables(entry)


def _forwarded(argv: list[str]) -> list[str]:
    """``argv`` without the options of :func:`compare_against` itself (and ``--out``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--against", "--against-repeats", "--out"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def compare_against(args) -> None:
    """Alternate whole runs of this benchmark between a checkout of ``args.against`` and this
    one (same arguments, one process at a time, REV first in every pair), then write
    ``{"against": ...}`` to ``args.out``: per configuration, the median over pairs of
    REV's seconds per step / this checkout's (> 1: this checkout is faster)."""
    import sys
    import tempfile

    forwarded = _forwarded(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="bench-against-") as tmp:
        old = Path(tmp) / "rev"
        (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")   # the LPIPS weights, as beside this checkout
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.against], check=True,
                       capture_output=True)
        commits = {who: subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                       text=True).stdout.strip() for who, root in (("rev", old), ("this", REPO))}
        runs: dict[str, list[dict]] = {"rev": [], "this": []}
        try:
            for r in range(args.against_repeats):
                for who, root in (("rev", old), ("this", REPO)):
                    out = Path(tmp) / f"{who}{r}.json"
                    print(f"--- run {r + 1}/{args.against_repeats} of {who} ({commits[who][:10]})", flush=True)
                    subprocess.run([sys.executable, "-m", "experiments.tools.bench_training", *forwarded, "--out",
                                    str(out)], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
                    runs[who].append(next(iter(json.loads(out.read_text()).values())))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
    names = [n for n in runs["this"][0]["results"] if n in runs["rev"][0]["results"]]
    table = {}
    for n in names:
        rev = [e["results"][n]["seconds_per_step"] for e in runs["rev"]]
        this = [e["results"][n]["seconds_per_step"] for e in runs["this"]]
        ratios = [a / b for a, b in zip(rev, this)]
        table[n] = {"rev_seconds_per_step": rev, "this_seconds_per_step": this, "rev_over_this": ratios,
                    "median_rev_over_this": statistics.median(ratios),
                    "this_data_wait_share": [e["results"][n].get("data_wait_share") for e in runs["this"]]}
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report["against"] = {"rev": args.against, "commits": commits, "argv": forwarded,
                         "load": [[e["load_before"]["loadavg"], e["load_after"]["loadavg"]] for e in runs["this"]],
                         "torch_threads": runs["this"][0]["torch_threads"], "device": runs["this"][0]["device"],
                         "configurations": table}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"\n{args.against} ({commits['rev'][:10]}) vs this checkout ({commits['this'][:10]}): seconds per step, "
          f"medians of {args.against_repeats} alternating runs each\n")
    print("| configuration | REV s/step | this s/step | REV / this (median of pairs) |")
    print("|---|---:|---:|---:|")
    for n, row in table.items():
        print(f"| {n} | {statistics.median(row['rev_seconds_per_step']):.3f} | "
              f"{statistics.median(row['this_seconds_per_step']):.3f} | {row['median_rev_over_this']:.3f} |")


def print_tables(entry: dict) -> None:
    res = entry["results"]
    parts = []
    for row in res.values():
        parts += [p for p in row["parts"] if p not in parts]
    print(f"\n{entry['device']} ({entry['device_name']}), {entry['torch_threads']} torch thread(s); "
          f"load {entry['load_before']['loadavg']} -> {entry['load_after']['loadavg']}\n")
    print("| configuration | steps/s | s/step | data wait | " + " | ".join(parts) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(parts))
    for name, row in res.items():
        cells = [f"{row['parts'][p] * 1000:.0f} ms" if p in row["parts"] else "" for p in parts]
        print(f"| {name} | {row['steps_per_s']:.2f} | {row['seconds_per_step']:.3f} | "
              f"{100 * row.get('data_wait_share', 0):.1f}% | " + " | ".join(cells) + " |")
    for name, r in entry["lfm_speedup_reference_over_ours"].items():
        print(f"\nLFM {name}: reference / ours = {r['median']:.2f}x (median of per-round ratios "
              f"{', '.join(f'{x:.2f}' for x in r['per_round'])})")
    for name, rows in entry["profiles"].items():
        total = sum(r["self_ms"] for r in rows)
        print(f"\nprofile {name} (top {len(rows)} operators by self time, together {total:.0f} ms): " + ", ".join(
            f"{r['op']} {r['self_ms']:.0f} ms/{r['calls']}" for r in rows))
    for name, o in entry["one_time"].items():
        print(f"{name}: {o['seconds']} s, {o['mib']} MiB ({o['images']})")


if __name__ == "__main__":
    main()
