"""The LR dataset job: a folder of HR images -> an SR training set at every requested scale.

:func:`write_lr_dataset` drives a :class:`~degflow.generation.Synthesizer` over a folder (the
``synthesize.py`` CLI is a thin wiring of it): output layout, ``manifest.jsonl``, resume,
shards, comparison baselines (``bicubic``, ``procedural`` Real-ESRGAN, the ``ae_interp``
oracle and the fitted ``kernel`` / ``kernel_noise``), the stochastic option's samples (``noise``, ``strength``,
``samples``), failure records. An image gets all its outputs and manifest lines or none.
"""

from __future__ import annotations

import hashlib
import json
import math
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from degflow import __version__
from degflow.baselines import procedural
from degflow.baselines.kernel_baseline import KernelDegradation, kernel_noise_seed, load_kernel_file
from degflow.core.resize import (
    bicubic_baseline,
    check_hr_size_output,
    lr_at_hr_size,
    lr_size,
    resize_to_lr,
    upsample_to,
)
from degflow.core.scales import Scales, expand_scales, scale_key, scale_label
from degflow.data.common import size_relation
from degflow.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    find_images,
    read_image,
    read_image_size,
    write_image,
)
from degflow.generation import StochasticOption, SynthesisResult, Synthesizer
from degflow.generation.stochastic import noisy_at_hr_size
from degflow.generation.synthesizer import ScaleTimes
from degflow.infra.checks import check_bool, check_int, check_number, check_positive_int
from degflow.infra.conf import synthesis_defaults
from degflow.infra.digests import checked_line, checked_record_text, read_checked_line, read_checked_record
from degflow.infra.exits import graceful, stop_point
from degflow.infra.files import append_lines, atomic_write_text, temp_target
from degflow.infra.locks import FolderLock

__all__ = ["BASELINES", "LAYOUTS", "OUTPUT_SIZES", "SPEC_KEYS", "FolderSummary", "SynthesisSpec", "toolbox_multiple",
           "write_lr_dataset"]

log = logging.getLogger(__name__)

#: Values of ``size`` (config key ``size``): true LR size, HR size (RealSR convention), both.
OUTPUT_SIZES: tuple[str, ...] = ("lr", "hr", "both")
#: Comparison baselines (config key ``baseline``).
BASELINES: tuple[str, ...] = ("bicubic", "procedural", "ae_interp", "kernel", "kernel_noise")
#: Output layouts (config key ``layout``): degflow's own, or one that BasicSR's paired dataset and LIIF's
#: paired folders read as they are (integer scales; docs/TOOLBOXES.md).
LAYOUTS: tuple[str, ...] = ("degflow", "toolbox")
#: The BasicSR meta information file of ``layout=toolbox`` (one line ``name.png (H,W,3)`` per HR image).
META_INFO = "meta_info.txt"


