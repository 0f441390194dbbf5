"""File writing: the one atomic write, whole-line appends, and file hashes.

Every file degflow writes for a user (checkpoints, PNG images, ``metrics.json``, synthesis
settings, manifests) goes through :func:`atomic_write_bytes` / :func:`atomic_write_text`
or, for append-only logs of one JSON line per record, :func:`append_lines`. Files get the
permissions any file the user writes gets: ``0o666`` minus the process umask (``0o644``
under the usual umask 022), never the ``0o600`` of a bare temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_texts", "append_lines", "file_sha256",
           "temp_target"]

#: Temporary files of :func:`atomic_write_bytes` are ``.{name}.{random}.tmp`` beside ``name``
#: (``random``: the dot-free part :func:`tempfile.mkstemp` draws).
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def _current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``/proc``);
    elsewhere by setting and restoring it (a brief window other threads could observe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file atomically: ``write(fileobj)`` into a temp file beside ``path``, then rename.

    A crash mid-write leaves the previous file (or nothing) in place, never a partial file.
    The file ends up with mode ``0o666 & ~umask``, like a file opened for writing. An OSError
    (a full disk) names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None and err.errno:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def temp_target(path: str | Path) -> Path | None:
    """The file that the temporary file ``path`` of :func:`atomic_write_bytes` was to become
    (``dir/.a.png.k3x9_q2z.tmp`` -> ``dir/a.png``), or None when ``path`` is not named like one.
    A temp file still there after the writer ended is a leftover of a kill."""
    path = Path(path)
    name = path.name
    if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
        return None
    target, dot, _random = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].rpartition(".")
    return path.parent / target if dot and target else None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write a UTF-8 text file (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_texts(texts: dict[Path, str]) -> None:
    """Write several UTF-8 text files as one set: each goes to a synced temporary file beside it
    first, and only when all of them are written are they renamed into place. A failure (a full
    disk) before that leaves the previous set (or nothing) and no temporary file."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in texts.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
            staged.append((tmp, path))
            os.fchmod(fd, 0o666 & ~_current_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
    except BaseException as err:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None and err.errno:
            raise OSError(err.errno, err.strerror or str(err), str(staged[-1][1])) from err
        raise
    for tmp, path in staged:
        os.replace(tmp, path)


def atomic_write_json(path: str | Path, data: object) -> None:
    """Atomically write strict JSON (no NaN/Infinity), indented, one trailing newline; folders made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def append_lines(path: str | Path, lines: Sequence[str]) -> None:
    """Append whole lines to ``path`` with one ``O_APPEND`` write, then fsync.

    All or nothing: an append that fails or is interrupted (a full disk, a stop signal) is
    rolled back (the file is cut back to its size before it) before the error propagates;
    only a kill between the write and the rollback can leave a cut last line (readers drop
    it). Meant for files with one writer (degflow's folder locks). Creates the file
    (``0o666 & ~umask``). An OSError names ``path``.
    """
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException as err:
            os.ftruncate(fd, start)
            if isinstance(err, OSError):
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (identifies checkpoints in metrics, checkpoints and manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
