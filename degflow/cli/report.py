"""``python -m degflow.report <sweep dir> [--out DIR]``: the report of a sweep (table, CSV, plots).

Wiring only: :func:`degflow.jobs.sweep_report.write_report` does the work (its docstring says
what the report holds). Exit status: 0 a report was written; 2 usage error (the folder holds
no sweep), one ``error:`` line.
"""

from __future__ import annotations

from degflow.cli.app import ToolParser, run_tool
from degflow.jobs import sweep_report


def main(argv: list[str]) -> int:
    parser = ToolParser("python -m degflow.report", sweep_report.__doc__,
                        epilog="Exit status: 0 a report was written, 2 usage error (one error: line).")
    parser.add_argument("sweep_dir", help="a sweep folder, e.g. outputs/sweeps/solvers")
    parser.add_argument("--out", default=None, help="output folder (default: <sweep_dir>/report)")
    args = parser.parse_args(argv)
    result = sweep_report.write_report(args.sweep_dir, args.out)
    print(result["markdown"])
    print("wrote " + ", ".join(str(p) for p in result["paths"].values()))
    return 0


def cli() -> None:
    run_tool(main)


if __name__ == "__main__":
    cli()
