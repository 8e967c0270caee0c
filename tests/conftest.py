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

# The longest modules first (seconds, serial, on the 2-core CI machine): `make test` hands whole modules to
# two pytest-xdist workers (--dist loadfile) in collection order, and one of these started last would run
# on alone while the other worker idles.  Every other module keeps its place; tests within a module too.
# Figures marked s13 were measured alone on the session-13 machine after that session's changes (DeepSpeed's
# module lost a launch and its one-line errors DeepSpeed's import, every run ~1 s of teardown a process);
# the others are session 12's.  The first four pair up as the first two modules of each worker (xdist gives
# each worker two at the start): DeepSpeed's + resume's beside parallel_equivalence's + train's took 400 s
# for the four modules on two workers, parallel_equivalence's + resume's beside train's + DeepSpeed's 410 s
# (session 13, the same machine; within its noise).
SLOW_MODULES_FIRST = (
    "test_deepspeed_train.py",  # 80 s (s13; was 225 s)
    "test_parallel_equivalence.py",  # 125 s (s13)
    "test_resume.py",  # 126 s (s13; 134-187 s on a busier machine)
    "test_train.py",  # 122 s (s13)
    "test_offload.py",  # 55 s (s13)
    "test_bf16_weights.py",  # 50-65 s (s13: five launches of the debug model)
    "test_plan_verify.py",  # 48 s
    "test_speed_levers.py",  # 47 s
    "test_planner_validation.py",  # 46 s
    "test_deepspeed_engine.py",  # 38 s
    "test_stream.py",  # 35 s
    "test_meta_init.py",  # 35 s
    "test_launchers.py",  # 34 s
    "test_crash.py",  # 29 s (s13)
    "test_launch.py",  # 27 s
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
