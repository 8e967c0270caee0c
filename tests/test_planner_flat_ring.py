"""NCCL's all-gather / reduce-scatter across nodes are one flat ring (docs/planner.md section 10, "Session 11:
FlagPerf's Llama 3 8B and MPT-7B on H100 at scale", branch flagperf16).

NCCL runs these collectives with the ring algorithm only (src/graph/tuning.cc, v2.18-v2.22; PAT from v2.23 is for one
rank a node) over all the communicator's ranks: src/device/all_gather.h ``runRing`` (v2.19.3-1) walks ``nranks - 1``
steps along ``ring->prev`` / ``ring->next``.  A chunk passes n - 1 hops, so with k of the group's ranks on each of N
nodes, each node boundary carries (n - 1) / n of the buffer, shared by the node's k NICs: a 2-node group moves about
as much across the network as a 55-node one.  A two-level algorithm would send (N - 1) / N (a half at 2 nodes); the
cost model's hierarchical form priced that until this branch."""
from __future__ import annotations

import pytest

from topology import costmodel as cm
from topology.hardware import PRESETS

DGX_H100 = PRESETS["dgx-h100"]
GRADS = 15.1e9  # FlagPerf Llama 3 8B's fp32 gradient buffer a TP-2 rank


def _path(nodes: int, stride: int) -> cm.CommPath:
    ranks_a_node = DGX_H100.node.ranks // stride
    return cm.comm_path(DGX_H100, nodes * ranks_a_node, stride)


@pytest.mark.parametrize("op", ["reduce_scatter", "all_gather"])
def test_two_node_ring_sends_nearly_the_whole_buffer_out_of_each_node(op):
    # TP 2's data-parallel group on DGX H100: 4 ranks a node, their 4 NICs; at 2 nodes the ring sends 7/8 of the
    # buffer across, so the collective takes at least that at the 4 NICs' rate
    path = _path(2, 2)
    assert (path.k, path.nodes, path.pipelined) == (4, 2, True)
    n = path.size
    floor = GRADS * (n - 1) / n / (path.k * path.inter_gbps * 1e9)
    assert cm.collective_seconds(op, GRADS, path) >= floor


@pytest.mark.parametrize("op", ["reduce_scatter", "all_gather"])
def test_network_time_hardly_depends_on_the_node_count(op):
    # 2 nodes against 55 (FlagPerf's 16- and 440-GPU rows): (7/8) / (219/220) = 0.88 of the time, where a two-level
    # algorithm would take (1/2) / (54/55) = 0.51 of it
    two, many = (cm.collective_seconds(op, GRADS, _path(nodes, 2)) for nodes in (2, 55))
    assert two / many > 0.85


def test_full_node_groups_stay_at_the_node_link_rate():
    # all 8 ranks of each node in the group (FSDP, TP 1): the 8 NICs keep up with NVLink, so the flat ring changes
    # little there (within 10% of the one-node collective of the same ranks a node)
    one_node = cm.collective_seconds("all_gather", 4e8, cm.comm_path(DGX_H100, 8, 1))
    sixteen = cm.collective_seconds("all_gather", 4e8, _path(16, 1))
    assert sixteen / one_node < 1.10


def test_all_reduce_keeps_the_two_level_form():
    # NCCL chooses ring or tree for a multi-node all-reduce; only the ring-only collectives changed
    path = _path(2, 2)
    intra = 2 * cm._ring("reduce_scatter", path.k, GRADS, path.intra.latency_us, path.intra)
    inter = cm._ring("all_reduce", path.nodes, GRADS / path.k, path.inter_latency_us, None, path.inter_gbps)
    assert cm.collective_seconds("all_reduce", GRADS, path) <= path.call_us * 1e-6 + max(intra, inter) + 1e-3
