"""Rank placement: rank -> node, device (or gpu.tile), NIC, CPU cores, launcher strings.

Local ranks follow the node's NUMA domains in order and, inside a domain, the
devices attached to it in id order; each rank gets an equal, contiguous share
of its domain's physical cores, reserved cores excluded.  On the catalogue's
nodes this reproduces the ALCF documented bindings exactly:

* Polaris: local rank r -> GPU 3-r (GPUs are numbered opposite to the NUMA
  domains) and cores 8r..8r+7, i.e. ``--cpu-bind list:0-7:8-15:16-23:24-31``
  (the same cores as ``--cpu-bind depth -d 8``) with CUDA_VISIBLE_DEVICES=3,2,1,0.
* Aurora: local rank r -> ZE_AFFINITY_MASK=(r//2).(r%2) and
  ``--cpu-bind list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100``
  (cores 0 and 52 are reserved for the OS).

Global ranks fill nodes in order (rank = node * ranks_per_node + local rank),
which together with topology.layout's rank order puts tensor-parallel groups on
consecutive local ranks (the fastest link), expert groups inside a node when
ep * tp fits, and pipeline stages across nodes.

oneCCL worker threads (Aurora): CCL_WORKER_AFFINITY lists one core per local
rank - the last core of that rank's own list - so the progress thread stays on
the rank's socket and inside its cpuset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .costmodel import comm_path
from .hardware import System
from .layout import MESH_DIMS, Layout
from .modelcfg import ConfigError


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (Linux cpulist syntax)."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def format_cpulist(cores: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    parts = []
    run: list[int] = []
    for c in sorted(cores):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


@dataclass(frozen=True)
class LocalRank:
    local_rank: int
    device: str  # visibility id: "3", "0.1"
    numa: int
    nic: str
    cores: tuple[int, ...]

    @property
    def cpu_list(self) -> str:
        return format_cpulist(list(self.cores))


def local_ranks(system: System) -> list[LocalRank]:
    """The per-node template: one entry per local rank, in local-rank order."""
    node = system.node
    reserved = set(node.reserved_cores)
    out: list[LocalRank] = []
    for numa, cores_text in enumerate(node.numa_cores):
        slots = sorted((s for s in node.slots if s.numa == numa), key=_slot_order)
        if not slots:
            continue
        usable = [c for c in parse_cpulist(cores_text) if c not in reserved]
        share = len(usable) // len(slots)
        if share < 1:
            raise ConfigError(f"system {system.name}: NUMA domain {numa} has {len(usable)} usable cores "
                              f"for {len(slots)} devices")
        numa_nics = [n.name for n in node.nics if n.numa == numa] or [n.name for n in node.nics]
        for i, slot in enumerate(slots):
            nic = slot.nic or (numa_nics[i % len(numa_nics)] if numa_nics else "")
            out.append(LocalRank(len(out), slot.id, numa, nic, tuple(usable[i * share:(i + 1) * share])))
    return out


def _slot_order(slot) -> tuple[int, ...]:
    return tuple(int(p) for p in slot.id.split(".") if p.isdigit())


@dataclass
class Placement:
    system: System
    layout: Layout
    nodes: int
    hosts: list[str]
    local: list[LocalRank]

    @property
    def ranks_per_node(self) -> int:
        return len(self.local)

    @property
    def cpu_bind(self) -> str:
        """The ``mpiexec --cpu-bind`` value: ``list:`` + one core list per local rank."""
        return "list:" + ":".join(lr.cpu_list for lr in self.local)

    def env(self, local_rank: int) -> dict[str, str]:
        """Environment for one local rank (device visibility)."""
        var = self.system.node.visibility_env
        return {var: self.local[local_rank].device} if var else {}

    def node_env(self) -> dict[str, str]:
        """Environment shared by every rank of a node (oneCCL worker pinning on Aurora)."""
        if not self.system.node.ccl_worker_affinity:
            return {}
        return {"CCL_WORKER_AFFINITY": ",".join(str(lr.cores[-1]) for lr in self.local)}

    def rank(self, r: int) -> dict[str, Any]:
        node, lr = divmod(r, self.ranks_per_node)
        loc = self.local[lr]
        return {"rank": r, "node": node, "host": self.hosts[node], "local_rank": lr, "device": loc.device,
                "nic": loc.nic, "cpus": loc.cpu_list}

    def groups(self) -> dict[str, dict[str, Any]]:
        """Size, stride and link class of each parallel dimension's process groups."""
        lay = self.layout
        stride = 1
        strides = {}
        for dim in reversed(MESH_DIMS):
            strides[dim] = stride
            stride *= getattr(lay, dim)
        out = {}
        for dim in MESH_DIMS:
            size = getattr(lay, dim)
            out[dim] = {"size": size, "stride": strides[dim],
                        "link": comm_path(self.system, size, strides[dim]).link_class}
        out["ep"] = {"size": lay.ep, "stride": lay.tp, "link": comm_path(self.system, lay.ep, lay.tp).link_class}
        return out

    def mpiexec_args(self) -> str:
        return f"-n {self.nodes * self.ranks_per_node} --ppn {self.ranks_per_node} --cpu-bind {self.cpu_bind}"

    def to_dict(self) -> dict[str, Any]:
        var = self.system.node.visibility_env
        return {
            "ranks_per_node": self.ranks_per_node,
            "nodes": self.nodes,
            "hosts": self.hosts,
            "visibility_env": var,
            "cpu_bind": self.cpu_bind,
            "mpiexec": self.mpiexec_args(),
            "node_env": self.node_env(),
            "local": [{"local_rank": lr.local_rank, "device": lr.device, "numa": lr.numa, "nic": lr.nic,
                       "cpus": lr.cpu_list, "env": self.env(lr.local_rank)} for lr in self.local],
            "groups": self.groups(),
            "ranks": [self.rank(r) for r in range(self.nodes * self.ranks_per_node)],
        }


def place(layout: Layout, system: System, nodes: int, hosts: list[str] | None = None) -> Placement:
    world = nodes * system.ranks_per_node
    lay = layout.resolve(world)
    if hosts is None:
        hosts = [f"node{i:04d}" for i in range(nodes)]
    if len(hosts) < nodes:
        raise ConfigError(f"placement needs {nodes} host names, got {len(hosts)}")
    return Placement(system, lay, nodes, list(hosts[:nodes]), local_ranks(system))
