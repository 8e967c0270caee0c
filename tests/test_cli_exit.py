"""How ``alphaexa`` leaves (alphaexa.cli.main): run as the program (``python -m alphaexa``, the ``alphaexa``
script), a command that returned 0 skips the interpreter's teardown (``os._exit`` after the exit handlers and
a flush); an error, a program of one's own that calls main, or a wrapper exits as before."""
from __future__ import annotations

import subprocess
import sys

from train_runs import REPO, run_env

PLAN = ["plan", "--model", "debug", "--system", "h200-x1", "--global-batch", "8", "--seq-len", "32"]
# What pip writes as the alphaexa script, with an exit handler registered before main.
SCRIPT = """import atexit
import sys
atexit.register(lambda: print("exit handler ran", file=sys.stderr))
from alphaexa.cli import main
if __name__ == '__main__':
    sys.exit(main())
"""


def _python(*args: str) -> subprocess.CompletedProcess:
    # -v: the interpreter reports each module it tears down ("# cleanup[...]") on stderr
    return subprocess.run([sys.executable, "-v", *args], capture_output=True, text=True, timeout=120, env=run_env(),
                          cwd=REPO, check=False)


def test_a_command_that_succeeds_leaves_without_teardown_with_its_output_and_exit_handlers(tmp_path):
    direct = _python("-m", "alphaexa", *PLAN, "--out", str(tmp_path / "plan.json"))
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert direct.stdout.startswith("debug: ") and direct.stdout.endswith("\n") and (tmp_path / "plan.json").is_file()
    assert "# cleanup" not in direct.stderr
    script = tmp_path / "alphaexa"
    script.write_text(SCRIPT)
    scripted = _python(str(script), *PLAN, "--out", str(tmp_path / "plan.json"))
    assert scripted.returncode == 0 and scripted.stdout.splitlines()[-1] == direct.stdout.splitlines()[-1]  # all of it
    assert "exit handler ran" in scripted.stderr and "# cleanup" not in scripted.stderr


def test_errors_own_programs_and_wrappers_take_the_ordinary_exit(tmp_path):
    bad = _python("-m", "alphaexa", *[("no-such-model" if a == "debug" else a) for a in PLAN])
    assert bad.returncode == 2 and "no-such-model" in bad.stderr and "# cleanup" in bad.stderr
    # a program that calls main and goes on: its code after main runs
    own = _python("-c", "import sys; from alphaexa.cli import main; code = main(); print('after', code)", *PLAN)
    assert own.returncode == 0 and own.stdout.endswith("after 0\n") and "# cleanup" in own.stderr
    # mpi4py loaded (an MPI bootstrap): MPI_Finalize runs in the interpreter's finalization, which mpiexec waits for
    script = tmp_path / "alphaexa"
    script.write_text("import mpi4py\n" + SCRIPT)
    with_mpi = _python(str(script), *PLAN)
    assert with_mpi.returncode == 0 and "exit handler ran" in with_mpi.stderr and "# cleanup" in with_mpi.stderr
    profile = tmp_path / "profile.out"
    wrapped = _python("-m", "cProfile", "-o", str(profile), "-m", "alphaexa", *PLAN)
    assert wrapped.returncode == 0 and wrapped.stdout.startswith("debug: ")
    assert profile.stat().st_size > 0  # cProfile writes it after the module returned
