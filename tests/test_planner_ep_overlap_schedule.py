"""Megatron-Core's EP all-to-all overlap and the pipeline schedule (session 12, branch a2a17).

Megatron-Core overlaps the expert all-to-all with another micro-batch's compute (--overlap-moe-expert-parallel-comm,
the combined 1F1B schedule) only at PP 1 or with a virtual pipeline: TransformerConfig asserts "virtual_pipeline_
model_parallel_size must be specified when pipeline_model_parallel_size > 1" (NVIDIA/Megatron-LM d7bf5aaaa8,
megatron/core/transformer/transformer_config.py), and forward_backward_pipelining_without_interleaving has no
combined path (megatron/core/pipeline_parallel/schedules.py at d98e8a64dd)."""
import dataclasses

import pytest

from topology import validation as v
from topology.modelcfg import ConfigError


def _runs():
    return {r.id: r for r in v.load_runs()}


def test_ep_overlap_is_refused_on_a_pipeline_without_interleaving():
    row = _runs()["modelzoo-qwen3-235b-ep32-pp8-overlap"]  # PP 8 x VPP 4, EP 32, +ep-overlap
    assert v.implementation_of(row).ep_overlap
    with pytest.raises(ConfigError, match="virtual pipeline"):
        v.implementation_of(dataclasses.replace(row, vpp=1))
    with pytest.raises(ConfigError, match="full recomputation"):
        v.implementation_of(dataclasses.replace(row, recompute="full"))


def test_ep_overlap_stays_allowed_without_a_pipeline_and_with_a_virtual_one():
    runs = _runs()
    assert v.implementation_of(runs["bridge-qwen3-30b-a3b-16-a2a-ep-overlap"]).ep_overlap  # PP 1
    assert v.implementation_of(runs["mcore-recipes-qwen3-235b-h100-256"]).ep_overlap  # PP 8 x VPP 4


def test_non_interleaved_megatron_core_moe_rows_pay_their_all_to_all_in_full():
    rows = [r for r in v.load_runs() if r.implementation.startswith("megatron-core") and v.model_is_moe(r)
            and r.pp > 1 and r.vpp <= 1]
    assert len(rows) >= 8
    for r in rows:
        impl = v.row_implementation(r)
        assert not impl.ep_overlap and not impl.tp_overlap, r.id
        if r.ep > 1:
            assert v.predict(r).breakdown["ep_comm_s"] > 0, r.id
