"""What a long job shows its user: progress bars on a terminal, log lines in a file.

One home for two questions every job answers (training, validation, synthesis):

- :func:`progress_bar`: a tqdm bar when stderr is an interactive terminal, and none when
  it is not (a redirected log, a SLURM ``.out`` file, a notebook's captured output), where a
  bar would write one endless line of carriage returns. ``DEGFLOW_PROGRESS=1`` forces bars,
  ``DEGFLOW_PROGRESS=0`` turns them off. Jobs log plain lines (``logging``) for what a bar
  would have shown;
- :func:`log_to_file`: the ``degflow`` loggers also write to a run's own log file for the
  duration of a block (Hydra already does so for its run folder's ``<job>.log``; this covers
  runs started from Python, e.g. the quick start and the notebook, without writing twice).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["LOG_FORMAT", "bar_safe_logging", "interactive", "log_to_file", "progress_bar", "say"]

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's file format


def interactive(requested: bool = True) -> bool:
    """Whether to draw progress bars: ``requested`` and stderr is a terminal
    (``DEGFLOW_PROGRESS=1|0`` overrides the terminal test)."""
    forced = os.environ.get("DEGFLOW_PROGRESS", "").strip()
    if not requested or forced == "0":
        return False
    if forced == "1":
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(*, requested: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(**kwargs)``, disabled unless :func:`interactive` (``requested`` as well)."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(disable=not interactive(requested), **kwargs)


def bar_safe_logging(bar: tqdm) -> contextlib.AbstractContextManager:
    """While ``bar`` is drawn, console log lines are printed above it (``tqdm.write``), not through it."""
    if bar.disable:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _reaches_console(logger: logging.Logger) -> bool:
    """Whether an INFO record of ``logger`` reaches the terminal through a stream handler on
    stdout / stderr (Hydra's console handler; not a capturing one, e.g. pytest's)."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            stream = getattr(handler, "stream", None)
            if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                    and handler.level <= logging.INFO
                    and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)):
                return True
        current = current.parent if current.propagate else None
    return False


def say(logger: logging.Logger, text: str) -> None:
    """Log ``text`` at INFO (the run's log file), and print it when no console handler shows it."""
    logger.info("%s", text)
    if not (logger.isEnabledFor(logging.INFO) and _reaches_console(logger)):
        print(text, flush=True)


def _writes_to(logger: logging.Logger, path: Path) -> bool:
    """Whether ``logger`` or one it propagates to already has a file handler on ``path``."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            name = getattr(handler, "baseFilename", None)
            if name is not None and Path(name).resolve() == path.resolve():
                return True
        current = current.parent if current.propagate else None
    return False


class _RunLogHandler(logging.FileHandler):
    """A file handler that creates the file (and its folder) only when the first line arrives."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextlib.contextmanager
def log_to_file(path: str | Path, name: str = "degflow") -> Iterator[Path]:
    """Within the block, INFO lines of the ``name`` logger (and its children) also go to ``path``.

    Nothing is added when a handler (Hydra's) already writes that file. The logger's level is
    lowered to INFO for the block if it was higher, then restored.
    """
    path = Path(path)
    logger = logging.getLogger(name)
    handler = None
    if not _writes_to(logger, path):
        handler = _RunLogHandler(path, encoding="utf-8", delay=True)   # nothing on disk before a line
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
