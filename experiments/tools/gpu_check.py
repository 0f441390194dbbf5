"""One prepared check of the GPU path, end to end: the paper presets trained and a paper-size
image synthesized, with the figures of docs/GPU.md in one JSON.

    python -m experiments.tools.gpu_check --quick                    # one GPU: at most ~6 minutes on an H100
    python -m experiments.tools.gpu_check --quick --compile          # + the torch.compile measurement (optional)
    python -m experiments.tools.gpu_check --device cpu --tiny        # the CPU path (the test suite runs it)

Writes ``{out}/gpu_check.json`` (default ``--out /tmp/gpu_check``) and prints it. What runs, in order:

1. **A generated tree** in the RealSR layout (``{out}/tree/Canon/Train/{2,3,4}/Canon_NNN_{HR,LR s}.png``,
   LR stored at HR size): smooth-plus-texture images, LR = HR blurred by a bicubic down and up
   resize, so training reads real files (held in memory after the first read) like ``data=realsr``.
2. **The reference step beside ours** (:mod:`experiments.tools.bench_training`, same process
   kind, same batches): stage 2 at the paper preset (crop 256, ``--bench-batch``) for every
   ours variant (fp32, fp32+channels_last, bf16, bf16+channels_last) and the authors'-style
   reference; seconds per step (median of rounds), data-wait share, reference / ours.
3. **Both stages trained** at the paper presets (``+experiment=rae_paper`` then
   ``+experiment=lfm_paper``: batch 16 / 32 of 256-pixel crops, the paper networks) through the
   real ``degflow.training.train``, for ``--steps`` steps each, in fp32 (IEEE-free TF32 default,
   NCHW) and in the fastest ours variant of step 2; on several local GPUs the same runs are
   data parallel through ``torch.distributed.run``. From each run's ``history.jsonl``: seconds
   per step (median over the log intervals after the first), data-wait share, peak GPU memory.
4. **Synthesis** of one 2040x1356 image at 30 scales (1.1, 1.2, ..., 4.0) by the trained
   stage-2 checkpoint: ``Synthesizer.generate`` (seconds per image and per scale, median of
   ``--synth-repeats``), the dataset job ``write_lr_dataset`` on a folder of that image
   (seconds with the PNG files written by the writer thread), and the batched decode against
   one scale per decoder call on three scales (max relative difference).
5. ``--compile`` (optional, separate): the stage-2 step with ``torch.compile`` against eager,
   the compile time and the number of steps after which it pays off.

The GPU's busy fraction is sampled with ``nvidia-smi`` (utilization.gpu: share of time a
kernel was running) during training and synthesis. On the CPU (``--device cpu``) everything
runs at tiny sizes with ``--tiny`` (the test suite checks the JSON); no GPU figures then.
The LPIPS backbone is the shared VGG-16 file when present, else a randomly initialised one
written into ``{out}`` (the cost of a step does not depend on the weights).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]

from degflow.cli.app import CONF_DIR, register_resolvers, to_plain
from degflow.infra.cluster import resolve_workers, set_threads
from degflow.infra.files import atomic_write_text

SHARED_VGG = REPO.parent / "shared" / "weights" / "vgg16_features.pth"
GRID = {"start": 1.1, "stop": 4.0, "step": 0.1}          # the authors' 30 scales
VARIANTS = {"fp32": ["precision=fp32", "channels_last=false"],
            "fp32+channels_last": ["precision=fp32", "channels_last=true"],
            "bf16": ["precision=bf16", "channels_last=false"],
            "bf16+channels_last": ["precision=bf16", "channels_last=true"]}


# ------------------------------------------------------------------------- sizes
def sizes(args) -> dict:
    """Every size the check uses: the paper presets on a GPU, tiny ones with ``--tiny``."""
    if args.tiny:
        return {"images": 4, "image_hw": (72, 96), "crop": 32, "rae_batch": 2, "lfm_batch": 2,
                "steps": args.steps or 4, "log_every": 1, "synth_hw": (64, 96), "synth_scales": [1.5, 2.0, 3.0],
                "bench": ["--presets", "small", "--crop", "32", "--max-side", "96", "--records", "1",
                          "--batch", "small=2", "--rounds", "1", "--steps", "1", "--warmup", "1"],
                "model": ["model.rae.widths=[8,8,16,16]", "model.lfm.nf=16", "model.lfm.ch_mult=[1,2]",
                          "model.lfm.image_size=4", "data.multiple_of=8", "data.val_max_size=64"]}
    quick = args.quick
    return {"images": 8, "image_hw": (512, 768), "crop": 256, "rae_batch": 16, "lfm_batch": 32,
            "steps": args.steps or (60 if quick else 300), "log_every": 10, "synth_hw": (1356, 2040),
            "synth_scales": None,
            "bench": ["--presets", "paper", "--crop", "256", "--max-side", "512", "--records", "2",
                      "--batch", f"paper={args.bench_batch}", "--rounds", "3" if quick else "5",
                      "--steps", "2" if quick else "4", "--warmup", "2"],
            "model": ["data.val_max_size=256"]}


# ------------------------------------------------------------------------- pieces
class BusySampler:
    """Mean GPU utilization (nvidia-smi ``utilization.gpu``, % of time a kernel ran) while active."""

    def __init__(self, device: torch.device):
        self.samples: list[float] = []
        self.proc = None
        if device.type == "cuda" and shutil.which("nvidia-smi"):
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.proc = subprocess.Popen(["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu",
                                          "--format=csv,noheader,nounits", "-lms", "200"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip()) / 100)
            except ValueError:
                continue

    def stop(self) -> float | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        return round(statistics.mean(self.samples), 3) if self.samples else None


def lpips_weights(out: Path) -> tuple[Path, str]:
    """The VGG-16 backbone file for the LPIPS loss: the shared one, or a random one (timing only)."""
    if SHARED_VGG.is_file():
        return SHARED_VGG, "pretrained (shared weights)"
    import torchvision

    path = out / "vgg16_features_random.pth"
    if not path.is_file():
        torch.manual_seed(0)
        features = torchvision.models.vgg16(weights=None).features.state_dict()
        torch.save({f"features.{k}": v for k, v in features.items()}, path)
    return path, "randomly initialised (timing only: the cost does not depend on the weights)"


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth-plus-texture uint8 RGB image ``[h, w, 3]``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([np.sin(6 * xx + 3 * yy + seed), np.cos(20 * xx * yy + seed), np.sin(9 * yy - 2 * xx)], -1)
    img = 127.5 + 80 * base + rng.normal(0, 18, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def make_tree(root: Path, n: int, hw: tuple[int, int]) -> dict:
    """RealSR-layout training tree (Canon, Train, scales 2/3/4, LR at HR size)."""
    from PIL import Image

    t0 = time.perf_counter()
    h, w = hw
    for i in range(1, n + 1):
        hr = Image.fromarray(textured(h, w, i))
        for s in (2, 3, 4):
            folder = root / "Canon" / "Train" / str(s)
            folder.mkdir(parents=True, exist_ok=True)
            hr.save(folder / f"Canon_{i:03d}_HR.png")
            lr = hr.resize((round(w / s), round(h / s)), Image.BICUBIC).resize((w, h), Image.BICUBIC)
            lr.save(folder / f"Canon_{i:03d}_LR{s}.png")
    return {"root": str(root), "images": n, "height": h, "width": w, "scales": [2, 3, 4],
            "seconds": round(time.perf_counter() - t0, 2)}


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_plain(hydra_compose("config", overrides=overrides))


def history_figures(run_dir: Path) -> dict:
    """Seconds per step (median of the log intervals after the first), data-wait share and
    peak GPU memory from a run's ``history.jsonl``."""
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/loss" in r]
    timed = rows[1:] if len(rows) > 1 else rows
    seconds = [1 / r["train/steps_per_s"] for r in timed]
    out = {"steps": rows[-1]["step"] if rows else 0, "log_intervals": len(timed),
           "seconds_per_step": round(statistics.median(seconds), 4) if seconds else None,
           "data_wait_share": round(statistics.median(r["train/data_wait"] for r in timed), 4) if timed else None,
           "final_loss": rows[-1]["train/loss"] if rows else None}
    peaks = [r["train/gpu_peak_gib"] for r in rows if "train/gpu_peak_gib" in r]
    out["peak_gpu_gib"] = round(max(peaks), 2) if peaks else None
    return out


