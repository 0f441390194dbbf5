"""The boundary between Hydra and the library: resolvers and DictConfig -> plain Python.

Only entry points (``train.py``, ``synthesize.py``, ``python -m`` tools) import this module;
everything under ``degflow/`` below them receives plain dicts, dataclasses and numbers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def run_slug(override_dirname: str) -> str:
    """A run-directory name from Hydra's ``override_dirname``: same command, same folder.

    ``""`` -> ``"default"``; path separators become ``_``; very long names are shortened with
    a hash suffix so that they stay valid file names.
    """
    slug = override_dirname.replace("/", "_").replace("\\", "_") or "default"
    if len(slug) > 120:
        slug = slug[:100] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:12]
    return slug


def register_resolvers() -> None:
    """Register the ``${run_slug:...}`` resolver used in ``conf/config.yaml`` (idempotent)."""
    if not OmegaConf.has_resolver("run_slug"):
        OmegaConf.register_new_resolver("run_slug", run_slug)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolve a composed config into plain dicts/lists (``hydra`` node dropped)."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


def hoist_multirun_flag(argv: list[str]) -> list[str]:
    """Move ``-m``/``--multirun`` before the overrides so ``train.py stage=lfm -m a=1,2`` works.

    Hydra's argument parser only accepts overrides after its flags; researchers type the flag
    anywhere. Only this boolean flag is moved; everything else keeps its order.
    """
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    rest = [a for a in argv[1:] if a not in ("-m", "--multirun")]
    return [argv[0], *flags, *rest]
