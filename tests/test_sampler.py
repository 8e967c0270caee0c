"""The resumable data-parallel sampler and loader: exact coverage, elastic resume, prefetch, validation."""
import json
import threading

import numpy as np
import pytest
import torch

from alphaexa.data import (
    IndexPermutation,
    PackedSamples,
    PackedTokens,
    ResumableSampler,
    TrainLoader,
    tokenize_corpus,
    validation_batches,
)
from alphaexa.errors import UserError
from topology.modelcfg import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    docs = [f"Document {n}. " + "words and more words " * (n % 9 + 1) for n in range(300)]
    (root / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return tokenize_corpus([root / "c.jsonl"], root / "out", val_fraction=0.2, progress=False)


def _global_steps(num_samples, global_batch, dp_size, steps, seed=0, state=None):
    """Run every rank of a dp group for ``steps`` global steps; returns per-step id lists (rank order)
    and the state after them (identical on every rank)."""
    samplers = [ResumableSampler(num_samples, global_batch, r, dp_size, seed) for r in range(dp_size)]
    for s in samplers:
        if state is not None:
            s.load_state_dict(state)
    out = [np.concatenate([s.next_local_ids() for s in samplers]).tolist() for _ in range(steps)]
    states = [s.state_dict() for s in samplers]
    assert all(st == states[0] for st in states)
    return out, states[0]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4097])
def test_permutation_is_a_bijection_and_depends_on_seed_and_epoch(n):
    perm = IndexPermutation(n, seed=7, epoch=0)(np.arange(n))
    assert sorted(perm.tolist()) == list(range(n))
    assert perm.tolist() == IndexPermutation(n, seed=7, epoch=0)(np.arange(n)).tolist()
    if n >= 16:
        assert perm.tolist() != list(range(n))
        assert perm.tolist() != IndexPermutation(n, seed=8, epoch=0)(np.arange(n)).tolist()
        assert perm.tolist() != IndexPermutation(n, seed=7, epoch=1)(np.arange(n)).tolist()
        part = np.arange(3, n, 5)
        assert IndexPermutation(n, 7, 0)(part).tolist() == perm[part].tolist()  # any positions, any order


def test_union_over_ranks_of_a_step_is_the_global_batch():
    reference, _ = _global_steps(100, 8, 1, 6)
    for dp in (2, 4, 8):
        steps, state = _global_steps(100, 8, dp, 6)
        assert steps == reference
        assert state["consumed_samples"] == 48
    rank1 = ResumableSampler(100, 8, dp_rank=1, dp_size=4)
    rank1.next_local_ids()
    assert rank1.next_local_ids().tolist() == reference[1][2:4]  # rank r: the r-th contiguous slice


def test_every_epoch_covers_every_sample_exactly_once_across_epoch_boundaries():
    steps, _ = _global_steps(50, 8, 2, 25)  # 200 samples = 4 epochs, batches straddle the boundaries
    stream = [i for step in steps for i in step]
    for epoch in range(4):
        assert sorted(stream[epoch * 50:(epoch + 1) * 50]) == list(range(50))
    assert stream[:50] != stream[50:100]  # each epoch its own order


@pytest.mark.parametrize("first_dp,second_dp", [(4, 2), (2, 4), (4, 1), (1, 8)])
def test_elastic_resume_neither_repeats_nor_skips(first_dp, second_dp):
    uninterrupted, _ = _global_steps(60, 8, 1, 12, seed=5)
    head, state = _global_steps(60, 8, first_dp, 5, seed=5)
    assert state["epoch"] == 0 and state["consumed_in_epoch"] == 40
    tail, _ = _global_steps(60, 8, second_dp, 7, seed=5, state=state)
    assert head + tail == uninterrupted


def test_resume_with_another_global_batch_continues_the_same_stream():
    stream = [i for step in _global_steps(60, 4, 1, 30, seed=2)[0] for i in step]
    head, state = _global_steps(60, 8, 2, 3, seed=2)
    tail, _ = _global_steps(60, 12, 4, 4, seed=2, state=state)
    assert [i for step in head + tail for i in step] == stream[:72]


def test_sampler_rejects_inconsistent_settings():
    with pytest.raises(ConfigError, match="not divisible by the data-parallel size 3"):
        ResumableSampler(100, 8, 0, 3)
    with pytest.raises(ConfigError, match="rank 4 of 4"):
        ResumableSampler(100, 8, 4, 4)
    with pytest.raises(UserError, match="no complete sample"):
        ResumableSampler(0, 8)
    state = ResumableSampler(100, 8, seed=1).state_dict()
    with pytest.raises(ConfigError, match="differs from the seed 1"):
        ResumableSampler(100, 8, seed=2).load_state_dict(state)
    with pytest.raises(UserError, match="saved for 100 samples"):
        ResumableSampler(99, 8, seed=1).load_state_dict(state)


def test_samples_are_shifted_windows_of_the_packed_stream(dataset):
    samples = PackedSamples(dataset, seq_len=32)
    stream = dataset.split("train")
    assert len(samples) == (stream.num_tokens - 1) // 32
    with TrainLoader(samples, global_batch=4, prefetch=0, seed=3) as loader:
        batch = next(loader)
    assert batch.inputs.dtype == torch.int64 and batch.inputs.shape == (4, 32)
    for row, i in enumerate(batch.sample_ids):
        window = stream.read(int(i) * 32, 33)
        assert batch.inputs[row].tolist() == window[:-1].tolist()
        assert batch.targets[row].tolist() == window[1:].tolist()
    assert samples[1][0] == samples[0][-1]  # neighbouring windows share one token: each a target once


