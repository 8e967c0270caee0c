"""NCCL's point-to-point split and the pipeline exchange it sets (docs/planner.md section 10, "Session 9: the
pipeline's point-to-point exchange", branch p2p11).

NCCL (v2.14-v2.19, src/enqueue.cc scheduleP2pTasksToPlan / calcP2pChunkSize, src/graph/paths.cc
ncclTopoComputeP2pChannels) gives one send of S bytes as many channels as its chunks, and the count falls with the
communicator's size and to NCCL_NCHANNELS_PER_NET_PEER (2) once the communicator spans nodes; one channel moves
about 13.85 GB/s on A100 NVLink (nccl-tests sendrecv_perf on 8 A100, li-plus/playground cuda/nccl.md).  Megatron's
batch_isend_irecv runs on the pipeline group's communicator, DeepSpeed's blocking send/recv on a two-rank one.
"""
from __future__ import annotations

import pytest

from topology import costmodel as cm
from topology import hardware as hw
from topology import validation as v

MIB = 1 << 20


def test_the_split_gives_the_channels_nccl_logs_and_the_published_sendrecv_jump_shows():
    # sendrecv_perf -g 8: an 8-rank communicator in one node; 128 MiB on 8 channels, 256 MiB and more on 16
    assert cm.nccl_p2p_channels(128 * MIB, 8, False) == 8
    assert cm.nccl_p2p_channels(256 * MIB, 8, False) == 16
    assert cm.nccl_p2p_channels(1024 * MIB, 8, False) == 16
    # one micro-batch's activation (10-30 MB): 4 channels in an 8-rank pipeline group, 16 between two ranks
    assert cm.nccl_p2p_channels(28.3e6, 8, False) == 4
    assert cm.nccl_p2p_channels(28.3e6, 2, False) == 16
    # a communicator spanning nodes: 2 channels a peer, for the peers inside a node too
    assert cm.nccl_p2p_channels(10.5e6, 16, True) == 2
    assert cm.nccl_p2p_channels(12.6e6, 32, True) == 2
    # a small send is one chunk: one channel
    assert cm.nccl_p2p_channels(48e3, 8, False) == 1


@pytest.mark.parametrize("nbytes,measured_us", [(128 * MIB, 1211.2), (256 * MIB, 1423.3), (512 * MIB, 2785.4),
                                                (1024 * MIB, 5503.4)])
def test_an_a100_send_in_an_eight_rank_communicator_takes_the_published_time(nbytes, measured_us):
    system = v.system_of({r.id: r for r in v.load_runs()}["zb-1f1b-1.5b-m24"])  # dgx-a100-80gb
    assert system.node.link_levels[-1].link == hw.NVLINK3
    path = cm.comm_path(system, 2, 1)
    got = cm.collective_seconds("p2p", nbytes, path, 8, False) * 1e6
    assert abs(got / measured_us - 1) < 0.05, (nbytes, got, measured_us)


def _hop(row_id: str, pp: int, deepspeed: bool = False) -> float:
    run = {r.id: r for r in v.load_runs()}[row_id]
    system = v.system_of(run)
    impl = v.row_implementation({r.id: r for r in v.load_runs()}["mtnlg-530b-2240"]) if deepspeed \
        else v.row_implementation(run)
    lc = cm.layer_cost(v.model_of(run), system, pp, 1, 1, 1, run.mbs, run.seq_len, 1, impl)
    return lc.p2p


def test_megatrons_pipeline_exchange_is_slower_than_a_two_rank_send_and_slower_again_across_nodes():
    # zb-1f1b-1.5b: 6 x 1024 x 2304 x 2 bytes = 28.3 MB a hop on DGX A100
    one_node = _hop("zb-1f1b-1.5b-m24", 8)  # 8-rank group in one node: 4 channels, ~55 GB/s
    two_nodes = _hop("zb-1f1b-1.5b-m24", 16)  # the same hop inside a node, the group spanning two: 2 channels
    two_rank = _hop("zb-1f1b-1.5b-m24", 8, deepspeed=True)  # DeepSpeed's two-rank send: 16 channels
    assert 0.45e-3 < one_node < 0.6e-3
    assert two_nodes > 1.8 * one_node
    assert two_rank < 0.2e-3
