"""Checkpoint I/O: atomic saves (:mod:`degflow.infra.files`), untrusted-safe loads, one documented format.

A degflow checkpoint is a plain dict of tensors and plain containers (no pickled classes),
so it loads with ``torch.load(..., weights_only=True)``:

    {
      "format": "degflow", "format_version": 1, "kind": "rae" | "lfm" | "noise" | "kernel",
      "degflow_version": str,
      "step": int,
      "models": {name: {"class": "degflow.models.rae.RAE", "config": {...}, "state_dict": {...}}},
      "optimizer": state_dict | None, "scheduler": state_dict | None,
      "rng": {"torch": ByteTensor, "cuda": [ByteTensor] , "numpy": {...}, "python": [...]},
      "train_scales": [1.0, 2.0, 4.0],
      "time_map": {"scales": [...], "times": [...]} | None,
      "config": the run's resolved config as plain dicts,
      "extra": {...}  # stage-specific plain data (spline settings, metrics ...)
    }

Everything a later stage needs (architecture arguments, training scales, the scale-to-time
map) is written here once, never re-derived from YAML.

Every checkpoint is sealed with the sha256 of its content (:mod:`degflow.infra.digests`) and
every load verifies it first: a damaged file is refused (:class:`CheckpointError`, one line
naming the file) before anything is read from it. A file written before digests existed loads
with one warning (``python -m degflow checkpoint seal FILE`` adds the digest).

A *weights-only* stage-2 file (:func:`save_weights_only`) keeps what synthesis needs and nothing
that depends on where or when it was trained: ``models`` (``rae`` and ``velocity``: the EMA weights
when the run kept them), ``train_scales``, ``time_map``, ``step`` and ``extra`` (``spline``,
``solver``); no optimizer, RNG, config or version, so two runs with bitwise-equal weights give
files with the same digest. Shipped models are such files inside the package, named by
:data:`SHIPPED_MODELS` (``ckpt=demo``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from degflow import __version__
from degflow.infra.digests import FileDigest, damage_message, describe_load_error, file_digest, save_sealed

log = logging.getLogger(__name__)

FORMAT = "degflow"
FORMAT_VERSION = 1
KINDS = ("rae", "lfm", "noise", "kernel")   # noise: a fitted noise model (degflow/baselines/noise.py);
#                                             kernel: a fitted kernel baseline (degflow/baselines/kernel_baseline.py)

#: models shipped inside the package: a ``ckpt`` value -> its file (weights only, stage 2)
SHIPPED_MODELS = {"demo": Path(__file__).resolve().parents[1] / "assets" / "demo" / "model.pt"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, of another kind or of an unsupported version."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Atomically save a checkpoint dict (must already be plain tensors and containers), sealed
    with its digest; returns the digest (its ``checkpoint_sha256``)."""
    if payload.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {list(KINDS)}, got {payload.get('kind')!r}")
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "degflow_version": __version__, **payload}
    return save_sealed(path, full)


