"""DeepSpeed's C++ ops that an engine configuration needs: checked and compiled before the engine is built.

DeepSpeed compiles its ops (``torch.utils.cpp_extension`` + ninja) the first time
``deepspeed.initialize`` needs them, without a word: on this 2-core machine ``cpu_adam``
took about 3 minutes and ``async_io`` (with its ``pin_memory`` helper) several more.
That is the "hang" of issue 14's 1-rank ZeRO-3 NVMe run: faulthandler tracebacks of
the stuck process show it inside ``deepspeed.initialize`` -> ``DeepSpeedCPUAdam`` ->
``_run_ninja_build``, and later in the async_io build (docs/parallelism.md).  A build
that is interrupted makes it worse: torch's build lock (a ``lock`` file in the op's
build directory) stays behind, and every later load of that op waits for it forever
in ``FileBaton.wait``.

``prepare_ops`` builds what a configuration needs up front, one line per op it has to
compile, under an ``flock`` of its own (released by the kernel when a process dies):
whoever holds it is the only builder going through here, so a torch lock found then is
left from an interrupted build and is removed, with a line saying so.
An op that cannot be built (async_io without libaio) is a one-line ConfigError before
``deepspeed.initialize``.  ``python -m alphaexa.parallel.deepspeed_ops`` builds them all
(``make setup`` runs it).

Where the ops are built: torch's ``TORCH_EXTENSIONS_DIR``, which this module sets, when it is unset and Python
runs in a virtual environment, to ``<the environment>/torch_extensions`` (``use_interpreter_extensions_dir``).
torch's own default (``~/.cache/torch_extensions/py311_cpu/<op>``) is one folder per op name for every
environment of the user: two checkouts with their own environments compile each op with their own include paths,
so each recompiles it over the other's whenever it loads it, for minutes and without a word (``prepare_ops``
found the other's ``.so`` and said nothing).  Session 10 met this as four NVMe tests timing out at 300 s while
the ops rebuilt inside them, after a second clone's ``make setup``.

An op compiled into the installed DeepSpeed wheel (``DS_BUILD_CPU_ADAM=1 DS_BUILD_AIO=1``, listed in
``deepspeed.git_version_info.installed_ops`` for the accelerator it runs on) is loaded as it is:
no compiler, libaio headers or lock are needed.  ``ALPHAEXA_DS_NO_JIT=1`` forbids compiling: an
op that is not prebuilt is then a one-line ConfigError (a GPU machine whose time is too dear to
spend on a compiler).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from alphaexa.data.ingest import exclusive_lock
from topology.modelcfg import ConfigError

EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"


def use_interpreter_extensions_dir() -> str | None:
    """Point torch's JIT op builds at this environment's own folder (unless the user chose one, or Python runs
    outside a virtual environment): ops compiled against one environment's torch and DeepSpeed headers are
    not another's.  Returns the folder set, or None."""
    if os.environ.get(EXTENSIONS_ENV) or sys.prefix == sys.base_prefix:
        return None
    os.environ[EXTENSIONS_ENV] = str(Path(sys.prefix) / "torch_extensions")
    return os.environ[EXTENSIONS_ENV]


# Before any op loads: DeepSpeed reads the variable (through torch) when it builds or loads an op, and the
# training processes and their children inherit it.
use_interpreter_extensions_dir()

# DeepSpeed op builder (by the name its accelerators know) -> the op's build directory name.
SHM_COMM, CPU_ADAM, ASYNC_IO, PIN_MEMORY = "ShareMemCommBuilder", "CPUAdamBuilder", "AsyncIOBuilder", "PinMemoryBuilder"
NO_JIT_ENV = "ALPHAEXA_DS_NO_JIT"
LIBAIO_HINT = ("install libaio (Debian/Ubuntu: apt-get install libaio-dev), or point CPATH and LIBRARY_PATH "
               "(and LD_LIBRARY_PATH) at an unpacked copy")


def required_ops(*, offload_optimizer: str | None, offload_params: str | None, device_type: str) -> list[str]:
    """The builders ``deepspeed.initialize`` will load for this configuration, in the order it loads them."""
    ops = [SHM_COMM] if device_type == "cpu" else []  # DeepSpeed's CPU accelerator always loads its shm comm op
    if offload_optimizer:
        ops.append(CPU_ADAM)
    if "nvme" in (offload_optimizer, offload_params):
        ops += [PIN_MEMORY, ASYNC_IO]  # async_io loads pin_memory first; built apart, each line names one op
    return ops


