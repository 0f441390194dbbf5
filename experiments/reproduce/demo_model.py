"""The shipped demo model (degflow/assets/demo/): train it with the card's recipe, export it, measure its card.

    python -m experiments.reproduce.demo_model --out outputs/demo_model              # train, export, measure
    python -m experiments.reproduce.demo_model --ckpt demo --out outputs/demo_card    # measure the shipped model
    python -m experiments.reproduce.demo_model --out outputs/demo_model --install     # ... and ship the result

1. Without ``--ckpt``: the card's training command, ``python -m degflow.quickstart train=true threads=1
   seed=S budget=B out=<out>/train``: both stages on ``data=demo`` with ``budgets.<B>`` of
   conf/quickstart.yaml, then the weights-only ``<out>/train/model.pt`` (its digest is the one on
   the card when the weights come out bitwise equal: same seed, one thread, same torch build).
   The digest is degflow's ``checkpoint_sha256`` (:mod:`degflow.infra.digests`: the sha256 of the
   file as ``torch.save`` wrote it, sealed inside the file).
2. The card's figures on the demo TEST split (the two test photos, never read by training): the
   degradation profile (:func:`degflow.jobs.degradation_profile.degradation_profile`: fine detail
   kept and noise per scale, real vs generated vs bicubic vs the oracle, and the autoencoder's own
   reconstruction of the real LR per knot) and ``python -m degflow.evaluate`` with degflow, bicubic
   and ae_interp (LPIPS when its weights are found).
3. ``<out>/card.json`` (and with ``--install`` a copy of it and of the model in degflow/assets/demo/).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from degflow.infra.checkpoint import resolve_checkpoint
from degflow.infra.digests import file_digest
from degflow.infra.files import atomic_write_json
from experiments._runner import REPO, Runner, evaluate, list_arg, results_parser

#: the scales of the card (the quick start shows 1.5, 2.5, 3 and 4 of them)
SCALES = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
ASSETS = REPO / "degflow" / "assets" / "demo"


def card(model: Path, out: Path, runner: Runner, recipe: dict, lpips_weights: str | None) -> dict:
    """The card's record of ``model`` (module docstring, step 2)."""
    from degflow.cli.quickstart import lpips_weights_folder, profile_model
    from degflow.data.demo import TEST_IMAGES, TRAIN_IMAGES

    profile = profile_model(model, SCALES, device="cpu", seed=recipe["seed"], oracle=True)
    alexnet = lpips_weights_folder(lpips_weights)["alex"]
    evaluation = evaluate(runner, out / "evaluation",
                          [f"ckpt={model}", "data=demo", f"scales={list_arg(SCALES)}", "device=cpu",
                           "methods=[degflow,bicubic,ae_interp]",
                           f"eval.lpips_backbone_weights={alexnet}" if alexnet else "eval.lpips=false"],
                          "evaluate on the demo test split")
    return {"file": "model.pt", "digest": file_digest(model).sha256, "bytes": model.stat().st_size,
            "recipe": recipe, "torch": torch.__version__,
            "data": {"option": "demo", "train_photos": list(TRAIN_IMAGES), "test_photos": list(TEST_IMAGES)},
            "scales": list(SCALES), "profile": profile,
            "evaluation": {"per_scale": evaluation["per_scale"], "summary": evaluation["summary"]}}


def main(argv: list[str] | None = None) -> int:
    p = results_parser(__doc__, "python -m experiments.reproduce.demo_model --out outputs/demo_model")
    p.add_argument("--ckpt", default=None, help="a stage-2 model to measure (demo = the shipped one); default: train")
    p.add_argument("--out", type=Path, default=Path("outputs/demo_model"), help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--budget", default="demo", choices=["demo", "tiny"], help="training budget (default %(default)s)")
    p.add_argument("--lpips-weights", default=None, help="folder with alexnet_features.pth (default: $DEGFLOW_LPIPS_WEIGHTS)")
    p.add_argument("--install", action="store_true", help="copy model.pt and card.json into degflow/assets/demo/")
    args = p.parse_args(argv)

    out = args.out.resolve()
    runner = Runner()
    command = ["-m", "degflow.quickstart", "train=true", "threads=1", f"seed={args.seed}", f"budget={args.budget}",
               f"out={out / 'train'}"]
    if args.ckpt is None:
        runner(command, "train both stages with the card's recipe")
        model = out / "train" / "model.pt"
    else:
        model = resolve_checkpoint(args.ckpt).resolve()
        if not model.is_file():
            raise SystemExit(f"error: --ckpt {args.ckpt} is not a file")
    from degflow.cli.quickstart import budget_overrides

    recipe = {"command": "python " + " ".join(command[:-1]), "seed": args.seed, "budget": args.budget,
              "overrides": budget_overrides(args.budget)}
    record = card(model, out, runner, recipe, args.lpips_weights)
    atomic_write_json(out / "card.json", record)
    print(f"card: {out / 'card.json'}\nmodel: {model} digest {record['digest']}", flush=True)
    if args.install:
        ASSETS.mkdir(parents=True, exist_ok=True)
        if model != ASSETS / "model.pt":
            shutil.copyfile(model, ASSETS / "model.pt")
        atomic_write_json(ASSETS / "card.json", record)
        print(f"installed into {ASSETS}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
