"""Hydra launchers for sweeps: the submitit SLURM and local launchers plus a dry run and a CPU share.

The presets under ``conf/hydra/launcher/`` (``gpu``, ``cpu``, ``local``) build on the two
schemas registered here, ``degflow_slurm`` and ``degflow_local``. They are the
hydra-submitit-launcher plugin's ``submitit_slurm`` / ``submitit_local`` schemas (every
plugin key, unknown keys refused by Hydra before anything is submitted) with one key more:

- ``dry_run: true`` prints what would be submitted (the sbatch script of the job array for
  SLURM, every job's overrides and run directory) and submits nothing. Every job's
  overrides are composed, so a sweep over a key that does not exist fails here too.

The local launcher runs all jobs of a sweep side by side on this machine; it tells each job
its CPU share (``cpus_per_task`` when set, else the CPUs of this process divided by the
number of jobs) through ``DEGFLOW_CPUS_PER_JOB``, which ``threads: auto`` follows
(:mod:`degflow.infra.cluster`).

Requeue after preemption or timeout is the plugin's: the job is resubmitted with the same
arguments, so it runs in the same run directory and resumes from its own checkpoint.
Hydra accepts launchers only from the ``hydra_plugins`` package and imports every module there
at start-up (which registers the schemas), so this module imports nothing heavy at the top.
"""


import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf


@dataclass
class SlurmConf(SlurmQueueConf):
    """The plugin's ``submitit_slurm`` schema plus ``dry_run``."""

    _target_: str = "hydra_plugins.degflow_launcher.degflow_launcher.SlurmLauncher"
    dry_run: bool = False


@dataclass
class LocalConf(LocalQueueConf):
    """The plugin's ``submitit_local`` schema plus ``dry_run``."""

    _target_: str = "hydra_plugins.degflow_launcher.degflow_launcher.LocalLauncher"
    dry_run: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="degflow_slurm", node=SlurmConf, provider="degflow")
ConfigStore.instance().store(group="hydra/launcher", name="degflow_local", node=LocalConf, provider="degflow")


def script_dir_importable(environ: dict | None = None) -> None:
    """Put the launched script's folder on ``PYTHONPATH`` (of ``environ``, default ``os.environ``).

    A job unpickles its task function in a fresh interpreter started by SLURM (which passes on
    the submitting environment) or by submitit_local; modules beside the script that the
    function uses (a user's own script importing its neighbours) must be
    importable there as they are in the launching process, where Python put the script's
    folder first on ``sys.path``.
    """
    env = os.environ if environ is None else environ
    script = Path(sys.argv[0])
    if script.suffix != ".py" or not script.is_file():
        return
    folder = str(script.resolve().parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in parts:
        env["PYTHONPATH"] = os.pathsep.join([folder, *parts])


@contextlib.contextmanager
def _no_scheduler_check() -> Iterator[None]:
    """submitit's SLURM executor refuses to be created where ``srun`` is absent (its ``affinity``
    check), although writing the sbatch script needs no scheduler; lift that check meanwhile."""
    from submitit.slurm import slurm

    original = slurm.SlurmExecutor.__dict__["affinity"]
    slurm.SlurmExecutor.affinity = classmethod(lambda cls: 1)
    try:
        yield
    finally:
        slurm.SlurmExecutor.affinity = original


class _DryRun:
    """Shared by both launchers: ``dry_run`` and the job list with run directories."""

    def _job_dirs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[tuple[int, list[str], str]]:
        """``(job number, overrides, run directory)`` of every job; composes each job's config
        (a sweep over a key that does not exist raises here)."""
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg.hydra.job):
                cfg.hydra.job.num = idx
                cfg.hydra.job.id = f"dry_run_{idx}"
            HydraConfig.instance().set_config(cfg)
            jobs.append((idx, list(overrides), str(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))))
        HydraConfig.instance().set_config(self.config)
        return jobs

    def _print_dry_run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, header: str) -> list[JobReturn]:
        jobs = self._job_dirs(job_overrides, initial_job_idx)
        print(f"DRY RUN, nothing submitted: {len(jobs)} job(s) through the {self._EXECUTOR} launcher")
        print(header)
        print("# jobs (number: overrides -> run directory)")
        for idx, overrides, run_dir in jobs:
            print(f"#{idx}: {' '.join(filter_overrides(overrides)) or '(no overrides)'} -> {run_dir}")
        return [JobReturn(overrides=list(o), cfg=self.config, hydra_cfg=self.config, working_dir=os.getcwd(),
                          task_name=self.config.hydra.job.name, status=JobStatus.COMPLETED, _return_value=None)
                for o in job_overrides]


class SlurmLauncher(_DryRun, plugin.SlurmLauncher):
    """The plugin's SLURM launcher with ``dry_run``."""

    def __init__(self, dry_run: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.dry_run = dry_run

    def sbatch_script(self, num_jobs: int) -> str:
        """The sbatch script this launcher submits for an array of ``num_jobs`` jobs (text only:
        no scheduler is needed, so a dry run works on a machine without SLURM)."""
        import submitit

        params = dict(self.params)
        with _no_scheduler_check():
            executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                             slurm_max_num_timeout=params.pop("max_num_timeout"))
        generic = set(OmegaConf.structured(BaseQueueConf).keys())   # as the plugin passes them
        executor.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()})
        slurm = executor._executor
        if num_jobs > 1:
            slurm.parameters["map_count"] = num_jobs
        return slurm._make_submission_file_text(slurm._submitit_command_str, "dry_run")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if self.dry_run:
            header = (f"# submitit: requeue after a time-out up to max_num_timeout={self.params['max_num_timeout']} "
                      f"times, after preemption always; logs in {self.params['submitit_folder']}\n"
                      f"# sbatch script{' of the job array' if len(job_overrides) > 1 else ''}\n"
                      + self.sbatch_script(len(job_overrides)))
            return self._print_dry_run(job_overrides, initial_job_idx, header)
        script_dir_importable()
        return super().launch(job_overrides, initial_job_idx)


class LocalLauncher(_DryRun, plugin.LocalLauncher):
    """The plugin's local launcher with ``dry_run`` and a CPU share per job."""

    def __init__(self, dry_run: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.dry_run = dry_run

    def cpus_per_job(self, num_jobs: int) -> int:
        """CPUs each of ``num_jobs`` jobs running side by side may use."""
        from degflow.infra.cluster import allocated_cpus

        if self.params.get("cpus_per_task"):
            return int(self.params["cpus_per_task"])
        return max(1, allocated_cpus()[0] // max(1, num_jobs))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        share = self.cpus_per_job(len(job_overrides))
        if self.dry_run:
            header = (f"# all {len(job_overrides)} jobs run side by side on this machine, {share} CPU(s) each; "
                      f"parameters: {OmegaConf.to_yaml(OmegaConf.create(self.params)).strip()}")
            return self._print_dry_run(job_overrides, initial_job_idx, header)
        from degflow.infra.cluster import CPUS_PER_JOB_ENV

        script_dir_importable()
        previous = os.environ.get(CPUS_PER_JOB_ENV)
        os.environ[CPUS_PER_JOB_ENV] = str(share)   # inherited by the job processes
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            if previous is None:
                os.environ.pop(CPUS_PER_JOB_ENV, None)
            else:
                os.environ[CPUS_PER_JOB_ENV] = previous