@dataclass
class FolderSummary:
    """What :func:`write_lr_dataset` did (this shard only)."""

    images: int                      # images in this shard
    processed: int                   # images generated in this run
    skipped: int                     # images whose every output already existed
    failed: int                      # images with at least one error (see ``failures``)
    outputs_written: int
    seconds: float
    failures: list[dict[str, str]] = field(default_factory=list)
    manifest: str = ""
    failed_file: str = ""

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise (2, usage errors, is raised as ValueError)."""
        return 1 if self.failed else 0

    def line(self) -> str:
        return (f"images {self.images}: {self.processed} processed, {self.skipped} skipped (complete), "
                f"{self.failed} failed; {self.outputs_written} outputs written; {self.seconds:.1f} s")


@dataclass
class _Output:
    kind: str           # "hr" | "degflow" | "stochastic" | "bicubic" | "procedural" | "ae_interp"
    size: str           # "lr" | "hr"
    scale: float
    rel: str            # path relative to out, posix
    sample: int | None = None   # stochastic: the sample index


@dataclass
class _Item:
    path: Path
    source: str         # path relative to input, posix
    name: str           # output name relative to each scale folder, posix, ends with .png
    pending: list[_Output]  # outputs still to write


_MANAGED = ("HR", "LR", "LR_hrsize", "baselines", "samples")
_SETTINGS_FILE = "synthesis.json"


def _output_names(paths: list[Path], root: Path, flat: bool = False) -> dict[Path, str]:
    """Output name per source: its path under ``root`` with a ``.png`` suffix, subfolders kept
    (``flat``: joined with ``_`` into one folder level, as the toolboxes' loaders list one folder).
    Sources that would collide (``a.jpg`` and ``a.png``) keep their extension (``a.jpg.png``)."""
    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix().replace("/", "_") if flat else p.relative_to(root).as_posix()

    plain = {p: rel(p.with_suffix(".png")) for p in paths}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name] = counts.get(name, 0) + 1
    names = {p: (n if counts[n] == 1 else rel(p) + ".png") for p, n in plain.items()}
    if len(set(names.values())) != len(names):
        raise ValueError(f"input: source files map to the same output name; rename them: "
                         f"{sorted(n for n in names.values() if list(names.values()).count(n) > 1)}")
    return names


def _in_shard(source: str, shard: int, num_shards: int) -> bool:
    """Stable assignment of a source (relative path) to a shard: sha256 of the path."""
    return int(hashlib.sha256(source.encode("utf-8")).hexdigest(), 16) % num_shards == shard


def _read_manifest(path: Path) -> tuple[dict[str, str], int]:
    """``{output: line}`` of a manifest (last line per output wins) and how many of its lines were
    duplicates or not whole (cut short by a kill, or damaged: their checksum does not hold)."""
    lines: dict[str, str] = {}
    dropped = 0
    if not path.is_file():
        return lines, 0
    for raw in path.read_bytes().splitlines():
        try:
            entry, _status = read_checked_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            entry = None
        if entry is None or not isinstance(entry.get("output"), str):
            dropped += 1
            continue
        dropped += entry["output"] in lines
        lines[entry["output"]] = raw.decode("utf-8")
    return lines, dropped


def _find_real_lr(root: Path, name: str, scale: float) -> Path | None:
    """The real LR image ``{root}/x{s}/{name without suffix}.{any image extension}``."""
    stem = root / scale_key(scale) / name[: -len(".png")]
    for ext in IMAGE_EXTENSIONS:
        for candidate in (Path(f"{stem}{ext}"), Path(f"{stem}{ext.upper()}")):
            if candidate.is_file():
                return candidate
    return None


def _load_real_lr(root: Path, item: _Item, scales: Sequence[float], hr: torch.Tensor) -> dict[float, torch.Tensor]:
    """Real LR images of one HR image ``[3, H, W]`` at HR size (true-LR-size files are
    bicubic-upsampled), for the ae_interp baseline."""
    h, w = hr.shape[-2:]
    real = {}
    for s in scales:
        path = _find_real_lr(root, item.name, s)
        if path is None:
            raise ValueError(f"ae_interp: no real LR image {scale_key(s)}/{item.name[:-len('.png')]}.* "
                             f"under baseline_lr_root={str(root)!r}")
        x = read_image(path)
        relation = size_relation((w, h), (x.shape[-1], x.shape[-2]), s)
        if relation is None:
            raise ValueError(f"ae_interp: real LR {path} is {x.shape[-1]}x{x.shape[-2]}, neither the HR size "
                             f"{w}x{h} nor about HR/{scale_label(s)}")
        real[s] = x if relation == "same" else upsample_to(x, h, w)
    return real


def _check_folders(input_dir: Path, out_dir: Path) -> None:
    if not input_dir.is_dir():
        raise ValueError(f"input={str(input_dir)!r} is not a folder of HR images")
    src, dst = input_dir.resolve(), out_dir.resolve()
    if dst == src or dst.is_relative_to(src):
        raise ValueError(f"out={str(out_dir)!r} lies inside input={str(input_dir)!r}; the outputs would be "
                         "read back as inputs on the next run. Choose an out folder outside the input folder")
    for sub in _MANAGED:
        if src == dst / sub or src.is_relative_to(dst / sub):
            raise ValueError(f"input={str(input_dir)!r} lies inside out/{sub}, which synthesis writes; "
                             "choose another out folder")


#: Keys a settings record of an earlier degflow may hold (one written before records were checked).
_SETTINGS_KEYS = ("checkpoint_sha256", "solver", "precision", "tile_size", "tile_overlap", "LR_folder",
                  "hr_size_output", "procedural_seed")


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix outputs of different generation settings in one out folder, and to resume
    from a settings record that is damaged (its checksum does not hold, it does not parse):
    what the folder was made with is then unknown, and never guessed."""
    path = out_dir / _SETTINGS_FILE
    if path.exists():
        try:
            old, status = read_checked_record(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            old, status = None, "damaged"
        if old is not None and status == "unchecked" and not set(old) <= {*_SETTINGS_KEYS, *settings}:
            old, status = None, "damaged"
        if old is None:
            raise ValueError(
                f"out={str(out_dir)!r}: its settings record {path.name} is damaged or unreadable, so how the "
                f"outputs there were made is unknown and resuming could mix settings; it is left as it is. "
                f"Start fresh in a new out folder (or move {str(out_dir)!r} away)"
            )
        diff = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if diff:
            raise ValueError(
                f"out={str(out_dir)!r} holds outputs generated with other settings "
                f"({'; '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                f"resuming would mix them. Use a new out folder (or delete {path} to force it)"
            )
        if status == "ok" and all(k in old for k in settings):
            return
        settings = {**old, **settings}      # a setting used for the first time (a new baseline), or a checksum added
    atomic_write_text(path, checked_record_text(settings))


@dataclass(frozen=True)
class SynthesisSpec:
    """The dataset job's settings, checked once (like :class:`~degflow.core.solvers.SolverSpec`).

    Build it with :meth:`create`, which takes its defaults from ``conf/synthesize.yaml`` (the one
    home of the synthesis defaults) and validates every value; the job then trusts it. Fields
    are the config keys of ``synthesize.py`` (``baseline`` is :attr:`baselines`).
    """

    scales: Scales
    size: str
    hr_size_output: str
    batch_size: int
    allow_extrapolation: bool
    shard: int
    num_shards: int
    baselines: tuple[str, ...]
    baseline_lr_root: Path | None
    procedural_seed: int
    max_scales: int | None
    progress: bool
    layout: str = "degflow"
    noise: Path | None = None
    strength: float = 1.0
    samples: int = 1
    noise_seed: int = 0
    kernel: KernelDegradation | None = None         # kernel / kernel_noise: the fitted kernels (config: kernel_file)

    @classmethod
    def create(cls, scales: Any = None, **options: Any) -> SynthesisSpec:
        """Defaults from ``conf/synthesize.yaml``, then ``options``; ValueError naming the key for
        any bad value (unknown keys included)."""
        defaults = {k: v for k, v in synthesis_defaults().items() if k in SPEC_KEYS}
        unknown = sorted(set(options) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"synthesis settings {unknown} are not among {sorted(SPEC_KEYS)}")
        c = {**defaults, **options, **({} if scales is None else {"scales": scales})}
        if c["size"] not in OUTPUT_SIZES:
            raise ValueError(f"size={c['size']!r} is not one of {list(OUTPUT_SIZES)}")
        check_hr_size_output(c["hr_size_output"])
        check_positive_int(c["batch_size"], "batch_size")
        for key in ("allow_extrapolation", "progress"):
            check_bool(c[key], key)
        check_int(c["num_shards"], "num_shards", minimum=1)
        check_int(c["shard"], "shard", minimum=0)
        if not c["shard"] < c["num_shards"]:
            raise ValueError(f"shard={c['shard']} num_shards={c['num_shards']}: need 0 <= shard < num_shards")
        baseline = c["baselines"] if "baselines" in c else c["baseline"]      # Python API / config key
        baselines = tuple(dict.fromkeys([baseline] if isinstance(baseline, str) else list(baseline or ())))
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"baseline: {unknown} not among {list(BASELINES)}")
        root = Path(c["baseline_lr_root"]) if c["baseline_lr_root"] else None
        if "ae_interp" in baselines and (root is None or not root.is_dir()):
            raise ValueError("baseline=ae_interp needs baseline_lr_root= a folder of real LR images laid out as "
                             f"x{{scale}}/name.png, got {c['baseline_lr_root']!r}")
        kernel = c.get("kernel")
        if any(b in baselines for b in ("kernel", "kernel_noise")) and kernel is None:
            if not c.get("kernel_file"):
                raise ValueError("baseline=kernel|kernel_noise needs kernel_file= a fitted kernel file "
                                 "(python -m degflow fit-kernel data=... out=kernel.pt)")
            kernel = load_kernel_file(c["kernel_file"])
        if "kernel_noise" in baselines and kernel.noise is None:
            raise ValueError(f"baseline=kernel_noise: the kernel file holds no noise model "
                             f"({(kernel.provenance.get('fit') or {}).get('noise', 'fitted without one')})")
        check_int(c["procedural_seed"], "procedural_seed")
        check_positive_int(c["max_scales"], "max_scales", allow_none=True)   # null: no limit
        requested = expand_scales(c["scales"], "scales")
        _check_scale_count(requested, c["max_scales"])
        if c["layout"] not in LAYOUTS:
            raise ValueError(f"layout={c['layout']!r} is not one of {list(LAYOUTS)}")
        if c["layout"] == "toolbox":
            fractional = [scale_label(v) for v in requested if not float(v).is_integer()]
            if fractional:
                raise ValueError(f"layout=toolbox: BasicSR's paired dataset and LIIF's paired folders need integer "
                                 f"scales (HR = LR x s exactly), got {', '.join('x' + f for f in fractional)}; see "
                                 f"docs/TOOLBOXES.md for non-integer scales")
            if c["size"] != "lr":
                raise ValueError(f"layout=toolbox writes LR at true size (HR = LR x s): use size=lr, not size={c['size']}")
        noise = Path(c["noise"]) if c.get("noise") else None
        strength = check_number(c.get("strength", 1.0), "strength", low=0.0)
        samples = check_positive_int(c.get("samples", 1), "samples")
        noise_seed = check_int(c.get("noise_seed", 0), "noise_seed")
        return cls(scales=requested, size=c["size"], hr_size_output=c["hr_size_output"], batch_size=c["batch_size"],
                   allow_extrapolation=c["allow_extrapolation"], shard=c["shard"], num_shards=c["num_shards"],
                   baselines=baselines, baseline_lr_root=root, procedural_seed=c["procedural_seed"],
                   max_scales=c["max_scales"], progress=c["progress"], layout=c["layout"], noise=noise,
                   strength=strength, samples=samples, noise_seed=noise_seed,
                   kernel=kernel if any(b in baselines for b in ("kernel", "kernel_noise")) else None)


#: The settings of :class:`SynthesisSpec` as config keys (``baseline``: the list of baselines).
SPEC_KEYS = ("scales", "size", "hr_size_output", "batch_size", "allow_extrapolation", "shard", "num_shards",
              "baseline", "baselines", "baseline_lr_root", "procedural_seed", "max_scales", "progress", "layout",
              "noise", "strength", "samples", "noise_seed", "kernel_file", "kernel")


def toolbox_multiple(scales: Sequence[float]) -> int:
    """``layout=toolbox``: HR images are cropped (top-left, bottom / right rows dropped, like BasicSR's
    ``mod_crop``) to a multiple of this, the least common multiple of the integer scales, so that
    HR = LR x s exactly at every scale and one ``HR/`` folder serves them all."""
    m = 1
    for v in scales:
        m = math.lcm(m, int(v))
    return m


def write_lr_dataset(
    synth: Synthesizer,
    input_dir: str | Path,
    out_dir: str | Path,
    scales: Any = None,
    *,
    spec: SynthesisSpec | None = None,
    after_image: Callable[[str], None] | None = None,
    writer_thread: bool | None = None,
    on_start: Callable[[], None] | None = None,
    **options: Any,
) -> FolderSummary:
    """Turn a folder of HR images into an SR training set at every scale.

    Layout under ``out_dir`` (``name`` = the source's path under ``input_dir``, subfolders
    kept, suffix ``.png``; label = the scale without trailing zeros, ``x2``, ``x2.25``)::

        HR/name.png                        the source as PNG, at its own size
        LR/x{label}/name.png               size=lr|both: true LR size round(H/s) x round(W/s)
                                           size=hr: HR pixel size (RealSR convention)
        LR_hrsize/x{label}/name.png        size=both: HR pixel size
        baselines/{bicubic|procedural|ae_interp}/LR[_hrsize]/x{label}/name.png   same layout
        samples/{k}/LR[_hrsize]/x{label}/name.png   noise=: stochastic sample k = 0..samples-1 (same layout;
                                           LR/ keeps the deterministic LR)
        manifest.jsonl                     one JSON line per output file
        failed.jsonl                       {"file", "error"} per failure of this run
        synthesis.json                     generation settings (checkpoint, solver, tiling)

    With ``num_shards > 1`` the manifest and failure files are ``manifest.shard{i}-of-{n}.jsonl``
    and ``failed.shard{i}-of-{n}.jsonl``; a source belongs to shard ``sha256(name) % n``.

    All or nothing per image: everything that can be checked (the file decodes, every
    requested scale leaves an LR image of at least 1x1 pixel, ``ae_interp`` finds its real LR
    images) is checked and every output is generated before the first file of the image is
    written; a write that fails (or is interrupted) removes the files of the image written
    so far. An image thus has all its outputs and their manifest lines, or none.

    Resumable: every file is written to a temporary name and renamed; the manifest gets the
    lines of an image in one append after its files. An output counts as done when its file
    exists and a manifest line records it; an image whose outputs are all done is skipped.
    At start, stale manifest lines (file deleted), duplicates and a partial last line are
    dropped; output files of this shard without a manifest line (an image cut short by a
    SIGKILL) and temporary files of killed writes (``.*.tmp``) are removed.

    One bad image never stops the run: errors are recorded in the summary and the failure
    file. Configuration errors (no images, out inside input, scales outside the trained range
    without ``allow_extrapolation``, more than ``max_scales`` scales, ...) raise ``ValueError``;
    an out folder that cannot be created or written raises ``OSError``.

    Args:
        synth: the model (its tiling, solver and precision are used as they are).
        scales, options: the job's settings (:class:`SynthesisSpec`, checked once by
            :meth:`SynthesisSpec.create`; defaults from ``conf/synthesize.yaml``), or
        spec: a ready :class:`SynthesisSpec` (then no ``scales`` / ``options``).
        after_image: called with the source name after each image is complete (tests use it
            to simulate a kill).
        writer_thread: write an image's files in a background thread while the next batch
            is generated (at most one batch in flight; the same files and manifest lines);
            None: when the model runs on a GPU.
        on_start: called once every check has passed, before the first output is written
            (a run refused before it is called has written nothing but ``synthesis.json``).

    One writer per folder: the job holds the lock of ``out_dir`` for its shard
    (:class:`~degflow.infra.locks.FolderLock`); another writer of the same shard (or of an
    overlapping one) is refused with :class:`~degflow.infra.locks.FolderLocked` (an OSError)
    naming the holder. Manifest lines carry a checksum; a damaged line is dropped on resume
    and its image made again. A damaged ``synthesis.json`` stops the job (ValueError).
    """
    started = time.perf_counter()
    if spec is None:
        spec = SynthesisSpec.create(scales, **options)
    elif scales is not None or options:
        raise ValueError("write_lr_dataset: give either spec= or scales and settings, not both")
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    scales, baselines, lr_root = spec.scales, spec.baselines, spec.baseline_lr_root
    if "ae_interp" in baselines:
        if synth.train_scales is None:
            raise ValueError("baseline=ae_interp needs a Synthesizer that knows its training scales (from_checkpoint)")
        absent = [scale_key(s) for s in synth.train_scales[1:] if not (lr_root / scale_key(s)).is_dir()]
        if absent:
            raise ValueError(f"baseline=ae_interp needs the real LR images of every training scale, but "
                             f"baseline_lr_root={str(lr_root)!r} has no folder {', '.join(absent)} "
                             f"(layout: x{{scale}}/name.png)")
    times = synth.scale_times(scales, spec.allow_extrapolation)  # the one scale -> t conversion; refuses out-of-range scales now
    _check_folders(input_dir, out_dir)
    sources = find_images(input_dir)
    if not sources:
        raise ValueError(f"input={str(input_dir)!r} holds no images (searched recursively for "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    names = _output_names(sources, input_dir, flat=spec.layout == "toolbox")
    size, hr_size_output, shard, num_shards = spec.size, spec.hr_size_output, spec.shard, spec.num_shards
    procedural_seed = spec.procedural_seed

    settings = {
        "checkpoint_sha256": synth.checkpoint_sha256, "solver": asdict(synth.solver), "precision": synth.precision,
        "tile_size": synth.tile_size, "tile_overlap": synth.tile_overlap,
        "LR_folder": "HR pixel size" if size == "hr" else "true LR size",
    }
    if size != "lr":
        settings["hr_size_output"] = hr_size_output
    if spec.layout != "degflow":
        settings["layout"] = spec.layout
    if "procedural" in baselines or "kernel_noise" in baselines:
        settings["procedural_seed"] = procedural_seed
    if spec.kernel is not None:
        settings["kernel"] = {"sha256": (spec.kernel.provenance.get("file") or {}).get("sha256"),
                              "data_fingerprint": spec.kernel.fingerprint}
    noise = None
    if spec.noise is not None:   # a resume refuses another noise model, strength, sample count or seed
        noise = StochasticOption.load(spec.noise, spec.strength, checkpoint_sha256=synth.checkpoint_sha256)
        settings.update({k: v for k, v in noise.record(spec.noise_seed, spec.samples).items() if k != "noise_fitted_for"})
    # one writer per out folder and shard; a run refused before it writes leaves no new folder behind
    with FolderLock(out_dir, f"shard{shard}-of-{num_shards}", "synthesis out folder", create=True):
        return _write_folder(synth, input_dir, out_dir, spec, times, sources, names, settings, started,
                             after_image, on_start, writer_thread, noise)


def _write_folder(synth: Synthesizer, input_dir: Path, out_dir: Path, spec: SynthesisSpec, times: ScaleTimes,
                  sources: list[Path], names: dict[Path, str], settings: dict[str, Any], started: float,
                  after_image: Callable[[str], None] | None, on_start: Callable[[], None] | None,
                  writer_thread: bool | None, noise: StochasticOption | None = None) -> FolderSummary:
    """:func:`write_lr_dataset` once its settings are known and its out folder is held."""
    from degflow.infra.console import progress_bar

    scales, baselines, lr_root = spec.scales, spec.baselines, spec.baseline_lr_root
    size, hr_size_output, shard, num_shards = spec.size, spec.hr_size_output, spec.shard, spec.num_shards
    multiple = toolbox_multiple(scales) if spec.layout == "toolbox" else 1
    _check_settings(out_dir, settings)
    suffix = "" if num_shards == 1 else f".shard{shard}-of-{num_shards}"
    manifest, failed_file = out_dir / f"manifest{suffix}.jsonl", out_dir / f"failed{suffix}.jsonl"
    recorded = _recorded_outputs(out_dir, manifest)

    sizes = {"lr": ("lr",), "hr": ("hr",), "both": ("lr", "hr")}[size]
    items: list[_Item] = []
    own = {manifest, failed_file} | ({out_dir / _SETTINGS_FILE} if num_shards == 1 else set())
    for path in sources:
        source = path.relative_to(input_dir).as_posix()
        if not _in_shard(source, shard, num_shards):
            continue
        name = names[path]
        outputs = [_Output("hr", "hr", 1.0, f"HR/{name}")]
        sets = [("degflow", "", None), *((b, f"baselines/{b}/", None) for b in baselines),
                *(("stochastic", f"samples/{k}/", k) for k in range(spec.samples if noise is not None else 0))]
        for kind, prefix, sample in sets:
            for s in scales:
                for sz in sizes:
                    folder = "LR" if sz == "lr" or size == "hr" else "LR_hrsize"
                    outputs.append(_Output(kind, sz, s, f"{prefix}{folder}/{scale_key(s)}/{name}", sample))
        own.update(out_dir / o.rel for o in outputs)
        items.append(_Item(path, source, name,
                           [o for o in outputs if not (o.rel in recorded and (out_dir / o.rel).is_file())]))
    _remove_leftovers(out_dir, items, None if num_shards == 1 else own)
    if not items:
        log.info("shard %d of %d holds none of the %d input images", shard, num_shards, len(sources))
    todo = [it for it in items if it.pending]
    if on_start is not None:
        on_start()

    bar = progress_bar(requested=spec.progress, total=len(todo), unit="img", desc="synthesize")
    job = _FolderJob(synth, out_dir, times, baselines, lr_root, spec.procedural_seed,
                     manifest, failed_file, bar, after_image, hr_size_output,
                     writer_thread=synth.device.type == "cuda" if writer_thread is None else writer_thread,
                     noise=noise, noise_seed=spec.noise_seed, samples=spec.samples, kernel=spec.kernel)
    groups: dict[tuple[int, int], list[_Item]] = {}
    for item in todo:                           # batches of equal size, sized from the file headers
        try:
            w, h = read_image_size(item.path)
        except (ImageReadError, OSError) as err:
            job.fail(item, err, count=True)
            continue
        groups.setdefault((h, w), []).append(item)
    try:
        with graceful():            # a stop signal ends the job between batches, never inside an image
            for group in groups.values():
                for k in range(0, len(group), spec.batch_size):
                    stop_point()
                    loaded: dict[tuple[int, ...], list[tuple[_Item, torch.Tensor]]] = {}
                    for item in group[k:k + spec.batch_size]:
                        try:
                            x = _crop_to_multiple(read_image(item.path), multiple)
                        except (ImageReadError, OSError, ValueError) as err:
                            job.fail(item, err, count=True)
                            continue
                        loaded.setdefault(tuple(x.shape), []).append((item, x))
                    for pairs in loaded.values():
                        job.run([it for it, _ in pairs], torch.stack([x for _, x in pairs]))
        job.close()
    except BaseException:
        job.close(abandon=True)   # images being written are finished (files + manifest lines), then stop
        raise
    bar.close()
    if spec.layout == "toolbox":
        _write_meta_info(out_dir)
    if not job.failures:
        failed_file.unlink(missing_ok=True)
    summary = FolderSummary(
        images=len(items), processed=job.processed, skipped=len(items) - len(todo),
        failed=len({f["file"] for f in job.failures}), outputs_written=job.written,
        seconds=time.perf_counter() - started, failures=job.failures, manifest=str(manifest),
        failed_file=str(failed_file) if job.failures else "",
    )
    log.info("synthesis: %s", summary.line())
    return summary


def _crop_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x [3, H, W]`` cropped to the largest multiple of ``multiple`` per side (top-left kept)."""
    if multiple == 1:
        return x
    h, w = x.shape[-2:]
    if h < multiple or w < multiple:
        raise ValueError(f"layout=toolbox: a {w}x{h} image is smaller than {multiple} pixels, the least common "
                         "multiple of the scales its HR is cropped to")
    return x[..., : h - h % multiple, : w - w % multiple]


def _write_meta_info(out_dir: Path) -> None:
    """BasicSR's meta information file of the HR images written so far: ``name.png (H,W,3)`` per line,
    sorted (each shard rewrites it when it ends; the last one to end lists every image)."""
    lines = []
    for path in sorted((out_dir / "HR").glob("*.png")) if (out_dir / "HR").is_dir() else []:
        if path.name.startswith("."):
            continue
        w, h = read_image_size(path)
        lines.append(f"{path.name} ({h},{w},3)\n")
    atomic_write_text(out_dir / META_INFO, "".join(lines))


def _check_scale_count(scales: Sequence[float], max_scales: int | None) -> None:
    if max_scales is None:
        return
    count = len(scales)
    if count > max_scales:
        raise ValueError(
            f"scales: {count} scales requested ({scale_label(min(scales))} to {scale_label(max(scales))}), "
            f"more than max_scales={max_scales}; every scale is one more LR file per image and output folder "
            f"({count} per image here). If that is intended, confirm it with max_scales={count} (or "
            f"max_scales=null); otherwise request fewer scales (a larger scales.step)"
        )


def _remove_leftovers(out_dir: Path, items: list[_Item], own: set[Path] | None) -> None:
    """Remove what killed runs left behind: temporary files of interrupted writes and the
    output files of images cut short between their first file and their manifest lines
    (pending outputs whose file exists). ``own``: the files this job may touch (its shard's
    outputs and files); None: everything under ``out_dir`` is this job's (one shard)."""
    temps = [p for p in out_dir.glob(".*.tmp") if p.is_file()]
    for sub in _MANAGED:
        if (out_dir / sub).is_dir():
            temps += [p for p in (out_dir / sub).rglob(".*.tmp") if p.is_file()]
    removed_temps = 0
    for tmp in temps:
        target = temp_target(tmp)
        if target is not None and (own is None or target in own):
            tmp.unlink(missing_ok=True)
            removed_temps += 1
    orphans = [out_dir / o.rel for item in items for o in item.pending if (out_dir / o.rel).is_file()]
    for path in orphans:
        path.unlink(missing_ok=True)
    if removed_temps or orphans:
        log.info("removed %d temporary files of interrupted writes and %d outputs without a manifest line "
                 "(images cut short by a kill; they are generated again)", removed_temps, len(orphans))


def _recorded_outputs(out_dir: Path, manifest: Path) -> set[str]:
    """Outputs recorded in any manifest of ``out_dir`` (whole lines only). This job's own manifest
    is cleaned first: lines of deleted files, duplicates, a partial last line (a kill mid-append)
    and damaged lines (their checksum does not hold) are dropped, atomically; their outputs are
    then made again."""
    own, dropped = _read_manifest(manifest)
    stale = [o for o in own if not (out_dir / o).is_file()]
    if dropped or stale:
        for o in stale:
            del own[o]
        atomic_write_text(manifest, "".join(line + "\n" for line in own.values()))
        (log.warning if dropped else log.info)(
            "manifest %s: dropped %d duplicate, cut or damaged line(s) and the lines of %d deleted outputs; "
            "those outputs are made again", manifest.name, dropped, len(stale))
    recorded = set(own)
    for other in out_dir.glob("manifest*.jsonl"):
        if other != manifest:
            recorded |= set(_read_manifest(other)[0])
    return recorded


class _FolderJob:
    """The generating and writing half of :func:`write_lr_dataset` (one per run)."""

    def __init__(self, synth: Synthesizer, out_dir: Path, times: ScaleTimes, baselines: tuple[str, ...],
                 lr_root: Path | None, seed: int, manifest: Path, failed_file: Path, bar,
                 after_image: Callable[[str], None] | None, hr_size_output: str = "decoded",
                 writer_thread: bool = False, noise: StochasticOption | None = None, noise_seed: int = 0,
                 samples: int = 1, kernel: KernelDegradation | None = None):
        self.synth, self.out_dir, self.times = synth, out_dir, times
        self.noise, self.noise_seed, self.samples = noise, noise_seed, samples
        self.scales = list(times)
        self.hr_size_output = hr_size_output
        self.baselines, self.lr_root, self.seed = baselines, lr_root, seed
        self.kernel = kernel
        self.manifest, self.failed_file, self.bar, self.after_image = manifest, failed_file, bar, after_image
        self.solver = asdict(synth.solver)
        self.failures: list[dict[str, str]] = []
        self.processed = self.written = 0
        atomic_write_text(failed_file, "")                  # failures of this run only
        # the writer thread: files of one batch are written while the next batch is generated
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="lr-writer") if writer_thread else None
        self.in_flight: list[tuple[_Item, Future]] = []

    def fail(self, item: _Item, err: BaseException, count: bool = False) -> None:
        """Record a failure of ``item``; ``count`` advances the progress bar (item given up)."""
        record = {"file": item.source, "error": f"{type(err).__name__}: {err}"}
        self.failures.append(record)
        log.error("%s: %s", item.source, record["error"])
        try:
            append_lines(self.failed_file, [json.dumps(record)])
        except OSError as write_err:        # a full disk: the summary and the exit status still say it
            log.error("could not record that failure in %s: %s", self.failed_file.name,
                      write_err.strerror or write_err)
        if count:
            self.bar.update(1)

    def run(self, batch: list[_Item], hr: torch.Tensor) -> None:
        """Check, generate and write a same-size batch ``hr [B, 3, H, W]``. An image that fails a
        check or its writes gets no output; a failed generation is retried image by image, so
        one bad image fails alone."""
        checked: list[int] = []
        real: dict[int, dict[float, torch.Tensor]] = {}
        for b, item in enumerate(batch):
            try:
                found = self._check(item, hr[b])
            except (ImageReadError, ValueError, OSError) as err:
                self.fail(item, err, count=True)
                continue
            if found is not None:
                real[len(checked)] = found
            checked.append(b)
        if not checked:
            return
        batch, hr = [batch[b] for b in checked], hr[checked]
        try:
            results = self._generate(batch, hr, real)
        except Exception as err:  # noqa: BLE001 - one bad image must not stop the run
            if len(batch) == 1:
                self.fail(batch[0], err, count=True)
                return
            log.warning("batch of %d failed (%s: %s); retrying image by image", len(batch), type(err).__name__, err)
            for i, item in enumerate(batch):
                self.run([item], hr[i:i + 1])
            return
        self.drain()                                         # the previous batch's files are written
        for b, item in enumerate(batch):
            if self.writer is not None:
                self.in_flight.append((item, self.writer.submit(self._commit, item, self._render(item, hr, b, results))))
                continue
            try:
                self._commit(item, self._render(item, hr, b, results))
            except Exception as err:  # noqa: BLE001 - the image's files are removed, the run goes on
                self._written(item, err)
                continue
            self._written(item, None)

    def _written(self, item: _Item, err: BaseException | None) -> None:
        """Bookkeeping once the files of ``item`` are written (``err``: why they are not)."""
        if err is not None:
            self.fail(item, err, count=True)
            return
        self.processed += 1
        self.bar.update(1)
        self.bar.set_postfix(written=self.written, failed=len(self.failures), refresh=False)
        if self.after_image is not None:
            self.after_image(item.source)

    def drain(self) -> None:
        """Wait for the writer thread's images, in order, and do their bookkeeping."""
        while self.in_flight:
            item, future = self.in_flight.pop(0)
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - the image's files are removed, the run goes on
                self._written(item, err)
                continue
            self._written(item, None)

    def close(self, abandon: bool = False) -> None:
        """Finish every write and stop the writer thread; ``abandon``: after an error or an
        interruption, wait for the writes under way without further bookkeeping."""
        if abandon:
            self.in_flight.clear()
        try:
            self.drain()
        finally:
            if self.writer is not None:
                self.writer.shutdown(wait=True)

    def _check(self, item: _Item, hr: torch.Tensor) -> dict[float, torch.Tensor] | None:
        """Everything about image ``hr [3, H, W]`` that can fail before generation: an LR image
        of at least 1x1 pixel at every requested scale, and the real LR images of ``ae_interp``
        (returned, or None when no ``ae_interp`` output is pending). Raises ValueError."""
        h, w = hr.shape[-2:]
        for s in self.scales:
            lr_size(h, w, s)
        if any(o.kind == "ae_interp" for o in item.pending):
            return _load_real_lr(self.lr_root, item, self.synth.train_scales[1:], hr)
        return None

    def _generate(self, batch: list[_Item], hr: torch.Tensor, real: dict[int, dict[float, torch.Tensor]]
                  ) -> dict[str, tuple[SynthesisResult, dict[int, int]]]:
        """The model outputs of a checked batch: ``{kind: (result, {image index: row of the result})}``."""
        synth = self.synth
        results: dict[str, tuple[SynthesisResult, dict[int, int]]] = {}
        needed = sorted({o.scale for it in batch for o in it.pending if o.kind in ("degflow", "stochastic")})
        if needed:
            result = synth.generate(hr, self.times, decode=needed)
            results["degflow"] = (result, {b: b for b in range(len(batch))})
        if real:
            rows = sorted(real)
            stacked = {s: torch.stack([real[b][s] for b in rows]) for s in synth.train_scales[1:]}
            result = synth.interpolate_real(hr[rows], stacked, self.times)
            results["ae_interp"] = (result, {b: i for i, b in enumerate(rows)})
        return results

    def _render(self, item: _Item, hr: torch.Tensor, b: int,
                results: dict[str, tuple[SynthesisResult, dict[int, int]]]
                ) -> Iterator[tuple[_Output, torch.Tensor, dict[str, Any]]]:
        """Every pending output of image ``b`` as ``(output, image [3, h, w], manifest entry)``,
        one at a time (a paper-size image at 30 scales would not fit in memory three times over);
        anything that can fail for a reason known in advance was checked by :meth:`_check`."""
        degraded: dict[float, tuple[torch.Tensor, int, float]] = {}     # procedural: scale -> (LR, seed, s)
        sampled: dict[tuple[float, int], tuple[torch.Tensor, torch.Tensor, int]] = {}   # (scale, k) -> (LR, noisy, seed)
        true_size: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}                  # scale -> (LR, HR at LR size)
        height, width = hr.shape[-2:]
        for out in item.pending:
            entry: dict[str, Any] = {"source": item.source, "output": out.rel, "kind": out.kind, "size": out.size,
                                     "scale": out.scale, "t": self.times.get(out.scale), "solver": None, "nfe": 0,
                                     "seconds": 0.0}
            if out.kind == "hr":
                image = hr[b]
                entry["t"] = 0.0
            elif out.kind == "bicubic":
                image = resize_to_lr(hr[b], out.scale) if out.size == "lr" else bicubic_baseline(hr[b], out.scale)
                entry["t"] = None
            elif out.kind == "procedural":
                if out.scale not in degraded:
                    seed = procedural.procedural_seed(self.seed, item.name[: -len(".png")], out.scale)
                    start = time.perf_counter()
                    lr = procedural.realesrgan(hr[b], out.scale, seed=seed, size="lr")
                    degraded[out.scale] = (lr, seed, time.perf_counter() - start)
                lr, seed, seconds = degraded[out.scale]
                image = lr if out.size == "lr" else upsample_to(lr, height, width)   # = degrade(size="hr")
                entry.update(t=None, seed=seed, seconds=seconds)
            elif out.kind == "stochastic":                  # noise at true LR size on the deterministic LR
                result, rows = results["degflow"]
                decoded = result.images[out.scale][rows[b]]
                key = (out.scale, out.sample)
                if key not in sampled:
                    if out.scale not in true_size:          # the deterministic LR and the HR at LR size, once per scale
                        lr = resize_to_lr(decoded, out.scale)
                        true_size[out.scale] = (lr, resize_to_lr(hr[b][None].to(lr.device, lr.dtype), out.scale))
                    lr, ref = true_size[out.scale]
                    seed = self.noise.seeds(self.noise_seed, [item.name[: -len(".png")]], out.scale, out.sample)[0]
                    sampled[key] = (lr, self.noise.sample(lr[None], out.scale, [seed], hr=ref)[0], seed)
                lr, noisy, seed = sampled[key]
                image = noisy if out.size == "lr" else noisy_at_hr_size(decoded[None], lr[None], noisy[None], out.scale,
                                                                       self.hr_size_output)[0]
                entry.update(nfe=result.nfe, tiles=result.tiles, seconds=result.seconds / len(rows), solver=self.solver,
                             sample=out.sample, seed=seed, **self.noise.record(self.noise_seed, self.samples))
            elif out.kind in ("kernel", "kernel_noise"):
                noisy = out.kind == "kernel_noise"
                seed = kernel_noise_seed(self.seed, item.name[: -len(".png")], out.scale) if noisy else None
                start = time.perf_counter()
                lr = self.kernel.degrade(hr[b], out.scale, noise_strength=1.0 if noisy else 0.0,
                                         generator=torch.Generator().manual_seed(seed) if noisy else None)
                image = lr if out.size == "lr" else upsample_to(lr, height, width)
                entry.update(t=None, seconds=time.perf_counter() - start,
                             kernel_sha256=(self.kernel.provenance.get("file") or {}).get("sha256"),
                             **({"seed": seed} if noisy else {}))
            else:
                result, rows = results[out.kind]
                image = result.images[out.scale][rows[b]]
                entry.update(nfe=result.nfe, tiles=result.tiles, seconds=result.seconds / len(rows))
                if out.kind == "degflow":
                    entry["solver"] = self.solver
                if out.size == "lr":
                    image = resize_to_lr(image, out.scale)
                else:
                    image = lr_at_hr_size(image, out.scale, self.hr_size_output)
            entry.update(height=int(image.shape[-2]), width=int(image.shape[-1]),
                         checkpoint_sha256=self.synth.checkpoint_sha256, degflow_version=__version__)
            yield out, image, entry

    def _commit(self, item: _Item, rendered: Iterable[tuple[_Output, torch.Tensor, dict[str, Any]]]) -> None:
        """Write the files of one image, then append their manifest lines at once. A failure or
        an interruption before the lines are appended removes the files written so far."""
        written: list[Path] = []
        lines: list[str] = []
        try:
            for out, image, entry in rendered:
                write_image(self.out_dir / out.rel, image)
                written.append(self.out_dir / out.rel)
                lines.append(checked_line(entry))
            append_lines(self.manifest, lines)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        item.pending = []
        self.written += len(lines)
