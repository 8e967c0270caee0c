"""Discovery on synthetic sysfs trees and captured/transcribed tool outputs (tests/data/topo/README.md)."""
from pathlib import Path

import pytest

from topology.discovery import (
    discover,
    expand_hostlist,
    node_list,
    parse_nvidia_smi_topo,
    parse_xpu_smi_topo,
    read_cpu_topology,
    read_nics,
    system_from_discovery,
)
from topology.hardware import NVLINK4, load_system
from topology.modelcfg import ConfigError
from topology.placement import local_ranks
from topology.planner import plan

DATA = Path(__file__).parent / "data" / "topo"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def make_sysfs(root: Path, sockets: int, cores: int, threads: int, numa: dict[int, str], mem_gib: int,
               nics: dict[str, tuple[str, int, str]] = ()) -> Path:
    """Linux numbering: logical cpu = thread * sockets * cores + socket * cores + core."""
    total = sockets * cores * threads
    write(root / "sys/devices/system/cpu/online", f"0-{total - 1}")
    for t in range(threads):
        for s in range(sockets):
            for c in range(cores):
                cpu = t * sockets * cores + s * cores + c
                topo = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
                write(topo / "physical_package_id", str(s))
                write(topo / "core_id", str(c))
    for node, cpulist in numa.items():
        write(root / f"sys/devices/system/node/node{node}/cpulist", cpulist)
    write(root / "proc/meminfo", f"MemTotal:       {mem_gib * 1024 * 1024} kB\nMemFree: 1 kB")
    for name, (kind, numa_node, extra) in dict(nics).items():
        if kind == "ib":
            d = root / f"sys/class/infiniband/{name}"
            write(d / "ports/1/rate", extra)
        elif kind == "cxi":
            d = root / f"sys/class/cxi/{name}"
        else:
            d = root / f"sys/class/net/{name}"
            write(d / "speed", extra)
        write(d / "device/numa_node", str(numa_node))
    return root


def aurora_tree(root: Path) -> Path:
    # 2 x 52 cores x 2 threads; NUMA 0/1 are the sockets, 2/3 the CPU HBM (no CPUs) - as `numactl -H` on
    # Aurora; the job's cpuset leaves out cores 0 and 52 (and their hyperthreads 104, 156), reserved for the OS
    make_sysfs(root, 2, 52, 2, {0: "0-51,104-155", 1: "52-103,156-207", 2: "", 3: ""}, 1024,
               {f"cxi{i}": ("cxi", 0 if i < 4 else 1, "") for i in range(8)} | {"hsn0": ("net", 0, "200000")})
    write(root / "sys/fs/cgroup/cpuset.cpus.effective", "1-51,53-103,105-155,157-207")
    return root


def test_cpu_topology_of_an_aurora_like_tree(tmp_path):
    cpu = read_cpu_topology(aurora_tree(tmp_path))
    assert (cpu.sockets, len(cpu.physical_cores), cpu.threads_per_core) == (2, 104, 2)
    assert cpu.numa == {0: list(range(52)), 1: list(range(52, 104))}  # HBM-only domains dropped
    assert cpu.reserved == [0, 52]
    assert cpu.memory_gib == pytest.approx(1024)


def test_cpu_topology_of_a_polaris_like_tree(tmp_path):
    numa = {n: f"{8 * n}-{8 * n + 7},{32 + 8 * n}-{32 + 8 * n + 7}" for n in range(4)}
    cpu = read_cpu_topology(make_sysfs(tmp_path, 1, 32, 2, numa, 512))
    assert (cpu.sockets, len(cpu.physical_cores), cpu.threads_per_core) == (1, 32, 2)
    assert cpu.numa[3] == list(range(24, 32))


def test_not_a_sysfs_tree(tmp_path):
    with pytest.raises(ConfigError, match="not a Linux sysfs tree"):
        read_cpu_topology(tmp_path)


def test_nics_from_infiniband_cxi_and_net(tmp_path):
    root = make_sysfs(tmp_path, 1, 4, 1, {0: "0-3"}, 16, {
        "mlx5_0": ("ib", 0, "400 Gb/sec (4X NDR)"), "mlx5_1": ("ib", 1, "200 Gb/sec (4X HDR)"),
        "cxi0": ("cxi", 1, ""), "eth0": ("net", 0, "25000")})
    write(tmp_path / "sys/class/net/lo/speed", "0")  # loopback: skipped
    (tmp_path / "sys/class/net/veth1").mkdir()  # virtual: no device, skipped
    nics = {n.name: (n.kind, n.gbps, n.numa) for n in read_nics(root)}
    assert nics == {"mlx5_0": ("infiniband", 50.0, 0), "mlx5_1": ("infiniband", 25.0, 1),
                    "cxi0": ("slingshot", 25.0, 1), "eth0": ("ethernet", 3.125, 0)}


