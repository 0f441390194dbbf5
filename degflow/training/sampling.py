"""Which training samples a step sees: a pure function of ``(seed, step)``.

The batch of step ``k`` does not depend on how the process got there (fresh, resumed after a
kill, requeued, how many DataLoader workers, which worker), so a resumed run sees exactly
the data the uninterrupted run saw:

- the sample *indices* of step ``k`` are positions ``k*B .. k*B+B-1`` of an endless stream
  made of one seeded permutation of ``range(dataset_len)`` per epoch (:func:`batch_indices`);
- every sample also gets its own *seed* from ``(seed, k, row)`` (:func:`sample_seed`); the
  training-crop dataset draws its crop and flip/rotation from a generator seeded with it.

Data-parallel training takes rows ``rank::world_size`` of the same global batch
(:func:`batch_keys`), so the samples, crops included, do not depend on the world size. The
loss's own per-row draws (a time t per row, a scale per row) come from :class:`RowDraws`, which
draws for the whole global batch and keeps this process's rows, so they do not depend on it
either; every other random draw of a step (dropout) comes from the global RNGs, seeded at the
start of the step from ``(seed, step, rank)`` (:func:`step_seed`).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from itertools import count

import numpy as np
import torch

from degflow.training.stop import ignore_stop_signals

# domain tags: the permutation of an epoch, the seed of one sample, the loss's row draws and a
# process's RNG during a step never share a stream
_EPOCH, _SAMPLE, _ROWS, _PROCESS = 0, 1, 2, 3


def derive_seeds(seed: int, tag: int, a: int, n: int = 1) -> list[int]:
    """``n`` 64-bit seeds from ``(seed, tag, a)`` (NumPy's SeedSequence hash; stable across
    versions; the first k of the ``n`` seeds do not depend on ``n``)."""
    words = [int(x) % 2**64 for x in (seed, tag, a)]
    return [int(x) for x in np.random.SeedSequence(words).generate_state(n, np.uint64)]


@lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, dataset_len: int) -> tuple[int, ...]:
    """The order in which epoch ``epoch`` visits ``range(dataset_len)``."""
    generator = torch.Generator().manual_seed(derive_seeds(seed, _EPOCH, epoch)[0])
    return tuple(torch.randperm(dataset_len, generator=generator).tolist())


def batch_indices(seed: int, step: int, dataset_len: int, batch_size: int) -> list[int]:
    """Dataset indices of the global batch of step ``step`` (0-based), ``[batch_size]``.

    Positions ``step*batch_size + r`` of the stream of epochs; a batch may straddle two epochs.
    """
    if dataset_len < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"batch_indices needs dataset_len >= 1, batch_size >= 1, step >= 0; got "
                         f"{dataset_len}, {batch_size}, {step}")
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, dataset_len)
        out.append(epoch_permutation(seed, epoch, dataset_len)[offset])
    return out


def sample_seed(seed: int, step: int, row: int) -> int:
    """Seed of the augmentation (crop, flip/rotation) of row ``row`` of step ``step``'s batch."""
    return derive_seeds(seed, _SAMPLE, step, row + 1)[row]


def batch_keys(seed: int, step: int, dataset_len: int, batch_size: int, rank: int = 0,
               world_size: int = 1) -> list[tuple[int, int]]:
    """``(index, sample seed)`` of rows ``rank::world_size`` of step ``step``'s global batch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    indices = batch_indices(seed, step, dataset_len, batch_size)
    seeds = derive_seeds(seed, _SAMPLE, step, batch_size)  # seeds[row] == sample_seed(seed, step, row)
    return [(indices[row], seeds[row]) for row in range(rank, batch_size, world_size)]


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the global RNGs of process ``rank`` during step ``step`` (0-based): the draws
    inside the networks (dropout) are then a pure function of ``(seed, step, rank)``, and the
    processes of a data-parallel job draw independent masks for their rows."""
    return derive_seeds(seed, _PROCESS, step, rank + 1)[rank]


class RowDraws:
    """The loss's random numbers per row of step ``step``'s global batch, this process's rows.

    Each call draws for all ``rows * world_size`` rows of the global batch from one generator
    seeded by ``(seed, step)`` and keeps rows ``rank::world_size`` (the rows
    :func:`batch_keys` gives this process), so a row gets the same number whatever the number
    of processes, and every process advances the generator alike. Draws are made on the CPU
    and moved to ``device``.
    """

    def __init__(self, seed: int, step: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        self._generator = torch.Generator().manual_seed(derive_seeds(seed, _ROWS, step)[0])

    def _mine(self, draws: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        return draws[self.rank::self.world_size].to(device)

    def rand(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[rows]`` uniform numbers in [0, 1) for this process's ``rows`` rows."""
        return self._mine(torch.rand(rows * self.world_size, generator=self._generator), device)

    def randint(self, high: int, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[rows]`` integers uniform in [0, high) for this process's ``rows`` rows."""
        return self._mine(torch.randint(high, (rows * self.world_size,), generator=self._generator), device)


class StepBatchSampler(torch.utils.data.Sampler):
    """Endless batches of :func:`batch_keys`, from step ``start_step`` on (a DataLoader batch_sampler)."""

    def __init__(self, seed: int, dataset_len: int, batch_size: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.seed, self.dataset_len, self.batch_size = int(seed), int(dataset_len), int(batch_size)
        self.start_step, self.rank, self.world_size = int(start_step), int(rank), int(world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in count(self.start_step):
            yield batch_keys(self.seed, step, self.dataset_len, self.batch_size, self.rank, self.world_size)


def train_batches(dataset, seed: int, start_step: int, batch_size: int, num_workers: int,
                  device: torch.device, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """The batches of steps ``start_step, start_step + 1, ...`` (dicts of tensors and names on ``device``);
    with ``world_size > 1``, this rank's rows ``rank::world_size`` of each global batch of ``batch_size``.

    ``dataset[(index, sample_seed)]`` must be a pure function of its key (see
    :class:`degflow.data.common.TrainCropDataset`); nothing here touches the global RNGs, so
    the loss's own random draws continue from the restored RNG state.
    """
    if len(dataset) < 1:
        raise ValueError("the training set is empty (data.samples_per_epoch must be >= 1)")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(seed, len(dataset), batch_size, start_step, rank, world_size),
        num_workers=num_workers, pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(derive_seeds(seed, _EPOCH, -1)[0]),  # not the global RNG
    )
    for batch in loader:
        yield {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
