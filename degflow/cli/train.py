"""Train a DegFlow stage: ``python train.py stage=rae`` then ``python train.py stage=lfm``
(also ``python -m degflow train ...``).

Wiring only: compose the config (Hydra), convert it to plain Python, hand it to
:func:`degflow.training.train`. Sweeps: ``python train.py stage=lfm -m solver.steps=8,16,32``.

Exit status: 0 trained (or already finished); 1 training failed (traceback); 2 usage or
environment error (bad override or value, missing/unreadable/damaged path, unwritable folder,
a full disk, the run folder in use by another process: one ``error:`` line, no traceback);
128+N stopped by signal N after writing a checkpoint of the current step (130 Ctrl-C, 143
SIGTERM, 138 SIGUSR1, 140 SIGUSR2; a second signal stops at once, ``job.json`` then says
``interrupted`` too); re-run the same command to continue.
"""

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from degflow.cli.app import HYDRA_FILES, forget_run_folder, hoist_multirun_flag, register_resolvers, run_cli, to_plain

register_resolvers()


def _on_main_process(value):
    """``${main_process_only:value}``: ``value`` in rank 0 of a data-parallel job (or a plain run),
    null in the other ranks (conf/config.yaml: only rank 0 writes the run's ``.hydra`` folder)."""
    from degflow.infra.cluster import is_main_process

    return value if is_main_process() else None


OmegaConf.register_new_resolver("main_process_only", _on_main_process)


def _forget_new_run_folder(run_dir: Path) -> None:
    """Remove a run folder that only holds what Hydra made for this refused run (an empty
    ``train.log`` and ``.hydra/``), then its stage folder when that is left empty. A folder with
    anything else (an earlier run's log lines, checkpoints, records) is kept as it is."""
    log_file = run_dir / "train.log"
    if log_file.exists() and log_file.stat().st_size > 0:
        return
    forget_run_folder(run_dir, (*HYDRA_FILES, "train.log"), created=(run_dir.parent,))


def main(cfg: DictConfig) -> float | None:
    import contextlib

    from degflow.infra.cluster import is_main_process, job_record, set_threads
    from degflow.infra.locks import FolderLock
    from degflow.training import TrainingStopped, train
    from degflow.training.preflight import check_prerequisites

    hydra_cfg = HydraConfig.get()
    config, overrides = to_plain(cfg), list(hydra_cfg.overrides.task)
    run_dir = hydra_cfg.runtime.output_dir
    try:   # seconds, before any work or record: a refused run leaves no folder behind
        check_prerequisites(config)
    except ValueError:
        if is_main_process():
            _forget_new_run_folder(Path(run_dir))
        raise
    # one writer per run folder: a second process on it is refused before it logs or writes job.json
    lock = FolderLock(run_dir, "run", "training run folder") if is_main_process() else contextlib.nullcontext()
    with lock:
        threads = set_threads(config["threads"])
        with job_record(run_dir, overrides, threads):
            try:
                metrics = train(config, run_dir, overrides, prerequisites_checked=True)
            except TrainingStopped as stopped:
                raise SystemExit(stopped.exit_code) from None
    return metrics.get("objective")


def cli() -> None:
    sys.argv = hoist_multirun_flag(sys.argv)
    run_cli(main, "config")


if __name__ == "__main__":
    cli()
