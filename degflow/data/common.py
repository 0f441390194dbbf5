"""Pieces shared by every data option: the DataBundle, scale-list checks, pair records,
scan reports, the deterministic name split and the two dataset classes (random aligned
training crops, full-image validation / test).

Splits (the rule every data option follows): ``train`` is read by training, ``val`` by
validation, which picks checkpoints and is the objective returned to Hydra's sweepers, and
``test`` only by evaluation, lazily, when :attr:`DataBundle.test` is read. The validation
split is never the test split.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from degflow.core.resize import upsample_to
from degflow.core.scales import check_scales, find_scale, scale_label
from degflow.data.images import ImageReadError, read_image, read_image_size
from degflow.data.transforms import (
    NUM_DIHEDRAL,
    crop,
    crop_to_multiple,
    dihedral,
    dihedral_box,
    random_crop_position,
)
from degflow.infra.checks import check_positive_int

__all__ = [
    "DataBundle",
    "make_bundle",
    "check_loader_args",
    "check_val_scales_cover_train",
    "split_names",
    "size_relation",
    "PairRecord",
    "MemoryRecord",
    "Report",
    "TrainCropDataset",
    "ValImageDataset",
]

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """What every data factory returns (the training loop depends on exactly this).

    ``val`` is the validation split (never the test split): checkpoint selection and the
    objective returned to Hydra read it. The test split is built only when :attr:`test` is
    read (evaluation); training never reads it.
    """

    train: Dataset  # infinite-ish random aligned crops
    val: Dataset  # full images (cropped to a multiple of multiple_of), all val scales
    train_scales: tuple[float, ...]  # sorted, starts with 1.0 (= the HR image)
    val_scales: tuple[float, ...]  # evaluated at validation (includes held-out ones)
    description: str  # one line for the log
    test_loader: Callable[[], Dataset] | None = field(default=None, repr=False)

    @property
    def test(self) -> Dataset:
        """The test split (evaluation only): full, uncropped images at the validation scales
        (the evaluator crops per ``eval.protocol``). Indexed from disk on every access, so
        nothing of it is touched unless asked for. ValueError when the option has none."""
        if self.test_loader is None:
            raise ValueError(f"this data option has no test split ({self.description}); "
                             f"see its config (data.test_split / data.test_root)")
        return self.test_loader()


# --------------------------------------------------------------------------- scales


def check_val_scales_cover_train(train_scales: Sequence[float],
                                 val_scales: Sequence[float]) -> None:
    """Validation needs the real images at every training knot (the LFM stage encodes them
    as spline knots; ae_interp baselines use them), so val_scales must contain them."""
    missing = [s for s in train_scales if find_scale(s, val_scales) is None]
    if missing:
        raise ValueError(f"data.val_scales={list(val_scales)} must include every training "
                         f"scale (data.train_scales={list(train_scales)}); missing "
                         f"{missing}")


def split_names(names, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (train, val) split of ``names``: the ``max(1, round(f * n))`` names
    with the smallest sha256(seed/name) go to val, so adding images moves few others
    between the sets. Both lists are sorted."""
    names = sorted(names)
    n_val = max(1, round(val_fraction * len(names)))
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode()).hexdigest())
    val = set(ranked[:n_val])
    return [n for n in names if n not in val], [n for n in names if n in val]


# ------------------------------------------------------------------ HR / LR relation


def size_relation(hr_size: tuple[int, int], lr_size: tuple[int, int], scale: float) -> str | None:
    """'same' if the LR is stored at HR size (RealSR V2), 'true' if it is at true LR size
    (about HR/scale per side, RealSR V3), None if neither. Sizes are (width, height)."""
    if tuple(hr_size) == tuple(lr_size):
        return "same"
    for hr, lr in zip(hr_size, lr_size):
        expected = hr / scale
        if abs(lr - expected) > 1.0 + 0.02 * expected:
            return None
    return "true"