def resolve_checkpoint(path: str | Path) -> Path:
    """The file a ``ckpt`` value names: a shipped model's file for its name (:data:`SHIPPED_MODELS`,
    e.g. ``demo``), else ``path`` itself."""
    return SHIPPED_MODELS.get(str(path), Path(path))


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu",
                    key: str = "ckpt", *, with_digest: bool = False) -> dict[str, Any]:
    """Verify a degflow checkpoint's digest, load it safely (``weights_only=True``), check what it is.

    Args:
        path: checkpoint file.
        kind: expected ``"rae"`` or ``"lfm"`` (None accepts either).
        key: the config key that named this file, quoted in error messages.
        with_digest: return ``(checkpoint, FileDigest)``: the digest is the file's
            ``checkpoint_sha256`` (the sha256 of its content as written; for a file written
            before digests existed, the sha256 of the file).
    Raises:
        CheckpointError: missing file, damaged file (digest mismatch), unreadable/corrupt file,
            pickled objects beyond plain tensors, not a degflow checkpoint, unsupported format
            version, or a checkpoint of another kind. Always one line.
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r}: no such checkpoint file")
    try:
        found = file_digest(path)
    except OSError as err:
        raise CheckpointError(f"{key}={str(path)!r} cannot be read: {err.strerror or err}") from None
    if not found.intact:
        raise CheckpointError(damage_message(found, key))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt, truncated, or holding non-plain objects
        raise CheckpointError(f"{key}={str(path)!r} could not be read as a degflow checkpoint: "
                              f"{describe_load_error(err)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{key}={str(path)!r} is not a degflow checkpoint (expected a dict with format='degflow')"
        )
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{key}={str(path)!r} has checkpoint format version {version!r}; this degflow "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(
            f"{key}={str(path)!r} is a stage-{ckpt.get('kind')!r} checkpoint, expected a stage-{kind!r} "
            f"checkpoint ({'train one with `python train.py stage=' + kind + '`'})"
        )
    if not found.sealed:
        _warn_unsealed(found, key)
    return (ckpt, found) if with_digest else ckpt


def _warn_unsealed(found: FileDigest, key: str) -> None:
    log.warning("%s=%r carries no digest (written before degflow sealed checkpoints, or by another tool), so "
                "damage to it cannot be detected; seal it once: python -m degflow checkpoint seal %r",
                key, str(found.path), str(found.path))


def weights_only(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The weights-only payload (module docstring) of a loaded stage-2 checkpoint ``ckpt``."""
    if ckpt.get("kind") != "lfm":
        raise CheckpointError(f"only stage-2 (lfm) checkpoints have a weights-only form, got kind {ckpt.get('kind')!r}")
    models = ckpt["models"]
    extra = ckpt.get("extra") or {}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "lfm", "step": int(ckpt.get("step", 0)),
            "models": {"rae": models["rae"], "velocity": models.get("velocity_ema", models["velocity"])},
            "train_scales": list(ckpt["train_scales"]), "time_map": ckpt["time_map"],
            "extra": {k: extra[k] for k in ("spline", "solver") if k in extra}}


def save_weights_only(src: str | Path, dst: str | Path, key: str = "ckpt") -> str:
    """Write the weights-only form of the stage-2 checkpoint ``src`` to ``dst`` (atomically, sealed);
    returns its digest (``checkpoint_sha256``)."""
    payload = weights_only(load_checkpoint(src, kind="lfm", key=key))
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    return save_sealed(dst, payload)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python, as plain tensors/containers."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))


def checkpoint_progress(path: str | Path) -> tuple[str, int, int | None]:
    """``(kind, step, configured steps)`` of a checkpoint, read without loading its tensors.

    ``torch.load(mmap=True, weights_only=True)`` maps the file and unpickles only the plain
    containers; weights and optimizer state are never read. Raises :class:`CheckpointError`
    when the file is not a readable degflow checkpoint.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or ckpt.get("kind") not in KINDS:
        raise CheckpointError("not a degflow checkpoint")
    steps = ((ckpt.get("config") or {}).get("stage") or {}).get("steps")
    return ckpt["kind"], int(ckpt.get("step", 0)), None if steps is None else int(steps)


def find_latest_checkpoint(root: str | Path, kind: str, key: str = "ckpt") -> Path | None:
    """The ``last.pt`` of the newest *finished* run of stage ``kind`` under ``root`` (None if no run).

    Runs are laid out as ``{root}/.../checkpoints/last.pt``; kind, step and configured steps
    are read from each file (:func:`checkpoint_progress`, no weights loaded); "newest" is the
    file's modification time. Says what it picked and why; warns, naming them, about newer
    runs it passed over (unfinished or unreadable). Refuses (:class:`CheckpointError`, naming
    ``key``) when runs of that kind exist but none has finished: a half-trained stage is used
    only when the user names it.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    candidates = sorted(root.rglob("checkpoints/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    passed_over: list[str] = []
    for path in candidates:
        try:
            found, step, steps = checkpoint_progress(path)
        except CheckpointError as err:
            passed_over.append(f"{path}: {err}")
            continue
        if found != kind:
            continue
        if steps is None or step < steps:
            passed_over.append(f"{path}: unfinished (step {step}/{steps if steps is not None else '?'})")
            continue
        for line in passed_over:
            log.warning("%s not set: passed over the newer %s", key, line)
        log.info("%s not set: using %s, the newest finished stage-%r run (step %d/%d)", key, path, kind, step, steps)
        return path
    if not any("unfinished" in line for line in passed_over):
        for line in passed_over:
            log.warning("%s not set: passed over %s", key, line)
        return None
    raise CheckpointError(
        f"{key} is not set and no finished stage-{kind!r} run was found under {str(root)!r}; found:\n  "
        + "\n  ".join(passed_over)
        + f"\nFinish one (re-run the command that started it: it resumes), or pass {key}=<path to its last.pt> "
        "to use it as it is."
    )

