"""Cost model: the published closed forms on hand-checked numbers, and the composed estimate."""
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from topology import costmodel as cm
from topology.hardware import GIB, load_system
from topology.layout import Layout
from topology.modelcfg import ConfigError, ModelConfig, flops_per_token
from topology.presets import get_preset

GB = 1e9
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------- ZeRO
def zero_total_gb(n_params: float, sharding: str, dp: int) -> float:
    per = cm.zero_bytes_per_param(sharding, dp)
    return n_params * sum(per.values()) / GB


def test_zero_paper_figure1_example():
    # Rajbhandari et al. 2020, Fig. 1: 7.5B parameters, N_d = 64, K = 12.
    psi, nd = 7.5e9, 64
    assert zero_total_gb(psi, "none", nd) == pytest.approx(120.0)  # (2 + 2 + 12) * psi
    assert zero_total_gb(psi, "zero1", nd) == pytest.approx(31.40625)  # 4 psi + 12 psi / N_d
    assert zero_total_gb(psi, "zero2", nd) == pytest.approx(16.640625)  # 2 psi + 14 psi / N_d
    assert zero_total_gb(psi, "zero3", nd) == pytest.approx(1.875)  # 16 psi / N_d


def test_zero_stages_shard_only_their_states():
    assert cm.zero_bytes_per_param("none", 8) == {"params": 2, "grads": 2, "optimizer": 12}
    assert cm.zero_bytes_per_param("zero1", 8) == {"params": 2, "grads": 2, "optimizer": 1.5}
    assert cm.zero_bytes_per_param("zero2", 8) == {"params": 2, "grads": 0.25, "optimizer": 1.5}
    assert cm.zero_bytes_per_param("zero3", 8) == {"params": 0.25, "grads": 0.25, "optimizer": 1.5}


# ------------------------------------------------------- Korthikanti et al.
S, B, H, A = 2048, 1, 12288, 96  # GPT-3 175B layer shapes
SBH = S * B * H  # 25,165,824


@pytest.mark.parametrize("t, sp, recompute, expected", [
    (1, False, "none", SBH * 114),  # 34 + 5as/h = 34 + 80
    (8, False, "none", SBH * 23),  # 10 + 24/8 + 80/8
    (8, True, "none", SBH * 14.25),  # 34/8 + 80/8
    (8, True, "selective", SBH * 4.25),  # 34/8
    (8, False, "selective", SBH * 13),  # 10 + 24/8
    (1, False, "full", SBH * 2),  # the layer input
    (8, True, "full", SBH * 2 / 8),
])
def test_korthikanti_closed_forms(t, sp, recompute, expected):
    got = cm.korthikanti_layer_activation_bytes(S, B, H, A, t, sequence_parallel=sp, recompute=recompute)
    assert got == pytest.approx(expected)


def gpt_layer(h=1024, a=16) -> ModelConfig:
    return ModelConfig(name="gpt", n_layers=2, d_model=h, n_heads=a, d_ff=4 * h, ffn_type="gelu",
                       vocab_size=50304, max_seq_len=4096, norm="layernorm")


@pytest.mark.parametrize("t", [1, 2, 4, 8])
@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_general_layer_bookkeeping_reduces_to_the_paper_on_a_gpt_layer(t, sp, recompute):
    cfg = gpt_layer()
    s, b = 2048, 2
    got = cm.layer_activation_bytes(cfg, False, s, b, t=t, recompute=recompute, sequence_parallel=sp,
                                    fused_attention=False, dropout=True)
    want = cm.korthikanti_layer_activation_bytes(s, b, cfg.d_model, cfg.n_heads, t, sp, recompute)
    assert got == pytest.approx(want)


def test_fused_attention_keeps_only_the_log_sum_exp_instead_of_scores():
    cfg = gpt_layer()
    s, b = 4096, 1
    fused = cm.layer_activation_bytes(cfg, False, s, b, fused_attention=True, dropout=True)
    assert fused == pytest.approx(34 * s * b * cfg.d_model + 4 * b * cfg.n_heads * s)


def test_swiglu_gqa_and_moe_terms():
    cfg = get_preset("debug")  # swiglu, d=64, 4 heads, 2 kv heads, d_ff 128, 4 experts top-2
    s, b, h, f = 128, 1, 64, 128
    dense = cm.layer_activation_bytes(cfg, False, s, b)
    # norms 4sbh + qkv input 2sbh + Q,out 2*(2sb*64) + K,V 2*(2sb*32) + lse 4*b*a*s + ffn input 2sbh + swiglu 8sbf
    want = 4 * s * h + 2 * s * h + 2 * (2 * s * 64) + 2 * (2 * s * 32) + 4 * 4 * s + 2 * s * h + 8 * s * f
    assert dense == pytest.approx(want)
    moe = cm.layer_activation_bytes(cfg, True, s, b)
    routed = s * 2  # top-2, dropless
    ffn_moe = 4 * s * h + 2 * s * h + 2 * (2 * s * 64) + 2 * (2 * s * 32) + 4 * 4 * s + 2 * s * h
    ffn_moe += 4 * s * 4 + 2 * routed * h * 2 + 8 * routed * cfg.moe_d_ff
    assert moe == pytest.approx(ffn_moe)


# -------------------------------------------------------------- collectives
CALL = 26e-6  # NCCL_CALL_US: every NVIDIA preset's fixed cost per collective call
ONECCL_CALL = 350e-6  # Aurora's: a oneCCL call as ALCF's DLcomm_benchmark logs measured it (topology/hardware.py)


def test_ring_all_reduce_on_one_link_class():
    polaris = load_system("polaris")
    path = cm.comm_path(polaris, 4, 1)
    assert path.link_class == "NVLink3" and path.nodes == 1 and path.call_us * 1e-6 == pytest.approx(CALL)
    nbytes = 2**30  # large: NCCL's bandwidth protocol, after its pipeline set-up
    bw = 300e9 * 0.78
    setup = 122e-6
    want = CALL + setup + 2 * 3 / 4 * nbytes / bw + 2 * 2 * 3e-6  # 2(n-1)/n B/bw + 2 log2(n) latency
    assert cm.collective_seconds("all_reduce", nbytes, path) == pytest.approx(want)
    assert cm.collective_seconds("reduce_scatter", nbytes, path) == pytest.approx(
        CALL + setup + 3 / 4 * nbytes / bw + 2 * 3e-6)
    assert cm.collective_seconds("all_gather", nbytes, path) == cm.collective_seconds("reduce_scatter", nbytes, path)
    assert cm.collective_seconds("all_reduce", nbytes, cm.comm_path(polaris, 1, 1)) == 0.0
    small = 2**20  # small: the low-latency protocol, no set-up, lower bandwidth
    ll_bw = 300e9 * 0.548
    assert cm.collective_seconds("all_reduce", small, path) == pytest.approx(
        CALL + 2 * 3 / 4 * small / ll_bw + 2 * 2 * 3e-6)


def test_nvlink_protocol_switch_is_where_the_set_up_pays_for_itself():
    """The faster of the low-latency and the bandwidth protocol: continuous at the crossover,
    the low-latency one below it, the bandwidth one above it."""
    path = cm.comm_path(load_system("h200-x4"), 4, 1)
    link = path.intra
    ll, bulk = 450e9 * link.low_latency_efficiency, 450e9 * link.efficiency
    crossover = link.bandwidth_setup_us * 1e-6 / (1 / ll - 1 / bulk)  # bytes moved per rank
    # the measurements put it between the 16 MiB and the 256 MiB all-gathers on 4 GPUs
    assert 0.75 * 16 * 2**20 < crossover < 0.75 * 256 * 2**20
    fixed = CALL + 2 * link.latency_us * 1e-6
    below, above = 0.5 * crossover / 0.75, 2 * crossover / 0.75  # buffers whose 3/4 is moved
    assert cm.collective_seconds("all_gather", below, path) == pytest.approx(fixed + 0.75 * below / ll)
    assert cm.collective_seconds("all_gather", above, path) == pytest.approx(
        fixed + link.bandwidth_setup_us * 1e-6 + 0.75 * above / bulk)
    at = cm.collective_seconds("all_gather", crossover / 0.75, path)
    assert at == pytest.approx(fixed + crossover / ll) and at == pytest.approx(
        fixed + link.bandwidth_setup_us * 1e-6 + crossover / bulk)
    # the latency grows with the group: one ring step per doubling, all-reduce twice
    two, four, eight = (cm.comm_path(load_system(f"h200-x{n}"), n, 1) for n in (2, 4, 8))
    tiny = 1024.0
    step = link.latency_us * 1e-6
    assert cm.collective_seconds("all_gather", tiny, four) - cm.collective_seconds("all_gather", tiny, two) \
        == pytest.approx(step + (3 / 4 - 1 / 2) * tiny / ll)
    assert cm.collective_seconds("all_reduce", tiny, eight) - cm.collective_seconds("all_reduce", tiny, four) \
        == pytest.approx(2 * step + 2 * (7 / 8 - 3 / 4) * tiny / ll)


