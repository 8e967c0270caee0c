"""Fixed-length training samples from packed shards, the per-rank batch loader and validation batches.

Sample ``i`` of a split is the token window ``[i * seq_len, i * seq_len + seq_len + 1)``
of the split's stream (documents separated by EOS, packed back to back); inputs
are its first ``seq_len`` tokens and targets the last ``seq_len``.  Consecutive
windows share one token, so every token is a target exactly once.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from topology.modelcfg import ConfigError

from ..errors import UserError
from .sampler import ResumableSampler
from .shards import PackedTokens


class PackedSamples:
    """The ``seq_len + 1``-token samples of one split of a tokenized dataset."""

    def __init__(self, dataset: PackedTokens | str | Path, seq_len: int, split: str = "train"):
        if seq_len < 1:
            raise ConfigError(f"train.seq_len={seq_len}: must be >= 1")
        self.dataset = dataset if isinstance(dataset, PackedTokens) else PackedTokens(dataset)
        self.tokens = self.dataset.split(split)
        self.split = split
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (self.tokens.num_tokens - 1) // self.seq_len)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} outside the {len(self)} samples of the {self.split} split")
        return self.tokens.read(i * self.seq_len, self.seq_len + 1)

    def batch(self, sample_ids: np.ndarray) -> np.ndarray:
        """``[len(sample_ids), seq_len + 1]`` int64 tokens."""
        out = np.empty((len(sample_ids), self.seq_len + 1), dtype=np.int64)
        for row, i in enumerate(sample_ids):
            out[row] = self[int(i)]
        return out


@dataclass
class Batch:
    """One rank's share of one global batch."""

    inputs: Any  # torch.LongTensor [local_batch, seq_len]
    targets: Any  # torch.LongTensor [local_batch, seq_len], inputs shifted by one token
    sample_ids: np.ndarray  # which samples these rows are (for logs and tests)
    consumed_samples: int  # stream position after this global step (what a checkpoint records)


def _to_batch(tokens: np.ndarray, sample_ids: np.ndarray, consumed: int, pin_memory: bool) -> Batch:
    import torch

    window = torch.from_numpy(tokens)
    inputs, targets = window[:, :-1].contiguous(), window[:, 1:].contiguous()
    if pin_memory:
        inputs, targets = inputs.pin_memory(), targets.pin_memory()
    return Batch(inputs, targets, sample_ids, consumed)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class TrainLoader:
    """Endless training batches for one data-parallel rank, with background prefetch.

    ``next(loader)`` returns this rank's ``Batch`` of the next global step.  ``state_dict()``
    is the position after the last batch *returned* (prefetched batches do not count), so a
    checkpoint taken after step ``s`` resumes at step ``s + 1`` with any dp size.
    ``prefetch=0`` reads in the calling thread; ``prefetch=k`` keeps up to ``k`` batches ready
    in a background thread.  Call ``close()`` (or use ``with``) to stop the thread.
    """

    def __init__(self, samples: PackedSamples, global_batch: int, dp_rank: int = 0, dp_size: int = 1,
                 seed: int = 0, prefetch: int = 2, pin_memory: bool = False):
        if prefetch < 0:
            raise ConfigError(f"prefetch={prefetch}: must be >= 0")
        self.samples = samples
        self.sampler = ResumableSampler(len(samples), global_batch, dp_rank, dp_size, seed)
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def consumed_samples(self) -> int:
        return self.sampler.consumed_samples

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self.prefetch == 0:
            return self._make(self.sampler)
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        self.sampler.consumed_samples = item.consumed_samples
        return item

    def _make(self, sampler: ResumableSampler) -> Batch:
        ids = sampler.next_local_ids()
        return _to_batch(self.samples.batch(ids), ids, sampler.consumed_samples, self.pin_memory)

    def _start(self) -> None:
        ahead = ResumableSampler(self.sampler.num_samples, self.sampler.global_batch, self.sampler.dp_rank,
                                 self.sampler.dp_size, self.sampler.seed, self.sampler.consumed_samples)
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(ahead, self._queue, self._stop),
                                        name="alphaexa-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, sampler: ResumableSampler, out: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = self._make(sampler)
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
                item = _Failure(e)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return

    def close(self) -> None:
        """Stop and join the prefetch thread; the loader can be iterated again afterwards."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread, self._queue = None, None

    @property
    def prefetch_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> TrainLoader:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(), "dataset": self.samples.dataset.fingerprint,
                "seq_len": self.samples.seq_len, "global_batch": self.sampler.global_batch,
                "dp_size": self.sampler.dp_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the dp size and global batch may differ from the saver's."""
        if state["dataset"] != self.samples.dataset.fingerprint:
            raise UserError("the saved data position belongs to another dataset (content_sha256 "
                            f"{state['dataset'][:12]}, this one {self.samples.dataset.fingerprint[:12]})")
        if state["seq_len"] != self.samples.seq_len:
            raise ConfigError(f"train.seq_len={self.samples.seq_len} differs from the saved {state['seq_len']}; "
                              f"samples would not line up with the saved position")
        self.close()
        self.sampler.load_state_dict(state)


def validation_batches(samples: PackedSamples, global_batch: int, dp_rank: int = 0, dp_size: int = 1,
                       max_batches: int | None = None) -> Iterator[Batch]:
    """The held-out samples in order (no shuffling), as this rank's slice of each global batch.

    Every rank yields the same number of batches (full global batches only, so collectives stay
    matched), and the union over ranks is the same sample set for every dp size.
    """
    if global_batch % dp_size:
        raise ConfigError(f"eval batch {global_batch} is not divisible by the data-parallel size {dp_size}")
    count = len(samples) // global_batch
    if count == 0:
        raise UserError(f"the {samples.split} split has {len(samples)} samples of {samples.seq_len + 1} tokens, "
                        f"fewer than one eval batch of {global_batch}: use a larger --val-fraction or smaller batch")
    if max_batches is not None:
        count = min(count, max_batches)
    return _validation_iter(samples, global_batch, dp_rank, global_batch // dp_size, count)


def _validation_iter(samples: PackedSamples, global_batch: int, dp_rank: int, local: int, count: int):
    for step in range(count):
        ids = np.arange(step * global_batch + dp_rank * local, step * global_batch + (dp_rank + 1) * local)
        yield _to_batch(samples.batch(ids), ids, (step + 1) * global_batch, pin_memory=False)
