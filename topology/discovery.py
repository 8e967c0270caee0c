"""Live-node discovery: CPUs/NUMA from sysfs, GPUs and links from vendor tools, NICs, node list.

Every reader takes a ``root`` (default "/") so tests feed synthetic sysfs
trees, and every tool output has a pure parser so tests feed captured text:

* ``read_cpu_topology(root)`` - sockets, physical cores, hardware threads and
  NUMA domains from /sys/devices/system/{cpu,node};
* ``parse_nvidia_smi_topo(text)`` - ``nvidia-smi topo -m``: GPU/NIC link matrix,
  CPU and NUMA affinity, NIC legend;
* ``parse_xpu_smi_topo(text)`` - ``xpu-smi topology -m``: tiles ("GPU 0/1"),
  MDF/XL links, CPU affinity;
* ``read_nics(root)`` - /sys/class/infiniband (rate), /sys/class/cxi
  (Slingshot), /sys/class/net (speed), each with its NUMA node;
* ``node_list(env)`` - PBS_NODEFILE or SLURM_JOB_NODELIST/SLURM_NODELIST
  (hostlist brackets expanded).

``discover()`` runs them on the live machine (the GPU tools as subprocesses;
torch only as a last resort, in a subprocess, so this module never imports it)
and ``system_from_discovery`` turns the result into a ``hardware.System``
(what ``--system auto`` plans for).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hardware as hw
from .modelcfg import ConfigError
from .placement import format_cpulist, parse_cpulist

CPULIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


# --------------------------------------------------------------------- CPUs
@dataclass
class CpuTopology:
    sockets: int
    physical_cores: list[int]  # the first hardware thread of every core
    threads_per_core: int
    numa: dict[int, list[int]]  # NUMA node -> its physical cores (nodes without CPUs omitted)
    memory_gib: float = 0.0
    reserved: list[int] = field(default_factory=list)  # physical cores outside this process's cpuset

    def to_dict(self) -> dict[str, Any]:
        return {"sockets": self.sockets, "physical_cores": len(self.physical_cores),
                "reserved_cores": format_cpulist(self.reserved),
                "threads_per_core": self.threads_per_core, "memory_gib": round(self.memory_gib, 1),
                "numa": {str(k): format_cpulist(v) for k, v in self.numa.items()}}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_cpu_topology(root: str | Path = "/") -> CpuTopology:
    base = Path(root) / "sys/devices/system"
    online_text = _read(base / "cpu/online")
    if online_text is None:
        raise ConfigError(f"cannot read {base / 'cpu/online'}: not a Linux sysfs tree")
    cores: dict[tuple[int, int], list[int]] = {}
    for cpu in parse_cpulist(online_text):
        topo = base / f"cpu/cpu{cpu}/topology"
        package = int(_read(topo / "physical_package_id") or 0)
        core = int(_read(topo / "core_id") or cpu)
        cores.setdefault((package, core), []).append(cpu)
    physical = sorted(min(threads) for threads in cores.values())
    threads = max(len(t) for t in cores.values())
    sockets = len({pkg for pkg, _ in cores})
    numa: dict[int, list[int]] = {}
    node_dir = base / "node"
    if node_dir.is_dir():
        for d in sorted(node_dir.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
            cpus = set(parse_cpulist(_read(d / "cpulist") or ""))
            mine = [c for c in physical if c in cpus]
            if mine:
                numa[int(d.name[4:])] = mine
    if not numa:
        numa = {0: physical}
    allowed = _allowed_cpus(Path(root))
    reserved = [c for c in physical if allowed is not None and c not in allowed]
    return CpuTopology(sockets, physical, threads, numa, _mem_total_gib(Path(root)), reserved)


def _allowed_cpus(root: Path) -> set[int] | None:
    """CPUs this job may use: the cgroup v2 cpuset, or the process affinity on the live node.

    Sites reserve cores for the OS by leaving them out of the job's cpuset (Aurora: 0 and 52).
    """
    text = _read(root / "sys/fs/cgroup/cpuset.cpus.effective")
    if text:
        return set(parse_cpulist(text))
    if root == Path("/") and hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return None


def _mem_total_gib(root: Path) -> float:
    text = _read(root / "proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) / 1024**2 if m else 0.0


# ---------------------------------------------------------------- GPU links
@dataclass
class TopoMatrix:
    """A vendor tool's device matrix: devices, link labels between them, CPU/NUMA affinity."""

    devices: list[str]  # "GPU0" / "0/1" (xpu-smi gpu/tile)
    links: dict[tuple[str, str], str]  # unordered pair -> label ("NV18", "SYS", "MDF", "XL")
    cpu_affinity: dict[str, str] = field(default_factory=dict)
    numa: dict[str, int] = field(default_factory=dict)
    nics: dict[str, str] = field(default_factory=dict)  # column name -> device name (NIC0 -> mlx5_0)
    nic_links: dict[tuple[str, str], str] = field(default_factory=dict)  # (device, nic) -> label

    def link(self, a: str, b: str) -> str:
        return self.links.get((a, b)) or self.links.get((b, a), "")

    def nearest_nic(self, device: str) -> str:
        """The NIC on the device's PCIe switch, host bridge or NUMA node; "" when all are across sockets."""
        rank = {"PIX": 0, "PXB": 1, "PHB": 2, "NODE": 3}
        options = [(rank[label], nic) for (dev, nic), label in self.nic_links.items()
                   if dev == device and label in rank]
        return self.nics.get(min(options)[1], min(options)[1]) if options else ""

    def to_dict(self) -> dict[str, Any]:
        return {"devices": self.devices,
                "links": {f"{a}-{b}": v for (a, b), v in self.links.items()},
                "cpu_affinity": self.cpu_affinity, "numa": self.numa,
                "nearest_nic": {d: self.nearest_nic(d) for d in self.devices}}


