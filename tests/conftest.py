"""Session fixtures shared by the test modules."""
from __future__ import annotations

import subprocess
import sys

import pytest
from train_runs import REPO, run_env

# A first compilation of DeepSpeed's CPU ops takes minutes on a few cores (longer on a loaded machine); the
# training subprocesses of the DeepSpeed tests run under a 300 s hang guard (train_runs.HANG_GUARD_S).  The ops
# are compiled here, once a session and before those tests, without that guard: when ``make setup`` built them
# already this is a load, seconds.
OPS_BUILD_LIMIT_S = 3600


@pytest.fixture(scope="session")
def deepspeed_ops_built() -> None:
    pytest.importorskip("deepspeed")
    done = subprocess.run([sys.executable, "-m", "alphaexa.parallel.deepspeed_ops"], check=False, capture_output=True,
                          text=True, timeout=OPS_BUILD_LIMIT_S, env=run_env(), cwd=REPO)
    if done.returncode != 0:
        raise AssertionError(f"building DeepSpeed's ops failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
