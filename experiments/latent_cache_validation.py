"""Validation metrics after stage 2 with and without the latent cache, against seed-to-seed spread.

    python experiments/latent_cache_validation.py --runs RUN_DIR [RUN_DIR ...]

Each ``RUN_DIR`` is a finished ``python train.py stage=lfm ...`` run folder (its ``metrics.json``
holds the final validation and the run's overrides). The runs are grouped by
``stage.latent_cache`` (default true) and listed by ``seed`` (default 0). Per validation scale
and metric (Y-PSNR, SSIM on Y, LPIPS) it reports every seed, the mean per setting, the
seed range per setting (max - min over seeds) and the difference of the means (cache - no
cache); the difference is "within spread" when it is no larger than the larger of the two
seed ranges. With 2 seeds a range is a poor estimate of the spread: read it as a rough scale.
Writes ``experiments/results/latent_cache_validation.json`` (``--out``) and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from degflow.files import atomic_write_text  # noqa: E402

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
    if not groups[True] or not groups[False]:
        raise SystemExit("--runs needs at least one run with stage.latent_cache=true and one with false")
    scales = list(groups[True][0]["scales"])
    table = {}
    for scale in scales:
        row = {"heldout": groups[True][0]["scales"][scale]["heldout"]}
        for m in METRICS:
            cell = {}
            for flag, name in ((True, "cache"), (False, "no_cache")):
                values = [r["scales"][scale][m] for r in groups[flag]]
                cell[name] = {"per_seed": dict(zip((r["seed"] for r in groups[flag]), values)),
                              "mean": statistics.fmean(values), "seed_range": max(values) - min(values)}
            diff = cell["cache"]["mean"] - cell["no_cache"]["mean"]
            spread = max(cell["cache"]["seed_range"], cell["no_cache"]["seed_range"])
            cell.update(mean_difference=diff, larger_seed_range=spread, within_spread=abs(diff) <= spread)
            row[m] = cell
        table[scale] = row
    return {"runs": runs, "scales": table,
            "rule": "within_spread: |mean(cache) - mean(no cache)| <= the larger seed range (max - min over seeds)"}


def markdown(result: dict) -> str:
    seeds = {flag: sorted({r["seed"] for r in result["runs"] if r["latent_cache"] == flag}) for flag in (True, False)}
    lines = [f"seeds: cache {seeds[True]}, no cache {seeds[False]}; * held-out scale", "",
             "| scale | metric | cache (per seed) | no cache (per seed) | mean diff (cache - no cache) | "
             "larger seed range | within spread |", "|---|---|---|---|---:|---:|---|"]
    digits = {"psnr_y": 2, "ssim_y": 4, "lpips": 4}
    for scale, row in result["scales"].items():
        for m in METRICS:
            c, d = row[m], digits[m]
            per = {k: " / ".join(f"{v:.{d}f}" for v in c[k]["per_seed"].values()) for k in ("cache", "no_cache")}
            lines.append(f"| {scale}{'*' if row['heldout'] else ''} | {m} | {per['cache']} | {per['no_cache']} | "
                         f"{c['mean_difference']:+.{d}f} | {c['larger_seed_range']:.{d}f} | "
                         f"{'yes' if c['within_spread'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished stage=lfm run folders")
    parser.add_argument("--out", type=Path, default=REPO / "experiments/results/latent_cache_validation.json")
    args = parser.parse_args()
    result = compare([load_run(d) for d in args.runs])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