def _cells(line: str) -> list[str]:
    if "\t" in line:
        return [c.strip() for c in line.split("\t")]
    return [c.strip() for c in re.split(r"\s{2,}|\t", line)]


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def parse_nvidia_smi_topo(text: str) -> TopoMatrix:
    """Parse ``nvidia-smi topo -m``; raises ConfigError if no GPU matrix is found."""
    text = ANSI_ESCAPE.sub("", text)  # recent drivers underline the header cells with escape codes
    lines = text.splitlines()
    header_at = next((i for i, ln in enumerate(lines) if re.search(r"\bGPU0\b", ln) and "X" not in ln.split()),
                     None)
    if header_at is None:
        raise ConfigError("nvidia-smi topo -m output has no GPU0 header line")
    header = _cells(lines[header_at])
    while header and not header[0]:
        header.pop(0)
    columns = [h for h in header if h]
    devices = [c for c in columns if re.fullmatch(r"GPU\d+", c)]
    others = [c for c in columns if c not in devices and c not in ("CPU Affinity", "NUMA Affinity",
                                                                     "GPU NUMA ID")]
    out = TopoMatrix(devices=devices, links={})
    for ln in lines[header_at + 1:]:
        if not ln.strip() or ln.startswith("Legend") or ln.strip().startswith("Legend"):
            break
        cells = _cells(ln)
        name, values = cells[0], cells[1:]
        if name not in devices and name not in others:
            continue
        for col, value in zip(columns, values):
            if col == "CPU Affinity" and name in devices:
                out.cpu_affinity[name] = value
            elif col == "NUMA Affinity" and name in devices and value.isdigit():
                out.numa[name] = int(value)
            elif col in devices and name in devices and col != name:
                out.links[(name, col)] = value
            elif col in others and name in devices:
                out.nic_links[(name, col)] = value
    for m in re.finditer(r"^\s*(NIC\d+):\s*(\S+)\s*$", text, re.MULTILINE):
        out.nics[m.group(1)] = m.group(2)
    for col in others:
        out.nics.setdefault(col, col)
    if not out.links and len(devices) > 1:
        raise ConfigError("nvidia-smi topo -m output: GPU rows not found")
    return out


def parse_xpu_smi_topo(text: str) -> TopoMatrix:
    """Parse ``xpu-smi topology -m`` (rows "GPU <gpu>/<tile>", link labels, CPU affinity last)."""
    text = ANSI_ESCAPE.sub("", text)
    header = next((ln for ln in text.splitlines() if "CPU Affinity" in ln), None)
    if header is None:
        raise ConfigError("xpu-smi topology -m output has no 'CPU Affinity' header line")
    devices = re.findall(r"GPU\s+(\d+/\d+)", header)
    out = TopoMatrix(devices=devices, links={})
    for ln in text.splitlines():
        m = re.match(r"^\s*GPU\s+(\d+/\d+)\s+(.*)$", ln)
        if not m or ln == header:
            continue
        name, rest = m.group(1), m.group(2).split()
        if rest and CPULIST.match(rest[-1]):
            out.cpu_affinity[name] = rest[-1]
            rest = rest[:-1]
        for col, value in zip(devices, rest):
            if col != name:
                out.links[(name, col)] = value
    if not out.cpu_affinity:
        raise ConfigError("xpu-smi topology -m output: no GPU rows with a CPU affinity")
    return out


