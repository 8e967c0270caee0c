"""``--nproc N``: run N local ranks as child processes with torchrun's environment variables.

The parent only supervises: when a rank exits with an error (or is killed), the others are
stopped at once (SIGTERM, then SIGKILL after a grace period) and the parent exits non-zero,
so one dead rank never leaves the rest waiting in a collective.  On CPU each rank gets
``OMP_NUM_THREADS = cores // N`` (at least 1) unless the variable is already set, so
the ranks do not oversubscribe the cores.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from backends.launch import free_port

GRACE_S = 5.0
POLL_S = 0.05


def rank_environment(rank: int, nproc: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "GROUP_RANK": "0", "ROLE_RANK": str(rank)})
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def spawn_ranks(nproc: int, argv: list[str], announce=print) -> int:
    """Run ``python -m alphaexa ARGV`` as ranks 0..N-1; returns 0 when every rank succeeded,
    else the first failure's status (128 + signal for a killed rank)."""
    port = free_port()
    # A SIGTERM to the parent (a batch system ending the job) must not orphan the ranks:
    # turned into an exception, it reaches the ``finally`` that stops them.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    children = [subprocess.Popen([sys.executable, "-m", "alphaexa", *argv], env=rank_environment(r, nproc, port))
                for r in range(nproc)]
    announce(f"spawned {nproc} ranks (pids {', '.join(str(c.pid) for c in children)}), "
             f"rendezvous 127.0.0.1:{port}")
    failure: tuple[int, int] | None = None
    try:
        while failure is None and any(c.poll() is None for c in children):
            for rank, child in enumerate(children):
                code = child.poll()
                if code not in (None, 0):
                    failure = (rank, code)
                    break
            else:
                time.sleep(POLL_S)
        if failure is None:
            failure = next(((r, c.returncode) for r, c in enumerate(children) if c.returncode), None)
    except Terminated:
        _stop(children)
        print("alphaexa train: terminated (SIGTERM); stopped the ranks", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    finally:
        _stop(children)
        signal.signal(signal.SIGTERM, previous)
    if failure is None:
        return 0
    rank, code = failure
    print(f"alphaexa train: rank {rank} ended with {describe_exit(code)}; stopped the other ranks",
          file=sys.stderr, flush=True)
    return 128 - code if code < 0 else code


class Terminated(Exception):
    pass


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def _stop(children: list[subprocess.Popen]) -> None:
    alive = [c for c in children if c.poll() is None]
    for child in alive:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for child in alive:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