def train_run(stage: str, variant: str, overrides: list[str], run_dir: Path, device: torch.device,
              gpus: int) -> dict:
    """One training run; data parallel over ``gpus`` local GPUs through torch.distributed.run."""
    t0 = time.perf_counter()
    busy = BusySampler(device)
    try:
        if gpus > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "train.py", *overrides, f"hydra.run.dir={run_dir}"]
            subprocess.run(cmd, cwd=REPO, check=True)
        else:
            from degflow.training import train

            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            train(compose(overrides), run_dir, overrides)
    finally:
        gpu_busy = busy.stop()
    figures = history_figures(run_dir)
    figures.update(stage=stage, variant=variant, gpus=gpus, wall_seconds=round(time.perf_counter() - t0, 1),
                   gpu_busy=gpu_busy, overrides=overrides)
    return figures


def bench(args, s: dict, out: Path, weights: Path, device: torch.device) -> dict:
    """The stage-2 step at the paper preset, ours (every variant) beside the reference."""
    path = out / "bench_training.json"
    ours = ",".join(VARIANTS)
    only = ",".join([*(f"lfm {'small' if args.tiny else 'paper'} ours {v}" for v in VARIANTS),
                     f"lfm {'small' if args.tiny else 'paper'} reference"])
    cmd = [sys.executable, "-m", "experiments.tools.bench_training", "--device", device.type, "--ours", ours,
           "--only", only, "--threads", str(torch.get_num_threads()), "--lpips-weights", str(weights),
           "--out", str(path), *s["bench"]]
    busy = BusySampler(device)
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    gpu_busy = busy.stop()
    entry = next(iter(json.loads(path.read_text()).values()))
    preset = "small" if args.tiny else "paper"
    configs = {name.removeprefix(f"lfm {preset} "): {"seconds_per_step": round(r["seconds_per_step"], 4),
                                                     "data_wait_share": round(r["data_wait_share"], 4)}
               for name, r in entry["results"].items()}
    ratios = {k.removeprefix(f"{preset} "): round(v["median"], 3)
              for k, v in entry["lfm_speedup_reference_over_ours"].items()}
    best = min(VARIANTS, key=lambda v: configs[f"ours {v}"]["seconds_per_step"])
    return {"command": " ".join(cmd[1:]), "configurations": configs, "reference_over_ours": ratios,
            "fastest_ours": best, "bf16_faster_than_fp32": configs["ours bf16"]["seconds_per_step"]
            < configs["ours fp32"]["seconds_per_step"], "gpu_busy": gpu_busy}


