"""The only code in AlphaExa that starts untrusted processes.

:class:`Sandbox` runs one program (the python tool's interpreter, one of the shell tool's
programs) in the isolation that :mod:`alphaexa.agent.jail` builds: no network, a file
system holding only the read-only Python install and system programs plus the scratch
directory, resource limits, an unprivileged uid, a scrubbed environment.  This side keeps
the wall clock, caps the output while reading it, and kills the whole PID namespace when
the program runs over.  docs/agent.md states what this stops and what it does not.
"""
from __future__ import annotations

import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .protocol import ToolFailure

JAIL = Path(__file__).with_name("jail.py")
SCRATCH_INSIDE = "/scratch"
NOBODY = 65534
# What the program sees of the host, read-only.  /etc (passwords, shadow, host keys) is not among them.
SYSTEM_PATHS = ("/usr", "/bin", "/lib", "/lib64", "/lib32")
PROGRAM_ENV = {"PATH": "/usr/bin:/bin", "HOME": SCRATCH_INSIDE, "TMPDIR": SCRATCH_INSIDE, "LANG": "C.UTF-8"}
MAX_LISTED_FILES = 200


@dataclass(frozen=True)
class Limits:
    """Per-run limits.  ``output`` caps stdout and stderr each (bytes); a program that writes
    more is killed, so a gigabyte of output is never read into memory."""

    wall_s: float = 10.0
    cpu_s: int = 5
    address_space: int = 1 << 30
    processes: int = 64
    open_files: int = 64
    file_size: int = 16 << 20
    output: int = 64 << 10

    def rlimits(self) -> dict[str, int]:
        return {"cpu_s": self.cpu_s, "address_space": self.address_space, "processes": self.processes,
                "open_files": self.open_files, "file_size": self.file_size}


@dataclass
class Outcome:
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    files: list[str] = field(default_factory=list)

    def as_result(self) -> dict:
        return {"exit_code": self.exit_code, "signal": self.signal, "stdout": self.stdout, "stderr": self.stderr,
                "files": self.files}


def _read_only_paths() -> list[str]:
    paths: list[str] = []
    for path in (*SYSTEM_PATHS, sys.base_prefix, sys.prefix):
        path = os.path.abspath(path)
        if os.path.lexists(path) and not any(path == p or path.startswith(p + "/") for p in paths):
            paths.append(path)
    return paths


