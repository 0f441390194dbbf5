"""Real camera data: train both stages on Canon RealSR x4 pairs, evaluate generated x4 against
the real x4 on held-out Canon images and on every Nikon image (a camera never seen).

    python -m experiments.reproduce.realsr_x4 --canon ../shared/data/realsr_x4 \\
        --nikon ../shared/data/realsr_x4_eval --out outputs/realsr_x4 --seeds 0 1

Split of the Canon pairs (fixed, by position in the sorted list of HR names, 0-based):
``i % 5 == 4`` -> test (Canon_005, 010, ..., 050: 10 images), ``i % 10 == 2`` -> validation
(Canon_003, 013, 023, 033, 043: 5 images), the other 35 -> training. The split is a folder of
symlinks ``<out>/split/{train,val,test}/{HR,x4}/`` (``split.json`` lists the names), read
with ``data=paired`` (its ``train/`` + ``val/`` subtrees; ``test/`` is only read by evaluation).

Nikon (``--nikon``) is EVALUATION ONLY: it is never passed to training, and nothing in this
script (no setting, no checkpoint, no stopping point) depends on it. Its path appears only in
the evaluation command, as the paired option's ``data.test_root``.

Steps, per seed ``S`` (under ``<out>/seed-S/``):
1. ``python train.py stage=rae data=paired data.root=<out>/split data.train_scales=[1,4] ...``
   (run folder ``rae/``), then ``stage=lfm`` (``lfm/``): knots x1 and x4;
2. ``python -m degflow.evaluate ckpt=<lfm> data=paired ... scales=[4]`` on the Canon test
   images (``eval_canon_test/``) and on all Nikon images (``eval_nikon/``), with the
   bicubic, procedural (Real-ESRGAN second-order, seeded with S) and ae_interp baselines.
Then ``<out>/results.md`` + ``results.json`` (mean ± sample SD over seeds, one row per
(test set, method)) and ``results.png``. Each evaluation folder also holds its own eval.md,
eval.csv, metric_vs_scale.png and crops PNGs.

Resumable: re-running the same command continues unfinished training (train.py resumes from
``last.pt``; a finished stage returns at once) and skips every evaluation whose eval.json exists.

Metrics: ``python -m degflow.evaluate``'s scoring (degflow/metrics/image.py ``psnr_y`` / ``ssim_y``:
8-bit quantized, BT.601 Y, border shave ``eval.shave`` = 0 because this is LR vs LR, full
images at HR pixel size; LPIPS AlexNet; KL / AKLD of the residual histograms). Training's own
validation uses ``eval.protocol=ours``.

Time (defaults: 1000 RAE + 500 LFM steps, 64-pixel crops, batch 8, small models, training
validation on 256-pixel centre crops of the 5 validation images, rk4/16 evaluation, 10 + 50
images of 512x512): 29 min 47 s wall for one seed with one torch thread on a loaded 2-core
machine (commit 0590dee; docs/RESULTS.md, "Real camera data"); budget knobs: ``--rae-steps``,
``--lfm-steps``, ``--crop``, ``--seeds``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from degflow.data.sr_pairs import make_split, paired_files, split_of  # noqa: F401  (split_of: the documented rule)
from degflow.infra.files import atomic_write_json, atomic_write_text
from experiments._runner import (
    METRIC_KEYS,
    Runner,
    add_shared_arguments,
    evaluate,
    fmt,
    list_arg,
    mean_sd,
    results_parser,
    train_commands,
)

SCALE = 4
SETS = {"canon_test": "Canon held-out test", "nikon": "Nikon (unseen camera, eval only)"}
METHODS = ("degflow", "bicubic", "procedural", "ae_interp")


def aggregate(evals: dict[int, dict[str, dict]]) -> dict[str, dict[str, dict[str, list]]]:
    """``{set: {method: {metric: [mean, sd, n]}}}`` over seeds from ``evals[seed][set]``
    (eval.json dicts; only x4 is evaluated, so the ``all`` summary is the x4 mean)."""
    out: dict[str, dict[str, dict[str, list]]] = {}
    for key in SETS:
        out[key] = {}
        methods = next(iter(evals.values()))[key]["summary"].keys()
        for m in methods:
            rows = [evals[s][key]["summary"][m] for s in evals]
            out[key][m] = {k: list(mean_sd([(r.get("all") or {}).get(k) for r in rows])) for k in METRIC_KEYS}
            out[key][m]["nfe"] = list(mean_sd([r.get("nfe") for r in rows]))
            out[key][m]["seconds"] = list(mean_sd([r.get("seconds_per_image") for r in rows]))
    return out


def markdown(agg: dict, seeds: list[int], images: dict[str, int], split: dict[str, list[str]]) -> str:
    higher = {"psnr_y": True, "ssim_y": True, "lpips": False, "kl": False, "akld": False}
    head = ["test set", "method", "PSNR-Y (dB) ↑", "SSIM-Y ↑", "LPIPS ↓", "KL ↓", "AKLD ↓", "NFE", "s / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in SETS.items():
        rows = agg[key]
        best = {}
        for k in METRIC_KEYS:
            vals = [r[k][0] for r in rows.values() if r[k][0] is not None]
            best[k] = (max if higher[k] else min)(vals) if vals else None
        for m, r in rows.items():
            cells = []
            for k in METRIC_KEYS:
                cell = fmt(r[k][0], r[k][1], k)
                cells.append(f"**{cell}**" if r[k][0] is not None and r[k][0] == best[k] else cell)
            cells += [fmt(r["nfe"][0], None, "nfe"), fmt(r["seconds"][0], None, "seconds")]
            lines.append(f"| {label} ({images[key]} img) | {m} | " + " | ".join(cells) + " |")
    spread = "mean ± sample SD over seeds " + ", ".join(map(str, seeds)) if len(seeds) > 1 else f"seed {seeds[0]}"
    notes = [
        "",
        f"Generated x{SCALE} vs the real x{SCALE} capture ({spread}; bold = best mean per test set). "
        f"Trained on {len(split['train'])} Canon pairs (validation {len(split['val'])}, test {len(split['test'])}: "
        f"{', '.join(split['test'])}); knots x1 and x{SCALE}, so x{SCALE} is a seen scale. "
        "ae_interp is an oracle (it encodes the real LR image), not a usable generator. "
        "Nikon was used for nothing but this evaluation.",
        "",
    ]
    # the honest comparisons, computed rather than written by hand
    for key, label in SETS.items():
        rows = agg[key]
        if "degflow" not in rows:
            continue
        for base in ("bicubic", "procedural"):
            if base not in rows:
                continue
            d_psnr = _diff(rows["degflow"]["psnr_y"][0], rows[base]["psnr_y"][0])
            d_lpips = _diff(rows["degflow"]["lpips"][0], rows[base]["lpips"][0])
            if d_psnr is None:
                continue
            verdict = "beats" if d_psnr > 0 else "does NOT beat"
            lp = "" if d_lpips is None else (f"; LPIPS {d_lpips:+.4f} ({'better' if d_lpips < 0 else 'worse'})")
            notes.append(f"- {label}: degflow {verdict} {base} in PSNR-Y ({d_psnr:+.2f} dB){lp}.")
    return "\n".join(lines + notes) + "\n"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def main(argv: list[str] | None = None) -> int:
    p = results_parser(__doc__, "python -m experiments.reproduce.realsr_x4 --canon ../shared/data/realsr_x4 "
                                "--nikon ../shared/data/realsr_x4_eval --seeds 0 1")
    p.add_argument("--canon", type=Path, required=True, help="Canon pairs: HR/ and x4/ (train/val/test are split from it)")
    p.add_argument("--nikon", type=Path, required=True, help="Nikon pairs: HR/ and x4/ (EVALUATION ONLY)")
    p.add_argument("--out", type=Path, default=Path("outputs/realsr_x4"), help="output folder (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0); two or more: mean ± SD")
    p.add_argument("--rae-steps", type=int, default=1000, help="stage-1 steps (default %(default)s)")
    p.add_argument("--lfm-steps", type=int, default=500, help="stage-2 steps (default %(default)s)")
    p.add_argument("--crop", type=int, default=64, help="training crop side, HR pixels (default %(default)s)")
    p.add_argument("--val-max-size", type=int, default=256,
                   help="training validation: centre crop of at most this side (default %(default)s; evaluation "
                        "always scores full images)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods evaluated")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images per set (smoke tests)")
    add_shared_arguments(p)
    args = p.parse_args(argv)

    out = args.out.resolve()
    canon, nikon = args.canon.resolve(), args.nikon.resolve()
    if canon == nikon:
        raise SystemExit("error: --canon and --nikon are the same folder; Nikon is evaluation-only")
    paired_files(nikon, SCALE, "--nikon")  # fail early on a wrong path (names only; no image is read here)
    split = make_split(canon, out / "split", SCALE, "--canon")
    print(f"Canon split ({out / 'split' / 'split.json'}): train {len(split['train'])}, val {len(split['val'])}, "
          f"test {len(split['test'])}", flush=True)
    runner = Runner({"DEGFLOW_LPIPS_WEIGHTS": args.lpips_weights} if args.lpips_weights else None)
    data = ["data=paired", f"data.root={out / 'split'}", f"data.train_scales={list_arg([1, SCALE])}",
            f"data.crop_size={args.crop}"]  # evaluation builds the same bundle (it checks the crop size)
    train_over = [*data, f"data.val_max_size={args.val_max_size}", "logger=none", f"device={args.device}",
                  *args.train_override]
    evals: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        run_root = out / f"seed-{seed}"
        ckpt = None
        for stage, cmd, ckpt in train_commands(run_root, [*train_over, f"seed={seed}"], args.rae_steps, args.lfm_steps):
            runner(cmd, f"seed {seed}: train stage {stage}")
        ev = [f"ckpt={ckpt}", *data, f"scales=[{SCALE}]", f"methods={list_arg(args.methods)}",
              f"procedural_seed={seed}", f"device={args.device}",
              *([f"eval.max_images={args.max_images}"] if args.max_images else []), *args.eval_override]
        evals[seed] = {
            "canon_test": evaluate(runner, run_root / "eval_canon_test", ev, f"seed {seed}: evaluate on Canon test"),
            "nikon": evaluate(runner, run_root / "eval_nikon", [*ev, f"data.test_root={nikon}"],
                              f"seed {seed}: evaluate on Nikon (evaluation only)"),
        }
    agg = aggregate(evals)
    images = {k: next(iter(evals.values()))[k]["images"] for k in SETS}
    table = markdown(agg, args.seeds, images, split)
    atomic_write_text(out / "results.md", "# RealSR x4: generated vs real LR (Canon held-out, Nikon)\n\n" + table)
    atomic_write_json(out / "results.json", {
        "seeds": args.seeds, "split": split, "canon": str(canon), "nikon": str(nikon), "images": images,
        "settings": {"rae_steps": args.rae_steps, "lfm_steps": args.lfm_steps, "crop": args.crop,
                     "methods": args.methods, "train_overrides": args.train_override,
                     "eval_overrides": args.eval_override},
        "aggregate": agg, "per_seed": {str(s): {k: v["summary"] for k, v in e.items()} for s, e in evals.items()},
        "eval_settings": {k: v["settings"] for k, v in next(iter(evals.values())).items()},
        "commands": runner.commands,
    })
    from degflow.viz.plots import plot_method_bars

    plot_method_bars({k: {SETS[s].split(" (")[0]: {m: tuple(r[k][:2]) for m, r in agg[s].items()} for s in SETS}
                      for k in ("psnr_y", "lpips", "akld")}, out / "results.png")
    print("\n" + table)
    print(f"table: {out / 'results.md'}\njson: {out / 'results.json'}\nplot: {out / 'results.png'}\n"
          f"per-evaluation tables and crops: {out}/seed-*/eval_*/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
