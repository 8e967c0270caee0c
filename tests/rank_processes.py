"""Helper for the multi-process tests: run a function on N real ranks and fail the test if they hang."""
from __future__ import annotations

import os
import time

import pytest


def run_ranks(fn, args: tuple, nprocs: int, what: str, timeout: float = 300.0, start_method: str = "spawn") -> None:
    """``fn(rank, *args)`` on ``nprocs`` processes (OMP_NUM_THREADS=1); a process that dies fails the
    test with its traceback, a job still running after ``timeout`` seconds is killed and fails it."""
    import torch.multiprocessing as mp

    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"{what} did not finish in {timeout:.0f} s")