def test_parse_nvidia_smi_topo_polaris():
    m = parse_nvidia_smi_topo((DATA / "polaris_nvidia_smi_topo.txt").read_text())
    assert m.devices == ["GPU0", "GPU1", "GPU2", "GPU3"]
    assert m.numa == {"GPU0": 3, "GPU1": 2, "GPU2": 1, "GPU3": 0}
    assert m.cpu_affinity["GPU3"] == "0-7,32-39"
    assert {m.link(a, b) for a in m.devices for b in m.devices if a != b} == {"NV4"}
    assert m.nearest_nic("GPU3") == "mlx5_0" and m.nearest_nic("GPU1") == "mlx5_1"
    assert m.nearest_nic("GPU0") == ""  # only SYS paths: left to the NUMA rule


@pytest.mark.parametrize("underline", [False, True])
def test_parse_nvidia_smi_topo_dgx_h100(underline):
    text = (DATA / "dgx_h100_nvidia_smi_topo.txt").read_text()
    if underline:  # what recent drivers print around header cells
        first, rest = text.split("\n", 1)
        text = "\t".join(f"\x1b[4m{c}\x1b[0m" if c else c for c in first.split("\t")) + "\n" + rest
    m = parse_nvidia_smi_topo(text)
    assert len(m.devices) == 8 and m.link("GPU0", "GPU7") == "NV18"
    assert [m.numa[d] for d in m.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [m.nearest_nic(d) for d in m.devices] == ["mlx5_0", "mlx5_3", "mlx5_4", "mlx5_5", "mlx5_6", "mlx5_9",
                                                     "mlx5_10", "mlx5_11"]


def test_parse_a_real_h200_capture():
    """`nvidia-smi topo -m` captured on a 4x H200 machine (driver 580.159.04) by bench/gpu_calibrate.py."""
    text = (DATA / "h200_x4_nvidia_smi_topo.txt").read_text()
    assert text.startswith("\t\x1b[4mGPU0")  # as captured: the header underlined with escape codes
    m = parse_nvidia_smi_topo(text)
    assert m.devices == ["GPU0", "GPU1", "GPU2", "GPU3"]
    assert len(m.links) == 12 and set(m.links.values()) == {"NV18"}  # NVSwitch: every ordered pair
    assert m.cpu_affinity == {f"GPU{i}": "0-63" for i in range(4)}
    assert m.numa == {f"GPU{i}": 0 for i in range(4)}  # the empty "GPU NUMA ID" cell is not a NUMA node
    assert m.nics == {} and m.nic_links == {} and m.nearest_nic("GPU2") == ""  # a VM: no NIC columns


def test_parse_xpu_smi_topology_aurora():
    m = parse_xpu_smi_topo((DATA / "aurora_xpu_smi_topology.txt").read_text())
    assert m.devices == [f"{g}/{t}" for g in range(6) for t in range(2)]
    assert m.link("0/0", "0/1") == "MDF" and m.link("0/1", "4/0") == "XL"
    assert m.cpu_affinity["2/1"] == "0-51,104-155" and m.cpu_affinity["3/0"] == "52-103,156-207"


@pytest.mark.parametrize("text", ["no topology here", "\tGPU0\tGPU1\nLegend:"])
def test_parsers_reject_garbage(text):
    with pytest.raises(ConfigError):
        parse_nvidia_smi_topo(text)
    with pytest.raises(ConfigError):
        parse_xpu_smi_topo(text)


def test_hostlists(tmp_path):
    assert expand_hostlist("nid[001-003,010],login1") == ["nid001", "nid002", "nid003", "nid010", "login1"]
    assert expand_hostlist("x[1-2]c0s[3-4]") == ["x1c0s3", "x1c0s4", "x2c0s3", "x2c0s4"]
    with pytest.raises(ConfigError, match="unbalanced brackets"):
        expand_hostlist("nid[001-002")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x4001c0s0b0n0\nx4001c0s0b0n0\nx4001c0s1b0n0\n")  # one line per rank slot
    assert node_list({"PBS_NODEFILE": str(nodefile)}) == ["x4001c0s0b0n0", "x4001c0s1b0n0"]
    assert node_list({"SLURM_JOB_NODELIST": "gpu[07-08]"}) == ["gpu07", "gpu08"]
    assert node_list({}) == []
    with pytest.raises(ConfigError, match="PBS_NODEFILE=/nonexistent"):
        node_list({"PBS_NODEFILE": "/nonexistent"})


def fake_tools(outputs: dict[str, str]):
    def run(cmd):
        return outputs.get(" ".join(cmd[:2]))
    return run


def test_discover_a_dgx_h100_and_plan_on_it(tmp_path):
    root = make_sysfs(tmp_path / "dgx", 2, 56, 2, {0: "0-55,112-167", 1: "56-111,168-223"}, 2048,
                      {f"mlx5_{i}": ("ib", 0 if i < 6 else 1, "400 Gb/sec (4X NDR)") for i in (0, 3, 4, 5, 6, 9, 10, 11)}
                      | {"eno1": ("net", 0, "100000")})
    query = "\n".join(f"{i}, NVIDIA H100 80GB HBM3, 81559" for i in range(8))
    run = fake_tools({"nvidia-smi --query-gpu=index,name,memory.total": query,
                      "nvidia-smi topo": (DATA / "dgx_h100_nvidia_smi_topo.txt").read_text()})
    found = discover(root, run=run, env={"SLURM_JOB_NODELIST": "dgx[01-04]"}, torch_fallback=False)
    assert found.vendor == "nvidia" and len(found.gpus) == 8 and found.hosts == ["dgx01", "dgx02", "dgx03", "dgx04"]
    system = system_from_discovery(found)
    assert system.node.device.name == "H100-SXM5-80GB" and system.max_nodes == 4
    assert system.node.link_levels[0].size == 8 and system.node.link_levels[0].link.gbps == 450
    assert system.network.nics_per_node == 8 and system.network.nic.gbps == 50
    local = local_ranks(system)
    assert [lr.device for lr in local] == [str(g) for g in range(8)]
    assert local[5].nic == "mlx5_9" and local[0].cpu_list == "0-13" and local[4].cpu_list == "56-69"
    result = plan("7b", system, 4, 64, 4096, top=2)
    assert result.plans and result.plans[0].estimate.fits


def test_discover_the_h200_machine_from_its_capture(tmp_path):
    # the real topo capture with a synthetic sysfs of what it reports: 64 CPUs, one NUMA node, no fabric
    root = make_sysfs(tmp_path / "h200", 1, 64, 1, {0: "0-63"}, 1024)
    query = "\n".join(f"{i}, NVIDIA H200, 143771" for i in range(4))
    run = fake_tools({"nvidia-smi --query-gpu=index,name,memory.total": query,
                      "nvidia-smi topo": (DATA / "h200_x4_nvidia_smi_topo.txt").read_text()})
    system = system_from_discovery(discover(root, run=run, env={}, torch_fallback=False))
    assert system.node.device == load_system("h200-x4").node.device  # 140.4 GiB reported: the catalogue's
    (level,) = system.node.link_levels
    assert level.size == 4 and level.link.gbps == 450  # NV18 to every peer: NVSwitch, 18 x 25 GB/s
    assert (level.link.efficiency, level.link.low_latency_efficiency) == (NVLINK4.efficiency,
                                                                          NVLINK4.low_latency_efficiency)
    assert system.network is None and system.max_nodes == 1
    local = local_ranks(system)
    assert [(lr.device, lr.cpu_list) for lr in local] == [("0", "0-15"), ("1", "16-31"), ("2", "32-47"),
                                                           ("3", "48-63")]


def test_discover_polaris_reproduces_the_catalogue_binding(tmp_path):
    numa = {n: f"{8 * n}-{8 * n + 7},{32 + 8 * n}-{32 + 8 * n + 7}" for n in range(4)}
    root = make_sysfs(tmp_path / "polaris", 1, 32, 2, numa, 512, {"cxi0": ("cxi", 0, ""), "cxi1": ("cxi", 2, "")})
    query = "\n".join(f"{i}, NVIDIA A100-SXM4-40GB, 40960" for i in range(4))
    run = fake_tools({"nvidia-smi --query-gpu=index,name,memory.total": query,
                      "nvidia-smi topo": (DATA / "polaris_nvidia_smi_topo.txt").read_text()})
    system = system_from_discovery(discover(root, run=run, env={}, torch_fallback=False))
    local = local_ranks(system)
    assert ":".join(lr.cpu_list for lr in local) == "0-7:8-15:16-23:24-31"
    assert [lr.device for lr in local] == ["3", "2", "1", "0"]
    assert system.node.device.name == "A100-SXM4-40GB"
    assert system.node.link_levels[0].link.gbps == 300  # NV4 to each of 3 peers = 12 links
    assert system.network is not None and system.max_nodes == 1  # outside a job: this node only


def test_discover_an_aurora_node_from_xpu_smi(tmp_path):
    run = fake_tools({"xpu-smi topology": (DATA / "aurora_xpu_smi_topology.txt").read_text(),
                      "xpu-smi discovery": "| 0 | Device Name: Intel(R) Data Center GPU Max 1550 |"})
    found = discover(aurora_tree(tmp_path), run=run, env={}, torch_fallback=False)
    system = system_from_discovery(found)
    local = local_ranks(system)
    assert ":".join(lr.cpu_list for lr in local) == "1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100"
    assert system.node.reserved_cores == (0, 52)
    assert [lr.device for lr in local][:3] == ["0.0", "0.1", "1.0"]
    assert system.node.visibility_env == "ZE_AFFINITY_MASK" and system.node.ccl_worker_affinity
    assert [lv.link.name for lv in system.node.link_levels] == ["MDFI", "XeLink"]
    assert system.network.nics_per_node == 8


def test_discover_a_cpu_only_host(tmp_path):
    root = make_sysfs(tmp_path, 1, 8, 2, {0: "0-15"}, 32)
    system = system_from_discovery(discover(root, run=fake_tools({}), env={}, torch_fallback=False))
    assert system.node.device.vendor == "cpu" and system.node.device.memory_gib == 32
    assert system.node.device.compute_units == 8 and system.network is None
