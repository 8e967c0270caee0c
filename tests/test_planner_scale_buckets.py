"""Megatron-Core's gradient buckets grow with the data-parallel size (docs/planner.md section 10, "Session 10: step
time that grows with the GPU count", branch scale12)."""
from __future__ import annotations

from dataclasses import replace

from topology import costmodel as cm
from topology import validation as v

RUNS = {r.id: r for r in v.load_runs()}
SERIES = "dgxc2504-nemotron4-15b-tp2-"  # TP 2, PP 1, distributed optimizer: DP 8 ... 1024 at the same per-GPU work


def _exposed(run_id: str, impl: cm.Implementation | None = None) -> float:
    run = RUNS[run_id]
    est = cm.estimate(v.request_of(run, impl=impl), run.layout())
    return est.breakdown["dp_comm_exposed_s"]


def test_megatron_core_buckets_follow_its_ddp_rule():
    assert cm.MEGATRON_CORE_DDP_BUCKETS == (40_000_000.0, 1_000_000.0)  # max(40M, 1M x dp), Megatron-LM 0fda386c04
    assert v.IMPLEMENTATIONS["megatron-core"].dp_bucket_params == cm.MEGATRON_CORE_DDP_BUCKETS
    assert v.implementation_of(RUNS[SERIES + "2048"]).dp_bucket_params == cm.MEGATRON_CORE_DDP_BUCKETS


def test_the_exposed_last_bucket_grows_with_the_data_parallel_size():
    # At DP 128 -> 1024 the last gradient bucket (and the first gather bucket) grow from 128M to 1.02B parameters of
    # the rank's ~7.8B: the reduction the backward cannot hide grows with dp.  With one block a bucket (the rule
    # before) it stays one of 32 blocks whatever dp is.
    grow = _exposed(SERIES + "2048") - _exposed(SERIES + "256")
    assert grow > 0.015
    one_block = replace(v.implementation_of(RUNS[SERIES + "2048"]), dp_bucket_params=(0.0, 0.0))
    assert _exposed(SERIES + "2048", one_block) - _exposed(SERIES + "256", replace(one_block)) < 0.005


def test_small_data_parallel_groups_expose_a_40m_bucket_not_a_block():
    # DP 8: max(40M, 8M) = 40M parameters, 0.5% of the rank's parameters, less than one of its 32 blocks (3.1%)
    run = RUNS[SERIES + "16"]
    one_block = replace(v.implementation_of(run), dp_bucket_params=(0.0, 0.0))
    assert _exposed(run.id) < _exposed(run.id, one_block)


def test_megatron_core_without_its_overlap_flags_exposes_the_whole_reduction_and_gather():
    # FlagPerf's core_v0.6.0 cases pass neither --overlap-grad-reduce nor --overlap-param-gather: one bucket,
    # reduce-scattered synchronously after the backward, and the parameter all-gather in the step
    run = RUNS["flagperf-llama3-8b-h100-440"]
    assert "no-dp-overlap" in run.implementation.split("+")
    impl = v.implementation_of(run)
    assert impl.dp_reduce_after_backward and impl.dp_reduce_scatter and not impl.param_gather_overlap
    b = v.predict(run).breakdown
    assert b["dp_comm_exposed_s"] >= 0.99 * b["dp_comm_total_s"] > 0
    overlapped = replace(impl, dp_reduce_after_backward=False, dp_reduce_scatter=False, param_gather_overlap=True)
    b2 = cm.estimate(v.request_of(run, impl=overlapped), run.layout()).breakdown
    assert b2["dp_comm_exposed_s"] < 0.5 * b["dp_comm_exposed_s"]