@pytest.mark.parametrize("size, stride, link, k, nodes", [
    (2, 1, "MDFI", 2, 1),  # two tiles of one GPU
    (4, 1, "XeLink", 4, 1),
    (6, 2, "XeLink", 6, 1),
    (2, 12, "Slingshot-11", 1, 2),  # one rank per node
    (24, 1, "XeLink+Slingshot-11", 12, 2),  # hierarchical
    (6, 4, "XeLink+Slingshot-11", 3, 2),  # 3 per node on 2 nodes
    (8, 4, "Slingshot-11 (misaligned)", 1, 8),  # spans 32 ranks: not whole nodes
    (8, 1, "Slingshot-11 (misaligned)", 1, 8),  # 8 does not divide 12 ranks per node
])
def test_comm_path_link_classes_on_aurora(size, stride, link, k, nodes):
    aurora = load_system("aurora")
    path = cm.comm_path(aurora, size, stride)
    assert (path.link_class, path.k, path.nodes) == (link, k, nodes)


def test_inter_node_bandwidth_is_the_nics_shared_by_the_ranks_of_a_node():
    aurora = load_system("aurora")
    path = cm.comm_path(aurora, 4, 12)
    assert path.inter_gbps == pytest.approx(8 * 25 * 0.85 / 12)
    nbytes = 1e9
    want = ONECCL_CALL + 3 / 4 * nbytes / (path.inter_gbps * 1e9) + 2 * 8e-6
    assert cm.collective_seconds("all_gather", nbytes, path) == pytest.approx(want)


def test_hierarchical_all_reduce_is_intra_reduce_scatter_inter_all_reduce_intra_all_gather():
    aurora = load_system("aurora")
    path = cm.comm_path(aurora, 24, 1)
    nbytes = 1e9
    intra = 106e9 * 0.60
    inter = 8 * 25e9 * 0.85 / 12
    rs_intra = 11 / 12 * nbytes / intra + 4 * 5e-6
    ar_inter = 2 * 1 / 2 * (nbytes / 12) / inter + 2 * 1 * 8e-6
    assert cm.collective_seconds("all_reduce", nbytes, path) == pytest.approx(ONECCL_CALL + 2 * rs_intra + ar_inter)


def test_all_to_all_splits_traffic_between_node_link_and_nics():
    aurora = load_system("aurora")
    path = cm.comm_path(aurora, 24, 1)  # 12 per node, 2 nodes
    nbytes = 1.2e9
    t_intra = nbytes * 11 / 24 / (106e9 * 0.6)
    t_inter = nbytes * 12 / 24 / (8 * 25e9 * 0.85 / 12)
    want = ONECCL_CALL + max(t_intra, t_inter) + (5e-6 * 4 + 8e-6 * 1)  # log2 steps in and between nodes
    assert cm.collective_seconds("all_to_all", nbytes, path) == pytest.approx(want)


# -------------------------------------------------------------- pipeline
def test_pipeline_bubble_per_schedule():
    tf, tb = 1.0, 2.0
    assert cm.bubble_seconds("1f1b", 8, 1, tf, tb) == pytest.approx(7 * 3)
    assert cm.bubble_seconds("gpipe", 8, 1, tf, tb) == pytest.approx(7 * 3)
    assert cm.bubble_seconds("interleaved1f1b", 8, 4, tf, tb) == pytest.approx(7 * 3 / 4)
    # the trainer's zbv has no split weight-gradient step: a chunk's whole backward is on the critical
    # path, the same bubble as interleaving two chunks
    assert cm.bubble_seconds("zbv", 8, 2, tf, tb) == pytest.approx(cm.bubble_seconds("interleaved1f1b", 8, 2, tf, tb))
    assert cm.bubble_seconds("1f1b", 1, 1, tf, tb) == 0.0


def test_zbv_bubble_with_a_split_backward(monkeypatch):
    monkeypatch.setattr(cm, "ZBV_SPLIT_BACKWARD", True)
    zbv = cm.bubble_seconds("zbv", 8, 2, 1.0, 2.0)  # F=0.5, B=W=0.5: F+B-2W = 0 -> floor 10% of a chunk
    assert zbv == pytest.approx(7 * 0.1 * 1.5)


def test_in_flight_micro_batches_per_schedule():
    assert cm.inflight("1f1b", 8, 1, 32, 0) == 8  # stage 0 holds pp
    assert cm.inflight("1f1b", 8, 1, 32, 7) == 1
    assert cm.inflight("1f1b", 8, 1, 4, 0) == 4  # never more than m
    assert cm.inflight("gpipe", 8, 1, 32, 3) == 32
    assert cm.inflight("interleaved1f1b", 8, 2, 32, 0) == pytest.approx(8 * (1 + 7 / 16))  # Korthikanti 4.2
    assert cm.inflight("zbv", 8, 2, 32, 5) == 8
    assert cm.inflight("1f1b", 1, 1, 32, 0) == 1


def test_stage_profiles_place_layers_embedding_and_head():
    model = get_preset("alphaexa-250b")  # 42 layers, MoE every 6th
    profs = cm.stage_profiles(model, 4, 1, "1f1b")
    by_rank = {p.rank: p for p in profs}
    assert by_rank[0].embed and not by_rank[0].head
    assert any(p.head and p.rank == 3 for p in profs)
    zbv = cm.stage_profiles(model, 4, 2, "zbv")  # V shape: rank 0 runs the first and the last chunk
    assert any(p.rank == 0 and p.embed and p.head for p in zbv)
    inter = cm.stage_profiles(model, 3, 2, "interleaved1f1b")  # 6 chunks of 7 layers
    assert {(p.n_dense + p.n_moe) for p in inter} == {14}
    one_layer_each = cm.stage_profiles(model, 42, 1, "1f1b")  # distinct ranks only, lowest rank of each
    assert {(p.n_dense, p.n_moe) for p in one_layer_each} == {(1, 0), (0, 1)}
    assert min(p.rank for p in one_layer_each if p.n_moe) == 5  # block 6 is the first MoE block


