"""Evaluate a checkpoint (or a synthesized folder) against real LR images, baselines beside it.

    python -m degflow.evaluate ckpt=path/to/lfm.ckpt data=demo
    python -m degflow.evaluate ckpt=path/to/lfm.ckpt data=paired data.root=/data/pairs scales=[4]
    python -m degflow.evaluate ckpt=path/to/lfm.ckpt -m solver.steps=4,8,16,32   # solver sweep, no training
    python -m degflow.evaluate collect=outputs/evaluate/multirun-<time>           # sweep table + PSNR vs NFE
    python -m degflow.evaluate generated=dataset/LR real=/path/real_lr             # a synthesize.py folder

Wiring only: compose ``conf/evaluate.yaml``, convert it to plain Python and call
:func:`degflow.jobs.evaluation.run`, which writes ``eval.json``, ``eval.md``, ``eval.csv`` and the
PNG plots into the run folder (or ``out=``). Returns the objective (held-out mean of
``objective``, default PSNR-Y) for sweeps. Configuration errors exit with code 2.
"""

import logging
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from degflow.cli.app import hoist_multirun_flag, register_resolvers, run_cli, to_plain

log = logging.getLogger("degflow.evaluate")
register_resolvers()


class CollectSweep(Callback):
    """At the end of a multirun (``-m``), combine its eval.json files into sweep.md,
    sweep.csv and psnr_vs_nfe.png in the sweep folder (``hydra.callbacks`` in
    conf/evaluate.yaml). A sweep without any model result is only reported."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir = str(config.hydra.sweep.dir)  # resolved once, at the start

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from degflow.jobs.evaluation import collect_sweep

        try:
            paths = collect_sweep(self.sweep_dir, metric=str(config.objective))
        except ValueError as err:
            log.warning("sweep table not written: %s", err)
            return
        print(f"sweep table: {paths['markdown']}\nPSNR vs NFE: {paths['plot']}", flush=True)


def main(cfg: DictConfig) -> float | None:
    from degflow.infra.cluster import set_threads
    from degflow.jobs.evaluation import run

    config = to_plain(cfg)
    set_threads(config.pop("threads"))      # the help lists it: torch CPU threads (auto or N)
    outcome = run(config, HydraConfig.get().runtime.output_dir)
    paths = outcome["paths"]
    for kind, path in paths.items():
        shown = ", ".join(str(p) for p in path) if isinstance(path, list) else str(path)
        print(f"{kind}: {shown}", flush=True)
    if outcome["objective"] is not None:
        print(f"objective: {cfg.objective} of the model, mean over the held-out scales (all scales when none "
              f"is held out): {outcome['objective']:.4f}", flush=True)
    return outcome["objective"]


def cli() -> None:
    sys.argv = hoist_multirun_flag(sys.argv)
    run_cli(main, "evaluate")


if __name__ == "__main__":
    cli()
