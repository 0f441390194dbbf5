"""Graceful stop: a stop signal ends training at a step boundary with a checkpoint of that step.

While :func:`degflow.training.loop.fit` trains, SIGTERM (SLURM's preemption and ``scancel``),
SIGINT (Ctrl-C) and SIGUSR1/SIGUSR2 (the warning signals of ``sbatch --signal`` and submitit)
only set a flag. The loop finishes the step in progress, writes ``checkpoints/last.pt`` (the
history is already on disk), and then:

- if a Python handler was installed for that signal before training started (submitit
  installs one for SIGUSR2 that requeues the job, and one for SIGTERM that only logs), it is
  called, so the launcher does what it would have done without degflow; if it returns,
  training continues (in a data-parallel job only rank 0 calls it, and every rank stops);
- otherwise :class:`TrainingStopped` is raised and ``train.py`` exits with status
  ``128 + signal number`` (SIGINT 130, SIGTERM 143, SIGUSR1 138, SIGUSR2 140 on Linux), the
  shell's "ended by that signal" convention.

A second signal while the first is pending stops at once, as it would have without degflow
(the checkpoint on disk is then the previous one). Signals the launcher set to be ignored
stay ignored. DataLoader workers ignore these signals (:func:`ignore_stop_signals`): the main
process decides when to stop, so a signal sent to the whole process group does not kill the
workers in the middle of a step. In a data-parallel job a signal any rank got stops every rank
at the same step (:meth:`StopSignals.request`, agreed in ``loop.py``).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from degflow.infra.exits import JobSignals, stop_point, stopping

log = logging.getLogger(__name__)

STOP_SIGNAL_NAMES = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


def stop_signals() -> list[signal.Signals]:
    """The stop signals this platform has (Windows lacks SIGUSR1/2)."""
    return [getattr(signal, name) for name in STOP_SIGNAL_NAMES if hasattr(signal, name)]


class TrainingStopped(Exception):
    """Training stopped on a signal after writing a checkpoint of the current step."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: Path):
        self.signum, self.step, self.total, self.checkpoint = int(signum), int(step), int(total), Path(checkpoint)
        super().__init__(f"stopped by {signal.Signals(self.signum).name} at step {self.step}/{self.total}; "
                         f"{self.checkpoint} holds that step: re-run the same command to continue")

    @property
    def exit_code(self) -> int:
        """The process exit status: ``128 + signal number``."""
        return 128 + self.signum


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore the stop signals (the main process stops them)."""
    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)


def _is_chainable(handler) -> bool:
    """A launcher's own handler (submitit's), not Python's Ctrl-C default nor degflow's job-level
    handler (:class:`~degflow.infra.exits.JobSignals`, which only stands in for the default action)."""
    if not callable(handler) or handler is signal.default_int_handler:
        return False
    return not isinstance(getattr(handler, "__self__", None), JobSignals)


class StopSignals:
    """Context manager that turns stop signals into a request honoured at the next step boundary.

    Use ``requested`` to poll, and :meth:`after_checkpoint` once the checkpoint is written.
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopSignals":
        stop_point()    # a stop signal during start-up whose exit was swallowed stops the job before it trains
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: stop signals are not handled")
            return self
        for sig in stop_signals():
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:  # ignored by whoever started us: keep it that way
                continue
            self._previous[int(sig)] = previous
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("received %s while stopping: stopping now, without a checkpoint of this step", name)
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("received %s: finishing the current step, then writing a checkpoint "
                    "(send it again to stop at once)", name)

    def request(self, signum: int) -> None:
        """Stop as if ``signum`` had arrived here (another process of a data-parallel job got it),
        unless a stop is already pending."""
        if self.signum is None:
            self.signum = int(signum)

    def after_checkpoint(self, step: int, total: int, checkpoint: Path, *, chain: bool = True,
                         may_continue: bool = True) -> None:
        """The checkpoint of ``step`` is written: hand the signal on, or raise :class:`TrainingStopped`.

        ``chain=False`` skips the launcher's handler; ``may_continue=False`` raises even when that
        handler returns. A data-parallel job passes both as False on ranks other than 0, and
        ``may_continue=False`` on rank 0: its ranks cannot go on with some of them stopped
        (submitit's handlers only act in task 0 anyway).
        """
        signum, self.signum = self.signum, None
        assert signum is not None, "after_checkpoint called without a stop request"
        name = signal.Signals(signum).name
        previous = self._previous.get(signum)
        if chain and _is_chainable(previous):
            log.warning("%s: checkpoint of step %d/%d written to %s; passing the signal to the handler "
                        "installed before training (%s)", name, step, total, checkpoint,
                        getattr(previous, "__qualname__", previous))
            previous(signum, None)
            if may_continue:
                log.warning("that handler returned: training continues")
                return
        stopped = TrainingStopped(signum, step, total, checkpoint)
        log.warning("%s", stopped)
        stopping(signum)        # the job ends now: another signal while it unwinds is the second one
        raise stopped
