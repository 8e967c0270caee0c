"""A deterministic, resumable, data-parallel sample order that survives changes of the dp size.

The order is one endless stream of sample ids: stream position ``p`` holds sample
``perm(seed, epoch)[p mod N]`` with ``epoch = p // N``, where ``perm`` is a seeded
pseudo-random permutation of the ``N`` samples.  Global step ``s`` consumes the
``global_batch`` consecutive positions that follow everything consumed before it,
and data-parallel rank ``r`` of ``dp`` takes the contiguous ``r``-th slice of
``global_batch / dp`` of them.  The whole state is therefore the number of
consumed positions (with the seed): resuming at another dp size, or even another
global batch, continues the same stream, so no sample is repeated or skipped.

The permutation is a keyed Feistel network with cycle walking: a bijection on
``[0, N)`` computed per index, vectorised, in O(1) memory, so a trillion-token
dataset needs no multi-gigabyte index array per rank.
"""
from __future__ import annotations

import numpy as np

from topology.modelcfg import ConfigError

from ..errors import UserError

_FEISTEL_ROUNDS = 6
_U64 = np.uint64


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast bijective scrambling of 64-bit words (wrapping arithmetic)."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


class IndexPermutation:
    """A seeded pseudo-random permutation of ``range(n)``, evaluated at any positions.

    ``streams`` (optional integers) key further independent permutations under the same seed and epoch."""

    def __init__(self, n: int, seed: int, epoch: int, *streams: int):
        if n < 1:
            raise ValueError("cannot permute an empty range")
        self.n = n
        half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
        self._half_bits = _U64(half_bits)
        self._mask = _U64((1 << half_bits) - 1)
        self._keys = np.random.default_rng([seed, epoch, *streams]).integers(
            0, np.iinfo(np.uint64).max, size=_FEISTEL_ROUNDS, dtype=np.uint64, endpoint=True)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half_bits, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (_mix64(right ^ key) & self._mask)
        return (left << self._half_bits) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        x = np.asarray(positions, dtype=np.uint64)
        if x.size and int(x.max()) >= self.n:
            raise IndexError(f"position {int(x.max())} outside a permutation of {self.n}")
        y = self._encrypt(x)
        # Cycle walking: the network permutes [0, 4^half_bits) >= n; re-encrypting the values
        # that fell outside [0, n) walks each one along its cycle to the next value inside.
        outside = y >= self.n
        while outside.any():
            y[outside] = self._encrypt(y[outside])
            outside = y >= self.n
        return y.astype(np.int64)


class ResumableSampler:
    """Sample ids for one data-parallel rank, global step after global step."""

    def __init__(self, num_samples: int, global_batch: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 consumed_samples: int = 0):
        if num_samples < 1:
            raise UserError("the dataset has no complete sample; it needs at least seq_len + 1 tokens")
        if global_batch < 1:
            raise ConfigError(f"train.global_batch={global_batch}: must be >= 1")
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ConfigError(f"data-parallel rank {dp_rank} of {dp_size}: need 0 <= rank < size")
        if global_batch % dp_size:
            raise ConfigError(f"train.global_batch={global_batch} is not divisible by the data-parallel "
                              f"size {dp_size}")
        if seed < 0:
            raise ConfigError(f"train.seed={seed}: must be >= 0")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.consumed_samples = consumed_samples
        self._permutations: dict[int, IndexPermutation] = {}

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.dp_size

    @property
    def epoch(self) -> int:
        return self.consumed_samples // self.num_samples

    def sample_ids(self, start: int, count: int) -> np.ndarray:
        """The samples at stream positions ``[start, start + count)``."""
        positions = np.arange(start, start + count, dtype=np.int64)
        epochs = positions // self.num_samples
        ids = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            ids[at] = self._permutation(int(epoch))(positions[at] % self.num_samples)
        return ids

    def _permutation(self, epoch: int) -> IndexPermutation:
        if epoch not in self._permutations:
            self._permutations = {epoch: IndexPermutation(self.num_samples, self.seed, epoch)}
        return self._permutations[epoch]

    def next_local_ids(self) -> np.ndarray:
        """This rank's sample ids for the next global step; advances past the whole global batch."""
        start = self.consumed_samples + self.dp_rank * self.local_batch
        ids = self.sample_ids(start, self.local_batch)
        self.consumed_samples += self.global_batch
        return ids

    def state_dict(self) -> dict:
        return {"seed": self.seed, "num_samples": self.num_samples, "consumed_samples": self.consumed_samples,
                "epoch": self.epoch, "consumed_in_epoch": self.consumed_samples % self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples:
            raise UserError(f"the data position was saved for {state['num_samples']} samples, this dataset has "
                            f"{self.num_samples}: resume with the same dataset and train.seq_len")
        check_saved_seed(self.seed, state["seed"])
        self.consumed_samples = int(state["consumed_samples"])


def check_saved_seed(seed: int, saved: int) -> None:
    if saved != seed:
        raise ConfigError(f"train.seed={seed} differs from the seed {saved} of the saved data position; "
                          f"resuming with another order would repeat and skip samples")
