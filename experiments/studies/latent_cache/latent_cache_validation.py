"""Validation metrics after stage 2 with and without the latent cache, against seed-to-seed spread.

    python -m experiments.studies.latent_cache.latent_cache_validation --runs RUN_DIR [RUN_DIR ...]

Each ``RUN_DIR`` is a finished ``python train.py stage=lfm ...`` run folder (its ``metrics.json``
holds the final validation and the run's overrides). The runs are grouped by
``stage.latent_cache`` (default true) and listed by ``seed`` (default 0). Per validation scale
(and the mean over the held-out scales) and metric (Y-PSNR, SSIM on Y, LPIPS) it reports every
seed, mean and sample standard deviation over seeds per setting, the difference of the means
(cache - no cache) and the pooled seed SD ``sqrt((sd_cache^2 + sd_no_cache^2) / 2)``; the
difference is "within spread" when it is no larger than the pooled SD. With 2 or 3 seeds an
SD is a rough estimate: read the verdict with the per-seed values next to it.
Writes ``experiments/studies/latent_cache/latent_cache_validation.json`` (``--out``) and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from degflow.infra.files import atomic_write_json
from experiments._runner import REPO, fmt, mean_sd

METRICS = ("psnr_y", "ssim_y", "lpips")


def override(overrides: list[str], key: str, default: str) -> str:
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key]
    return values[-1] if values else default


def load_run(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    overrides = list(metrics.get("overrides", []))
    cache = override(overrides, "stage.latent_cache", "true").lower() == "true"
    scales = {k: {m: v.get(m) for m in METRICS} | {"heldout": v["heldout"]} for k, v in metrics["scales"].items()}
    heldout = [v for v in scales.values() if v["heldout"]]
    if heldout:  # the mean over the held-out scales, as one more row
        scales["held-out mean"] = {m: statistics.fmean(v[m] for v in heldout) for m in METRICS} | {"heldout": True}
    return {"dir": str(run_dir), "seed": int(override(overrides, "seed", "0")), "latent_cache": cache,
            "step": metrics["step"], "overrides": overrides, "scales": scales}


def compare(runs: list[dict]) -> dict:
    groups = {flag: sorted((r for r in runs if r["latent_cache"] == flag), key=lambda r: r["seed"])
              for flag in (True, False)}
    if len(groups[True]) < 2 or len(groups[False]) < 2:
        raise SystemExit("--runs needs at least two seeds with stage.latent_cache=true and two with false, got "
                         f"{len(groups[True])} and {len(groups[False])}")
    table = {}
    for scale in groups[True][0]["scales"]:
        row = {"heldout": groups[True][0]["scales"][scale]["heldout"]}
        for m in METRICS:
            cell = {}
            for flag, name in ((True, "cache"), (False, "no_cache")):
                values = [r["scales"][scale][m] for r in groups[flag]]
                mean, sd, _ = mean_sd(values)
                cell[name] = {"per_seed": {r["seed"]: v for r, v in zip(groups[flag], values)}, "mean": mean, "sd": sd}
            diff = cell["cache"]["mean"] - cell["no_cache"]["mean"]
            pooled = math.sqrt((cell["cache"]["sd"] ** 2 + cell["no_cache"]["sd"] ** 2) / 2)
            cell.update(mean_difference=diff, pooled_seed_sd=pooled, within_spread=abs(diff) <= pooled)
            row[m] = cell
        table[scale] = row
    return {"runs": runs, "scales": table,
            "rule": "within_spread: |mean(cache) - mean(no cache)| <= sqrt((sd_cache^2 + sd_no_cache^2) / 2), "
                    "sd = sample standard deviation over seeds"}


def markdown(result: dict) -> str:
    seeds = {flag: sorted({r["seed"] for r in result["runs"] if r["latent_cache"] == flag}) for flag in (True, False)}
    lines = [f"seeds: cache {seeds[True]}, no cache {seeds[False]}; mean ± SD over seeds; * held-out scale", "",
             "| scale | metric | cache | no cache | per seed: cache / no cache | diff (cache - no cache) | "
             "pooled seed SD | within spread |", "|---|---|---|---|---|---:|---:|---|"]
    for scale, row in result["scales"].items():
        for m in METRICS:
            c = row[m]
            d = 2 if m == "psnr_y" else 4
            per = "; ".join(" ".join(f"{v:.{d}f}" for v in c[k]["per_seed"].values()) for k in ("cache", "no_cache"))
            lines.append(f"| {scale}{'*' if row['heldout'] else ''} | {m} | {fmt(c['cache']['mean'], c['cache']['sd'], m)}"
                         f" | {fmt(c['no_cache']['mean'], c['no_cache']['sd'], m)} | {per} | "
                         f"{c['mean_difference']:+.{d}f} | {c['pooled_seed_sd']:.{d}f} | "
                         f"{'yes' if c['within_spread'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished stage=lfm run folders")
    parser.add_argument("--out", type=Path, default=REPO / "experiments/studies/latent_cache/latent_cache_validation.json")
    args = parser.parse_args()
    result = compare([load_run(d) for d in args.runs])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(markdown(result))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
