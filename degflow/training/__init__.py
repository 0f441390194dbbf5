"""Training: the shared loop (``loop.py``) and one module per stage (``rae.py``, ``lfm.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from degflow.data.memory import in_memory_training_set
from degflow.infra.cluster import resolve_workers
from degflow.infra.cluster import detect_environment
from degflow.infra.conf import instantiate
from degflow.infra.console import log_to_file
from degflow.infra.locks import FolderLock
from degflow.infra.runtime import resolve_device, seed_everything, set_tf32
from degflow.metrics.image import eval_protocol
from degflow.training.accel import accelerate
from degflow.training.distributed import (
    local_batch_size,
    log_on_main_only,
    process_device,
    process_group,
)
from degflow.training.loggers import build_logger
from degflow.training.loop import RunContext, TrainSettings, fit
from degflow.training.preflight import check_prerequisites
from degflow.training.run_report import LOG_FILE, announce_outputs
from degflow.training.stop import TrainingStopped

log = logging.getLogger(__name__)

STAGES = ("rae", "lfm")
# keys of the ``stage`` node read by a stage's builder rather than by the loop's TrainSettings
STAGE_OPTIONS = {"lfm": ("latent_cache", "latent_cache_dir", "ema_decay")}


def train_settings(stage: dict[str, Any]) -> TrainSettings:
    """The loop's :class:`TrainSettings` from a plain ``stage`` node (without the keys in
    :data:`STAGE_OPTIONS`, which the stage's builder reads)."""
    options = STAGE_OPTIONS.get(stage["name"], ())
    return TrainSettings(**{k: v for k, v in stage.items() if k not in options})


def build_stage(config: dict[str, Any], data, device):
    """The :class:`~degflow.training.loop.Stage` selected by ``stage.name``."""
    name = config["stage"]["name"]
    if name == "rae":
        from degflow.training.rae import RAEStage

        rae = instantiate(config["model"]["rae"])
        for part in (rae.encoder, rae.decoder):
            accelerate(part, config["channels_last"], config["compile"])
        return RAEStage(
            rae, data.train_scales, data.val, data.val_scales, device,
            data_description=data.description, max_val_images=config["eval"]["max_images"],
            strip_images=config["eval"]["strip_images"], protocol=eval_protocol(config["eval"]["protocol"]),
        )
    if name == "lfm":
        from degflow.training.lfm import build_lfm_stage

        return build_lfm_stage(config, data, device)
    raise ValueError(f"stage.name={name!r} is not one of {list(STAGES)} (choose with stage=rae|lfm)")


def train(config: dict[str, Any], run_dir: str | Path, overrides: list[str] = (), *,
          prerequisites_checked: bool = False) -> dict[str, Any]:
    """Run one training job described by a resolved, plain ``config`` in ``run_dir``.

    Checks the job's prerequisites first (:func:`degflow.training.preflight.check_prerequisites`;
    ``prerequisites_checked=True`` when the caller just did),
    then builds data, stage and logger, trains with resume-by-default, always finishes the logger.
    Log lines go to ``{run_dir}/train.log`` (Hydra's file when run by train.py); at the end the
    run says where its results, checkpoints and pictures are. One writer per run folder: a
    folder another live process trains in is refused (:class:`~degflow.infra.locks.FolderLocked`).
    Returns the final validation metrics; raises :class:`TrainingStopped` after a stop signal
    (``last.pt`` then holds the step it stopped at). In a job of several processes (torchrun,
    submitit tasks) every process calls this: they train one model data-parallel, and only
    rank 0 has a logger (see :mod:`degflow.training.distributed`).
    """
    run_dir = Path(run_dir)
    if not prerequisites_checked:   # seconds, before any work: a missing LPIPS backbone or data tree is said now
        check_prerequisites(config)
    if not detect_environment().is_main:  # rank 0 alone writes train.log and tells where things are
        return _train(config, run_dir, overrides)
    with FolderLock(run_dir, "run", "training run folder", create=True), log_to_file(run_dir / LOG_FILE):
        metrics = _train(config, run_dir, overrides)
        announce_outputs(run_dir, config["stage"]["name"])
    return metrics


def _train(config: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    # before anything draws random numbers: the networks' initial weights depend on the seed
    # (a resumed run then replaces them, and its RNG state, from its checkpoint)
    seed_everything(config["seed"])
    settings = train_settings(config["stage"])
    dist_env = detect_environment()
    local_batch_size(settings.batch_size, dist_env.world_size)  # a bad batch is refused before anyone waits
    log_on_main_only(dist_env)
    device = process_device(resolve_device(config["device"]), dist_env)
    workers, source = resolve_workers(config["num_workers"], device.type)
    log.info("data loader workers: %d (%s)", workers, source)
    set_tf32(config["tf32"])
    with process_group(dist_env, device):
        data = instantiate(config["data"])
        log.info("data: %s", data.description)
        data.train = in_memory_training_set(data.train, config["data_memory_gib"])
        stage = build_stage(config, data, device)
        logger = None
        if dist_env.is_main:
            logger_cfg = dict(config["logger"])
            logger = build_logger(logger_cfg.pop("kind"), run_dir, config, **logger_cfg)
        ctx = RunContext(run_dir=run_dir, device=device, precision=config["precision"], logger=logger,
                         config=config, overrides=list(overrides), resume=config["resume"], seed=config["seed"],
                         num_workers=workers, dist=dist_env)
        try:
            metrics = fit(stage, stage.training_set(data.train), settings, ctx)
        except TrainingStopped as stopped:
            if logger is not None:
                logger.finish(exit_code=stopped.exit_code)
            raise
        except BaseException:
            if logger is not None:
                logger.finish(exit_code=1)
            raise
        if logger is not None:
            logger.finish(exit_code=0)
        return metrics
