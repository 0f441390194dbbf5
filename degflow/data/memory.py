"""Decoded training images held in memory, so steady-state training decodes no PNG.

Datasets over files (``data=realsr``, ``data=paired``) read and decode every image a
training crop needs at every step. :func:`hold_in_memory` decodes each training record
once and keeps it as a :class:`~degflow.data.common.MemoryRecord` (float32, HR and every
training LR scale at HR size, 12 bytes per pixel per image) when the whole training set
fits in ``max_gib`` (config ``data_memory_gib``); otherwise it logs why and leaves the
records on disk. ``data=demo`` is built in memory already.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Sequence

from degflow.data.common import MemoryRecord

__all__ = ["decoded_bytes", "hold_in_memory", "in_memory_training_set"]

log = logging.getLogger(__name__)

BYTES_PER_PIXEL = 3 * 4  # RGB float32


def decoded_bytes(records: Sequence, scales: Sequence[float]) -> int:
    """Bytes the decoded HR + LR images (at HR size, float32) of ``records`` take."""
    return sum(r.hr_size[0] * r.hr_size[1] * BYTES_PER_PIXEL * (1 + len(scales)) for r in records)


def hold_in_memory(records: Sequence, scales: Sequence[float], max_gib: float) -> list:
    """``records`` with their images decoded once and held in memory, if they fit in
    ``max_gib`` GiB; the records unchanged otherwise (and when already in memory).

    Held records keep their file paths as ``source`` (the latent cache's fingerprint).
    """
    if max_gib < 0:
        raise ValueError(f"data_memory_gib must be >= 0 (0 = always read from disk), got {max_gib!r}")
    if all(isinstance(r, MemoryRecord) for r in records):
        return list(records)
    need = decoded_bytes(records, scales)
    if need > max_gib * 2**30:
        log.warning("training images need %.2f GiB decoded, more than data_memory_gib=%g: reading them "
                    "from disk at every step (raise data_memory_gib, or use num_workers to hide decoding)",
                    need / 2**30, max_gib)
        return list(records)
    t0 = time.perf_counter()
    held = []
    for r in records:
        hr, lr = r.load(scales)
        m = MemoryRecord(name=r.name, hr_image=hr, lr_images={s: lr[j] for j, s in enumerate(scales)})
        m.source = [r.hr, *(r.lr[s] for s in scales)]
        held.append(m)
    log.info("training images held in memory: %d records, %.2f GiB decoded in %.1fs (data_memory_gib=%g)",
             len(held), need / 2**30, time.perf_counter() - t0, max_gib)
    return held


def in_memory_training_set(dataset, max_gib: float):
    """A copy of a training-crop dataset (``records``, ``scales``) whose records are held in
    memory when they fit (:func:`hold_in_memory`); other datasets are returned unchanged."""
    if not hasattr(dataset, "records") or not hasattr(dataset, "scales"):
        return dataset
    records = hold_in_memory(dataset.records, dataset.scales, max_gib)
    if all(a is b for a, b in zip(records, dataset.records)):
        return dataset
    held = copy.copy(dataset)
    held.records = records
    return held
