"""Placement: ALCF's documented bindings, rank -> node/device/NIC/cores, and group link classes."""
import pytest

from topology.hardware import load_system
from topology.layout import Layout
from topology.placement import format_cpulist, local_ranks, parse_cpulist, place

# docs.alcf.anl.gov/aurora/running-jobs-aurora, "Binding MPI ranks to GPUs", Example 1 (12 ranks/node):
#   --cpu-bind=list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100
#   gpu_tile_compact.sh: ZE_AFFINITY_MASK=$gpu_id.$tile_id, gpu_id=(local_rank/2)%6, tile_id=local_rank%2
AURORA_CPU_BIND = "list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100"
AURORA_MASKS = ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1", "5.0", "5.1"]

# docs.alcf.anl.gov/polaris/running-jobs: set_affinity_gpu_polaris.sh assigns
#   gpu=$((num_gpus - 1 - PMI_LOCAL_RANK % num_gpus)) with --cpu-bind depth --depth 8,
# and the machine overview's affinity table pairs GPU0 with cores 24-31 ... GPU3 with 0-7.
POLARIS_CPU_BIND = "list:0-7:8-15:16-23:24-31"
POLARIS_DEVICES = ["3", "2", "1", "0"]


def test_aurora_matches_alcf_documented_binding():
    p = place(Layout(), load_system("aurora"), 2)
    assert p.cpu_bind == AURORA_CPU_BIND
    assert [p.env(r) for r in range(12)] == [{"ZE_AFFINITY_MASK": m} for m in AURORA_MASKS]
    used = {c for lr in p.local for c in lr.cores}
    assert 0 not in used and 52 not in used  # reserved for the OS since 2025-03-31
    assert all(lr.numa == (0 if lr.local_rank < 6 else 1) for lr in p.local)  # GPUs 0-2 on socket 0
    # oneCCL workers: one core per local rank, on the rank's own socket, inside its cpuset
    assert p.node_env() == {"CCL_WORKER_AFFINITY": "8,16,24,32,40,48,60,68,76,84,92,100"}
    assert [lr.nic for lr in p.local] == ["cxi0", "cxi1", "cxi2", "cxi3", "cxi0", "cxi1",
                                          "cxi4", "cxi5", "cxi6", "cxi7", "cxi4", "cxi5"]
    assert p.mpiexec_args() == f"-n 24 --ppn 12 --cpu-bind {AURORA_CPU_BIND}"


def test_polaris_matches_alcf_documented_binding():
    p = place(Layout(), load_system("polaris"), 3)
    assert p.cpu_bind == POLARIS_CPU_BIND
    assert [p.env(r)["CUDA_VISIBLE_DEVICES"] for r in range(4)] == POLARIS_DEVICES
    # each GPU's cores are the ones nvidia-smi lists as its CPU affinity (physical cores)
    affinity = {"0": "24-31", "1": "16-23", "2": "8-15", "3": "0-7"}
    assert {lr.device: lr.cpu_list for lr in p.local} == affinity
    # NICs: mlx5_0/cxi0 hangs off GPU3's host bridge, mlx5_1/cxi1 off GPU1's
    assert {lr.device: lr.nic for lr in p.local}["3"] == "cxi0"
    assert {lr.device: lr.nic for lr in p.local}["1"] == "cxi1"
    assert p.node_env() == {}


def test_dgx_a100_follows_nvidia_deepops_affinity():
    # NVIDIA deepops syscfg-dgxa100-80gb.sh: CPU_AFFINITY per GPU 0..7 and UCX_AFFINITY
    cpu = "32-47:48-63:0-15:16-31:96-111:112-127:64-79:80-95".split(":")  # noqa: SIM905 - verbatim
    ucx = "mlx5_0:mlx5_1:mlx5_2:mlx5_3:mlx5_6:mlx5_7:mlx5_8:mlx5_9".split(":")  # noqa: SIM905 - verbatim
    local = local_ranks(load_system("dgx-a100-80gb"))
    assert {lr.device: lr.cpu_list for lr in local} == {str(g): cpu[g] for g in range(8)}
    assert {lr.device: lr.nic for lr in local} == {str(g): ucx[g] for g in range(8)}


def test_ranks_fill_nodes_in_order_with_host_names():
    p = place(Layout(tp=2, pp=2), load_system("aurora"), 2, hosts=["x1", "x2"])
    d = p.to_dict()
    assert len(d["ranks"]) == 24
    assert d["ranks"][13] == {"rank": 13, "node": 1, "host": "x2", "local_rank": 1, "device": "0.1",
                              "nic": "cxi1", "cpus": "9-16"}
    assert d["local"][0]["env"] == {"ZE_AFFINITY_MASK": "0.0"}
    assert d["cpu_bind"] == AURORA_CPU_BIND and d["hosts"] == ["x1", "x2"]


def test_groups_report_the_link_each_dimension_crosses():
    g = place(Layout(tp=2, pp=2, ep=6, dp_shard=6), load_system("aurora"), 2).groups()
    assert g["tp"] == {"size": 2, "stride": 1, "link": "MDFI"}
    assert g["dp_shard"] == {"size": 6, "stride": 2, "link": "XeLink"}
    assert g["ep"] == {"size": 6, "stride": 2, "link": "XeLink"}  # ep*tp = 12 fits a node
    assert g["pp"] == {"size": 2, "stride": 12, "link": "Slingshot-11"}  # stages on different nodes


def test_placement_rejects_too_few_hosts():
    with pytest.raises(ValueError, match="placement needs 2 host names, got 1"):
        place(Layout(), load_system("polaris"), 2, hosts=["only"])


@pytest.mark.parametrize("text, cores", [("0-3,8", [0, 1, 2, 3, 8]), ("5", [5]), ("", []),
                                         ("1-2, 4-5", [1, 2, 4, 5])])
def test_cpulists_round_trip(text, cores):
    assert parse_cpulist(text) == cores
    assert parse_cpulist(format_cpulist(cores)) == cores
