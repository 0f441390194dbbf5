"""Verify and merge a dataset synthesized in shards: ``python -m degflow.merge_shards OUT_DIR``.

``synthesize.py -m shard='range(0,N)' num_shards=N ...`` (one array job per shard) leaves one
manifest per shard in the dataset folder, ``manifest.shard{i}-of-{N}.jsonl``: one JSON line
per output file with at least ``source``, ``output`` (path under OUT_DIR), ``kind``
(``hr``, ``degflow`` or a baseline), ``size`` and ``scale``. This command checks that

- every (image, output kind, size, scale, sample) was produced exactly once (``sample``: the
  stochastic option's sample index, absent elsewhere): no output in two shard
  manifests, no image with a scale that the other images have and it lacks;
- every listed file exists;
- every line is whole and its checksum holds (a damaged line blocks the merge: re-running that
  shard's synthesis drops it and makes its image again);
- no shard recorded failures (``failed.shard{i}-of-{N}.jsonl``);
- with ``--input HR_FOLDER``: every image of the input appears;

and, only when all holds, writes the combined ``manifest.jsonl`` (atomically, sorted by
image, kind, size and scale; shard manifests are kept, re-running synthesis skips the work
they record). Exit code 0: verified and merged; 1: problems found (listed, nothing written);
2: usage error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from degflow.infra.digests import checked_line, read_checked_line
from degflow.infra.files import atomic_write_text

SHARD_MANIFEST = re.compile(r"^manifest\.shard(\d+)-of-(\d+)\.jsonl$")
MERGED = "manifest.jsonl"
REQUIRED_FIELDS = ("source", "output", "kind", "size", "scale")


@dataclass
class Verification:
    """What :func:`verify_shards` found."""

    num_shards: int
    entries: dict[str, dict] = field(default_factory=dict)    # output -> manifest entry
    problems: list[str] = field(default_factory=list)         # any of these blocks the merge
    notes: list[str] = field(default_factory=list)            # informative only

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def images(self) -> int:
        return len({e["source"] for e in self.entries.values()})


def _read_lines(path: Path) -> tuple[list[dict], list[int]]:
    """Entries of a manifest and the numbers of its lines that are not whole (cut short by a kill,
    damaged: their checksum does not hold, or missing a field)."""
    entries, bad = [], []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry, _status = read_checked_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            entry = None
        if entry is not None and all(k in entry for k in REQUIRED_FIELDS):
            entries.append(entry)
        else:
            bad.append(number)
    return entries, bad


def shard_manifests(out_dir: Path) -> dict[int, Path]:
    """``{shard index: manifest}`` of ``out_dir``; all must agree on the shard count."""
    found: dict[int, Path] = {}
    counts = set()
    for path in sorted(out_dir.glob("manifest.shard*-of-*.jsonl")):
        match = SHARD_MANIFEST.match(path.name)
        if match:
            found[int(match.group(1))] = path
            counts.add(int(match.group(2)))
    if len(counts) > 1:
        raise ValueError(f"{out_dir} holds shard manifests of different shard counts {sorted(counts)}; "
                         f"merge one synthesis run at a time (move the other manifests away)")
    return found


def verify_shards(out_dir: str | Path, input_dir: str | Path | None = None) -> Verification:
    """Check the shard manifests of ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} is not a folder (expected the out= folder of synthesize.py)")
    shards = shard_manifests(out_dir)
    if not shards:
        raise ValueError(f"{out_dir} holds no shard manifests manifest.shard<i>-of-<n>.jsonl "
                         f"(written by synthesize.py ... shard=<i> num_shards=<n> with n > 1)")
    num_shards = int(SHARD_MANIFEST.match(next(iter(shards.values())).name).group(2))
    result = Verification(num_shards=num_shards)
    absent = [i for i in range(num_shards) if i not in shards]
    if absent:
        result.notes.append(f"no manifest from shard(s) {absent} of {num_shards} (a shard that holds no image writes "
                            "none; a shard that never ran is caught by --input)")
    owner: dict[str, int] = {}
    by_key: dict[tuple, str] = {}
    for index, path in sorted(shards.items()):
        entries, bad = _read_lines(path)
        if bad:
            result.problems.append(f"{path.name}: line(s) {', '.join(map(str, bad[:10]))} cut short or damaged; "
                                   f"re-run shard {index}'s synthesis command (it drops them and makes those "
                                   "images again)")
        for entry in entries:
            output = entry["output"]
            if output in owner and owner[output] != index:
                result.problems.append(f"{output} is listed by shard {owner[output]} and shard {index}")
                continue
            key = (entry["source"], entry["kind"], entry["size"], float(entry["scale"]), entry.get("sample"))
            if by_key.get(key, output) != output:
                result.problems.append(f"{entry['source']} ({entry['kind']}, {entry['size']}, x{entry['scale']}) has two "
                                       f"outputs: {by_key[key]} and {output}")
                continue
            owner[output], by_key[key] = index, output
            result.entries[output] = entry                   # within one manifest the last line wins
    for output in sorted(result.entries):
        if not (out_dir / output).is_file():
            result.problems.append(f"{output} is in the manifest of shard {owner[output]} but the file is missing")
    _check_complete(result, input_dir)
    for path in sorted(out_dir.glob("failed.shard*-of-*.jsonl")):
        failures, _ = _read_failures(path)
        result.problems += [f"{path.name}: {f.get('file')}: {f.get('error')}" for f in failures]
    return result


def _read_failures(path: Path) -> tuple[list[dict], int]:
    rows, bad = [], 0
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(raw))
        except ValueError:
            bad += 1
    return [r for r in rows if isinstance(r, dict)], bad


def _check_complete(result: Verification, input_dir: str | Path | None) -> None:
    """Every image has every (kind, size, scale, sample) that any image has, and its HR copy."""
    per_source: dict[str, set[tuple]] = {}
    for e in result.entries.values():
        per_source.setdefault(e["source"], set()).add((e["kind"], e["size"], float(e["scale"]), e.get("sample")))
    union = set().union(*per_source.values()) if per_source else set()
    for source, have in sorted(per_source.items()):
        missing = sorted(union - have)
        if missing:
            shown = ", ".join(f"{k}/{s}/x{v:g}" + ("" if n is None else f"/sample{n}") for k, s, v, n in missing[:6])
            result.problems.append(f"{source}: {len(missing)} output(s) missing ({shown}{', ...' if len(missing) > 6 else ''})")
    if input_dir is not None:
        from degflow.data.images import find_images

        root = Path(input_dir)
        sources = {p.relative_to(root).as_posix() for p in find_images(root)}
        for source in sorted(sources - set(per_source)):
            result.problems.append(f"{source}: in --input but in no shard manifest (its shard did not run or failed)")
        for source in sorted(set(per_source) - sources):
            result.notes.append(f"{source}: in a manifest but not in --input")


def merge_shards(out_dir: str | Path, input_dir: str | Path | None = None) -> Verification:
    """Verify, then write ``{out_dir}/manifest.jsonl`` when there is no problem."""
    result = verify_shards(out_dir, input_dir)
    if result.ok:
        entries = sorted(result.entries.values(),
                         key=lambda e: (e["source"], e["kind"] != "hr", e["kind"], e["size"], float(e["scale"]),
                                        e.get("sample", -1)))
        atomic_write_text(Path(out_dir) / MERGED, "".join(checked_line({k: v for k, v in e.items() if k != "check"})
                                                           + "\n" for e in entries))
    return result
