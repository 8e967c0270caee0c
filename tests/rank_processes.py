"""Helper for the multi-process tests: run a function on N real ranks and fail the test if they hang."""
from __future__ import annotations

import os
import time

import pytest

# The ranks fork from a server process that imported these once (multiprocessing's forkserver): a
# fresh interpreter per rank imports torch and the package again, 5-10 s each, which dominated the
# multi-rank tests on two cores.  The server only imports (no threads, no process group, no
# accelerator), so forking it is safe; each rank still runs in its own process and talks over gloo.
# The first run_ranks of a session starts the server, so the list is the same for every module.
# alphaexa.parallel and alphaexa.checkpoint import their pipelining and DCP parts when used: named here.
PRELOAD = ["torch", "torch.distributed", "torch.distributed.pipelining", "alphaexa.model", "alphaexa.parallel",
           "alphaexa.checkpoint.manager", "alphaexa.checkpoint.state"]


def run_ranks(fn, args: tuple, nprocs: int, what: str, timeout: float = 300.0,
              start_method: str = "forkserver") -> None:
    """``fn(rank, *args)`` on ``nprocs`` processes (OMP_NUM_THREADS=1); a process that dies fails the
    test with its traceback, a job still running after ``timeout`` seconds is killed and fails it."""
    import torch.multiprocessing as mp

    # Set before the forkserver starts: its children inherit its environment, not ours at fork time.
    os.environ["OMP_NUM_THREADS"] = "1"
    if start_method == "forkserver":
        mp.set_forkserver_preload(PRELOAD)
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"{what} did not finish in {timeout:.0f} s")