def check_writable(path: Path) -> None:
    probe = path / f".alphaexa-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"nvme_path={str(path)!r} is not a writable directory ({e.strerror})") from None


def check_buildable(ops: list[str]) -> None:
    """ConfigError (one line) for the first op that cannot be built here (async_io without libaio)."""
    for name in ops:
        builder = _builder(name)
        if prebuilt(builder):
            builder.load(verbose=False)
            continue
        if os.environ.get(NO_JIT_ENV) == "1":
            raise ConfigError(f"DeepSpeed's {builder.name} op is not prebuilt in this install "
                              f"({prebuilt_summary()}) and {NO_JIT_ENV}=1 forbids compiling it")
        if not builder.is_compatible(verbose=False):
            detail = f": {LIBAIO_HINT}" if name == ASYNC_IO else ""
            raise ConfigError(f"DeepSpeed's {builder.name} op cannot be built on this machine{detail}")


def prepare_ops(ops: list[str], log: Callable[[str], None] = print) -> None:
    """Load (compiling on first use) each op, saying so before a compilation starts."""
    check_buildable(ops)
    for name in ops:
        builder = _builder(name)
        build_dir = _build_directory(builder.name)
        with exclusive_lock(build_dir.parent / f"{builder.name}.alphaexa-build.lock"):
            stale = build_dir / "lock"
            if stale.exists():
                log(f"DeepSpeed: removing {stale}, left by an interrupted build of {builder.name}")
                stale.unlink()
            compiled = any(build_dir.glob("*.so"))
            if not compiled:
                log(f"DeepSpeed: compiling its {builder.name} op once (minutes on a few cores) into {build_dir}")
            started = time.perf_counter()
            builder.load(verbose=False)
            if not compiled:
                log(f"DeepSpeed: {builder.name} built in {time.perf_counter() - started:.0f} s")


def prebuilt(builder) -> bool:
    """Whether DeepSpeed's ``load`` imports this op from its install rather than compiling it (its own rule)."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    return bool(installed_ops.get(builder.name)) and accelerator_name == get_accelerator()._name


def prebuilt_summary() -> str:
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops, torch_info

    ops = ", ".join(sorted(name for name, on in installed_ops.items() if on)) or "none"
    return (f"prebuilt ops: {ops}, for accelerator {accelerator_name} and torch {torch_info.get('version')}; "
            f"running accelerator: {get_accelerator()._name}")


def _builder(name: str):
    from deepspeed.accelerator import get_accelerator

    cache_cpu_info()
    return get_accelerator().create_op_builder(name)


def cache_cpu_info() -> None:
    """One py-cpuinfo answer per process.  DeepSpeed asks ``cpuinfo.get_cpu_info()`` for the compile flags of each
    op it loads (twice per CPU op, even when the op is compiled already) and again in its CPU Adam; each call runs a
    fresh interpreter, about 1.2 s on a 2-core machine, 5 per NVMe-offloaded run (profiled).  The CPU a process
    runs on does not change, so the first answer is kept (a copy per call: callers may change it)."""
    try:
        import cpuinfo
    except ImportError:
        return
    if getattr(cpuinfo.get_cpu_info, "alphaexa_cached", False):
        return
    ask = cpuinfo.get_cpu_info
    answer: list[dict] = []

    def get_cpu_info() -> dict:
        if not answer:
            answer.append(ask())
        return copy.deepcopy(answer[0])

    get_cpu_info.alphaexa_cached = True
    cpuinfo.get_cpu_info = get_cpu_info


def _build_directory(op_name: str) -> Path:
    # torch's own rule for where load() builds (TORCH_EXTENSIONS_DIR, else the default root
    # with a python/accelerator folder); private, so only used to find its lock file.
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(op_name, verbose=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile DeepSpeed's CPU ops ahead of the first run")
    parser.add_argument("--device", default="cpu", help="device type the ops are for (default cpu)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", args.device)
    ops = required_ops(offload_optimizer="nvme", offload_params="nvme", device_type=args.device)
    try:
        if not _builder(ASYNC_IO).is_compatible(verbose=False):
            print(f"DeepSpeed: libaio not found, NVMe offload (async_io) will be unavailable; {LIBAIO_HINT}")
            ops = [op for op in ops if op not in (PIN_MEMORY, ASYNC_IO)]
        prepare_ops(ops)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
