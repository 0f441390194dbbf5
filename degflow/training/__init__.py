"""Training: the shared loop (``loop.py``) and one module per stage (``rae.py``, ``lfm.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate

from degflow.console import log_to_file
from degflow.loggers import build_logger
from degflow.metrics import eval_protocol
from degflow.runtime import resolve_device, seed_everything
from degflow.training.loop import RunContext, TrainSettings, fit
from degflow.training.run_report import LOG_FILE, announce_outputs
from degflow.training.stop import TrainingStopped

log = logging.getLogger(__name__)

STAGES = ("rae", "lfm")


def instantiate(node: dict[str, Any]):
    """Build the object a config node's ``_target_`` names; bad values surface as their own ValueError."""
    try:
        return hydra_instantiate(node, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise


def build_stage(config: dict[str, Any], data, device):
    """The :class:`~degflow.training.loop.Stage` selected by ``stage.name``."""
    name = config["stage"]["name"]
    if name == "rae":
        from degflow.training.rae import RAEStage

        return RAEStage(
            instantiate(config["model"]["rae"]), data.train_scales, data.val, data.val_scales, device,
            data_description=data.description, max_val_images=config["eval"]["max_images"],
            strip_images=config["eval"]["strip_images"], protocol=eval_protocol(config["eval"]["protocol"]),
        )
    if name == "lfm":
        from degflow.training.lfm import build_lfm_stage

        return build_lfm_stage(config, data, device)
    raise ValueError(f"stage.name={name!r} is not one of {list(STAGES)} (choose with stage=rae|lfm)")


def train(config: dict[str, Any], run_dir: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Run one training job described by a resolved, plain ``config`` in ``run_dir``.

    Builds data, stage and logger, trains with resume-by-default, always finishes the logger.
    Log lines go to ``{run_dir}/train.log`` (Hydra's file when run by train.py); at the end the
    run says where its results, checkpoints and pictures are.
    Returns the final validation metrics; raises :class:`TrainingStopped` after a stop signal
    (``last.pt`` then holds the step it stopped at).
    """
    run_dir = Path(run_dir)
    with log_to_file(run_dir / LOG_FILE):
        metrics = _train(config, run_dir, overrides)
        announce_outputs(run_dir, config["stage"]["name"])
    return metrics


def _train(config: dict[str, Any], run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    # before anything draws random numbers: the networks' initial weights depend on the seed
    # (a resumed run then replaces them, and its RNG state, from its checkpoint)
    seed_everything(config["seed"])
    settings = TrainSettings(**config["stage"])
    device = resolve_device(config["device"])
    data = instantiate(config["data"])
    log.info("data: %s", data.description)
    stage = build_stage(config, data, device)
    logger_cfg = dict(config["logger"])
    logger = build_logger(logger_cfg.pop("kind"), run_dir, config, **logger_cfg)
    ctx = RunContext(run_dir=run_dir, device=device, precision=config["precision"], logger=logger,
                     config=config, overrides=list(overrides), resume=config["resume"], seed=config["seed"],
                     num_workers=config["num_workers"])
    try:
        metrics = fit(stage, data.train, settings, ctx)
    except TrainingStopped as stopped:
        logger.finish(exit_code=stopped.exit_code)
        raise
    except BaseException:
        logger.finish(exit_code=1)
        raise
    logger.finish(exit_code=0)
    return metrics