# ------------------------------------------------------------------ GEMMs
def test_gemm_time_is_compute_bound_when_large_and_wave_quantised():
    dev = load_system("h100-x1").node.device
    n = 8192
    t = cm.gemm_seconds(dev, n, n, n)
    ideal = 2 * n**3 / (dev.bf16_tflops * 1e12 * dev.gemm_efficiency)
    tiles = (n // 128) ** 2
    util = tiles / (math.ceil(tiles / dev.compute_units) * dev.compute_units)
    assert t == pytest.approx(ideal / util + dev.launch_us * 1e-6)
    # one tile more than the device has units takes two waves: almost twice the time per FLOP
    assert dev.compute_units == 12 * 11
    one_wave = cm.gemm_seconds(dev, 128 * 12, 128 * 11, 8192)
    two_waves = cm.gemm_seconds(dev, 128 * 12, 128 * 11 + 1, 8192)
    launch = dev.launch_us * 1e-6
    assert (two_waves - launch) / (one_wave - launch) == pytest.approx(264 / 144 * (128 * 11 + 1) / (128 * 11))
    # a skinny GEMM is memory bound
    skinny = cm.gemm_seconds(dev, 1, n, n)
    assert skinny == pytest.approx(2 * (n + n * n + n) / (dev.memory_gbps * 1e9) + dev.launch_us * 1e-6)


def test_grouped_gemm_shares_the_waves_of_all_experts_and_launches_once():
    dev = load_system("h200-x1").node.device
    peak = dev.bf16_tflops * 1e12 * dev.gemm_efficiency
    launch = dev.launch_us * 1e-6
    flops = 2 * 2048 * 1408 * 2048
    # one expert: 16 x 11 = 176 tiles, two waves over 132 SMs; eight in one kernel: 1408 tiles, 11 waves
    assert cm.gemm_seconds(dev, 2048, 1408, 2048) == pytest.approx(flops / (peak * 176 / 264) + launch)
    grouped = cm.grouped_gemm_seconds(dev, 8, 2048, 1408, 2048)
    assert grouped == pytest.approx(8 * flops / (peak * 1408 / 1452) + launch)
    assert grouped < 0.75 * 8 * cm.gemm_seconds(dev, 2048, 1408, 2048)


def test_causal_attention_computes_its_diagonal_tiles_whole():
    # the tile count alone: a device without a sequence curve (attention_rate_scale is 1)
    dev = dataclasses.replace(load_system("h200-x1").node.device, attention_seq_half=cm.ATTN_TILE)
    peak = dev.bf16_tflops * 1e12 * dev.attention_efficiency
    launch = dev.launch_us * 1e-6
    # 128 queries and keys are one tile: the full square, 2 matmuls of 2 FLOPs per multiply-add
    assert cm.attention_seconds(dev, 1, 128, 128, 4096) - launch == pytest.approx(4 * 128 * 128 * 4096 / peak)
    assert cm.attention_seconds(dev, 1, 64, 64, 4096) - launch == pytest.approx(4 * 64 * 64 * 4096 / peak)
    # long sequences approach the visible half: 8192 / 128 = 64 tiles per row, 1/64 extra
    assert cm.attention_seconds(dev, 2, 8192, 8192, 4096) - launch == pytest.approx(
        2 * 4 * 8192 * 8192 * 4096 * 0.5 * (1 + 1 / 64) / peak)


def _visible_tflops(dev, seq: int) -> float:
    """The model's causal attention rate, forward + backward, counting the visible half (the charts' count)."""
    heads, hd, batch = 2048 // 128, 128, max(1, 16384 // seq)  # the FlashAttention benchmarks' shapes
    fwd = cm.attention_seconds(dev, batch, seq, seq, heads * hd) - dev.launch_us * 1e-6
    return 4 * batch * seq * seq * heads * hd / 2 / fwd / 1e12


@pytest.mark.parametrize(("system", "chart"), [
    # cuDNN (SDPA's), our H200, causal, head dim 128, forward + backward, TFLOP/s at 4k / 16k / 32k (session 8,
    # gpu_pending PART=a); on H100 and H200 alike (the same GH100 compute). The FA3 paper's forward-only H100
    # bars (410 / 484 / 518 / 529 / 539 at 1k-16k) rise earlier: forward + backward is what a step runs
    ("h200-x1", {4096: 478.6, 16384: 523.9, 32768: 539.7}),
    ("h100-x8", {4096: 478.6, 16384: 523.9, 32768: 539.7}),
    # FlashAttention in Triton, A100 80GB, causal, head dim 128, fwd + bwd (FlashAttention-2 paper, figure 4d)
    ("dgx-a100-80gb", {1024: 61, 2048: 68, 4096: 74, 8192: 78, 16384: 80}),
])
def test_fused_attention_rate_grows_with_the_sequence_as_the_published_benchmarks(system, chart):
    dev = load_system(system).node.device
    ref = int(dev.attention_ref_seq)
    for seq, tflops in chart.items():  # the shape of the curve, relative to the reference length (the bars'
        # scatter about the fitted curve is 1-2%, so a ratio of two bars is held to 4%)
        assert _visible_tflops(dev, seq) / _visible_tflops(dev, ref) == pytest.approx(tflops / chart[ref], rel=0.04)
    # at the reference length the device's figure is what it was: only the diagonal tiles added back
    fwd = cm.attention_seconds(dev, 2, ref, ref, 4096) - dev.launch_us * 1e-6
    assert fwd == pytest.approx(2 * 4 * ref * ref * 4096 * 0.5 * (1 + cm.ATTN_TILE / ref)
                                / (dev.bf16_tflops * 1e12 * dev.attention_efficiency))


def test_context_parallel_attention_runs_at_the_rate_of_one_ring_block():
    # ring attention calls the kernel once a step on one rank's block of s / cp keys: the rate is that
    # block's, while the FLOPs stay those of the whole causal square's share
    model, system = get_preset("1b"), load_system("dgx-h100")
    dev = system.node.device
    lc = cm.layer_cost(model, system, 8, 1, 2, 1, 1, 8192, 8)
    assert lc.attn_fwd == pytest.approx(cm.attention_seconds(dev, 1, 4096, 8192, model.q_dim, rate_keys=4096))
    assert lc.attn_fwd > 1.02 * cm.attention_seconds(dev, 1, 4096, 8192, model.q_dim)


def _layer_attention_tflops(system, seq: int, kernel: str) -> float:
    """The fused attention's rate in layer_cost for a framework running ``kernel`` (visible half, forward)."""
    model = get_preset("1b").replace(head_dim=128, n_heads=16)  # the charts' head dim (cuDNN's table is 1 there)
    lc = cm.layer_cost(model, system, 8, 1, 1, 1, 1, seq, 8, cm.Implementation(attention_kernel=kernel))
    fwd = lc.attn_fwd - system.node.device.launch_us * 1e-6
    return 4 * seq * seq * model.q_dim / 2 / fwd / 1e12


@pytest.mark.parametrize(("system", "kernel", "chart"), [
    # FlashAttention-2 (PyTorch SDPA's flash backend), A100 80GB, causal, d 128, fwd + bwd (FA2 paper, figure 4d)
    ("dgx-a100-80gb", "flash2", {1024: 133, 2048: 155, 4096: 173, 8192: 182, 16384: 189}),
    # FlashAttention-2, H100 SXM5, causal, d 128, fwd + bwd (flash-attention README, H100)
    ("h100-x8", "flash2", {1024: 221, 2048: 265, 4096: 294, 8192: 308, 16384: 328}),
    # FlashAttention's Triton kernel (llm-foundry's attn_impl triton): its only chart, A100 (figure 4d), on
    # Hopper as well; on Hopper the device's own curve is cuDNN's (583), which this must not follow
    ("h100-x8", "flash-triton", {1024: 61, 2048: 68, 4096: 74, 8192: 78, 16384: 80}),
    ("dgx-a100-80gb", "flash-triton", {1024: 61, 2048: 68, 4096: 74, 8192: 78, 16384: 80}),
    # cuDNN on Hopper: the device's own curve (our H200's forward + backward sweep, session 8)
    ("h100-x8", "cudnn", {4096: 478.6, 16384: 523.9, 32768: 539.7}),
])
def test_a_framework_runs_on_its_own_kernels_sequence_curve(system, kernel, chart):
    system = load_system(system)
    dev = system.node.device
    ref = int(dev.attention_ref_seq)
    for seq, tflops in chart.items():  # the kernel's curve relative to the device's reference length
        rel = _layer_attention_tflops(system, seq, kernel) / _layer_attention_tflops(system, ref, kernel)
        assert rel == pytest.approx(tflops / chart[ref], rel=0.04)
    # the reference point is the device's, whatever the kernel: the same rate there
    assert _layer_attention_tflops(system, ref, kernel) == pytest.approx(_layer_attention_tflops(system, ref, ""))
    assert cm.kernel_seq_half(kernel, dev) == cm.KERNEL_SEQ_HALF[kernel][dev.arch]


def test_a_kernel_without_a_chart_runs_on_the_device_curve():
    a100, aurora = load_system("dgx-a100-80gb"), load_system("aurora")
    # no cuDNN chart on A100: the device's curve (the Triton bars its efficiency was set with)
    assert cm.kernel_seq_half("cudnn", a100.node.device) == a100.node.device.attention_seq_half
    for seq in (1024, 8192):
        assert _layer_attention_tflops(a100, seq, "cudnn") == pytest.approx(_layer_attention_tflops(a100, seq, ""))
    # a device without a sequence curve keeps one rate whatever the kernel
    assert cm.kernel_seq_half("flash2", aurora.node.device) == cm.ATTN_TILE
    assert _layer_attention_tflops(aurora, 1024, "flash2") == pytest.approx(_layer_attention_tflops(aurora, 1024, ""))


def test_validation_frameworks_name_the_kernel_they_run():
    from topology.validation import IMPLEMENTATIONS

    assert IMPLEMENTATIONS["llm-foundry"].attention_kernel == "flash-triton"  # attn_impl triton
    assert IMPLEMENTATIONS["torchtitan-2024"].attention_kernel == "flash2"  # SDPA's flash backend
    assert IMPLEMENTATIONS["megatron-core"].attention_kernel == "cudnn"  # Transformer Engine's fused attention


def test_a_device_without_a_sequence_curve_keeps_one_rate():
    dev = load_system("aurora").node.device
    assert dev.attention_seq_half == cm.ATTN_TILE
    assert cm.attention_rate_scale(dev, 1024) == cm.attention_rate_scale(dev, 65536) == 1.0


def _seconds(dev, nbytes: float, kernels: int) -> float:
    return nbytes / (dev.memory_gbps * 1e9 * dev.elementwise_efficiency) + kernels * dev.launch_us * 1e-6


def test_dense_layer_is_its_gemms_attention_and_counted_elementwise_traffic():
    model, system = get_preset("1b"), load_system("h200-x1")
    dev = system.node.device
    lc = cm.layer_cost(model, system, 1, 1, 1, 1, 4, 2048, 1)
    tokens = 4 * 2048

    def g(n, k):
        return cm.gemm_seconds(dev, tokens, n, k)

    gemms = g(2048, 2048) + 2 * g(256, 2048) + g(2048, 2048) + g(2 * 5632, 2048) + g(2048, 5632)  # q k v o, SwiGLU
    attention = cm.attention_seconds(dev, 4, 2048, 2048, 2048)
    # per token: two fp32 RMSNorms, two residual adds, fp32 RoPE of q and k (4 KV heads of 64),
    # the attention-output copy, SwiGLU over 5632 hidden units
    per_token = 2 * 20 * 2048 + 2 * 6 * 2048 + 48 * (2048 + 256) + 4 * 2048 + 10 * 5632
    assert per_token == 281_600
    kernels = 2 * 3 + 2 + 2 * 9 + 1 + 2
    elementwise = _seconds(dev, tokens * per_token, kernels)
    assert lc.fwd_dense == pytest.approx(gemms + attention + elementwise)
    # backward: twice the GEMMs and elementwise work, 2.5x the attention core (it recomputes the scores)
    assert lc.bwd_dense == pytest.approx(2 * (gemms + elementwise) + 2.5 * attention)


def test_moe_layer_routes_through_grouped_experts_and_one_host_synchronisation():
    model, system = get_preset("1b-moe"), load_system("h200-x1")  # 8 experts of 1408, top-2, 4 KV heads of 128
    dev = system.node.device
    lc = cm.layer_cost(model, system, 1, 1, 1, 1, 4, 2048, 1)
    tokens = 4 * 2048

    def g(n, k):
        return cm.gemm_seconds(dev, tokens, n, k)

    gemms = g(2048, 2048) + 2 * g(512, 2048) + g(2048, 2048) + g(8, 2048) \
        + cm.grouped_gemm_seconds(dev, 8, 2048, 2 * 1408, 2048) + cm.grouped_gemm_seconds(dev, 8, 2048, 2048, 1408)
    attention = cm.attention_seconds(dev, 4, 2048, 2048, 2048)
    # per token as in the dense layer (RoPE on 2048 + 512), SwiGLU on 2 routed rows of 1408, and per
    # routed row gather + weighting + index_add read (10 x 2048); zeros + index_add write per token (6 x 2048)
    per_token = 2 * 20 * 2048 + 2 * 6 * 2048 + 48 * (2048 + 512) + 4 * 2048 + 2 * (10 * 1408 + 10 * 2048) + 6 * 2048
    elementwise = _seconds(dev, tokens * per_token, 2 * 3 + 2 + 2 * 9 + 1 + 2 + cm.MOE_ROUTING_KERNELS)
    assert lc.fwd_moe == pytest.approx(gemms + attention + elementwise + dev.host_sync_us * 1e-6)
    assert lc.bwd_moe == pytest.approx(2 * (gemms + elementwise) + 2.5 * attention)


def test_predictions_match_the_h200_measurements_they_were_fitted_to(monkeypatch):
    """bench/calibration_report.py on the H200x4 run of 2026-11-22 (bench/gpu_calibrate.py): a change
    to the cost model's time terms that loses the calibration fails here."""
    spec = importlib.util.spec_from_file_location("calibration_report", ROOT / "bench" / "calibration_report.py")
    report_tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, report_tool)  # its dataclass resolves annotations there
    spec.loader.exec_module(report_tool)
    report = json.loads((ROOT / "tests" / "data" / "topo" / "h200_x4_calibrate.json").read_text())
    assert report_tool.family_of(report["device"]) == "h200"
    summary = report_tool.error_summary(report_tool.compare(report, "h200"))
    assert {k: v["count"] for k, v in summary.items()} == {"gemm": 8, "collectives": 32, "model": 3, "all": 43}
    assert summary["model"]["now_max"] < 5  # 125m, 1b, 1b-moe forward+backward
    assert summary["gemm"]["now_max"] < 8
    assert summary["collectives"]["now_median"] < 5 and summary["collectives"]["now_max"] < 40
    assert summary["all"]["before_median"] > 30  # what the uncalibrated model got wrong


