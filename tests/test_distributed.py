"""Data-parallel training in one job: 2 gloo processes on CPU train as one process would."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import DEMO, REPO, TINY, config

from degflow.infra.checkpoint import load_checkpoint
from degflow.infra.cluster import SINGLE, DistEnv, detect_environment, submitit_port
from degflow.training import train
from degflow.training.distributed import local_batch_size
from degflow.training.loop import TIMING_SCALARS
from degflow.training.sampling import RowDraws, batch_keys
from degflow.training.stop import StopSignals, TrainingStopped

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 8
# batch 4 = 2 rows per process; keep_every=4 leaves a step-4 checkpoint to resume from
RUN = [f"stage.steps={STEPS}", "stage.batch_size=4", "stage.val_every=4", "stage.keep_every=4",
       "stage.ckpt_every=4", "stage.ckpt_minutes=null"]
LFM = ["stage=lfm", "loss.lpips_weight=0", "eval.lpips=false", "model.lfm.dropout=0", "spline.learn_knots=true"]

# Tolerance against the one-process run. The two runs see the same rows and the same random
# numbers; they differ only in float32 rounding: one process averages the 4 per-row losses in
# one reduction, DDP averages two 2-row means (gloo sums the gradients, then divides by 2). Each
# gradient element then differs by a few float32 ulps (relative ~1e-7), and Adam's update
# lr * m / (sqrt(v) + eps) turns a relative gradient error into about the same relative update
# error, so after 8 steps at lr 1e-3 the weights may differ by ~1e-8..1e-6 (measured: 3e-8 on
# the RAE). 1e-5 leaves room for other BLAS kernels, and is still 100x below what a genuine
# change does: training on half the batch moves the weights by > 1e-3 in 8 steps (asserted).
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5


# ------------------------------------------------------------------ the environment


def test_torchrun_variables_make_a_data_parallel_process_and_none_a_plain_one():
    env = detect_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                              "MASTER_PORT": "29611"})
    assert env == DistEnv(rank=1, world_size=2, local_rank=1, master_addr="node7", master_port=29611,
                          launcher="torchrun")
    assert env.enabled and not env.is_main
    assert detect_environment({}) == SINGLE and not SINGLE.enabled and SINGLE.is_main
    # a plain sbatch/srun task without torchrun or submitit is one process
    assert detect_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == SINGLE


def test_submitit_slurm_tasks_rendezvous_at_the_first_node_of_the_job(monkeypatch):
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4",
                       "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                       "SLURM_JOB_NODELIST": "gpu[07-08]"}.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    env = detect_environment()
    assert env == DistEnv(rank=3, world_size=4, local_rank=1, master_addr="gpu07", master_port=submitit_port("4242"),
                          launcher="submitit")
    assert 20000 <= env.master_port < 60000 and submitit_port("4243") != env.master_port
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert detect_environment() == SINGLE  # one task per job: a plain run


def test_a_global_batch_the_processes_cannot_share_evenly_is_refused(tmp_path, monkeypatch):
    assert local_batch_size(8, 2) == 4 and local_batch_size(8, 1) == 8
    with pytest.raises(ValueError, match=r"stage.batch_size=6 .* \(world_size=4\).*stage.batch_size=8 or 4"):
        local_batch_size(6, 4)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"stage.batch_size=3 is the global batch .* \(world_size=2\)"):
        train(config([f"output_root={tmp_path}", "stage.batch_size=3", "stage.steps=1"]), tmp_path / "run")  # before anyone waits for rank 1
    assert not (tmp_path / "run").exists()


def test_the_losss_row_draws_do_not_depend_on_the_number_of_processes():
    whole = RowDraws(seed=3, step=5)
    t, pick = whole.rand(6), whole.randint(3, 6)
    parts = [RowDraws(seed=3, step=5, rank=r, world_size=2) for r in range(2)]
    halves = [(p.rand(3), p.randint(3, 3)) for p in parts]
    for r, (t_r, pick_r) in enumerate(halves):  # rank r has rows r::2, like its samples (batch_keys)
        assert torch.equal(t_r, t[r::2]) and torch.equal(pick_r, pick[r::2])
    assert [k for r in range(2) for k in batch_keys(3, 5, 50, 6, r, 2)] != batch_keys(3, 5, 50, 6)  # interleaved
    assert not torch.equal(RowDraws(seed=3, step=6).rand(6), t)  # another step, other numbers


def test_in_a_data_parallel_job_a_stop_ends_every_rank_and_only_rank_0_calls_the_launchers_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))  # as submitit's
    try:
        for chain, handler_calls in ((True, 1), (False, 0)):  # rank 0, another rank
            calls.clear()
            with StopSignals() as stop:
                stop.request(signal.SIGUSR1)  # agreed from another rank's signal
                with pytest.raises(TrainingStopped) as stopped:
                    stop.after_checkpoint(5, 10, Path("last.pt"), chain=chain, may_continue=False)
            assert stopped.value.exit_code == 128 + signal.SIGUSR1 and len(calls) == handler_calls
        calls.clear()
        with StopSignals() as stop:  # one process: the handler returned, so training goes on
            stop.request(signal.SIGUSR1)
            stop.request(signal.SIGTERM)  # a pending stop keeps its signal
            stop.after_checkpoint(5, 10, Path("last.pt"))
            assert calls == [signal.SIGUSR1] and not stop.requested
    finally:
        signal.signal(signal.SIGUSR1, previous)


# ------------------------------------------------------------------ two processes


def torchrun(root: Path, record: Path, *overrides: str, wait: bool = True):
    """``torchrun --nproc_per_node=2 train.py ...`` (through tests/_record_writes.py)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "_record_writes.py"), *TINY, *DEMO, *RUN, f"output_root={root}", *overrides]
    env = {**ENV, "RECORD_WRITES_DIR": str(record)}
    if not wait:  # stderr to a file: a full pipe would block the workers
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=open(root / "stderr.txt", "w"), start_new_session=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    stage = "lfm" if "stage=lfm" in overrides else "rae"
    (run,) = [p.parents[1] for p in (root / stage).glob("*/checkpoints/last.pt")]
    return run


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, dict]:
    rows = [r for r in history(run) if "train/loss" in r]
    assert len(rows) == len({r["step"] for r in rows}), "a step was logged twice"
    return {r["step"]: {k: v for k, v in r.items() if k.removeprefix("train/") not in TIMING_SCALARS} for r in rows}


def weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == STEPS
    out = {f"{name}.{k}": v for name, entry in ckpt["models"].items() for k, v in entry["state_dict"].items()}
    return {**out, **{f"knots.{k}": v for k, v in ckpt.get("knot_state", {}).items()}}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())


def assert_same_training(ddp: Path, single: Path) -> None:
    got, want = losses(ddp), losses(single)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step, row in want.items():
        for key, value in row.items():
            assert got[step][key] == pytest.approx(value, rel=LOSS_RTOL, abs=1e-9), (step, key)
    assert max_difference(weights(ddp), weights(single)) < WEIGHT_ATOL


def writes_under(record: Path, rank: int, run: Path) -> list[list[str]]:
    rows = json.loads((record / f"rank{rank}.json").read_text())
    return [row for row in rows if any(p.startswith(str(run)) for p in row[1:])]


@pytest.fixture(scope="module")
def rae_ddp(tmp_path_factory) -> tuple[Path, Path]:
    """An 8-step RAE run of 2 gloo processes: (run directory, folder of the writes each rank made)."""
    root = tmp_path_factory.mktemp("ddp")
    return torchrun(root, root / "record"), root / "record"


@pytest.mark.slow
def test_two_processes_train_the_rae_as_one_process_on_the_same_global_batch(tmp_path, rae_ddp):
    run, record = rae_ddp
    train(config([f"output_root={tmp_path}", *DEMO, *RUN]), tmp_path / "single")
    assert_same_training(run, tmp_path / "single")
    assert json.loads((run / "metrics.json").read_text())["step"] == STEPS
    # what one process alone would do with its share of the batch is far from the DDP run
    train(config([f"output_root={tmp_path}", *DEMO, *RUN, "stage.batch_size=2"]), tmp_path / "half")
    assert max_difference(weights(tmp_path / "half"), weights(run)) > 100 * WEIGHT_ATOL


