"""Fault injection: nothing silently wrong.

Each case injects one fault into a job and checks that it ends with nothing lost (a re-run
completes the job, equal to an uninterrupted run where that is defined), nothing
half-written (no temp file, no cut line, no output without its record or record without its
output, every image with all its outputs or none) and one message with the documented exit
code: ``error: ...`` on one line, no traceback, 2 for a usage or environment error, 1 for a
synthesis with failed images, 128+N (143) for a stop signal.

Faults: a full disk (``ENOSPC``) and SIGKILL inside each writer, injected at the write
primitive (``tests/_faults.py`` wraps ``os.fsync``: every file degflow writes is synced
before it counts); kills at random training steps; SIGTERM once and twice; outputs that are
read-only, unwritable or a file; malicious pickles at every entry point that loads one; bad
images; settings changed on resume; single bit flips in every file kind degflow reads back
(checkpoint, latent cache, manifest, ``synthesis.json``, shard manifests); two processes on
one folder. The model and data are the tiny ones of ``test_synthesis.py`` and
``test_resume.py``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _faults import FAULTS_ENV, inject
from test_synthesis import _bad_input_folder, _folder, _image, _save, _write_lfm_checkpoint

from degflow.core.solvers import SolverSpec
from degflow.generation import Synthesizer
from degflow.infra.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from degflow.jobs.lr_dataset import write_lr_dataset

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "_faults.py"
ENV = {k: v for k, v in os.environ.items() if k not in ("DEGFLOW_DEBUG", "HYDRA_FULL_ERROR", FAULTS_ENV)}
ENV.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
SCALES = [2.0, 3.0]
SYNTH_ARGS = ["scales=[2,3]", "solver=euler", "solver.steps=2", "progress=false", "threads=1"]
MANAGED = ("HR", "LR", "LR_hrsize", "baselines")
TINY = ["logger=none", "device=cpu", "threads=1", "stage.batch_size=2", "stage.warmup_steps=1", "stage.log_every=1",
        "data.crop_size=32", "data.val_max_size=64", "data.samples_per_epoch=8", "eval.max_images=1",
        "model.rae.widths=[8,8,16,16]", "model.lfm.nf=16", "model.lfm.ch_mult=[1,2]", "model.lfm.image_size=4",
        "solver.steps=2", "data.max_side=160", "data.val_scales=[1,2,3,4]", "stage.ckpt_minutes=null"]
LFM_FAST = ["loss.lpips_weight=0", "eval.lpips=false"]
STOPPED = (128 + signal.SIGTERM, -signal.SIGTERM)      # exit status 143, or ended by the signal itself

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- helpers
def cli(*args: str, faults=(), timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an entry point (``synthesize.py ...``, ``train.py ...``, ``-m degflow evaluate ...``) under ``faults``."""
    full_env = {**ENV, **(env or {}), FAULTS_ENV: json.dumps(list(faults))}
    return subprocess.run([sys.executable, str(FAULTS), *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def start(*args: str, faults=(), env: dict | None = None) -> subprocess.Popen:
    full_env = {**ENV, **(env or {}), FAULTS_ENV: json.dumps(list(faults))}
    return subprocess.Popen([sys.executable, str(FAULTS), *args], cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def stderr_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` without Python's warnings (``file:line: XWarning: ...`` and its source line)."""
    kept, skip = [], False
    for line in stderr.splitlines():
        if re.match(r"^\S+:\d+: \w*Warning: ", line):
            skip = True
            continue
        if skip and line.startswith(" "):
            continue
        skip = False
        if line.strip():
            kept.append(line)
    return kept


def one_error(proc, code: int = 2, says: tuple[str, ...] = ()) -> str:
    """``proc`` exited with ``code`` after one ``error:`` line, the only line on stderr (logs go to
    stdout; Python warnings aside), no traceback; returns that line."""
    errors = stderr_lines(proc.stderr)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(errors) == 1 and errors[0].startswith("error:"), proc.stderr[-3000:]
    for text in says:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def one_line(err: BaseException, *says: str) -> None:
    """An exception a CLI would print as one ``error:`` line, saying ``says``."""
    message = str(err)
    assert "\n" not in message.strip(), message
    for text in says:
        assert text in message, (text, message)


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def flip_in_text(path: Path, old: str, new: str) -> None:
    """A one-bit change inside a text record: ``old`` -> ``new`` must differ in one bit of one byte."""
    text = path.read_bytes()
    a, b = old.encode(), new.encode()
    assert len(a) == len(b) and sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True)) == 1, (old, new)
    assert a in text, (old, text[:300])
    path.write_bytes(text.replace(a, b, 1))


def manifest_lines(out: Path, cut_ok: bool = False) -> list[dict]:
    """Every line of every manifest of ``out``: whole (newline-terminated, JSON); its checksum holds
    when it has one. ``cut_ok``: a last line cut short (by a SIGKILL, for the next run to drop) is skipped."""
    import hashlib

    entries = []
    for path in sorted(out.glob("manifest*.jsonl")):
        raw = path.read_bytes()
        if cut_ok and raw and not raw.endswith(b"\n"):
            raw = raw[:raw.rfind(b"\n") + 1]
        assert not raw or raw.endswith(b"\n"), f"{path.name}: its last line is cut short"
        for line in raw.decode("utf-8").splitlines():
            entry = json.loads(line)
            if "check" in entry:
                body, sep, _ = line.rpartition(', "check": ')
                assert sep and hashlib.sha256((body + "}").encode()).hexdigest()[:16] == entry["check"], line
            entries.append(entry)
    return entries


def whole_folder(out: Path, leftovers_ok: bool = False) -> set[str]:
    """The synthesis folder holds whole images only: every output file has its one manifest line and
    every line its file, every image has the same number of outputs, no temp files. Returns the
    sources present. ``leftovers_ok`` (after a SIGKILL): temp files, files without lines and images
    with some of their lines are allowed (the next run removes and redoes them), lines without
    their files are not."""
    entries = manifest_lines(out, cut_ok=leftovers_ok)
    outputs = [e["output"] for e in entries]
    assert len(outputs) == len(set(outputs)), "an output is recorded twice"
    files = {p.relative_to(out).as_posix() for sub in MANAGED if (out / sub).is_dir()
             for p in (out / sub).rglob("*") if p.is_file()}
    temps = [f for f in files if Path(f).name.startswith(".")] + [p.name for p in out.glob(".*.tmp")]
    if not leftovers_ok:
        assert not temps, f"temporary files left: {temps}"
        assert set(outputs) == files, (f"files without a line: {sorted(files - set(outputs))[:5]}, "
                                       f"lines without a file: {sorted(set(outputs) - files)[:5]}")
    else:
        assert set(outputs) <= files, f"lines without a file: {sorted(set(outputs) - files)[:5]}"
    per_source = Counter(e["source"] for e in entries)
    if not leftovers_ok:        # a SIGKILL mid-append may leave an image with some lines, for the next run to redo
        assert len(set(per_source.values())) <= 1, f"images with some of their outputs: {per_source}"
    return set(per_source)


def snapshot(out: Path) -> dict[str, bytes]:
    """Output files (bytes) and manifest entries (without timings) of a synthesis folder."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for sub in MANAGED if (out / sub).is_dir()
             for p in sorted((out / sub).rglob("*")) if p.is_file()}
    entries = sorted(json.dumps({k: v for k, v in e.items() if k not in ("seconds", "check")}, sort_keys=True)
                     for e in manifest_lines(out))
    return {**files, "manifest": "\n".join(entries).encode()}


def job_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "logs").rglob("job.json"))]


def evil_pickle(path: Path, marker: Path, zipped: bool = True) -> Path:
    """A file whose unpickling would create ``marker`` (any loader that runs pickled code does)."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = {"format": "degflow", "format_version": 1, "kind": "lfm", "step": 1, "models": Evil()}
    if zipped:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path


def tensor_offset(path: Path) -> int:
    """Offset of a byte in the middle of the largest tensor record of a torch zip file."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2


def pickle_offset(path: Path) -> int:
    """Offset of a byte inside the pickled structure (``data.pkl``) of a torch zip file."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _write_lfm_checkpoint(tmp_path_factory.mktemp("ckpt") / "lfm.pt", SolverSpec.create("rk4", steps=4))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("src") / "in", 4, h=16, w=24)


@pytest.fixture(scope="module")
def synth(ckpt) -> Synthesizer:
    return Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("euler", steps=2, output_mode="cubic"))


@pytest.fixture(scope="module")
def reference(synth, src, tmp_path_factory) -> dict[str, bytes]:
    """What an uninterrupted synthesis of ``src`` writes (the API = the CLI with SYNTH_ARGS)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert write_lr_dataset(synth, src, out, SCALES, progress=False).exit_code == 0
    return snapshot(out)


def synthesize(synth, src, out, **options):
    return write_lr_dataset(synth, src, out, SCALES, progress=False, **options)


@pytest.fixture(scope="module")
def rae_ckpt(tmp_path_factory) -> Path:
    """A 2-step stage-1 run (for stage-2 runs)."""
    from test_train import config

    from degflow.training import train

    root = tmp_path_factory.mktemp("stage1")
    train(config([f"output_root={root}", "stage.steps=2", "stage.val_every=2"]), root / "rae" / "tiny")
    return root / "rae" / "tiny" / "checkpoints" / "last.pt"


def train_args(root: Path, *extra: str, steps: int = 12) -> list[str]:
    return ["train.py", *TINY, f"output_root={root}", f"stage.steps={steps}", "stage.ckpt_every=5",
            f"stage.val_every={steps // 2}", *extra]


def run_dir(root: Path, stage: str = "rae") -> Path:
    (run,) = [p for p in (root / stage).iterdir() if p.is_dir()]
    return run


# ============================================================================ bad images
BAD_KINDS = {       # name in the input folder -> what must happen to it
    "gray.png": "ok", "gray16.png": "ok", "rgb16.png": "ok", "cmyk.jpg": "ok", "opaque_rgba.png": "ok",
    "tiny.png": "ok", "jpeg_named.png": "ok", "transparent.png": "failed", "truncated.png": "failed",
    "garbage.webp": "failed", "empty.png": "failed", "notes.txt": "ignored", "folder.png": "ignored",
    "dangling.png": "ignored",
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    _bad_input_folder(root)
    _save(root / "jpeg.jpg", _image(20, 20, 9))
    (root / "jpeg.jpg").rename(root / "jpeg_named.png")
    (root / "empty.png").write_bytes(b"")
    (root / "folder.png").mkdir()
    (root / "dangling.png").symlink_to(root / "no_such_file.png")
    return root


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_a_bad_image_fails_alone_or_is_read_faithfully(kind, bad_inputs, synth, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(bad_inputs / "a.png", src / "good.png")
    item = bad_inputs / kind
    if item.is_symlink() or item.is_dir():
        os.symlink(os.readlink(item), src / kind) if item.is_symlink() else (src / kind).mkdir()
    else:
        shutil.copy(item, src / kind)
    summary = synthesize(synth, src, out)
    expected = BAD_KINDS[kind]
    assert summary.exit_code == (1 if expected == "failed" else 0)
    assert whole_folder(out) == ({"good.png", kind} if expected == "ok" else {"good.png"})
    if expected == "failed":
        failed = [json.loads(line)["file"] for line in (out / "failed.jsonl").read_text().splitlines()]
        assert failed == [kind]


# ====================================================================== full disk (ENOSPC)
def test_disk_full_writing_an_image_fails_that_image_alone(synth, src, reference, tmp_path):
    out = tmp_path / "out"
    with inject([{"file": r"LR/x3/d1/img1\.png$", "action": "enospc"}]):
        summary = synthesize(synth, src, out)
    assert summary.exit_code == 1 and [f["file"] for f in summary.failures] == ["d1/img1.png"]
    assert "No space left" in summary.failures[0]["error"]
    assert whole_folder(out) == {"d0/img0.png", "d0/img3.png", "d2/img2.png"}
    assert synthesize(synth, src, out).exit_code == 0                 # space again: the image is made
    assert snapshot(out) == reference


def test_disk_full_appending_the_manifest_rolls_the_lines_back(synth, src, reference, tmp_path):
    out = tmp_path / "out"
    with inject([{"file": r"manifest\.jsonl$", "action": "enospc", "nth": 2}]):
        summary = synthesize(synth, src, out)
    assert summary.exit_code == 1 and summary.failed == 1
    assert len(whole_folder(out)) == 3                                # no cut line, no files of the failed image
    assert synthesize(synth, src, out).exit_code == 0
    assert snapshot(out) == reference


def test_a_disk_that_stays_full_fails_the_remaining_images_and_ends_with_status_1(synth, src, tmp_path):
    out = tmp_path / "out"
    with inject([{"file": r"LR/x2/d1/img1\.png$", "action": "enospc", "stays": True}]):
        summary = synthesize(synth, src, out, baseline="bicubic")
    assert summary.exit_code == 1 and summary.processed == 2 and summary.failed == 2
    assert whole_folder(out) == {"d0/img0.png", "d0/img3.png"}


def test_disk_full_before_any_work_exits_2_in_one_line_and_writes_nothing(ckpt, src, tmp_path):
    out = tmp_path / "out"
    proc = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS,
               faults=[{"file": r".", "action": "enospc", "times": -1}])
    one_error(proc, 2, says=("No space left",))
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))


def test_disk_full_writing_a_checkpoint_keeps_the_previous_one(ckpt, tmp_path):
    target = tmp_path / "last.pt"
    shutil.copy(ckpt, target)
    before = target.read_bytes()
    payload = load_checkpoint(ckpt)
    payload = {k: v for k, v in payload.items() if k not in ("format", "format_version", "degflow_version")}
    with inject([{"file": r"last\.pt$", "action": "enospc"}]), pytest.raises(OSError) as err:
        save_checkpoint(target, {**payload, "step": 2})
    one_line(err.value, "No space left", str(target))
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.slow
def test_disk_full_during_a_training_checkpoint_exits_2_in_one_line_keeping_the_last_one(tmp_path):
    proc = cli(*train_args(tmp_path, "stage=rae"), faults=[{"file": r"checkpoints/last\.pt$", "action": "enospc",
                                                            "nth": 2}])
    one_error(proc, 2, says=("No space left",))
    run = run_dir(tmp_path)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5
    assert not list(run.rglob(".*.tmp"))
    assert json.loads((run / "job.json").read_text())["status"] == "failed"


def _cache_records():
    from degflow.data.common import MemoryRecord

    g = torch.Generator().manual_seed(0)
    return [MemoryRecord(f"im{i}", torch.rand(3, 24, 32, generator=g) * 2 - 1,
                         {2.0: torch.rand(3, 24, 32, generator=g) * 2 - 1}) for i in range(2)]


def same_latents(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(torch.equal(p, q) for p, q in zip(x, y, strict=True))
                                    for x, y in zip(a, b, strict=True))


def _cache_rae():
    from degflow.models.rae import RAE

    torch.manual_seed(0)
    return RAE(widths=[8, 8, 16, 16], num_res_blocks=1)


def test_disk_full_writing_the_latent_cache_trains_on_without_a_file(tmp_path, caplog):
    from degflow.training.latent_cache import encode_records, load_or_build_latent_cache

    rae, records = _cache_rae(), _cache_records()
    with inject([{"file": r"\.pt$", "action": "enospc"}]), caplog.at_level(logging.WARNING):
        cache = load_or_build_latent_cache(rae, records, [2.0], "f" * 64, torch.device("cpu"), tmp_path / "cache")
    fresh = encode_records(rae, records, [2.0], torch.device("cpu"))
    assert same_latents(cache.latents, fresh)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert any("No space left" in r.getMessage() for r in caplog.records)


def test_disk_full_writing_evaluation_results_leaves_no_partial_set(tmp_path):
    from test_evaluate import _config, _write_folder_tree

    from degflow.jobs.evaluation import run

    _write_folder_tree(tmp_path / "d")
    res = tmp_path / "res"
    cfg = _config(None, res, generated=str(tmp_path / "d" / "LR"), real=str(tmp_path / "d" / "real"),
                  methods=["bicubic"], plots=False)
    with inject([{"file": r"eval\.md$", "action": "enospc"}]), pytest.raises(OSError) as err:
        run(cfg, tmp_path / "unused")
    one_line(err.value, "No space left")
    assert not list(res.glob("eval*")), sorted(res.glob("*"))


@pytest.mark.slow
def test_disk_full_writing_evaluation_results_exits_2_in_one_line(tmp_path):
    from test_evaluate import _write_folder_tree

    _write_folder_tree(tmp_path / "d")
    proc = cli("-m", "degflow", "evaluate", f"generated={tmp_path / 'd' / 'LR'}", f"real={tmp_path / 'd' / 'real'}",
               "methods=[bicubic]", "plots=false", "eval.lpips=false", f"out={tmp_path / 'res'}",
               f"hydra.run.dir={tmp_path / 'logs'}", faults=[{"file": r"eval\.json$", "action": "enospc"}])
    one_error(proc, 2, says=("No space left",))
    assert not list((tmp_path / "res").glob("eval*"))


# ================================================================ kills and stop signals
@pytest.mark.slow
@pytest.mark.parametrize("fault", [{"file": r"LR/x3/", "action": "kill", "nth": 2},
                                   {"file": r"manifest\.jsonl$", "action": "kill", "nth": 3}],
                         ids=["mid-image", "mid-manifest-append"])
def test_a_kill_inside_a_synthesis_write_is_repaired_by_the_next_run(fault, ckpt, src, reference, tmp_path):
    out = tmp_path / "out"
    proc = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS, faults=[fault])
    assert proc.returncode == -signal.SIGKILL
    whole_folder(out, leftovers_ok=True)
    done = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    whole_folder(out)
    assert snapshot(out) == reference


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_during_synthesis_ends_the_job_record_and_loses_nothing(signals, ckpt, src, reference, tmp_path):
    out = tmp_path / "out"
    proc = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS,
               faults=[{"file": r"LR/x2/", "action": "term", "nth": 2, "count": signals, "interval": 0.05}])
    assert proc.returncode in STOPPED, proc.stderr[-3000:]
    (record,) = job_records(out)
    assert record["status"] != "running", record
    whole_folder(out, leftovers_ok=signals == 2)
    done = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert snapshot(out) == reference


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_resumes_to_the_uninterrupted_run(tmp_path):
    from test_resume import assert_same_run

    ref = cli(*train_args(tmp_path / "a", "stage=rae"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = cli(*train_args(tmp_path / "b", "stage=rae"), faults=[{"file": r"checkpoints/last\.pt$", "action": "kill",
                                                                  "nth": 2}])
    assert proc.returncode == -signal.SIGKILL
    run = run_dir(tmp_path / "b")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5
    done = cli(*train_args(tmp_path / "b", "stage=rae"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(run.rglob(".*.tmp"))
    assert_same_run(run, run_dir(tmp_path / "a"), steps=12)


RANDOM_KILLS = {"stage1": ("rae", []), "stage2": ("lfm", []), "stage2-ema": ("lfm", ["stage.ema_decay=0.9"]),
                "stage2-cache": ("lfm", ["stage.latent_cache=true"]),
                "stage2-cache-ema": ("lfm", ["stage.latent_cache=true", "stage.ema_decay=0.9"])}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RANDOM_KILLS))
def test_a_run_killed_at_a_random_step_resumes_bit_for_bit(case, request, tmp_path):
    from test_resume import assert_same_run, kill_and_resume

    stage, extra = RANDOM_KILLS[case]
    if stage == "lfm":
        extra = [f"rae_ckpt={request.getfixturevalue('rae_ckpt')}", *LFM_FAST, *extra]

    def command(root):
        cache = [f"stage.latent_cache_dir={root / 'cache'}"] if stage == "lfm" else []
        return [sys.executable, *train_args(root, f"stage={stage}", *extra, *cache, steps=24)]

    ref = subprocess.run(command(tmp_path / "a"), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = kill_and_resume(tmp_path / "b", command(tmp_path / "b"), stage, steps=24)
    assert_same_run(run, run_dir(tmp_path / "a", stage), steps=24)


@pytest.mark.slow
def test_sigterm_twice_during_training_ends_the_job_record(tmp_path):
    from test_resume import run_until

    command = [sys.executable, *train_args(tmp_path, "stage=rae", steps=40)]
    proc = run_until(command, tmp_path, "rae", random.randint(6, 28))
    os.killpg(proc.pid, signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode in STOPPED
    assert json.loads((run_dir(tmp_path) / "job.json").read_text())["status"] != "running"
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_during_start_up_ends_the_job_record(tmp_path):
    proc = start(*train_args(tmp_path, "stage=rae"))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("rae/*/job.json")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode in STOPPED
    assert json.loads((run_dir(tmp_path) / "job.json").read_text())["status"] != "running"


# ============================================================== outputs that cannot be written
def test_an_out_folder_that_is_a_file_exits_2_in_one_line(ckpt, src, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    proc = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={tmp_path / 'file' / 'out'}", *SYNTH_ARGS)
    one_error(proc, 2)
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: run the suite as a normal user")
def test_a_read_only_out_folder_exits_2_in_one_line_and_is_left_alone(ckpt, src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS)
        one_error(proc, 2)
        assert not list(out.iterdir())
    finally:
        out.chmod(0o755)


@pytest.mark.slow
def test_an_output_root_that_is_a_file_exits_2_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = cli(*train_args(tmp_path / "file", "stage=rae"))
    one_error(proc, 2)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: run the suite as a normal user")
def test_a_read_only_output_root_exits_2_in_one_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o555)
    try:
        one_error(cli(*train_args(root, "stage=rae")), 2)
    finally:
        root.chmod(0o755)


def test_a_refused_synthesis_writes_nothing_into_out(ckpt, src, tmp_path):
    out = tmp_path / "out"
    one_error(cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS, "tile_size=0"), 2,
              says=("tile_size=0",))
    assert not out.exists(), sorted(out.rglob("*"))


@pytest.mark.slow
def test_out_inside_input_is_refused_leaving_the_input_folder_as_it_was(ckpt, src, tmp_path):
    inner = tmp_path / "in"
    shutil.copytree(src, inner)
    before = sorted(p.relative_to(inner) for p in inner.rglob("*"))
    one_error(cli("synthesize.py", f"ckpt={ckpt}", f"input={inner}", f"out={inner / 'out'}", *SYNTH_ARGS), 2,
              says=("inside input",))
    assert sorted(p.relative_to(inner) for p in inner.rglob("*")) == before


# ==================================================================== malicious pickles
def test_a_malicious_synthesis_checkpoint_runs_no_code_and_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    for zipped in (True, False):
        with pytest.raises(CheckpointError) as err:
            Synthesizer.from_checkpoint(evil_pickle(tmp_path / f"evil{zipped}.pt", marker, zipped))
        one_line(err.value, "ckpt=", f"evil{zipped}.pt")
    assert not marker.exists()


@pytest.mark.slow
def test_a_malicious_checkpoint_on_the_synthesis_command_line_exits_2_in_one_line(src, tmp_path):
    marker = tmp_path / "pwned"
    proc = cli("synthesize.py", f"ckpt={evil_pickle(tmp_path / 'evil.pt', marker)}", f"input={src}",
               f"out={tmp_path / 'out'}", *SYNTH_ARGS)
    one_error(proc, 2, says=("ckpt=",))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_malicious_evaluation_checkpoint_runs_no_code_and_is_refused_in_one_line(tmp_path):
    from degflow.jobs.evaluation import load_model

    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError) as err:
        load_model(evil_pickle(tmp_path / "evil.pt", marker), "cpu", {"method": "euler", "steps": 2})
    one_line(err.value, "evil.pt")
    assert not marker.exists()


@pytest.mark.slow
def test_a_malicious_last_pt_is_refused_on_resume_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    first = cli(*train_args(tmp_path, "stage=rae", steps=2))
    assert first.returncode == 0, first.stderr[-2000:]
    last = run_dir(tmp_path) / "checkpoints" / "last.pt"
    evil_pickle(last, marker)
    before = last.read_bytes()
    proc = cli(*train_args(tmp_path, "stage=rae", steps=2))          # the same command: it resumes
    one_error(proc, 2, says=("last.pt",))
    assert not marker.exists() and last.read_bytes() == before


@pytest.mark.slow
def test_a_malicious_stage_one_checkpoint_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    proc = cli(*train_args(tmp_path, "stage=lfm", f"rae_ckpt={evil_pickle(tmp_path / 'rae.pt', marker)}",
                           *LFM_FAST, steps=2))
    one_error(proc, 2, says=("rae_ckpt=",))
    assert not marker.exists()


def test_a_malicious_latent_cache_file_runs_no_code_and_is_rebuilt(tmp_path):
    from degflow.training.latent_cache import encode_records, load_or_build_latent_cache

    rae, records = _cache_rae(), _cache_records()
    cache_dir = tmp_path / "cache"
    load_or_build_latent_cache(rae, records, [2.0], "e" * 64, torch.device("cpu"), cache_dir)
    (cached,) = cache_dir.glob("*.pt")
    marker = tmp_path / "pwned"
    evil_pickle(cached, marker)
    cache = load_or_build_latent_cache(rae, records, [2.0], "e" * 64, torch.device("cpu"), cache_dir)
    fresh = encode_records(rae, records, [2.0], torch.device("cpu"))
    assert same_latents(cache.latents, fresh)
    assert not marker.exists()


def test_malicious_official_weights_run_no_code_and_are_refused_in_one_line(tmp_path):
    from degflow.jobs.convert_official import ConversionError, load_official

    marker = tmp_path / "pwned"
    with pytest.raises(ConversionError) as err:
        load_official(evil_pickle(tmp_path / "ae.pth", marker), ("state_dict",), "ae", [], [])
    one_line(err.value, "ae=")
    assert not marker.exists()


def test_malicious_lpips_weights_run_no_code_and_are_refused_in_one_line(tmp_path):
    from degflow.metrics.perceptual import load_lpips

    marker = tmp_path / "pwned"
    with pytest.raises(ValueError) as err:
        load_lpips("alex", evil_pickle(tmp_path / "alexnet_features.pth", marker))
    one_line(err.value, "alexnet_features.pth")
    assert not marker.exists()


# =========================================================================== bit flips
@pytest.mark.parametrize("where", ["tensor", "pickle", "end"])
def test_a_bit_flip_in_a_checkpoint_is_refused_in_one_line_naming_the_file(where, ckpt, tmp_path):
    damaged = tmp_path / "damaged.pt"
    shutil.copy(ckpt, damaged)
    size = damaged.stat().st_size
    offset = {"tensor": tensor_offset(damaged), "pickle": pickle_offset(damaged), "end": size - 3}[where]
    flip_bit(damaged, offset)
    with pytest.raises(CheckpointError) as err:
        Synthesizer.from_checkpoint(damaged)
    one_line(err.value, str(damaged))


@pytest.mark.slow
def test_a_damaged_checkpoint_on_the_command_line_exits_2_and_writes_nothing(ckpt, src, tmp_path):
    damaged = tmp_path / "damaged.pt"
    shutil.copy(ckpt, damaged)
    flip_bit(damaged, tensor_offset(damaged))
    proc = cli("synthesize.py", f"ckpt={damaged}", f"input={src}", f"out={tmp_path / 'out'}", *SYNTH_ARGS)
    one_error(proc, 2, says=("damaged.pt",))
    assert not (tmp_path / "out").exists()


def test_a_damaged_evaluation_checkpoint_is_refused_in_one_line(ckpt, tmp_path):
    from degflow.jobs.evaluation import load_model

    damaged = tmp_path / "damaged.pt"
    shutil.copy(ckpt, damaged)
    flip_bit(damaged, tensor_offset(damaged))
    with pytest.raises(CheckpointError) as err:
        load_model(damaged, "cpu", {"method": "euler", "steps": 2})
    one_line(err.value, "damaged.pt")


@pytest.mark.slow
def test_a_damaged_last_pt_stops_the_resume_in_one_line_and_is_kept(tmp_path):
    first = cli(*train_args(tmp_path, "stage=rae", steps=6))
    assert first.returncode == 0, first.stderr[-2000:]
    run = run_dir(tmp_path)
    last = run / "checkpoints" / "last.pt"
    flip_bit(last, tensor_offset(last))
    before, history = last.read_bytes(), (run / "history.jsonl").read_bytes()
    proc = cli(*train_args(tmp_path, "stage=rae", steps=6))
    one_error(proc, 2, says=("last.pt",))
    assert last.read_bytes() == before and (run / "history.jsonl").read_bytes() == history


@pytest.mark.slow
def test_a_damaged_stage_one_checkpoint_is_refused_in_one_line(rae_ckpt, tmp_path):
    damaged = tmp_path / "rae.pt"
    shutil.copy(rae_ckpt, damaged)
    flip_bit(damaged, tensor_offset(damaged))
    proc = cli(*train_args(tmp_path, "stage=lfm", f"rae_ckpt={damaged}", *LFM_FAST, steps=2))
    one_error(proc, 2, says=("rae.pt",))


def test_a_checkpoint_written_before_digests_loads_with_one_warning_and_can_be_sealed(ckpt, tmp_path, caplog):
    from degflow.cli.checkpoint import main as checkpoint_tool

    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(ckpt, weights_only=True), legacy)            # no digest, as before this change
    with caplog.at_level(logging.WARNING):
        sha = Synthesizer.from_checkpoint(legacy).checkpoint_sha256
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "legacy.pt" in warnings[0] and "\n" not in warnings[0]
    assert checkpoint_tool(["seal", str(legacy)]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert Synthesizer.from_checkpoint(legacy).checkpoint_sha256 == sha   # the manifests' sha256 holds
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert checkpoint_tool(["verify", str(legacy)]) == 0


def test_a_damaged_checkpoint_can_be_accepted_deliberately(ckpt, tmp_path):
    from degflow.cli.checkpoint import main as checkpoint_tool

    damaged = tmp_path / "damaged.pt"
    shutil.copy(ckpt, damaged)
    flip_bit(damaged, tensor_offset(damaged))
    assert checkpoint_tool(["verify", str(damaged)]) == 1
    with pytest.raises(ValueError):
        checkpoint_tool(["seal", str(damaged)])                           # only with --accept-damaged
    assert checkpoint_tool(["seal", "--accept-damaged", str(damaged)]) == 0
    Synthesizer.from_checkpoint(damaged)


def test_a_truncated_checkpoint_is_refused_in_one_line(ckpt, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        Synthesizer.from_checkpoint(cut)
    one_line(err.value, "cut.pt")


def test_a_bit_flip_in_the_latent_cache_rebuilds_it(tmp_path):
    from degflow.training.latent_cache import encode_records, load_or_build_latent_cache

    rae, records = _cache_rae(), _cache_records()
    cache_dir = tmp_path / "cache"
    load_or_build_latent_cache(rae, records, [2.0], "d" * 64, torch.device("cpu"), cache_dir)
    (cached,) = cache_dir.glob("*.pt")
    flip_bit(cached, tensor_offset(cached), bit=3)
    cache = load_or_build_latent_cache(rae, records, [2.0], "d" * 64, torch.device("cpu"), cache_dir)
    fresh = encode_records(rae, records, [2.0], torch.device("cpu"))
    assert same_latents(cache.latents, fresh)


def test_a_bit_flip_in_a_manifest_line_regenerates_that_image(synth, src, reference, tmp_path):
    out = tmp_path / "out"
    synthesize(synth, src, out)
    flip_in_text(out / "manifest.jsonl", '"height": 8', '"height": 9')
    assert synthesize(synth, src, out).exit_code == 0
    whole_folder(out)
    assert snapshot(out) == reference


def test_a_damaged_synthesis_record_stops_a_resume_with_changed_settings(ckpt, synth, src, tmp_path):
    out = tmp_path / "out"
    synthesize(synth, src, out)
    record = out / "synthesis.json"
    record.write_bytes(record.read_bytes()[:-40])                       # cut short
    damaged = record.read_bytes()
    (out / "HR" / "d0" / "img0.png").unlink()
    other = Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("euler", steps=3, output_mode="cubic"))
    with pytest.raises(ValueError) as err:
        synthesize(other, src, out)
    one_line(err.value, "synthesis.json")
    assert record.read_bytes() == damaged and not (out / "HR" / "d0" / "img0.png").exists()


@pytest.mark.parametrize("old, new", [('"precision"', '"precisioo"'), ('"tile_size": 1024', '"tile_size": 1025')],
                         ids=["key", "value"])
def test_a_bit_flip_in_the_synthesis_record_stops_the_resume(old, new, synth, src, tmp_path):
    out = tmp_path / "out"
    synthesize(synth, src, out)
    record = out / "synthesis.json"
    flip_in_text(record, old, new)
    damaged = record.read_bytes()
    with pytest.raises(ValueError) as err:
        synthesize(synth, src, out)
    one_line(err.value, "synthesis.json")
    assert record.read_bytes() == damaged


def test_a_bit_flip_in_a_shard_manifest_blocks_the_merge(synth, src, tmp_path):
    from degflow.jobs.merge_shards import merge_shards

    out = tmp_path / "out"
    for shard in (0, 1):
        synthesize(synth, src, out, shard=shard, num_shards=2)
    flip_in_text(next(out.glob("manifest.shard*-of-2.jsonl")), '"height": 8', '"height": 9')
    result = merge_shards(out, src)
    assert not result.ok and not (out / "manifest.jsonl").exists()


@pytest.mark.slow
def test_changed_settings_on_resume_exit_2_in_one_line_and_change_nothing(ckpt, src, tmp_path):
    out = tmp_path / "out"
    first = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS)
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(out), (out / "synthesis.json").read_bytes(), sorted((out / "logs").iterdir())
    proc = cli("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS, "solver.steps=3")
    one_error(proc, 2, says=("solver",))
    assert (snapshot(out), (out / "synthesis.json").read_bytes(), sorted((out / "logs").iterdir())) == before


# ===================================================================== two writers
def _wait_for(path_glob, root: Path, proc, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not list(root.glob(path_glob)):
        time.sleep(0.02)
    assert list(root.glob(path_glob)), f"{path_glob} never appeared under {root}"


@pytest.mark.slow
def test_a_second_synthesis_into_the_same_out_is_refused_naming_the_first(ckpt, src, reference, tmp_path):
    out = tmp_path / "out"
    args = ("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS)
    first = start(*args, faults=[{"file": r"HR/", "action": "sleep", "seconds": 30}])   # holds out meanwhile
    _wait_for("HR/*/.*.tmp", out, first)
    second = cli(*args)
    first.communicate(timeout=300)
    assert first.returncode == 0
    one_error(second, 2, says=(str(first.pid),))
    (record,) = job_records(out)                                        # the first's record alone
    assert record["pid"] == first.pid and record["status"] == "completed" and len(record["attempts"]) == 1
    assert snapshot(out) == reference


@pytest.mark.slow
def test_two_shards_into_the_same_out_run_side_by_side(ckpt, src, tmp_path):
    from degflow.jobs.merge_shards import merge_shards

    out = tmp_path / "out"
    procs = [start("synthesize.py", f"ckpt={ckpt}", f"input={src}", f"out={out}", *SYNTH_ARGS, f"shard={i}",
                   "num_shards=2", faults=[{"file": r"HR/", "action": "sleep", "seconds": 2}]) for i in (0, 1)]
    for proc in procs:
        proc.communicate(timeout=300)
        assert proc.returncode == 0
    assert merge_shards(out, src).ok


@pytest.mark.slow
def test_a_second_training_process_on_the_same_run_is_refused_naming_the_first(tmp_path):
    args = train_args(tmp_path, "stage=rae", steps=6)
    first = start(*args, faults=[{"file": r"checkpoints/last\.pt$", "action": "sleep", "seconds": 30}])
    _wait_for("rae/*/checkpoints/.last.pt.*.tmp", tmp_path, first)
    second = cli(*args)
    first.communicate(timeout=300)
    assert first.returncode == 0
    one_error(second, 2, says=(str(first.pid),))
    record = json.loads((run_dir(tmp_path) / "job.json").read_text())
    assert record["pid"] == first.pid and record["status"] == "completed" and len(record["attempts"]) == 1


def _hold_lock(folder: Path, scope: str = "") -> subprocess.Popen:
    """A process that takes the lock of ``folder`` and sleeps."""
    code = ("import sys, time; from degflow.infra.locks import FolderLock; "
            f"lock = FolderLock({str(folder)!r}{', scope=' + repr(scope) if scope else ''}); lock.acquire(); "
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_synthesis_into_an_out_held_by_a_live_process_is_refused_naming_it(synth, src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out, "shard0-of-1")
    try:
        with pytest.raises(OSError) as err:
            synthesize(synth, src, out)
        one_line(err.value, str(holder.pid))
        assert not [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".degflow")]
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_taken_over(synth, src, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold_lock(out, "shard0-of-1")
    holder.kill()
    holder.wait()
    assert synthesize(synth, src, out).exit_code == 0
    assert snapshot(out) == reference


def _foreign_lock(folder: Path, name: str, job_id: str | None) -> None:
    """A lock file as another node writes it (the format of docs/INTEGRITY.md)."""
    record = {"host": "other-node", "pid": 4242, "started": "2026-01-01T00:00:00+0000", "boot_id": "x",
              "process_start": 1, "job_id": job_id, "command": "synthesize.py ..."}
    (folder / name).write_text(json.dumps(record) + "\n")


def test_a_requeued_slurm_job_takes_over_its_own_lock(synth, src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _foreign_lock(out, ".degflow-lock.shard0-of-1", "777")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    assert synthesize(synth, src, out).exit_code == 0


def test_a_lock_held_on_another_node_is_refused_naming_the_node(synth, src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _foreign_lock(out, ".degflow-lock.shard0-of-1", "777")
    monkeypatch.setenv("SLURM_JOB_ID", "778")
    with pytest.raises(OSError) as err:
        synthesize(synth, src, out)
    one_line(err.value, "other-node", "4242")
    assert not (out / "manifest.jsonl").exists()


def test_a_training_run_folder_held_by_a_live_process_is_refused_naming_it(tmp_path):
    from test_train import config

    from degflow.training import train

    run = tmp_path / "rae" / "tiny"
    run.mkdir(parents=True)
    holder = _hold_lock(run)
    try:
        with pytest.raises(OSError) as err:
            train(config([f"output_root={tmp_path}", "stage.steps=1"]), run)
        one_line(err.value, str(holder.pid))
        assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".degflow")) == []
    finally:
        holder.kill()
        holder.wait()
