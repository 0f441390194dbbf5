"""Everything a training job needs that can be checked in seconds, checked before any work starts.

A stage-2 run that finds, after stage 1 and the latent cache, that the LPIPS backbone cannot be
loaded has wasted its time; :func:`check_prerequisites` looks first, and each refusal is one line
that says what is missing and how to provide it (a ``ValueError``: exit status 2 on the command
line). Checked, in this order:

1. the device (``device=cuda`` on a machine without CUDA);
2. that ``output_root`` can be written (without creating anything);
3. the data option's tree (its photos / ``data.root``; :func:`degflow.data.validate.check_data`,
   file headers only, the training and validation splits: a training job never opens a test file);
4. stage 2: the stage-1 checkpoint (``rae_ckpt``, or a finished RAE run under ``output_root``)
   unless the caller is about to train it, the LPIPS VGG backbone when ``loss.lpips_weight > 0``
   and the AlexNet backbone when validation reports LPIPS (``eval.lpips``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from degflow.data.validate import check_data
from degflow.infra.checkpoint import load_checkpoint
from degflow.infra.runtime import resolve_device
from degflow.metrics.perceptual import MissingLPIPSWeightsError, find_lpips_weights, lpips_weights_hint

__all__ = ["check_prerequisites", "check_writable"]


def check_writable(folder: str | Path, key: str) -> None:
    """ValueError (one line, naming ``key``) unless ``folder`` exists and is writable, or can be
    created: its nearest existing ancestor is a writable folder. Creates nothing."""
    path = Path(folder).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{key}={str(folder)!r} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={str(folder)!r} is not writable ({probe} refuses writes); choose another {key}")


def _lpips_backbone(net: str, weights: Any, key: str, why: str, off: str) -> None:
    try:
        find_lpips_weights(net, weights, key)
    except MissingLPIPSWeightsError:
        raise ValueError(f"{why} needs the LPIPS {'VGG' if net == 'vgg' else 'AlexNet'} backbone weights, not "
                         f"found: {lpips_weights_hint(net, key)}; or {off}") from None


def check_prerequisites(config: dict[str, Any], rae_will_exist: bool = False) -> None:
    """Check a plain training ``config`` (module docstring); ValueError with a one-line fix otherwise.

    ``rae_will_exist``: stage 2's ``rae_ckpt`` is the checkpoint a stage-1 run is about to write
    (the quick start checks both stages before training either), so it is not looked for.
    """
    resolve_device(config["device"])
    check_writable(config["output_root"], "output_root")
    report = check_data(config["data"], deep=False, roles=("train", "val"))   # never a test file
    if report.problems:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise ValueError(f"data: {report.problems[0]}{more}; python -m degflow check-data shows them all")
    if config["stage"]["name"] != "lfm":
        return
    if not rae_will_exist:
        from degflow.training.lfm import resolve_rae_checkpoint

        load_checkpoint(resolve_rae_checkpoint(config["rae_ckpt"], config["output_root"]), kind="rae", key="rae_ckpt")
    loss = config["loss"]
    if float(loss["lpips_weight"]) > 0:
        _lpips_backbone(loss["lpips_net"], loss["lpips_backbone_weights"], "loss.lpips_backbone_weights",
                        f"stage 2's LPIPS loss (loss.lpips_weight={loss['lpips_weight']})",
                        "train with the flow-matching loss alone: loss.lpips_weight=0")
    if config["eval"]["lpips"]:
        _lpips_backbone("alex", config["eval"]["lpips_backbone_weights"], "eval.lpips_backbone_weights",
                        "validation's LPIPS metric (eval.lpips=true)", "validate without it: eval.lpips=false")
