"""Fault injection for ``tests/test_faults.py``: a full disk, kills and stop signals inside degflow's writes.

Every file degflow writes counts only after ``os.fsync``: an atomic write syncs its temporary
file before the rename, an append syncs after its one ``write``. :func:`inject` wraps
``os.fsync``: when the file being synced matches a rule (a regular expression searched in the
path of the file it becomes: ``dir/.last.pt.k3x9.tmp`` counts as ``dir/last.pt``), the rule
acts on its ``nth`` matching sync (1-based) and, with ``times``, on that many after it (``-1``:
every later one); with ``stays``, once it has acted every later sync of any file fails too
(a disk that stays full):

- ``enospc``: the write is cut short (a temp file keeps half its bytes; an append keeps half
  of its last line) and ``OSError(ENOSPC)`` is raised, as a full disk does;
- ``kill``: the write is cut short the same way and the process is SIGKILLed (a kill mid-write);
- ``term``: SIGTERM is sent to the process (the write itself completes); ``count=2`` sends a
  second one ``interval`` seconds later (from a timer thread, as a user or scheduler would);
- ``sleep``: the process sleeps ``seconds`` (to hold a folder while a second process tries it).

As a script it runs a degflow entry point under rules read from ``$DEGFLOW_FAULTS`` (JSON list)::

    DEGFLOW_FAULTS='[{"file": "checkpoints/last.pt$", "action": "enospc", "nth": 2}]' \\
        python tests/_faults.py train.py stage=rae ...          # or: tests/_faults.py -m degflow.evaluate ...

The rules act on the write primitive only, so they work the same before and after any change
to the code that writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import runpy
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

FAULTS_ENV = "DEGFLOW_FAULTS"
_real_fsync = os.fsync


def _target(path: str) -> str:
    """The file a temp file of an atomic write becomes (``.name.random.tmp`` -> ``name``)."""
    head, name = os.path.split(path)
    if name.startswith(".") and name.endswith(".tmp"):
        stem, dot, _ = name[1:-4].rpartition(".")
        if dot and stem:
            return os.path.join(head, stem)
    return path


def _cut(fd: int, path: str) -> None:
    """Leave the file half written: a temp file keeps half its bytes, an append half its last line."""
    size = os.fstat(fd).st_size
    if _target(path) != path:
        os.ftruncate(fd, size // 2)
        return
    with open(path, "rb") as f:
        data = f.read()
    start = data.rstrip(b"\n").rfind(b"\n") + 1          # start of the last line
    os.ftruncate(fd, start + max(1, (size - start) // 2))


class _Rule:
    def __init__(self, file: str, action: str, nth: int = 1, times: int = 1, seconds: float = 0.0,
                 count: int = 1, interval: float = 0.3, stays: bool = False):
        if action not in ("enospc", "kill", "term", "sleep"):
            raise ValueError(f"unknown fault action {action!r}")
        self.pattern, self.action, self.nth, self.times, self.seconds = re.compile(file), action, nth, times, seconds
        self.count, self.interval, self.stays = count, interval, stays
        self.seen, self.full = 0, False

    def hits(self, path: str) -> bool:
        if self.full:
            return True
        if not self.pattern.search(_target(path)):
            return False
        self.seen += 1
        last = float("inf") if self.times < 0 else self.nth + self.times - 1
        hit = self.nth <= self.seen <= last
        self.full = hit and self.stays and self.action == "enospc"
        return hit


def _faulty_fsync(rules: Sequence[_Rule]):
    def fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{int(fd if isinstance(fd, int) else fd.fileno())}")
        except OSError:
            return _real_fsync(fd)
        for rule in rules:
            if not rule.hits(path):
                continue
            if rule.action == "sleep":
                time.sleep(rule.seconds)
            elif rule.action == "term":
                for k in range(1, rule.count):
                    threading.Timer(k * rule.interval, os.kill, (os.getpid(), signal.SIGTERM)).start()
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                _cut(fd, path)
                if rule.action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_fsync(fd)
    return fsync


@contextlib.contextmanager
def inject(rules: Sequence[dict]) -> Iterator[list[_Rule]]:
    """Apply ``rules`` (dicts as in the module docstring) to this process while the block runs."""
    active = [_Rule(**r) for r in rules]
    os.fsync = _faulty_fsync(active)
    try:
        yield active
    finally:
        os.fsync = _real_fsync


def main(argv: list[str]) -> None:
    rules = [_Rule(**r) for r in json.loads(os.environ.get(FAULTS_ENV, "[]"))]
    os.fsync = _faulty_fsync(rules)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # degflow of this checkout
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    script = Path(argv[0]).resolve()
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
