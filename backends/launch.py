"""Launch-environment detection and ``init_distributed()``.

``detect_launch()`` reads only environment variables (no communication) and says
which launcher started this process and where it sits.  Launchers, checked in
this order (the first whose marker variable is set wins):

============  ===========================  =================================================
launcher      marker                       rank / world / local rank / local world
============  ===========================  =================================================
torchrun      RANK and WORLD_SIZE          RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE
pals          PALS_RANKID or               PALS_RANKID|PMI_RANK, PMI_SIZE,
              PALS_LOCAL_RANKID            PALS_LOCAL_RANKID|PMI_LOCAL_RANK,
              (ALCF mpiexec: Polaris,      PALS_LOCAL_SIZE|PMI_LOCAL_SIZE
              Aurora)
openmpi       OMPI_COMM_WORLD_RANK         OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}
hydra         PMI_RANK and MPI_LOCALRANKID PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
              (MPICH / Intel MPI mpiexec)
slurm         SLURM_PROCID and             SLURM_PROCID, SLURM_STEP_NUM_TASKS|SLURM_NTASKS,
              SLURM_STEP_ID (inside srun)  SLURM_LOCALID, tasks on this node from
                                           SLURM_STEP_TASKS_PER_NODE|SLURM_TASKS_PER_NODE
pmi           PMI_RANK (any other PMI)     PMI_RANK, PMI_SIZE, PMI_LOCAL_RANK, PMI_LOCAL_SIZE
none          nothing above                rank 0 of 1
============  ===========================  =================================================

A SLURM batch script that runs python directly (not through srun) has
SLURM_PROCID=0 but no SLURM_STEP_ID; it is one process, so it counts as ``none``.

The rendezvous address comes from MASTER_ADDR / MASTER_PORT when set (port default
29500).  Otherwise, under SLURM it is the step's first node and a port derived
from the job id (every rank computes the same answer without talking), and under
an MPI launcher ``init_distributed`` asks mpi4py: rank 0 picks its address (the
loopback when the whole job is on one node) and a free port, and broadcasts them.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from .device import Backend, get_backend
from .errors import BackendError

# Launchers under which mpi4py can reach every rank (srun too, through its PMI plugin).
MPI_LAUNCHERS = ("pals", "openmpi", "hydra", "pmi", "slurm")
# torch's own default rendezvous port (torchrun uses it too).
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class LaunchEnv:
    launcher: str
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str | None
    master_port: int | None
    num_nodes: int | None

    def as_dict(self) -> dict:
        return asdict(self)


class _Reader:
    """Parses launcher variables, naming the variable and its value on bad input."""

    def __init__(self, env: Mapping[str, str], launcher: str):
        self.env = env
        self.launcher = launcher

    def first(self, *names: str) -> str | None:
        """The name of the first of ``names`` that is set."""
        return next((n for n in names if self.env.get(n, "") != ""), None)

    def integer(self, *names: str, default: int | None = None, minimum: int = 0) -> tuple[int, str | None]:
        """(value, variable name) of the first set variable among ``names``."""
        name = self.first(*names)
        if name is None:
            if default is None:
                raise BackendError(f"{self.launcher} launch: none of {', '.join(names)} is set")
            return default, None
        raw = self.env[name].strip()
        if not re.fullmatch(r"\d+", raw) or int(raw) < minimum:
            kind = "a positive integer" if minimum > 0 else "a non-negative integer"
            raise BackendError(f"{name}={self.env[name]!r} is not {kind} ({self.launcher} launch)")
        return int(raw), name


def _slurm_tasks_on_this_node(spec: str, node_index: int) -> int | None:
    """Tasks on node ``node_index`` from a SLURM tasks-per-node spec such as '4(x2),3'."""
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            return None
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node_index] if 0 <= node_index < len(counts) else None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'nid[0012-0015,0020],login1' -> 'nid0012'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise BackendError(f"SLURM node list {nodelist!r} is not a hostlist")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Which launcher started this process, and this process's place in the job."""
    env = os.environ if env is None else env

    def has(*names: str) -> bool:
        return all(env.get(n, "") != "" for n in names)

    if has("RANK", "WORLD_SIZE"):
        read = _Reader(env, "torchrun")
        rank, rank_var = read.integer("RANK")
        world, world_var = read.integer("WORLD_SIZE", minimum=1)
        local_rank, local_var = read.integer("LOCAL_RANK", default=rank)
        local_world, local_world_var = read.integer("LOCAL_WORLD_SIZE", default=world)
        nodes = _nodes_from(read, "GROUP_WORLD_SIZE", default_world=(world, local_world))
    elif has("PALS_RANKID") or has("PALS_LOCAL_RANKID"):
        read = _Reader(env, "pals")
        rank, rank_var = read.integer("PALS_RANKID", "PMI_RANK")
        world, world_var = read.integer("PMI_SIZE", minimum=1)
        local_rank, local_var = read.integer("PALS_LOCAL_RANKID", "PMI_LOCAL_RANK")
        local_world, local_world_var = read.integer("PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE", default=world)
        nodes = _nodes_from(read, default_world=(world, local_world))
    elif has("OMPI_COMM_WORLD_RANK"):
        read = _Reader(env, "openmpi")
        rank, rank_var = read.integer("OMPI_COMM_WORLD_RANK")
        world, world_var = read.integer("OMPI_COMM_WORLD_SIZE", minimum=1)
        local_rank, local_var = read.integer("OMPI_COMM_WORLD_LOCAL_RANK", default=rank)
        local_world, local_world_var = read.integer("OMPI_COMM_WORLD_LOCAL_SIZE", default=world)
        nodes = _nodes_from(read, default_world=(world, local_world))
    elif has("PMI_RANK", "MPI_LOCALRANKID"):
        read = _Reader(env, "hydra")
        rank, rank_var = read.integer("PMI_RANK")
        world, world_var = read.integer("PMI_SIZE", minimum=1)
        local_rank, local_var = read.integer("MPI_LOCALRANKID")
        local_world, local_world_var = read.integer("MPI_LOCALNRANKS", default=world)
        nodes = _nodes_from(read, default_world=(world, local_world))
    elif has("SLURM_PROCID", "SLURM_STEP_ID"):
        read = _Reader(env, "slurm")
        rank, rank_var = read.integer("SLURM_PROCID")
        world, world_var = read.integer("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS", minimum=1)
        local_rank, local_var = read.integer("SLURM_LOCALID")
        node_index, _ = read.integer("SLURM_NODEID", default=0)
        spec_var = read.first("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
        local_world = _slurm_tasks_on_this_node(env[spec_var], node_index) if spec_var else None
        if local_world is None:
            local_world, spec_var = read.integer("SLURM_NTASKS_PER_NODE", default=world, minimum=1)
        local_world_var = spec_var
        nodes = _nodes_from(
            read,
            "SLURM_STEP_NUM_NODES",
            "SLURM_NNODES",
            "SLURM_JOB_NUM_NODES",
            default_world=(world, local_world),
        )
    elif has("PMI_RANK"):
        read = _Reader(env, "pmi")
        rank, rank_var = read.integer("PMI_RANK")
        world, world_var = read.integer("PMI_SIZE", minimum=1)
        local_rank, local_var = read.integer("PMI_LOCAL_RANK", default=rank)
        local_world, local_world_var = read.integer("PMI_LOCAL_SIZE", default=world)
        nodes = _nodes_from(read, default_world=(world, local_world))
    else:
        read = _Reader(env, "none")
        rank, rank_var, world, world_var = 0, None, 1, None
        local_rank, local_var, local_world, local_world_var = 0, None, 1, None
        nodes = 1

    _check_below(rank, rank_var, world, world_var, read.launcher)
    _check_below(local_rank, local_var, local_world, local_world_var, read.launcher)
    if local_world > world:
        raise BackendError(
            f"{local_world_var}={local_world} exceeds {world_var}={world} ({read.launcher} launch)"
        )

    master_addr = env.get("MASTER_ADDR") or None
    master_port = read.integer("MASTER_PORT", minimum=1, default=0)[0] or None
    if master_port is not None and master_port > 65535:
        raise BackendError(f"MASTER_PORT={env['MASTER_PORT']!r} is not a TCP port (1-65535)")
    if read.launcher == "slurm" and master_addr is None:
        nodelist = read.first("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        if nodelist is not None:
            master_addr = first_slurm_host(env[nodelist])
            if master_port is None:
                job_id, _ = read.integer("SLURM_JOB_ID", "SLURM_JOBID", default=0)
                # Every rank derives the same port; spreading by job id keeps two jobs
                # sharing a node off each other's port.
                master_port = 20000 + job_id % 20000
    return LaunchEnv(read.launcher, rank, local_rank, world, local_world, master_addr, master_port, nodes)


def _nodes_from(read: _Reader, *names: str, default_world: tuple[int, int]) -> int | None:
    """The node count from a launcher variable, else world / local world when that divides evenly."""
    if names and read.first(*names):
        return read.integer(*names, minimum=1)[0]
    world, local_world = default_world
    return world // local_world if local_world and world % local_world == 0 else None


def _check_below(value: int, value_var: str | None, limit: int, limit_var: str | None, launcher: str) -> None:
    if value >= limit:
        limit_text = f"{limit_var}={limit}" if limit_var else f"the inferred {limit}"
        raise BackendError(f"{value_var}={value} is not below {limit_text} ({launcher} launch)")


# --- rendezvous and process group -----------------------------------------------------------------


@dataclass(frozen=True)
class DistributedInfo:
    """What ``init_distributed`` set up."""

    launch: LaunchEnv
    dist_backend: str
    device: torch.device
    backend: Backend

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def local_rank(self) -> int:
        return self.launch.local_rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _this_host_address(single_node: bool) -> str:
    if single_node:
        return "127.0.0.1"
    hostname = socket.gethostname()
    try:
        address = socket.gethostbyname(hostname)
    except OSError:
        return hostname
    # A hostname mapped to loopback in /etc/hosts is useless to other nodes.
    return hostname if address.startswith("127.") else address


def mpi_bootstrap(launch: LaunchEnv) -> tuple[str, int]:
    """Rank 0 picks its address and a free port; mpi4py broadcasts them to every rank."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise BackendError(
            f"launched by {launch.launcher} without MASTER_ADDR, and mpi4py is not "
            f"importable to bootstrap the rendezvous ({e}); set MASTER_ADDR and "
            "MASTER_PORT or install alphaexa[mpi]"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != launch.world_size or comm.Get_rank() != launch.rank:
        raise BackendError(
            f"mpi4py sees rank {comm.Get_rank()} of {comm.Get_size()} but the {launch.launcher} "
            f"variables say rank {launch.rank} of {launch.world_size}"
        )
    address = None
    if launch.rank == 0:
        address = (_this_host_address(launch.num_nodes == 1), free_port())
    return comm.bcast(address, root=0)


def _export_rendezvous(launch: LaunchEnv, addr: str, port: int) -> None:
    # Exported so that libraries reading the torchrun variables (DeepSpeed,
    # DeviceMesh's default group, env:// init) agree with what we detected.
    os.environ.update(
        {
            "MASTER_ADDR": addr,
            "MASTER_PORT": str(port),
            "RANK": str(launch.rank),
            "WORLD_SIZE": str(launch.world_size),
            "LOCAL_RANK": str(launch.local_rank),
            "LOCAL_WORLD_SIZE": str(launch.local_world_size),
        }
    )


def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> DistributedInfo:
    """Initialise torch.distributed for this process wherever it was launched.

    Picks the device family (``get_backend``), sets this rank's device from its
    local rank, and initialises the default process group with the family's
    collective backend (``backend`` overrides the collective name, e.g. "gloo" on a
    GPU).  A single process with no launcher gets a real world-1 group on an
    in-memory store, so DeviceMesh / FSDP2 / DCP run the same code path as at scale
    without opening a port.  Idempotent: a second call returns the live setup.
    ``timeout_s`` bounds the rendezvous and every collective.
    """
    launch = detect_launch()
    device_backend = get_backend()
    device = device_backend.set_device(launch.local_rank)
    if dist.is_initialized():
        return DistributedInfo(launch, dist.get_backend(), device, device_backend)
    dist_backend = backend or device_backend.dist_backend
    if dist_backend == "ccl":
        try:
            import oneccl_bindings_for_pytorch  # noqa: F401  (registers the "ccl" backend)
        except ImportError as e:
            raise BackendError(f"collective backend 'ccl' needs oneccl_bindings_for_pytorch: {e}") from None
    timeout = datetime.timedelta(seconds=timeout_s)
    # device_id binds the NCCL communicator to this rank's GPU and forms it eagerly.
    device_id = device if dist_backend == "nccl" else None

    if launch.world_size == 1:
        dist.init_process_group(
            dist_backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout, device_id=device_id
        )
        return DistributedInfo(launch, dist_backend, device, device_backend)

    addr, port = launch.master_addr, launch.master_port
    if addr is None:
        if launch.launcher not in MPI_LAUNCHERS:
            raise BackendError(
                f"{launch.launcher} launch of {launch.world_size} processes without MASTER_ADDR"
            )
        boot_addr, boot_port = mpi_bootstrap(launch)
        addr, port = boot_addr, port or boot_port
    port = port or DEFAULT_MASTER_PORT
    _export_rendezvous(launch, addr, port)
    dist.init_process_group(
        dist_backend,
        init_method=f"tcp://{_bracket_ipv6(addr)}:{port}",
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timeout,
        device_id=device_id,
    )
    return DistributedInfo(launch, dist_backend, device, device_backend)


def _bracket_ipv6(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def destroy_distributed() -> None:
    """Tear down the default process group if one is up."""
    if dist.is_initialized():
        dist.destroy_process_group()
