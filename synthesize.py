"""Synthesize an SR training set from a folder of HR images with a trained DegFlow model.

    python synthesize.py ckpt=path/to/lfm.ckpt input=path/to/hr_folder out=path/to/dataset \
        scales=[1.5,2.25,3.7]                     # or scales.start=1.1 scales.stop=4.0 scales.step=0.1
    python synthesize.py ... -m shard=0,1,2,3 num_shards=4   # cluster shards (SLURM launcher)

Wiring only: compose the config (``conf/synthesize.yaml``), convert it to plain Python and
call :func:`degflow.lr_dataset.write_lr_dataset` with a
:class:`degflow.generation.Synthesizer`. Exit code: 0 all good, 1 some images failed,
2 configuration or usage errors (including Hydra's own). In a multirun (``-m``) every job
runs; the process exits with the largest code of its in-process jobs.
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("synthesize")

_REQUIRED = ("ckpt", "input", "out")


def _list_overrides(argv: list[str]) -> list[str]:
    """Let ``scales=[...]`` replace the default ``{start, stop, step}`` mapping.

    Hydra merges an override into the existing node and cannot merge a list into a mapping,
    so ``scales=VALUE`` becomes ``~scales +scales=VALUE`` (delete, then add).
    ``scales.start=...`` style overrides pass unchanged.
    """
    out = []
    for arg in argv:
        if arg.startswith("scales="):
            out += ["~scales", "+" + arg]
        else:
            out.append(arg)
    return out


def _baselines(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def run(cfg: DictConfig) -> int:
    """One synthesis job; returns its exit code (configuration errors -> 2)."""
    from degflow.cluster import set_threads
    from degflow.config import to_plain
    from degflow.generation import Synthesizer
    from degflow.lr_dataset import write_lr_dataset
    from degflow.scales import expand_scales
    from degflow.solvers import SolverSpec

    missing = [k for k in _REQUIRED if OmegaConf.is_missing(cfg, k)]
    if missing:
        log.error("missing required setting(s) %s: python synthesize.py ckpt=path/to/lfm.ckpt "
                  "input=path/to/hr_folder out=path/to/dataset", ", ".join(f"{k}=..." for k in missing))
        return 2
    try:
        c = to_plain(cfg)
        set_threads(c["threads"])
        scales = expand_scales(c["scales"])
        solver = SolverSpec.create(**c["solver"])
        synth = Synthesizer.from_checkpoint(c["ckpt"], device=c["device"], solver=solver,
                                            precision=c["precision"], tile_size=c["tile_size"],
                                            tile_overlap=c["tile_overlap"])
        log.info("checkpoint %s (sha256 %s), device %s, solver %s, %d scales %s..%s",
                 c["ckpt"], synth.checkpoint_sha256[:12], synth.device, solver, len(scales),
                 scales[0], scales[-1])
        summary = write_lr_dataset(
            synth, c["input"], c["out"], scales, size=c["size"], batch_size=c["batch_size"],
            allow_extrapolation=c["allow_extrapolation"], shard=c["shard"], num_shards=c["num_shards"],
            baselines=_baselines(c["baseline"]), baseline_lr_root=c["baseline_lr_root"],
            progress=c["progress"],
        )
    except ValueError as err:  # CheckpointError and ImageReadError are ValueErrors too
        log.error("%s", err)
        return 2
    print(f"synthesis summary: {summary.line()}", flush=True)
    if summary.failures:
        print(f"failed files are listed in {summary.failed_file}", flush=True)
    return summary.exit_code


def cli(argv: list[str]) -> int:
    """Run ``synthesize.py`` with ``argv`` (``sys.argv`` layout); returns the process exit code:
    the largest code of the jobs run here, or 2 when Hydra refused the command line before
    any job started."""
    started: list[bool] = []   # a job that crashed started but left no code
    codes: list[int] = []

    @hydra.main(version_base="1.3", config_path="conf", config_name="synthesize")
    def main(cfg: DictConfig) -> int:
        from degflow.cluster import job_record

        started.append(True)
        hydra_cfg = HydraConfig.get()
        with job_record(hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)) as record:
            codes.append(run(cfg))
            record["exit_code"] = codes[-1]
        return codes[-1]  # the job's return value (what a SLURM launcher records per job)

    sys.argv = argv[:1] + _list_overrides(argv[1:])
    try:
        main()
    except SystemExit as exit_:
        # Hydra exits 1 on errors before our job ran (bad override, unknown key): usage errors.
        if exit_.code not in (0, None) and not started:
            return 2
        raise
    return max(codes, default=0)


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(cli(sys.argv))
