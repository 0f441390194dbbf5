"""Launcher presets (conf/hydra/launcher/) and their dry run; no scheduler needed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_a_dry_run_prints_the_sbatch_parameters_and_every_job_and_submits_nothing(tmp_path):
    proc = _train("-m", "+experiment=sweep_solvers", "hydra/launcher=gpu", "hydra.launcher.dry_run=true",
                  "hydra.launcher.partition=gpu_long", "+hydra.launcher.additional_parameters.account=proj42",
                  "hydra.launcher.setup=[source /opt/venv/bin/activate]", f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "DRY RUN, nothing submitted: 9 job(s)" in out
    for line in ("#SBATCH --array=0-8%9", "#SBATCH --partition=gpu_long", "#SBATCH --account=proj42",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                 "#SBATCH --time=1440", "#SBATCH --signal=USR2@120", "source /opt/venv/bin/activate"):
        assert line in out
    assert "max_num_timeout=20" in out
    jobs = [line for line in out.splitlines() if line.startswith("#") and ": " in line and " -> " in line
            and not line.startswith("# ")]
    assert len(jobs) == 9
    assert any("solver=midpoint solver.steps=32" in j and str(tmp_path / "sweeps" / "solvers") in j for j in jobs)
    assert not (tmp_path / "sweeps" / "solvers" / ".submitit").exists()
    assert not [p for p in (tmp_path / "sweeps" / "solvers").iterdir() if p.is_dir()]   # no job ran


@pytest.mark.parametrize("preset, sweep", [("sweep_spline", 18), ("sweep_loss", 8)])
def test_each_research_sweep_is_one_command(preset, sweep, tmp_path):
    proc = _train("-m", f"+experiment={preset}", "hydra/launcher=cpu", "hydra.launcher.dry_run=true",
                  f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"DRY RUN, nothing submitted: {sweep} job(s)" in proc.stdout
    assert "#SBATCH --gpus-per-node" not in proc.stdout        # the CPU preset asks for no GPU


def test_the_local_preset_shares_the_cpus_between_the_jobs_it_runs_side_by_side(tmp_path):
    proc = _train("-m", "stage=rae", "hydra/launcher=local", "hydra.launcher.dry_run=true", "seed=0,1,2,3",
                  f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all 4 jobs run side by side on this machine, 1 CPU(s) each" in proc.stdout
    proc = _train("-m", "stage=rae", "hydra/launcher=local", "hydra.launcher.dry_run=true",
                  "hydra.launcher.cpus_per_task=3", "seed=0,1", f"output_root={tmp_path}")
    assert "3 CPU(s) each" in proc.stdout


@pytest.mark.parametrize("override, message", [
    ("hydra.launcher.no_such_key=1", "error: 'hydra.launcher.no_such_key' is not a setting of train.py"),
    ("no_such_key=1,2", "error: 'no_such_key' is not a setting of train.py"),
])
def test_unknown_launcher_keys_and_sweeps_over_unknown_keys_fail_before_anything_is_submitted(override, message, tmp_path):
    proc = _train("-m", "stage=rae", "hydra/launcher=cpu", override, f"output_root={tmp_path}")
    assert proc.returncode == 2                        # a usage error (train.py's documented exit codes)
    assert message in proc.stderr
    assert not list(tmp_path.rglob(".submitit"))


@pytest.mark.slow
def test_the_local_preset_runs_jobs_side_by_side_with_the_thread_count_it_gave_them(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "train.py", "-m", "stage=rae", "hydra/launcher=local", "hydra.launcher.cpus_per_task=1",
           "logger=none", "device=cpu", "stage.steps=1", "stage.batch_size=2", "stage.warmup_steps=0",
           "data.crop_size=32", "data.max_side=96", "data.val_max_size=64", "data.samples_per_epoch=4",
           "eval.max_images=1", "model.rae.widths=[8,8,16,16]", "data.val_scales=[1,2,4]", "seed=0,1",
           f"output_root={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "sweeps" / "rae").glob("*/job.json"))
    assert len(runs) == 2
    for run in runs:
        record = json.loads((run / "job.json").read_text())
        assert record["status"] == "completed" and record["scheduler"] == "submitit_local" and record["threads"] == 1
        assert "threads: 1 (auto: DEGFLOW_CPUS_PER_JOB=1)" in (run / "train.log").read_text()
        assert (run / "metrics.json").is_file()


@pytest.mark.parametrize("placement, knots, learn", [("nominal", "nominal", False), ("optical", "optical", False),
                                                      ("learned", "nominal", True)])
def test_every_knot_placement_of_the_spline_sweep_is_a_valid_spline(placement, knots, learn):
    from hydra import compose, initialize_config_dir

    from degflow.cli.app import CONF_DIR, register_resolvers, to_plain
    from degflow.training.lfm import SplineSettings

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_plain(compose("config", overrides=["+experiment=sweep_spline", f"+knot_placement={placement}"]))
    spline = SplineSettings(**cfg["spline"])
    assert (spline.knots, spline.learn_knots) == (knots, learn)
    times = spline.time_map((1.0, 2.0, 4.0)).knot_times((1.0, 2.0, 4.0))
    assert times[0] == 0.0 and times[-1] == 1.0
    assert times[1] == pytest.approx(1 / 3 if knots == "nominal" else (2.1 - 1) / (3.75 - 1))


def test_jobs_can_import_the_modules_beside_the_launched_script(tmp_path, monkeypatch):
    """A job unpickles its task function in a new interpreter: the launched script's folder
    goes first on the PYTHONPATH it inherits, once."""
    from hydra_plugins.degflow_launcher.degflow_launcher import script_dir_importable

    script = tmp_path / "scripts" / "run.py"
    script.parent.mkdir()
    script.write_text("")
    monkeypatch.setattr(sys, "argv", [str(script), "-m"])
    env = {"PYTHONPATH": os.pathsep.join(["/a", "/b"])}
    script_dir_importable(env)
    script_dir_importable(env)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(script.parent.resolve()), "/a", "/b"]
    empty: dict[str, str] = {}
    monkeypatch.setattr(sys, "argv", ["-c"])          # python -c / an interactive session: nothing to add
    script_dir_importable(empty)
    assert empty == {}
