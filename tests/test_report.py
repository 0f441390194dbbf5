"""Sweep reports (degflow/jobs/sweep_report.py) and shard merging (degflow/jobs/merge_shards.py) on folders laid
out exactly as train.py / synthesize.py jobs leave them."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from degflow.cli.app import run_tool
from degflow.cli.merge_shards import main as merge_main
from degflow.cli.report import main as report_main
from degflow.jobs.merge_shards import merge_shards, verify_shards
from degflow.jobs.sweep_report import collect_jobs, expected_jobs, swept_keys, write_report

COMMON = ["stage=lfm", "logger=none"]



def _status(main, argv: list[str]) -> int:
    """Exit status of a tool run through the one CLI wrapper (:func:`degflow.cli.app.run_tool`)."""
    with pytest.raises(SystemExit) as exited:
        run_tool(main, argv)
    return exited.value.code

def _metrics(psnr: float, nfe: int) -> dict:
    scales = {}
    for s, held in (("x1", False), ("x2", False), ("x2.5", True), ("x3", True), ("x4", False)):
        scales[s] = {"psnr_y": psnr + (1.0 if held else 0.0), "ssim_y": 0.8, "lpips": 0.2, "heldout": held}
    return {"scales": scales, "objective": psnr + 1.0, "nfe": nfe, "seconds_per_image": 0.5, "step": 10}


def _job(sweep: Path, name: str, overrides: list[str], status: str, metrics: dict | None = None,
         error: str | None = None, job_id: str | None = None, solver: str = "rk4") -> Path:
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"solver": {"method": solver}}))
    if status is not None:
        attempts = [{"status": status, "seconds": 12.5, "job_id": job_id}]
        (run / "job.json").write_text(json.dumps({"status": status, "overrides": overrides, "job_id": job_id,
                                                  "error": error, "attempts": attempts}))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps({**metrics, "overrides": overrides}))
    if error:
        (run / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A solver sweep of 2 x 2 jobs: two completed, one failed, one still running, plus one
    job that multirun.yaml announces but that has not started."""
    sweep = tmp_path / "sweeps" / "solvers"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"sweeper": {"params": {"solver": "euler,rk4"}},
                  "overrides": {"task": [*COMMON, "solver.steps=8,16,32"]}}}))
    _job(sweep, "a", [*COMMON, "solver=euler", "solver.steps=8"], "completed", _metrics(30.0, 8), job_id="77_0",
         solver="euler")
    _job(sweep, "b", [*COMMON, "solver=euler", "solver.steps=16"], "completed", _metrics(31.0, 16), job_id="77_1",
         solver="euler")
    _job(sweep, "c", [*COMMON, "solver=rk4", "solver.steps=8"], "failed", error="ValueError: boom", job_id="77_3")
    _job(sweep, "d", [*COMMON, "solver=rk4", "solver.steps=16"], "running", job_id="77_4")
    (sweep / ".submitit" / "77_3").mkdir(parents=True)
    (sweep / ".submitit" / "77_3" / "77_3_0_log.err").write_text("Traceback ...\nValueError: boom\n")
    return sweep


def test_multirun_yaml_expands_into_every_job_of_the_sweep(sweep):
    jobs = expected_jobs(sweep)
    assert len(jobs) == 6
    assert sorted(next(o for o in j if o.startswith("solver=")) for j in jobs) == ["solver=euler"] * 3 + ["solver=rk4"] * 3


