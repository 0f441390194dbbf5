"""Does the stochastic option bring generated LR closer to real LR than the deterministic output?

For one stage-2 checkpoint and its data option: fit the noise model once per seed (``python -m degflow
fit-noise``, training split only, seeded random crops), then evaluate every test set with the
deterministic LR, the stochastic samples and their mean (``python -m degflow evaluate
methods=[degflow,stochastic,stochastic_mean] eval.hr_size_output=from_lr eval.noise_stats=lr``: LR at
true LR size, scored against the real LR; KL, AKLD and the spectrum at true LR size), the samples of seed S drawn with ``noise_seed=S``. The table puts the
deterministic row beside each seed's stochastic row and says, per metric and scale, whether the
stochastic rows beat the deterministic one by more than the spread of the seeds.

    python -m experiments.studies.stochastic.stochastic --ckpt <lfm> --out <folder> --seeds 0 1 \\
        --data data=paired data.root=<canon split> data.train_scales=[1,4] data.crop_size=64 \\
        --set canon_test= --set nikon=data.test_root=../shared/data/realsr_x4_eval

``--set NAME=OVERRIDES`` (space-separated Hydra overrides, may be empty) names one evaluation set: the
data option's evaluation split with those overrides (``eval.split=val`` for the validation split).
Re-running skips the noise fits and evaluations that exist. Writes ``<out>/results.md`` and
``results.json`` (every command it ran included).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from experiments._runner import Runner, list_arg, results_parser

METRICS = {"psnr_y": ("PSNR-Y", True), "ssim_y": ("SSIM-Y", True), "lpips": ("LPIPS", False),
           "kl": ("KL", False), "akld": ("AKLD", False), "spec": ("spectrum dist. dB", False),
           "diversity": ("diversity (LPIPS)", None)}
METHODS = ("degflow", "stochastic", "stochastic_mean")


def _cell(v: float | None, metric: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.2f}" if metric in ("psnr_y", "spec") else f"{v:.4f}"


def verdict(det: float | None, seeds: list[float | None], higher: bool | None) -> str:
    """``closer`` when every seed's stochastic value beats the deterministic one and the mean
    improvement exceeds the seeds' range; ``farther`` when every seed is worse by more than that;
    else ``within spread``."""
    vals = [v for v in seeds if v is not None]
    if higher is None or det is None or len(vals) != len(seeds) or not vals:
        return ""
    spread = max(vals) - min(vals)
    gain = [(v - det) if higher else (det - v) for v in vals]
    mean_gain = sum(gain) / len(gain)
    if all(g > 0 for g in gain) and mean_gain > spread:
        return "better"
    if all(g < 0 for g in gain) and -mean_gain > spread:
        return "worse"
    return "within spread"


def table(evals: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[str, dict]:
    """Markdown per evaluation set and scale, and the numbers behind it."""
    lines, data = [], {}
    for name, by_seed in evals.items():
        first = by_seed[seeds[0]]
        settings = first["settings"]
        lines += [f"### {name}", "", f"- split: `{settings.get('split')}`, images: {first['images']}, "
                  f"samples per image and scale: {settings.get('samples')}, strength: {settings.get('strength')}, "
                  f"scored at HR size from true-size LR (`hr_size_output={settings.get('hr_size_output')}`), "
                  f"noise statistics measured at {'true LR size' if settings.get('noise_stats') == 'lr' else 'HR size'} "
                  f"(`eval.noise_stats={settings.get('noise_stats', 'hr')}`)", ""]
        data[name] = {}
        for scale in first["scales"]:
            det = first["per_scale"]["degflow"][scale]
            rows = {s: by_seed[s]["per_scale"] for s in seeds}
            head = ["x" + scale + ("*" if det.get("heldout") else ""), "deterministic"] \
                + [f"stochastic, seed {s}" for s in seeds] + ["seed range", "stochastic vs deterministic"] \
                + [f"mean of samples, seed {s}" for s in seeds]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            data[name][scale] = {}
            for m, (label, higher) in METRICS.items():
                st = [rows[s]["stochastic"][scale].get(m) for s in seeds]
                mean = [rows[s]["stochastic_mean"][scale].get(m) for s in seeds]
                vals = [v for v in st if v is not None]
                spread = (max(vals) - min(vals)) if len(vals) == len(st) and vals else None
                v = verdict(det.get(m), st, higher)
                lines.append("| " + " | ".join([label, _cell(det.get(m), m), *(_cell(x, m) for x in st),
                                                _cell(spread, m), v, *(_cell(x, m) for x in mean)]) + " |")
                data[name][scale][m] = {"deterministic": det.get(m), "stochastic": dict(zip(seeds, st)),
                                        "stochastic_mean": dict(zip(seeds, mean)), "seed_range": spread, "verdict": v}
            lines.append("")
    return "\n".join(lines), data


def main(argv: list[str] | None = None) -> int:
    p = results_parser(__doc__, "python -m experiments.studies.stochastic.stochastic --ckpt lfm.pt --out /tmp/st "
                                "--data data=demo --set demo_test=")
    p.add_argument("--ckpt", required=True, type=Path, help="stage-2 (lfm) checkpoint")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--data", nargs="*", default=["data=demo"], help="Hydra overrides naming the data option "
                   "(the one the checkpoint was trained on); the fit reads its training split only")
    p.add_argument("--set", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="an evaluation set: name and extra overrides (repeatable; default: test=)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fit seeds = noise seeds (default 0 1)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--scales", default=None, help="scales to evaluate, e.g. [1.5,2,3] (default: the data's)")
    p.add_argument("--fit-override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--noise-stats", default="lr", choices=["lr", "hr"],
                   help="where KL / AKLD / spectrum are measured (eval.noise_stats; default lr: true LR size)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each evaluation (default 1)")
    args = p.parse_args(argv)
    out = args.out.resolve()
    runner = Runner()
    noise = {}
    for seed in args.seeds:
        noise[seed] = out / f"noise-seed{seed}.pt"
        if noise[seed].is_file():
            print(f"== noise model seed {seed}: kept ({noise[seed]})", flush=True)
            continue
        runner(["-m", "degflow", "fit-noise", f"ckpt={args.ckpt}", *args.data, f"out={noise[seed]}", f"seed={seed}",
                "threads=1", f"hydra.run.dir={out / 'logs' / f'fit-seed{seed}'}", *args.fit_override],
               f"fit the noise model, seed {seed}")
    sets = dict(s.split("=", 1) for s in (args.set or ["test="]))
    evals: dict[str, dict[int, dict]] = {}
    for name, extra in sets.items():
        evals[name] = {}
        for seed in args.seeds:
            folder = out / name / f"seed-{seed}"
            if not (folder / "eval.json").is_file():
                runner(["-m", "degflow", "evaluate", f"ckpt={args.ckpt}", *args.data, *extra.split(),
                        f"noise={noise[seed]}", f"noise_seed={seed}", f"samples={args.samples}",
                        f"strength={args.strength}", f"methods={list_arg(METHODS)}", "eval.hr_size_output=from_lr",
                        f"eval.noise_stats={args.noise_stats}", f"threads={args.threads}",
                        "plots=false", *([f"scales={args.scales}"] if args.scales else []), f"out={folder}",
                        f"hydra.run.dir={out / 'logs' / name / f'seed-{seed}'}"], f"evaluate {name}, seed {seed}")
            evals[name][seed] = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
    md, data = table(evals, args.seeds)
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"commands": runner.commands, "results": data}, indent=1) + "\n",
                                      encoding="utf-8")
    print(md, flush=True)
    print(f"table: {out / 'results.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
