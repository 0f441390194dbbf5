"""Where the project's YAML configuration lives (``conf/`` beside the package), and the defaults
that library code reads from it.

A setting's default has ONE home, its YAML file: the CLI composes Hydra configs from these
files, and the Python API reads the same defaults here (data options, the synthesis job and
its solver), so nothing is kept equal by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def read_yaml(relative: str) -> dict[str, Any]:
    """A config file under ``conf/`` as plain data (no interpolation; the files read this way hold none)."""
    path = CONF_DIR / relative
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping of settings")
    return data


def synthesis_defaults() -> dict[str, Any]:
    """The defaults of ``synthesize.py`` (``conf/synthesize.yaml``): the job's settings and,
    under ``"solver"``, the solver group's file with the job's overrides applied."""
    job = read_yaml("synthesize.yaml")
    group = next(d["solver"] for d in job.pop("defaults") if isinstance(d, dict) and "solver" in d)
    solver = {**read_yaml(f"solver/{group}.yaml"), **(job.pop("solver", None) or {})}
    job.pop("hydra", None)
    return {**job, "solver": solver}


def instantiate(node: dict[str, Any]) -> Any:
    """Build the object a config node's ``_target_`` names; bad values surface as their own ValueError."""
    try:
        return hydra_instantiate(node, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise err.__cause__ from None
        raise