# ---------------------------------------------------------------- estimate
def test_estimate_adds_up():
    req = cm.Request(get_preset("1b-moe"), load_system("dgx-h100"), 2, 64, 2048)
    est = cm.estimate(req, Layout(tp=2, pp=2, ep=4, mbs=2, schedule="1f1b", sharding="zero1"))
    parts = {k: v for k, v in est.breakdown.items() if k != "dp_comm_total_s"}
    assert sum(parts.values()) == pytest.approx(est.step_time_s)
    mem = est.memory
    assert mem["params"] + mem["grads"] + mem["optimizer"] + mem["activations"] + mem["overhead"] == \
        pytest.approx(mem["total"])
    assert mem["capacity"] == 80
    flops = flops_per_token(req.model, 2048)["total"] * 64 * 2048
    assert est.model_tflops_per_device == pytest.approx(flops / est.step_time_s / 16 / 1e12)
    assert est.mfu == pytest.approx(est.model_tflops_per_device / 989.4)
    assert est.tokens_per_s == pytest.approx(64 * 2048 / est.step_time_s)
    assert est.layout.dp_shard == 4 and est.microbatches == 8


def test_memory_terms_follow_sharding_and_recomputation():
    req = cm.Request(get_preset("7b"), load_system("h100-x8"), 1, 32, 4096)
    base = {"tp": 1, "pp": 1, "mbs": 1}
    none = cm.estimate(req, Layout(**base, sharding="zero1", dp_shard=8, recompute="none"))
    full = cm.estimate(req, Layout(**base, sharding="zero1", dp_shard=8, recompute="full"))
    z3 = cm.estimate(req, Layout(**base, sharding="zero3", dp_shard=8, recompute="none"))
    n_params = none.memory["params"] * GIB / 2
    assert none.memory["grads"] == pytest.approx(none.memory["params"])  # bf16 both
    assert none.memory["optimizer"] == pytest.approx(12 * n_params / 8 / GIB)
    assert full.memory["activations"] < none.memory["activations"] / 5
    assert full.step_time_s > none.step_time_s  # recomputation costs a forward
    assert z3.memory["optimizer"] == pytest.approx(none.memory["optimizer"])
    assert z3.memory["params"] < none.memory["params"] / 3
    assert z3.memory["total"] < none.memory["total"]


def test_estimate_validates_the_layout():
    req = cm.Request(get_preset("7b"), load_system("h100-x8"), 1, 32, 4096)
    with pytest.raises(ValueError, match=r"world size 8 is not divisible by pp\*dp_replicate\*cp\*tp = 3"):
        cm.estimate(req, Layout(tp=3))
    with pytest.raises(ValueError, match="tp=8 does not divide n_heads=32|does not divide"):
        cm.estimate(cm.Request(get_preset("debug"), load_system("h100-x8"), 1, 8, 128), Layout(tp=8))


def test_the_trainer_is_costed_compiled_exactly_where_it_compiles():
    """train.compile=auto and the planner share support.compiled_by_default: a compiled step (fused
    elementwise kernels, no MoE host sync) on CUDA with tp 1 and no selective recompute, eager elsewhere."""
    from topology.presets import get_preset

    model = get_preset("1b-moe")
    gpu = cm.Request(model, load_system("h200-x1"), 1, 8, 2048)
    assert gpu.implementation(1, "none") is cm.ALPHAEXA_COMPILED
    assert gpu.implementation(1, "full") is cm.ALPHAEXA_COMPILED
    assert gpu.implementation(1, "selective") is cm.ALPHAEXA
    assert gpu.implementation(2, "none") is cm.ALPHAEXA
    assert cm.Request(model, load_system("h200-x1"), 1, 8, 2048, engine="deepspeed").implementation(1, "none") \
        is cm.ALPHAEXA
    assert cm.Request(model, load_system("cpu"), 1, 8, 2048).implementation(1, "none") is cm.ALPHAEXA
    compiled = cm.estimate(gpu, Layout(dp_shard=1, mbs=8)).step_time_s
    eager = cm.estimate(cm.Request(model, load_system("h200-x1"), 1, 8, 2048, impl=cm.ALPHAEXA_EAGER),
                        Layout(dp_shard=1, mbs=8)).step_time_s
    assert compiled < eager  # fewer bytes and kernels, no host sync


def test_train_compile_auto_follows_the_shared_rule():
    from alphaexa.train.config import TrainSection
    from topology.support import compiled_by_default

    for device, tp, recompute in [("cuda", 1, "none"), ("cuda", 2, "none"), ("cuda", 1, "selective"),
                                  ("cpu", 1, "none"), ("xpu", 1, "full")]:
        layout = Layout(tp=tp, recompute=recompute)
        assert TrainSection().compile_on(device, layout) == compiled_by_default(device, tp, recompute)


def test_nccl_runs_the_legs_of_a_hierarchical_collective_at_once():
    # Two DGX H100 nodes: the node-link and network legs of NCCL's rings stream together, so the slower sets
    # the time (nccl-tests' multi-node bus bandwidth is that of the node's NICs together, not of the two legs
    # in sequence); oneCCL's staged algorithm on Aurora keeps the sum (the test above).
    h100 = load_system("dgx-h100")
    path = cm.comm_path(h100, 16, 1)
    assert (path.k, path.nodes, path.pipelined) == (8, 2, True)
    assert not cm.comm_path(load_system("aurora"), 24, 1).pipelined
    nbytes = 1e9
    link = h100.node.link_levels[-1].link
    intra = cm._ring("all_gather", 8, nbytes, 0.0, link)
    inter = cm._ring("all_gather", 2, nbytes / 8, 0.0, None, path.inter_gbps)
    latency = (3 * link.latency_us + 1 * path.inter_latency_us) * 1e-6
    assert cm.collective_seconds("all_gather", nbytes, path) == pytest.approx(
        path.call_us * 1e-6 + max(intra, inter) + latency)
    staged = cm.dataclasses.replace(path, pipelined=False)
    assert cm.collective_seconds("all_gather", nbytes, staged) > cm.collective_seconds("all_gather", nbytes, path)


def test_only_groups_of_one_rank_per_node_count_as_nic_only_zero3_traffic():
    # dp_comm_nic_only lets ZeRO-3 traffic that uses no intra-node link hide behind the pass's wall time.  A
    # misaligned group (tp 4 on Aurora's 12 ranks a node: ranks 0, 4, 8 share node 0) is charged as inter-node
    # throughout, but three of its ranks share each node's link: it is not NIC-only.
    aurora, polaris = load_system("aurora"), load_system("polaris")
    model = get_preset("1b")
    req = cm.Request(model, aurora, 16, 96, 2048)  # 192 tiles: tp 4 x dp_replicate 3 x dp_shard 16
    g = cm.dp_groups(req, 4, 1, 1, "zero3", 3, 16)
    assert cm.dp_comm_nic_only(req, g, 1e9, 0.0) == (0.0, 0.0)
    assert g.shard.misaligned and (g.shard.k, g.shard.nodes) == (1, 16)
    req = cm.Request(model, polaris, 8, 96, 2048)
    g = cm.dp_groups(req, 4, 1, 1, "zero3", 1, 8)  # tp 4 fills a Polaris node: one rank per node
    assert not g.shard.misaligned and (g.shard.k, g.shard.nodes) == (1, 8)
    rs, ag = cm.dp_comm_nic_only(req, g, 1e9, 0.0)
    assert rs > 0 and ag > 0


