"""Exact resume and clean stops: a killed, stopped or requeued run continues as if never interrupted."""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from degflow.infra.checkpoint import CheckpointError, find_latest_checkpoint, load_checkpoint, save_checkpoint
from degflow.data.common import MemoryRecord, TrainCropDataset
from degflow.training.loggers import NullLogger
from degflow.training.loop import TIMING_SCALARS
from degflow.training import TrainingStopped, train
from degflow.training.sampling import batch_indices, batch_keys, train_batches
from test_train import DEMO, REPO, TINY, config

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LFM_FAST = ["loss.lpips_weight=0", "eval.lpips=false"]


# ------------------------------------------------------------------ the data of a step


def test_the_batch_of_a_step_is_a_pure_function_of_seed_and_step():
    assert batch_indices(0, 5, 10, 4) == batch_indices(0, 5, 10, 4)
    assert batch_indices(0, 5, 10, 4) != batch_indices(1, 5, 10, 4)
    stream = [i for step in range(5) for i in batch_indices(3, step, 10, 4)]  # 20 samples = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # every epoch has its own order


def test_data_parallel_ranks_split_the_same_global_batch():
    whole = batch_keys(0, 7, 100, 6)
    parts = [batch_keys(0, 7, 100, 6, rank=r, world_size=3) for r in range(3)]
    assert [parts[r % 3][r // 3] for r in range(6)] == whole  # rank r holds rows r::3
    assert len({seed for _, seed in whole}) == 6               # each row has its own augmentation


def tiny_crop_dataset(samples: int = 12) -> TrainCropDataset:
    g = torch.Generator().manual_seed(0)
    records = [MemoryRecord(f"im{i}", torch.rand(3, 24, 20, generator=g) * 2 - 1,
                            {2.0: torch.rand(3, 24, 20, generator=g) * 2 - 1}) for i in range(3)]
    return TrainCropDataset(records, [2.0], crop_size=8, samples_per_epoch=samples)


def test_a_training_item_is_a_pure_function_of_its_key():
    data = tiny_crop_dataset()
    torch.manual_seed(1)
    a = data[(4, 1234)]
    torch.manual_seed(2)  # the global RNG plays no part
    b = data[(4, 1234)]
    assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"]) and a["name"] == "im1"
    crops = {tuple(data[(4, seed)]["hr"].flatten()[:8].tolist()) for seed in range(20)}
    assert len(crops) > 10  # the seed chooses the crop and flip/rotation


def test_batches_do_not_depend_on_workers_or_on_the_step_a_run_starts_at():
    data = tiny_crop_dataset()
    fresh = train_batches(data, seed=0, start_step=0, batch_size=4, num_workers=0, device=torch.device("cpu"))
    expected = [next(fresh) for _ in range(5)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    resumed = train_batches(data, seed=0, start_step=3, batch_size=4, num_workers=2, device=torch.device("cpu"))
    got = [next(resumed) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)  # loading data draws nothing from the global RNG
    for want, have in zip(expected[3:], got):
        assert want["name"] == have["name"] and torch.equal(want["hr"], have["hr"])
        assert torch.equal(want["lr"], have["lr"])


# ------------------------------------------------------------ killed and resumed runs


def cmd(root: Path, *extra: str, steps: int = 40) -> list[str]:
    return [sys.executable, "train.py", *TINY, *DEMO, f"output_root={root}", f"stage.steps={steps}",
            "stage.ckpt_every=5", "stage.ckpt_minutes=null", f"stage.val_every={steps // 2}", *extra]


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, dict]:
    """``{step: training scalars}`` without the timing column; asserts every step appears once."""
    rows = [r for r in history(run_dir) if "train/loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"steps logged twice: {sorted(s for s in steps if steps.count(s) > 1)}"
    return {r["step"]: {k: v for k, v in r.items() if k.removeprefix("train/") not in TIMING_SCALARS} for r in rows}


def only_run(root: Path, stage: str) -> Path:
    (run,) = [p.parents[1] for p in (root / stage).glob("*/checkpoints/last.pt")]
    return run


def max_logged_step(root: Path, stage: str) -> int:
    for path in (root / stage).glob("*/history.jsonl"):
        steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
        return max(steps, default=0)
    return 0


def run_until(command: list[str], root: Path, stage: str, at_least: int, ckpt_every: int = 5) -> subprocess.Popen:
    """Start ``command`` and freeze it (SIGSTOP) once it has logged a step >= ``at_least`` that is
    not a checkpoint step, so the history holds rows past the last checkpoint."""
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group, like a job under a scheduler
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        step = max_logged_step(root, stage)
        if step >= at_least and step % ckpt_every:
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.1)  # let the stop land before reading the history again
            if max_logged_step(root, stage) % ckpt_every:
                return proc
            proc.send_signal(signal.SIGCONT)  # it reached a checkpoint step meanwhile: try the next step
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"the run ended or stalled before step {at_least}: {proc.stderr.read()[-2000:]!r}")


def assert_same_run(resumed: Path, reference: Path, steps: int = 40) -> None:
    assert losses(resumed) == losses(reference)  # bit for bit: floats compared with ==
    a, b = load_checkpoint(resumed / "checkpoints" / "last.pt"), load_checkpoint(reference / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    for name, entry in b["models"].items():
        for key, value in entry["state_dict"].items():
            assert torch.equal(a["models"][name]["state_dict"][key], value), f"{name}.{key} differs"
    for pid, state in b["optimizer"]["state"].items():
        assert all(torch.equal(a["optimizer"]["state"][pid][k], v) for k, v in state.items())
    val = [r for r in history(reference) if any(k.startswith("val/") for k in r)]
    assert val == [r for r in history(resumed) if any(k.startswith("val/") for k in r)]


def kill_and_resume(root: Path, command: list[str], stage: str, steps: int = 40) -> Path:
    at = random.randint(6, steps - 12)
    proc = run_until(command, root, stage, at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    run = only_run(root, stage)
    killed_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 5 <= killed_at < steps and max_logged_step(root, stage) > killed_at, f"random step {at}"
    rerun = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {killed_at}" in (run / "train.log").read_text()
    return run


@pytest.fixture(scope="module")
def rae_reference(tmp_path_factory) -> Path:
    """An uninterrupted 40-step RAE run (no DataLoader workers)."""
    root = tmp_path_factory.mktemp("reference")
    done = subprocess.run(cmd(root, "stage=rae"), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return only_run(root, "rae")


@pytest.mark.slow
def test_rae_run_killed_at_a_random_step_resumes_to_the_uninterrupted_run_bit_for_bit(tmp_path, rae_reference):
    # DataLoader workers in the interrupted run, none in the reference: the data must not care
    run = kill_and_resume(tmp_path, cmd(tmp_path, "stage=rae", "num_workers=2"), "rae")
    assert_same_run(run, rae_reference)


@pytest.mark.slow
def test_lfm_run_killed_at_a_random_step_resumes_to_the_uninterrupted_run_bit_for_bit(tmp_path):
    rae_root = tmp_path / "stage1"
    train(config([f"output_root={rae_root}", "stage.steps=2", "stage.val_every=2"]), rae_root / "rae" / "tiny")
    rae = f"rae_ckpt={rae_root / 'rae' / 'tiny' / 'checkpoints' / 'last.pt'}"
    ema = "stage.ema_decay=0.9"  # the EMA of the velocity weights is part of the resumed state
    reference = subprocess.run(cmd(tmp_path / "a", "stage=lfm", rae, ema, *LFM_FAST, steps=24), cwd=REPO, env=ENV,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = kill_and_resume(tmp_path / "b", cmd(tmp_path / "b", "stage=lfm", rae, ema, *LFM_FAST, steps=24), "lfm",
                          steps=24)
    assert "velocity_ema" in load_checkpoint(run / "checkpoints" / "last.pt")["models"]
    assert_same_run(run, only_run(tmp_path / "a", "lfm"), steps=24)  # every model entry, the EMA included


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_of_the_current_step_and_loses_no_work(tmp_path, rae_reference):
    command = cmd(tmp_path, "stage=rae", "num_workers=2")
    proc = run_until(command, tmp_path, "rae", random.randint(6, 28))
    os.killpg(proc.pid, signal.SIGTERM)  # to every process of the job, DataLoader workers included (as SLURM does)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    run = only_run(tmp_path, "rae")
    stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert stopped_at == max(losses(run))  # the step it was on: no step is lost
    assert f"stopped by SIGTERM at step {stopped_at}/40" in (run / "train.log").read_text()
    rerun = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at step {stopped_at}" in (run / "train.log").read_text()
    assert_same_run(run, rae_reference)


# ------------------------------------------------------ stop signals, in process


def signal_at_step(monkeypatch, signum: int, at: int) -> None:
    """Deliver ``signum`` to this process during the ``at``-th training step."""
    from degflow.training.rae import RAEStage

    calls = {"n": 0}
    original = RAEStage.loss

    def loss(self, batch):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signum)
        return original(self, batch)

    monkeypatch.setattr(RAEStage, "loss", loss)


def tiny_rae(run: Path, steps: int = 6):
    return train(config([f"output_root={run.parent}", f"stage.steps={steps}", "stage.val_every=100",
                         "stage.ckpt_every=100", "stage.ckpt_minutes=null"]), run)


@pytest.mark.slow
def test_a_stop_signal_without_a_launcher_handler_stops_after_the_step_with_its_checkpoint(tmp_path, monkeypatch):
    signal_at_step(monkeypatch, signal.SIGUSR1, at=3)
    with pytest.raises(TrainingStopped) as stopped:
        tiny_rae(tmp_path / "run")
    assert stopped.value.step == 3 and stopped.value.exit_code == 128 + signal.SIGUSR1
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handlers are restored


@pytest.mark.slow
def test_the_launchers_handler_runs_after_the_checkpoint_is_written(tmp_path, monkeypatch):
    """submitit's SIGUSR2 handler requeues the job and exits; it must find the checkpoint on disk."""
    seen = []

    def requeue(signum, frame):
        seen.append((signum, load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"]))
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        signal_at_step(monkeypatch, signal.SIGUSR2, at=2)
        with pytest.raises(SystemExit):
            tiny_rae(tmp_path / "run")
        assert seen == [(signal.SIGUSR2, 2)]
        assert signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow
def test_training_continues_when_the_launchers_handler_returns(tmp_path, monkeypatch):
    """submitit only logs SIGTERM (it requeues on SIGUSR2): checkpoint, then keep training."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        signal_at_step(monkeypatch, signal.SIGTERM, at=2)
        metrics = tiny_rae(tmp_path / "run", steps=4)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM] and metrics["step"] == 4


# --------------------------------------------------------------------------- history


def test_rewinding_the_history_drops_the_rows_past_the_checkpoint(tmp_path):
    logger = NullLogger(tmp_path)
    for step in (1, 2, 3, 4):
        logger.log({"train/loss": float(step)}, step)
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # a line cut short by a kill
    assert logger.rewind(2) == 4
    assert [r["step"] for r in history(tmp_path)] == [1, 2]
    logger.log({"train/loss": 3.0}, 3)
    assert [r["step"] for r in history(tmp_path)] == [1, 2, 3]


def test_a_resumed_wandb_run_never_sees_a_step_twice_or_a_step_go_back(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from degflow.training.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    first = WandbLogger(tmp_path, {"seed": 0}, mode="offline")
    for step in range(1, 6):
        first.log({"train/loss": float(step)}, step)
    first.finish(exit_code=1)  # interrupted after step 5; its checkpoint holds step 3

    resumed = WandbLogger(tmp_path, {"seed": 0}, mode="offline")
    sent = []
    monkeypatch.setattr(resumed._run, "log", lambda row, step: sent.append(step))
    resumed.rewind(3)
    for step in range(4, 8):
        resumed.log({"train/loss": float(step)}, step)
    resumed.finish()
    assert sent == [6, 7]                           # wandb already holds steps 4 and 5
    assert [r["step"] for r in history(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
    assert (tmp_path / "wandb_id.txt").read_text() and (tmp_path / "wandb_step.txt").read_text().strip() == "5"


# --------------------------------------------------------- the stage-1 run stage 2 uses


def fake_run(root: Path, name: str, step: int, steps: int, age: float) -> Path:
    path = root / "rae" / name / "checkpoints" / "last.pt"
    save_checkpoint(path, {"kind": "rae", "step": step, "config": {"stage": {"steps": steps}},
                           "models": {"rae": {"state_dict": {"w": torch.zeros(4)}}}})
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_stage_two_uses_the_newest_finished_stage_one_run_and_names_what_it_passed_over(tmp_path, caplog):
    old_finished = fake_run(tmp_path, "old", 60, 60, age=300)
    finished = fake_run(tmp_path, "finished", 60, 60, age=200)
    unfinished = fake_run(tmp_path, "killed", 40, 60, age=100)
    corrupt = tmp_path / "rae" / "corrupt" / "checkpoints" / "last.pt"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.INFO, logger="degflow.infra.checkpoint"):
        assert find_latest_checkpoint(tmp_path, "rae", key="rae_ckpt") == finished
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(unfinished) in warnings and "step 40/60" in warnings
    assert str(corrupt) in warnings and "unreadable" in warnings
    assert str(old_finished) not in warnings


def test_stage_two_refuses_when_only_unfinished_stage_one_runs_exist(tmp_path):
    unfinished = fake_run(tmp_path, "killed", 40, 60, age=0)
    with pytest.raises(CheckpointError, match="rae_ckpt") as refused:
        find_latest_checkpoint(tmp_path, "rae", key="rae_ckpt")
    assert str(unfinished) in str(refused.value) and "step 40/60" in str(refused.value)


# ------------------------------------------------------------ cadence, paths, exit codes


def test_default_cadence_saves_within_minutes_and_keeps_only_last_pt():
    for stage in ("rae", "lfm"):
        settings = config([f"stage={stage}"])["stage"]
        assert settings["ckpt_every"] <= 100 and settings["ckpt_minutes"] <= 5 and settings["keep_every"] is None


@pytest.mark.slow
def test_last_pt_is_written_when_ckpt_minutes_have_passed(tmp_path, monkeypatch):
    import degflow.training.loop as loop

    saved = []
    original = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, payload: (saved.append((path.name, payload["step"])),
                                                                          original(path, payload)))
    train(config([f"output_root={tmp_path}", "stage.steps=3", "stage.val_every=100", "stage.ckpt_every=100",
                  "stage.ckpt_minutes=1e-9"]), tmp_path / "run")
    assert saved == [("last.pt", 1), ("last.pt", 2), ("last.pt", 3)]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.pt"]


@pytest.mark.slow
def test_a_checkpoint_path_from_a_real_sweep_passes_back_unquoted(tmp_path):
    sweep = subprocess.run([sys.executable, "train.py", "stage=rae", *TINY, *DEMO, f"output_root={tmp_path}",
                            "stage.val_every=2", "-m", "stage.steps=2"],
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (path,) = (tmp_path / "sweeps" / "rae").glob("*/checkpoints/last.pt")  # named after several overrides
    assert "=" not in str(path) and "," not in str(path) and "+" in path.parents[1].name
    stage2 = subprocess.run([sys.executable, "train.py", "stage=lfm", *TINY, *DEMO, *LFM_FAST,
                             f"output_root={tmp_path}", "stage.steps=1", "stage.val_every=1", f"rae_ckpt={path}"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    (lfm,) = (tmp_path / "lfm").glob("*/checkpoints/last.pt")
    assert load_checkpoint(lfm, kind="lfm")["extra"]["rae_source"]["path"] == str(path)


@pytest.mark.parametrize("override, says", [
    ("stage.batch_size=0", "stage.batch_size must be an integer >= 1"),
    ("rae_ckpt=a=b", "rae_ckpt=a=b"),
    ("output_root=/proc/degflow-cannot-write-here", "/proc/degflow-cannot-write-here"),
])
@pytest.mark.slow
def test_usage_and_environment_errors_exit_2_with_one_message_and_no_traceback(override, says, tmp_path):
    root = [] if override.startswith("output_root=") else [f"output_root={tmp_path}"]
    result = subprocess.run([sys.executable, "train.py", *TINY, *DEMO, *root, "stage.steps=1", override], cwd=REPO,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "error: " in result.stderr and says in result.stderr


@pytest.mark.slow
def test_rerunning_a_finished_run_logs_nothing_twice(tmp_path):
    run = tmp_path / "run"
    first = tiny_rae(run, steps=2)
    before = (run / "history.jsonl").read_text()
    again = tiny_rae(run, steps=2)  # e.g. a requeued job that had already finished
    assert (run / "history.jsonl").read_text() == before
    assert again["step"] == 2 and again["scales"]["x2"]["psnr_y"] == pytest.approx(first["scales"]["x2"]["psnr_y"])


def test_each_row_seed_depends_only_on_seed_step_and_row():
    from degflow.training.sampling import sample_seed

    keys = batch_keys(5, 3, 50, 8)
    assert [seed for _, seed in keys] == [sample_seed(5, 3, row) for row in range(8)]
    assert [seed for _, seed in batch_keys(5, 3, 50, 4)] == [seed for _, seed in keys[:4]]


@pytest.mark.slow
def test_temp_files_of_a_write_cut_by_a_kill_are_removed_on_restart(tmp_path):
    run = tmp_path / "run"
    stale = [run / "checkpoints" / ".last.pt.x1y2.tmp", run / ".metrics.json.x1y2.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    tiny_rae(run, steps=1)
    assert not any(path.exists() for path in stale)
    assert (run / "checkpoints" / "last.pt").is_file()


def test_choosing_the_stage_one_run_maps_checkpoints_instead_of_loading_their_tensors(tmp_path, monkeypatch):
    import degflow.infra.checkpoint as checkpoint

    for i in range(3):
        fake_run(tmp_path, f"run{i}", 60, 60, age=100 * i)
    calls = []
    original = torch.load
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: (calls.append(k), original(*a, **k))[1])
    assert find_latest_checkpoint(tmp_path, "rae") == tmp_path / "rae" / "run0" / "checkpoints" / "last.pt"
    assert calls and all(k.get("mmap") is True and k.get("weights_only") is True for k in calls)
