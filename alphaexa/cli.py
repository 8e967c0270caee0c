"""The ``alphaexa`` command line.

Each subcommand is a module in ``alphaexa/commands/`` that defines ``NAME``,
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.  Modules keep heavy
imports (torch) inside ``run`` so that ``alphaexa --help`` and torch-free
commands (``plan``, ``topo``, ``describe``) start fast.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

from . import __version__
from . import commands as _commands


def _load_commands():
    mods = []
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{_commands.__name__}.{info.name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphaexa", description="AlphaExa: train hybrid dense + MoE transformers on CPU, NVIDIA and Intel XPU.")
    parser.add_argument("--version", action="version", version=f"alphaexa {__version__}")
    parser.add_argument("--backend", default=None,
                        help="force the device backend (cpu|cuda|xpu); default: $ALPHAEXA_BACKEND or auto")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; ``argv`` None: ``sys.argv``.

    Run as the program (the ``alphaexa`` script, ``python -m alphaexa``), a command that returned 0 leaves
    with ``os._exit(0)`` after the exit handlers (atexit: logging, multiprocessing, weakref finalizers) and
    a flush of stdout and stderr: what is skipped is the interpreter's teardown of every module, torch's
    included, about 1.5 s of CPU a process after a training run (measured on the 2-core CI box: a 3-step
    debug run ended 1.6-1.7 s after ``main`` returned, 1.3-1.4 s of it after the exit handlers and a
    garbage collection), paid by every rank of every run.  Files, checkpoints, metrics and the process
    group are closed by the command before it returns (Trainer.run, commands/train.py).  An error status,
    an exception, a non-daemon thread still running, mpi4py loaded (an MPI bootstrap: MPI_Finalize), a caller that passed ``argv``, a program of one's own
    or a wrapper (``python -m cProfile -m alphaexa`` writes its profile after main) takes the ordinary return.
    """
    code = _main(argv)
    if code == 0 and argv is None and _called_by_the_program(sys._getframe(1)):
        _leave_now()
    return code


def _called_by_the_program(frame) -> bool:
    """``frame`` ends the program with main's status: alphaexa/__main__.py run by ``python -m alphaexa``
    (runpy's _run_code called by _run_module_as_main, nothing above), or the ``alphaexa`` script pip wrote
    (nothing above it; its last line ``sys.exit(main())``).  A program of one's own may do more after main."""
    if frame.f_code.co_name != "<module>" or frame.f_globals.get("__name__") != "__main__":
        return False
    callers = []
    above = frame.f_back
    while above is not None:
        callers.append(above.f_code.co_name)
        above = above.f_back
    if callers == ["_run_code", "_run_module_as_main"]:
        return getattr(frame.f_globals.get("__spec__"), "name", None) == f"{__package__}.__main__"
    if callers:
        return False
    try:
        script = Path(frame.f_code.co_filename).read_text()
    except (OSError, UnicodeDecodeError):  # python -c, or no file
        return False
    return "from alphaexa.cli import main" in script and script.rstrip().endswith("sys.exit(main())")


def _leave_now() -> None:
    """``os._exit(0)`` after the exit handlers, unless a non-daemon thread still runs, stdout cannot be flushed
    or mpi4py is loaded: its MPI_Finalize runs in the interpreter's finalization, and an MPI launcher reports
    a rank that exits without it as failed (hydra's mpiexec: status 9 for the job)."""
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    if any(name == "mpi4py" or name.startswith("mpi4py.") for name in sys.modules):
        return
    import atexit
    import os

    if not _flushed():  # a closed pipe: the ordinary exit reports it
        return
    atexit._run_exitfuncs()
    os._exit(0 if _flushed() else 120)  # 120: the interpreter's own status when the final flush fails


def _flushed() -> bool:
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend:
        import os

        os.environ["ALPHAEXA_BACKEND"] = args.backend
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from .errors import ONE_LINE_ERRORS

    try:
        return int(args._run(args) or 0)
    except ONE_LINE_ERRORS as e:
        print(f"alphaexa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alphaexa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
