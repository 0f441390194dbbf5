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
       tiling, more than ``max_scales`` scales), a missing, unreadable or damaged checkpoint or
       input folder, an output folder that cannot be created or written (a full disk
       included), an out folder in use by another synthesis of the same shard, a damaged
       ``synthesis.json``, settings other than the ones the out folder was made with. A run
       refused so writes nothing into ``out`` (its log folder is removed).
    128+N  stopped by signal N (130 Ctrl-C, 143 SIGTERM): the image in progress is finished,
       ``job.json`` says ``interrupted``; a second signal stops at once. Re-run the same
       command; it removes what a kill left half-written and continues.
In a multirun (``-m``) every job runs; the process exits with the largest status of its
in-process jobs.
"""

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from degflow.cli.app import (
    HYDRA_FILES,
    USAGE_ERRORS,
    forget_run_folder,
    hoist_multirun_flag,
    register_resolvers,
    run_cli,
    to_plain,
)

register_resolvers()

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


def _synthesize(cfg: DictConfig, on_start=None) -> int:
    """One synthesis job; returns its exit status (0 or 1). Usage and environment errors
    raise (``ValueError``, ``OSError``): :func:`degflow.cli.app.run_cli` turns them into 2.
    ``on_start`` is called once the job has passed every check (:func:`write_lr_dataset`)."""
    from degflow.core.solvers import SolverSpec
    from degflow.generation import Synthesizer
    from degflow.infra.cluster import set_threads
    from degflow.jobs.lr_dataset import SPEC_KEYS, SynthesisSpec, write_lr_dataset

    missing = [k for k in _REQUIRED if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing required setting(s) {', '.join(f'{k}=...' for k in missing)}: "
                         "python synthesize.py ckpt=path/to/lfm.ckpt input=path/to/hr_folder out=path/to/dataset "
                         "(python synthesize.py --help for all settings)")
    c = to_plain(cfg)
    set_threads(c["threads"])
    spec = SynthesisSpec.create(**{k: c[k] for k in SPEC_KEYS if k in c})   # every job setting checked once
    solver = SolverSpec.create(**c["solver"])
    synth = Synthesizer.from_checkpoint(c["ckpt"], device=c["device"], solver=solver, precision=c["precision"],
                                        tile_size=c["tile_size"], tile_overlap=c["tile_overlap"],
                                        decode_batch=c["decode_batch"], tile_batch=c["tile_batch"])
    log.info("checkpoint %s (sha256 %s), device %s, solver %s, %d scales %s..%s", c["ckpt"],
             synth.checkpoint_sha256[:12], synth.device, solver, len(spec.scales), spec.scales[0], spec.scales[-1])
    summary = write_lr_dataset(synth, c["input"], c["out"], spec=spec, on_start=on_start)
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
    run_dir = Path(hydra_cfg.runtime.output_dir)
    started: list[bool] = []
    try:
        with job_record(run_dir, list(hydra_cfg.overrides.task)) as record:
            record["exit_code"] = _synthesize(cfg, on_start=lambda: started.append(True))
    except USAGE_ERRORS:
        if not started:         # refused before it wrote anything: leave nothing in out
            _forget_run_folder(run_dir)
        raise
    return record["exit_code"]


#: Folders named by ``out=`` on the command line and whether each existed before this process ran.
_EXISTED: dict[Path, bool] = {}
_RUN_FILES = (*HYDRA_FILES, "synthesize.log", "job.json", "error.txt")


def _forget_run_folder(run_dir: Path) -> None:
    """Remove the log folder of a refused run (the files Hydra and the job record wrote), then
    ``out/logs`` and ``out`` when this process created them and they are empty."""
    forget_run_folder(run_dir, _RUN_FILES, created=[f for f, existed in _EXISTED.items() if not existed])


def _note_out_folders(argv: list[str]) -> None:
    for arg in argv:
        if arg.startswith("out=") and arg[4:] and "," not in arg:
            out = Path(arg[4:])
            _EXISTED.update({out / "logs": (out / "logs").exists(), out: out.exists()})


def cli() -> None:
    logging.captureWarnings(True)
    _note_out_folders(sys.argv[1:])
    sys.argv = hoist_multirun_flag(sys.argv[:1] + _list_overrides(sys.argv[1:]))
    run_cli(main, "synthesize", exit_status=int)


if __name__ == "__main__":
    cli()
