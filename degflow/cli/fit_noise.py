"""Fit the stochastic part of a checkpoint's degradation (``python -m degflow fit-noise ...``).

    python -m degflow fit-noise ckpt=path/to/lfm.ckpt data=demo out=noise.pt
    python -m degflow fit-noise ckpt=lfm.pt data=paired data.root=/data/pairs data.train_scales=[1,4] out=noise.pt

Wiring only: compose ``conf/fit_noise.yaml``, convert it to plain Python and call
:func:`degflow.jobs.noise_fit.run`. Configuration errors exit with code 2.
"""

import logging

from omegaconf import DictConfig, OmegaConf

from degflow.cli.app import run_cli, to_plain

log = logging.getLogger("degflow.fit_noise")


def main(cfg: DictConfig) -> None:
    from degflow.infra.cluster import set_threads
    from degflow.jobs.noise_fit import run

    missing = [k for k in ("ckpt", "out") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing required setting(s) {', '.join(f'{k}=...' for k in missing)}: "
                         "python -m degflow fit-noise ckpt=path/to/lfm.ckpt out=noise.pt (--help for all settings)")
    c = to_plain(cfg)
    set_threads(c["threads"])
    outcome = run(c)
    model = outcome["model"]
    print(f"noise model: {outcome['path']} (knots {list(model.scales)}, fitted on {model.meta['pairs']} pairs of "
          f"{model.meta['images']} training images)", flush=True)


def cli() -> None:
    run_cli(main, "fit_noise")


if __name__ == "__main__":
    cli()
