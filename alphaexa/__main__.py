"""``python -m alphaexa``: the command line (alphaexa.cli), as the ranks of ``--nproc`` and the launchers start it.

A command that returned 0 leaves with ``os._exit(0)`` after the exit handlers (atexit: logging,
multiprocessing, weakref finalizers) and a flush of stdout and stderr: what is skipped is the interpreter's
teardown of every module, torch's included, about 1.5 s of CPU a process after a training run (measured on
the 2-core CI box: a 3-step debug run ended 1.6-1.7 s after ``main`` returned, 1.3-1.4 s of it after the
exit handlers and a garbage collection), paid by every rank of every run.  Files, checkpoints, metrics and
the process group are closed by the command before it returns (Trainer.run, commands/train.py).  An error
status, an exception, a non-daemon thread still running, or a wrapper that runs this module and has work
left after it (``python -m cProfile -m alphaexa`` writes its profile then) takes the ordinary exit.
"""
import sys

from .cli import main


def _run_by_the_interpreter(module_frame) -> bool:
    """``python -m alphaexa`` itself: runpy's _run_code called by _run_module_as_main, and nothing above."""
    callers = []
    frame = module_frame.f_back
    while frame is not None:
        callers.append(frame.f_code.co_name)
        frame = frame.f_back
    return callers == ["_run_code", "_run_module_as_main"]


def _exit(code: int) -> None:
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if code == 0 and not others and _run_by_the_interpreter(sys._getframe(1)):
        import atexit
        import os

        atexit._run_exitfuncs()
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        except (OSError, ValueError):  # a closed pipe: the ordinary exit reports it
            sys.exit(code)
        os._exit(0)
    sys.exit(code)


_exit(main())
