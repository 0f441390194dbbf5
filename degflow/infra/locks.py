"""One writer per folder: an exclusive lock file, created atomically, naming its holder.

A training run folder and a synthesis ``out`` folder each have one writer at a time (a
requeued job racing a manual restart, a sweep launched twice, a shard started twice would
otherwise interleave checkpoints, logs and manifest lines). The writer holds
``{folder}/.degflow-lock.{scope}``:

- ``scope`` is ``run`` for a training run, ``shard{i}-of-{n}`` for synthesis: the shards of one
  sharded synthesis write into one folder side by side, each its own files; a writer of
  another shard count (or an unsharded one, ``shard0-of-1``) overlaps every shard and is refused
  while one runs (:func:`scopes_overlap`);
- the file is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFS v3 and
  later, where the server performs the exclusive create; no ``flock``/``fcntl`` lock, which NFS
  may not honour) and holds one JSON line: ``host``, ``pid``, ``started``, ``boot_id`` and
  ``process_start`` (the kernel's start time of the process: tells a reused PID apart),
  ``job_id`` (the SLURM job, ``<array job>_<task>`` for array tasks) and ``command``;
- a lock is stale, and taken over, when its holder is a process of this host that no longer
  runs (same boot, no process with that PID and start time; or the host rebooted), or an
  earlier attempt of the same SLURM job (a requeued job: SLURM never runs two attempts of one
  job at once). Taking over renames the stale file to a name of its own (only one contender
  can) and checks it renamed the record it judged, so two processes never both take it;
- anything else is refused: :class:`FolderLocked` (an ``OSError``: one ``error:`` line, exit 2)
  names the holder and says which file to delete if that process is gone (a lock of a dead
  process on another node cannot be told from a live one);
- the lock is released on every exit path that runs Python (``with``, exceptions, stop signals
  unwinding); a SIGKILL leaves it, stale for the next writer. Only a file holding this
  process's own record is ever deleted. Nested acquisitions by the holder are free.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from degflow.infra.cluster import scheduler_info

__all__ = ["LOCK_PREFIX", "FolderLock", "FolderLocked", "scopes_overlap"]

log = logging.getLogger(__name__)

LOCK_PREFIX = ".degflow-lock."
_SHARD = re.compile(r"^shard(\d+)-of-(\d+)$")
_held: dict[tuple[str, str], int] = {}          # (folder, scope) -> nesting depth, in this process
#: A lock file still empty after this many seconds belongs to a writer that died while creating it.
EMPTY_GRACE_S = 10.0


class FolderLocked(OSError):
    """Another live writer holds the folder (or a conflicting part of it)."""

    def __str__(self) -> str:
        return str(self.strerror)


def scopes_overlap(a: str, b: str) -> bool:
    """Whether writers of scopes ``a`` and ``b`` may touch the same files: the same scope, or
    shards of different shard counts; shards ``i != j`` of one count do not overlap."""
    ma, mb = _SHARD.match(a), _SHARD.match(b)
    if ma and mb and ma.group(2) == mb.group(2):
        return ma.group(1) == mb.group(1)
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (None where /proc has none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[19])


def _alive(record: dict[str, Any]) -> bool:
    """Whether the holder of ``record`` (a process of this host) still runs."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if record.get("boot_id") and _boot_id() and record["boot_id"] != _boot_id():
        return False                                    # the host rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                            # another user's process: it exists
    start = _process_start(pid)
    return not (start is not None and record.get("process_start") not in (None, start))   # a reused PID


def _describe(record: dict[str, Any] | None, path: Path) -> str:
    if not record:
        return f"a writer that is creating {path} right now"
    job = f", SLURM job {record['job_id']}" if record.get("job_id") else ""
    return (f"process {record.get('pid')} on {record.get('host')} (started {record.get('started')}{job}: "
            f"{record.get('command', '?')})")