def test_the_report_has_one_row_per_job_with_status_swept_keys_and_per_scale_metrics(sweep):
    jobs = collect_jobs(sweep)
    assert swept_keys(jobs) == ["solver", "solver.steps"]
    assert sorted((j.value("solver"), j.value("solver.steps"), j.status) for j in jobs) == [
        ("euler", "16", "completed"), ("euler", "32", "pending"), ("euler", "8", "completed"),
        ("rk4", "16", "running"), ("rk4", "32", "pending"), ("rk4", "8", "failed")]
    result = write_report(sweep)
    rows = list(csv.DictReader(result["paths"]["csv"].open()))
    assert len(rows) == 6
    assert {"status", "job_id", "solver", "solver.steps", "x2/psnr_y", "x2.5*/psnr_y", "x3*/lpips", "x4/ssim_y",
            "heldout_psnr_y", "nfe", "seconds_per_image", "job_seconds"} <= set(rows[0])
    (done,) = [r for r in rows if r["solver"] == "euler" and r["solver.steps"] == "16"]
    assert float(done["x2.5*/psnr_y"]) == 32.0 and float(done["x2/psnr_y"]) == 31.0 and done["nfe"] == "16"
    assert done["job_id"] == "77_1" and float(done["job_seconds"]) == 12.5
    for name in ("psnr_vs_nfe", "metric_vs_scale"):
        assert result["paths"][name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_and_unfinished_jobs_are_listed_with_their_error_and_where_to_look(sweep):
    text = write_report(sweep)["markdown"]
    assert "6 jobs: 2 completed, 1 failed, 2 pending, 1 running." in text
    failed = next(line for line in text.splitlines() if line.startswith("- **failed**"))
    assert "solver=rk4, solver.steps=8" in failed and "ValueError: boom" in failed
    assert "`c/error.txt`" in failed and "`.submitit/77_3/77_3_0_log.err`" in failed
    assert any(line.startswith("- **running**") and "killed by the scheduler" in line for line in text.splitlines())
    assert (sweep / "report" / "report.md").read_text() == text


def test_report_cli_exits_2_on_a_folder_without_a_sweep(tmp_path, capsys):
    assert _status(report_main, [str(tmp_path)]) == 2
    assert "holds no sweep jobs" in capsys.readouterr().err
    assert _status(report_main, [str(tmp_path / "missing")]) == 2


# ----------------------------------------------------------------------------- merge_shards
def _shard(out: Path, shard: int, num: int, sources: list[str], scales=(1.5, 2.0), failures=()) -> None:
    lines = []
    for source in sources:
        name = source.rsplit(".", 1)[0] + ".png"
        entries = [("hr", "hr", 1.0, f"HR/{name}")] + [("degflow", "lr", s, f"LR/x{s:g}/{name}") for s in scales]
        for kind, size, scale, rel in entries:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(b"png")
            lines.append(json.dumps({"source": source, "output": rel, "kind": kind, "size": size, "scale": scale}))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"manifest.shard{shard}-of-{num}.jsonl").write_text("".join(line + "\n" for line in lines))
    if failures:
        (out / f"failed.shard{shard}-of-{num}.jsonl").write_text(
            "".join(json.dumps({"file": f, "error": "ImageReadError: truncated"}) + "\n" for f in failures))


def _hr(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not read")
    return root


def test_complete_shards_merge_into_one_manifest_with_every_output_once(tmp_path, capsys):
    out = tmp_path / "out"
    _shard(out, 0, 3, ["a.png", "sub/b.png"])
    _shard(out, 1, 3, ["c.png"])
    _shard(out, 2, 3, ["d.jpg"])
    src = _hr(tmp_path / "hr", ["a.png", "sub/b.png", "c.png", "d.jpg"])
    assert _status(merge_main, [str(out), "--input", str(src)]) == 0
    assert "verified 12 outputs of 4 images from 3 shards" in capsys.readouterr().out
    merged = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(merged) == 12 and len({e["output"] for e in merged}) == 12
    assert [e["source"] for e in merged[:3]] == ["a.png"] * 3 and merged[0]["kind"] == "hr"


@pytest.mark.parametrize("break_it, problem", [
    (lambda out: (out / "LR" / "x2" / "c.png").unlink(), "LR/x2/c.png is in the manifest of shard 1 but the file is missing"),
    (lambda out: _shard(out, 2, 3, ["d.jpg", "c.png"]), "is listed by shard 1 and shard 2"),
    (lambda out: _shard(out, 1, 3, ["c.png"], scales=(1.5,)), "c.png: 1 output(s) missing (degflow/lr/x2)"),
    (lambda out: _shard(out, 2, 3, [], failures=["d.jpg"]), "failed.shard2-of-3.jsonl: d.jpg: ImageReadError"),
])
def test_overlapping_missing_or_failed_outputs_are_listed_and_nothing_is_merged(break_it, problem, tmp_path):
    out = tmp_path / "out"
    _shard(out, 0, 3, ["a.png"])
    _shard(out, 1, 3, ["c.png"])
    _shard(out, 2, 3, ["d.jpg"])
    break_it(out)
    result = merge_shards(out)
    assert not result.ok and any(problem in p for p in result.problems), result.problems
    assert not (out / "manifest.jsonl").exists()


def test_an_image_no_shard_produced_is_found_with_the_input_folder(tmp_path, capsys):
    out = tmp_path / "out"
    _shard(out, 0, 2, ["a.png"])                      # shard 1 never ran
    src = _hr(tmp_path / "hr", ["a.png", "b.png"])
    assert verify_shards(out).ok                       # what is there is consistent ...
    assert _status(merge_main, [str(out), "--input", str(src)]) == 1   # ... but b.png is missing
    printed = capsys.readouterr().out
    assert "PROBLEM: b.png: in --input but in no shard manifest" in printed and "no manifest from shard(s) [1]" in printed


def test_merge_refuses_folders_without_shards_or_with_mixed_shard_counts(tmp_path, capsys):
    assert _status(merge_main, [str(tmp_path)]) == 2
    _shard(tmp_path, 0, 2, ["a.png"])
    _shard(tmp_path, 0, 3, ["b.png"])
    assert _status(merge_main, [str(tmp_path)]) == 2
    assert "different shard counts [2, 3]" in capsys.readouterr().err