# --------------------------------------------------------------------- NICs
@dataclass
class NicInfo:
    name: str
    kind: str  # infiniband | slingshot | ethernet
    gbps: float  # GB/s per direction (0 unknown)
    numa: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _numa_of(device_dir: Path) -> int:
    value = _read(device_dir / "numa_node")
    return max(0, int(value)) if value and value.lstrip("-").isdigit() else 0


def read_nics(root: str | Path = "/") -> list[NicInfo]:
    base = Path(root) / "sys/class"
    out: list[NicInfo] = []
    for d in sorted((base / "infiniband").glob("*")) if (base / "infiniband").is_dir() else []:
        rate = _read(d / "ports/1/rate") or ""
        m = re.match(r"([\d.]+)\s*Gb/sec", rate)
        out.append(NicInfo(d.name, "infiniband", float(m.group(1)) / 8 if m else 0.0, _numa_of(d / "device")))
    for d in sorted((base / "cxi").glob("cxi*")) if (base / "cxi").is_dir() else []:
        out.append(NicInfo(d.name, "slingshot", hw.SLINGSHOT11.gbps, _numa_of(d / "device")))
    for d in sorted((base / "net").glob("*")) if (base / "net").is_dir() else []:
        if d.name == "lo" or not (d / "device").exists():
            continue  # loopback and virtual interfaces have no backing device
        if (d / "device/infiniband").exists():
            continue  # IPoIB: the HCA is already listed
        speed = _read(d / "speed") or ""
        mbps = int(speed) if speed.isdigit() else 0
        out.append(NicInfo(d.name, "ethernet", mbps / 8000, _numa_of(d / "device")))
    return out


# ---------------------------------------------------------------- node list
def expand_hostlist(text: str) -> list[str]:
    """SLURM hostlist syntax: 'nid[001-003,010],login1' -> nid001 nid002 nid003 nid010 login1."""
    names: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text + ","):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            part = text[start:i].strip()
            if part:
                names.extend(_expand_one(part))
            start = i + 1
    if depth != 0:
        raise ConfigError(f"unbalanced brackets in host list {text!r}")
    return names


