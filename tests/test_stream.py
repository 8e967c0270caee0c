"""Streaming WebDataset shards: the order is fixed by the seed and the shards, whatever the dp size
and the number of tokenising workers; resume is exact (bitwise through ``alphaexa train`` on 2 gloo
ranks) and repeats or skips no sample at another dp size; pipe: sources; one-line errors.

Shards are real tar files written by webdataset's ShardWriter from the demo corpus, tokenised by
a SentencePiece model trained on it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds
from train_runs import copy_checkpoint_run, steps, train, train_command

from alphaexa.cli import main
from alphaexa.data import demo_corpus_documents, train_sentencepiece
from alphaexa.data.stream import (
    WINDOW_BITS,
    SplitRule,
    probe_shards,
    shard_documents,
    shard_urls,
    stream_fingerprint,
    tokenize_shard,
    window_count,
)
from alphaexa.errors import UserError
from alphaexa.parallel import local_rows
from alphaexa.train.stream_loader import StreamStepLoader

SEQ_LEN = 32
VOCAB = 512
RULE = SplitRule(val_fraction=0.1, seed=0)


def _write_shards(directory, documents, per_shard):
    """WebDataset shards of ``per_shard`` documents: even ones as .txt, odd ones as .json text fields."""
    directory.mkdir()
    with wds.ShardWriter(str(directory / "shard-%03d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, text in enumerate(documents):
            sink.write({"__key__": f"doc{i:05d}", "txt": text} if i % 2 == 0 else
                       {"__key__": f"doc{i:05d}", "json": {"text": text, "id": i}})
    return sorted(directory.glob("shard-*.tar"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 documents of at most 600 characters in 12 shards (~30 windows of 33 tokens each), and the
    SentencePiece tokenizer, saved as a directory as `alphaexa tokenize` would."""
    root = tmp_path_factory.mktemp("stream")
    texts = [text[:600] for _, text in demo_corpus_documents()[:60]]
    shards = _write_shards(root / "shards", texts, per_shard=5)
    tokenizer = train_sentencepiece(texts, VOCAB)
    tokenizer.save(root / "tokenizer")
    return {"root": root, "shards": shards, "pattern": str(root / "shards" / "shard-{000..011}.tar"),
            "tokenizer": tokenizer, "tokenizer_dir": root / "tokenizer"}


def _loader(corpus, urls, rows, global_batch=8, workers=0, state=None):
    loader = StreamStepLoader(urls, str(corpus["tokenizer_dir"]), RULE,
                              stream_fingerprint(urls, corpus["tokenizer"], RULE), SEQ_LEN, global_batch, rows,
                              seed=3, workers=workers)
    if state is not None:
        loader.load_state_dict(state)
    return loader


def _read(loader, count):
    batches = [next(loader) for _ in range(count)]
    state = loader.state_dict()
    loader.close()
    return batches, state


