"""``--nproc N`` on CPU forks the ranks from the parent (train/spawn.py); fresh interpreters
(``ALPHAEXA_RANK_START=exec``, what accelerators get) train the same bits."""
from __future__ import annotations

import pytest
from train_runs import losses, train

pytestmark = pytest.mark.multiproc

SETS = ("train.steps=3", "train.warmup=1", "checkpoint.every=0", "train.eval_every=0")


def test_forked_and_fresh_ranks_train_the_same_bits(tmp_path):
    cache = tmp_path / "cache"
    forked = train(tmp_path / "fork", *SETS, nproc=2, cache_dir=cache)
    fresh = train(tmp_path / "exec", *SETS, nproc=2, cache_dir=cache, env={"ALPHAEXA_RANK_START": "exec"})

    assert "spawned 2 ranks by fork" in forked.stdout, forked.stdout
    assert "spawned 2 ranks by exec" in fresh.stdout, fresh.stdout
    assert sorted(losses(tmp_path / "fork")) == [1, 2, 3]
    assert losses(tmp_path / "fork") == losses(tmp_path / "exec")


def test_an_unknown_rank_start_is_one_line(tmp_path):
    done = train(tmp_path / "run", *SETS, nproc=2, cache_dir=tmp_path / "cache", check=False,
                 env={"ALPHAEXA_RANK_START": "thread"})

    assert done.returncode == 2
    assert done.stderr.strip() == "alphaexa train: error: ALPHAEXA_RANK_START='thread': must be fork or exec"


@pytest.mark.parametrize("value,expected", [("1", 1), ("3,2", 3), ("", None), ("auto", None)])
def test_a_forked_process_takes_its_thread_count_from_its_environment(value, expected):
    import torch

    from alphaexa.train.spawn import apply_thread_count

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        apply_thread_count({"OMP_NUM_THREADS": value})
        assert torch.get_num_threads() == (expected or 2)  # a value that names no count leaves it as it was
    finally:
        torch.set_num_threads(before)
