"""Data-parallel training in one job: the launcher's environment, the process group, DDP.

A job with several processes (``torchrun --nproc_per_node=N train.py ...`` on a workstation,
or ``hydra.launcher.tasks_per_node=N`` through submitit on SLURM) trains one model with
:class:`torch.nn.parallel.DistributedDataParallel`:

- :func:`degflow.infra.cluster.detect_environment` reads who this process is: torchrun's ``RANK`` / ``WORLD_SIZE`` /
  ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``, or submitit's ``JobEnvironment`` (SLURM's
  ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``, the master being the job's first node
  and the port derived from the job id). Anything else, or one process, is a plain run;
- :func:`process_group` joins the group (``nccl`` on CUDA, the device picked from the local
  rank; ``gloo`` on CPU) and leaves it at the end;
- ``stage.batch_size`` stays the GLOBAL batch: rank r takes its rows ``r::world_size``
  (:func:`degflow.training.sampling.batch_keys`); :func:`local_batch_size` refuses a batch the
  processes cannot share evenly, since equal shares are what make DDP's gradient average the
  one-process gradient;
- :func:`data_parallel_loss` runs a stage's loss through DDP, which averages the gradients;
- :func:`agree` (an all-reduce of small integers) makes every decision that must be the same on
  all ranks the same: a stop signal seen by any rank, a non-finite loss, an overdue checkpoint.

Only rank 0 logs, validates and writes files; the other ranks wait at a barrier
(:func:`barrier`). Nothing here runs a collective in a plain (one-process) run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from degflow.infra.cluster import DistEnv

log = logging.getLogger(__name__)

#: How long a rank waits at a collective, e.g. while rank 0 validates alone (NCCL's default, 10
#: minutes, is shorter than a full validation of a large model can take).
COLLECTIVE_TIMEOUT = timedelta(hours=1)
def local_batch_size(batch_size: int, world_size: int) -> int:
    """Rows of the global batch each process takes; ValueError naming ``stage.batch_size``
    when the processes cannot share it evenly."""
    if batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, -(-batch_size // world_size) * world_size
        raise ValueError(
            f"stage.batch_size={batch_size} is the global batch and must be divisible by the number of "
            f"processes (world_size={world_size}): each process takes an equal share of its rows; use "
            f"stage.batch_size={upper}{f' or {lower}' if lower else ''}, or another process count")
    return batch_size // world_size


def process_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device of this process: ``cuda:{local_rank}`` (or ``cuda:0`` when the launcher shows
    each task one GPU) for a CUDA run of several processes; ``device`` itself otherwise."""
    if not env.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    if env.local_rank >= count:
        raise ValueError(f"local rank {env.local_rank} has no GPU: this node shows {count} GPU(s); start at most "
                         f"{count} processes per node (torchrun --nproc_per_node, hydra.launcher.tasks_per_node "
                         "with gpus_per_node), or device=cpu")
    if device.index is not None and device.index != env.local_rank:
        log.warning("device=%s is ignored with %d processes: rank %d uses cuda:%d (its local rank)",
                    device, env.world_size, env.rank, env.local_rank)
    return torch.device("cuda", env.local_rank)


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[None]:
    """Join the job's process group for the duration of the block (nothing for one process).

    ``nccl`` when ``device`` is CUDA, ``gloo`` otherwise; rendezvous through ``env://``
    (torchrun's agent store, or the master address and port of ``env`` exported for submitit).
    """
    if not env.enabled:
        yield
        return
    for key, value in {"MASTER_ADDR": env.master_addr, "MASTER_PORT": str(env.master_port), "RANK": str(env.rank),
                       "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank)}.items():
        os.environ.setdefault(key, value)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=COLLECTIVE_TIMEOUT, **({"device_id": device} if backend == "nccl" else {}))
    log.info("data parallel: rank %d of %d (%s, local rank %d) on %s, backend %s, master %s:%d", env.rank,
             env.world_size, env.launcher, env.local_rank, device, backend, env.master_addr, env.master_port)
    try:
        yield
    finally:
        dist.destroy_process_group()


def log_on_main_only(env: DistEnv) -> None:
    """On ranks other than 0, drop the root logger's file handlers (Hydra's ``train.log`` in the
    shared run directory is rank 0's) and keep only warnings on the console."""
    if env.is_main:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        else:
            handler.setLevel(max(handler.level, logging.WARNING))


def barrier(env: DistEnv) -> None:
    """Wait until every rank got here (nothing for one process)."""
    if env.enabled:
        dist.barrier()


def agree(values: list[int], env: DistEnv) -> list[int]:
    """The element-wise maximum of ``values`` over all ranks (``values`` itself for one process):
    a flag raised by any rank is raised on all of them."""
    if not env.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


def mean_over_ranks(scalars: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Each scalar averaged over the ranks (a per-row mean of this rank's rows becomes the mean
    over the global batch, the shares being equal); every rank must pass the same keys."""
    if not env.enabled or not scalars:
        return dict(scalars)
    tensor = torch.tensor(list(scalars.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) / env.world_size for k, v in zip(scalars, tensor.tolist())}


def from_main(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _LossModule(torch.nn.Module):
    """Holds the trainable parameters (the same objects the stage trains) so DDP can hook their
    gradients, and computes the stage's loss in ``forward``, the call DDP wraps."""

    def __init__(self, parameters: list[torch.nn.Parameter], loss: Callable[[dict[str, Any]], Any]):
        super().__init__()
        self.trainable = torch.nn.ParameterList(parameters)
        self._loss = loss

    def forward(self, batch: dict[str, Any]):
        return self._loss(batch)


def data_parallel_loss(loss: Callable[[dict[str, Any]], Any], parameters: list[torch.nn.Parameter],
                       device: torch.device, env: DistEnv) -> Callable[[dict[str, Any]], Any]:
    """``loss`` itself for one process; for several, ``loss`` run through DistributedDataParallel
    over ``parameters``, so ``backward()`` leaves every rank the gradient averaged over the ranks."""
    if not env.enabled:
        return loss
    module = _LossModule(parameters, loss)
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