@pytest.mark.slow
def test_only_rank_0_writes_files_of_the_run(rae_ddp):
    run, record = rae_ddp
    rank0, rank1 = writes_under(record, 0, run), writes_under(record, 1, run)
    # rank 1 writes no checkpoint, history, metrics, image or .hydra file; Hydra, before the job
    # starts, makes the run folder (exist_ok) and opens train.log for appending on every rank,
    # and rank 1 drops that handler unused (the log holds no line of rank 1's, asserted below)
    assert {tuple(row) for row in rank1} == {("os.mkdir", str(run)), ("write", str(run / "train.log"))}, rank1
    written = {Path(p).relative_to(run).as_posix() for row in rank0 for p in row[1:] if p.startswith(str(run))}
    assert {"checkpoints/last.pt", "checkpoints/step_0000004.pt", "history.jsonl", "metrics.json", "train.log",
            ".hydra/config.yaml"} <= written
    log = (run / "train.log").read_text()
    assert "rank 0 of 2 (torchrun" in log and "rank 1 of 2" not in log  # rank 1 does not log into it
    assert log.count("data: demo") == 1


@pytest.mark.slow
def test_two_process_run_resumed_from_a_checkpoint_equals_the_uninterrupted_run_bit_for_bit(tmp_path, rae_ddp):
    run, _ = rae_ddp
    resumed = tmp_path / "rae" / run.name  # the same command under another output_root lands here
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "step_0000004.pt", resumed / "checkpoints" / "last.pt")
    shutil.copy(run / "history.jsonl", resumed / "history.jsonl")  # holds steps 5-8 the resumed run redoes
    assert torchrun(tmp_path, tmp_path / "record") == resumed
    assert "at step 4" in (resumed / "train.log").read_text()
    assert losses(resumed) == losses(run)  # floats compared with ==
    a, b = weights(resumed), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
def test_two_processes_train_the_lfm_as_one_process_learned_knots_included(tmp_path):
    stage1 = tmp_path / "stage1"
    train(config([f"output_root={tmp_path}", "stage.steps=2", "stage.val_every=2"]), stage1)
    rae = f"rae_ckpt={stage1 / 'checkpoints' / 'last.pt'}"
    run = torchrun(tmp_path / "ddp", tmp_path / "record", *LFM, rae)
    train(config([f"output_root={tmp_path}", *DEMO, *RUN, *LFM, rae]), tmp_path / "single")
    assert_same_training(run, tmp_path / "single")
    knots = weights(run)["knots.gap_logits"]
    assert not torch.equal(knots, load_checkpoint(run / "checkpoints" / "step_0000004.pt")["knot_state"]["gap_logits"])


@pytest.mark.slow
def test_a_stop_signal_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    record = tmp_path / "record"
    proc = torchrun(tmp_path, record, "stage.steps=400", "stage.val_every=400", "stage.ckpt_every=400",
                    "stage.keep_every=null", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        logged = [p for p in (tmp_path / "rae").glob("*/history.jsonl")]
        if (record / "pid1").exists() and logged and len(logged[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
    os.kill(int((record / "pid1").read_text()), signal.SIGTERM)  # rank 1 only
    assert proc.wait(timeout=300) != 0
    (run,) = [p.parent for p in (tmp_path / "rae").glob("*/history.jsonl")]
    stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 3 <= stopped_at < 400 and stopped_at == max(losses(run))  # the step it was on: none lost
    assert f"stopped by SIGTERM at step {stopped_at}/400" in (run / "train.log").read_text()  # rank 0 stopped too


@pytest.mark.slow
def test_submitit_tasks_per_node_2_train_data_parallel_through_the_hydra_launcher(tmp_path):
    """hydra-submitit-launcher's local executor starts 2 tasks with submitit's environment (as on
    SLURM with tasks_per_node=2); they find each other and train as one process would."""
    command = [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
               "hydra.launcher.timeout_min=10", *TINY, *DEMO, *RUN, f"output_root={tmp_path / 'sweep'}"]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (run,) = [p.parents[1] for p in (tmp_path / "sweep" / "sweeps" / "rae").glob("*/checkpoints/last.pt")]
    assert "rank 0 of 2 (submitit, local rank 0)" in (run / "train.log").read_text()
    train(config([f"output_root={tmp_path}", *DEMO, *RUN]), tmp_path / "single")
    assert_same_training(run, tmp_path / "single")

