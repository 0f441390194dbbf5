"""Thread counts from the allocation, scheduler identity, and the per-job record (degflow/infra/cluster.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from degflow.infra.cluster import allocated_cpus, job_record, read_job_record, resolve_threads, scheduler_info

REPO = Path(__file__).resolve().parents[1]


def test_auto_threads_take_the_smallest_of_affinity_quota_slurm_local_share_and_omp():
    idle = {"load": 0.0, "online": 8, "quota": None}   # an idle 8-CPU machine without a cgroup quota
    assert resolve_threads("auto", {}, affinity=8, **idle) == (8, "auto: CPU affinity")
    assert resolve_threads("auto", {"SLURM_CPUS_PER_TASK": "3"}, affinity=8, **idle) == (3, "auto: SLURM_CPUS_PER_TASK=3")
    assert resolve_threads("auto", {"SLURM_CPUS_PER_TASK": "16"}, affinity=4, **idle)[0] == 4   # affinity is tighter
    assert resolve_threads("auto", {"DEGFLOW_CPUS_PER_JOB": "2", "OMP_NUM_THREADS": "6"}, affinity=8, **idle)[0] == 2
    assert resolve_threads("auto", {"OMP_NUM_THREADS": "1"}, affinity=8, **idle) == (1, "auto: OMP_NUM_THREADS=1")
    assert allocated_cpus({"SLURM_CPUS_PER_TASK": "garbage", "OMP_NUM_THREADS": "0"}, affinity=5, quota=None)[0] == 5
    assert resolve_threads("auto", {}, affinity=8, load=0.0, online=8, quota=2.5) == (3, "auto: cgroup CPU quota 2.5")


def test_auto_threads_leave_the_cores_that_other_processes_keep_busy():
    # 2 cores, two other jobs running: one thread, and the reason is said
    count, source = resolve_threads("auto", {}, affinity=2, load=2.1, online=2, quota=None)
    assert count == 1 and source == "auto: CPU affinity 2, load average 2.1 on 2 CPUs leaves 1 idle"
    assert resolve_threads("auto", {}, affinity=8, load=2.6, online=8, quota=None)[0] == 5
    assert resolve_threads("auto", {}, affinity=4, load=0.4, online=16, quota=None)[0] == 4      # the allocation caps it
    # an explicit share (scheduler, launcher, OMP_NUM_THREADS) is trusted whatever the load
    assert resolve_threads("auto", {"SLURM_CPUS_PER_TASK": "2"}, affinity=2, load=9.0, online=2, quota=None)[0] == 2
    assert resolve_threads(2, {}, affinity=2, load=9.0, online=2, quota=None)[0] == 2              # and a number


def test_the_cgroup_quota_is_read_from_cgroup_v2_and_v1_files(tmp_path):
    from degflow.infra.cluster import cgroup_cpu_quota

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path / "v1") == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path / "v1") is None
    assert cgroup_cpu_quota(tmp_path / "nothing") is None


def test_an_explicit_thread_count_wins_and_bad_values_name_the_key():
    assert resolve_threads(3, {"SLURM_CPUS_PER_TASK": "1"}, affinity=1) == (3, "threads setting")
    for bad in (0, -2, "four", 2.5, True):
        with pytest.raises(ValueError, match="threads=.*'auto'.*positive integer.*config key threads"):
            resolve_threads(bad, {}, affinity=2, load=0.0, online=2, quota=None)


def test_scheduler_info_names_array_jobs_as_submitit_names_their_log_folders():
    env = {"SLURM_JOB_ID": "1005", "SLURM_ARRAY_JOB_ID": "1000", "SLURM_ARRAY_TASK_ID": "5",
           "SLURM_RESTART_COUNT": "2", "SLURM_CPUS_PER_TASK": "4"}
    info = scheduler_info(env)
    assert info["scheduler"] == "slurm" and info["job_id"] == "1000_5" and info["slurm_job_id"] == "1005"
    assert info["restart_count"] == 2 and info["cpus_per_task"] == "4"
    assert scheduler_info({"SLURM_JOB_ID": "7"})["job_id"] == "7"
    assert scheduler_info({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242"}) == {
        "scheduler": "submitit_local", "job_id": "4242"}
    assert scheduler_info({}) == {}


def test_job_record_marks_success_failure_and_interruption_and_keeps_every_attempt(tmp_path):
    with pytest.raises(ValueError):
        with job_record(tmp_path, ["a=1"], threads=2):
            assert read_job_record(tmp_path)["status"] == "running"
            raise ValueError("boom at step 3")
    record = read_job_record(tmp_path)
    assert record["status"] == "failed" and record["error"] == "ValueError: boom at step 3"
    assert "Traceback" in (tmp_path / "error.txt").read_text() and "boom at step 3" in (tmp_path / "error.txt").read_text()

    with pytest.raises(SystemExit):                 # submitit exits this way after requeueing
        with job_record(tmp_path, ["a=1"]):
            sys.exit(-1)
    assert read_job_record(tmp_path)["status"] == "interrupted"

    with pytest.raises(SystemExit) as stop:         # an error while the requeue unwinds: still a stop
        with job_record(tmp_path, ["a=1"]):
            try:
                sys.exit(-1)
            except SystemExit:
                raise ConnectionResetError("logger service gone")
    assert isinstance(stop.value.__cause__, ConnectionResetError)
    record = read_job_record(tmp_path)
    assert record["status"] == "interrupted" and "logger service gone" in record["error"]

    with job_record(tmp_path, ["a=1"]):
        pass
    record = read_job_record(tmp_path)
    assert record["status"] == "completed" and record["error"] is None and record["overrides"] == ["a=1"]
    assert [a["status"] for a in record["attempts"]] == ["failed", "interrupted", "interrupted", "completed"]
    assert record["attempts"][0]["threads"] == 2
    assert not (tmp_path / "error.txt").exists()    # the job finished: no stale traceback


@pytest.mark.slow
def test_training_logs_its_thread_count_and_records_the_job(tmp_path):
    cmd = [sys.executable, "train.py", "stage=rae", "logger=none", "device=cpu", f"output_root={tmp_path}",
           "stage.steps=1", "stage.batch_size=2", "stage.warmup_steps=0", "data.crop_size=32", "data.max_side=96",
           "data.val_max_size=64", "data.samples_per_epoch=4", "eval.max_images=1", "model.rae.widths=[8,8,16,16]",
           "data.val_scales=[1,2,4]", "threads=auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = [p.parent for p in tmp_path.glob("rae/*/job.json")]
    assert "threads: 1 (auto: OMP_NUM_THREADS=1)" in (run_dir / "train.log").read_text()
    record = json.loads((run_dir / "job.json").read_text())
    assert record["status"] == "completed" and record["threads"] == 1 and "threads=auto" in record["overrides"]


def test_only_the_main_process_of_a_multi_task_job_writes_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")                      # rank 1 of a two-process torchrun job
    monkeypatch.setenv("WORLD_SIZE", "2")
    with job_record(tmp_path, ["a=1"]) as record:
        assert record == {}
    assert read_job_record(tmp_path) is None
    monkeypatch.setenv("RANK", "0")
    with job_record(tmp_path, ["a=1"]):
        pass
    assert read_job_record(tmp_path)["status"] == "completed"
