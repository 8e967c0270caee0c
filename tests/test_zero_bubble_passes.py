"""The Zero Bubble paper's profiled Megatron-LM passes against the cost model's stage terms.

docs/planner.md section 10, "Session 9: the Zero Bubble rows' 1F1B passes (branch zb11)": for the 12 ``zb-1f1b-*``
rows (group unseen13) the paper's own per-pass profile (arXiv 2401.10241, Appendix D, Table 9) puts the rows' error in
the forward pass of a middle stage (15-28% longer than modelled) and in the time between passes, while the
modelled input-gradient (B) and weight-gradient (W) passes agree within about 10%; and the paper's Table 7 shows a
per-micro-batch cost that does not grow with the micro-batch size, which the model lacks at micro-batch 1.
These tests pin those statements (nothing in the model was changed for them), so the subsection goes stale
loudly when a change to the forward, the backward or the pipeline terms moves them.
"""
from __future__ import annotations

import pytest
from bench_module import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("zero_bubble_passes_vs_model")


def test_the_profile_covers_the_twelve_zero_bubble_rows(bench):
    from topology import validation as v
    ids = {r.id for r in v.load_runs() if r.id.startswith("zb-1f1b-")}
    assert ids == set(bench.TABLE9)


def test_the_rows_gap_is_in_the_forward_pass_not_the_backward(bench):
    for run, c in bench.rows():
        assert c["F_meas"] / c["F_model"] > 1.10, run.id  # the forward: 11-23% longer (15-28% before refit11)
        assert 0.9 < c["B_meas"] / c["B_model"] < 1.1, run.id  # input gradients and the non-GEMM backward
        assert 0.9 < c["W_meas"] / c["W_model"] < 1.15, run.id  # weight-gradient GEMMs into main_grad
        # one synchronised stage-to-stage hop as the fork timed it (the mean of the pipeline's p - 1 hops) against
        # the model's mean hop, priced on the channels NCCL gives a send (branch p2p11: 4 channels in an 8-rank
        # communicator in one node, 2 once it spans nodes): -29% to +20% (it was 3-5 times the model's before)
        assert 0.7 < c["comm_model"] / c["comm_meas"] < 1.25, run.id


def test_the_profile_accounts_for_most_of_each_measured_slot(bench):
    for run, c in bench.rows():
        # F + B + W + two exchanges is within 9% of the measured step per slot, and short of it (stage imbalance and
        # whatever else the profile's median stage does not see); the model's slot is shorter than both
        assert 0.91 < c["slot_profile"] / c["slot_meas"] < 1.0, run.id
        assert c["slot_model"] < c["slot_profile"], run.id


def test_doubling_the_micro_batch_shows_a_fixed_per_micro_batch_cost_the_model_lacks_at_mbs1(bench):
    got = {name: (meas, model) for name, meas, model in bench.fixed_per_microbatch()}
    for name, (meas, model) in got.items():
        if "b1->2" in name:
            assert meas > 3.0 and model < 1.5, (name, meas, model)


def test_at_m_equal_p_the_profiled_passes_explain_most_of_the_step_and_the_model_does_not(bench):
    # Table 12's 1F1B rows with m = p: little steady state and 29-39 GB, so neither the lock-step remainder nor
    # ZB-2p's memory; the profile's passes stay within 8% of the step and the model is short on each.  The 1.5B and
    # 14.6B rows are 5% or more short, farther than the profile; the 6.2B row came within the profile's own error
    # once megfwd11 counted the QKV bias add (-3.9% -> -3.2%) and refit11 re-fitted the A100 GEMM rate (-> -1.4%)
    for name, meas, model, prof in bench.small_m():
        assert abs(prof / meas - 1) < 0.08, name
        assert model / meas - 1 < 0, name
        if not name.startswith("6.2b"):
            assert model / meas - 1 < -0.05, name
            assert abs(prof / meas - 1) < abs(model / meas - 1), name