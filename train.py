"""Train a DegFlow stage: ``python train.py stage=rae`` then ``python train.py stage=lfm``.

Wiring only: compose the config (Hydra), convert it to plain Python, hand it to
:func:`degflow.training.train`. Sweeps: ``python train.py stage=lfm -m solver.steps=8,16,32``.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from degflow.config import hoist_multirun_flag, register_resolvers, to_plain

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from degflow.cluster import job_record, set_threads
    from degflow.training import train

    hydra_cfg = HydraConfig.get()
    config, overrides = to_plain(cfg), list(hydra_cfg.overrides.task)
    threads = set_threads(config["threads"])
    with job_record(hydra_cfg.runtime.output_dir, overrides, threads):
        metrics = train(config, hydra_cfg.runtime.output_dir, overrides)
    return metrics.get("objective")


if __name__ == "__main__":
    sys.argv = hoist_multirun_flag(sys.argv)
    main()
