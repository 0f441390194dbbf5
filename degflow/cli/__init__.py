"""Every command of degflow, one module each, all through :mod:`degflow.cli.app`.

``python -m degflow <tool> [arguments]`` (or the ``degflow`` console script) runs a tool by
name; the long-standing spellings keep working: ``python train.py``, ``python synthesize.py``,
``python -m degflow.quickstart``, ``degflow.evaluate``, ``degflow.report``,
``degflow.merge_shards``, ``degflow.convert_official``, ``degflow.data.check``.
"""

from __future__ import annotations

import importlib
import sys

#: tool name -> (module under degflow.cli, what it does)
TOOLS: dict[str, tuple[str, str]] = {
    "quickstart": ("quickstart", "the main job on built-in data: a shipped model, LR at continuous scales, "
                                 "a picture and an evaluation"),
    "train": ("train", "train a stage: stage=rae (autoencoder) or stage=lfm (latent flow matching)"),
    "synthesize": ("synthesize", "LR datasets at any scale from a folder of HR images"),
    "fit-noise": ("fit_noise", "fit the stochastic part (a noise model at true LR size) of a checkpoint's degradation"),
    "evaluate": ("evaluate", "generated LR vs real LR per scale, with baselines (and sweep tables)"),
    "report": ("report", "the table, CSV and plots of a training sweep"),
    "merge-shards": ("merge_shards", "verify and merge a dataset synthesized in shards"),
    "check-data": ("check_data", "validate a data tree before training"),
    "convert-official": ("convert_official", "the authors' released weights as a degflow checkpoint"),
    "checkpoint": ("checkpoint", "verify the digest of checkpoints, or add it to files written without one"),
    "sr-compare": ("sr_compare", "train and score SR networks on degflow, procedural, bicubic and real pairs"),
    "fit-kernel": ("fit_kernel", "fit the kernel baseline on a data option's training pairs (a kernel file)"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = ["usage: python -m degflow <tool> [arguments]     (<tool> --help for its settings)", "", "tools:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``python -m degflow <tool> ...`` to ``degflow.cli.<module>.cli()``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in TOOLS:
        close = [t for t in TOOLS if t.replace("-", "_") == name.replace("-", "_")]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"error: tool {name!r} is not one of {list(TOOLS)}{hint}; python -m degflow --help", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"degflow.cli.{TOOLS[name][0]}")
    sys.argv = [f"{argv[0]} {name}", *argv[2:]]
    module.cli()
