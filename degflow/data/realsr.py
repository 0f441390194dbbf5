"""``data=realsr``: RealSR in the "ordered" layout used by InterFlow / DegFlow.

    {root}/{Canon|Nikon}/{Train|Test}/{2|3|4}/{Cam}_{idx}_HR.png
    {root}/{Canon|Nikon}/{Train|Test}/{s}/{Cam}_{idx}_LR{s}.png

RealSR V2 stores every LR image at the HR pixel size (aligned). RealSR V3 stores LR at
the true LR size (about HR / s per side); such files are resized to HR size with bicubic
interpolation when loaded, and the bundle description says so.

Every scale folder has its own HR file. A training tuple (HR, LR_s for each training
scale) takes its HR from the lowest requested scale folder; the HR files of the same idx
in the other folders must have the same size (checked), and with ``deep=True`` (the
validator) their pixels are compared too (a difference is reported as a note).

:func:`scan_realsr` indexes the files and checks them; the dataset and the validator
(``python -m degflow.data.check data=realsr data.root=...``) share it.

Splits: training reads ``train_split``; validation (checkpoint selection, the objective a
sweep optimises) reads ``val_split`` or, when it is null (default), a deterministic held-out
``val_fraction`` of the ``train_split`` names (their x3 included, so the held-out scale is
validated on validation images); the ``test_split`` is never read by training: it is
indexed only when :attr:`DataBundle.test` is asked for (evaluation) or by the validator.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from degflow.core.scales import check_scales, find_scale, format_scales, parse_scale, scale_label
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
from degflow.data.images import IMAGE_EXTENSIONS, read_image
from degflow.infra.checks import check_number

__all__ = ["scan_realsr", "realsr_data", "normalize_cameras"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<cam>.+)_(?P<idx>[^_]+)_(?P<kind>HR|LR(?P<s>\d+(?:\.\d+)?))$")


def normalize_cameras(camera) -> list[str]:
    """'Canon' | ['Canon', 'Nikon'] | 'Canon,Nikon' -> list of camera folder names."""
    if isinstance(camera, str):
        cams = [c.strip() for c in camera.split(",") if c.strip()]
    elif isinstance(camera, Sequence) or hasattr(camera, "__iter__"):
        cams = [str(c).strip() for c in camera]
    else:
        cams = []
    if not cams or any(not c for c in cams) or len(set(cams)) != len(cams):
        raise ValueError(f"data.camera must be a camera folder name like Canon, or a list "
                         f"like [Canon, Nikon] without duplicates; got {camera!r}")
    return cams


def _subdirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


class _Folder:
    """Parsed content of one {split}/{s} folder."""

    def __init__(self, path: Path, scale: float, report: Report):
        self.path = path
        self.hr: dict[str, Path] = {}
        self.lr: dict[str, Path] = {}
        ignored: list[str] = []
        for p in sorted(path.iterdir()):
            if not p.is_file() or p.name.startswith("."):
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(p.name)
                continue
            m = _NAME.match(p.stem)
            if not m:
                ignored.append(p.name)
                continue
            key = f"{m['cam']}_{m['idx']}"
            if m["kind"] == "HR":
                table = self.hr
            else:
                s_file = float(m["s"])
                if abs(s_file - scale) > 1e-6:
                    report.problems.append(
                        f"wrong scale: {p} is labelled LR{m['s']} but lies in the scale-"
                        f"{scale_label(scale)} folder")
                    continue
                table = self.lr
            if key in table:
                report.problems.append(f"duplicate: {table[key]} and {p} are both "
                                       f"{m['kind']} files for {key}")
                continue
            table[key] = p
        if ignored:
            ex = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
            report.notes.append(f"{path}: ignored {len(ignored)} file(s) not named "
                                f"<Cam>_<idx>_HR / _LR<s> images: {ex}")


def _split_keys(split_dir: Path, scales: tuple[float, ...]) -> list[str]:
    """``<Cam>_<idx>`` names found in the scale folders of ``split_dir`` (names only, no
    file is opened)."""
    found = {parse_scale(n): n for n in _subdirs(split_dir)} if split_dir.is_dir() else {}
    keys: set[str] = set()
    for s in scales:
        f = find_scale(s, [k for k in found if k is not None])
        if f is not None:
            fo = _Folder(split_dir / found[f], s, Report(kind="realsr", root=str(split_dir)))
            keys |= set(fo.hr) | set(fo.lr)
    return sorted(keys)


def _scan_role(report: Report, info: FileInfo, cam_dir: Path, split: str,
               scales: tuple[float, ...], key: str, role: str,
               names: list[str] | None = None, note_unused: bool = True) -> list[PairRecord]:
    """Index one camera/split for the LR scales ``scales`` (only the ``<Cam>_<idx>`` keys in
    ``names``, when given); append problems to report."""
    split_dir = cam_dir / split
    if not split_dir.is_dir():
        report.problems.append(
            f"missing split: {split_dir} does not exist (data.{role}_split={split}); "
            f"folders in {cam_dir}: {_subdirs(cam_dir)}")
        return []
    found = {parse_scale(n): n for n in _subdirs(split_dir) if parse_scale(n) is not None}
    present = []
    for s in scales:
        f = find_scale(s, found)
        if f is None:
            report.problems.append(
                f"missing scale: {split_dir} has no folder '{scale_label(s)}' for scale "
                f"{scale_label(s)} ({key}); scale folders found: "
                f"{[found[k] for k in sorted(found)] or 'none'}")
        else:
            present.append((s, split_dir / found[f]))
    unused = [found[k] for k in sorted(found) if find_scale(k, scales) is None]
    if unused and note_unused:
        report.notes.append(f"{split_dir}: scale folder(s) {unused} present, not used by "
                            f"{key}")
    folders = {s: _Folder(p, s, report) for s, p in present}
    if names is not None:
        keep = set(names)
        for fo in folders.values():
            fo.hr = {k: v for k, v in fo.hr.items() if k in keep}
            fo.lr = {k: v for k, v in fo.lr.items() if k in keep}
    for s, fo in folders.items():
        report.lines.append(f"  {cam_dir.name}/{split}/{fo.path.name} ({role}): {len(fo.hr)} HR, "
                            f"{len(fo.lr)} LR{scale_label(s)} files")
    # pairs within each folder
    pairs: dict[float, dict[str, tuple[Path, Path]]] = {}
    for s, fo in folders.items():
        pairs[s] = {}
        for k in sorted(set(fo.hr) | set(fo.lr)):
            if k not in fo.lr:
                report.problems.append(f"missing partner: {fo.hr[k]} has no LR partner "
                                       f"{fo.path / (k + '_LR' + scale_label(s) + '.png')}")
            elif k not in fo.hr:
                report.problems.append(f"missing partner: {fo.lr[k]} has no HR partner "
                                       f"{fo.path / (k + '_HR.png')}")
            else:
                pairs[s][k] = (fo.hr[k], fo.lr[k])
    if len(folders) < len(scales):
        return []
    # tuples across scale folders
    all_keys = sorted(set().union(*(set(f.hr) | set(f.lr) for f in folders.values())))
    records: list[PairRecord] = []
    for k in all_keys:
        have = [s for s in scales if k in pairs[s]]
        lacking = [s for s in scales if k not in folders[s].hr and k not in folders[s].lr]
        if lacking:
            report.problems.append(
                f"missing partner: {k} is in scale folder(s) "
                f"{[scale_label(s) for s in scales if s not in lacking]} of {split_dir} but "
                f"not in {[scale_label(s) for s in lacking]} (needed for {key})")
        if len(have) < len(scales):
            continue
        base_s = scales[0]
        hr_path = pairs[base_s][k][0]
        hr_size, err = info.size(hr_path)
        if err:
            report.problems.append(f"unreadable: {err}")
            continue
        rec = PairRecord(name=k, hr=hr_path, hr_size=hr_size)
        bad = False
        for s in scales:
            other_hr, lr_path = pairs[s][k]
            if s != base_s:
                osize, err = info.size(other_hr)
                if err:
                    report.problems.append(f"unreadable: {err}")
                    bad = True
                    continue
                if osize != hr_size:
                    report.problems.append(
                        f"size mismatch: HR files of {k} differ across scale folders: "
                        f"{hr_path} is {hr_size[0]}x{hr_size[1]}, {other_hr} is "
                        f"{osize[0]}x{osize[1]} (the tuple's HR comes from the scale-"
                        f"{scale_label(base_s)} folder)")
                    bad = True
                    continue
                if info.deep:
                    _compare_hr(report, hr_path, other_hr)
            lsize, err = info.size(lr_path)
            if err:
                report.problems.append(f"unreadable: {err}")
                bad = True
                continue
            ohr = info.size(other_hr)[0] or hr_size
            rel = size_relation(ohr, lsize, s)
            if rel is None:
                report.problems.append(
                    f"size mismatch: {lr_path} is {lsize[0]}x{lsize[1]} but {other_hr} is "
                    f"{ohr[0]}x{ohr[1]}; expected the same size (V2) or about 1/"
                    f"{scale_label(s)} of it (V3)")
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
    if not records and not all_keys:
        report.problems.append(f"empty split: {split_dir} has no <Cam>_<idx>_HR / _LR<s> "
                               f"image pairs in scale folders "
                               f"{[scale_label(s) for s in scales]}")
    return records


def _compare_hr(report: Report, a: Path, b: Path) -> None:
    try:
        xa, xb = read_image(a), read_image(b)
    except ValueError:
        return  # reported elsewhere
    if xa.shape == xb.shape:
        diff = float((xa - xb).abs().mean()) * 127.5
        if diff > 2.0:
            report.notes.append(f"HR differs across scale folders: {a} vs {b}, mean |diff| "
                                f"{diff:.1f}/255 (the LR of {b.parent.name} is paired with "
                                f"the HR of {a.parent.name}: check the alignment)")


def check_splits(train_split, val_split, test_split) -> None:
    """Validation must never read the test split, nor the training images (config keys
    ``data.train_split``, ``data.val_split``, ``data.test_split``)."""
    for key, value in (("data.train_split", train_split), ("data.test_split", test_split)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a split folder name like Train / Test, got {value!r}")
    if val_split is not None and (not isinstance(val_split, str) or not val_split):
        raise ValueError(f"data.val_split must be a split folder name or null (a held-out "
                         f"data.val_fraction of data.train_split), got {val_split!r}")
    if train_split == test_split:
        raise ValueError(f"data.train_split and data.test_split are both {train_split!r}: "
                         f"never train on the test split")
    if val_split is not None and val_split in (train_split, test_split):
        which = "data.test_split" if val_split == test_split else "data.train_split"
        raise ValueError(
            f"data.val_split={val_split!r} is also {which}: validation picks checkpoints and "
            f"is the objective sweeps optimise, so it must be neither the test split nor the "
            f"training images; set data.val_split=null to hold out data.val_fraction of "
            f"data.train_split={train_split!r}")


ROLES = ("train", "val", "test")


def scan_realsr(root, camera, train_split, val_split, test_split, val_fraction, seed,
                train_scales, val_scales, *, deep: bool = False,
                roles: tuple[str, ...] = ("train", "val")) -> Report:
    """Index and check a RealSR (V2 ordered / V3) tree. Never raises for data problems:
    they are collected in ``Report.problems`` (one line each). ``deep=True`` decodes every
    image fully (the validator); otherwise only headers are read. Only the splits of
    ``roles`` are touched (training never asks for ``test``).

    ``Report.records`` maps each role ('train' / 'val' / 'test') to its complete PairRecords;
    test uses the validation scales. The argument defaults live in conf/data/realsr.yaml.
    """
    train_scales = check_scales(train_scales, "data.train_scales")
    val_scales = check_scales(val_scales, "data.val_scales")
    check_splits(train_split, val_split, test_split)
    held_out = val_split is None
    if held_out:
        check_number(val_fraction, "data.val_fraction", low=0.0, high=1.0, open_low=True, open_high=True,
                     hint=" (the held-out part of data.train_split used for validation)")
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"roles {unknown} are not among {list(ROLES)}")
    cams = normalize_cameras(camera)
    root = Path(root).expanduser()
    report = Report(kind="realsr", root=str(root))
    report.records = {r: [] for r in roles}
    if not root.is_dir():
        report.problems.append(f"missing root: data.root={root} does not exist or is not a "
                               f"directory")
        return report
    info = FileInfo(deep)
    lr = {"train": tuple(s for s in train_scales if s != 1.0),
          "val": tuple(s for s in val_scales if s != 1.0)}
    lr["test"] = lr["val"]
    key = {"train": "data.train_scales", "val": "data.val_scales", "test": "data.val_scales"}
    for cam in cams:
        cam_dir = root / cam
        if not cam_dir.is_dir():
            report.problems.append(f"missing camera: {cam_dir} does not exist (data.camera); "
                                   f"folders in {root}: {_subdirs(root) or 'none'}")
            continue
        names: dict[str, list[str] | None] = {"train": None, "val": None, "test": None}
        if held_out and ("train" in roles or "val" in roles):
            keys = _split_keys(cam_dir / train_split, lr["train"])
            if len(keys) >= 2:
                names["train"], names["val"] = split_names(keys, float(val_fraction), seed)
            elif (cam_dir / train_split).is_dir():
                report.problems.append(
                    f"empty split: {cam_dir / train_split} has {len(keys)} image name(s); "
                    f"holding out data.val_fraction of it for validation needs at least 2 "
                    f"(or set data.val_split)")
        splits = {"train": train_split, "val": train_split if held_out else val_split,
                  "test": test_split}
        for role in roles:
            # the training split's extra scale folders (x3) serve its held-out validation part
            quiet = held_out and role == "train" and "val" in roles
            recs = _scan_role(report, info, cam_dir, splits[role], lr[role], key[role], role,
                              names[role], note_unused=not quiet)
            report.records[role].extend(recs)
    report.problems = list(dict.fromkeys(report.problems))
    if report.resized and not report.same_size:
        report.layout = "V3 (LR at true LR size, resized to HR size with bicubic when loaded)"
    elif report.same_size and not report.resized:
        report.layout = "V2 (LR stored at HR size)"
    else:
        report.layout = report.layout_from_counts()
    where = {"train": train_split, "test": test_split,
             "val": (f"{train_split} (held out: data.val_fraction={val_fraction}, seed {seed})"
                     if held_out else val_split)}
    head = [f"RealSR at {root}: cameras {cams}, layout {report.layout}"]
    for role in roles:
        scales = train_scales if role == "train" else val_scales
        head.append(f"  {role}: {where[role]}, scales {format_scales(scales)}: "
                    f"{len(report.records[role])} complete tuples, HR sizes "
                    f"{size_range(report.records[role])}")
    report.lines[:0] = head
    return report


def realsr_data(*, root, camera, train_split, val_split, test_split, val_fraction, seed,
                train_scales, val_scales, crop_size, samples_per_epoch, multiple_of,
                val_max_size) -> DataBundle:
    """RealSR ordered layout (V2, or V3 with LR resized to HR size). Training and validation
    files are indexed (headers read) now, pixels lazily in ``__getitem__``; the test split is
    indexed only when ``bundle.test`` is read. Defaults: conf/data/realsr.yaml
    (:func:`degflow.data.build_data`)."""
    if root is None or str(root) in ("", "???"):
        raise ValueError("data.root is required for data=realsr: pass data.root=/path/to/"
                         "RealSR_v2_ordered (the folder holding Canon/ and Nikon/)")
    train_scales, val_scales, crop_size, samples_per_epoch, multiple_of, val_max_size = check_loader_args(
        train_scales, val_scales, crop_size, samples_per_epoch, multiple_of, val_max_size)
    splits = dict(camera=camera, train_split=train_split, val_split=val_split,
                  test_split=test_split, val_fraction=val_fraction, seed=seed,
                  train_scales=train_scales, val_scales=val_scales)
    report = scan_realsr(root, **splits)
    if report.problems and report.problems[0].startswith("missing root"):
        raise ValueError(f"data.root={root} does not exist or is not a directory (data=realsr "
                         f"expects the folder holding Canon/ and Nikon/)")
    report.raise_if_problems()
    for note in report.notes:
        log.info("realsr: %s", note)
    if report.resized:
        log.info("realsr: %d LR file(s) are at true LR size (RealSR V3 layout); they are "
                 "resized to the HR size with bicubic interpolation when loaded", report.resized)
    train_recs, val_recs = report.records["train"], report.records["val"]
    val_desc = val_split or f"held-out {val_fraction:g} of {train_split}"

    def test_set() -> ValImageDataset:
        test = scan_realsr(root, **splits, roles=("test",))
        test.raise_if_problems()
        return ValImageDataset(test.records["test"], [s for s in val_scales if s != 1.0], 1, None)

    summary = (f"realsr {', '.join(normalize_cameras(camera))} at {root}: {report.layout}; "
               f"train {train_split} {len(train_recs)} tuples (scales {format_scales(train_scales)}), "
               f"val {val_desc} {len(val_recs)} images (scales {format_scales(val_scales)}), "
               f"test {test_split} (evaluation only)")
    return make_bundle(train_recs, val_recs, train_scales, val_scales, crop_size=crop_size,
                       samples_per_epoch=samples_per_epoch, multiple_of=multiple_of,
                       val_max_size=val_max_size, summary=summary, test=test_set)