class FolderLock:
    """The exclusive writer lock of ``folder`` for ``scope`` (see the module docstring).

    Use as a context manager or with :meth:`acquire` / :meth:`release`. ``what`` names the
    folder in messages (``training run folder``, ``synthesis out folder``). ``create``: make the
    folder (and its parents) when absent, and remove it again at release when it is still empty
    (a job refused before it wrote anything leaves no folder behind).
    """

    def __init__(self, folder: str | Path, scope: str = "run", what: str = "folder", create: bool = False):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", scope):
            raise ValueError(f"lock scope {scope!r}: letters, digits, '.', '_' and '-' only")
        self.folder, self.scope, self.what = Path(folder), scope, what
        self.path = self.folder / f"{LOCK_PREFIX}{scope}"
        self._key = (os.path.abspath(self.folder), scope)
        self._record: dict[str, Any] | None = None
        self._create, self._created = create, False

    # ----------------------------------------------------------------------------- public
    def acquire(self) -> FolderLock:
        if _held.get(self._key):
            _held[self._key] += 1
            return self
        if self._create and not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._created = True
        self._record = self._own_record()
        for _ in range(100):
            if self._try_create():
                break
            holder = self._read(self.path)
            if self._stale(holder, self.path):
                self._take_over(self.path, holder)
                continue
            if holder is None:                          # released meanwhile, or being written right now
                time.sleep(0.05)
                continue
            self._forget_folder()
            raise FolderLocked(errno.EBUSY, self._refusal(holder, self.path))
        else:
            self._forget_folder()
            raise FolderLocked(errno.EBUSY, f"{self.what} {str(self.folder)!r}: could not take {self.path} "
                                            "(other writers keep taking it)")
        _held[self._key] = 1
        try:
            self._check_other_scopes()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        depth = _held.get(self._key, 0)
        if depth > 1:
            _held[self._key] = depth - 1
            return
        _held.pop(self._key, None)
        if self._record is not None and self._read(self.path) == self._record:
            try:
                self.path.unlink()
            except OSError as err:
                log.warning("could not remove the lock %s: %s", self.path, err.strerror or err)
        self._record = None
        self._forget_folder()

    def _forget_folder(self) -> None:
        """Remove the folder this lock created when nothing was written into it."""
        if self._created:
            self._created = False
            try:
                self.folder.rmdir()         # only when empty
            except OSError:
                pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---------------------------------------------------------------------------- private
    def _own_record(self) -> dict[str, Any]:
        info = scheduler_info()
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "boot_id": _boot_id(), "process_start": _process_start(os.getpid()),
                "job_id": info.get("job_id") if info.get("scheduler") == "slurm" else None,
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else ""}

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        except OSError as err:
            self._forget_folder()
            raise OSError(err.errno, f"{self.what} {str(self.folder)!r}: cannot create its lock file: "
                                     f"{err.strerror}", str(self.path)) from err
        try:
            data = (json.dumps(self._record) + "\n").encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException as err:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            self._forget_folder()
            if isinstance(err, OSError):
                raise OSError(err.errno, f"{self.what} {str(self.folder)!r}: cannot write its lock file: "
                                         f"{err.strerror}", str(self.path)) from err
            raise
        os.close(fd)
        return True

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        """The record of a lock file; None when it is absent, empty or unreadable."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _stale(self, holder: dict[str, Any] | None, path: Path) -> bool:
        if holder is None:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return False                            # released meanwhile: try again
            return age > EMPTY_GRACE_S                  # died between creating and writing it
        own = self._record or {}
        if own.get("job_id") and holder.get("job_id") == own["job_id"]:
            log.warning("%s %s: taking over the lock of an earlier attempt of SLURM job %s (%s)",
                        self.what, self.folder, own["job_id"], _describe(holder, path))
            return True
        if holder.get("host") == own.get("host") and not _alive(holder):
            log.warning("%s %s: taking over the stale lock of %s, which no longer runs",
                        self.what, self.folder, _describe(holder, path))
            return True
        return False

    def _take_over(self, path: Path, holder: dict[str, Any] | None) -> None:
        """Remove the stale lock ``path`` judged from ``holder``, unless another process did first."""
        private = path.with_name(f"{path.name}.stale-{socket.gethostname()}-{os.getpid()}")
        try:
            os.rename(path, private)
        except FileNotFoundError:
            return                                      # another contender took it over first
        if self._read(private) != holder:               # not the record judged: a fresh holder's, give it back
            try:
                os.link(private, path)
            except FileExistsError:
                pass
            private.unlink(missing_ok=True)
            return
        private.unlink(missing_ok=True)

    def _refusal(self, holder: dict[str, Any] | None, path: Path) -> str:
        return (f"{self.what} {str(self.folder)!r} is in use by {_describe(holder, path)}; one writer at a "
                f"time. Wait for it to end, or use another folder; if that process is gone (a crashed "
                f"node), delete {str(path)!r} and re-run")

    def _check_other_scopes(self) -> None:
        for other in sorted(self.folder.glob(f"{LOCK_PREFIX}*")):
            scope = other.name[len(LOCK_PREFIX):]
            if other == self.path or ".stale-" in scope or not scopes_overlap(self.scope, scope):
                continue
            holder = self._read(other)
            if holder is not None and self._stale(holder, other):
                self._take_over(other, holder)
                continue
            if holder is None and not other.exists():
                continue
            raise FolderLocked(errno.EBUSY, self._refusal(holder, other).replace(
                "one writer at a time", f"its writer ({scope}) overlaps this one ({self.scope})"))
