"""Run ``train.py`` (arguments passed on) and record which files this process writes.

Used by ``test_distributed.py`` as the torchrun worker: a Python audit hook notes every file
opened for writing (``open`` / ``os.open`` with a write mode or flag: this covers the atomic
writes' temp files, appends, Hydra's ``.hydra`` files and log files), every rename and every
``mkdir``, and at exit writes them as JSON to ``$RECORD_WRITES_DIR/rank{RANK}.json``, with
this process's pid in ``pid{RANK}``.
"""

import atexit
import json
import os
import runpy
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
record_dir = Path(os.environ["RECORD_WRITES_DIR"])
rank = os.environ.get("RANK", "0")
writes: list[list[str]] = []


def hook(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = args
        writing_mode = isinstance(mode, str) and any(c in mode for c in "wax+")
        if writing_mode or (isinstance(flags, int) and flags & WRITE_FLAGS):
            writes.append(["write", os.path.abspath(os.fsdecode(path))])
    elif event in ("os.rename", "os.mkdir"):
        writes.append([event, *(os.path.abspath(os.fsdecode(a)) for a in args[:2] if isinstance(a, (str, bytes)))])


def dump() -> None:
    (record_dir / f"rank{rank}.json").write_text(json.dumps(writes))


record_dir.mkdir(parents=True, exist_ok=True)
(record_dir / f"pid{rank}").write_text(str(os.getpid()))
atexit.register(dump)
sys.addaudithook(hook)
script = Path(__file__).resolve().parents[1] / "train.py"
sys.argv = [str(script), *sys.argv[1:]]
sys.path.insert(0, str(script.parent))
runpy.run_path(str(script), run_name="__main__")
