"""This rank's rows of each global batch, in the order ``alphaexa.parallel`` trains them.

The data stream (``alphaexa.data``) defines global batch ``s`` as the ``global_batch``
samples at stream positions ``[(s-1) * global_batch, s * global_batch)``.  The parallel
train step defines which rows of that batch a data rank trains and in which micro-step
(``alphaexa.parallel.local_rows``: micro-step m is the m-th block of consecutive rows,
split over the data ranks), which makes every micro-step the same set of samples whatever
the number of data ranks.  ``StepLoader`` reads exactly those rows: sample ids of the
whole global batch are computed (cheap, a keyed permutation of integers) but only this
rank's token windows are read.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..data import Batch, PackedSamples, TrainLoader, validation_batches
from ..data.loader import _to_batch
from ..data.sampler import ResumableSampler


class StepLoader(TrainLoader):
    """A ``TrainLoader`` over the global stream (dp size 1 for its position, so the saved state
    fits any layout) that yields only ``rows`` of each global batch."""

    def __init__(self, samples: PackedSamples, global_batch: int, rows: np.ndarray, seed: int,
                 prefetch: int = 2, pin_memory: bool = False):
        super().__init__(samples, global_batch, dp_rank=0, dp_size=1, seed=seed, prefetch=prefetch,
                         pin_memory=pin_memory)
        self.rows = np.asarray(rows, dtype=np.int64)

    def _make(self, sampler: ResumableSampler) -> Batch:
        ids = sampler.next_local_ids()[self.rows]
        return _to_batch(self.samples.batch(ids), ids, sampler.consumed_samples, self.pin_memory)


def eval_batches(samples: PackedSamples, global_batch: int, rows: np.ndarray, max_batches: int) -> Iterator[Batch]:
    """The held-out split's first ``max_batches`` global batches (in order), this rank's ``rows`` of each."""
    for batch in validation_batches(samples, global_batch, 0, 1, max_batches=max_batches):
        yield Batch(batch.inputs[rows], batch.targets[rows], batch.sample_ids[rows], batch.consumed_samples)
