"""What a job was given by its scheduler, and a record of every job attempt in its run directory.

- :func:`scheduler_info`: SLURM / submitit identity of this process (job id as submitit names
  its log folder, array task, restart count, node), ``{}`` outside a scheduler.
- :func:`allocated_cpus` and :func:`resolve_threads`: the CPU count this process may use
  (``threads: auto``) from, in order, the per-job budget the local launcher hands its jobs
  (``DEGFLOW_CPUS_PER_JOB``), SLURM's ``SLURM_CPUS_PER_TASK``, the CPU affinity mask, the cgroup
  CPU quota, and ``OMP_NUM_THREADS`` as an upper bound when it is set; without such an explicit
  share, only the CPUs the 1-minute load average leaves idle. :func:`set_threads` applies it to
  torch and to child processes. Jobs that share a node then do not oversubscribe it (three
  2-thread runs on 2 cores ran 3.9x slower than the same runs with 1 thread each; docs/CLUSTER.md,
  "CPU threads"). :func:`resolve_workers` sizes the training DataLoader (``num_workers: auto``) from
  the same allocation.
- :func:`detect_environment` / :func:`is_main_process`: where this process sits in a
  multi-process job (torchrun, submitit), and the one rank-0 rule (rank 0 alone logs and writes
  records; :mod:`degflow.training.distributed` builds the process group from the same answer).
- :func:`job_record`: ``job.json`` (status, scheduler ids, host, threads, timings, one entry
  per attempt: a requeued job appends one) and, when the job raises, ``error.txt`` with the
  traceback, so a sweep's failed jobs are findable from the sweep folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import time
import traceback
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from degflow.infra.checks import check_int
from degflow.infra.exits import JobSignals, stop_point
from degflow.infra.files import atomic_write_text

log = logging.getLogger(__name__)

#: Environment variable the local launcher (``hydra_plugins/degflow_launcher``) sets for its jobs: how
#: many CPUs each of the jobs it runs side by side may use.
CPUS_PER_JOB_ENV = "DEGFLOW_CPUS_PER_JOB"
JOB_FILE = "job.json"
ERROR_FILE = "error.txt"
JOB_STATUSES = ("running", "completed", "failed", "interrupted")


def _positive_int(text: str | None) -> int | None:
    """Leading integer of an environment value (``"4(x2)"`` -> 4), None when absent or < 1."""
    if not text:
        return None
    digits = ""
    for ch in text.strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits and int(digits) >= 1 else None


def scheduler_info(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Identity of this process under SLURM or submitit's local executor (``{}`` otherwise).

    ``job_id`` is what submitit uses for the job's log folder ``.submitit/<job_id>``:
    ``<array job>_<task>`` for array jobs, the plain job id otherwise.
    """
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in env:
        array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        info: dict[str, Any] = {
            "scheduler": "slurm",
            "job_id": f"{array_job}_{task}" if array_job and task else env["SLURM_JOB_ID"],
            "slurm_job_id": env["SLURM_JOB_ID"],
            "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        }
        for key, var in (("array_job_id", "SLURM_ARRAY_JOB_ID"), ("array_task_id", "SLURM_ARRAY_TASK_ID"),
                         ("partition", "SLURM_JOB_PARTITION"), ("nodes", "SLURM_JOB_NODELIST"),
                         ("cpus_per_task", "SLURM_CPUS_PER_TASK"), ("ntasks", "SLURM_NTASKS"),
                         ("procid", "SLURM_PROCID")):
            if env.get(var):
                info[key] = env[var]
        return info
    if env.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_JOB_ID" in env:
        return {"scheduler": "submitit_local", "job_id": env["SUBMITIT_LOCAL_JOB_ID"]}
    return {}


def cgroup_cpu_quota(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """CPUs the container's cgroup may use (``quota / period``), None when unlimited or unknown.

    cgroup v2: ``<root>/cpu.max`` (``"max 100000"`` or ``"200000 100000"``); v1:
    ``<root>/cpu/cpu.cfs_quota_us`` (-1 = unlimited) over ``cpu.cfs_period_us``.
    """
    root = Path(root)
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return float(fields[0]) / float(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def allocated_cpus(environ: dict[str, str] | None = None, affinity: int | None = None,
                   quota: float | None | str = "read") -> tuple[int, str]:
    """CPUs this process was given and where that number comes from.

    The smallest of: ``DEGFLOW_CPUS_PER_JOB`` (the local launcher's share per job),
    ``SLURM_CPUS_PER_TASK``, the CPU affinity mask (``affinity``, default
    ``len(os.sched_getaffinity(0))``), the cgroup CPU quota rounded up (``quota``, default
    :func:`cgroup_cpu_quota`; None: no quota) and ``OMP_NUM_THREADS`` when set (an explicit
    limit of the environment).
    """
    env = os.environ if environ is None else environ
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    candidates = [(affinity, "CPU affinity")]
    quota = cgroup_cpu_quota() if quota == "read" else quota
    if quota is not None:
        candidates.append((max(1, math.ceil(quota - 1e-9)), f"cgroup CPU quota {quota:g}"))
    for var in (CPUS_PER_JOB_ENV, "SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        value = _positive_int(env.get(var))
        if value is not None:
            candidates.append((value, f"{var}={env[var]}"))
    count, source = min(candidates, key=lambda c: c[0])
    return max(1, count), source


#: environment variables that hand this process an explicit CPU share (then the load is not consulted)
_EXPLICIT_SHARES = (CPUS_PER_JOB_ENV, "SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")


def idle_cpus(cpus: int, load: float, online: int) -> int:
    """Of ``cpus`` allocated CPUs, how many are idle on a machine of ``online`` CPUs whose 1-minute
    load average is ``load`` (runnable processes): ``online - load`` rounded, between 1 and ``cpus``."""
    return max(1, min(int(cpus), int(math.floor(online - load + 0.5))))


def resolve_threads(setting: Any, environ: dict[str, str] | None = None,
                    affinity: int | None = None, load: float | None = None,
                    online: int | None = None, quota: float | None | str = "read") -> tuple[int, str]:
    """Thread count for config ``threads``: ``"auto"`` or a positive integer.

    ``auto`` is the allocation (:func:`allocated_cpus`); when no scheduler, launcher or
    ``OMP_NUM_THREADS`` set an explicit share, it is further limited to the CPUs other processes
    leave idle (:func:`idle_cpus` with ``os.getloadavg()`` and ``os.cpu_count()``, or ``load`` /
    ``online``), so a job started on a busy shared machine does not oversubscribe it: threads
    beyond the idle cores only wait for each other.
    """
    if setting == "auto":
        env = os.environ if environ is None else environ
        count, source = allocated_cpus(env, affinity, quota)
        if any(_positive_int(env.get(var)) is not None for var in _EXPLICIT_SHARES):
            return count, f"auto: {source}"
        if load is None:
            try:
                load = os.getloadavg()[0]
            except OSError:  # not available on this platform
                return count, f"auto: {source}"
        online = online if online is not None else (os.cpu_count() or count)
        idle = idle_cpus(count, load, online)
        if idle < count:
            return idle, f"auto: {source} {count}, load average {load:.1f} on {online} CPUs leaves {idle} idle"
        return count, f"auto: {source}"
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"threads={setting!r}: expected 'auto' (follow the CPU allocation: SLURM cpus_per_task, "
                         f"CPU affinity, cgroup quota, OMP_NUM_THREADS, and the CPUs the load leaves idle) or a "
                         f"positive integer (config key threads)")
    return setting, "threads setting"


#: Most DataLoader workers ``num_workers: auto`` starts: a training batch is a few crops of
#: in-memory images, which a handful of processes prepare far faster than a GPU step consumes.
MAX_AUTO_WORKERS = 4


def resolve_workers(setting: Any, device_type: str, environ: dict[str, str] | None = None,
                    affinity: int | None = None) -> tuple[int, str]:
    """DataLoader worker count for config ``num_workers``: ``"auto"`` or an integer >= 0.

    ``auto``: none on the CPU (the step itself uses every allocated core, and a batch of
    in-memory crops costs about 1% of a CPU step); on a GPU the allocation less one core
    (the process that drives the GPU), at most :data:`MAX_AUTO_WORKERS`, so batches are
    prepared while the GPU computes. The allocation is :func:`allocated_cpus`'s, as for
    ``threads``. Returns ``(count, where it comes from)``.
    """
    if setting == "auto":
        if device_type != "cuda":
            return 0, "auto: none on the CPU"
        cpus, source = allocated_cpus(environ, affinity)
        count = max(0, min(MAX_AUTO_WORKERS, cpus - 1))
        return count, f"auto: {source}, one core for the GPU process, at most {MAX_AUTO_WORKERS}"
    count = check_int(setting, "num_workers", minimum=0,
                      hint=f" or 'auto' (none on the CPU; on a GPU the CPU allocation less one, at most "
                           f"{MAX_AUTO_WORKERS})")
    return count, "num_workers setting"


def set_threads(setting: Any) -> int:
    """Apply config ``threads`` to torch and to child processes; log and return the count."""
    import torch

    count, source = resolve_threads(setting)
    torch.set_num_threads(count)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(count)   # inherited by subprocesses (DataLoader workers set 1 themselves)
    log.info("threads: %d (%s)", count, source)
    return count


# ------------------------------------------------------------------ where this process sits in its job
LAUNCHERS = ("single", "torchrun", "submitit")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in its job: rank ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"inconsistent process environment: rank={self.rank}, world_size={self.world_size}, "
                             f"local_rank={self.local_rank} (launcher {self.launcher}); expected "
                             "0 <= rank < world_size and local_rank >= 0")

    @property
    def enabled(self) -> bool:
        """Several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes files."""
        return self.rank == 0


SINGLE = DistEnv()


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def submitit_port(job_id: str) -> int:
    """The rendezvous port of a submitit job (``MASTER_PORT`` unset): in [20000, 60000), a
    function of the job id, so every task of the job computes the same one and two jobs on a
    node rarely collide."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 40000


def detect_environment(environ: Mapping[str, str] | None = None) -> DistEnv:
    """This process's place in a multi-process job, from the launcher's environment variables.

    torchrun (``RANK`` and ``WORLD_SIZE`` set) first, then submitit (``SUBMITIT_EXECUTOR`` set:
    SLURM, or ``submitit_local``) through its ``JobEnvironment``; a single process otherwise.
    A plain ``sbatch`` or ``srun`` without torchrun or submitit is a single process.
    ``environ`` defaults to ``os.environ``; submitit's ``JobEnvironment`` always reads the latter.
    """
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return DistEnv(rank=_int(environ, "RANK"), world_size=_int(environ, "WORLD_SIZE"),
                       local_rank=_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0,
                       master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=_int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else 29500,
                       launcher="torchrun")
    if environ.get("SUBMITIT_EXECUTOR"):
        if environ is not os.environ:
            raise ValueError("submitit's JobEnvironment reads os.environ; pass environ=None")
        import submitit

        job = submitit.JobEnvironment()
        if job.num_tasks <= 1:
            return SINGLE
        port = _int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else submitit_port(job.raw_job_id)
        return DistEnv(rank=job.global_rank, world_size=job.num_tasks, local_rank=job.local_rank,
                       master_addr=job.hostnames[0], master_port=port, launcher="submitit")
    return SINGLE


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """The one rank-0 rule: rank 0 of a multi-process job (:func:`detect_environment`), or a plain run."""
    return detect_environment(environ).is_main


def read_job_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``{run_dir}/job.json`` as a dict, or None when it is absent or unreadable."""
    path = Path(run_dir) / JOB_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _interrupted(err: BaseException) -> BaseException | None:
    """The SystemExit / KeyboardInterrupt that ``err`` is or was raised while handling, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if not isinstance(err, Exception):
            return err
        seen.add(id(err))
        err = err.__context__
    return None


@contextlib.contextmanager
def job_record(run_dir: str | Path, overrides: list[str], threads: int | None = None) -> Iterator[dict[str, Any]]:
    """Record one attempt of a job in ``{run_dir}/job.json`` while the body runs.

    Status: ``running`` during the body, then ``completed``, ``failed`` (an exception; its
    traceback goes to ``{run_dir}/error.txt`` and the exception propagates) or ``interrupted``
    (SystemExit / KeyboardInterrupt, e.g. a preempted job that requeues itself, or an error
    raised while one unwinds: then that SystemExit / KeyboardInterrupt propagates, not the error). Only the main process of a multi-task job writes it. A requeued
    or re-run job keeps the earlier attempts in ``attempts``. Stop signals end the job through
    Python (:class:`~degflow.infra.exits.JobSignals`), so a stop during start-up or a second
    signal ends it ``interrupted`` too; only a job killed outright (SIGKILL, out of memory) stays
    ``running``: the scheduler's logs tell the rest. Recording the end is best effort: a full
    disk never hides the job's own error.
    """
    if not is_main_process():   # one record per job, not per task of a multi-task job
        yield {}
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_job_record(run_dir) or {}
    attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
               "pid": os.getpid(), "threads": threads, **scheduler_info()}
    record = {"status": "running", "overrides": list(overrides), **attempt,
              "attempts": [*previous.get("attempts", []), attempt], "seconds": None, "error": None}
    t0 = time.perf_counter()

    def write(status: str, error: str | None = None) -> None:
        record.update(status=status, error=error)
        if status != "running":
            record["seconds"] = round(time.perf_counter() - t0, 3)
            attempt.update(status=status, seconds=record["seconds"], error=error)
        atomic_write_text(run_dir / JOB_FILE, json.dumps(record, indent=2) + "\n")

    def end(status: str, error: str | None = None) -> None:
        try:
            write(status, error)
        except OSError as err:
            log.warning("could not record the end of the job in %s: %s", run_dir / JOB_FILE, err)

    write("running")
    error_file = run_dir / ERROR_FILE
    stop_now = JobSignals(on_hard_stop=lambda signum: end("interrupted", f"stopped at once by a second "
                                                                      f"{signal.Signals(signum).name}"))
    with stop_now:        # a second stop signal, even while the end is recorded, ends it at once
        try:
            yield record
            stop_point()    # a stop signal whose exit the interrupted code swallowed: the job did not end normally
        except BaseException as err:
            try:
                atomic_write_text(error_file, traceback.format_exc())
            except OSError:
                pass
            # SystemExit (a preempted job requeueing itself), KeyboardInterrupt, or an error raised
            # while one was unwinding (e.g. a logger whose service the requeue already killed)
            stopped = _interrupted(err)
            end("interrupted" if stopped else "failed",
                f"{type(err).__name__}: {err}"
                + (f" (while stopping: {type(stopped).__name__}({stopped}))" if stopped and stopped is not err else ""))
            if stopped is not None and stopped is not err:
                # leave as the stop that was under way: an error while a requeued job shuts down
                # (a logger whose service SLURM already killed) must not turn into a job failure,
                # which the launcher would report as the job's final result
                raise stopped from err
            raise
        error_file.unlink(missing_ok=True)   # an earlier attempt's error is resolved
        end("completed")
