"""Launch-environment detection, its errors, and real multi-process init_distributed runs.

Run as a script (``python tests/test_launch.py``) this file is the worker that the
multi-process tests start under torchrun, mpiexec or hand-set launcher variables.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backends.errors import BackendError
from backends.launch import LaunchEnv, detect_launch, first_slurm_host

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Variables any launcher might have left in the test runner's own environment.
LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PMI_RANK",
    "PMI_SIZE",
    "PMI_LOCAL_RANK",
    "PMI_LOCAL_SIZE",
    "PMI_FD",
    "PALS_RANKID",
    "PALS_LOCAL_RANKID",
    "PALS_LOCAL_SIZE",
    "MPI_LOCALRANKID",
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "SLURM_PROCID",
    "SLURM_STEP_ID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "SLURM_JOB_ID",
    "SLURM_STEP_NUM_NODES",
    "SLURM_NNODES",
    "ALPHAEXA_BACKEND",
)


def clean_env(**extra: str) -> dict:
    """This environment without launcher variables, on the CPU family (gloo) even on a GPU machine."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("TORCHELASTIC")}
    env.update({"ALPHAEXA_BACKEND": "cpu", **extra})
    return env


DETECTION_CASES = {
    "torchrun": (
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "GROUP_WORLD_SIZE": "4",
            "MASTER_ADDR": "node0",
            "MASTER_PORT": "29400",
        },
        LaunchEnv("torchrun", 3, 1, 8, 2, "node0", 29400, 4),
    ),
    "torchrun_inside_srun": (
        {
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "a",
            "MASTER_PORT": "1",
            "SLURM_PROCID": "0",
            "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": "1",
            "SLURM_LOCALID": "0",
        },
        LaunchEnv("torchrun", 1, 1, 2, 2, "a", 1, 1),
    ),
    # What ALCF's mpiexec (PALS) sets on Polaris/Aurora: PALS_* and PMI_* together.
    "pals": (
        {
            "PALS_RANKID": "13",
            "PMI_RANK": "13",
            "PMI_SIZE": "24",
            "PALS_LOCAL_RANKID": "1",
            "PMI_LOCAL_RANK": "1",
            "PALS_LOCAL_SIZE": "12",
            "PMI_LOCAL_SIZE": "12",
            "PALS_NODEID": "1",
        },
        LaunchEnv("pals", 13, 1, 24, 12, None, None, 2),
    ),
    "pals_pmi_local_only": (
        {"PALS_LOCAL_RANKID": "3", "PMI_RANK": "7", "PMI_SIZE": "8", "PMI_LOCAL_SIZE": "4"},
        LaunchEnv("pals", 7, 3, 8, 4, None, None, 2),
    ),
    # Exactly what the mpich wheel's hydra mpiexec sets here (`mpiexec -n 2 env`).
    "hydra": (
        {
            "PMI_RANK": "1",
            "PMI_SIZE": "2",
            "PMI_FD": "9",
            "PMI_HOSTNAME": "vm",
            "MPI_LOCALRANKID": "1",
            "MPI_LOCALNRANKS": "2",
        },
        LaunchEnv("hydra", 1, 1, 2, 2, None, None, 1),
    ),
    "openmpi": (
        {
            "OMPI_COMM_WORLD_RANK": "5",
            "OMPI_COMM_WORLD_SIZE": "6",
            "OMPI_COMM_WORLD_LOCAL_RANK": "2",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "3",
        },
        LaunchEnv("openmpi", 5, 2, 6, 3, None, None, 2),
    ),
    "slurm": (
        {
            "SLURM_PROCID": "5",
            "SLURM_STEP_ID": "0",
            "SLURM_STEP_NUM_TASKS": "8",
            "SLURM_NTASKS": "16",
            "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1",
            "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
            "SLURM_STEP_NODELIST": "nid[0012-0013]",
            "SLURM_STEP_NUM_NODES": "2",
            "SLURM_JOB_ID": "12345",
        },
        LaunchEnv("slurm", 5, 1, 8, 4, "nid0012", 20000 + 12345, 2),
    ),
    "slurm_uneven_nodes": (
        {
            "SLURM_PROCID": "4",
            "SLURM_STEP_ID": "3",
            "SLURM_NTASKS": "5",
            "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1",
            "SLURM_TASKS_PER_NODE": "3,2",
            "SLURM_NODELIST": "gpu7",
            "SLURM_NNODES": "2",
            "SLURM_JOB_ID": "7",
            "MASTER_PORT": "4000",
        },
        LaunchEnv("slurm", 4, 1, 5, 2, "gpu7", 4000, 2),
    ),
    # A batch script's own process: SLURM variables but no srun step, so one process.
    "slurm_batch_script": (
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "9"},
        LaunchEnv("none", 0, 0, 1, 1, None, None, 1),
    ),
    "plain_pmi": ({"PMI_RANK": "2", "PMI_SIZE": "4"}, LaunchEnv("pmi", 2, 2, 4, 4, None, None, 1)),
    "none": ({}, LaunchEnv("none", 0, 0, 1, 1, None, None, 1)),
}