# ------------------------------------------------------------------------ records


@dataclass
class PairRecord:
    """One HR image with its LR partners on disk (pixels read lazily)."""

    name: str
    hr: Path
    hr_size: tuple[int, int]  # (width, height)
    lr: dict[float, Path] = field(default_factory=dict)
    lr_sizes: dict[float, tuple[int, int]] = field(default_factory=dict)

    @property
    def min_side(self) -> int:
        return min(self.hr_size)

    def relation(self, s: float) -> str | None:
        return size_relation(self.hr_size, self.lr_sizes[s], s)

    def load(self, scales: Sequence[float]) -> tuple[Tensor, Tensor]:
        hr = read_image(self.hr)
        h, w = hr.shape[-2:]
        lrs = []
        for s in scales:
            x = read_image(self.lr[s])
            rel = size_relation((w, h), (x.shape[-1], x.shape[-2]), s)
            if rel is None:
                raise ValueError(
                    f"size mismatch: {self.lr[s]} is {x.shape[-1]}x{x.shape[-2]} but its HR "
                    f"{self.hr} is {w}x{h}; expected the same size or about 1/{scale_label(s)}"
                    f" of it")
            if rel == "true":
                x = upsample_to(x, h, w)
            lrs.append(x)
        return hr, torch.stack(lrs)


@dataclass
class MemoryRecord:
    """An HR image and its LR images (at HR size), held in memory."""

    name: str
    hr_image: Tensor  # [3, H, W]
    lr_images: dict[float, Tensor]  # scale -> [3, H, W]

    @property
    def hr_size(self) -> tuple[int, int]:
        return int(self.hr_image.shape[-1]), int(self.hr_image.shape[-2])

    @property
    def min_side(self) -> int:
        return min(self.hr_size)

    def load(self, scales: Sequence[float]) -> tuple[Tensor, Tensor]:
        """The HR image and a new stack ``[S, 3, H, W]`` of its LR images (nothing shared with
        other callers: a caller may modify what it gets)."""
        return self.hr_image.clone(), torch.stack([self.lr_images[s] for s in scales])


# ------------------------------------------------------------------------ reports


@dataclass
class Report:
    """What a scan of a data tree found: summary lines, problems (each one line), notes.

    Datasets refuse to build from a report with problems; the validator prints it.
    """

    kind: str  # realsr | paired | demo
    root: str
    layout: str = ""
    lines: list[str] = field(default_factory=list)  # what was found
    problems: list[str] = field(default_factory=list)  # one line per problem
    notes: list[str] = field(default_factory=list)  # conversions / warnings (not problems)
    records: dict[str, list] = field(default_factory=dict)  # role (train/val) -> records
    resized: int = 0  # LR files at true LR size (resized to HR size when loaded)
    same_size: int = 0  # LR files stored at HR size

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_problems(self, max_lines: int = 15) -> None:
        if self.ok:
            return
        shown = self.problems[:max_lines]
        more = len(self.problems) - len(shown)
        msg = (f"{self.kind} data under {self.root} has {len(self.problems)} problem(s):\n  "
               + "\n  ".join(shown))
        if more:
            msg += f"\n  ... and {more} more"
        msg += ("\nRun `python -m degflow.data.check data=<option> data.root=...` for the full "
                "list.")
        raise ValueError(msg)

    def layout_from_counts(self) -> str:
        if not self.resized and not self.same_size:
            return "unknown (no complete pairs indexed)"
        if self.resized and self.same_size:
            return (f"mixed: {self.same_size} LR files at HR size, {self.resized} at true LR "
                    f"size (resized to HR size, bicubic, when loaded)")
        if self.resized:
            return "LR at true LR size (resized to HR size, bicubic, when loaded)"
        return "LR stored at HR size"


