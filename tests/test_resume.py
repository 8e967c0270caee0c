"""Resume: bitwise-exact on the same layout, elastic (resharded) onto fewer ranks and another layout,
and a truncated checkpoint detected with a fallback to the previous one.

Every run is real: ``alphaexa train --nproc N`` spawns N gloo ranks training the ``debug``
preset on the built-in corpus (byte tokenizer, 8 steps of 8 x 32 tokens, checkpoints every 4).
"""
from __future__ import annotations

import shutil

import pytest
from train_runs import copy_checkpoint_run, losses, steps, train

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="module")
def straight_2_ranks(tmp_path_factory, cache):
    """8 steps in one go on 2 ranks (dp_shard=2, 2 micro-batches of 2 per rank)."""
    run = tmp_path_factory.mktemp("straight2") / "run"
    train(run, "parallel.mbs=2", nproc=2, cache_dir=cache)
    return run


def test_stop_and_resume_gives_bitwise_identical_losses(straight_2_ranks, tmp_path, cache):
    run = tmp_path / "run"
    train(run, "parallel.mbs=2", nproc=2, stop_at=4, cache_dir=cache)
    assert sorted(losses(run)) == [1, 2, 3, 4]
    train(run, nproc=2, resume=True, config=None, cache_dir=cache)  # config from RUN_DIR/config.toml

    straight, resumed = steps(straight_2_ranks), steps(run)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        # Bitwise: == on the float64 JSON values (json round-trips floats exactly).
        assert resumed[step]["loss"] == straight[step]["loss"], step
        assert resumed[step]["grad_norm"] == straight[step]["grad_norm"], step
        assert resumed[step]["consumed_samples"] == 8 * step
    assert straight[8]["loss"] < straight[1]["loss"]


def test_truncated_checkpoint_is_reported_and_the_previous_one_used(straight_2_ranks, tmp_path, cache):
    run = tmp_path / "run"
    shutil.copytree(straight_2_ranks, run)
    damaged = min((run / "checkpoints" / "step_000008").glob("*.distcp"))
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    done = train(run, nproc=2, resume=True, config=None, cache_dir=cache)
    warnings = [line for line in done.stderr.splitlines() if "corrupt" in line]
    assert len(warnings) == 1, done.stderr
    assert "step_000008" in warnings[0] and damaged.name in warnings[0] and "step_000004" in warnings[0]
    resumed_events = [e for e in _events(run) if e["event"] == "resume"]
    assert resumed_events[-1]["step"] == 4
    straight, replayed = losses(straight_2_ranks), losses(run)
    assert [replayed[s] for s in range(5, 9)] == [straight[s] for s in range(5, 9)]


def test_four_rank_checkpoint_resumes_on_two_ranks_with_another_layout(tmp_path, cache):
    # 4 ranks: 2 pipeline stages x FSDP over 2.  2 ranks: FSDP over 2 with the experts split over
    # them (ep=2), no pipeline.  Both run 2 micro-steps of 4 sequences per step, so each micro-step
    # holds the same samples; weights are resharded from 2 stage-shards x 2 FSDP shards to 2 FSDP
    # shards with experts placed by expert parallelism.
    # float64, so that the comparison is strict on any CPU (see tests/test_parallel_equivalence.py).
    uninterrupted = tmp_path / "four"
    train(uninterrupted, "parallel.pp=2", "parallel.mbs=2", "train.dtype=fp64", nproc=4, cache_dir=cache)
    elastic = tmp_path / "two"
    copy_checkpoint_run(uninterrupted, elastic, step=4)
    train(elastic, "parallel.pp=1", "parallel.ep=2", "parallel.mbs=2", nproc=2, resume=True, config=None,
          cache_dir=cache)

    four, two = steps(uninterrupted), steps(elastic)
    assert sorted(two) == [5, 6, 7, 8]
    start = [e for e in _events(elastic) if e["event"] == "resume"][-1]
    assert start["world_size"] == 2 and start["layout"]["ep"] == 2 and start["consumed_samples"] == 32
    for step in range(5, 9):
        assert two[step]["consumed_samples"] == four[step]["consumed_samples"]
        # Same samples per micro-step, same weights: only the summation order differs (in fp32 the
        # gradient norms differed by 1.2e-7, which Adam can amplify past 1e-5 on other CPUs).
        assert two[step]["loss"] == pytest.approx(four[step]["loss"], rel=1e-10), step
        assert two[step]["grad_norm"] == pytest.approx(four[step]["grad_norm"], rel=1e-10), step


def _events(run):
    from alphaexa.train.metrics import read_metrics

    return read_metrics(run)[2]
