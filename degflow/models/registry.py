"""Models as checkpoint entries: class path, constructor config and weights, and back.

Only degflow's own model classes can be rebuilt from a checkpoint (the class path is checked
against this list; nothing is imported by name from a file).
"""

from __future__ import annotations

from typing import Any

import torch

from degflow.infra.checkpoint import CheckpointError
from degflow.models.rae import RAE
from degflow.models.unet import VelocityUNet


def model_entry(model: torch.nn.Module) -> dict[str, Any]:
    """The checkpoint entry of a model: its class path, constructor config and weights."""
    cls = type(model)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def build_model(entry: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a model from :func:`model_entry` output (only degflow model classes are allowed)."""
    allowed = {f"{c.__module__}.{c.__qualname__}": c for c in (RAE, VelocityUNet)}
    cls = allowed.get(entry.get("class"))
    if cls is None:
        raise CheckpointError(f"checkpoint names model class {entry.get('class')!r}; known: {sorted(allowed)}")
    model = cls(**entry["config"])
    model.load_state_dict(entry["state_dict"])
    return model