class FileInfo:
    """Per-scan cache of image sizes; with deep=True every image is fully decoded."""

    def __init__(self, deep: bool):
        self.deep = deep
        self._cache: dict[Path, tuple[tuple[int, int] | None, str | None]] = {}

    def size(self, path: Path) -> tuple[tuple[int, int] | None, str | None]:
        """((width, height), None) or (None, error message)."""
        if path not in self._cache:
            try:
                if self.deep:
                    x = read_image(path)
                    self._cache[path] = ((int(x.shape[-1]), int(x.shape[-2])), None)
                else:
                    self._cache[path] = (read_image_size(path), None)
            except ImageReadError as e:
                self._cache[path] = (None, str(e))
        return self._cache[path]


def size_range(records: Sequence) -> str:
    if not records:
        return "-"
    ws = [r.hr_size[0] for r in records]
    hs = [r.hr_size[1] for r in records]
    if min(ws) == max(ws) and min(hs) == max(hs):
        return f"{ws[0]}x{hs[0]}"
    return f"{min(ws)}..{max(ws)} x {min(hs)}..{max(hs)} (WxH)"


def check_crop_fits(records: Sequence, crop_size: int, what: str) -> None:
    if isinstance(crop_size, bool) or int(crop_size) != crop_size or crop_size < 1:
        raise ValueError(f"data.crop_size must be a positive integer, got {crop_size!r}")
    small = [r for r in records if r.min_side < crop_size]
    if small:
        ex = ", ".join(f"{r.name} ({r.hr_size[0]}x{r.hr_size[1]})" for r in small[:5])
        raise ValueError(f"data.crop_size={crop_size} is larger than {len(small)} {what} "
                         f"image(s): {ex}; lower data.crop_size")


# ----------------------------------------------------------------------- datasets


class TrainCropDataset(Dataset):
    """Random aligned crops with a random flip/rotation of the record ``index % len(records)``.

    The training loop asks for ``dataset[(index, seed)]``: the crop and the flip/rotation are
    drawn from a generator seeded with ``seed``, so an item is a pure function of its key (in
    any DataLoader worker, after any resume; see ``degflow/training/sampling.py``). A plain
    ``dataset[index]`` draws them from torch's global RNG instead.

    Each item also carries ``where`` = [record index, top, left, dihedral k]: the crop's
    corner in the frame of the transformed full image ``dihedral(image, k)`` (what the
    stage-2 latent cache looks up). ``crop_align`` (1 = any pixel) puts crop corners on a
    grid; the LFM stage sets it to the RAE stride when it uses the latent cache.
    """

    def __init__(self, records: Sequence, scales: Sequence[float], crop_size: int,
                 samples_per_epoch: int, crop_align: int = 1):
        if not records:
            raise ValueError("training set is empty")
        self.records = list(records)
        self.scales = tuple(float(s) for s in scales)
        self.crop_size = int(crop_size)
        self.samples_per_epoch = int(samples_per_epoch)
        self.crop_align = int(crop_align)
        self._scales_t = torch.tensor(self.scales, dtype=torch.float32)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):
            index, seed = key
            generator = torch.Generator().manual_seed(int(seed))
        else:
            index, generator = key, None
        i = int(index) % len(self.records)
        rec, size = self.records[i], self.crop_size
        held = isinstance(rec, MemoryRecord)  # crop the held images: copy the crops, not the images
        hr, lr = (rec.hr_image, None) if held else rec.load(self.scales)
        h, w = hr.shape[-2:]
        top, left = random_crop_position(h, w, size, generator, align=self.crop_align)
        k = int(torch.randint(0, NUM_DIHEDRAL, (1,), generator=generator))
        hr = crop(hr, top, left, size, size)
        lr = (torch.stack([crop(rec.lr_images[s], top, left, size, size) for s in self.scales]) if held
              else crop(lr, top, left, size, size))
        # fresh tensors, never views of a held image (a caller may modify its item)
        hr, lr = (dihedral(x, k).clone(memory_format=torch.contiguous_format) for x in (hr, lr))
        if self.crop_align > 1:  # the latent cache encodes the aligned part of the image
            h, w = h - h % self.crop_align, w - w % self.crop_align
        where = torch.tensor([i, *dihedral_box(top, left, size, h, w, k), k])
        return {"name": rec.name, "hr": hr.float(), "lr": lr.float(),
                "scales": self._scales_t.clone(), "where": where}