@pytest.mark.parametrize("name", list(DETECTION_CASES))
def test_detects_each_launcher(name):
    env, expected = DETECTION_CASES[name]
    assert detect_launch(env) == expected


def test_detect_reads_the_process_environment(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert detect_launch() == LaunchEnv("openmpi", 1, 1, 2, 2, None, None, 1)


GARBAGE_CASES = [
    ({"RANK": "abc", "WORLD_SIZE": "4"}, r"^RANK='abc' is not a non-negative integer \(torchrun launch\)$"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"^WORLD_SIZE='0' is not a positive integer"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, r"^RANK=4 is not below WORLD_SIZE=4 \(torchrun launch\)$"),
    (
        {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
        r"^LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2",
    ),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}, r"^LOCAL_WORLD_SIZE=4 exceeds WORLD_SIZE=2"),
    (
        {"PMI_RANK": "-1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0"},
        r"^PMI_RANK='-1' is not a non-negative integer \(hydra",
    ),
    ({"PALS_RANKID": "0", "PALS_LOCAL_RANKID": "0"}, r"^pals launch: none of PMI_SIZE is set$"),
    (
        {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2 nodes"},
        r"^OMPI_COMM_WORLD_SIZE='2 nodes' is not",
    ),
    (
        {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "x"},
        r"^SLURM_NTASKS='x' is not a positive integer",
    ),
    (
        {"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "http"},
        r"^MASTER_PORT='http' is not a positive integer",
    ),
    ({"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "70000"}, r"^MASTER_PORT='70000' is not a TCP port"),
]


@pytest.mark.parametrize(
    "env,message",
    GARBAGE_CASES,
    ids=[next(iter(c[0].items()))[0] + str(i) for i, c in enumerate(GARBAGE_CASES)],
)
def test_garbage_launcher_variables_name_the_variable(env, message):
    with pytest.raises(BackendError, match=message) as info:
        detect_launch(env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "nodelist,first",
    [
        ("nid[0012-0015,0020]", "nid0012"),
        ("x3004c0s1b0n0", "x3004c0s1b0n0"),
        ("gpu[7,9],login1", "gpu7"),
        ("a,b", "a"),
        ("node[003]", "node003"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def _run_env_cli(env, *args):
    return subprocess.run(
        [str(BIN / "alphaexa"), *args, "env"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_reports_garbage_variable_in_one_line():
    result = _run_env_cli(clean_env(RANK="abc", WORLD_SIZE="2"))
    assert result.returncode == 2
    assert (
        result.stderr == "alphaexa env: error: RANK='abc' is not a non-negative integer (torchrun launch)\n"
    )
    assert result.stdout == ""


def test_single_process_init_distributed_without_launcher(monkeypatch):
    import torch
    import torch.distributed as dist

    from backends.launch import destroy_distributed, init_distributed

    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ALPHAEXA_BACKEND", "cpu")
    info = init_distributed(timeout_s=30)
    try:
        assert (info.launch.launcher, info.rank, info.world_size, info.dist_backend) == ("none", 0, 1, "gloo")
        assert dist.is_initialized() and dist.get_world_size() == 1
        assert init_distributed().dist_backend == "gloo"  # idempotent
        value = torch.tensor([2.5])
        dist.all_reduce(value)
        assert value.item() == 2.5
    finally:
        destroy_distributed()
    assert not dist.is_initialized()


def test_mpi_launch_without_address_or_mpi4py_is_a_clear_error(monkeypatch):
    from backends.launch import mpi_bootstrap

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `import mpi4py` raise ImportError
    with pytest.raises(
        BackendError, match=r"^launched by hydra without MASTER_ADDR, and mpi4py is not importable"
    ):
        mpi_bootstrap(LaunchEnv("hydra", 0, 0, 2, 2, None, None, 1))


# --- real multi-process runs ----------------------------------------------------------------------


def _worker() -> None:
    """Initialise through init_distributed, all-reduce, and print one JSON line per rank."""
    import torch
    import torch.distributed as dist

    from backends.launch import destroy_distributed, init_distributed

    had_master_addr = "MASTER_ADDR" in os.environ
    info = init_distributed(timeout_s=60)
    value = torch.tensor([float(info.rank + 1), 10.0**info.rank])
    dist.all_reduce(value)
    rendezvous = [None] * info.world_size
    dist.all_gather_object(rendezvous, (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]))
    line = json.dumps(
        {
            "launcher": info.launch.launcher,
            "rank": info.rank,
            "local_rank": info.local_rank,
            "world_size": info.world_size,
            "backend": info.dist_backend,
            "sum": value.tolist(),
            "had_master_addr": had_master_addr,
            "rendezvous": rendezvous,
        }
    )
    # One write() call, so lines from ranks sharing a pipe cannot interleave.
    os.write(sys.stdout.fileno(), (line + "\n").encode())
    destroy_distributed()


def _results(stdout: str, world: int) -> list[dict]:
    rows = sorted(
        (json.loads(line) for line in stdout.splitlines() if line.startswith("{")), key=lambda r: r["rank"]
    )
    assert [r["rank"] for r in rows] == list(range(world)), stdout
    expected_sum = [world * (world + 1) / 2, sum(10.0**r for r in range(world))]
    for row in rows:
        assert row["world_size"] == world and row["backend"] == "gloo"
        assert row["sum"] == expected_sum
        # Every rank rendezvoused at the same address and port.
        assert len({tuple(x) for x in row["rendezvous"]}) == 1
    return rows


@pytest.mark.multiproc
def test_torchrun_four_processes_all_reduce():
    result = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", "4", "--master-port", str(_free_port()), __file__],
        check=False,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    rows = _results(result.stdout, 4)
    assert {r["launcher"] for r in rows} == {"torchrun"}
    assert [r["local_rank"] for r in rows] == [0, 1, 2, 3]


@pytest.mark.multiproc
def test_mpiexec_four_processes_bootstrap_through_mpi4py():
    env = clean_env()
    result = subprocess.run(
        [str(BIN / "mpiexec"), "-n", "4", sys.executable, __file__],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    rows = _results(result.stdout, 4)
    assert {r["launcher"] for r in rows} == {"hydra"}
    # No launcher variable gave an address: the mpi4py broadcast did.
    assert not any(r["had_master_addr"] for r in rows)
    assert rows[0]["rendezvous"][0][0] == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_env(launcher: str, rank: int, world: int, port: int) -> dict:
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if launcher == "pals":
        return dict(
            PALS_RANKID=str(rank),
            PMI_RANK=str(rank),
            PMI_SIZE=str(world),
            PALS_LOCAL_RANKID=str(rank),
            PALS_LOCAL_SIZE=str(world),
            **master,
        )
    if launcher == "openmpi":
        return dict(
            OMPI_COMM_WORLD_RANK=str(rank),
            OMPI_COMM_WORLD_SIZE=str(world),
            OMPI_COMM_WORLD_LOCAL_RANK=str(rank),
            OMPI_COMM_WORLD_LOCAL_SIZE=str(world),
            **master,
        )
    assert launcher == "slurm"
    return dict(
        SLURM_PROCID=str(rank),
        SLURM_STEP_ID="0",
        SLURM_STEP_NUM_TASKS=str(world),
        SLURM_LOCALID=str(rank),
        SLURM_NODEID="0",
        SLURM_STEP_TASKS_PER_NODE=str(world),
        SLURM_STEP_NODELIST="localhost",
        **master,
    )


@pytest.mark.multiproc
def test_pals_openmpi_slurm_variables_drive_one_real_process_group():
    """Rank r of a 3-process job sees only launcher r's variables (PALS, Open MPI, SLURM).

    A rank that misread its rank or world size would hang the rendezvous (caught by
    the timeout) or break the sum; sharing one job keeps the start-up cost to 3 processes.
    """
    launchers = ["pals", "openmpi", "slurm"]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__],
            env=clean_env(**_launcher_env(name, r, 3, port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for r, name in enumerate(launchers)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    rows = _results("".join(out for out, _ in outputs), 3)
    assert [r["launcher"] for r in rows] == launchers
    assert rows[0]["rendezvous"][0] == ["127.0.0.1", str(port)]


if __name__ == "__main__":
    _worker()
    # Its line is written (os.write) and its group destroyed: leave as `alphaexa` does (alphaexa.cli), without
    # torch's teardown (about 1 s a rank), except under an MPI bootstrap (mpi4py), whose MPI_Finalize mpiexec
    # waits for.  An exception in _worker still exits 1 with its traceback.
    from alphaexa.cli import _leave_now

    _leave_now()
