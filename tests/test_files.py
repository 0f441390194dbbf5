"""File writing: atomic writes and line appends give files the permissions the umask allows."""

import hashlib
import os
import stat

import pytest
import torch

from degflow.infra.checkpoint import save_checkpoint
from degflow.models.registry import model_entry
from degflow.data.images import write_image
from degflow.infra.files import append_lines, atomic_write_bytes, atomic_write_text, file_sha256
from degflow.models.rae import RAE


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_written_file_gets_the_mode_the_umask_allows_not_0600(tmp_path, umask):
    expected = 0o666 & ~umask                                # 0o644 under umask 022, 0o640 under 027
    save_checkpoint(tmp_path / "last.pt", {"kind": "rae", "step": 1, "models": {"rae": model_entry(RAE(widths=(8, 8, 8, 8)))}})
    write_image(tmp_path / "LR" / "x2" / "a.png", torch.zeros(3, 4, 4))
    atomic_write_text(tmp_path / "metrics.json", "{}\n")
    append_lines(tmp_path / "manifest.jsonl", ['{"output": "a.png"}'])
    for name in ("last.pt", "LR/x2/a.png", "metrics.json", "manifest.jsonl"):
        assert _mode(tmp_path / name) == expected, (name, oct(_mode(tmp_path / name)), oct(expected))


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "settings.json"
    atomic_write_text(path, "old\n")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(path, broken)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_appended_lines_accumulate_and_the_sha256_is_the_files(tmp_path):
    path = tmp_path / "manifest.jsonl"
    append_lines(path, ["a", "b"])
    append_lines(path, [])
    append_lines(path, ["c"])
    assert path.read_text() == "a\nb\nc\n"
    assert file_sha256(path) == hashlib.sha256(b"a\nb\nc\n").hexdigest()