def _drain(loader, steps):
    batches = [next(loader) for _ in range(steps)]
    return [b.sample_ids.tolist() for b in batches], torch.cat([b.inputs for b in batches])


def test_prefetch_yields_the_same_batches_and_stops_cleanly(dataset):
    samples = PackedSamples(dataset, seq_len=16)
    threads_before = threading.active_count()
    plain = TrainLoader(samples, 8, dp_rank=1, dp_size=2, seed=4, prefetch=0)
    ahead = TrainLoader(samples, 8, dp_rank=1, dp_size=2, seed=4, prefetch=3)
    ids_plain, tokens_plain = _drain(plain, 10)
    ids_ahead, tokens_ahead = _drain(ahead, 10)
    assert ids_ahead == ids_plain and torch.equal(tokens_ahead, tokens_plain)
    assert ahead.prefetch_alive
    assert ahead.state_dict()["consumed_samples"] == 80  # returned batches only, not the prefetched ones
    assert ahead.state_dict() == plain.state_dict()
    ahead.close()
    assert not ahead.prefetch_alive and threading.active_count() == threads_before
    assert _drain(ahead, 2)[0] == _drain(plain, 2)[0]  # iterating again restarts from the position
    ahead.close()


def test_loader_state_resumes_elastically_with_identical_tokens(dataset):
    samples = PackedSamples(dataset, seq_len=16)
    reference = TrainLoader(samples, 8, seed=9, prefetch=2)
    _, expected = _drain(reference, 7)
    reference.close()
    first = [TrainLoader(samples, 8, r, 4, seed=9, prefetch=2) for r in range(4)]
    head = [_drain(loader, 3)[1] for loader in first]
    state = first[0].state_dict()
    for loader in first:
        loader.close()
    second = [TrainLoader(samples, 8, r, 2, seed=9, prefetch=2) for r in range(2)]
    for loader in second:
        loader.load_state_dict(state)
    tail = [_drain(loader, 4)[1] for loader in second]
    for loader in second:
        loader.close()
    # Global step s = the ranks' local rows of step s, in rank order (local batch 8/4 = 2, then 8/2 = 4).
    rows = [torch.cat([h[2 * s:2 * s + 2] for h in head]) for s in range(3)]
    rows += [torch.cat([t[4 * s:4 * s + 4] for t in tail]) for s in range(4)]
    assert torch.equal(torch.cat(rows), expected)


def test_loader_state_refuses_another_dataset_or_seq_len(dataset, tmp_path):
    samples = PackedSamples(dataset, seq_len=16)
    state = TrainLoader(samples, 4, prefetch=0).state_dict()
    with pytest.raises(ConfigError, match="seq_len=32 differs from the saved 16"):
        TrainLoader(PackedSamples(dataset, seq_len=32), 4, prefetch=0).load_state_dict(state)
    (tmp_path / "other.txt").write_text("different text " * 100)
    other = tokenize_corpus([tmp_path / "other.txt"], tmp_path / "o", val_fraction=0, progress=False)
    with pytest.raises(UserError, match="belongs to another dataset"):
        TrainLoader(PackedSamples(other, seq_len=16), 4, prefetch=0).load_state_dict(state)


class _FailingSamples(PackedSamples):
    """Real samples that start failing after a few batches, as a vanished file would."""

    def __init__(self, *args, fail_after):
        super().__init__(*args)
        self.calls = 0
        self.fail_after = fail_after

    def batch(self, sample_ids):
        self.calls += 1
        if self.calls > self.fail_after:
            raise OSError("shard disappeared")
        return super().batch(sample_ids)


def test_prefetch_thread_error_reaches_the_consumer(dataset):
    loader = TrainLoader(_FailingSamples(dataset, 16, fail_after=2), 4, prefetch=2)
    next(loader), next(loader)
    with pytest.raises(OSError, match="shard disappeared"):
        next(loader)
    assert not loader.prefetch_alive


def test_validation_batches_are_fixed_and_the_same_set_for_any_dp(dataset):
    val = PackedSamples(dataset, seq_len=16, split="val")
    single = [b.sample_ids.tolist() for b in validation_batches(val, 8)]
    assert [i for ids in single for i in ids] == list(range(len(val) // 8 * 8))
    pair = [validation_batches(val, 8, r, 2) for r in range(2)]
    for step, (a, b) in enumerate(zip(*pair)):
        assert a.sample_ids.tolist() + b.sample_ids.tolist() == single[step]
        assert a.targets[:, :-1].tolist() == a.inputs[:, 1:].tolist()
    assert len(list(validation_batches(val, 8, max_batches=2))) == 2
    with pytest.raises(UserError, match="fewer than one eval batch"):
        validation_batches(val, 10_000)


def test_packed_samples_need_a_known_split(dataset):
    with pytest.raises(UserError, match="has no 'test' split"):
        PackedSamples(dataset, 16, split="test")
    assert isinstance(PackedSamples(dataset.directory, 16).dataset, PackedTokens)
