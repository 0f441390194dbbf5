"""What both stages' validation share: the validation items and the per-scale metric table."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from degflow.core.scales import scale_key
from degflow.data.transforms import crop_to_multiple
from degflow.infra.console import progress_bar
from degflow.metrics.image import EvalProtocol

__all__ = ["ScaleAverages", "validation_items"]

log = logging.getLogger(__name__)


def validation_items(dataset, max_images: int | None, device: torch.device,
                     protocol: EvalProtocol, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Validation items one at a time (full images differ in size), moved to ``device``,
    each tensor with a leading batch axis of 1; the images are cropped as ``protocol`` says
    (``eval.protocol``) before anything is generated.

    Shows a progress bar on a terminal (``progress`` and :func:`degflow.infra.console.interactive`);
    elsewhere logs a line when it starts and about every tenth of the images, so a long
    validation never looks hung in a log file.
    """
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    log.info("validating on %d image(s)", count)
    bar = progress_bar(requested=progress, iterable=range(count), desc="validation", unit="img", leave=False)
    every = max(1, count // 10)
    for i in bar:
        if bar.disable and i > 0 and i % every == 0:
            log.info("validation: %d/%d images done", i, count)
        item = dict(dataset[i])
        for key in ("hr", "lr"):
            item[key] = crop_to_multiple(item[key], protocol.multiple_of, anchor=protocol.crop)
        yield {k: v.to(device)[None] if torch.is_tensor(v) else v for k, v in item.items()}


class ScaleAverages:
    """Per-scale means of per-image metrics: the ``scales`` table of ``metrics.json``.

    ``add(scale, name=value, ...)`` once per image and scale, :meth:`image_done` after each
    image, then :meth:`table`. A metric in ``names`` that was never added at a scale (e.g. a
    baseline that does not exist at x1) is ``None`` in that scale's row.
    """

    def __init__(self, scales: Sequence[float], names: Sequence[str]):
        self.scales = tuple(float(s) for s in scales)
        self.names = tuple(names)
        self._sums: dict[float, dict[str, float]] = {s: {} for s in self.scales}
        self.images = 0

    def add(self, scale: float, **values: float) -> None:
        """Add one image's ``values`` (metric name -> number) at ``scale``."""
        row = self._sums[float(scale)]
        for name, value in values.items():
            if name not in self.names:
                raise KeyError(f"metric {name!r} is not among {list(self.names)}")
            row[name] = row.get(name, 0.0) + float(value)

    def image_done(self) -> None:
        self.images += 1

    def table(self, train_scales: Sequence[float]) -> dict[str, dict[str, Any]]:
        """``{scale_key: {name: mean or None, ..., "heldout": bool}}`` in scale order.

        Raises ValueError when no image was validated (an empty validation split).
        """
        if self.images == 0:
            raise ValueError("the validation set is empty (check the data config's validation split: "
                             "data.val_split / data.val_max_size)")
        train = {float(s) for s in train_scales}
        table = {}
        for s in self.scales:
            sums = self._sums[s]
            row: dict[str, Any] = {n: (sums[n] / self.images if n in sums else None) for n in self.names}
            row["heldout"] = s not in train
            table[scale_key(s)] = row
        return table