def synthesis(args, s: dict, ckpt: Path, out: Path, device: torch.device) -> dict:
    """One 2040x1356 image (``--tiny``: small) at 30 scales: generate, the dataset job, batched vs one scale."""
    from PIL import Image

    from degflow.core.scales import expand_scales
    from degflow.data.images import read_image
    from degflow.generation import Synthesizer
    from degflow.jobs.lr_dataset import write_lr_dataset

    h, w = s["synth_hw"]
    folder = out / "synth_in"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(textured(h, w, 99)).save(folder / "image.png")
    hr = read_image(folder / "image.png")[None]
    scales = list(expand_scales(GRID)) if s["synth_scales"] is None else s["synth_scales"]
    synth = Synthesizer.from_checkpoint(ckpt, device=device)
    busy = BusySampler(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synth.generate(hr, scales[:2])                                      # warm-up (cuDNN autotuning, allocator)
    runs = [synth.generate(hr, scales) for _ in range(args.synth_repeats)]
    seconds = statistics.median(r.seconds for r in runs)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    t0 = time.perf_counter()
    summary = write_lr_dataset(synth, folder, out / "synth_out", scales, max_scales=None, progress=False)
    job_seconds = time.perf_counter() - t0
    gpu_busy = busy.stop()
    three = scales[:: max(1, len(scales) // 3)][:3]
    one = Synthesizer.from_checkpoint(ckpt, device=device, decode_batch=1, tile_batch=1).generate(hr, three).images
    batched = synth.generate(hr, three).images
    rel = max(float((batched[k] - one[k]).abs().max()) / float(one[k].abs().max()) for k in three)
    return {"image": f"{w}x{h}", "scales": len(scales), "tiles": runs[0].tiles, "nfe": runs[0].nfe,
            "decode_batch": synth.decode_batch, "tile_batch": synth.tile_batch,
            "generate_seconds_per_image": round(seconds, 3), "generate_seconds_per_scale": round(seconds / len(scales), 4),
            "solve_seconds": round(statistics.median(r.solve_seconds for r in runs), 3),
            "job_seconds_per_image": round(job_seconds, 3), "job_outputs": summary.outputs_written,
            "job_failed": summary.failed, "peak_gpu_gib": None if peak is None else round(peak, 2),
            "batched_vs_one_scale_max_rel_diff": rel, "gpu_busy": gpu_busy}


def compile_check(args, s: dict, out: Path, weights: Path, device: torch.device) -> dict:
    """Stage-2 step eager vs ``torch.compile`` (best ours variant), compile time, break-even."""
    path = out / "bench_compile.json"
    preset = "small" if args.tiny else "paper"
    rows = {}
    for compiled in (False, True):
        cmd = [sys.executable, "-m", "experiments.tools.bench_training", "--device", device.type, "--ours",
               args.compile_variant, "--only", f"lfm {preset} ours {args.compile_variant}", "--threads",
               str(torch.get_num_threads()), "--lpips-weights", str(weights), "--out", str(path),
               "--tag", "compiled" if compiled else "eager", *s["bench"], *(["--compile"] if compiled else [])]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        entry = json.loads(path.read_text())[f"{device.type}-{'compiled' if compiled else 'eager'}"]
        result = entry["results"][f"lfm {preset} ours {args.compile_variant}"]
        rows["compiled" if compiled else "eager"] = {
            "seconds_per_step": result["seconds_per_step"], "warmup_seconds": round(result["warmup_seconds"], 2),
            "process_seconds": round(time.perf_counter() - t0, 1)}
    eager, comp = rows["eager"]["seconds_per_step"], rows["compiled"]["seconds_per_step"]
    extra = rows["compiled"]["warmup_seconds"] - rows["eager"]["warmup_seconds"]   # compiling, in the warm-up steps
    gain = eager - comp
    return {"variant": args.compile_variant, **rows, "steady_speedup": round(eager / comp, 3),
            "compile_overhead_seconds": round(extra, 1),
            "break_even_steps": round(extra / gain) if gain > 0 else None}


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds: fits 6 minutes on one H100")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU path of the test suite)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (quick 60, else 300)")
    parser.add_argument("--bench-batch", type=int, default=32, help="stage-2 batch of the reference comparison")
    parser.add_argument("--synth-repeats", type=int, default=None, help="generate() timings (quick 1, else 3)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (separate, slow)")
    parser.add_argument("--compile-variant", default="bf16+channels_last")
    parser.add_argument("--threads", default="auto", help="torch CPU threads: auto (the allocation) | N")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: bench,train,synthesis")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: a part that would start after this many seconds is skipped (quick: 300)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    args = parser.parse_args(argv)
    args.synth_repeats = args.synth_repeats or (1 if args.quick or args.tiny else 3)
    args.budget = args.budget if args.budget is not None else (300.0 if args.quick else None)
    from degflow.infra.runtime import resolve_device

    device = resolve_device(args.device)
    if device.type != "cuda" and not args.tiny:
        parser.error("without a GPU only the tiny path runs: add --tiny (or --device cuda on a GPU machine)")
    threads = set_threads(args.threads if args.threads == "auto" else int(args.threads))
    skip = set(filter(None, args.skip.split(",")))
    s = sizes(args)
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.perf_counter()
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    report: dict = {"env": {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if gpus else platform.machine(),
        "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if gpus else None, "cpu_count": os.cpu_count(),
        "torch_threads": threads, "num_workers_auto": resolve_workers("auto", device.type)[0],
        "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(), "argv": argv if argv is not None else sys.argv[1:]}}
    weights, weights_kind = lpips_weights(out)
    report["env"]["lpips_backbone"] = weights_kind
    report["tree"] = make_tree(out / "tree", s["images"], s["image_hw"])

    def save() -> None:
        report["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")

    def may_start(part: str) -> bool:
        """False (and recorded) when ``--budget`` seconds have passed: the JSON keeps what ran."""
        if part in skip:
            return False
        if args.budget is not None and time.perf_counter() - started > args.budget:
            report.setdefault("skipped_for_time", []).append(part)
            return False
        return True

    best = "fp32+channels_last"
    if may_start("bench"):
        report["bench"] = bench(args, s, out, weights, device)
        best = report["bench"]["fastest_ours"]
        save()
    common = [f"device={args.device}", "logger=none", f"output_root={out / 'runs'}", f"data.root={out / 'tree'}",
              f"data.crop_size={s['crop']}", f"stage.steps={s['steps']}", f"stage.log_every={s['log_every']}",
              f"stage.val_every={s['steps']}", f"stage.ckpt_every={s['steps']}", "stage.ckpt_minutes=null",
              "stage.keep_every=null", "eval.max_images=1", "eval.lpips=false", *s["model"]]
    lfm_ckpt = None
    if "train" not in skip:
        report["training"] = {}
        for variant in dict.fromkeys(["fp32", best]):
            rae_dir = out / "runs" / f"rae-{variant}"
            if not may_start(f"train rae {variant}"):
                continue
            rae = [*common, "+experiment=rae_paper", f"stage.batch_size={s['rae_batch']}", *VARIANTS[variant]]
            report["training"][f"rae {variant}"] = train_run("rae", variant, rae, rae_dir, device, gpus)
            save()
            if not may_start(f"train lfm {variant}"):
                continue
            lfm_dir = out / "runs" / f"lfm-{variant}"
            lfm = [*common, "+experiment=lfm_paper", f"stage.batch_size={s['lfm_batch']}", "solver=euler",
                   "solver.steps=4", f"rae_ckpt={rae_dir / 'checkpoints' / 'last.pt'}",
                   f"loss.lpips_backbone_weights={weights}", *VARIANTS[variant]]
            report["training"][f"lfm {variant}"] = train_run("lfm", variant, lfm, lfm_dir, device, gpus)
            lfm_ckpt = lfm_dir / "checkpoints" / "last.pt"
            save()
    if lfm_ckpt is not None and may_start("synthesis"):
        report["synthesis"] = synthesis(args, s, lfm_ckpt, out, device)
        save()
    if args.compile and may_start("compile"):
        report["compile"] = compile_check(args, s, out, weights, device)
    checks = {}
    if "bench" in report:
        ratio = report["bench"]["reference_over_ours"]
        checks["lfm_step_reference_over_best_ours"] = ratio.get(f"ours {best}")
        checks["bf16_faster_than_fp32"] = report["bench"]["bf16_faster_than_fp32"]
    if "training" in report:
        waits = [r["data_wait_share"] for r in report["training"].values() if r["data_wait_share"] is not None]
        checks["max_data_wait_share"] = max(waits) if waits else None
        checks["training_steps"] = {k: r["steps"] for k, r in report["training"].items()}
    if "synthesis" in report:
        checks["synthesis_scales"] = report["synthesis"]["scales"]
    report["checks"] = checks
    save()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