def _expand_one(pattern: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", pattern)
    if not m:
        return [pattern]
    prefix, suffix = pattern[:m.start()], pattern[m.end():]
    out = []
    for item in m.group(1).split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            width = len(lo)
            values = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        else:
            values = [item]
        for v in values:
            out.extend(_expand_one(prefix + v + suffix))
    return out


def node_list(env: Mapping[str, str] | None = None) -> list[str]:
    """Hosts of the current job, in order, each once (PBS first, then SLURM); [] outside a job."""
    env = os.environ if env is None else env
    nodefile = env.get("PBS_NODEFILE")
    if nodefile:
        try:
            hosts = [ln.strip() for ln in Path(nodefile).read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise ConfigError(f"PBS_NODEFILE={nodefile}: {e.strerror}") from None
        return list(dict.fromkeys(hosts))
    for var in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(var):
            return list(dict.fromkeys(expand_hostlist(env[var])))
    return []


# ----------------------------------------------------------- the live node
Runner = Callable[[list[str]], "str | None"]


def run_tool(cmd: list[str], timeout: float = 30.0) -> str | None:
    """stdout of a tool, or None if it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


TORCH_PROBE = (
    "import json, torch\n"
    "out = []\n"
    "for kind in ('cuda', 'xpu'):\n"
    "    mod = getattr(torch, kind, None)\n"
    "    if mod is not None and mod.is_available():\n"
    "        for i in range(mod.device_count()):\n"
    "            p = mod.get_device_properties(i)\n"
    "            out.append({'kind': kind, 'name': p.name, 'memory_gib': p.total_memory / 2**30})\n"
    "print(json.dumps(out))\n"
)


@dataclass
class GpuInfo:
    id: str  # visibility id: "0" or "0.1"
    name: str
    memory_gib: float
    numa: int
    nic: str = ""


@dataclass
class Discovery:
    cpu: CpuTopology
    gpus: list[GpuInfo]
    vendor: str  # nvidia | intel | cpu
    matrix: TopoMatrix | None
    nics: list[NicInfo]
    hosts: list[str]
    hostname: str
    source: str  # which tool described the GPUs

    def to_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "cpu": self.cpu.to_dict(), "vendor": self.vendor,
                "gpus": [dataclasses.asdict(g) for g in self.gpus], "gpu_source": self.source,
                "matrix": self.matrix.to_dict() if self.matrix else None,
                "nics": [n.to_dict() for n in self.nics], "hosts": self.hosts}


def _numa_for(cpus_text: str, cpu: CpuTopology) -> int:
    cpus = set(parse_cpulist(cpus_text))
    best = max(cpu.numa, key=lambda n: len(cpus & set(cpu.numa[n])))
    return best if cpus & set(cpu.numa[best]) else min(cpu.numa)


def parse_nvidia_smi_query(text: str) -> list[tuple[str, str, float]]:
    """``nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`` rows."""
    rows = []
    for ln in text.splitlines():
        parts = [p.strip() for p in ln.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            rows.append((parts[0], parts[1], float(parts[2]) / 1024))
    return rows


def discover(root: str | Path = "/", run: Runner = run_tool, env: Mapping[str, str] | None = None,
             torch_fallback: bool = True) -> Discovery:
    cpu = read_cpu_topology(root)
    nics = read_nics(root)
    hosts = node_list(env)
    hostname = os.uname().nodename if root == "/" else Path(root).name
    gpus: list[GpuInfo] = []
    matrix = None
    vendor, source = "cpu", "none"
    query = run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"])
    if query:
        topo = run(["nvidia-smi", "topo", "-m"])
        matrix = parse_nvidia_smi_topo(topo) if topo else None
        for idx, name, mem in parse_nvidia_smi_query(query):
            key = f"GPU{idx}"
            numa = matrix.numa.get(key) if matrix else None
            if numa is None and matrix and key in matrix.cpu_affinity:
                numa = _numa_for(matrix.cpu_affinity[key], cpu)
            gpus.append(GpuInfo(idx, name, mem, numa if numa is not None else min(cpu.numa),
                                matrix.nearest_nic(key) if matrix else ""))
        vendor, source = "nvidia", "nvidia-smi"
    elif (topo := run(["xpu-smi", "topology", "-m"])) is not None:
        matrix = parse_xpu_smi_topo(topo)
        listing = run(["xpu-smi", "discovery"]) or ""
        m = re.search(r"Device Name:\s*(.+?)\s*\|?\s*$", listing, re.MULTILINE)
        name = m.group(1) if m else "Intel Data Center GPU"
        for dev in matrix.devices:
            tile_mem = hw.PVC_TILE.memory_gib if "1550" in name else 0.0
            gpus.append(GpuInfo(dev.replace("/", "."), name, tile_mem,
                                _numa_for(matrix.cpu_affinity.get(dev, ""), cpu) if dev in matrix.cpu_affinity
                                else min(cpu.numa)))
        vendor, source = "intel", "xpu-smi"
    elif torch_fallback:
        probe = run([sys.executable, "-c", TORCH_PROBE])
        found = json.loads(probe) if probe else []
        for i, d in enumerate(found):
            gpus.append(GpuInfo(str(i), d["name"], d["memory_gib"], min(cpu.numa)))
        if found:
            vendor = "nvidia" if found[0]["kind"] == "cuda" else "intel"
            source = "torch"
    return Discovery(cpu, gpus, vendor, matrix, nics, hosts, hostname, source)


# ------------------------------------------------------------ to a System
def _device_for(gpu: GpuInfo, vendor: str) -> hw.Device:
    name = gpu.name.upper()
    if "H200" in name:
        dev = hw.H200_SXM
    elif "H100" in name:
        dev = hw.H100_SXM
    elif "A100" in name:
        dev = hw.A100_80 if gpu.memory_gib > 48 else hw.A100_40
    elif "1550" in name or vendor == "intel":
        dev = hw.PVC_TILE
    else:
        # Unknown GPU: keep the catalogue's H100 efficiencies but its real memory; flag it by name.
        dev = dataclasses.replace(hw.H100_SXM, name=f"{gpu.name} (unknown: H100 figures assumed)")
    if gpu.memory_gib and abs(gpu.memory_gib - dev.memory_gib) > 0.1 * dev.memory_gib:
        dev = dataclasses.replace(dev, memory_gib=round(gpu.memory_gib, 1))
    return dev


def _nvlink_level(matrix: TopoMatrix, devices: list[str]) -> hw.Link:
    """The slowest link between any two GPUs, as a per-GPU bandwidth."""
    labels = {matrix.link(a, b) for i, a in enumerate(devices) for b in devices[i + 1:]}
    if labels and all(lb.startswith("NV") for lb in labels):
        bonded = min(int(lb[2:]) for lb in labels)
        peers = len(devices) - 1
        # The same NV# on every pair with more links than a GPU has means an NVSwitch:
        # the label is the GPU's total.  Otherwise the links to each peer add up.
        per_gpu = bonded if bonded * peers > 18 else bonded * peers
        base = hw.NVLINK4 if per_gpu >= 18 else hw.NVLINK3
        return dataclasses.replace(base, gbps=25.0 * per_gpu, source=f"nvidia-smi topo -m: {sorted(labels)}")
    return hw.Link("PCIe", gbps=25.0, latency_us=10.0, efficiency=0.7,
                   source=f"nvidia-smi topo -m: {sorted(labels)} (no NVLink between every pair)")


def system_from_discovery(d: Discovery) -> hw.System:
    """A System describing this node type, with the discovered host list as its node count limit."""
    numa_ids = sorted(d.cpu.numa)
    numa_index = {n: i for i, n in enumerate(numa_ids)}
    numa_cores = tuple(format_cpulist(d.cpu.numa[n]) for n in numa_ids)
    nics = tuple(hw.Nic(n.name, numa_index.get(n.numa, 0)) for n in d.nics)
    max_nodes = max(1, len(d.hosts))
    if not d.gpus:
        dev = dataclasses.replace(hw.CPU_SOCKET, compute_units=len(d.cpu.physical_cores),
                                  memory_gib=round(d.cpu.memory_gib or hw.CPU_SOCKET.memory_gib, 1))
        slots = (hw.Slot("0", 0),)
        levels = (hw.LinkLevel(1, hw.SHARED_MEMORY),)
        env = ""
    else:
        dev = _device_for(d.gpus[0], d.vendor)
        slots = tuple(hw.Slot(g.id, numa_index.get(g.numa, 0), g.nic) for g in d.gpus)
        n = len(slots)
        if d.vendor == "intel":
            levels = (hw.LinkLevel(2, hw.MDFI), hw.LinkLevel(n, hw.XELINK)) if n % 2 == 0 and n > 2 else \
                (hw.LinkLevel(n, hw.MDFI),)
            env = "ZE_AFFINITY_MASK"
        else:
            link = _nvlink_level(d.matrix, [f"GPU{g.id}" for g in d.gpus]) if d.matrix and n > 1 else hw.NVLINK4
            levels = (hw.LinkLevel(n, link),)
            env = "CUDA_VISIBLE_DEVICES"
    node = hw.Node(name=d.hostname, device=dev, slots=slots, link_levels=levels, numa_cores=numa_cores,
                   reserved_cores=tuple(d.cpu.reserved), threads_per_core=d.cpu.threads_per_core, nics=nics, visibility_env=env,
                   ccl_worker_affinity=d.vendor == "intel", host_memory_gib=round(d.cpu.memory_gib, 1))
    network = _network(d.nics)
    system = hw.System(name="auto", description=f"discovered on {d.hostname} ({d.source})", node=node,
                       network=network, max_nodes=max_nodes if network else 1, sources=(d.source,))
    hw.validate_system(system)
    return system


def _network(nics: list[NicInfo]) -> hw.Network | None:
    fabric = [n for n in nics if n.kind in ("infiniband", "slingshot")]
    if fabric:
        fastest = max(n.gbps for n in fabric)
        group = [n for n in fabric if n.gbps == fastest]
        base = hw.SLINGSHOT11 if group[0].kind == "slingshot" else (hw.NDR400 if fastest >= 50 else hw.HDR200)
        return hw.Network(dataclasses.replace(base, gbps=fastest), len(group), group[0].kind)
    eth = [n for n in nics if n.gbps > 0]
    if eth:
        fastest = max(eth, key=lambda n: n.gbps)
        return hw.Network(dataclasses.replace(hw.ETHERNET, gbps=fastest.gbps), 1, "ethernet")
    return None


def auto_system(root: str | Path = "/") -> hw.System:
    return system_from_discovery(discover(root))
