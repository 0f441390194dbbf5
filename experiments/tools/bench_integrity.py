"""What the integrity checks cost (docs/INTEGRITY.md): digests of checkpoints, checked manifest lines,
folder locks, against a training step and the synthesis of an image.

    python -m experiments.tools.bench_integrity              # threads=1, CPU
    python -m experiments.tools.bench_integrity --rounds 9 --threads 1

Writes ``experiments/tools/results/bench_integrity.json`` (``--out``) and prints a table. Not a
test: timings depend on the machine and its load (the load average is recorded).

Measured, each as the median over ``--rounds`` interleaved rounds; the ratios use CPU time of the
measuring thread (``time.thread_time``), which the load of other processes on a shared machine
barely changes, while wall times are reported beside them:

- **checkpoint save**: a training checkpoint as the loop writes it (the models of the
  ``small`` and ``paper`` presets, their Adam state, RNG state) written plainly
  (``torch.save`` through the atomic write, as before digests) and sealed
  (:func:`degflow.infra.checkpoint.save_checkpoint`: the digest is computed in the same pass);
- **checkpoint load**: ``torch.load`` alone, ``torch.load`` plus the file's sha256 (what a
  synthesis did before: ``checkpoint_sha256``), and the verified load
  (:func:`degflow.infra.checkpoint.load_checkpoint`: one hashing pass, then ``torch.load``);
- **training step**: one stage-1 step of each preset (8 crops of 64 x 64: encoder, decoder,
  backward, fused Adam), cheaper than the stage-2 step whose checkpoint is timed, so the ratio
  is an upper bound;
- **synthesis of an image**: ``Synthesizer.generate`` of a 256 x 256 image at 3 scales with the
  default solver (``small`` preset), and what each image adds: 1 + 3 checked manifest lines
  (:func:`degflow.infra.digests.checked_line` instead of ``json.dumps``); once per run: the
  lock of the out folder (acquire + release) and the checked ``synthesis.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from degflow.core.solvers import SolverSpec
from degflow.core.timemap import TimeMap
from degflow.generation import Synthesizer
from degflow.infra.checkpoint import capture_rng_state, load_checkpoint, save_checkpoint
from degflow.infra.digests import checked_line, checked_record_text
from degflow.infra.files import atomic_write_bytes, atomic_write_text, file_sha256
from degflow.infra.locks import FolderLock
from degflow.models.rae import RAE
from degflow.models.registry import model_entry
from degflow.models.unet import VelocityUNet

REPO = Path(__file__).resolve().parents[2]


def preset(kind: str, name: str) -> dict:
    cfg = yaml.safe_load((REPO / "conf" / "model" / kind / f"{name}.yaml").read_text())
    cfg.pop("_target_")
    return cfg


def training_checkpoint(name: str) -> dict:
    """A stage-2 checkpoint of preset ``name`` as the loop saves it (velocity trained with Adam)."""
    torch.manual_seed(0)
    rae, velocity = RAE(**preset("rae", name)), VelocityUNet(**preset("lfm", name))
    optimizer = torch.optim.Adam(velocity.parameters(), lr=1e-4)
    for p in velocity.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()                                     # Adam state: two tensors per parameter
    scales = [1.0, 2.0, 4.0]
    return {"kind": "lfm", "step": 1000, "models": {"rae": model_entry(rae), "velocity": model_entry(velocity)},
            "optimizer": optimizer.state_dict(), "scheduler": None, "rng": capture_rng_state(),
            "train_scales": scales, "time_map": TimeMap.nominal(scales).to_dict(), "config": {},
            "extra": {"solver": {"method": "rk4", "steps": 16, "rtol": None, "atol": None, "output_mode": "cubic"},
                      "spline": {"path": "cubic"}}}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_timed(fn) -> float:
    """CPU seconds of this thread (torch on one thread computes in it): far less sensitive than wall
    time to the load of other processes on a shared machine."""
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def rae_step_seconds(name: str, rounds: int, clock=timed) -> list[float]:
    torch.manual_seed(0)
    rae = RAE(**preset("rae", name))
    optimizer = torch.optim.Adam(rae.parameters(), lr=1e-4, fused=True)
    hr, lr = torch.rand(8, 3, 64, 64) * 2 - 1, torch.rand(8, 3, 64, 64) * 2 - 1

    def step():
        _, feats = rae.encode(hr)
        z, _ = rae.encode(lr)
        loss = torch.nn.functional.mse_loss(rae.decode(z, feats), lr)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    return [clock(step) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "experiments/tools/results/bench_integrity.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_integrity-"))
    results: dict = {"checkpoints": {}}
    for name in ("small", "paper"):
        payload = training_checkpoint(name)
        plain, sealed = work / f"{name}-plain.pt", work / f"{name}-sealed.pt"
        rows = {k: [] for k in ("save_plain", "save_sealed", "load", "load_and_sha256", "load_verified")}
        full = {"format": "degflow", "format_version": 1, "degflow_version": "bench", **payload}
        variants = {
            "save_plain": lambda: atomic_write_bytes(plain, lambda f: torch.save(full, f)),   # noqa: B023
            "save_sealed": lambda: save_checkpoint(sealed, payload),                          # noqa: B023
            "load": lambda: torch.load(plain, map_location="cpu", weights_only=True),         # noqa: B023
            "load_and_sha256": lambda: (torch.load(plain, map_location="cpu", weights_only=True),  # noqa: B023
                                        file_sha256(plain)),                                  # noqa: B023
            "load_verified": lambda: load_checkpoint(sealed),                                 # noqa: B023
        }
        for _ in range(args.rounds):                     # interleaved: load hits every variant alike
            for key, fn in variants.items():
                rows[key].append(timed(fn))
        data = plain.read_bytes()
        results["checkpoints"][name] = {"bytes": sealed.stat().st_size,
                                        **{k: statistics.median(v) for k, v in rows.items()},
                                        "sha256_cpu_s": statistics.median(cpu_timed(lambda: hashlib.sha256(data))  # noqa: B023
                                                                          for _ in range(args.rounds))}
    results["rae_step_s"], results["rae_step_cpu_s"] = {}, {}
    for name in ("small", "paper"):
        rounds = args.rounds if name == "small" else 3
        results["rae_step_s"][name] = statistics.median(rae_step_seconds(name, rounds))
        results["rae_step_cpu_s"][name] = statistics.median(rae_step_seconds(name, rounds, cpu_timed))

    # synthesis: one 256 x 256 image at three scales, default solver, small preset
    torch.manual_seed(0)
    ckpt = work / "synth.pt"
    save_checkpoint(ckpt, training_checkpoint("small"))
    synth = Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("rk4", steps=16, output_mode="cubic"))
    hr = torch.rand(1, 3, 256, 256) * 2 - 1
    synth.generate(hr, [2.0, 3.0, 4.0])
    image_s = statistics.median(timed(lambda: synth.generate(hr, [2.0, 3.0, 4.0])) for _ in range(args.rounds))
    image_cpu_s = statistics.median(cpu_timed(lambda: synth.generate(hr, [2.0, 3.0, 4.0])) for _ in range(args.rounds))
    entry = {"source": "dir/image_0001.png", "output": "LR/x2.5/dir/image_0001.png", "kind": "degflow", "size": "lr",
             "scale": 2.5, "t": 0.5, "solver": {"method": "rk4", "steps": 16, "rtol": None, "atol": None,
                                                 "output_mode": "cubic"}, "nfe": 65, "seconds": 0.123456789,
             "tiles": 1, "height": 103, "width": 154, "checkpoint_sha256": "a" * 64, "degflow_version": "0.1.0"}
    n = 2000
    plain_line = cpu_timed(lambda: [json.dumps(entry) for _ in range(n)]) / n
    checked = cpu_timed(lambda: [checked_line(entry) for _ in range(n)]) / n
    out = work / "out"
    out.mkdir()
    lock_s = statistics.median(timed(lambda: FolderLock(out, "shard0-of-1").acquire().release())
                               for _ in range(args.rounds))
    settings = {"checkpoint_sha256": "a" * 64, "solver": entry["solver"], "precision": "fp32", "tile_size": 1024,
                "tile_overlap": 256, "LR_folder": "true LR size"}
    record_s = statistics.median(timed(lambda: atomic_write_text(out / "synthesis.json", checked_record_text(settings)))
                                 - timed(lambda: atomic_write_text(out / "synthesis.json",
                                                                   json.dumps(settings, indent=2, sort_keys=True)))
                                 for _ in range(args.rounds))
    results["synthesis"] = {"image_256_3_scales_s": image_s, "image_256_3_scales_cpu_s": image_cpu_s,
                            "json_line_cpu_s": plain_line, "checked_line_cpu_s": checked,
                            "lines_per_image": 4, "lock_acquire_release_s": lock_s,
                            "checked_record_extra_s": record_s}
    results["machine"] = {"threads": args.threads, "load_average_before": load_before,
                          "load_average_after": os.getloadavg(), "cpu": platform.processor() or platform.machine(),
                          "torch": torch.__version__,
                          "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                                   capture_output=True, check=False).stdout.strip()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    for path in work.rglob("*"):
        if path.is_file():
            path.unlink()
    print(report(results))


def report(r: dict) -> str:
    lines = ["| preset | MiB | sha256 of it (CPU) | stage-1 step (CPU) | digest / step | per step, ckpt_every=100 | "
             "save plain | save sealed | load | load + sha256 (before) | verified load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in r["checkpoints"].items():
        step = r["rae_step_cpu_s"][name]
        lines.append(f"| {name} | {c['bytes'] / 2**20:.1f} | {c['sha256_cpu_s'] * 1e3:.0f} ms | {step * 1e3:.0f} ms | "
                     f"{100 * c['sha256_cpu_s'] / step:.1f}% | {c['sha256_cpu_s'] / step:.3f}% | "
                     f"{c['save_plain'] * 1e3:.0f} ms | {c['save_sealed'] * 1e3:.0f} ms | {c['load'] * 1e3:.0f} ms | "
                     f"{c['load_and_sha256'] * 1e3:.0f} ms | {c['load_verified'] * 1e3:.0f} ms |")
    s = r["synthesis"]
    per_image = s["lines_per_image"] * (s["checked_line_cpu_s"] - s["json_line_cpu_s"])
    lines += ["", "(CPU: this thread's CPU time; the other columns: wall time)", "",
              f"synthesis of a 256 x 256 image at 3 scales (small preset, rk4/16): "
              f"{s['image_256_3_scales_cpu_s'] * 1e3:.0f} ms CPU ({s['image_256_3_scales_s'] * 1e3:.0f} ms wall); "
              f"checked manifest lines add {per_image * 1e6:.1f} us CPU per image "
              f"({100 * per_image / s['image_256_3_scales_cpu_s']:.4f}%); once per run: lock "
              f"{s['lock_acquire_release_s'] * 1e3:.2f} ms, checked synthesis.json "
              f"{s['checked_record_extra_s'] * 1e3:+.2f} ms (wall)",
              f"threads {r['machine']['threads']}, load average before {r['machine']['load_average_before']}, "
              f"after {r['machine']['load_average_after']}, commit {r['machine']['commit']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
