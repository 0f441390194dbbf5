"""``data=paired``: users' own HR/LR camera pairs, no code needed.

    {root}/HR/<name>.png          HR images
    {root}/x<s>/<name>.png        LR partner at scale s (x2, x4, x2.5, ...), matched by the
                                  file name without extension; stored at HR size, or at the
                                  true LR size (about HR / s per side: resized to HR size
                                  with bicubic when loaded, and said in the description)

Train / val split, in this order of precedence:
1. ``val_root`` given: the train tree is ``{root}/train`` if it exists, else ``{root}``;
   the val tree is ``val_root`` (same layout);
2. ``{root}/train`` and ``{root}/val`` both exist: those subtrees;
3. otherwise a deterministic split of the HR names of ``{root}``: ``val_fraction`` of
   them (at least one) go to validation, chosen by a hash of (seed, name), so adding
   images moves few others between the sets.

Test split (optional, evaluation only): ``test_root``, else ``{root}/test`` when it exists
(same layout, validation scales). It is never read by training: it is indexed only when
:attr:`DataBundle.test` is asked for, or by the validator.

:func:`scan_paired` indexes and checks the files; the dataset and the validator share it.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from degflow.core.scales import check_scales, find_scale, format_scales, scale_label
from degflow.data.common import (
    DataBundle,
    FileInfo,
    PairRecord,
    Report,
    ValImageDataset,
    check_loader_args,
    make_bundle,
    size_range,
    size_relation,
    split_names,
)
from degflow.data.images import IMAGE_EXTENSIONS, find_images
from degflow.infra.checks import check_int, check_number

__all__ = ["scan_paired", "paired_data"]

log = logging.getLogger(__name__)

_SCALE_DIR = re.compile(r"^[xX](\d+(?:\.\d+)?)$")


def _subdirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


class _Tree:
    """Files of one {tree}/HR + {tree}/x<s> layout."""

    def __init__(self, tree: Path, report: Report):
        self.tree = tree
        self.ok = False
        self.hr: dict[str, Path] = {}
        self.scale_dirs: dict[float, Path] = {}
        self.lr: dict[float, dict[str, Path]] = {}
        self.missing_reported: set[float] = set()
        if not tree.is_dir():
            report.problems.append(f"missing folder: {tree} does not exist")
            return
        hr_dir = tree / "HR"
        if not hr_dir.is_dir():
            report.problems.append(
                f"missing HR folder: {hr_dir} does not exist; folders in {tree}: "
                f"{_subdirs(tree) or 'none'} (expected HR/ and x<s>/ folders such as x2, x4)")
            return
        self.hr = self._stems(hr_dir, report)
        for n in _subdirs(tree):
            m = _SCALE_DIR.match(n)
            if m and float(m[1]) >= 1.0:
                self.scale_dirs[float(m[1])] = tree / n
        self.ok = True

    @staticmethod
    def _stems(d: Path, report: Report) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in find_images(d, recursive=False):
            if p.stem in out:
                report.problems.append(f"duplicate: {out[p.stem]} and {p} have the same name; "
                                       f"keep one")
                continue
            out[p.stem] = p
        return out

    def lr_files(self, s: float, report: Report) -> dict[str, Path]:
        if s not in self.lr:
            self.lr[s] = self._stems(self.scale_dirs[s], report)
        return self.lr[s]


def _scan_tree(report: Report, info: FileInfo, t: _Tree, scales: tuple[float, ...],
               key: str, names: list[str] | None, check_orphans: bool) -> list[PairRecord]:
    if not t.ok:
        return []
    if not t.hr:
        report.problems.append(f"empty split: {t.tree / 'HR'} has no images (looked for "
                               f"{', '.join(IMAGE_EXTENSIONS)})")
        return []
    names = sorted(t.hr) if names is None else names
    usable = []
    for s in scales:
        f = find_scale(s, t.scale_dirs)
        if f is None:
            if s not in t.missing_reported:  # a tree shared by train and val: say it once
                t.missing_reported.add(s)
                report.problems.append(
                    f"missing scale: {t.tree} has no folder x{scale_label(s)} for scale "
                    f"{scale_label(s)} ({key}); scale folders found: "
                    f"{[t.scale_dirs[k].name for k in sorted(t.scale_dirs)] or 'none'}")
        else:
            usable.append((s, f))
    if len(usable) < len(scales):
        return []
    lr = {s: t.lr_files(f, report) for s, f in usable}
    if check_orphans:
        for s, files in lr.items():
            for stem in sorted(set(files) - set(t.hr)):
                report.problems.append(f"missing partner: {files[stem]} has no HR partner "
                                       f"{stem}.* in {t.tree / 'HR'}")
    records = []
    for name in names:
        hr_path = t.hr[name]
        missing = [s for s in scales if name not in lr[s]]
        for s in missing:
            report.problems.append(f"missing partner: {hr_path} has no x{scale_label(s)} "
                                   f"partner {name}.* in {t.scale_dirs[find_scale(s, t.scale_dirs)]}")
        hr_size, err = info.size(hr_path)
        if err:
            report.problems.append(f"unreadable: {err}")
            continue
        if missing:
            continue
        rec = PairRecord(name=name, hr=hr_path, hr_size=hr_size)
        bad = False
        for s in scales:
            lr_path = lr[s][name]
            lsize, err = info.size(lr_path)
            if err:
                report.problems.append(f"unreadable: {err}")
                bad = True
                continue
            rel = size_relation(hr_size, lsize, s)
            if rel is None:
                report.problems.append(
                    f"size mismatch: {lr_path} is {lsize[0]}x{lsize[1]} but {hr_path} is "
                    f"{hr_size[0]}x{hr_size[1]}; expected the same size or about 1/"
                    f"{scale_label(s)} of it ({math.floor(hr_size[0] / s)}x"
                    f"{math.floor(hr_size[1] / s)})")
                bad = True
                continue
            if rel == "true":
                report.resized += 1
            else:
                report.same_size += 1
            rec.lr[s] = lr_path
            rec.lr_sizes[s] = lsize
        if not bad:
            records.append(rec)
    return records


def _test_tree(root: Path, test_root) -> Path | None:
    if test_root is not None:
        return Path(test_root).expanduser()
    return root / "test" if (root / "test").is_dir() else None


def scan_paired(root, train_scales, val_scales, val_fraction, val_root, test_root, seed, *,
                deep: bool = False, roles: tuple[str, ...] = ("train", "val")) -> Report:
    """Index and check a paired tree (see module docstring). Data problems are collected in
    ``Report.problems`` (one line each), never raised; config errors raise ValueError.

    Only the splits of ``roles`` ('train', 'val', 'test') are indexed (training never asks
    for 'test'). The argument defaults live in conf/data/paired.yaml.
    """
    train_scales = check_scales(train_scales, "data.train_scales")
    val_scales = train_scales if val_scales is None else check_scales(val_scales,
                                                                      "data.val_scales")
    check_number(val_fraction, "data.val_fraction", low=0.0, high=1.0, open_low=True, open_high=True)
    root = Path(root).expanduser()
    report = Report(kind="paired", root=str(root))
    report.records = {r: [] for r in roles}
    if not root.is_dir():
        report.problems.append(f"missing root: data.root={root} does not exist or is not a "
                               f"directory")
        return report
    info = FileInfo(deep)
    va_s = tuple(s for s in val_scales if s != 1.0)
    test_lines = []
    if "test" in roles:
        tree = _test_tree(root, test_root)
        if tree is None:
            report.problems.append(f"missing split: no test split (data.test_root is null and "
                                   f"{root / 'test'} does not exist)")
        else:
            t = _Tree(tree, report)
            report.records["test"] = _scan_tree(report, info, t, va_s, "data.val_scales", None,
                                                check_orphans=True)
            test_lines.append(f"  test: {tree}, scales {format_scales(val_scales)}: "
                              f"{len(report.records['test'])} complete pairs, HR sizes "
                              f"{size_range(report.records['test'])}")
    if not {"train", "val"} & set(roles):
        report.layout = report.layout_from_counts()
        report.lines[:0] = [f"paired data at {root}: layout {report.layout}", *test_lines]
        return report
    if val_root is not None and not Path(val_root).expanduser().is_dir():
        report.problems.append(f"missing root: data.val_root={val_root} does not exist or is "
                               f"not a directory")
        return report
    tr_s = train_scales[1:]
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if val_root is not None:
        train_tree = _Tree(root / "train" if has_train else root, report)
        val_tree = _Tree(Path(val_root).expanduser(), report)
        split_desc = f"train {train_tree.tree}, val {val_tree.tree} (data.val_root)"
    elif has_train or has_val:
        if not (has_train and has_val):
            have, lack = ("train", "val") if has_train else ("val", "train")
            report.problems.append(
                f"missing split: {root / have} exists but {root / lack} does not; provide "
                f"both subtrees, or pass data.val_root, or remove {root / have} to split "
                f"{root} by data.val_fraction")
            return report
        train_tree, val_tree = _Tree(root / "train", report), _Tree(root / "val", report)
        split_desc = "train/ and val/ subtrees"
    else:
        train_tree = val_tree = _Tree(root, report)
        split_desc = None
    if split_desc is None:
        if not train_tree.ok:
            return report
        if len(train_tree.hr) < 2:
            report.problems.append(f"empty split: {root / 'HR'} has {len(train_tree.hr)} "
                                   f"image(s); splitting into train and val needs at least 2")
            return report
        tr_names, va_names = split_names(train_tree.hr, float(val_fraction), seed)
        split_desc = (f"deterministic split by data.val_fraction={val_fraction} "
                      f"(seed {seed}): {len(tr_names)} train / {len(va_names)} val names")
        report.records["train"] = _scan_tree(report, info, train_tree, tr_s, "data.train_scales",
                                             tr_names, check_orphans=True)
        report.records["val"] = _scan_tree(report, info, val_tree, va_s, "data.val_scales",
                                           va_names, check_orphans=False)
    else:
        report.records["train"] = _scan_tree(report, info, train_tree, tr_s,
                                             "data.train_scales", None, check_orphans=True)
        report.records["val"] = _scan_tree(report, info, val_tree, va_s, "data.val_scales",
                                           None, check_orphans=True)
    report.problems = list(dict.fromkeys(report.problems))  # split mode scans a tree twice
    report.layout = report.layout_from_counts()
    report.lines[:0] = [
        f"paired data at {root}: layout {report.layout}; {split_desc}",
        f"  train: scales {format_scales(train_scales)}: {len(report.records['train'])} complete pairs, "
        f"HR sizes {size_range(report.records['train'])}",
        f"  val: scales {format_scales(val_scales)}: {len(report.records['val'])} complete pairs, "
        f"HR sizes {size_range(report.records['val'])}",
        *test_lines,
    ]
    for name, t in (("train", train_tree), ("val", val_tree)):
        if t.ok and (name == "train" or t is not train_tree):
            dirs = ", ".join(f"{d.name} ({len(t.lr_files(s, report))} files)"
                             for s, d in sorted(t.scale_dirs.items()))
            report.lines.append(f"  {t.tree}: HR ({len(t.hr)} files), {dirs or 'no x<s> folders'}")
    return report


def paired_data(*, root, train_scales, val_scales, crop_size, samples_per_epoch, multiple_of,
                val_max_size, val_fraction, val_root, test_root, seed) -> DataBundle:
    """Users' own HR/LR pairs (see module docstring). Training / validation headers are read
    now, pixels lazily; the test split only when ``bundle.test`` is read. Defaults:
    conf/data/paired.yaml (:func:`degflow.data.build_data`)."""
    if root is None or str(root) in ("", "???"):
        raise ValueError("data.root is required for data=paired: pass data.root=/path/to/pairs "
                         "(the folder holding HR/ and x<s>/ folders)")
    train_scales, val_scales, crop_size, samples_per_epoch, multiple_of, val_max_size = check_loader_args(
        train_scales, train_scales if val_scales is None else val_scales, crop_size, samples_per_epoch,
        multiple_of, val_max_size)
    check_int(seed, "data.seed")
    report = scan_paired(root, train_scales, val_scales, val_fraction, val_root, test_root, seed)
    if report.problems and report.problems[0].startswith("missing root"):
        raise ValueError(report.problems[0].removeprefix("missing root: ")
                         + " (data=paired expects the folder holding HR/ and x<s>/)")
    report.raise_if_problems()
    for note in report.notes:
        log.info("paired: %s", note)
    if report.resized:
        log.info("paired: %d LR file(s) are at true LR size; they are resized to the HR size "
                 "with bicubic interpolation when loaded", report.resized)
    train_recs, val_recs = report.records["train"], report.records["val"]
    if not train_recs:
        raise ValueError(f"data=paired: no training pairs under {root}")
    if not val_recs:
        raise ValueError(f"data=paired: no validation pairs under {root}")
    has_test = _test_tree(Path(root).expanduser(), test_root) is not None

    def test_set() -> ValImageDataset:
        test = scan_paired(root, train_scales, val_scales, val_fraction, val_root, test_root, seed,
                           roles=("test",))
        test.raise_if_problems()
        return ValImageDataset(test.records["test"], [s for s in val_scales if s != 1.0], 1, None)

    summary = (f"{report.lines[0]}; train {len(train_recs)} / val {len(val_recs)} images"
               + ("; test split present (evaluation only)" if has_test else "; no test split"))
    return make_bundle(train_recs, val_recs, train_scales, val_scales, crop_size=crop_size,
                       samples_per_epoch=samples_per_epoch, multiple_of=multiple_of,
                       val_max_size=val_max_size, summary=summary,
                       test=test_set if has_test else None)
