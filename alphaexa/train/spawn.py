"""``--nproc N``: run N local ranks as child processes with torchrun's environment variables.

The parent only supervises: when a rank exits with an error (or is killed), the others are
stopped at once (SIGTERM, then SIGKILL after a grace period) and the parent exits non-zero,
so one dead rank never leaves the rest waiting in a collective.  On CPU each rank gets
``OMP_NUM_THREADS = cores // N`` (at least 1) unless the variable is already set, so
the ranks do not oversubscribe the cores.

How a rank starts: on the CPU backend the parent imports the trainer once and forks the ranks from
itself (``os.fork``), so no rank imports torch and the trainer again (5-10 s of CPU a rank on a 2-core
machine, most of a short run's time).  The parent has touched no device, holds no process group and runs
no other thread when it forks (checked; otherwise, and on accelerators, whose runtimes are not fork-safe
once probed, each rank is a fresh ``python -m alphaexa`` process as before).
``ALPHAEXA_RANK_START=exec`` (or ``fork``) chooses for a run.
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
START_VARIABLE = "ALPHAEXA_RANK_START"
# what every rank imports before its first step (the trainer's lazy imports included): imported by the
# parent before it forks, so the ranks start with them
RANK_MODULES = ("alphaexa.train.trainer", "alphaexa.checkpoint.manager", "alphaexa.checkpoint.state",
                "torch._dynamo", "torch.distributed.pipelining")


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


def rank_start() -> str:
    """``fork`` or ``exec``: how this process starts its ranks (module docstring)."""
    from ..errors import UserError

    chosen = os.environ.get(START_VARIABLE, "").strip().lower()
    if chosen not in ("", "fork", "exec"):
        raise UserError(f"{START_VARIABLE}={chosen!r}: must be fork or exec")
    if chosen == "exec" or not fork_safe():
        return "exec"
    if chosen == "fork":
        return "fork"
    from backends.device import get_backend

    return "fork" if get_backend().device_type == "cpu" else "exec"


def fork_safe() -> bool:
    """This process may fork ranks: no process group, no other Python thread, no MPI."""
    import threading

    import torch.distributed as dist

    return hasattr(os, "fork") and not dist.is_initialized() and threading.active_count() == 1 \
        and "mpi4py" not in sys.modules


def spawn_ranks(nproc: int, argv: list[str], announce=print, start: str | None = None) -> int:
    """Run ``alphaexa ARGV`` as ranks 0..N-1 (``start``: ``fork`` or ``exec``, None: ``rank_start()``);
    returns 0 when every rank succeeded, else the first failure's status (128 + signal for a killed rank)."""
    start = start or rank_start()
    if start == "fork" and not fork_safe():  # the data work since rank_start() left a thread running
        start = "exec"
    if start == "fork":
        import importlib

        for name in RANK_MODULES:
            importlib.import_module(name)
    port = free_port()
    # A SIGTERM to the parent (a batch system ending the job) must not orphan the ranks:
    # turned into an exception, it reaches the ``finally`` that stops them.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    children: list = []
    try:
        for r in range(nproc):
            env = rank_environment(r, nproc, port)
            children.append(_fork_rank(argv, env) if start == "fork" else
                            subprocess.Popen([sys.executable, "-m", "alphaexa", *argv], env=env))
    except BaseException:
        _stop(children)
        signal.signal(signal.SIGTERM, previous)
        raise
    announce(f"spawned {nproc} ranks by {start} (pids {', '.join(str(c.pid) for c in children)}), "
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


class ForkedRank:
    """A forked rank with the part of ``subprocess.Popen``'s interface the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"rank pid {self.pid}", timeout)
            time.sleep(POLL_S)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # exited, not yet reaped
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def apply_thread_count(env: dict[str, str]) -> None:
    """In a process forked after torch was loaded: its OpenMP runtime read OMP_NUM_THREADS at that load, so the
    count ``env`` gives (a list of nested levels, "4,2": its first) is set through torch."""
    import torch

    threads = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _fork_rank(argv: list[str], env: dict[str, str]) -> ForkedRank:
    _flush_stdio()  # what the parent wrote must not be written again by the child
    pid = os.fork()
    if pid:
        return ForkedRank(pid)
    code = 1
    try:  # the child: never returns into the parent's code
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what a fresh process has
        import atexit

        atexit._clear()  # the parent's exit handlers are the parent's
        os.environ.clear()
        os.environ.update(env)
        apply_thread_count(env)
        from ..cli import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 (the child must leave through os._exit, whatever happened)
        import traceback

        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            _flush_stdio()
        finally:
            os._exit(code)


class Terminated(Exception):
    pass


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def _stop(children: list) -> None:
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
