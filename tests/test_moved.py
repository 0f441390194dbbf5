"""The restructure into layer folders changed no behaviour and broke no old path.

- a checkpoint written before the restructure (tests/data/pre_layers/, made by the code of
  commit d463e22 with the tiny models of tests/test_synthesis.py) still loads, and the dataset
  synthesized from it, and the demo data's degraded images, are bit-identical to what that code
  wrote (sha256 of every PNG / of the 8-bit images, recorded then in pins.json);
- every old import path resolves to the very module at its new home (library paths warn), an old
  ``_target_`` of a saved run config resolves, and docs/ARCHITECTURE.md lists every moved path;
- every command prints one ``error: ...`` line and exits 2 on a usage error.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_synthesis import _image  # the pinned inputs' generator (tests/ is on sys.path under pytest)

from degflow import _moved
from degflow.cli import TOOLS

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "data" / "pre_layers"


def test_a_checkpoint_from_before_the_restructure_synthesizes_the_same_bytes(tmp_path, one_torch_thread):
    from degflow.core.solvers import SolverSpec
    from degflow.generation import Synthesizer
    from degflow.jobs.lr_dataset import write_lr_dataset

    pins = json.loads((PINNED / "pins.json").read_text())
    src = tmp_path / "hr"
    src.mkdir()
    Image.fromarray(_image(40, 56, 1)).save(src / "a.png")
    Image.fromarray(_image(33, 47, 2)).save(src / "b.png")
    synth = Synthesizer.from_checkpoint(PINNED / "pre_layers_lfm.pt", solver=SolverSpec.create("rk4", steps=4))
    summary = write_lr_dataset(synth, src, tmp_path / "ds", pins["scales"], size="both",
                               baselines=["bicubic", "procedural"], progress=False)
    assert summary.failed == 0
    got = {p.relative_to(tmp_path / "ds").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted((tmp_path / "ds").rglob("*.png"))}
    assert got == pins["synthesis"]


def test_the_demo_datas_degraded_images_are_the_same_bytes():
    from degflow.data.demo import demo_image_paths, simulate_camera as degrade
    from degflow.data.images import read_image

    pins = json.loads((PINNED / "pins.json").read_text())["demo_degrade"]
    train, test = demo_image_paths()
    got = {}
    for path in test + train[:1]:
        hr = read_image(path)[:, :96, :96]
        for s in (1.5, 2.75, 4.0):
            lr = degrade(hr, s, seed=7)
            q = ((lr.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().tobytes()
            got[f"{path.name}@x{s}"] = hashlib.sha256(q).hexdigest()
    assert got == pins


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_library_path_is_the_module_at_its_new_home_and_warns(old):
    new = importlib.import_module(_moved.MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {_moved.MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is new


@pytest.mark.parametrize("old", sorted(_moved.COMMANDS))
def test_an_old_command_module_is_the_entry_point_without_a_warning(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        module = importlib.import_module(old)
    assert module is importlib.import_module(_moved.COMMANDS[old])


def test_an_old_target_in_a_saved_run_config_resolves():
    from hydra.utils import get_class, get_method

    from degflow.cli.evaluate import CollectSweep
    from degflow.core.spline import evaluate_path

    assert get_class("degflow.evaluate.CollectSweep") is CollectSweep
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert get_method("degflow.spline.evaluate_path") is evaluate_path


def test_the_architecture_page_lists_every_moved_path():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text[text.index("## Moved import paths"):]
    for old in [*_moved.MOVED, *_moved.COMMANDS]:
        leaf = old.rsplit(".", 1)[-1]
        assert f"`{old}`" in table or f"`{leaf}`" in table or f", `{leaf}`" in table, old


# one bad argument per command: (argv after the interpreter, what the error line names)
_BAD = {
    "quickstart": ["nosuchkey=1"], "train": ["nosuchkey=1"], "synthesize": ["nosuchkey=1"],
    "evaluate": ["nosuchkey=1"], "report": ["/nonexistent/sweep"], "merge-shards": ["/nonexistent/out"],
    "check-data": ["data=nosuchoption"], "convert-official": ["ae=a.pth"], "sr-compare": ["nosuchkey=1"],
    "checkpoint": ["verify"], "fit-noise": ["nosuchkey=1"], "fit-kernel": ["nosuchkey=1"],
}
_COMMANDS = [[sys.executable, "-m", "degflow", tool, *args] for tool, args in _BAD.items()] + [
    [sys.executable, "train.py", "nosuchkey=1"], [sys.executable, "synthesize.py", "nosuchkey=1"],
    [sys.executable, "-m", "degflow.quickstart", "nosuchkey=1"], [sys.executable, "-m", "degflow.evaluate", "x=1"],
    [sys.executable, "-m", "degflow.report", "/nonexistent"], [sys.executable, "-m", "degflow.merge_shards", "--bad"],
    [sys.executable, "-m", "degflow.data.check", "data=nosuch"], [sys.executable, "-m", "degflow.convert_official"],
]


def test_every_tool_is_on_the_list_of_bad_arguments():
    assert set(_BAD) == set(TOOLS)


@pytest.mark.slow  # one interpreter per command
@pytest.mark.parametrize("argv", _COMMANDS, ids=lambda a: " ".join(a[1:3]))
def test_every_command_prints_one_error_line_and_exits_2_on_a_usage_error(argv, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("DEGFLOW_DEBUG", None)
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and lines and lines[-1].startswith("error: "), done.stderr[-2000:]
    assert len([line for line in lines if line.startswith("error: ")]) == 1, done.stderr


def test_python_m_degflow_lists_its_tools():
    done = subprocess.run([sys.executable, "-m", "degflow", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and all(tool in done.stdout for tool in TOOLS)
    unknown = subprocess.run([sys.executable, "-m", "degflow", "evaluat"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: tool 'evaluat'")


@pytest.mark.slow  # one interpreter per command
@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tools_help_ends_with_what_to_change_not_a_config_dump(tool):
    done = subprocess.run([sys.executable, "-m", "degflow", tool, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Exit status" in done.stdout, done.stdout
    assert "== Settings" not in done.stdout and "_target_" not in done.stdout      # no raw config dump