def _snapshot(scratch: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every entry under ``scratch``, never following a symlink."""
    seen: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(scratch, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            seen[os.path.relpath(path, scratch)] = (st.st_size, st.st_mtime_ns)
            if len(seen) >= 10 * MAX_LISTED_FILES:
                return seen
    return seen


def _stop(proc: subprocess.Popen, status_file) -> None:
    """Kill the jail's init, whose host pid the launcher reported first: the kernel then kills every
    process of its PID namespace, and the launcher reaps it (no zombie is left to the host's init)."""
    if select.select([status_file], [], [], 0.5)[0]:
        first = status_file.readline()
        os.kill(json.loads(first)["init_pid"], signal.SIGKILL)
        try:
            proc.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(proc.pid, signal.SIGKILL)  # a launcher stuck before its fork: PR_SET_PDEATHSIG does the rest


def _time_limit(limits: Limits) -> tuple[str, str]:
    return "TimeLimit", f"the program ran past the wall-clock limit of {limits.wall_s:g} s and was killed"


class Sandbox:
    """Runs programs in one scratch directory (``workdir``, or a fresh temporary one that
    :meth:`close` removes).  Each :meth:`run` is a new jail; files persist between runs."""

    def __init__(self, workdir: str | Path | None = None, limits: Limits | None = None, uid: int = NOBODY):
        """``uid`` (as root): the unprivileged uid and gid the programs run as; jails of different uids
        share no ``RLIMIT_NPROC`` count and can be told apart on the host (docs/agent.md)."""
        if not 0 < uid < 2**32 - 1:
            raise ValueError(f"sandbox uid {uid}: must be an unprivileged uid (1 to 2^32 - 2)")
        self.uid = uid
        self.limits = limits or Limits()
        self._owns_scratch = workdir is None
        self.scratch = Path(tempfile.mkdtemp(prefix="alphaexa-scratch-") if workdir is None else workdir).resolve()
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.as_root = os.geteuid() == 0
        if self.as_root:  # the program runs as nobody: the scratch directory is the one place it may write
            os.chown(self.scratch, uid, uid)
            os.chmod(self.scratch, 0o700)

    def close(self) -> None:
        if self._owns_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, argv: list[str], stdin: bytes = b"", limits: Limits | None = None) -> Outcome:
        """Run ``argv`` (argv[0] an absolute path of a read-only host path) with cwd = the scratch directory.
        Raises :class:`ToolFailure` when the isolation cannot be set up or a limit is hit."""
        limits = limits or self.limits
        if not sys.platform.startswith("linux"):
            raise ToolFailure("SandboxUnavailable", f"the sandbox needs Linux namespaces; this is {sys.platform}")
        before = _snapshot(self.scratch)
        root = tempfile.mkdtemp(prefix="alphaexa-jail-")
        status_r, status_w = os.pipe()
        spec = {"root": root, "scratch": str(self.scratch), "read_only": _read_only_paths(), "argv": argv,
                "env": PROGRAM_ENV, "limits": limits.rlimits(), "as_root": self.as_root, "uid": self.uid,
                "status_fd": status_w}
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(JAIL), json.dumps(spec)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(status_w,), env={"PATH": PROGRAM_ENV["PATH"]},
                                    start_new_session=True)
        finally:
            os.close(status_w)
        try:
            stdout, stderr, over = self._communicate(proc, stdin, limits)
        finally:
            with os.fdopen(status_r, "rb") as status_file:
                if proc.poll() is None:
                    _stop(proc, status_file)
                proc.wait()
                status_lines = status_file.read().decode().splitlines()
            os.rmdir(root)
        status = json.loads(status_lines[-1]) if status_lines else {}
        if "setup_error" in status:
            raise ToolFailure("SandboxUnavailable", f"refusing to run untrusted code: {status['setup_error']}")
        if over:
            raise ToolFailure(*over)
        after = _snapshot(self.scratch)
        changed = sorted(p for p, meta in after.items() if before.get(p) != meta)
        return Outcome(status.get("exit"), status.get("signal"), stdout.decode(errors="replace"),
                       stderr.decode(errors="replace"), changed[:MAX_LISTED_FILES])

    @staticmethod
    def _communicate(proc: subprocess.Popen, stdin: bytes, limits: Limits) -> tuple[bytes, bytes, tuple | None]:
        """Feed stdin, collect stdout/stderr up to the cap, until exit or the wall clock; returns
        (stdout, stderr, (error type, message) of a limit hit or None)."""
        deadline = time.monotonic() + limits.wall_s
        buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        pending = memoryview(stdin)
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            if pending:
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    return bytes(buffers[proc.stdout]), bytes(buffers[proc.stderr]), _time_limit(limits)
                for key, _ in sel.select(timeout=left):
                    if key.fileobj is proc.stdin:
                        try:
                            pending = pending[os.write(proc.stdin.fileno(), pending[:65536]):]
                        except BrokenPipeError:
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fileobj.fileno(), 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = buffers[key.fileobj]
                    buf += chunk
                    if len(buf) > limits.output:
                        name = "stdout" if key.fileobj is proc.stdout else "stderr"
                        return bytes(buffers[proc.stdout][:limits.output]), bytes(buffers[proc.stderr][:limits.output]), (
                            "OutputLimit", f"the program wrote more than {limits.output} bytes to {name} and was killed")
        out, err = bytes(buffers[proc.stdout]), bytes(buffers[proc.stderr])
        try:  # it closed its output but may still be running
            proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            return out, err, _time_limit(limits)
        return out, err, None