def test_stream_order_is_independent_of_dp_and_workers_and_resumes_exactly(corpus):
    urls = shard_urls([str(corpus["root"] / "shards" / "shard-00[0-2].tar")])  # a glob: 3 shards
    assert len(urls) == 3
    counts = {shard: window_count(tokenize_shard(url, corpus["tokenizer"], RULE)["train"], SEQ_LEN)
              for shard, url in enumerate(urls)}
    windows_per_epoch = sum(counts.values())
    total_steps = -(-3 * windows_per_epoch // 8)  # at least three epochs of the 3 shards

    straight, _ = _read(_loader(corpus, urls, np.arange(8), workers=2), total_steps)
    stream = np.concatenate([b.sample_ids for b in straight])
    # Every epoch visits every window of every shard exactly once (a batch may straddle epochs).
    every = sorted((shard << WINDOW_BITS) | w for shard, n in counts.items() for w in range(n))
    for epoch in range(3):
        assert sorted(stream[epoch * windows_per_epoch:(epoch + 1) * windows_per_epoch]) == every
    assert not np.array_equal(stream[:windows_per_epoch], stream[windows_per_epoch:2 * windows_per_epoch])

    # Stop mid-epoch on dp=1, continue on 2 data ranks (their rows of each batch) with 1 worker.
    cut = windows_per_epoch // 8 + 1
    _, state = _read(_loader(corpus, urls, np.arange(8)), cut)
    assert state["consumed_samples"] == 8 * cut and state["epoch"] == 1
    n_micro = 2
    ranks = [_read(_loader(corpus, urls, local_rows(8, n_micro, r, 2).numpy(), workers=1, state=state),
                   total_steps - cut)[0] for r in range(2)]
    for step in range(total_steps - cut):
        expected = straight[cut + step]
        for rank in range(2):
            rows = local_rows(8, n_micro, rank, 2).numpy()
            assert list(ranks[rank][step].sample_ids) == list(expected.sample_ids[rows])
            assert ranks[rank][step].inputs.equal(expected.inputs[rows])


def test_pipe_source_reads_what_the_path_reads(corpus):
    shard = corpus["shards"][0]
    assert list(shard_documents(f"pipe:cat {shard}")) == list(shard_documents(str(shard)))
    assert len(list(shard_documents(str(shard)))) == 5  # .txt and .json members both give documents


@pytest.mark.parametrize("case", ["missing", "broken", "garbage", "failing-pipe", "pipe-exit-status"])
def test_bad_shards_are_one_line_errors(corpus, tmp_path, case):
    good = corpus["shards"][0]
    broken = tmp_path / "broken.tar"
    broken.write_bytes(good.read_bytes()[:3000])
    garbage = tmp_path / "garbage.tar"
    garbage.write_text("not a tar file\n" * 100)
    corpus_items, expected = {
        "missing": ([str(tmp_path / "shard-{000..003}.tar")], "no shard matches"),
        "broken": ([str(good), str(broken)], "broken.tar: truncated"),
        "garbage": ([str(garbage)], "garbage.tar: not a readable tar archive"),
        "failing-pipe": ([f"pipe:cat {tmp_path}/absent.tar"], "exited with status 1: cat:"),
        "pipe-exit-status": ([f"pipe:cat {good}; exit 3"], "the command exited with status 3"),
    }[case]
    with pytest.raises(UserError) as info:
        probe_shards(shard_urls(corpus_items))
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_cli_reports_a_failing_pipe_in_one_line_before_training(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    # In this process: the parent's checks fail before it would spawn the 2 ranks.
    assert main(train_command(run, f"data.corpus=pipe:cat {tmp_path}/absent.tar", nproc=2)[3:]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "exited with status 1: cat:" in lines[0], lines
    assert not run.exists()


def _stream_sets(corpus):
    return [f"data.corpus={corpus['pattern']}", f"data.tokenizer={corpus['tokenizer_dir']}",
            f"model.vocab_size={VOCAB}", "model.tokenizer=sentencepiece", "data.stream_workers=1",
            "debug.record_samples=true"]


@pytest.fixture(scope="module")
def straight_stream_run(tmp_path_factory, corpus):
    """8 steps from the shards on 2 ranks (dp_shard=2, 2 micro-batches of 2 per rank), checkpoints at 4 and 8."""
    run = tmp_path_factory.mktemp("stream-straight") / "run"
    train(run, *_stream_sets(corpus), "parallel.mbs=2", nproc=2, cache_dir=corpus["root"] / "cache")
    return run


def _samples(run, rank):
    lines = (run / "samples" / f"rank_{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["sample_ids"] for r in map(json.loads, lines)}


@pytest.mark.multiproc
def test_stream_resume_on_two_ranks_is_bitwise(straight_stream_run, corpus, tmp_path):
    resumed = tmp_path / "run"
    copy_checkpoint_run(straight_stream_run, resumed, step=4)
    train(resumed, nproc=2, resume=True, config=None, cache_dir=corpus["root"] / "cache")
    straight, again = steps(straight_stream_run), steps(resumed)
    assert sorted(again) == [5, 6, 7, 8]
    for step in range(5, 9):
        assert again[step]["loss"] == straight[step]["loss"], step
        assert again[step]["grad_norm"] == straight[step]["grad_norm"], step
        assert again[step]["consumed_samples"] == 8 * step
    for rank in range(2):
        assert {s: ids for s, ids in _samples(straight_stream_run, rank).items() if s > 4} == _samples(resumed, rank)
    # The 64 windows of the 8 steps are distinct and span more than one shard.
    ids = [i for rank in range(2) for ids in _samples(straight_stream_run, rank).values() for i in ids]
    assert len(set(ids)) == 64 and len({i >> WINDOW_BITS for i in ids}) > 1


@pytest.mark.multiproc
def test_stream_resume_on_one_rank_repeats_and_skips_no_sample(straight_stream_run, corpus, tmp_path):
    single = tmp_path / "run"
    copy_checkpoint_run(straight_stream_run, single, step=4)
    train(single, "parallel.mbs=2", resume=True, config=None, cache_dir=corpus["root"] / "cache")
    before = {s: sorted(_samples(straight_stream_run, 0)[s] + _samples(straight_stream_run, 1)[s])
              for s in range(5, 9)}
    after = {s: sorted(ids) for s, ids in _samples(single, 0).items()}
    assert after == before
    straight, again = steps(straight_stream_run), steps(single)
    for step in range(5, 9):
        assert again[step]["consumed_samples"] == straight[step]["consumed_samples"]
        assert again[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-4)


@pytest.mark.exhaustive
@pytest.mark.multiproc
def test_pipe_stream_on_four_ranks_crosses_an_epoch_and_resumes_on_two(corpus, tmp_path):
    """3 shards given as one brace pattern of pipe: commands; 16 steps of 8 windows run past the
    first epoch; the step-8 checkpoint of 4 ranks resumes on 2 with the same windows per step."""
    counts = [window_count(tokenize_shard(str(s), corpus["tokenizer"], RULE)["train"], SEQ_LEN)
              for s in corpus["shards"][:3]]
    assert sum(counts) < 16 * 8
    sets = [*_stream_sets(corpus), f"data.corpus=pipe:cat {corpus['root']}/shards/shard-{{000..002}}.tar",
            "train.steps=16", "checkpoint.every=8", "parallel.mbs=2"]
    four, two = tmp_path / "four", tmp_path / "two"
    train(four, *sets, nproc=4, cache_dir=tmp_path / "cache")
    copy_checkpoint_run(four, two, step=8)
    train(two, nproc=2, resume=True, config=None, cache_dir=tmp_path / "cache")

    def per_step(run, ranks, first):
        return {s: sorted(i for r in range(ranks) for i in _samples(run, r)[s]) for s in range(first, 17)}

    assert per_step(two, 2, 9) == per_step(four, 4, 9)
    batches = list(per_step(four, 4, 1).values())
    epoch = sum(counts)
    every = {(shard << WINDOW_BITS) | w for shard, n in enumerate(counts) for w in range(n)}
    inside = [i for ids in batches[:epoch // 8] for i in ids]  # the steps wholly within the first epoch
    assert len(set(inside)) == len(inside) and set(inside) <= every
    assert {i for ids in batches[:-(-epoch // 8)] for i in ids} == every  # and the first epoch is complete
    assert steps(two)[16]["consumed_samples"] == 16 * 8
