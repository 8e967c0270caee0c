"""What FlagPerf's Megatron-Core 0.6 Llama 3 cases run beyond the megatron-core entry: the FFN bias's gradient reduced
by autograd and the data loader's attention mask (docs/planner.md section 10, "Session 10: FlagPerf's Llama 3 8B on
H100", branch flagperf12)."""
from __future__ import annotations

from dataclasses import replace

from topology import costmodel as cm
from topology import validation as v

RUNS = {r.id: r for r in v.load_runs()}
ROW_8B = "flagperf-llama3-8b-h100-8"  # TP 2, PP 1, sequence 8192, MBS 1, 128 micro-batches
ROW_70B = "flagperf-llama3-70b-h100-64"  # TP 8, PP 4


def _step(run_id: str, impl: cm.Implementation) -> float:
    run = RUNS[run_id]
    return cm.estimate(v.request_of(run, impl=impl), run.layout()).step_time_s


def test_the_flagperf_llama_rows_run_linear_biases_and_the_loader_mask():
    # pretrain_llama3.sh passes neither --disable-bias-linear nor --no-create-attention-mask-in-dataloader;
    # the Mixtral script passes --disable-bias-linear
    for rid in (ROW_8B, "flagperf-llama3-8b-h100-16", "flagperf-llama3-8b-h100-440", ROW_70B):
        impl = v.implementation_of(RUNS[rid])
        assert impl.ffn_bias_grad_bytes == v.MEGATRON_CORE_FFN_BIAS_GRAD_BYTES == 2.0
        assert impl.loader_attn_mask
    mixtral = v.implementation_of(RUNS["flagperf-mixtral-8x7b-h100-32"])
    assert mixtral.ffn_bias_grad_bytes == 0.0 and mixtral.loader_attn_mask


def test_the_ffn_bias_gradient_reads_the_glu_input_gradient_once_a_dense_layer():
    run = RUNS[ROW_8B]
    impl = v.implementation_of(run)
    off = replace(impl, ffn_bias_grad_bytes=0.0)
    model, system = v.model_of(run), v.system_of(run)
    on_cost = cm.layer_cost(model, system, run.gpus, run.tp, 1, 1, run.mbs, run.seq_len, 1, impl)
    off_cost = cm.layer_cost(model, system, run.gpus, run.tp, 1, 1, run.mbs, run.seq_len, 1, off)
    # 8192 tokens x 2 x 14336 / 2 bf16 elements = 235 MB read: about 0.1 ms on an H100, backward only
    nbytes = 2.0 * run.mbs * run.seq_len * 2 * model.d_ff / run.tp
    assert abs(on_cost.bwd_dense - off_cost.bwd_dense - cm.elementwise_seconds(system.node.device, nbytes, 1)) < 1e-12
    assert 0.05e-3 < on_cost.bwd_dense - off_cost.bwd_dense < 0.2e-3
    assert on_cost.fwd_dense == off_cost.fwd_dense


def test_the_loader_mask_is_paid_a_micro_batch_on_the_first_and_last_stage():
    run = RUNS[ROW_8B]
    impl = v.implementation_of(run)
    req = v.request_of(run)
    mask = cm.loader_mask_seconds(req, run.tp, run.mbs)
    # 8192 x 8192 bool = 67.1 MB over the node's 50 GB/s PCIe (1.34 ms) plus the TP-2 broadcast
    assert 1.34e-3 < mask < 2.0e-3
    grow = _step(ROW_8B, replace(impl, ffn_bias_grad_bytes=0.0)) - _step(
        ROW_8B, replace(impl, ffn_bias_grad_bytes=0.0, loader_attn_mask=False))
    assert abs(grow - 128 * mask) < 0.01 * 128 * mask  # once a micro-batch, 128 of them
    # PP 4: only the end stages load data, and the step follows the slowest stage (not four times the mask)
    run70 = RUNS[ROW_70B]
    impl70 = replace(v.implementation_of(run70), ffn_bias_grad_bytes=0.0)
    mask70 = cm.loader_mask_seconds(v.request_of(run70), run70.tp, run70.mbs)
    grow70 = _step(ROW_70B, impl70) - _step(ROW_70B, replace(impl70, loader_attn_mask=False))
    assert 0 < grow70 <= (256 + 3) * mask70 * 1.01
