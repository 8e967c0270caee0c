"""Training batches from WebDataset shards tokenised in DataLoader worker processes.

Every rank reads the whole stream (``alphaexa.data.stream`` defines it) and keeps its
``rows`` of each global batch, so the stream -- and with it every global batch -- is the
same for any number of ranks and workers.  Workers take the shard visits of the stream
round-robin (visit ``t`` to worker ``t mod W``); torch's DataLoader hands their results
back in that same order, so the main process receives the shards in stream order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from topology.modelcfg import ConfigError

from ..data import Batch, load_tokenizer
from ..data.loader import _to_batch
from ..data.sampler import check_saved_seed
from ..data.stream import (
    WINDOW_BITS,
    SplitRule,
    shard_order,
    tokenize_shard,
    window_count,
    window_order,
    windows,
)
from ..errors import UserError


@dataclass
class _ShardVisit:
    epoch: int
    ordinal: int  # place of the shard in this epoch's order
    shard: int  # index into the shard list
    tokens: np.ndarray | None  # the shard's training documents, packed (None when reading failed)
    error: str = ""


def _next_visit(epoch: int, ordinal: int, num_shards: int) -> tuple[int, int]:
    return (epoch, ordinal + 1) if ordinal + 1 < num_shards else (epoch + 1, 0)


def _as_is(item):
    return item


class _ShardVisits(IterableDataset):
    """The endless sequence of shard visits from ``(epoch, ordinal)`` on, tokenised; worker ``w`` of
    ``W`` does visits ``w, w + W, ...``.  A shard that cannot be read ends the sequence with its error
    (a one-line message; an exception would reach the trainer as a multi-line worker traceback)."""

    def __init__(self, urls: list[str], tokenizer_spec: str, rule: SplitRule, seed: int, epoch: int, ordinal: int):
        self.urls, self.tokenizer_spec, self.rule, self.seed = urls, tokenizer_spec, rule, seed
        self.start = (epoch, ordinal)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        tokenizer = load_tokenizer(self.tokenizer_spec)
        epoch, ordinal = self.start
        order = shard_order(len(self.urls), self.seed, epoch)
        visit = 0
        while True:
            if visit % workers == worker:
                shard = int(order[ordinal])
                try:
                    tokens = tokenize_shard(self.urls[shard], tokenizer, self.rule)["train"]
                except UserError as e:
                    yield _ShardVisit(epoch, ordinal, shard, None, str(e))
                    return
                yield _ShardVisit(epoch, ordinal, shard, tokens)
            visit += 1
            next_epoch, ordinal = _next_visit(epoch, ordinal, len(self.urls))
            if next_epoch != epoch:
                epoch, order = next_epoch, shard_order(len(self.urls), self.seed, next_epoch)


class StreamStepLoader:
    """The ``StepLoader`` of a WebDataset stream: ``rows`` of each global batch, for this rank.

    State: ``consumed_samples`` (global positions) and the bookmark ``(epoch, shard_ordinal,
    shard_offset)`` of the next position, which the same data and seed always put at the same
    place; a resume reopens the stream at the bookmarked shard, with any dp size.
    """

    def __init__(self, urls: list[str], tokenizer_spec: str, rule: SplitRule, fingerprint: str, seq_len: int,
                 global_batch: int, rows: np.ndarray, seed: int, workers: int = 2, pin_memory: bool = False):
        self.urls, self.tokenizer_spec, self.rule, self.fingerprint = urls, tokenizer_spec, rule, fingerprint
        self.seq_len, self.global_batch, self.seed, self.workers = seq_len, global_batch, seed, workers
        self.rows = np.asarray(rows, dtype=np.int64)
        self.pin_memory = pin_memory
        self.consumed_samples = 0
        self.epoch, self.ordinal, self.offset = 0, 0, 0
        self._visits = None  # the DataLoader's iterator, opened at the bookmark on first use
        self._current: _ShardVisit | None = None
        self._order: np.ndarray | None = None  # the current shard's windows in visiting order

    def __iter__(self) -> StreamStepLoader:
        return self

    def __next__(self) -> Batch:
        picked = [self._take() for _ in range(self.global_batch)]
        mine = [picked[int(row)] for row in self.rows]
        tokens = np.stack([windows(visit.tokens, self.seq_len, np.asarray([w]))[0] for visit, w in mine])
        ids = np.asarray([(visit.shard << WINDOW_BITS) | w for visit, w in mine], dtype=np.int64)
        self.consumed_samples += self.global_batch
        return _to_batch(tokens, ids, self.consumed_samples, self.pin_memory)

    def _take(self) -> tuple[_ShardVisit, int]:
        """The next stream position: its shard visit and window; advances the bookmark."""
        empty: set[int] = set()
        while self._current is None:
            visit = self._receive()
            count = window_count(visit.tokens, self.seq_len)
            if count > self.offset:
                self._current = visit
                self._order = window_order(count, self.seed, visit.epoch, visit.shard)
                break
            empty.add(visit.shard)
            if len(empty) == len(self.urls):
                raise UserError(f"data.corpus: no shard holds a training sample of train.seq_len + 1 = "
                                f"{self.seq_len + 1} tokens")
            self._advance()
        taken = (self._current, int(self._order[self.offset]))
        self.offset += 1
        if self.offset == len(self._order):
            self._advance()
        return taken

    def _advance(self) -> None:
        self.epoch, self.ordinal = _next_visit(self.epoch, self.ordinal, len(self.urls))
        self.offset, self._current, self._order = 0, None, None

    def _receive(self) -> _ShardVisit:
        if self._visits is None:
            tasks = _ShardVisits(self.urls, self.tokenizer_spec, self.rule, self.seed, self.epoch, self.ordinal)
            self._visits = iter(DataLoader(tasks, batch_size=None, num_workers=self.workers, collate_fn=_as_is,
                                           prefetch_factor=2 if self.workers else None))
        visit = next(self._visits)
        if visit.error:
            self.close()
            raise UserError(visit.error)
        if (visit.epoch, visit.ordinal) != (self.epoch, self.ordinal):
            raise RuntimeError(f"shard visit {visit.epoch}:{visit.ordinal} arrived, expected "
                               f"{self.epoch}:{self.ordinal}")
        return visit

    def close(self) -> None:
        """Stop the worker processes; the stream reopens at the bookmark on the next batch."""
        visits, self._visits = self._visits, None
        del visits  # the DataLoader iterator shuts its workers down when it is released
        self._current, self._order = None, None

    def state_dict(self) -> dict:
        return {"seed": self.seed, "consumed_samples": self.consumed_samples, "epoch": self.epoch,
                "shard_ordinal": self.ordinal, "shard_offset": self.offset, "num_shards": len(self.urls),
                "source": self.fingerprint, "seq_len": self.seq_len, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a saved bookmark; the dp size and global batch may differ from the saver's."""
        if state["source"] != self.fingerprint:
            raise UserError("the saved data position belongs to another shard list, tokenizer or split rule "
                            "(resume with the data.corpus and data.tokenizer it was saved with)")
        if state["seq_len"] != self.seq_len:
            raise ConfigError(f"train.seq_len={self.seq_len} differs from the saved {state['seq_len']}; "
                              f"windows would not line up with the saved position")
        check_saved_seed(self.seed, state["seed"])
        self.close()
        self.consumed_samples = int(state["consumed_samples"])
        self.epoch, self.ordinal, self.offset = (int(state[k]) for k in ("epoch", "shard_ordinal", "shard_offset"))


__all__ = ["StreamStepLoader"]
