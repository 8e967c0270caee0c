"""Planner search: pins, pruning that never changes the answer, infeasible advice, JSON, properties."""
import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from topology import costmodel as cm
from topology.hardware import load_system, system_from_dict
from topology.layout import Layout
from topology.modelcfg import ConfigError, ModelConfig
from topology.planner import _Space, plan
from topology.presets import get_preset


def small_memory_system(gib: float, preset: str = "dgx-h100"):
    return system_from_dict({"preset": preset, "name": f"{preset}-{gib}g",
                             "node": {"device": {"memory_gib": gib, "reserved_gib": 0.25}}})


def brute_force(req: cm.Request):
    """Cost every layout of the planner's space with estimate(): (count, feasible, best step, best layout)."""
    space = _Space(req, {})
    count = feasible = 0
    best = (float("inf"), None)
    for tp in space.tps:
        for cp in space.cps:
            if (cp > 1 and req.seq_len % (2 * cp)) or (req.seq_len // cp) % tp:
                continue
            for pp in space.pps(tp, cp):
                dp = req.world // (tp * cp * pp)
                for schedule, vpp in space.schedules(pp):
                    for ep in space.eps:
                        if (dp * cp) % ep:
                            continue
                        for mbs in space.mbss:
                            if req.global_batch % (mbs * dp):
                                continue
                            m = req.global_batch // (mbs * dp)
                            if (pp > 1 and m < pp) or (schedule == "interleaved1f1b" and m % pp):
                                continue
                            for recompute in space.recomputes:
                                for sharding in space.shardings:
                                    for dr, ds in space.splits(dp, sharding, cp, ep):
                                        lay = Layout(tp=tp, pp=pp, vpp=vpp, dp_replicate=dr, dp_shard=ds, ep=ep,
                                                     cp=cp, mbs=mbs, schedule=schedule, recompute=recompute,
                                                     sharding=sharding)
                                        count += 1
                                        est = cm.estimate(req, lay)
                                        if est.fits:
                                            feasible += 1
                                            if est.step_time_s < best[0]:
                                                best = (est.step_time_s, est.layout)
    return count, feasible, best


@pytest.mark.parametrize("model, system, nodes, batch, seq", [
    ("debug", "dgx-h100", 2, 32, 128),
    ("1b-moe", small_memory_system(12), 2, 16, 1024),  # memory binds: pruning by recompute/sharding matters
    ("125m", small_memory_system(3, "polaris"), 2, 24, 2048),
])
def test_pruned_search_finds_the_brute_force_optimum(model, system, nodes, batch, seq):
    system = load_system(system) if isinstance(system, str) else system
    req = cm.Request(get_preset(model), system, nodes, batch, seq)
    count, feasible, (best_step, _) = brute_force(req)
    result = plan(req.model, system, nodes, batch, seq, top=3)
    assert (result.candidates, result.feasible) == (count, feasible)
    assert result.evaluated <= feasible
    assert result.plans[0].estimate.step_time_s == pytest.approx(best_step)


def test_pins_are_honoured_and_a_fully_pinned_layout_is_evaluated_alone():
    pins = {"tp": 2, "pp": 2, "vpp": 1, "dp_replicate": 1, "dp_shard": 4, "ep": 4, "cp": 1, "mbs": 2,
            "schedule": "1f1b", "recompute": "selective", "sharding": "zero2"}
    result = plan("1b-moe", "dgx-h100", 2, 64, 2048, pins=pins)
    assert result.candidates == 1 and len(result.plans) == 1
    assert result.plans[0].estimate.layout == Layout(**pins)
    partial = plan("1b-moe", "dgx-h100", 2, 64, 2048, pins={"pp": 2, "sharding": "zero3"}, top=10)
    assert partial.plans and all(p.estimate.layout.pp == 2 and p.estimate.layout.sharding == "zero3"
                                 for p in partial.plans)
    dp_pinned = plan("1b-moe", "dgx-h100", 2, 64, 2048, pins={"dp": 4}, top=10)
    assert all(p.estimate.layout.dp == 4 for p in dp_pinned.plans)


@pytest.mark.parametrize("pins, message", [
    ({"tp": 3}, "tp=3 does not divide n_heads=32"),
    ({"pp": 64}, "pp=64 exceeds n_layers=32"),
    ({"ep": 2}, "ep=2 needs a MoE model; 7b has no MoE blocks"),
    ({"tensor": 2}, "unknown pin 'tensor'"),
    ({"recompute": "most"}, "recompute='most': must be one of none, selective, full"),
])
def test_impossible_pins_fail_with_the_rule_they_break(pins, message):
    with pytest.raises(ConfigError, match=message):
        plan("7b", "h100-x8", 1, 64, 4096, pins=pins)


def test_request_errors():
    with pytest.raises(ConfigError, match="system h100-x8 has at most 1 node"):
        plan("7b", "h100-x8", 2, 64, 4096)
    with pytest.raises(ConfigError, match="seq_len=8192: must be between 1 and the model's max_seq_len=4096"):
        plan("7b", "h100-x8", 1, 64, 8192)
    with pytest.raises(ConfigError, match=r"global_batch=7 is not divisible by mbs\*dp_replicate\*dp_shard = 1\*1\*8"):
        plan("7b", "h100-x8", 1, 7, 4096, pins={"pp": 1, "tp": 1, "cp": 1})
    with pytest.raises(ConfigError, match="no layout of 8 ranks"):
        plan("debug", "h100-x8", 1, 3, 128)


def test_infeasible_request_says_by_how_much_and_what_would_fit():
    system = small_memory_system(6)
    result = plan("7b", system, 1, 64, 4096, offload="none")  # offloaded plans: tests/test_planner_offload.py
    assert not result.plans and result.feasible == 0
    nearest = result.nearest_miss
    assert nearest is not None and nearest.memory["total"] > 6
    assert f"{nearest.memory['total'] - 6:.1f} GiB over the 6 GiB capacity" in result.advice[0]
    assert any(line.startswith("It fits on 4 nodes (32 devices)") for line in result.advice)
    assert plan("7b", system, 4, 64, 4096, top=1).plans  # and it does
    assert not plan("7b", system, 2, 64, 4096, top=1, offload="none").plans
    d = result.to_dict()
    assert d["plans"] == [] and d["infeasible"]["nearest"]["memory_gib"]["total"] > 6
    pinned = plan("7b", small_memory_system(14), 1, 64, 4096, pins={"recompute": "none", "sharding": "zero1"},
                  offload="none")
    assert not pinned.plans
    assert any(line.startswith("It fits without pinning recompute=none, sharding=zero1") for line in pinned.advice)


@pytest.mark.exhaustive
def test_the_250b_spec_does_not_fit_eight_polaris_nodes():
    result = plan("alphaexa-250b-spec", "polaris", 8, 64, 8192)
    assert not result.plans
    assert any("It fits on 256 nodes" in line for line in result.advice)


def test_plan_json_has_the_contracted_fields():
    result = plan("1b-moe", "dgx-h100", 2, 64, 2048, top=2)
    d = json.loads(result.to_json())
    assert set(d) >= {"model", "system", "request", "plans", "search"}
    assert d["model"]["name"] == "1b-moe" and d["system"]["name"] == "dgx-h100" and d["system"]["nodes"] == 2
    assert d["request"] == {"global_batch": 64, "seq_len": 2048, "nodes": 2, "world": 16, "pins": {}}
    assert set(d["search"]) >= {"candidates", "feasible", "seconds"}
    p = d["plans"][0]
    assert set(p) >= {"layout", "memory_gib", "step_time_s", "tokens_per_s", "model_tflops_per_device", "mfu",
                      "breakdown", "placement"}
    assert set(p["memory_gib"]) >= {"params", "grads", "optimizer", "activations", "total", "capacity"}
    assert Layout.from_dict(p["layout"]).resolve(16) == result.plans[0].estimate.layout
    assert set(p["placement"]) >= {"cpu_bind", "local", "ranks", "visibility_env", "node_env", "groups"}
    assert len(p["placement"]["ranks"]) == 16
    assert d["plans"][0]["step_time_s"] <= d["plans"][1]["step_time_s"]


def test_explain_names_what_binds_and_the_alternatives():
    result = plan("1b-moe", "dgx-h100", 2, 64, 2048, top=2, explain=True)
    text = result.explain()
    assert text.startswith("Winner: ")
    assert "What binds:" in text and "Memory:" in text and "Best with " in text
    table = result.table()
    assert "searched" in table and "MFU" in table


# ------------------------------------------------------------ properties
@st.composite
def models(draw):
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    kv = draw(st.sampled_from([h for h in (1, 2, 4, 8) if heads % h == 0]))
    head_dim = draw(st.sampled_from([16, 32]))
    moe_every = draw(st.sampled_from([0, 0, 1, 2]))
    n_layers = draw(st.integers(1, 8))
    if moe_every > n_layers:
        moe_every = 0
    n_experts = draw(st.sampled_from([2, 4, 8])) if moe_every else 0
    return ModelConfig(name="random", n_layers=n_layers, d_model=heads * head_dim, n_heads=heads, n_kv_heads=kv,
                       d_ff=draw(st.sampled_from([64, 96, 128, 256])), ffn_type=draw(st.sampled_from(["gelu", "swiglu"])),
                       vocab_size=draw(st.sampled_from([256, 1000, 4096])), max_seq_len=512, moe_every=moe_every,
                       n_experts=n_experts, top_k=min(2, n_experts) if n_experts else 2,
                       capacity_factor=draw(st.sampled_from([0.0, 1.25])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models(), preset=st.sampled_from(["polaris", "aurora", "dgx-h100", "h200-x4", "cpu"]),
       nodes=st.sampled_from([1, 2, 4]), batch=st.sampled_from([1, 3, 8, 12, 16, 24, 48, 96, 192]),
       seq=st.sampled_from([64, 128, 512]), memory=st.sampled_from([0.101, 0.11, 0.12, 0.2, 64.0]))
def test_plans_never_violate_divisibility_or_memory(model, preset, nodes, batch, seq, memory):
    base = load_system(preset)
    nodes = min(nodes, base.max_nodes)
    system = system_from_dict({"preset": preset, "name": "random",
                               "node": {"device": {"memory_gib": memory, "reserved_gib": 0.1}}})
    try:
        result = plan(model, system, nodes, batch, seq, top=4)
    except ConfigError as e:  # the batch cannot be split over this many ranks
        assert any(w in str(e) for w in ("no layout of", "is not divisible", "fewer than")), str(e)
        event("no valid layout")
        return
    event("plans" if result.plans else "nothing fits")
    world = nodes * system.ranks_per_node
    assert result.feasible <= result.candidates and result.evaluated <= result.feasible
    steps = [p.estimate.step_time_s for p in result.plans]
    assert steps == sorted(steps)
    for p in result.plans:
        lay = p.estimate.layout
        lay.validate(world=world, model=model, global_batch=batch, seq_len=seq)  # raises on any broken rule
        assert p.estimate.memory["total"] <= memory
        again = cm.estimate(cm.Request(model, system, nodes, batch, seq, offload=p.offload, engine=p.engine), lay)
        assert again.step_time_s == pytest.approx(p.estimate.step_time_s)
    if not result.plans:
        assert result.advice
        if result.nearest_miss is not None:
            assert result.nearest_miss.memory["total"] > memory
