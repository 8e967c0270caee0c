"""bench/llmfoundry_triton_rate.py: the rate of llm-foundry's Triton attention kernel that its published rows imply,
and the variant that ties the kernel's Hopper rate to its A100 rate (docs/planner.md section 10, "Session 10:
llm-foundry's Triton attention kernel by device").  The finding is documented, not modelled; these tests keep the
diagnostic honest and make the documented figures go stale loudly."""
from __future__ import annotations

import statistics
from dataclasses import replace

import pytest

from tests.bench_module import load_bench
from topology import costmodel as cm
from topology import hardware as hw
from topology import validation as v
from topology.presets import get_preset

bench = load_bench("llmfoundry_triton_rate")


def _rows() -> dict[str, v.Run]:
    return {r.id: r for r in bench.diagnostic_rows()}


def test_the_implied_multiplier_recovers_a_known_kernel_rate():
    # a row whose "measurement" is the model itself with the kernel 1.5 times faster: the diagnostic gives back 1.5
    run = _rows()["mpt-a100-80gb-7b-8-s8192"]
    with bench.attention_scaled(1.5):
        step = v.predict(run).step_time_s
    _, share, x = bench.implied_multiplier(replace(run, measured_kind="step_time_s", measured=step))
    assert 0.3 < share < 0.5  # attention is a large part of this row: the readout is not noise
    assert x == pytest.approx(1.5, rel=0.01)


def _attention_rate_ratio(hopper_device: hw.Device) -> float:
    """llm-foundry's fused-attention time of one 7b layer at 4096 tokens on an A100 over that on ``hopper_device``."""
    model, impl = get_preset("7b"), v.IMPLEMENTATIONS["llm-foundry"]
    a100 = hw.load_system("dgx-a100-80gb")
    h100 = hw.load_system("dgx-h100")
    h100 = replace(h100, node=replace(h100.node, device=hopper_device))
    t = [cm.layer_cost(model, s, 8, 1, 1, 1, 4, 4096, 8, impl).attn_fwd for s in (a100, h100)]
    return t[0] / t[1]


def test_the_variant_runs_the_kernel_on_hopper_at_its_a100_rate_times_flashattention2_s_ratio():
    h100 = hw.load_system("dgx-h100").node.device
    assert _attention_rate_ratio(h100) > 3.0  # the committed model: cuDNN's Hopper efficiency x the same scale
    for own in (h100.attention_efficiency, 0.2):  # whatever the Hopper device's own (cuDNN) figure
        tied = bench.hopper_device(replace(h100, attention_efficiency=own))
        assert _attention_rate_ratio(tied) == pytest.approx(294.0 / 173.0, rel=0.01)


def test_the_readme_long_rows_put_the_kernel_s_hopper_rate_near_flashattention2_s_ratio():
    # The 16k-64k rows of llm-foundry's README (October 2023, attention 42-84% of the modelled step) ask for the
    # kernel's A100 rate about 1.5-1.7 times the model's and its H100 rate about 0.8 times: an H100 / A100 ratio
    # near FlashAttention-2's 1.70 (Ampere code on both), not the committed model's 3.5.
    rows = _rows()
    x = {dev: statistics.median(bench.implied_multiplier(rows[label])[2] for label, *_ in bench.LONG_ROWS
                                if label.startswith(dev) and "Oct" in label) for dev in ("A100-80GB", "H100")}
    assert 1.4 < x["A100-80GB"] < 1.8
    assert 0.7 < x["H100"] < 0.9
    model_ratio = _attention_rate_ratio(hw.load_system("dgx-h100").node.device)
    assert 1.5 < model_ratio * x["H100"] / x["A100-80GB"] < 2.1
