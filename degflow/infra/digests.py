"""Digests of the files degflow reads back: sealed torch files and checked records.

**Sealed torch files** (checkpoints, the latent cache). ``torch.save`` writes a zip archive
whose end record (its last 22 bytes) may carry a comment. :func:`save_sealed` writes there
``degflow-sha256:<64 hex digits>``: the sha256 of the file exactly as ``torch.save`` wrote it
(the bytes before the comment with the comment length set back to zero). So

- the digest travels inside the file: a checkpoint copied alone, to another cluster or
  through an object store, is still verified where it is loaded;
- ``torch.load`` reads a sealed file unchanged (a zip comment is part of the format);
- the digest of a file written before digests existed is its plain sha256, the
  ``checkpoint_sha256`` its manifests and ``synthesis.json`` recorded, and sealing it
  (:func:`seal_file`, ``python -m degflow checkpoint seal``) keeps that value.

:func:`file_digest` recomputes the digest while reading the file once and says whether it
matches; :func:`verified_sha256` raises :class:`DigestError` (one line naming the file) when
it does not. Hashing is the only cost: one pass over the file at save (in the same pass as the
write) and one at load.

**Checked records.** A manifest line carries ``"check"``, the first 16 hex digits of the
sha256 of the line without that field (:func:`checked_line`, :func:`read_checked_line`); a JSON
record file (``synthesis.json``) carries ``"record_sha256"`` over its other fields
(:func:`checked_record_text`, :func:`read_checked_record`). A damaged line or record is told
apart from a whole one instead of being read as another valid value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from degflow.infra.files import atomic_write_bytes

__all__ = ["DigestError", "FileDigest", "checked_line", "checked_record_text", "damage_message", "describe_load_error",
           "file_digest", "read_checked_line", "read_checked_record", "save_sealed", "seal_file", "verified_sha256"]

SEAL_PREFIX = b"degflow-sha256:"
SEAL_SIZE = len(SEAL_PREFIX) + 64
_LOCAL_HEADER = b"PK\x03\x04"
_END_RECORD = b"PK\x05\x06"
_END_SIZE = 22                  # the zip end record without its comment
_HEX = re.compile(rb"[0-9a-f]{64}")
_CHUNK = 1 << 20


class DigestError(ValueError):
    """A file or record does not match the digest it carries (damaged since it was written)."""


@dataclass(frozen=True)
class FileDigest:
    """What :func:`file_digest` found: ``sha256`` of the content as written (the recorded digest's
    definition), ``recorded`` the digest the file carries (None: written before digests, or not a
    torch zip file), ``problem`` why it cannot be trusted (None: intact or unsealed)."""

    path: Path
    sha256: str
    recorded: str | None
    problem: str | None = None

    @property
    def sealed(self) -> bool:
        return self.recorded is not None

    @property
    def intact(self) -> bool:
        return self.problem is None and (self.recorded is None or self.recorded == self.sha256)


#: Writes at least this large are hashed in a second thread while they are written (both release the GIL).
_OVERLAP_BYTES = 1 << 20


class _HashingWriter:
    """A write-only file object that hashes what passes through it and keeps the last bytes.

    A large write (a tensor's storage) is hashed by a second thread while this one writes it,
    on the same buffer (no copy): the digest then costs about nothing on a machine with a
    spare core. The buffer lives until both are done (the hash is awaited before returning)."""

    def __init__(self, f, pool):
        self.f, self.digest, self.tail, self.pool = f, hashlib.sha256(), b"", pool

    def write(self, data) -> int:
        view = memoryview(data).cast("B")           # no copy of what may be a whole tensor's storage
        if len(view) >= _OVERLAP_BYTES:
            hashed = self.pool.submit(self.digest.update, view)
            try:
                self.f.write(view)
            finally:
                hashed.result()
        else:
            self.f.write(view)
            self.digest.update(view)
        self.tail = (self.tail + bytes(view[-_END_SIZE:]))[-_END_SIZE:]
        return len(view)

    def flush(self) -> None:
        self.f.flush()


def save_sealed(path: str | Path, obj: Any) -> str:
    """``torch.save(obj)`` to ``path`` atomically, sealed with its digest; returns the digest.

    The digest is computed in the same pass as the write (no second read of the file), large
    records in a second thread while they are written."""
    import torch

    digest: dict[str, str] = {}

    def write(f) -> None:
        with ThreadPoolExecutor(1, thread_name_prefix="degflow-digest") as pool:
            hashing = _HashingWriter(f, pool)
            torch.save(obj, hashing)
        if hashing.tail[:4] != _END_RECORD or hashing.tail[-2:] != b"\x00\x00":
            raise RuntimeError("torch.save did not end its file with a plain zip end record; cannot seal it")
        digest["sha256"] = hashing.digest.hexdigest()
        f.seek(-2, os.SEEK_END)
        f.write(struct.pack("<H", SEAL_SIZE) + SEAL_PREFIX + digest["sha256"].encode("ascii"))

    atomic_write_bytes(path, write)
    return digest["sha256"]


def _seal_of(head: bytes, tail: bytes) -> tuple[str | None, str | None, int]:
    """``(recorded digest, problem, bytes of the seal)`` from a file's first 4 and last bytes."""
    if head != _LOCAL_HEADER:
        return None, None, 0                                      # not a torch zip file: torch decides
    end = tail[-(SEAL_SIZE + _END_SIZE):-SEAL_SIZE] if len(tail) >= SEAL_SIZE + _END_SIZE else b""
    if end[:4] == _END_RECORD and struct.unpack("<H", end[-2:])[0] == SEAL_SIZE \
            and tail[-SEAL_SIZE:].startswith(SEAL_PREFIX):
        hex_digest = tail[-64:]
        if not _HEX.fullmatch(hex_digest):
            return None, "its digest is damaged", SEAL_SIZE
        return hex_digest.decode("ascii"), None, SEAL_SIZE
    if tail[-_END_SIZE:-_END_SIZE + 4] == _END_RECORD and tail[-2:] == b"\x00\x00":
        return None, None, 0                                      # a zip file without a seal
    return None, "its end (zip end record, digest) is missing or damaged: cut short?", 0


def file_digest(path: str | Path) -> FileDigest:
    """Read ``path`` once: the digest it carries and the digest of its content (see the module)."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4)
        f.seek(max(0, size - SEAL_SIZE - _END_SIZE))
        recorded, problem, seal = _seal_of(head, f.read())
        f.seek(0)
        digest = hashlib.sha256()
        left = size - seal - (2 if seal else 0)
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        if seal:
            digest.update(b"\x00\x00")                            # the comment length torch.save wrote
    return FileDigest(path, digest.hexdigest(), recorded, problem)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def describe_load_error(err: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one line (torch's own message
    spans 3-8 lines). A file that holds pickled Python objects is named as such: loading it
    without ``weights_only`` could run code, so degflow never does."""
    text = str(err).strip()
    if "weights only load failed" in text.lower() or "weights_only" in text.lower():
        found = _GLOBAL.search(text)
        what = f" (GLOBAL {found.group(1)})" if found else ""
        return (f"it holds pickled Python objects{what} beyond plain tensors and containers; degflow does not "
                "load those (loading them could run code)")
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def damage_message(found: FileDigest, key: str | None = None) -> str:
    """One line: which file is damaged, how, and the ways out."""
    name = f"{key}={str(found.path)!r}" if key else repr(str(found.path))
    how = found.problem or (f"its content no longer matches the sha256 it was written with "
                            f"(recorded {found.recorded[:12]}..., now {found.sha256[:12]}...)")
    return (f"{name} is damaged: {how}; nothing was read from it. Use an intact copy (or an earlier "
            f"checkpoint); to use this file anyway: python -m degflow checkpoint seal --accept-damaged "
            f"{str(found.path)!r}")


def verified_sha256(path: str | Path, key: str | None = None) -> FileDigest:
    """:func:`file_digest` of ``path``; :class:`DigestError` (one line, naming ``key``) when damaged."""
    found = file_digest(path)
    if not found.intact:
        raise DigestError(damage_message(found, key))
    return found


def seal_file(path: str | Path, accept_damaged: bool = False) -> tuple[FileDigest, str]:
    """Seal a torch file written without a digest (atomically); returns what it found and what it did.

    A sealed, intact file is left as it is. A damaged file (its content no longer matches its
    seal) is re-sealed over its current content only with ``accept_damaged``: its digest then
    changes, so manifests made from it before tell the two apart. Raises :class:`DigestError`
    for a damaged file without ``accept_damaged``, ValueError for a file that is not a torch zip
    file or whose zip end record is damaged.
    """
    path = Path(path)
    found = file_digest(path)
    if found.problem and found.problem.startswith("its end"):
        raise ValueError(f"{str(path)!r}: {found.problem}; it cannot be sealed (not a whole torch zip file)")
    if found.recorded is None and not found.problem:
        with open(path, "rb") as f:
            if f.read(4) != _LOCAL_HEADER:
                raise ValueError(f"{str(path)!r} is not a torch zip file (saved by torch.save); it cannot be sealed")
    if found.intact and found.sealed:
        return found, "already sealed and intact"
    if not found.intact and not accept_damaged:
        raise DigestError(damage_message(found))
    data = path.read_bytes()
    body = data[:len(data) - SEAL_SIZE - 2] if found.sealed or found.problem else data[:-2]
    atomic_write_bytes(path, lambda f: f.write(body + struct.pack("<H", SEAL_SIZE) + SEAL_PREFIX
                                               + found.sha256.encode("ascii")))
    return found, "re-sealed over its current content" if found.sealed or found.problem else "sealed"


# ------------------------------------------------------------------------------ records
_CHECK_FIELD = ', "check": "'


def _line_check(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def checked_line(entry: dict[str, Any]) -> str:
    """``entry`` as one JSON line ending in ``"check"``: the sha256 (16 hex digits) of the line without it."""
    body = json.dumps(entry, allow_nan=False)
    if not entry or not body.endswith("}"):
        raise ValueError("a checked line holds a non-empty JSON object")
    return f'{body[:-1]}{_CHECK_FIELD}{_line_check(body)}"}}'


def read_checked_line(line: str) -> tuple[dict[str, Any] | None, str]:
    """``(entry, status)`` of a line of :func:`checked_line`: status ``ok``, ``unchecked`` (a whole
    JSON line of an older writer, without ``check``) or ``damaged`` (entry None)."""
    body, sep, tail = line.rpartition(_CHECK_FIELD)
    if not sep:
        try:
            entry = json.loads(line)
        except ValueError:
            return None, "damaged"
        return (entry, "unchecked") if isinstance(entry, dict) and "check" not in entry else (None, "damaged")
    if len(tail) != 18 or not tail.endswith('"}') or _line_check(body + "}") != tail[:16]:
        return None, "damaged"
    try:
        entry = json.loads(body + "}")
    except ValueError:
        return None, "damaged"
    return (entry, "ok") if isinstance(entry, dict) else (None, "damaged")


def _record_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
                          .encode("utf-8")).hexdigest()


def checked_record_text(data: dict[str, Any]) -> str:
    """``data`` as an indented JSON file with ``"record_sha256"`` over its other fields."""
    return json.dumps({**data, "record_sha256": _record_digest(data)}, indent=2, sort_keys=True,
                      allow_nan=False) + "\n"


def read_checked_record(text: str) -> tuple[dict[str, Any] | None, str]:
    """``(data, status)`` of a :func:`checked_record_text` file: ``ok``, ``unchecked`` (a JSON object
    without ``record_sha256``, written before records were checked) or ``damaged`` (data None)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None, "damaged"
    if not isinstance(data, dict):
        return None, "damaged"
    if "record_sha256" not in data:
        return data, "unchecked"
    recorded = data.pop("record_sha256")
    return (data, "ok") if recorded == _record_digest(data) else (None, "damaged")