class ValImageDataset(Dataset):
    """Deterministic full images, center-cropped to a multiple of ``multiple_of`` and to at
    most ``max_size`` pixels per side."""

    def __init__(self, records: Sequence, scales: Sequence[float], multiple_of: int,
                 max_size: int | None):
        if not records:
            raise ValueError("validation set is empty")
        self.records = list(records)
        self.scales = tuple(float(s) for s in scales)
        self.multiple_of = int(multiple_of)
        self.max_size = None if max_size is None else int(max_size)
        self._scales_t = torch.tensor(self.scales, dtype=torch.float32)
        for r in self.records:  # fail now, not in the middle of validation
            w, h = r.hr_size
            if min(w, h) < self.multiple_of:
                raise ValueError(f"validation image {r.name} ({w}x{h}) is smaller than "
                                 f"data.multiple_of={self.multiple_of}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        hr, lr = rec.load(self.scales)
        hr = crop_to_multiple(hr, self.multiple_of, self.max_size)
        lr = crop_to_multiple(lr, self.multiple_of, self.max_size)
        return {"name": rec.name, "hr": hr.float().contiguous(), "lr": lr.float().contiguous(),
                "scales": self._scales_t.clone()}


# --------------------------------------------------------------------------- bundle


def check_loader_args(train_scales, val_scales, crop_size, samples_per_epoch, multiple_of,
                      val_max_size) -> tuple[tuple[float, ...], tuple[float, ...], int, int, int, int | None]:
    """Validate the keys every data option has (``data.train_scales``, ``data.val_scales``,
    ``data.crop_size``, ``data.samples_per_epoch``, ``data.multiple_of``,
    ``data.val_max_size``) and return them normalised, in that order."""
    train_scales = check_scales(train_scales, "data.train_scales")
    val_scales = check_scales(val_scales, "data.val_scales")
    check_val_scales_cover_train(train_scales, val_scales)
    return (train_scales, val_scales, check_positive_int(crop_size, "data.crop_size"),
            check_positive_int(samples_per_epoch, "data.samples_per_epoch"),
            check_positive_int(multiple_of, "data.multiple_of"),
            check_positive_int(val_max_size, "data.val_max_size", allow_none=True))


def make_bundle(train_records: Sequence, val_records: Sequence, train_scales: tuple[float, ...],
                val_scales: tuple[float, ...], *, crop_size: int, samples_per_epoch: int,
                multiple_of: int, val_max_size: int | None, summary: str,
                test: Callable[[], Dataset] | None = None) -> DataBundle:
    """The tail every data option shares: check the crop fits, build the training-crop and
    validation datasets (LR scales only; 1.0 is the HR image), log one description line.

    ``summary`` is the option's own part of that line (source, counts, scales); ``test``
    builds the test split when :attr:`DataBundle.test` is read (None: the option has none).
    """
    check_crop_fits(train_records, crop_size, "training")
    train = TrainCropDataset(train_records, [s for s in train_scales if s != 1.0], crop_size,
                             samples_per_epoch)
    val = ValImageDataset(val_records, [s for s in val_scales if s != 1.0], multiple_of, val_max_size)
    desc = (f"{summary}; crops {crop_size}, val center crop to x{multiple_of}"
            + (f", <= {val_max_size}px" if val_max_size else ""))
    log.info(desc)
    return DataBundle(train=train, val=val, train_scales=train_scales, val_scales=val_scales,
                      description=desc, test_loader=test)
