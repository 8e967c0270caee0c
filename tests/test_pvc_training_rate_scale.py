"""The Max 1550 tile's training rate scale, fitted on ALCF's AuroraGPT-2B cooldown run (session 9, branch auroracal11).

docs/planner.md section 10, "Session 9: the Max 1550 fitted on ALCF's cooldown run": the one FIT row on the tile
(topology/data/published_runs.json 'alcf-aurora2b-cooldown-3072') prints DeepSpeed's per-phase timers;
bench/fit_published_runs.py fits PVC_TRAINING_RATE_SCALE on that row's forward + backward compute, never on a
held-out row.  These tests re-derive the constant with the fit procedure and check what it is fitted to.
"""
from __future__ import annotations

import dataclasses

import pytest
from bench_module import load_bench

from topology import costmodel as cm
from topology import hardware as hw
from topology import validation as v

ROW = "alcf-aurora2b-cooldown-3072"


def _fit_module():
    return load_bench("fit_published_runs")


def test_the_fit_procedure_rederives_the_tiles_rate_scale_from_the_fit_row():
    fit = _fit_module()
    scale, rows, err = fit.fit_pvc_rate_scale()
    assert [r.id for r in rows] == [ROW]
    assert all(r.split == "fit" for r in rows)
    assert scale == pytest.approx(hw.PVC_TRAINING_RATE_SCALE, abs=1e-9)
    assert err < 0.005  # one row, one factor: the grid's step is the only residue
    assert hw.PVC_TILE.gemm_efficiency == pytest.approx(0.527 * scale)


def test_the_fit_never_reads_a_held_out_row():
    # the same row marked held out leaves the fit with nothing to fit on
    fit = _fit_module()
    runs = [dataclasses.replace(r, split="heldout") if r.id == ROW else r for r in v.load_runs()]
    with pytest.raises(ValueError, match="no fit row"):
        fit.fit_pvc_rate_scale(runs)


def test_the_model_gives_the_cooldown_runs_compute_as_its_timers_print_it():
    # forward 715.24 + backward without the reduction 1206.16 ms over two micro-batches (DeepSpeed's
    # wall_clock_breakdown, ALCF/notes/cooldown.md at 6c208091); with the microbenchmark rates alone the
    # model gave 775.6 ms a micro-batch, 19% short
    fit = _fit_module()
    run = next(r for r in v.load_runs() if r.id == ROW)
    measured = fit.measured_compute_s(fit.phase_timers()[ROW])
    assert measured == pytest.approx(0.9607, abs=1e-4)
    assert fit.max1550_compute_s(run, hw.PVC_TRAINING_RATE_SCALE) == pytest.approx(measured, rel=0.01)
    assert fit.max1550_compute_s(run, 1.0) < 0.85 * measured


def test_zero1_runs_no_fp32_gradient_accumulation():
    # DeepSpeed ZeRO-1 without overlap_comm: no BF16_Optimizer hp_grad add after each micro-batch, only autograd's
    # bf16 accumulation on the second; the backward is shorter than the BF16_Optimizer's by 18 - 6 / 2 bytes a
    # parameter streamed at the tile's elementwise rate
    run = next(r for r in v.load_runs() if r.id == ROW)
    system = v.system_of(run)
    terms = {}
    # the held-out rows' stack (IPEX 2.5.10) also runs XeTLA's head-grid attention backward, the cooldown's IPEX
    # 2.8.10 does not (test_xetla_head_grid_backward.py): compared here on the same attention kernel
    impls = {"megatron-deepspeed-xpu": dataclasses.replace(v.IMPLEMENTATIONS["megatron-deepspeed-xpu"],
                                                           attn_bwd_head_grid=False),
             "megatron-deepspeed-xpu-zero1": v.IMPLEMENTATIONS["megatron-deepspeed-xpu-zero1"]}
    for name in ("megatron-deepspeed-xpu", "megatron-deepspeed-xpu-zero1"):
        req = cm.Request(v.model_of(run), system, run.gpus // system.ranks_per_node, run.global_batch,
                         run.seq_len, impls[name])
        terms[name] = cm.structure_of(req, run.layout()).stages[0]
    params = v.param_counts(v.model_of(run)).total
    dev = system.node.device
    expected = (18.0 - 6.0 / 2) * params / (dev.memory_gbps * 1e9 * dev.elementwise_efficiency)
    saved = terms["megatron-deepspeed-xpu"].bwd - terms["megatron-deepspeed-xpu-zero1"].bwd
    assert saved == pytest.approx(expected, rel=0.02)
    assert terms["megatron-deepspeed-xpu"].fwd == pytest.approx(terms["megatron-deepspeed-xpu-zero1"].fwd)
