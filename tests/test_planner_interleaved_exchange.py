"""Megatron-Core's interleaved pipeline posts its steady-state exchanges ahead (docs/planner.md section 10, "Session 11:
fixed-global-batch strong scaling", branch strong16).

Megatron-LM made ``overlap_p2p_comm`` the default in 4eeff55d1f (2023-10-12, "Make overlap_p2p_comm the default":
``--no-overlap-p2p-communication`` is the opt-out; arguments.py forces it off only without a virtual pipeline).  With it
``forward_backward_pipelining_with_interleaving`` (schedules.py at 71c394b172) posts each steady-state
``send_forward_recv_forward`` / ``send_backward_recv_backward`` right after the op that made the tensor and waits for a
receive only before the op that needs it.  Replaying the schedule's own order (bench/strong_scaling_vs_model.py) with
every op as soon as its input has arrived, and again op by op with the exchanges as the schedule issues them (blocking
in the warm-up and the cool-down, posted ahead in the steady state) on NCCL's per-pair streams, a hop's latency is paid
2 (pp vpp - 1) times a step (the fill and the drain) at every micro-batch count, not 2 m vpp more in the steady state;
the bubble is the model's (pp - 1) (t_f + t_b) / vpp."""
from __future__ import annotations

import dataclasses

import pytest

from tests.bench_module import load_bench
from topology import costmodel as cm
from topology import validation as v

BENCH = load_bench("strong_scaling_vs_model")
ROW = "folding-t4-mixtral-8x22b-mcore-256"  # Megatron-Core, TP 2, PP 8 x VPP 7, EP 4 on 256 H100 (m = 64)


def _estimate(run, global_batch: int) -> cm.Estimate:
    return cm.estimate(v.request_of(run, global_batch=global_batch), run.layout())


@pytest.mark.parametrize("pp,vpp,m", [(8, 7, 16), (8, 7, 64), (4, 7, 8), (4, 7, 32)])
def test_the_models_interleaved_bubble_is_the_makespan_of_megatrons_order(pp, vpp, m):
    t_f, t_b = 1.0, 2.0
    span = BENCH.replay_makespan(pp, vpp, m, t_f, t_b)
    assert span == pytest.approx(m * (t_f + t_b) + cm.bubble_seconds("interleaved1f1b", pp, vpp, t_f, t_b))


@pytest.mark.parametrize("pp,vpp", [(8, 7), (4, 7)])
def test_a_hops_latency_is_paid_in_the_fill_and_drain_only(pp, vpp):
    t_f, t_b, hop = 1.0, 2.0, 0.3 / vpp  # a hop of 0.3 of a chunk's forward
    for m in (2 * pp, 8 * pp):
        extra = BENCH.replay_makespan(pp, vpp, m, t_f, t_b, hop) - BENCH.replay_makespan(pp, vpp, m, t_f, t_b)
        assert extra == pytest.approx(2 * (pp * vpp - 1) * hop)


@pytest.mark.parametrize("pp,vpp,m", [(4, 7, 8), (4, 2, 16), (8, 2, 16)])
def test_megatrons_exchanges_op_by_op_pay_the_fill_and_drain_only(pp, vpp, m):
    # the schedule's own program: blocking exchanges in the warm-up and the cool-down, posted ahead in the steady
    # state, on NCCL's per-pair streams with rendezvous
    t_f, t_b, hop = 1.0, 2.0, 0.3 / vpp
    extra = BENCH.replay_program(pp, vpp, m, t_f, t_b, hop) - BENCH.replay_makespan(pp, vpp, m, t_f, t_b)
    assert extra == pytest.approx(2 * (pp * vpp - 1) * hop)


def test_megatron_core_interleaved_exchange_does_not_grow_with_the_micro_batches():
    run = {r.id: r for r in v.load_runs()}[ROW]
    few, many = _estimate(run, 256), _estimate(run, 1024)  # 16 and 64 micro-batches a replica
    assert (few.microbatches, many.microbatches) == (16, 64)
    assert many.breakdown["pp_comm_s"] == pytest.approx(few.breakdown["pp_comm_s"], rel=1e-9)
    assert few.breakdown["pp_comm_s"] > 0  # the fill and the drain stay


@pytest.mark.parametrize("change", [{"vpp": 1}, {"implementation": "megatron-2022"}])
def test_blocking_exchanges_keep_their_steady_state_cost(change):
    # without a virtual pipeline Megatron forces overlap_p2p_comm off; legacy Megatron's interleaved schedule blocks
    run = dataclasses.replace({r.id: r for r in v.load_runs()}[ROW], **change)
    few, many = _estimate(run, 256), _estimate(run, 1024)
    assert many.breakdown["pp_comm_s"] > 1.5 * few.breakdown["pp_comm_s"]
