"""Session fixtures shared by the test modules."""
from __future__ import annotations

import os
import subprocess
import sys

# One OpenMP thread per process, in this process (set before torch is first imported) and in every run it
# starts (trainer ranks read it too, train/spawn.py): `make test` runs two pytest workers on two cores, and
# OpenMP threads spinning for a core taken by the other worker made single-rank runs 3-10x slower (a 6-step
# run: 5.6 s alone, 60 s beside another worker).  The multi-rank helper rank_processes.run_ranks sets it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from train_runs import REPO, run_env

# A first compilation of DeepSpeed's CPU ops takes minutes on a few cores (longer on a loaded machine); the
# training subprocesses of the DeepSpeed tests run under a 300 s hang guard (train_runs.HANG_GUARD_S).  The ops
# are compiled here, once a session and before those tests, without that guard: when ``make setup`` built them
# already this is a load, seconds.
OPS_BUILD_LIMIT_S = 3600

# The longest modules first (seconds, on the 2-core CI machine): `make test` hands whole modules to two
# pytest-xdist workers (--dist loadfile) in collection order, and one of these started last would run on alone
# while the other worker idles.  Every other module keeps its place; tests within a module too.  Session 14's
# figures (two workers, the whole suite, from its 40 longest tests and the rest estimated) after the trainer
# runs started forking (tests/rank_processes.run_cli, train/spawn.py): the equivalence matrix is now by far
# the longest, its layouts' own compute (tensor-parallel DTensor layouts 10-13 s each).
SLOW_MODULES_FIRST = (
    "test_parallel_equivalence.py",  # 170 s (s14)
    "test_train.py",  # ~90 s (s14)
    "test_deepspeed_train.py",  # ~70 s (s14)
    "test_resume.py",  # 55 s (s14; 126 s in s13)
    "test_launchers.py",  # ~45 s (s14: a 4-rank mpiexec run of fresh interpreters, 32 s)
    "test_speed_levers.py",  # ~40 s (s14)
    "test_offload.py",  # ~40 s (s14)
    "test_meta_init.py",  # ~35 s (s14)
    "test_stream.py",  # 36 s (s14)
    "test_launch.py",  # ~35 s (s14)
    "test_plan_verify.py",  # ~30 s (s14)
    "test_planner_validation.py",  # ~30 s (s14)
    "test_crash.py",  # 26 s (s14)
    "test_vs_peers_profile.py",  # 26 s (s14)
    "test_bf16_weights.py",  # ~20 s (s14)
    "test_spawn.py",  # ~20 s (s14)
)


_missing = [name for name in SLOW_MODULES_FIRST if not (REPO / "tests" / name).is_file()]
if _missing:  # a renamed module would silently lose its place at the front
    raise pytest.UsageError(f"tests/conftest.py SLOW_MODULES_FIRST names no such module: {', '.join(_missing)}")


def pytest_collection_modifyitems(config, items) -> None:
    first = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def deepspeed_ops_built() -> None:
    pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, "-m", "alphaexa.parallel.deepspeed_ops"], check=False, capture_output=True,
                          text=True, timeout=OPS_BUILD_LIMIT_S, env=run_env(), cwd=REPO)
    if done.returncode != 0:
        raise AssertionError(f"building DeepSpeed's ops failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
