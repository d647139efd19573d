"""The training micro-batches in step order, built (images decoded, text tokenised, patches cut) ahead of the step.

With workers > 0, DataLoader worker processes build the next batches while the model trains on the current one,
which pays where the step waits on a GPU or the records need image decoding. The batches are the same either way,
because `StepSampler` makes each one a pure function of (seed, step, micro-batch).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from torch.utils.data import DataLoader, Dataset

from .collate import Batch
from .records import PreferencePair


class StepBatches(Dataset):
    """Item k: micro-batch k of the run from step `start` on, i.e. (step start + k // accum, micro k % accum)."""

    def __init__(self, pairs: Sequence[PreferencePair], collate: Callable[[list[PreferencePair]], Batch], sampler,
                 start: int, max_steps: int):
        self.pairs, self.collate, self.sampler = pairs, collate, sampler
        self.first, self.count = start * sampler.accum, max(max_steps - start, 0) * sampler.accum

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> Batch:
        step, micro = divmod(self.first + k, self.sampler.accum)
        return self.collate([self.pairs[i] for i in self.sampler.indices(step, micro)])


def step_batches(pairs: Sequence[PreferencePair], collate: Callable[[list[PreferencePair]], Batch], sampler,
                 start: int, max_steps: int, workers: int) -> Iterator[Batch]:
    """Every micro-batch of steps start..max_steps-1, in order; `workers` processes build them ahead (0: inline)."""
    if workers < 0:
        raise ValueError(f"train.data_workers must be >= 0, got {workers}")
    batches = StepBatches(pairs, collate, sampler, start, max_steps)
    # batch_size=None: each item is already a whole micro-batch; an error in a worker (a bad record) is raised
    # again here with its message, which names the record.
    return iter(DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                           prefetch_factor=2 if workers else None))
