"""SR training / test pairs on disk, the six training sets of the comparison, and patch sampling.

A *pair folder* is the layout ``synthesize.py`` writes (and RealSR-style trees too)::

    HR/name.png              the HR image
    LR/x{s}/name.png         its LR image at scale s, true LR size round(H/s) x round(W/s)
    (or x{s}/name.png)       the same, without the LR/ level (data/realsr_x4, the Canon split)

:class:`PairFolder` names one HR folder and one LR folder per scale, so baselines written by
``synthesize.py`` (``baselines/{bicubic,procedural}/LR/x{s}/``) pair with the same ``HR/``.
A training set is a list of pair folders (:func:`training_set`); every (HR, LR, scale) triple
they hold is one training pair.

Sampling (:func:`sample_patches`): a pair, an LR patch of ``lr_patch`` pixels, the HR patch
covering it (``round(lr_patch * H / h)`` pixels per side, corner at the LR corner times the
HR / LR size ratio), one of the 8 flips / rotations, all drawn from one ``torch.Generator``.
For fractional scales the HR patch matches the LR patch to within half an HR pixel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from degflow.core.scales import check_scale, scale_key
from degflow.data.images import find_images, read_image
from degflow.data.transforms import NUM_DIHEDRAL, dihedral
from degflow.infra.files import atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["TRAINING_SETS", "PairFolder", "Pair", "lr_folder", "pair_folder", "find_pairs", "load_pairs",
           "training_set", "sample_patches", "aligned_patch", "split_of", "paired_files", "make_split"]

#: The training sets of the comparison (config key ``trainset``), in table order, with what they hold.
TRAINING_SETS: dict[str, str] = {
    "bicubic": "(a) bicubic LR of the training HR images at the generation scales",
    "procedural": "(b) Real-ESRGAN second-order procedural LR at the generation scales",
    "real": "(c) the real pairs at the discrete training scales only",
    "degflow": "(d) degflow-generated LR at the generation scales + the real pairs",
    "oracle": "(e) real pairs at the test scales (and every generation scale where they exist)",
    "degflow_photos": "(f) (d) + degflow-generated LR of extra HR-only photos",
    "degflow_stochastic": "(g) (d) with N stochastic samples per HR (degflow + fitted noise) for the degflow LR",
    "kernel": "(h) LR of the kernels fitted on the real training pairs at the generation scales + the real pairs",
    "kernel_noise": "(i) (h) with the noise model fitted on the kernels' residuals",
}


def lr_folder(root: str | Path, scale: float) -> Path:
    """The LR folder of ``scale`` under ``root``: ``LR/x{s}`` if it exists, else ``x{s}``."""
    root = Path(root)
    nested = root / "LR" / scale_key(scale)
    return nested if nested.is_dir() else root / scale_key(scale)


@dataclass(frozen=True)
class PairFolder:
    """HR images and their LR images per scale (``lr_dirs[s]/name`` pairs with ``hr_dir/name``)."""

    hr_dir: Path
    lr_dirs: Mapping[float, Path] = field(default_factory=dict)
    label: str = ""


def pair_folder(root: str | Path, scales: Sequence[float], label: str = "", hr_root: str | Path | None = None,
                key: str = "scales") -> PairFolder:
    """The pair folder of ``root`` (``HR/`` from ``hr_root`` when given) at ``scales``;
    ValueError naming ``key`` when an LR folder is missing."""
    root = Path(root)
    hr_dir = Path(hr_root if hr_root is not None else root) / "HR"
    if not hr_dir.is_dir():
        raise ValueError(f"{hr_dir} is not a folder: a pair folder holds HR/ and LR/x{{s}}/ (or x{{s}}/)")
    lr_dirs = {}
    for s in sorted({check_scale(v, key) for v in scales}):
        d = lr_folder(root, s)
        if not d.is_dir():
            have = sorted(p.name for p in [*(root / "LR").glob("x*"), *root.glob("x*")] if p.is_dir())
            raise ValueError(f"{key}: no LR folder for scale {s:g} under {root} (expected LR/{scale_key(s)}/ "
                             f"or {scale_key(s)}/; found {have or 'none'})")
        lr_dirs[s] = d
    return PairFolder(hr_dir, lr_dirs, label or root.name)


@dataclass(frozen=True)
class Pair:
    """One training / test pair: names, scale and the two image files."""

    name: str
    scale: float
    hr_path: Path
    lr_path: Path
    source: str = ""


def find_pairs(folders: Sequence[PairFolder]) -> list[Pair]:
    """Every (HR, LR, scale) triple of ``folders`` (LR files without an HR partner are skipped),
    sorted by source, scale, name."""
    out: list[Pair] = []
    for f in folders:
        hr = {p.relative_to(f.hr_dir).with_suffix("").as_posix(): p for p in find_images(f.hr_dir)}
        for s, d in sorted(f.lr_dirs.items()):
            for p in find_images(d):
                name = p.relative_to(d).with_suffix("").as_posix()
                if name in hr:
                    out.append(Pair(name, float(s), hr[name], p, f.label))
    if not out:
        raise ValueError(f"no HR/LR pairs in {[str(f.hr_dir.parent) for f in folders]}")
    return out


def load_pairs(pairs: Sequence[Pair]) -> list[tuple[Tensor, Tensor, float]]:
    """``(hr [3, H, W], lr [3, h, w], scale)`` as uint8 tensors in memory; each HR file read once."""
    cache: dict[Path, Tensor] = {}

    def u8(path: Path) -> Tensor:
        return ((read_image(path) + 1.0) * 127.5).round().to(torch.uint8)

    out = []
    for p in pairs:
        if p.hr_path not in cache:
            cache[p.hr_path] = u8(p.hr_path)
        out.append((cache[p.hr_path], u8(p.lr_path), p.scale))
    return out


def training_set(name: str, *, real: PairFolder | None, generated: str | Path | None, hr_root: str | Path,
                 real_scales: Sequence[float], gen_scales: Sequence[float], test_scales: Sequence[float],
                 photos: Sequence[str | Path] = (), samples: Sequence[str | Path] = ()) -> list[PairFolder]:
    """The pair folders of training set ``name`` (:data:`TRAINING_SETS`, config key ``trainset``).

    Args:
        real: the real pairs of the training HR images (LR folders at every scale where real LR
            exists); ``None`` when there are none.
        generated: ``synthesize.py``'s output for the training HR images at ``gen_scales``
            (``LR/x{s}`` degflow, ``baselines/{bicubic,procedural,kernel,kernel_noise}/LR/x{s}``).
        hr_root: folder holding the ``HR/`` of ``generated``.
        real_scales: the discrete scales real pairs are used at in (c), (d), (f).
        gen_scales: the (continuous) scales of the generated sets.
        test_scales: the scales the SR network is tested at (the oracle's scales).
        photos: ``synthesize.py`` outputs of extra HR-only photos at ``gen_scales`` (set f).
        samples: the sample folders ``samples/{k}`` of a ``synthesize.py noise=... samples=N`` output
            of the training HR images (set g; its ``HR/`` two levels up).
    """
    if name not in TRAINING_SETS:
        raise ValueError(f"trainset={name!r} is not one of {list(TRAINING_SETS)}")

    def real_at(scales: Sequence[float], what: str) -> PairFolder:
        missing = [s for s in scales if real is None or s not in real.lr_dirs]
        if missing:
            have = sorted(real.lr_dirs) if real is not None else []
            raise ValueError(f"trainset={name} needs real pairs at scale(s) {missing} ({what}); the real "
                             f"training pairs exist at {have or 'no scale'}")
        return PairFolder(real.hr_dir, {s: real.lr_dirs[s] for s in scales}, "real")

    def gen(sub: str, label: str) -> PairFolder:
        if generated is None:
            raise ValueError(f"trainset={name} needs generated LR images (none given)")
        return pair_folder(Path(generated) / sub, gen_scales, label, hr_root=hr_root, key="gen_scales")

    if name == "bicubic":
        return [gen("baselines/bicubic", "bicubic")]
    if name == "procedural":
        return [gen("baselines/procedural", "procedural")]
    if name in ("kernel", "kernel_noise"):
        return [gen(f"baselines/{name}", name), real_at(real_scales, "sr_setup.real_scales")]
    if name == "real":
        return [real_at(real_scales, "sr_setup.real_scales")]
    if name == "oracle":
        extra = [s for s in gen_scales if real is not None and s in real.lr_dirs and s not in test_scales]
        return [real_at(sorted({*test_scales, *extra}), "the test scales sr_setup.test_scales")]
    if name == "degflow_stochastic":
        if not samples:
            raise ValueError("trainset=degflow_stochastic needs stochastic samples (stochastic.noise=<noise model>)")
        return [*(pair_folder(p, gen_scales, f"degflow_stochastic:{Path(p).name}", hr_root=Path(p).parent.parent,
                              key="gen_scales") for p in samples), real_at(real_scales, "sr_setup.real_scales")]
    sets = [gen("", "degflow"), real_at(real_scales, "sr_setup.real_scales")]
    if name == "degflow_photos":
        if not photos:
            raise ValueError("trainset=degflow_photos needs extra HR-only photos (sr_setup.photos)")
        sets += [pair_folder(p, gen_scales, f"degflow:{Path(p).name}", key="gen_scales") for p in photos]
    return sets


def sample_patches(data: Sequence[tuple[Tensor, Tensor, float]], batch: int, lr_patch: int,
                   generator: torch.Generator) -> list[tuple[Tensor, Tensor, float]]:
    """``batch`` random aligned patches ``(lr [3, p, p], hr [3, P, P], scale)`` in [-1, 1], float32,
    with a random flip / rotation each (pairs smaller than the patch are never drawn)."""
    usable = [i for i, (hr, lr, _) in enumerate(data) if min(lr.shape[-2:]) >= lr_patch]
    if not usable:
        raise ValueError(f"sr.lr_patch={lr_patch} is larger than every LR image of the training set")
    out = []
    for _ in range(batch):
        hr, lr, s = data[usable[int(torch.randint(len(usable), (1,), generator=generator))]]
        h, w = lr.shape[-2:]
        top = int(torch.randint(h - lr_patch + 1, (1,), generator=generator))
        left = int(torch.randint(w - lr_patch + 1, (1,), generator=generator))
        lr_p, hr_p = aligned_patch(hr, lr, lr_patch, top, left)
        k = int(torch.randint(NUM_DIHEDRAL, (1,), generator=generator))
        lr_p, hr_p = dihedral(lr_p, k), dihedral(hr_p, k)
        out.append((lr_p.float() / 127.5 - 1.0, hr_p.float() / 127.5 - 1.0, float(s)))
    return out


def aligned_patch(hr: Tensor, lr: Tensor, lr_patch: int, top: int, left: int) -> tuple[Tensor, Tensor]:
    """The LR patch ``lr[..., top:top + p, left:left + p]`` (p = ``lr_patch``) and the HR patch
    covering it: ``round(p * H / h)`` pixels per side (the smaller of the two axes), corner at the LR
    corner times the HR / LR size ratio (clipped to the image), so it matches the LR patch to within
    half an HR pixel at fractional scales. ``hr`` ``[..., H, W]``, ``lr`` ``[..., h, w]``."""
    (h, w), (H, W) = lr.shape[-2:], hr.shape[-2:]
    ry, rx = H / h, W / w
    size = min(round(lr_patch * ry), round(lr_patch * rx))
    htop = min(round(top * ry), H - size)
    hleft = min(round(left * rx), W - size)
    return lr[..., top:top + lr_patch, left:left + lr_patch], hr[..., htop:htop + size, hleft:hleft + size]


# ----------------------------------------------------------------- a fixed split of a paired folder
def split_of(names: list[str]) -> dict[str, list[str]]:
    """The fixed train / val / test split of a paired folder (the Canon x4 split of the results):
    sorted names, position ``i % 5 == 4`` test, ``i % 10 == 2`` validation, the rest training.
    Needs at least 5 names (one test, one val image)."""
    names = sorted(names)
    if len(names) < 5:
        raise ValueError(f"need at least 5 HR/LR pairs for a train/val/test split, found {len(names)}")
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, name in enumerate(names):
        out["test" if i % 5 == 4 else "val" if i % 10 == 2 else "train"].append(name)
    return out


def paired_files(root: Path, scale: int, key: str) -> dict[str, tuple[Path, Path]]:
    """``{name: (HR file, x{scale} file)}`` of a ``HR/`` + ``x{scale}/`` tree (names present in both;
    names without a partner are skipped with a warning). ValueError naming ``key`` without the folders."""
    root = Path(root)
    hr_dir, lr_dir = root / "HR", root / f"x{scale}"
    if not hr_dir.is_dir() or not lr_dir.is_dir():
        raise ValueError(f"{key}={str(root)!r} must hold HR/ and x{scale}/ folders")
    hr = {p.stem: p for p in find_images(hr_dir, recursive=False)}
    lr = {p.stem: p for p in find_images(lr_dir, recursive=False)}
    missing = sorted(set(hr) ^ set(lr))
    if missing:
        log.warning("%s: %d names without a partner skipped: %s", key, len(missing), missing[:5])
    return {n: (hr[n], lr[n]) for n in sorted(set(hr) & set(lr))}


def make_split(root: Path, out: Path, scale: int, key: str) -> dict[str, list[str]]:
    """The :func:`split_of` split of a ``HR/`` + ``x{scale}/`` tree as a symlink tree
    ``out/{train,val,test}/{HR,x{scale}}/`` plus ``out/split.json``; idempotent."""
    pairs = paired_files(root, scale, key)
    split = split_of(list(pairs))
    for part, names in split.items():
        for name in names:
            for sub, src in zip(("HR", f"x{scale}"), pairs[name]):
                link = Path(out) / part / sub / src.name
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    if link.resolve() == src.resolve():
                        continue
                    link.unlink()
                link.symlink_to(src.resolve())
    atomic_write_json(Path(out) / "split.json", {"source": str(Path(root).resolve()),
                                                 "rule": "sorted names; i % 5 == 4 test, i % 10 == 2 val, else train",
                                                 **split})
    return split
