"""Stop signals of a job: every exit path ends its records and releases its folders.

While a degflow command runs a job (:func:`degflow.infra.cluster.job_record`), the stop
signals that would otherwise end the process outright (SIGTERM, SIGHUP, SIGUSR1, SIGUSR2
while their handler is the default one; a handler a launcher installed is left alone) are
handled by :class:`JobSignals`:

- the first signal stops the job: ``SystemExit(128 + N)`` is raised where the job is, so every
  ``with`` block and ``finally`` runs (folder locks released, temporary files removed, the job
  record ended as ``interrupted``) and the exit status is 128 + N (143 for SIGTERM), the status
  the signal's default action gives. Inside a :func:`graceful` section (synthesis, between
  images) the signal is only noted: the job stops at its next :func:`stop_point`, after the
  image in progress is complete. Code that the exception interrupts may swallow it (a C
  extension's module initialisation does): the stop is then taken at the next
  :func:`stop_point` (every synthesis batch, the start of training, the end of the job);
- a second signal stops the process at once: the job's hard-stop callback ends its record
  (``interrupted``), then the signal's default action ends the process. What that cuts short
  (a temporary file, an image without its manifest lines) is removed by the next run.

Training has its own handler while it trains (:mod:`degflow.training.stop`: it stops at the
next step boundary, after a checkpoint) and hands a second signal on to this one; when it stops
the job it says so (:func:`stopping`), so a signal that arrives while the job unwinds and records
its end is the second one, not the start of another stop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["JobSignals", "graceful", "stop_point", "stopping"]

log = logging.getLogger(__name__)

_NAMES = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
_active: list[JobSignals] = []
_graceful = [0]


class JobSignals:
    """Context manager: stop signals end the job through Python (see the module docstring).
    ``on_hard_stop(signum)`` runs when a second signal stops the process at once."""

    def __init__(self, on_hard_stop: Callable[[int], None] | None = None):
        self.on_hard_stop = on_hard_stop
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> JobSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in _NAMES:
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
                self._previous[int(sig)] = signal.SIG_DFL
                signal.signal(sig, self._handle)
        _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
        if self in _active:
            _active.remove(self)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("received %s while stopping: stopping now", name)
            if self.on_hard_stop is not None:
                try:
                    self.on_hard_stop(signum)
                except Exception as err:  # noqa: BLE001 - the process stops anyway
                    log.warning("could not record the stop: %s", err)
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        if _graceful[0]:
            log.warning("received %s: finishing the work in progress, then stopping (send it again to stop at once)",
                        name)
            return
        log.warning("received %s: stopping", name)
        raise SystemExit(128 + signum)


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """A section where a first stop signal waits for the next :func:`stop_point`."""
    _graceful[0] += 1
    try:
        yield
    finally:
        _graceful[0] -= 1


def stopping(signum: int) -> None:
    """The job is stopping on ``signum``, taken by another handler (training's, which stops at a step
    boundary): a further stop signal is the job's second one and stops the process at once, after its
    record is ended, instead of starting a stop of its own in the middle of this one's (which could cut
    the record short while it is being written)."""
    for handler in _active:
        if handler.signum is None:
            handler.signum = int(signum)


def stop_point() -> None:
    """Stop here (``SystemExit(128 + N)``) when a stop signal arrived and has not stopped the job yet
    (it came during a :func:`graceful` section, or the code it interrupted swallowed its exit)."""
    for handler in _active:
        if handler.signum is not None:
            raise SystemExit(128 + handler.signum)
