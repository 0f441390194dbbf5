"""Demo-data results: continuous-scale evaluation with every baseline, and a solver sweep.

    python -m experiments.reproduce.demo_results --ckpt path/to/lfm/checkpoints/last.pt --out outputs/demo_results
    python -m experiments.reproduce.demo_results --out outputs/demo_results       # trains the default demo model first

1. Without ``--ckpt``: trains both stages with the default demo commands
   (``python train.py stage=rae`` then ``stage=lfm``, run folders ``<out>/train/{rae,lfm}``;
   re-running resumes or skips them).
2. ``<out>/scales/``: ``python -m degflow.evaluate ckpt=... data=demo
   scales=[1.5,2,2.5,3,3.5,4]`` with degflow, bicubic, procedural and ae_interp on the demo
   TEST split (the two test photos, never read by training): eval.md / eval.json / eval.csv,
   ``metric_vs_scale.png`` (every method, held-out scales shaded) and crops PNGs.
3. ``<out>/solver_sweep/``: the same checkpoint and scales under every combination of
   ``--sweep-solvers`` x ``--sweep-steps`` x ``--sweep-modes`` (one ``python -m degflow.evaluate -m``
   multirun, model only, LPIPS off): ``sweep.md`` / ``sweep.csv`` (NFE, seconds per image,
   held-out and seen metrics per setting) and ``psnr_vs_nfe.png`` (held-out PSNR-Y vs NFE,
   one line per solver): the accuracy / speed frontier. It reports; nothing is chosen from it
   (the synthesis default was fixed before, on validation data).
4. ``<out>/README_block.md``: a Markdown block for docs/RESULTS.md (printed too).

Finished parts are kept when the command is re-run (``eval.json`` / ``sweep.md`` exist).
Metrics: ``python -m degflow.evaluate``'s scoring (8-bit, BT.601 Y, ``eval.shave=0``, LR vs LR
at HR pixel size; LPIPS AlexNet; KL / AKLD).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from degflow.infra.files import atomic_write_json, atomic_write_text
from experiments._runner import REPO, Runner, add_shared_arguments, evaluate, list_arg, results_parser, train_commands

SCALES = (1.5, 2, 2.5, 3, 3.5, 4)
METHODS = ("degflow", "bicubic", "procedural", "ae_interp")


def _sections(markdown: str) -> dict[str, str]:
    """``{heading: body}`` of the ``## `` sections of an eval.md."""
    out, head = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            head = line[3:].strip()
            out[head] = []
        elif head is not None:
            out[head].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def readme_block(out: Path, commands: list[str], ckpt: Path) -> str:
    sec = _sections((out / "scales" / "eval.md").read_text(encoding="utf-8"))
    sweep = (out / "solver_sweep" / "sweep.md").read_text(encoding="utf-8").split("\n", 2)[-1].strip()
    rel = os.path.relpath(out, REPO)
    lines = ["### Demo data: generated LR vs the real (procedural-camera) LR at continuous scales", "",
             "```bash", *commands, "```", "",
             f"Checkpoint `{ckpt}`; demo TEST split (2 photos); * = scale never seen in training "
             "(knots x1, x2, x4). ae_interp is an oracle that encodes the real LR images.", "",
             "Summary (means over images and scales):", "", sec.get("Summary", "(missing)"), ""]
    for head, body in sec.items():
        if head.startswith(("PSNR-Y", "LPIPS", "AKLD")):
            lines += [f"{head}:", "", body, ""]
    lines += [f"![metric vs scale]({rel}/scales/metric_vs_scale.png)", "",
              "### Demo data: solver accuracy / speed frontier (held-out scales)", "",
              sweep, "", f"![PSNR vs NFE]({rel}/solver_sweep/psnr_vs_nfe.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = results_parser(__doc__, "python -m experiments.reproduce.demo_results --ckpt outputs/lfm/default/"
                                "checkpoints/last.pt --out outputs/demo_results")
    p.add_argument("--ckpt", type=Path, default=None, help="stage-2 checkpoint (default: train the demo model)")
    p.add_argument("--out", type=Path, default=Path("outputs/demo_results"), help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed when no --ckpt is given (default 0)")
    p.add_argument("--rae-steps", type=int, default=None, help="stage-1 steps when training (default: conf/stage/rae.yaml)")
    p.add_argument("--lfm-steps", type=int, default=None, help="stage-2 steps when training (default: conf/stage/lfm.yaml)")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES), help="evaluated scales (default %(default)s)")
    p.add_argument("--sweep-solvers", nargs="+", default=["euler", "midpoint", "rk4"], help="fixed-step solvers swept")
    p.add_argument("--sweep-steps", type=int, nargs="+", default=[4, 8, 16, 32], help="step counts swept")
    p.add_argument("--sweep-modes", nargs="+", default=["grid", "cubic"], choices=["grid", "cubic"],
                   help="solver.output_mode values swept")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N test images (smoke tests)")
    p.add_argument("--data-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra data.* override for training and evaluation (repeatable), e.g. data.max_side=160")
    add_shared_arguments(p)
    args = p.parse_args(argv)

    out = args.out.resolve()
    runner = Runner({"DEGFLOW_LPIPS_WEIGHTS": args.lpips_weights} if args.lpips_weights else None)
    ckpt = args.ckpt.resolve() if args.ckpt else None
    if ckpt is None:
        overrides = ["data=demo", *args.data_override, "logger=none", f"device={args.device}", f"seed={args.seed}",
                     *args.train_override]
        for stage, cmd, ckpt in train_commands(out / "train", overrides, args.rae_steps, args.lfm_steps):
            runner(cmd, f"train stage {stage} on the demo data")
    elif not ckpt.is_file():
        raise SystemExit(f"error: --ckpt {ckpt} is not a file (a stage-2 checkpoint, e.g. outputs/lfm/<run>/checkpoints/last.pt)")
    common = [f"ckpt={ckpt}", "data=demo", *args.data_override, f"scales={list_arg(args.scales)}",
              f"device={args.device}", *([f"eval.max_images={args.max_images}"] if args.max_images else []),
              *args.eval_override]
    scales = evaluate(runner, out / "scales", [*common, f"methods={list_arg(METHODS)}"],
                      "evaluate every method at continuous scales")
    sweep_dir = out / "solver_sweep"
    if (sweep_dir / "sweep.md").is_file():
        print(f"\n== solver sweep: finished before, kept ({sweep_dir / 'sweep.md'})", flush=True)
    else:
        runner(["-m", "degflow.evaluate", *common, "methods=[degflow]", "eval.lpips=false", "plots=false",
                f"hydra.sweep.dir={sweep_dir}", "-m", f"solver={','.join(args.sweep_solvers)}",
                f"solver.steps={','.join(map(str, args.sweep_steps))}",
                f"solver.output_mode={','.join(args.sweep_modes)}"], "solver sweep")
    given = argv if argv is not None else sys.argv[1:]
    block = readme_block(out, [shlex.join(["python", "-m", "experiments.reproduce.demo_results", *given])], ckpt)
    atomic_write_text(out / "README_block.md", block)
    atomic_write_json(out / "results.json", {"checkpoint": str(ckpt), "scales": args.scales,
                                      "summary": scales["summary"], "per_scale": scales["per_scale"],
                                      "commands": runner.commands})
    print("\n" + block)
    print(f"README block: {out / 'README_block.md'}\nmetric vs scale: {out / 'scales' / 'metric_vs_scale.png'}\n"
          f"solver sweep: {sweep_dir / 'sweep.md'}, {sweep_dir / 'psnr_vs_nfe.png'}\nresults: {out / 'results.json'}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