def test_the_host_wait_is_counted_once_in_the_window_that_hides_nic_only_zero3_traffic():
    # StageTerms.t_f holds the forward's wait for the host and t_b a full recompute's redone wait: the field
    # host_wait alone (for the breakdown) must not widen the window again.
    req = cm.Request(get_preset("7b"), load_system("polaris"), 8, 8, 2048)
    lay = Layout(tp=4, pp=1, vpp=1, dp_replicate=1, dp_shard=8, ep=1, cp=1, mbs=1, schedule="1f1b",
                 recompute="full", sharding="zero3")
    st = cm.structure_of(req, lay)
    g = cm.dp_groups(req, 4, 1, 1, "zero3", 1, 8)
    s = st.stages[0]
    rs, ag, _ = cm.dp_comm(req, g, "zero3", s.p_dense, s.p_exp)
    assert cm.dp_comm_nic_only(req, g, s.p_dense, s.p_exp) == (rs, ag) and ag + rs > s.t_b  # exposed traffic
    waited = cm.dataclasses.replace(st, stages=(cm.dataclasses.replace(s, host_wait=1.0),))
    assert cm.sharded_cost(req, waited, g, "zero3")[0] == pytest.approx(cm.sharded_cost(req, st, g, "zero3")[0])


def test_nic_only_zero3_traffic_does_not_hide_behind_expert_all_to_alls_on_the_same_nics():
    # Polaris, tp 4 fills a node: the ZeRO-3 group and the EP 8 all-to-all both run one rank per node, so
    # the time the all-to-alls hold the NICs is no window for the gathers.
    req = cm.Request(get_preset("1b-moe"), load_system("polaris"), 8, 8, 4096)
    lay = Layout(tp=4, pp=1, vpp=1, dp_replicate=1, dp_shard=8, ep=8, cp=1, mbs=1, schedule="1f1b",
                 recompute="full", sharding="zero3")
    st = cm.structure_of(req, lay)
    g = cm.dp_groups(req, 4, 1, 8, "zero3", 1, 8)
    s = st.stages[0]
    assert s.ep_comm > 0 and s.nic_f == s.ep_comm and s.nic_b == 2 * s.ep_comm  # full recompute redoes them
    _, ag_nic = cm.dp_comm_nic_only(req, g, s.p_dense, s.p_exp)
    assert s.fwd < ag_nic < s.t_f  # the forward's gathers outlast its compute
    free = cm.dataclasses.replace(st, stages=(cm.dataclasses.replace(s, nic_f=0.0, nic_b=0.0),))
    assert cm.sharded_cost(req, st, g, "zero3")[0] > cm.sharded_cost(req, free, g, "zero3")[0] + 0.005
    # inside one node the all-to-alls leave the NICs free
    inside = cm.structure_of(cm.Request(get_preset("1b-moe"), load_system("polaris"), 8, 8, 4096),
                             cm.dataclasses.replace(lay, tp=1, dp_shard=32, ep=4)).stages[0]
    assert inside.ep_comm > 0 and inside.nic_f == 0.0


def test_overlapped_traffic_that_feeds_one_nic_per_rank_loads_the_device_less():
    # device_share: the rate a collective moves bytes at over the node link's; the contention of hidden
    # data-parallel traffic is charged on that share of its time.
    h100 = load_system("dgx-h100")
    req = cm.Request(get_preset("1b"), h100, 32, 64, 2048)
    inside, per_node, whole_nodes = cm.comm_path(h100, 8, 1), cm.comm_path(h100, 32, 8), cm.comm_path(h100, 32, 1)
    assert cm.device_share(req, "all_gather", 1e9, inside) == 1.0
    nic_only = cm.device_share(req, "all_gather", 1e9, per_node)
    assert per_node.k == 1 and 0.05 < nic_only < 0.25  # 45 GB/s of one NIC against NVLink's ~330
    assert cm.device_share(req, "all_gather", 1e9, whole_nodes) > 0.8  # 8 NICs a node keep up with NVLink


def test_without_sequence_parallelism_every_tp_rank_runs_the_norms_on_all_tokens():
    model, system = get_preset("1b"), load_system("dgx-a100-80gb")
    sp = cm.layer_cost(model, system, 8, 4, 1, 1, 1, 2048, 8)
    no_sp = cm.layer_cost(model, system, 8, 4, 1, 1, 1, 2048, 8, cm.Implementation(sequence_parallel=False))
    assert no_sp.norm_fwd > 2.5 * sp.norm_fwd  # 4x the tokens, the same launches
    assert no_sp.fwd_dense > sp.fwd_dense and no_sp.act["none"][0] > sp.act["none"][0]
    # Megatron's TP regions without sequence parallelism: one all-reduce a block (forward at the output,
    # backward at the input), not an all-gather and a reduce-scatter (two calls)
    path = cm.comm_path(system, 4, 1)
    assert no_sp.tp_fwd == pytest.approx(2 * cm.collective_seconds("all_reduce", 2.0 * 2048 * model.d_model, path))
    assert sp.tp_fwd == pytest.approx(2 * (cm.collective_seconds("all_gather", 2.0 * 2048 * model.d_model, path)
                                           + cm.collective_seconds("reduce_scatter", 2.0 * 2048 * model.d_model, path)))
    one = cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8, cm.Implementation(sequence_parallel=False))
    assert one.fwd_dense == pytest.approx(cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8).fwd_dense)


@pytest.mark.parametrize("field, value", [("attention_kernel", "cuDNN"), ("grad_reduce_bytes", 3.0),
                                          ("glu_clamp_kernels", (3, -1))])
def test_implementation_refuses_fields_the_model_would_silently_ignore(field, value):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        cm.Implementation(**{field: value})


def test_cudnn_attention_runs_slower_per_flop_at_head_dim_64():
    assert cm.head_dim_scale("cudnn", 128) == 1.0 and cm.head_dim_scale("", 64) == 1.0
    # head dim 64: our H200's cuDNN causal forward + backward at 4k (session 8, gpu_pending PART=a), 384.0 against
    # 480.2 TFLOP/s at head dim 128; the FA3 paper's forward-only causal bars (363 / 518 = 0.701) no longer
    assert cm.head_dim_scale("cudnn", 64) == pytest.approx(0.800, abs=0.002)
    # 256: the causal bars of the FA3 paper's figure 5 (d, f at 4k), not measured here
    assert cm.head_dim_scale("cudnn", 256) == pytest.approx(483 / 518)
    assert cm.head_dim_scale("cudnn", 32) == cm.head_dim_scale("cudnn", 64)
    assert cm.head_dim_scale("cudnn", 64) < cm.head_dim_scale("cudnn", 96) < 1.0
    model, system = get_preset("1b").replace(head_dim=64, n_heads=32), load_system("dgx-h100")
    plain = cm.layer_cost(model, system, 8, 1, 1, 1, 1, 4096, 8)
    cudnn = cm.layer_cost(model, system, 8, 1, 1, 1, 1, 4096, 8, cm.Implementation(attention_kernel="cudnn"))
    assert 1.2 * (plain.attn_fwd - 2e-6) < cudnn.attn_fwd < 1.3 * plain.attn_fwd


def test_deepspeed_bf16_optimizer_costs_what_its_engine_does():
    # DeepSpeed's BF16_Optimizer (session 6, third round): the fp32 gradient accumulation after every
    # micro-batch on every stage, the gradient all-reduce after the backward (none of it hidden), and the
    # casts around it.  Off for alphaexa's own implementations.
    for impl in (cm.ALPHAEXA, cm.ALPHAEXA_EAGER, cm.ALPHAEXA_COMPILED):
        assert impl.hp_grad_accum_bytes == impl.hp_grad_step_bytes == 0.0 and not impl.dp_reduce_after_backward
        assert impl.logit_bwd_bytes < 0
    model, system = get_preset("1b"), load_system("dgx-a100-80gb")
    lay = Layout(tp=1, pp=2, mbs=1, schedule="1f1b", sharding="none", dp_replicate=8)
    eager = cm.ALPHAEXA_EAGER
    plain = cm.Request(model, system, 2, 64, 2048, eager)
    accum = cm.Request(model, system, 2, 64, 2048, cm.dataclasses.replace(eager, hp_grad_accum_bytes=18.0))
    sp, sa = cm.structure_of(plain, lay), cm.structure_of(accum, lay)
    dev = system.node.device
    for a, b in zip(sp.stages, sa.stages):
        assert b.bwd - a.bwd == pytest.approx(cm.elementwise_seconds(dev, 18.0 * (a.p_dense + a.p_exp), 0))
    assert cm.estimate(accum, lay).step_time_s > cm.estimate(plain, lay).step_time_s
    # the reduction after the backward: all of it exposed, plus the per-step casts
    after = cm.Request(model, system, 2, 64, 2048, cm.dataclasses.replace(eager, dp_reduce_after_backward=True,
                                                                         hp_grad_step_bytes=16.0))
    est_plain, est_after = cm.estimate(plain, lay), cm.estimate(after, lay)
    bp, ba = est_plain.breakdown, est_after.breakdown
    assert ba["dp_comm_total_s"] == pytest.approx(bp["dp_comm_total_s"])
    assert ba["dp_comm_exposed_s"] > bp["dp_comm_exposed_s"]
    assert ba["dp_comm_exposed_s"] >= ba["dp_comm_total_s"]
    # the loss's backward by its own count
    lc = cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8)
    own = cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8, cm.Implementation(logit_bwd_bytes=14.0))
    assert lc.head_bwd_extra == 0.0
    assert own.head_bwd_extra == pytest.approx(cm.elementwise_seconds(dev, (14.0 - 24.0) * 2048 * model.vocab_size, 0))
    with pytest.raises(ConfigError, match="hp_grad"):
        cm.Implementation(hp_grad_accum_bytes=-1.0)


