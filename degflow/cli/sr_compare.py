"""``python -m degflow sr-compare``: the downstream SR comparison, one Hydra multirun.

    python -m degflow sr-compare -m sr_setup=realsr_x4 ckpt=<degflow lfm checkpoint> \\
        trainset=bicubic,procedural,real,degflow,degflow_photos seed=0,1
    python -m degflow sr-compare -m sr_setup=demo ckpt=<demo lfm checkpoint> \\
        trainset=bicubic,procedural,real,degflow,oracle,degflow_photos seed=0
    python -m degflow sr-compare mode=collect            # the tables of the runs already under out=

Wiring only (``conf/sr_compare.yaml``): one job per (training set, network, seed) runs
:func:`degflow.sr.compare.run_job`; when the multirun ends, :class:`CollectOnMultirunEnd`
writes the tables (:func:`degflow.sr.compare.collect`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from degflow.cli.app import hoist_multirun_flag, run_cli, to_plain
from degflow.infra.files import atomic_write_json
from degflow.sr.compare import collect, run_job

log = logging.getLogger("degflow.sr_compare")


def main(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from degflow.infra.cluster import job_record, set_threads

    cfg = to_plain(dcfg)
    hydra_cfg = HydraConfig.get()
    if cfg["mode"] == "collect":
        collect(Path(cfg["out"]))
        return
    if cfg["mode"] != "job":
        raise ValueError(f"mode={cfg['mode']!r} is not one of ['job', 'collect']")
    run_dir = Path(hydra_cfg.runtime.output_dir)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        log.info("finished before, kept: %s", result_path)
        return
    threads = set_threads(cfg["threads"])
    with job_record(run_dir, list(hydra_cfg.overrides.task), threads):
        result = run_job(cfg, run_dir)
        atomic_write_json(result_path, result)
    log.info("wrote %s", result_path)


class CollectOnMultirunEnd(Callback):
    """Hydra callback: when a multirun of ``sr_compare`` ends, collect its runs (``out``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("mode", "job") != "job" or config.hydra.launcher.get("dry_run", False):
            return
        collect(Path(str(config.out)))


def cli() -> None:
    sys.argv = hoist_multirun_flag(sys.argv)
    run_cli(main, "sr_compare")


if __name__ == "__main__":
    cli()
