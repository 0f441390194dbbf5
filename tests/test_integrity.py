"""The integrity mechanisms one by one: sealed torch files, checked records, folder locks, stop signals
(the fault cases that use them end to end are in test_faults.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _faults import inject

from degflow.infra.digests import (
    checked_line,
    checked_record_text,
    file_digest,
    read_checked_line,
    read_checked_record,
    save_sealed,
    seal_file,
)
from degflow.infra.exits import JobSignals, graceful, stop_point
from degflow.infra.files import append_lines
from degflow.infra.locks import LOCK_PREFIX, FolderLock, FolderLocked, scopes_overlap

REPO = Path(__file__).resolve().parents[1]


def test_a_sealed_file_loads_as_it_is_and_carries_the_sha256_of_what_torch_save_wrote(tmp_path):
    obj = {"w": torch.arange(1000.0).reshape(10, 100), "meta": {"step": 3}}
    sha = save_sealed(tmp_path / "a.pt", obj)
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(loaded["w"], obj["w"]) and loaded["meta"] == {"step": 3}
    found = file_digest(tmp_path / "a.pt")
    assert found.sealed and found.intact and found.sha256 == found.recorded == sha
    data = (tmp_path / "a.pt").read_bytes()                   # the seal is the zip comment at the very end
    assert data.endswith(b"degflow-sha256:" + sha.encode()) and b"PK\x05\x06" in data[-101:-79]


def test_sealing_a_file_written_without_a_digest_keeps_its_sha256(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(5)}, path)
    plain = hashlib.sha256(path.read_bytes()).hexdigest()
    found = file_digest(path)
    assert not found.sealed and found.intact and found.sha256 == plain
    assert seal_file(path)[1] == "sealed"
    assert file_digest(path).sealed and file_digest(path).sha256 == plain
    assert seal_file(path)[1] == "already sealed and intact"
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(5))


@pytest.mark.parametrize("where", [0.3, 0.6, -10, -70, -85])
def test_one_flipped_bit_anywhere_makes_a_sealed_file_not_intact(where, tmp_path):
    path = tmp_path / "a.pt"
    save_sealed(path, {"w": torch.randn(200)})
    data = bytearray(path.read_bytes())
    offset = int(len(data) * where) if where > 0 else len(data) + where
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    assert not file_digest(path).intact


def test_checked_lines_and_records_tell_whole_unchecked_and_damaged_apart():
    entry = {"output": "LR/x2/a.png", "height": 8, "seconds": 0.25}
    line = checked_line(entry)
    assert read_checked_line(line) == (entry, "ok") and json.loads(line)["check"]
    assert read_checked_line(json.dumps(entry)) == (entry, "unchecked")
    for damaged in (line.replace('"height": 8', '"height": 9'), line[:-5], line.replace("LR/x2", "LR/x3")):
        assert read_checked_line(damaged) == (None, "damaged")
    text = checked_record_text({"precision": "fp32", "tile_size": 1024})
    assert read_checked_record(text) == ({"precision": "fp32", "tile_size": 1024}, "ok")
    assert read_checked_record(text.replace("1024", "1025"))[1] == "damaged"
    assert read_checked_record(text[:-10])[1] == "damaged"
    assert read_checked_record('{"precision": "fp32"}')[1] == "unchecked"


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "manifest.jsonl"
    append_lines(path, ["a", "b"])
    with inject([{"file": r"manifest\.jsonl$", "action": "enospc"}]), pytest.raises(OSError) as err:
        append_lines(path, ["c" * 100, "d"])
    assert "No space left" in str(err.value) and str(path) in str(err.value)
    assert path.read_text() == "a\nb\n"


@pytest.mark.parametrize("a, b, overlap", [
    ("run", "run", True), ("shard0-of-2", "shard1-of-2", False), ("shard1-of-2", "shard1-of-2", True),
    ("shard0-of-1", "shard1-of-2", True), ("shard0-of-3", "shard0-of-2", True),
])
def test_which_writers_of_one_folder_overlap(a, b, overlap):
    assert scopes_overlap(a, b) is overlap and scopes_overlap(b, a) is overlap


def _lock_record(folder: Path, scope: str, **fields) -> Path:
    path = folder / f"{LOCK_PREFIX}{scope}"
    record = {"host": os.uname().nodename, "pid": os.getpid(), "started": "2026-01-01T00:00:00+0000", "boot_id": None,
              "process_start": None, "job_id": None, "command": "test", **fields}
    path.write_text(json.dumps(record) + "\n")
    return path


def test_a_lock_is_exclusive_reentrant_and_gone_after_release(tmp_path):
    lock = FolderLock(tmp_path, "run")
    with lock:
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"]
        with FolderLock(tmp_path, "run"):                        # the holder may nest
            pass
        assert lock.path.exists()
    assert not lock.path.exists()


def test_a_live_holder_is_refused_a_dead_one_and_an_empty_stale_file_are_taken_over(tmp_path):
    parent = os.getppid()                                      # a live process of this host, not us
    path = _lock_record(tmp_path, "run", pid=parent)
    with pytest.raises(FolderLocked, match=f"process {parent} on "):
        FolderLock(tmp_path, "run").acquire()
    assert json.loads(path.read_text())["pid"] == parent         # left as it was
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock_record(tmp_path, "run", pid=dead.pid)
    with FolderLock(tmp_path, "run") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    path.write_text("")
    old = time.time() - 60
    os.utime(path, (old, old))
    with FolderLock(tmp_path, "run"):
        pass


def test_a_shard_is_refused_while_an_overlapping_writer_runs(tmp_path):
    _lock_record(tmp_path, "shard0-of-1", pid=os.getppid())
    with pytest.raises(FolderLocked, match="overlaps"):
        FolderLock(tmp_path, "shard1-of-2").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{LOCK_PREFIX}shard0-of-1"]


def test_a_first_stop_signal_raises_143_or_waits_for_the_next_stop_point():
    with JobSignals():
        with pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with JobSignals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except SystemExit:
            pass                                               # swallowed by the code it interrupted
        with pytest.raises(SystemExit):                        # ... so the next stop point stops the job
            stop_point()
    reached = []
    with JobSignals(), graceful(), pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        reached.append("work in progress finished")
        stop_point()
    assert reached


def test_a_second_stop_signal_records_the_stop_and_ends_the_process_at_once(tmp_path):
    code = ("import os, signal, time, pathlib; from degflow.infra.exits import JobSignals, graceful\n"
            f"done = pathlib.Path({str(tmp_path / 'recorded')!r})\n"
            "with JobSignals(on_hard_stop=lambda s: done.write_text(str(s))), graceful():\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.05)\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "print('not stopped')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and "not stopped" not in proc.stdout
    assert (tmp_path / "recorded").read_text() == str(int(signal.SIGTERM))


def test_a_signal_after_trainings_own_stop_is_the_jobs_second(tmp_path):
    """Training takes the first signal itself (a checkpoint at the step boundary), then stops the job
    (``stopping``): a signal that arrives while the job unwinds or records its end stops the process at
    once with the record ended, instead of starting a second stop that cuts the record short (the
    race test_faults' double-SIGTERM test used to lose about one run in three)."""
    code = ("import os, signal, time, pathlib; from degflow.infra.exits import JobSignals, stopping\n"
            f"done = pathlib.Path({str(tmp_path / 'recorded')!r})\n"
            "with JobSignals(on_hard_stop=lambda s: done.write_text(str(s))):\n"
            "    stopping(signal.SIGTERM)\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "print('not stopped')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and "not stopped" not in proc.stdout, proc.stderr[-2000:]
    assert (tmp_path / "recorded").read_text() == str(int(signal.SIGTERM))