def test_repeated_kv_heads_are_copied_and_rotated_at_the_query_width():
    # Megatron-DeepSpeed's repeat_kv (session 7): K and V materialised at the query's heads (kv read, q written,
    # bf16, one kernel each), and the rotary then runs on q-width keys.  Nothing changes without GQA.
    gqa, system = get_preset("1b").replace(n_kv_heads=4), load_system("dgx-h100")
    assert gqa.kv_dim < gqa.q_dim
    tokens, q, kv = 2 * 4096, gqa.q_dim, gqa.kv_dim
    dev = system.node.device
    plain = cm.layer_cost(gqa, system, 8, 1, 1, 1, 2, 4096, 8, cm.Implementation())
    rep = cm.layer_cost(gqa, system, 8, 1, 1, 1, 2, 4096, 8, cm.Implementation(gqa_repeat_kv=True))
    extra = cm.elementwise_seconds(dev, tokens * (cm.ROPE_BYTES * (q - kv) + 2 * (2.0 * kv + 2.0 * q)), 2)
    assert rep.fwd_dense - plain.fwd_dense == pytest.approx(extra, rel=1e-9)
    assert rep.bwd_dense - plain.bwd_dense == pytest.approx(cm.BWD_FACTOR * extra, rel=1e-9)
    mha = get_preset("1b").replace(n_kv_heads=get_preset("1b").n_heads)
    a, b = (cm.layer_cost(mha, system, 8, 1, 1, 1, 2, 4096, 8, cm.Implementation(gqa_repeat_kv=f)) for f in (False, True))
    assert a.fwd_dense == b.fwd_dense
    assert not any(i.gqa_repeat_kv for i in (cm.ALPHAEXA, cm.ALPHAEXA_EAGER, cm.ALPHAEXA_COMPILED))


def test_one_kv_head_a_rank_is_repeated_by_a_view_not_a_copy():
    # repeat_kv (argonne-lcf transformer.py at 3848f6fb) returns ``expand`` alone when a TP rank holds one KV head:
    # a view, so no copies; the rotary still runs on the q-width key it then reads.  (review7)
    gqa, system = get_preset("1b").replace(n_kv_heads=4), load_system("dgx-h100")
    dev, tokens, q, kv = system.node.device, 2 * 4096, gqa.q_dim, gqa.kv_dim
    plain = cm.layer_cost(gqa, system, 8, 4, 1, 1, 2, 4096, 8, cm.Implementation())
    rep = cm.layer_cost(gqa, system, 8, 4, 1, 1, 2, 4096, 8, cm.Implementation(gqa_repeat_kv=True))
    rope_only = cm.elementwise_seconds(dev, tokens * cm.ROPE_BYTES * (q - kv) / 4, 0)
    assert rep.fwd_dense - plain.fwd_dense == pytest.approx(rope_only, rel=1e-9)


def test_a_partition_that_counts_the_embedding_as_a_layer_gives_the_end_stages_one_fewer():
    # DeepSpeed's --pp-partition-method 'type:transformer|embedding' (BLOOM): 70 layers + embedding + head
    # are 72 units, 3 a stage on 24 stages; the trainer's even cut of the layers is the default.
    model = get_preset("1b").replace(n_layers=70)
    even = cm.rank_profiles(model, 24, 1, "1f1b")
    units = cm.rank_profiles(model, 24, 1, "1f1b", embed_unit=True)
    assert [p.n_dense for p in even][:2] == [3, 3] and even[-1].n_dense == 2
    assert units[0].n_dense == 2 and units[-1].n_dense == 2 and all(p.n_dense == 3 for p in units[1:-1])
    assert units[0].embed and units[-1].head and sum(p.n_dense for p in units) == 70


