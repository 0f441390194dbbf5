"""Synthesize an SR training set from a folder of HR images with a trained DegFlow model
(``python synthesize.py ...``, also ``python -m degflow synthesize ...``).

    python synthesize.py ckpt=path/to/lfm.ckpt input=path/to/hr_folder out=path/to/dataset \\
        scales=[1.5,2.25,3.7]                     # or scales.start=1.1 scales.stop=4.0 scales.step=0.1
    python synthesize.py ... baseline=[bicubic,procedural]   # comparison sets under out/baselines/
    python synthesize.py ... -m shard=0,1,2,3 num_shards=4   # cluster shards (SLURM launcher)
    python synthesize.py --help                              # the settings, with examples

Wiring only: compose the config (``conf/synthesize.yaml``), convert it to plain Python and
call :func:`degflow.jobs.lr_dataset.write_lr_dataset` with a
:class:`degflow.generation.Synthesizer`; exit codes through :func:`degflow.cli.app.run_cli`.

Exit status:
    0  every image of the shard has all its outputs (written now or before);
    1  some images failed (listed in ``failed.jsonl``; the others are complete) or the
       program crashed (Python traceback);
    2  usage or environment error, one ``error: ...`` line on stderr and no traceback: an
       unknown key or unparsable override, a missing setting, a bad value (scales, sizes,
       tiling, more than ``max_scales`` scales), a missing or unreadable checkpoint or input
       folder, an output folder that cannot be created or written.
    128+N  killed by signal N (130 Ctrl-C, 143 SIGTERM), like any process: re-run the same
       command; it removes what the kill left half-written and continues.
In a multirun (``-m``) every job runs; the process exits with the largest status of its
in-process jobs.
"""

import logging
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from degflow.cli.app import hoist_multirun_flag, run_cli, to_plain

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


def _synthesize(cfg: DictConfig) -> int:
    """One synthesis job; returns its exit status (0 or 1). Usage and environment errors
    raise (``ValueError``, ``OSError``): :func:`degflow.cli.app.run_cli` turns them into 2."""
    from degflow.core.scales import expand_scales
    from degflow.core.solvers import SolverSpec
    from degflow.generation import Synthesizer
    from degflow.infra.cluster import set_threads
    from degflow.jobs.lr_dataset import write_lr_dataset

    missing = [k for k in _REQUIRED if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing required setting(s) {', '.join(f'{k}=...' for k in missing)}: "
                         "python synthesize.py ckpt=path/to/lfm.ckpt input=path/to/hr_folder out=path/to/dataset "
                         "(python synthesize.py --help for all settings)")
    c = to_plain(cfg)
    set_threads(c["threads"])
    scales = expand_scales(c["scales"])
    solver = SolverSpec.create(**c["solver"])
    synth = Synthesizer.from_checkpoint(c["ckpt"], device=c["device"], solver=solver, precision=c["precision"],
                                        tile_size=c["tile_size"], tile_overlap=c["tile_overlap"],
                                        decode_batch=c["decode_batch"], tile_batch=c["tile_batch"])
    log.info("checkpoint %s (sha256 %s), device %s, solver %s, %d scales %s..%s",
             c["ckpt"], synth.checkpoint_sha256[:12], synth.device, solver, len(scales), scales[0], scales[-1])
    summary = write_lr_dataset(
        synth, c["input"], c["out"], scales, size=c["size"], hr_size_output=c["hr_size_output"],
        batch_size=c["batch_size"],
        allow_extrapolation=c["allow_extrapolation"], shard=c["shard"], num_shards=c["num_shards"],
        baselines=_baselines(c["baseline"]), baseline_lr_root=c["baseline_lr_root"],
        procedural_seed=c["procedural_seed"], max_scales=c["max_scales"], progress=c["progress"], layout=c["layout"],
    )
    print(f"synthesis summary: {summary.line()}", flush=True)
    if summary.failures:
        print(f"failed files are listed in {summary.failed_file}", flush=True)
    return summary.exit_code  # the job's return value (what a SLURM launcher records per job)


def main(cfg: DictConfig) -> int:
    """One synthesis job (see :func:`_synthesize`), recorded in the job folder's ``job.json``
    (``error.txt`` on failure) when it runs as a Hydra job (CLI, sweeps, SLURM arrays)."""
    from degflow.infra.cluster import job_record

    if not HydraConfig.initialized():
        return _synthesize(cfg)
    hydra_cfg = HydraConfig.get()
    with job_record(hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)) as record:
        record["exit_code"] = _synthesize(cfg)
    return record["exit_code"]


def cli() -> None:
    logging.captureWarnings(True)
    sys.argv = hoist_multirun_flag(sys.argv[:1] + _list_overrides(sys.argv[1:]))
    run_cli(main, "synthesize", exit_status=int)


if __name__ == "__main__":
    cli()
