"""Convert the authors' released DegFlow weights into a self-contained degflow LFM checkpoint.

    python -m degflow.convert_official ae=path/autoencoder.pth flow=path/flow.pth out=degflow_lfm.pt
    python -m degflow.convert_official ... rae_out=degflow_rae.pt   # also a stage-1 (RAE) checkpoint

The result loads with :meth:`degflow.generation.Synthesizer.from_checkpoint` and
``synthesize.py ckpt=...``: any scale, any solver, CPU, tiling, shards.

What the source files are (read from the authors' code, present091/DegFlow): their checkpoint
callbacks ``torch.save`` plain dicts, the autoencoder as ``{"encoder", "decoder", "t_params"}``
and the flow model as ``{"model": NCSNpp.state_dict()}`` (see :mod:`degflow.models.official`).
When the authors train with an EMA, their callback saves the EMA weights under ``"model"``, so
there is nothing else to pick. Assumed and handled beyond that: state dicts whose every key
carries a ``torch.compile`` (``_orig_mod.``) or DataParallel (``module.``) prefix (stripped,
and said so), half or double precision tensors (cast to float32, said so). A PyTorch Lightning
training checkpoint (``{"state_dict": ...}``) is refused with a message: the authors' own
loaders read only the plain files above.

Conversion is a renaming (every tensor keeps its shape and values) and it is strict: every
missing, unexpected, mis-shaped, non-float or non-finite tensor of either file is listed in
one :class:`ConversionError`, and nothing is written unless everything matches. Sources are
read with ``torch.load(..., weights_only=True)`` (files from the internet cannot run code), and
their sha256 goes into the output (``extra.official``).

Knot times: the autoencoder file's ``t_params`` hold sigmoid-logits of the x2 and x3 times (x1
is t=0, x4 is t=1; the authors' defaults -/+0.693 give 0.33337 and 0.66663). The flow was
trained on the knots x1, x2, x4 (``train_scales [1, 2, 4]``, x3 held out); the stored time map
goes through all four anchors, so x3 maps to sigmoid(LR3) as in the authors' validation.
``time_map=nominal`` uses ``t = (s - 1) / 3`` instead (the authors' generation script).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from degflow import __version__
from degflow.core.losses import LossSettings
from degflow.core.solvers import SolverSpec
from degflow.core.timemap import TimeMap
from degflow.infra.checkpoint import save_checkpoint
from degflow.infra.digests import describe_load_error
from degflow.infra.files import file_sha256
from degflow.models.official import (
    AE_TOP_KEYS,
    FLOW_TOP_KEYS,
    T_PARAM_KEYS,
    UNUSED_FLOW_KEYS,
    rae_key_map,
    velocity_key_map,
)
from degflow.models.rae import RAE
from degflow.models.registry import model_entry
from degflow.models.unet import VelocityUNet

__all__ = ["ConversionError", "ConversionReport", "TIME_MAPS", "convert_official", "load_official", "main"]

#: Values of ``time_map`` (config key ``time_map``).
TIME_MAPS: tuple[str, ...] = ("t_params", "nominal")
#: The authors' training knots (x3 held out) and the RealSR test scales.
TRAIN_SCALES: tuple[float, ...] = (1.0, 2.0, 4.0)
VAL_SCALES: tuple[float, ...] = (2.0, 3.0, 4.0)
#: Wrapper prefixes stripped when every key of a state dict carries one.
_WRAPPER_PREFIXES: tuple[str, ...] = ("_orig_mod.", "module.")


class ConversionError(ValueError):
    """A source file is unreadable or does not hold exactly the expected tensors."""


@dataclass
class ConversionReport:
    """What :func:`convert_official` wrote and read."""

    out: Path
    rae_out: Path | None
    sources: dict[str, dict[str, Any]]
    time_map: TimeMap
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{k}: {s['path']} (sha256 {s['sha256']})" for k, s in self.sources.items()]
        out.append("time map: " + ", ".join(f"x{s:g} -> t={t:.5f}"
                                           for s, t in zip(self.time_map.scales, self.time_map.times)))
        out += [f"note: {n}" for n in self.notes]
        out.append(f"wrote {self.out}" + (f" and {self.rae_out}" if self.rae_out else ""))
        return out


# ------------------------------------------------------------------------------ reading
def _flatten(obj: Any, top_keys: tuple[str, ...], key: str, path: Path,
             problems: list[str], notes: list[str]) -> dict[str, Any]:
    """The file's outer dict as flat ``{"top.name": value}``; layout problems go to ``problems``."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{key}={str(path)!r} holds a {type(obj).__name__}, expected a dict with "
                              f"the entries {list(top_keys)} (the authors' released format)")
    if "state_dict" in obj and not any(k in obj for k in top_keys):
        raise ConversionError(
            f"{key}={str(path)!r} looks like a PyTorch Lightning training checkpoint ({{'state_dict': "
            f"...}}); this converter reads the authors' released weight files, dicts with the entries "
            f"{list(top_keys)} (what their checkpoint callbacks save and their generate.py loads)")
    flat: dict[str, Any] = {}
    for top in top_keys:
        if top not in obj:
            problems.append(f"{key}: missing entry {top!r} (expected entries {list(top_keys)})")
    for top, value in obj.items():
        if top not in top_keys:
            problems.append(f"{key}: unexpected entry {top!r} (expected entries {list(top_keys)})")
            continue
        if not isinstance(value, Mapping):
            problems.append(f"{key}: entry {top!r} is a {type(value).__name__}, expected a dict of tensors")
            continue
        names = [str(n) for n in value]
        for prefix in _WRAPPER_PREFIXES:
            if names and all(n.startswith(prefix) for n in names):
                notes.append(f"{key}: stripped the prefix {prefix!r} from every name in {top!r}")
                value = {str(n)[len(prefix):]: v for n, v in value.items()}
                break
        flat.update({f"{top}.{n}": v for n, v in value.items()})
    return flat


