"""``python -m degflow checkpoint verify|seal FILE...``: check or add the digest of checkpoints.

Every checkpoint degflow writes (and its latent cache) carries the sha256 of its content, and
every load verifies it (docs/INTEGRITY.md). This tool:

- ``verify FILE...``: recomputes each file's digest and says ``intact``, ``no digest`` (written
  before degflow sealed checkpoints, or by another tool) or ``DAMAGED``; prints the digest,
  the ``checkpoint_sha256`` that manifests and ``synthesis.json`` record. Exit 0 when no file
  is damaged, 1 otherwise;
- ``seal FILE...``: adds the digest to files written without one (in place, atomically; the
  ``checkpoint_sha256`` stays what it was: the sha256 of the file). Refuses a damaged file;
- ``seal --accept-damaged FILE``: the escape hatch for a damaged file you decided to use anyway
  (e.g. a bit flip in a tensor you will retrain): re-seals it over its current content. Its
  digest changes, so outputs made from it are told apart from those of the intact file.

Exit status: 0 done; 1 ``verify`` found damage; 2 usage error (one ``error:`` line), among
them ``seal`` of a damaged file without ``--accept-damaged``.
"""

from __future__ import annotations

from degflow.cli.app import ToolParser, run_tool
from degflow.infra.digests import file_digest, seal_file


def main(argv: list[str]) -> int:
    parser = ToolParser("python -m degflow checkpoint", __doc__)
    parser.add_argument("action", choices=("verify", "seal"), help="verify digests, or add them")
    parser.add_argument("files", nargs="+", help="checkpoint files (.pt) or latent cache files")
    parser.add_argument("--accept-damaged", action="store_true",
                        help="seal: re-seal a damaged file over its current content (you decided to use it)")
    args = parser.parse_args(argv)
    if args.accept_damaged and args.action != "seal":
        raise ValueError("--accept-damaged goes with seal (python -m degflow checkpoint seal --accept-damaged FILE)")
    damaged = 0
    for name in args.files:
        if args.action == "seal":
            found, done = seal_file(name, accept_damaged=args.accept_damaged)
            print(f"{name}: {done} (sha256 {found.sha256})")
            continue
        found = file_digest(name)
        if not found.intact:
            damaged += 1
            why = found.problem or f"content sha256 {found.sha256}, recorded {found.recorded}"
            print(f"{name}: DAMAGED ({why})")
        elif found.sealed:
            print(f"{name}: intact (sha256 {found.sha256})")
        else:
            print(f"{name}: no digest (sha256 of the file {found.sha256}); add one with: "
                  f"python -m degflow checkpoint seal {name}")
    return 1 if damaged else 0


def cli() -> None:
    run_tool(main)


if __name__ == "__main__":
    cli()
