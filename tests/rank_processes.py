"""Helper for the multi-process tests: run a function on N real ranks and fail the test if they hang."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from alphaexa.train.spawn import RANK_MODULES, apply_thread_count

# The ranks fork from a server process that imported these once (multiprocessing's forkserver): a
# fresh interpreter per rank imports torch and the package again, 5-10 s each, which dominated the
# multi-rank tests on two cores.  The server only imports (no threads, no process group, no
# accelerator), so forking it is safe; each rank still runs in its own process and talks over gloo.
# The first run_ranks of a session starts the server, so the list is the same for every module.
# The command line (run_cli) is there too (alphaexa.cli loads its commands when it builds its parser), and what
# a rank imports when used (spawn.RANK_MODULES, what --nproc's parent imports before it forks its ranks: the
# trainer, DCP, pipelining, torch._dynamo, which torch's nn.init pulls in).
PRELOAD = ["torch", "torch.distributed", "alphaexa.model", "alphaexa.parallel", "alphaexa.cli", "alphaexa.commands.train",
           "alphaexa.train.spawn", *RANK_MODULES]
# ALPHAEXA_TESTS_EXEC=1: every run_cli is a fresh ``python -m alphaexa`` process instead (slower, the same result)
EXEC_VARIABLE = "ALPHAEXA_TESTS_EXEC"


def _forkserver_context():
    import torch.multiprocessing as mp

    # Set before the forkserver starts: its children inherit its environment, not ours at fork time.
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.set_forkserver_preload(PRELOAD)
    return mp.get_context("forkserver")


def run_cli(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, ...)`` for ``cmd = [python, -m, alphaexa, ARGS]``,
    run as a process forked from the server of run_ranks: ``alphaexa.cli.main(ARGS)`` in a process of its own
    (its own environment, working directory, stdout and stderr files, process group and exit status; its ranks
    fork from it, train/spawn.py) without a fresh interpreter importing torch and the package, 5-8 s of CPU a
    run.  What differs from the program: the interpreter's start, ``python -m``'s module run and the
    program's fast exit (tests/test_cli_exit.py runs those).  A run past ``timeout`` is killed with its
    process group (``subprocess.TimeoutExpired``, as subprocess.run raises).  ``fresh``: a fresh interpreter
    all the same (a run that needs the interpreter's start: a ``sitecustomize`` on ``PYTHONPATH``)."""
    if cmd[:3] != [sys.executable, "-m", "alphaexa"]:
        raise ValueError(f"run_cli runs `python -m alphaexa ...`, not {cmd[:3]}")
    if fresh or os.environ.get(EXEC_VARIABLE) == "1":
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    with tempfile.TemporaryDirectory(prefix="alphaexa-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        process = _forkserver_context().Process(target=_cli_child, args=(cmd[3:], env, str(cwd), str(out), str(err)))
        process.start()
        process.join(timeout)
        timed_out = process.exitcode is None
        try:  # what the run left behind (a rank, a loader), with it on a timeout
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.join()
        stdout = out.read_text(errors="replace") if out.exists() else ""
        stderr = err.read_text(errors="replace") if err.exists() else ""
    if timed_out:
        raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(cmd, process.exitcode, stdout, stderr)


def _cli_child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    os.setpgrp()  # the run and whatever it starts: one group to kill
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    apply_thread_count(env)  # as spawn_ranks' forked ranks do
    from alphaexa.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def run_ranks(fn, args: tuple, nprocs: int, what: str, timeout: float = 300.0,
              start_method: str = "forkserver") -> None:
    """``fn(rank, *args)`` on ``nprocs`` processes (OMP_NUM_THREADS=1); a process that dies fails the
    test with its traceback, a job still running after ``timeout`` seconds is killed and fails it."""
    import torch.multiprocessing as mp

    if start_method == "forkserver":
        _forkserver_context()
    else:
        os.environ["OMP_NUM_THREADS"] = "1"
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method=start_method)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"{what} did not finish in {timeout:.0f} s")
