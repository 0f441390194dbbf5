"""``python -m degflow.merge_shards OUT_DIR [--input HR_FOLDER]``: verify and merge sharded synthesis.

Wiring only: :func:`degflow.jobs.merge_shards.merge_shards` does the work (its docstring says
what is checked). Exit status: 0 verified and merged; 1 problems found (listed, nothing
written); 2 usage error, one ``error:`` line.
"""

from __future__ import annotations

from pathlib import Path

from degflow.cli.app import ToolParser, run_tool
from degflow.jobs import merge_shards as job


def main(argv: list[str]) -> int:
    parser = ToolParser("python -m degflow.merge_shards", job.__doc__,
                        epilog="Exit status: 0 verified and merged, 1 problems found (nothing written), "
                               "2 usage error (one error: line).")
    parser.add_argument("out_dir", help="the out= folder the shards wrote into")
    parser.add_argument("--input", default=None, help="the HR input folder: also check that every image was done")
    args = parser.parse_args(argv)
    result = job.merge_shards(args.out_dir, args.input)
    for note in result.notes:
        print(f"note: {note}")
    if not result.ok:
        for problem in result.problems:
            print(f"PROBLEM: {problem}")
        print(f"{len(result.problems)} problem(s) in {args.out_dir} ({result.num_shards} shards); "
              f"{job.MERGED} not written")
        return 1
    print(f"verified {len(result.entries)} outputs of {result.images} images from {result.num_shards} shards: "
          f"each exactly once; wrote {Path(args.out_dir) / job.MERGED}")
    return 0


def cli() -> None:
    run_tool(main)


if __name__ == "__main__":
    cli()