def load_official(path: str | Path, top_keys: tuple[str, ...], key: str,
                  problems: list[str], notes: list[str]) -> dict[str, Any]:
    """Read one of the authors' files safely (``weights_only=True``) as a flat name -> value dict.

    Args:
        path: the file.
        top_keys: its expected outer entries (:data:`AE_TOP_KEYS` or :data:`FLOW_TOP_KEYS`).
        key: the config key that named the file (``ae`` or ``flow``), quoted in messages.
        problems, notes: lists that collect layout problems and remarks.
    Raises:
        ConversionError: missing or unreadable file, or not a dict at all.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{key}={str(path)!r}: no such file")
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise ConversionError(f"{key}={str(path)!r} is an HTML page, not a weight file (a Google Drive "
                              f"download that saved the confirmation page? download the file itself)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or pickling objects weights_only refuses
        raise ConversionError(
            f"{key}={str(path)!r} could not be read with torch.load(weights_only=True) (corrupt, "
            f"truncated, or not a plain weight file): {describe_load_error(err)}") from None
    return _flatten(obj, top_keys, key, path, problems, notes)


def _check(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], optional: tuple[str, ...],
           key: str, problems: list[str], notes: list[str]) -> None:
    """Every name of ``expected`` present as a finite float tensor of that shape, nothing else."""
    missing = [n for n in expected if n not in flat]
    unexpected = [n for n in flat if n not in expected and n not in optional]
    problems += [f"{key}: missing tensor {n} {list(expected[n])}" for n in missing]
    problems += [f"{key}: unexpected tensor {n}" + (f" {list(flat[n].shape)}" if torch.is_tensor(flat[n]) else "")
                 for n in unexpected]
    cast: set[str] = set()
    for name, shape in expected.items():
        value = flat.get(name)
        if value is None:
            continue
        if not torch.is_tensor(value) or not value.is_floating_point():
            what = str(value.dtype) if torch.is_tensor(value) else type(value).__name__
            problems.append(f"{key}: {name} is {what}, expected a float tensor of shape {list(shape)}")
        elif tuple(value.shape) != tuple(shape):
            problems.append(f"{key}: shape mismatch for {name}: file {list(value.shape)}, "
                            f"expected {list(shape)}")
        elif not bool(torch.isfinite(value).all()):
            problems.append(f"{key}: {name} holds NaN or infinite values")
        elif value.dtype != torch.float32:
            cast.add(str(value.dtype).replace("torch.", ""))
    if cast:
        notes.append(f"{key}: cast {', '.join(sorted(cast))} tensors to float32")


# ------------------------------------------------------------------------------ models
def _build(cls: type, node: Mapping[str, Any], key: str) -> torch.nn.Module:
    """Our model from a config node, on the meta device (weights come from the file)."""
    node = dict(node)
    target = node.pop("_target_", f"{cls.__module__}.{cls.__qualname__}")
    if target != f"{cls.__module__}.{cls.__qualname__}":
        raise ConversionError(f"{key}._target_ must be {cls.__module__}.{cls.__qualname__} to take the "
                              f"authors' weights, got {target!r}")
    try:
        with torch.device("meta"):
            return cls(**node)
    except TypeError as err:  # unknown or missing constructor arguments
        raise ConversionError(f"{key}: {err}") from None


def _load(model: torch.nn.Module, key_map: Mapping[str, str], flat: Mapping[str, Any]) -> None:
    weights = {ours: flat[theirs].detach().to(torch.float32).contiguous() for theirs, ours in key_map.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    model.eval()


def _knot_times(flat: Mapping[str, Any], problems: list[str]) -> tuple[float, float] | None:
    """sigmoid of the x2 and x3 logits, which must satisfy 0 < t2 < t3 < 1."""
    values = [flat.get(n) for n in T_PARAM_KEYS]
    if not all(torch.is_tensor(v) and v.numel() == 1 and v.is_floating_point() for v in values):
        return None  # already listed by _check
    t2, t3 = (1.0 / (1.0 + math.exp(-float(v.double()))) for v in values)
    if not 0.0 < t2 < t3 < 1.0:
        problems.append(f"ae: t_params give knot times x2 -> {t2:.6g}, x3 -> {t3:.6g}; expected "
                        f"0 < t(x2) < t(x3) < 1")
        return None
    return t2, t3


# ------------------------------------------------------------------------------ conversion
def convert_official(
    ae: str | Path,
    flow: str | Path,
    out: str | Path,
    rae_out: str | Path | None = None,
    rae_config: Mapping[str, Any] | None = None,
    velocity_config: Mapping[str, Any] | None = None,
    solver: SolverSpec | None = None,
    time_map: str = "t_params",
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
) -> ConversionReport:
    """Convert the authors' two files into a degflow LFM checkpoint (and optionally an RAE one).

    Args:
        ae, flow: the authors' autoencoder and flow-model files.
        out: the LFM checkpoint to write; ``rae_out``: an RAE-only checkpoint (optional).
        rae_config, velocity_config: our architectures (``model/rae=paper`` and
            ``model/lfm=paper`` when None); the files' shapes must match them exactly.
        solver: the solver stored as the checkpoint's default (``extra.solver``; dopri5 with
            the authors' RK45 tolerances 1e-5 when None).
        time_map: ``"t_params"`` (knot times from the autoencoder file) or ``"nominal"``.
        overwrite: replace existing output files (refused otherwise).
        config: the plain run config, stored as the checkpoint's ``config``.
    Raises:
        ConversionError: unreadable sources, or (all listed at once) every missing,
            unexpected, mis-shaped, non-float or non-finite tensor; nothing is written.
        ValueError: bad arguments (time map, existing outputs, architectures).
    """
    if time_map not in TIME_MAPS:
        raise ValueError(f"time_map={time_map!r} is not one of {list(TIME_MAPS)}")
    out = Path(out)
    rae_out = None if rae_out in (None, "") else Path(rae_out)
    ae, flow = Path(ae), Path(flow)
    _check_outputs(out, rae_out, (ae, flow), overwrite)
    solver = solver or SolverSpec.create("dopri5")
    rae = _build(RAE, rae_config or {}, "model.rae")
    velocity = _build(VelocityUNet, velocity_config or {}, "model.lfm")
    try:
        rae_map, velocity_map = rae_key_map(rae), velocity_key_map(velocity)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    rae_shapes, velocity_shapes = rae.state_dict(), velocity.state_dict()

    problems: list[str] = []
    notes: list[str] = []
    ae_flat = load_official(ae, AE_TOP_KEYS, "ae", problems, notes)
    flow_flat = load_official(flow, FLOW_TOP_KEYS, "flow", problems, notes)
    ae_expected = {theirs: tuple(rae_shapes[ours].shape) for theirs, ours in rae_map.items()}
    ae_expected.update({n: () for n in T_PARAM_KEYS})
    flow_expected = {theirs: tuple(velocity_shapes[ours].shape) for theirs, ours in velocity_map.items()}
    _check(ae_flat, ae_expected, (), "ae", problems, notes)
    _check(flow_flat, flow_expected, UNUSED_FLOW_KEYS, "flow", problems, notes)
    knots = _knot_times(ae_flat, problems)
    if problems:
        raise ConversionError(
            f"refusing to convert: {len(problems)} problem(s) with the source files (nothing written; "
            f"model/rae and model/lfm must describe the authors' architectures, default: paper):\n  "
            + "\n  ".join(problems))
    assert knots is not None
    dropped = [n for n in UNUSED_FLOW_KEYS if n in flow_flat]
    if dropped:
        notes.append(f"flow: dropped {', '.join(dropped)} (not used by the velocity function)")

    _load(rae, rae_map, ae_flat)
    _load(velocity, velocity_map, flow_flat)
    t2, t3 = knots
    tmap = (TimeMap((1.0, 2.0, 3.0, 4.0), (0.0, t2, t3, 1.0)) if time_map == "t_params"
            else TimeMap.nominal(TRAIN_SCALES))
    train_times = list(tmap.knot_times(TRAIN_SCALES))
    sources = {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in (("ae", ae), ("flow", flow))}
    official = {
        "sources": sources,
        "t_params": {n.split(".", 1)[1]: float(ae_flat[n]) for n in T_PARAM_KEYS},
        "time_map": time_map,
        "notes": list(notes),
        "converter": f"degflow {__version__} degflow.jobs.convert_official",
    }
    rae_entry = model_entry(rae)
    plain_config = dict(config) if config is not None else {
        "ae": str(ae), "flow": str(flow), "out": str(out), "rae_out": None if rae_out is None else str(rae_out),
        "time_map": time_map, "solver": solver.to_dict()}
    common = {"step": 0, "optimizer": None, "scheduler": None, "rng": None, "config": plain_config,
              "overrides": [], "train_scales": list(TRAIN_SCALES), "time_map": tmap.to_dict()}
    lfm_payload = {
        **common, "kind": "lfm",
        "models": {"rae": rae_entry, "velocity": model_entry(velocity)},
        "knot_state": None,  # training-resume state (like optimizer, rng): a conversion has none
        "extra": {
            "spline": {"path": "cubic", "knots": "times", "effective_scales": None,
                       "knot_times": train_times, "learn_knots": False},
            "loss": _authors_loss(),
            "solver": solver.to_dict(),
            "rae_source": {"path": str(ae), "sha256": sources["ae"]["sha256"], "step": None},
            "val_scales": list(VAL_SCALES),
            "official": official,
        },
    }
    # RAE first: a failure while writing never leaves an LFM file without its RAE twin
    if rae_out is not None:
        save_checkpoint(rae_out, {**common, "kind": "rae", "models": {"rae": rae_entry},
                                  "extra": {"data": "the authors' released autoencoder (RealSR)",
                                            "val_scales": list(VAL_SCALES), "official": official}})
    save_checkpoint(out, lfm_payload)
    return ConversionReport(out, rae_out, sources, tmap, notes)


def _check_outputs(out: Path, rae_out: Path | None, sources: tuple[Path, ...], overwrite: bool) -> None:
    """Outputs never replace a source file, each other, or (without ``overwrite``) any file."""
    if rae_out is not None and rae_out.resolve() == out.resolve():
        raise ValueError(f"rae_out and out name the same file {str(out)!r}")
    for k, p in (("out", out), ("rae_out", rae_out)):
        if p is None:
            continue
        if p.resolve() in {s.resolve() for s in sources}:
            raise ValueError(f"{k}={str(p)!r} is one of the source files; choose another output path")
        if p.exists() and not overwrite:
            raise ValueError(f"{k}={str(p)!r} exists; choose another path or set overwrite=true")


def _authors_loss() -> dict[str, Any]:
    """The authors' stage-2 loss settings (lambda 0.1, third-order Taylor), as a plain dict."""
    return asdict(LossSettings(lpips_weight=0.1, taylor_order=3, segment_weighting="none"))
