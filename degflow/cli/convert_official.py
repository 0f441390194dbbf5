"""``python -m degflow.convert_official ae=... flow=... out=...``: the authors' weights as a degflow checkpoint.

    python -m degflow.convert_official ae=path/autoencoder.pth flow=path/flow.pth out=degflow_lfm.pt
    python -m degflow.convert_official ... rae_out=degflow_rae.pt   # also a stage-1 (RAE) checkpoint

Wiring only (``conf/convert_official.yaml``): :func:`degflow.jobs.convert_official.convert_official`
does the work (its docstring says what is converted and checked). Exit status: 0 written;
2 refused or usage error, one ``error:`` line.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from degflow.cli.app import compose, run_tool, to_plain
from degflow.core.solvers import SolverSpec
from degflow.jobs import convert_official as job

_REQUIRED = ("ae", "flow", "out")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__ + "\n" + job.__doc__)
        return 0
    cfg = compose("convert_official", argv, job_name="convert_official")
    missing = [k for k in _REQUIRED if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing required setting(s) {', '.join(k + '=...' for k in missing)}: python -m "
                         "degflow.convert_official ae=path/autoencoder.pth flow=path/flow.pth out=degflow_lfm.pt")
    c = to_plain(cfg)
    report = job.convert_official(
        c["ae"], c["flow"], c["out"], rae_out=c["rae_out"], rae_config=c["model"]["rae"],
        velocity_config=c["model"]["lfm"], solver=SolverSpec.create(**c["solver"]),
        time_map=c["time_map"], overwrite=c["overwrite"], config=c)
    for line in report.lines():
        print(line)
    return 0


def cli() -> None:
    run_tool(main)


if __name__ == "__main__":
    cli()
