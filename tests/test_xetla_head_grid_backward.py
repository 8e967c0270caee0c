"""XeTLA's head-grid flash-attention backward on the Max 1550 (session 10, branch aurorastack12).

docs/planner.md section 10, "Session 10: the Aurora rows' software stack and XeTLA's attention backward": the
held-out Aurora rows ran IPEX 2.5.10, whose SDPA backward on XPU launches XeTLA's fmha backward with one work-group
per (batch, head) pair (fmha_backward.cpp ``get_nd_range(num_batches * num_heads)``); Intel's triton benchmark table
(intel/intel-xpu-backend-for-triton PR 5150) measures that kernel at 16 and 32 work-groups.  The cooldown fit row ran
IPEX 2.8.10, whose rewritten backward also spans the sequence.
"""
from __future__ import annotations

import dataclasses
import math

import pytest

from topology import costmodel as cm
from topology import hardware as hw
from topology import validation as v

XPU = "megatron-deepspeed-xpu"


def _stage(row_id: str, impl: cm.Implementation):
    run = next(r for r in v.load_runs() if r.id == row_id)
    system = v.system_of(run)
    req = cm.Request(v.model_of(run), system, run.gpus // system.ranks_per_node, run.global_batch, run.seq_len, impl)
    return cm.structure_of(req, run.layout()).stages[0], run


def test_the_kernels_published_rates_set_its_slowdown():
    # PR 5150's XeTLA-TFlops column, causal, head dim 128: Z 1 x H 16 -> 49.81, Z 2 x H 16 -> 86.99 (the device
    # figure's point, PVC_ATTENTION_BWD_TFLOPS on the visible half)
    assert cm.head_grid_bwd_slowdown(16) == pytest.approx(86.991577 / 49.806569)
    assert cm.head_grid_bwd_slowdown(32) == 1.0
    assert cm.head_grid_bwd_slowdown(64) == 1.0  # not extrapolated above the measured point
    assert 1.0 < cm.head_grid_bwd_slowdown(24) < cm.head_grid_bwd_slowdown(16)
    assert hw.PVC_XETLA_BWD_GROUP_TFLOPS[1][1] / 2 == pytest.approx(hw.PVC_ATTENTION_BWD_TFLOPS, abs=0.01)
    assert 3.5 / (1 / hw.PVC_ATTENTION_FWD_TFLOPS + 2.5 / hw.PVC_ATTENTION_BWD_TFLOPS) == pytest.approx(
        hw.PVC_ATTENTION_TFLOPS)


@pytest.mark.parametrize("row_id, pairs", [("aurora-small-smollm3arch-12l", 16), ("aurora-small-llama3arch-12l", 24)])
def test_the_rows_stack_runs_the_attention_backward_at_its_pairs(row_id, pairs):
    # the sweep's rows: MBS 1 x 16 ('SmolLM3') or 24 ('Llama3') query heads (K and V repeated to them) -> that many
    # work-groups on a 64-Xe-core tile; each layer's backward attention takes the kernel's time at that count
    on, run = _stage(row_id, v.IMPLEMENTATIONS[XPU])
    off, _ = _stage(row_id, dataclasses.replace(v.IMPLEMENTATIONS[XPU], attn_bwd_head_grid=False))
    model = v.model_of(run)
    dev = v.system_of(run).node.device
    assert run.mbs * model.n_heads == pairs
    attn_fwd = cm.attention_seconds(dev, 1, run.seq_len, run.seq_len, model.q_dim)
    bwd_attn = hw.PVC_ATTENTION_BWD_SHARE * 3.5 * attn_fwd  # the benchmark's backward at 32 groups
    per_microbatch = model.n_layers * (cm.head_grid_bwd_slowdown(pairs) - 1) * bwd_attn
    assert on.bwd - off.bwd == pytest.approx(per_microbatch, rel=1e-6)
    assert on.fwd == pytest.approx(off.fwd)
    assert on.bwd > 1.05 * off.bwd


def test_the_70b_rows_have_the_benchmarks_pairs_and_do_not_move():
    # Llama-70B at TP 2: 64 / 2 = 32 heads a rank, MBS 1: the device figure's 32 work-groups
    on, _ = _stage("aurora-megds-70b-pp8-tp2-gas8", v.IMPLEMENTATIONS[XPU])
    off, _ = _stage("aurora-megds-70b-pp8-tp2-gas8",
                    dataclasses.replace(v.IMPLEMENTATIONS[XPU], attn_bwd_head_grid=False))
    assert on.bwd == pytest.approx(off.bwd)


def test_the_cooldown_fit_row_runs_ipex_2_8s_backward_and_keeps_its_fit():
    # IPEX 2.8.10 (aurora_frameworks-2025.2.0) rewrote the backward's grid: the fit row has no head-grid term, so the
    # fitted tile scale is unchanged by it
    assert not v.IMPLEMENTATIONS["megatron-deepspeed-xpu-zero1"].attn_bwd_head_grid
    assert v.IMPLEMENTATIONS[XPU].attn_bwd_head_grid
    on, _ = _stage("alcf-aurora2b-cooldown-3072", v.IMPLEMENTATIONS["megatron-deepspeed-xpu-zero1"])
    forced, _ = _stage("alcf-aurora2b-cooldown-3072", dataclasses.replace(
        v.IMPLEMENTATIONS["megatron-deepspeed-xpu-zero1"], attn_bwd_head_grid=True))
    assert forced.bwd > on.bwd
    assert math.isclose(hw.PVC_TRAINING_RATE_SCALE, 0.805)


def test_only_the_aurora_stack_carries_the_term():
    carriers = [name for name, impl in v.IMPLEMENTATIONS.items() if impl.attn_bwd_head_grid]
    assert carriers == [XPU]
    assert not cm.ALPHAEXA.attn_bwd_head_grid