def test_deepspeeds_pipeline_engine_pays_four_blocking_transfers_and_three_tp_gathers_a_micro_batch():
    # DeepSpeed's PipelineEngine (session 7): RecvActivation then SendGrad before a forward, SendActivation then
    # RecvGrad before a backward, each a blocking send or receive of its own, each after the PartitionedTensor's
    # metadata with TP > 1, and the partitioned activation / gradient rebuilt by three TP all-gathers; Megatron's
    # (and the trainer's) batched exchange pays one transfer per pass.  Off for alphaexa's implementations.
    for impl in (cm.ALPHAEXA, cm.ALPHAEXA_EAGER, cm.ALPHAEXA_COMPILED):
        assert not impl.deepspeed_pipe
    model, system = get_preset("1b"), load_system("dgx-a100-80gb")
    eager = cm.ALPHAEXA_EAGER
    ds = cm.dataclasses.replace(eager, name="ds-pipe", deepspeed_pipe=True)
    # one node, so every stage boundary is on the same link (boundaries between nodes: the test after this one)
    for tp, pp in ((2, 4), (1, 4), (2, 2)):
        lay = Layout(tp=tp, pp=pp, mbs=1, schedule="1f1b", sharding="none", dp_replicate=8 // (tp * pp))
        plain = cm.structure_of(cm.Request(model, system, 1, 64, 2048, eager), lay)
        pipe = cm.structure_of(cm.Request(model, system, 1, 64, 2048, ds), lay)
        m = plain.microbatches
        lc = cm.layer_cost(model, system, 8, tp, 1, 1, 1, 2048, 8 // pp, ds)
        assert lc.p2p > 0 and lc.p2p_node == lc.p2p
        # the batched exchange runs on the pipeline group's NCCL communicator, DeepSpeed's send on a two-rank one
        # (nccl_p2p_channels: no more channels in the larger communicator; branch p2p11)
        lc_plain = cm.layer_cost(model, system, 8, tp, 1, 1, 1, 2048, 8 // pp, eager)
        assert lc_plain.p2p >= lc.p2p
        assert plain.pp_comm == pytest.approx(2 * (pp - 1 + m) * lc_plain.p2p)
        if tp == 1:  # no partitioning: only the transfers double
            assert lc.pipe_meta == lc.pipe_gather == 0.0
        else:
            assert lc.pipe_meta == pytest.approx(cm.collective_seconds("p2p", cm.PIPE_META_BYTES,
                                                                       cm.comm_path(system, 2, 8 // pp)))
            assert lc.pipe_gather == pytest.approx(cm.collective_seconds("all_gather", 2.0 * 2048 * model.d_model,
                                                                         cm.comm_path(system, tp, 1)))
        xfer = lc.p2p + lc.pipe_meta
        assert pipe.pp_comm == pytest.approx(2 * (pp - 1) * xfer)  # the fill and the drain
        for st in pipe.stages:  # each rank's own exchanges: four transfers and three gathers with two neighbours
            first, last = st.rank == 0, st.rank == pp - 1
            assert st.pipe_xchg == pytest.approx((4 - 2 * first - 2 * last) * xfer
                                                 + (3 - first - 2 * last) * lc.pipe_gather)
        assert all(s.pipe_xchg == 0.0 for s in plain.stages)
        assert [s.t_f + s.t_b for s in pipe.stages] == pytest.approx([s.t_f + s.t_b for s in plain.stages])
        # the stage that sets the pace pays its own exchanges every micro-batch; the breakdown shows them as pp_comm
        req = cm.Request(model, system, 1, 64, 2048, ds)
        est = cm.estimate(req, lay)
        pace = max(pipe.stages, key=lambda s: s.t_f + s.t_b + s.pipe_xchg)
        assert est.breakdown["pp_comm_s"] == pytest.approx(pipe.pp_comm + m * pace.pipe_xchg)
        assert pace.pipe_xchg >= 2 * xfer


def test_pipeline_boundaries_between_nodes_are_priced_on_the_network_where_the_first_two_stages_share_a_node():
    # Review of session 7 (helper 23's finding): the p2p term priced every stage boundary on the link between the
    # first two stages, so a pipeline with several stages a node that spans nodes had its node-edge boundaries
    # charged at NVLink speed.  Now each hop is priced on its own link (rank order: pp outermost, stage s holds
    # ranks s*stride .. s*stride+stride-1).
    model, system = get_preset("1b"), load_system("dgx-a100-80gb")
    r = system.node.ranks  # 8
    assert cm.pipeline_node_hops(4, 1, "1f1b", 4, r) == (3, 1)  # stages 0,1 | 2,3: one boundary crosses
    assert cm.pipeline_node_hops(8, 1, "1f1b", 2, r) == (7, 1)  # 0-3 | 4-7
    assert cm.pipeline_node_hops(8, 2, "interleaved1f1b", 2, r) == (15, 3)  # twice 3|4, and the wrap 7 -> 0
    assert cm.pipeline_node_hops(8, 2, "zbv", 2, r) == (15, 2)  # down and back; the turn stays on rank 7
    assert cm.pipeline_node_hops(8, 1, "1f1b", 1, r) == (7, 0)  # one node
    assert cm.pipeline_node_hops(4, 1, "1f1b", 8, r) == (3, 3)  # a stage a node: every boundary crosses
    eager = cm.ALPHAEXA_EAGER
    ds = cm.dataclasses.replace(eager, name="ds-pipe", deepspeed_pipe=True)
    lc = cm.layer_cost(model, system, 16, 2, 1, 1, 1, 2048, 4, ds)  # tp 2, dp 2, pp 4 on two nodes
    inter = cm.comm_path(system, 2, r)
    assert cm.comm_path(system, 2, 4).nodes == 1 and inter.nodes == 2
    assert lc.p2p == pytest.approx(cm.collective_seconds("p2p", 2.0 * 2048 * model.d_model / 2, cm.comm_path(system, 2, 4)))
    assert lc.p2p_node == pytest.approx(cm.collective_seconds("p2p", 2.0 * 2048 * model.d_model / 2, inter))
    assert lc.p2p_node > 2 * lc.p2p
    assert lc.pipe_meta_node == pytest.approx(cm.collective_seconds("p2p", cm.PIPE_META_BYTES, inter))
    # the batched exchange's own hops: its communicator is the pipeline group's (4 ranks over two nodes)
    lcp = cm.layer_cost(model, system, 16, 2, 1, 1, 1, 2048, 4, eager)
    for schedule, vpp, crossing in (("1f1b", 1, 1), ("interleaved1f1b", 2, 3), ("zbv", 2, 2)):
        lay = Layout(tp=2, pp=4, vpp=vpp, mbs=1, schedule=schedule, sharding="none", dp_replicate=2)
        st = cm.structure_of(cm.Request(model, system, 2, 64, 2048, eager), lay)
        hops, m = 4 * vpp - 1, st.microbatches
        # the fill and the drain over each hop's own link; in the steady state the stage at a node's edge receives
        # one way over the network and the other inside its node, once a chunk pass
        assert st.pp_comm == pytest.approx(2 * ((hops - crossing) * lcp.p2p + crossing * lcp.p2p_node)
                                           + m * vpp * (lcp.p2p + lcp.p2p_node))
        assert st.pp_comm > 2 * (hops + m * vpp) * lcp.p2p  # what the first link alone gave
    # DeepSpeed's exchanges: the middle stages' worst (one neighbour across), the end stages inside their node
    pipe = cm.structure_of(cm.Request(model, system, 2, 64, 2048, ds),
                           Layout(tp=2, pp=4, mbs=1, schedule="1f1b", sharding="none", dp_replicate=2))
    link, link_node = lc.p2p + lc.pipe_meta, lc.p2p_node + lc.pipe_meta_node
    assert pipe.pp_comm == pytest.approx(2 * (2 * link + link_node))
    for s in pipe.stages:
        first, last = s.rank == 0, s.rank == 3
        sends = 2 * link if first or last else 2 * (link + link_node)
        assert s.pipe_xchg == pytest.approx(sends + (3 - first - 2 * last) * lc.pipe_gather)
    # one node, or a stage a node: every boundary on one link, as before
    for nodes, dp in ((1, 1), (4, 4)):
        one = cm.layer_cost(model, system, 8 * nodes, 2, 1, 1, 1, 2048, 2 * dp, eager)
        assert one.p2p_node == one.p2p


def test_pipeline_hops_inside_a_node_are_priced_on_its_link_where_twice_the_stride_does_not_divide_the_node():
    # Session 7 (review7b's open item): a pair of stages whose block of 2 x stride ranks does not divide the node
    # (stride 4 on Aurora's 12 ranks: stages 0-2 on node 0, 3-5 on node 1) was charged on the network for every
    # hop, comm_path's misaligned rule, even on one node.  Now a hop whose two stages share a node goes over the
    # node's link (XeLink: ranks 4 apart sit on different GPUs) and only the hops between nodes over Slingshot.
    model, system = get_preset("7b"), load_system("aurora")
    r = system.node.ranks  # 12
    assert cm.comm_path(system, 2, 4).misaligned  # what the p2p was priced on
    lc = cm.layer_cost(model, system, 24, 4, 1, 1, 1, 4096, 4)  # tp 4, pp 6 on two nodes
    per_hop = 2.0 * 4096 * model.d_model / 4
    xelink, slingshot = cm.comm_path(system, 2, 6), cm.comm_path(system, 2, r)  # ranks 0 and 6; one rank a node
    assert xelink.nodes == 1 and xelink.intra.name == "XeLink" and slingshot.nodes == 2
    assert lc.p2p == pytest.approx(cm.collective_seconds("p2p", per_hop, xelink))
    assert lc.p2p_node == pytest.approx(cm.collective_seconds("p2p", per_hop, slingshot))
    assert lc.p2p_node > 1.5 * lc.p2p  # 8 MiB a hop: 8.8 GB/s on a rank's NIC share, 17 on XeLink
    assert cm.pipeline_node_hops(6, 1, "1f1b", 4, r) == (5, 1)  # 0,1,2 | 3,4,5
    for schedule, vpp, crossing in (("1f1b", 1, 1), ("interleaved1f1b", 2, 3), ("zbv", 2, 2)):
        lay = Layout(tp=4, pp=6, vpp=vpp, mbs=1, schedule=schedule, sharding="none", dp_replicate=1)
        st = cm.structure_of(cm.Request(model, system, 2, 48, 4096), lay)
        hops, m = 6 * vpp - 1, st.microbatches
        assert st.pp_comm == pytest.approx(2 * ((hops - crossing) * lc.p2p + crossing * lc.p2p_node)
                                           + m * vpp * (lc.p2p + lc.p2p_node))
        assert st.pp_comm < 2 * (hops + m * vpp) * lc.p2p_node  # every hop on the network, as before
    # one node: no hop leaves it
    one = cm.layer_cost(model, system, 12, 4, 1, 1, 1, 4096, 4)
    assert one.p2p == pytest.approx(lc.p2p) and one.p2p_node == one.p2p


def test_a_stage_that_straddles_two_nodes_sends_over_the_network():
    # Stride 8 on 12 ranks a node: stage 1 (ranks 8-15) has ranks on nodes 0 and 1.  Its ranks send to their
    # counterparts stride apart at once (the pipeline group of rank i is i, i + stride, ...); ranks 8-11 send to
    # 16-19 on node 1, so the hop ends when the network's transfers land: a hop crosses where any pair of its ranks
    # does, i.e. where the two stages' block of ranks spans a node boundary.
    r = 12
    assert cm.pipeline_node_hops(3, 1, "1f1b", 8, r) == (2, 2)  # [0, 16) and [8, 24) both span 12
    assert cm.pipeline_node_hops(6, 1, "1f1b", 8, r) == (5, 5)
    assert cm.pipeline_node_hops(12, 1, "1f1b", 2, r) == (11, 1)  # aligned: 0-5 | 6-11
    assert cm.pipeline_node_hops(6, 2, "interleaved1f1b", 4, r) == (11, 3)  # 2|3 twice and the wrap
    assert cm.pipeline_edge_crossings(6, 1, "1f1b", 4, r) == 1  # the stage at a node's edge: one way across
    assert cm.pipeline_edge_crossings(3, 1, "1f1b", 8, r) == 2  # stage 1: both neighbours across
    assert cm.pipeline_edge_crossings(2, 1, "1f1b", 12, r) == 2 and cm.pipeline_edge_crossings(4, 1, "1f1b", 1, r) == 0
    model, system = get_preset("7b"), load_system("aurora")
    lc = cm.layer_cost(model, system, 24, 8, 1, 1, 1, 4096, 8)  # tp 8, pp 3 on two nodes
    st = cm.structure_of(cm.Request(model, system, 2, 48, 4096),
                         Layout(tp=8, pp=3, mbs=1, schedule="1f1b", sharding="none", dp_replicate=1))
    assert st.pp_comm == pytest.approx(2 * 2 * lc.p2p_node + st.microbatches * 2 * lc.p2p_node)


def test_deepspeeds_tied_gradient_all_reduce_stays_on_the_node_when_the_pipeline_does():
    # The end stages' ReduceTiedGrads pair (ranks (pp-1) x stride apart) used comm_path's size-2 rule, which prices
    # a misaligned pair on the network: on one Aurora node (tp 4, pp 3: ranks i and i + 8) it is XeLink.
    tied = get_preset("1b").replace(tie_embeddings=True)
    system = load_system("aurora")
    assert cm.comm_path(system, 2, 8).misaligned
    ds = cm.dataclasses.replace(cm.ALPHAEXA_EAGER, name="ds", deepspeed_pipe=True, hp_grad_accum_bytes=18.0)
    lay = Layout(tp=4, pp=3, mbs=1, schedule="1f1b", sharding="none", dp_replicate=1)
    with_copy = cm.structure_of(cm.Request(tied, system, 1, 48, 2048, ds), lay)
    plain = cm.structure_of(cm.Request(tied.replace(tie_embeddings=False), system, 1, 48, 2048, ds), lay)
    tied_bytes = 4.0 * cm.layer_params(tied, 4, 1).tied_copy
    reduce = cm.collective_seconds("all_reduce", tied_bytes, cm.comm_path(system, 2, 6))  # two ranks on XeLink
    assert with_copy.pp_comm - plain.pp_comm == pytest.approx(reduce)
    # on two nodes every end-stage pair crosses (the pipeline is the world, pp outermost): one rank a node
    two = cm.structure_of(cm.Request(tied, system, 2, 48, 2048, ds), Layout(tp=4, pp=6, mbs=1, schedule="1f1b",
                                                                                sharding="none", dp_replicate=1))
    two_plain = cm.structure_of(cm.Request(tied.replace(tie_embeddings=False), system, 2, 48, 2048, ds),
                                Layout(tp=4, pp=6, mbs=1, schedule="1f1b", sharding="none", dp_replicate=1))
    net = cm.collective_seconds("all_reduce", tied_bytes, cm.comm_path(system, 2, 12))
    assert two.pp_comm - two_plain.pp_comm == pytest.approx(net)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(cm.Implementation) if f.type == "float"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_implementation_refuses_a_float_field_that_is_not_finite(field, value):
    with pytest.raises(ConfigError, match=f"^{field}="):
        cm.Implementation(**{field: value})


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(cm.Implementation)
                                   if f.name.endswith("_bytes") and f.name not in ("logit_bwd_bytes", "rope_bwd_bytes")]
                         + ["moe_host_floor_s", "gemm_scale", "attention_scale", "act_scale"])
def test_implementation_refuses_a_negative_byte_count_or_scale(field):
    with pytest.raises(ConfigError, match=f"^{field}="):
        cm.Implementation(**{field: -1.0 if field != "qkv_bias_bytes" else (0.0, -1.0)})
    assert cm.Implementation(logit_bwd_bytes=-1.0).logit_bwd_bytes == -1.0  # negative: the default's sentinel
    assert cm.Implementation(rope_bwd_bytes=-1.0).rope_bwd_bytes == -1.0  # likewise: BWD_FACTOR x rope_bytes
    with pytest.raises(ConfigError, match="^rope_bwd_kernels="):  # a kernel count the layer would never read
        cm.Implementation(rope_bwd_kernels=5)
    with pytest.raises(ConfigError, match="^rope_bwd_kernels="):
        cm.Implementation(rope_bwd_bytes=20.0, rope_bwd_kernels=-2)
    assert cm.Implementation(rope_bwd_bytes=20.0, rope_bwd_kernels=5).rope_bwd_kernels == 5


def test_deepspeeds_pipeline_exchange_is_refused_with_a_schedule_deepspeed_does_not_run():
    # Review of session 7: StageTerms.pipe_xchg counts DeepSpeed's TrainSchedule (1F1B, one chunk a rank: the end
    # stages have one neighbour); under interleaving or zbv the same rank holds middle chunks (zbv's first rank
    # holds the embedding and the head, so it got no exchanges at all), so those layouts are refused, not costed.
    model, system = get_preset("1b"), load_system("dgx-a100-80gb")
    ds = cm.dataclasses.replace(cm.ALPHAEXA_EAGER, name="ds-pipe", deepspeed_pipe=True)
    for schedule, vpp in (("interleaved1f1b", 2), ("zbv", 2), ("gpipe", 1)):
        with pytest.raises(ConfigError, match="deepspeed_pipe"):
            cm.structure_of(cm.Request(model, system, 2, 64, 2048, ds),
                            Layout(tp=2, pp=4, vpp=vpp, mbs=1, schedule=schedule, sharding="none", dp_replicate=2))
    assert cm.structure_of(cm.Request(model, system, 2, 64, 2048, ds),
                           Layout(tp=2, pp=1, mbs=1, sharding="none", dp_replicate=8)).pp_comm == 0.0


def test_a_score_bias_added_through_baddbmm_costs_its_copy_and_read_in_the_forward_only():
    # BigScience's ALiBi through torch.baddbmm(alibi, q, k^T, beta=1) (session 7): the expanded bias copied into
    # the scores and read back by the GEMM, score_bias_bytes a score, forward (and so a full recompute's redo) only.
    model, system = get_preset("1b"), load_system("dgx-a100-80gb")
    dev = system.node.device
    unfused = cm.Implementation(name="unfused", attention="unfused")
    biased = cm.dataclasses.replace(unfused, name="biased", score_bias_bytes=4.0)
    for tp, mbs in ((1, 1), (2, 2)):
        a = cm.layer_cost(model, system, 8, tp, 1, 1, mbs, 2048, 8, unfused)
        b = cm.layer_cost(model, system, 8, tp, 1, 1, mbs, 2048, 8, biased)
        extra = cm.elementwise_seconds(dev, 4.0 * mbs * model.n_heads / tp * 2048 * 2048, 1)
        assert b.fwd_dense - a.fwd_dense == pytest.approx(extra)
        assert b.attn_fwd - a.attn_fwd == pytest.approx(extra)
        assert b.bwd_dense == pytest.approx(a.bwd_dense)
    # fused attention keeps its bias inside the kernel: no extra traffic
    fused = cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8, cm.Implementation(name="f", score_bias_bytes=4.0))
    assert fused.fwd_dense == pytest.approx(cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8).fwd_dense)
    with pytest.raises(ConfigError, match="score_bias"):
        cm.Implementation(score_bias_bytes=-1.0)


def test_a_tied_lm_head_on_its_own_stage_holds_a_copy_whose_gradient_deepspeed_all_reduces_each_step():
    # Session 7: with tied embeddings and the head on another stage than the embedding, the last stage keeps its own
    # copy of the shared weight (DeepSpeed's TiedLayerSpec), so its gradient accumulation, its data-parallel reduction
    # and its memory count it; DeepSpeed's ReduceTiedGrads all-reduces the copies' gradient (fp32 with the
    # BF16_Optimizer) between the first and the last stage once a step.  The trainer refuses pp > 1 with tied
    # embeddings (topology.support), so no plan moves.
    tied = get_preset("1b").replace(tie_embeddings=True)
    system = load_system("dgx-a100-80gb")
    lp, lp_untied = cm.layer_params(tied, 2, 1), cm.layer_params(get_preset("1b"), 2, 1)
    assert lp.tied_copy == pytest.approx(tied.vocab_size * tied.d_model / 2) and lp_untied.tied_copy == 0.0
    profs = cm.rank_profiles(tied, 4, 1, "1f1b")
    assert cm.stage_dense_params(lp, profs[-1]) - cm.stage_dense_params(lp, profs[-2]) == pytest.approx(
        lp.tied_copy + lp.head + (profs[-1].n_dense - profs[-2].n_dense) * lp.dense_layer)
    one_stage = cm.rank_profiles(tied, 1, 1, "1f1b")[0]  # embedding and head on one rank: one weight
    assert cm.stage_dense_params(lp, one_stage) == pytest.approx(
        one_stage.n_dense * lp.dense_layer + lp.embed + lp.head)
    lay = Layout(tp=2, pp=4, mbs=1, schedule="1f1b", sharding="none", dp_replicate=2)
    ds = cm.dataclasses.replace(cm.ALPHAEXA_EAGER, name="ds", deepspeed_pipe=True, hp_grad_accum_bytes=18.0)
    with_copy = cm.structure_of(cm.Request(tied, system, 2, 64, 2048, ds), lay)
    plain_ds = cm.structure_of(cm.Request(tied.replace(tie_embeddings=False), system, 2, 64, 2048, ds), lay)
    reduce = cm.collective_seconds("all_reduce", 4.0 * lp.tied_copy, cm.comm_path(system, 2, 3 * 4))
    assert reduce > 0 and with_copy.pp_comm - plain_ds.pp_comm == pytest.approx(reduce)


def test_norms_that_all_reduce_their_weights_each_forward_pay_two_small_collectives_a_norm():
    # BigScience's layer-norm auto-sync (session 7): MixedFusedLayerNorm.forward all-reduces its weight and bias
    # over the TP group; two norms a layer, forward (and a full recompute's redo) only.
    model, system = get_preset("1b"), load_system("dgx-a100-80gb")
    plain = cm.Implementation(name="p", attention="unfused")
    synced = cm.dataclasses.replace(plain, name="s", norm_tp_sync=True)
    a = cm.layer_cost(model, system, 8, 4, 1, 1, 1, 2048, 8, plain)
    b = cm.layer_cost(model, system, 8, 4, 1, 1, 1, 2048, 8, synced)
    one = cm.collective_seconds("all_reduce", 2.0 * model.d_model, cm.comm_path(system, 4, 1))
    assert one > 0 and b.fwd_dense - a.fwd_dense == pytest.approx(4 * one)
    assert b.bwd_dense == pytest.approx(a.bwd_dense) and b.tp_fwd == pytest.approx(a.tp_fwd)
    no_tp = cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8, synced)
    assert no_tp.fwd_dense == pytest.approx(cm.layer_cost(model, system, 8, 1, 1, 1, 1, 2048, 8, plain).fwd_dense)
