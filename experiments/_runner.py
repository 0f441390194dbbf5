"""Helpers shared by the experiment scripts (``experiments/*.py``): running the project's
own entry points as subprocesses, skipping finished work, and seed statistics.

The scripts only orchestrate ``python train.py`` and ``python -m degflow.evaluate``, so every
number they report comes from the same code path a user runs by hand; every command they
run is logged and recorded in their results JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from degflow.infra.files import atomic_write_json
from degflow.viz.tables import fmt, mean_sd  # noqa: F401  (the scripts' formatter and seed statistics)

REPO = Path(__file__).resolve().parents[1]

#: Metrics of ``eval.json`` summaries, in table order (degflow.jobs.evaluation.METRICS).
METRIC_KEYS = ("psnr_y", "ssim_y", "lpips", "kl", "akld")


class Runner:
    """Runs commands from the repository root, logs them, and remembers them."""

    def __init__(self, env: dict[str, str] | None = None):
        self.env = {**os.environ, **(env or {})}
        self.commands: list[str] = []

    def __call__(self, args: Sequence[str], what: str) -> None:
        cmd = [sys.executable, *args]
        line = shlex.join(["python", *args])
        self.commands.append(line)
        print(f"\n== {what}\n$ {line}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, env=self.env)
        if done.returncode != 0:
            raise SystemExit(f"error: {what} failed with exit code {done.returncode}: {line}")
        print(f"-- {what}: {time.perf_counter() - start:.0f} s", flush=True)


def results_parser(doc: str, example: str) -> argparse.ArgumentParser:
    """The parser of a results script: its docstring's first paragraph as the description (the
    rest kept verbatim) and ``example`` (a command line) as the epilog."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=f"Example:\n  {example}")


def add_shared_arguments(parser) -> None:
    """The options both results scripts take: LPIPS weights, device, extra overrides."""
    parser.add_argument("--lpips-weights", default=os.environ.get("DEGFLOW_LPIPS_WEIGHTS"),
                        help="folder with vgg16_features.pth / alexnet_features.pth (default $DEGFLOW_LPIPS_WEIGHTS)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default %(default)s)")
    parser.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra train.py override for both stages (repeatable), e.g. model.rae.widths=[8,8,16,16]")
    parser.add_argument("--eval-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra degflow.evaluate override for every evaluation (repeatable), e.g. eval.lpips=false")


def train_commands(run_root: Path, overrides: Sequence[str], rae_steps: int | None,
                   lfm_steps: int | None) -> list[tuple[str, list[str], Path]]:
    """``(stage, train.py arguments, checkpoint)`` of both stages, each in a fixed run folder
    (``run_root/rae``, ``run_root/lfm``) so re-running the same command resumes or, when the
    stage finished, returns at once (train.py's exact resume)."""
    rae_dir, lfm_dir = run_root / "rae", run_root / "lfm"
    rae_ckpt, lfm_ckpt = rae_dir / "checkpoints" / "last.pt", lfm_dir / "checkpoints" / "last.pt"
    common = [*overrides, f"output_root={run_root}"]
    rae = ["train.py", "stage=rae", *common, *([f"stage.steps={rae_steps}"] if rae_steps else []),
           f"hydra.run.dir={rae_dir}"]
    lfm = ["train.py", "stage=lfm", *common, *([f"stage.steps={lfm_steps}"] if lfm_steps else []),
           f"rae_ckpt={rae_ckpt}", f"hydra.run.dir={lfm_dir}"]
    return [("rae", rae, rae_ckpt), ("lfm", lfm, lfm_ckpt)]


def evaluate(runner: Runner, out_dir: Path, overrides: Sequence[str], what: str) -> dict[str, Any]:
    """``python -m degflow.evaluate <overrides>`` into ``out_dir`` (Hydra's run folder), unless
    ``out_dir/eval.json`` exists (written atomically last-but-plots: a finished evaluation);
    returns the parsed eval.json."""
    result = out_dir / "eval.json"
    if result.is_file():
        print(f"\n== {what}: finished before, kept ({result})", flush=True)
    else:
        runner(["-m", "degflow.evaluate", *overrides, f"hydra.run.dir={out_dir}"], what)
    return json.loads(result.read_text(encoding="utf-8"))


def list_arg(values: Sequence[object]) -> str:
    """A Hydra list override value: ``[1,4]``."""
    return "[" + ",".join(str(v) for v in values) + "]"


def publish(path: Path, data: Any, table: str) -> int:
    """End of a diagnosis script: print its table, write its json (atomically, folders made),
    say where it went; returns the exit code 0."""
    print(table, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    print(f"json: {path}", flush=True)
    return 0
