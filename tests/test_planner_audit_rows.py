"""Session 13's audit of the worst held-out rows (branch audit13, issue 15): the data file's 'unsteady_figures' rule and
its summary group, and the readings of the audited rows' published figures, each checked against a second figure the
same source prints (docs/planner.md, 'Session 13: audit of the worst rows')."""
import json
import statistics

import pytest

from topology import validation as v
from topology.modelcfg import ConfigError


def _runs():
    return {r.id: r for r in v.load_runs()}


def test_the_unsteady_rows_are_described_and_are_held_out_rows_of_the_file():
    data = v._data(str(v.DATA))
    entry = data["unsteady_figures"]
    assert "first iteration" in entry["about"] and "CUDA graphs" in entry["about"]
    runs = _runs()
    assert set(entry["rows"]) == {"bridge-qwen3-30b-a3b-16-a2a-graphs-smoke", "bloom-176b-reshape-tp4-pp12-mbs2-192"}
    for rid, why in entry["rows"].items():
        assert runs[rid].split == "heldout", rid
        assert why.startswith(("(a)", "(b)")), rid  # each names the clause of the rule it falls under
        assert not v.is_steady(runs[rid])
    # the later BLOOM reshaping iterations and the CUDA-graph page's replay window are steady by the same rule
    assert v.is_steady(runs["bloom-176b-reshape-tp4-pp24-192"])
    assert v.is_steady(runs["bridge-qwen3-30b-a3b-16-a2a-graphs-attn"])


def test_a_listed_row_the_file_does_not_have_is_refused(tmp_path):
    data = json.loads(v.DATA.read_text())
    data["unsteady_figures"]["rows"]["no-such-row"] = "(a): a typo"
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unsteady_figures"):
        v.load_runs(path)


def test_the_steady_summary_is_the_held_out_rows_without_the_listed_ones(monkeypatch):
    rows = v.evaluate()
    s = v.summary(rows)
    steady = [r for r in rows if r.run.split == "heldout" and v.is_steady(r.run)]
    assert s["heldout_steady"]["n"] == len(steady) == s["heldout"]["n"] - 2
    assert s["heldout_steady"]["mean_abs"] == pytest.approx(statistics.fmean(abs(r.error_pct) for r in steady))
    assert s["heldout_steady"]["max_abs"] == pytest.approx(max(abs(r.error_pct) for r in steady))
    assert s["heldout_steady"]["mean"] == pytest.approx(statistics.fmean(r.error_pct for r in steady))
    # behaviour, not a pin: listing another held-out row takes it out of the group and leaves every other group
    data = json.loads(v.DATA.read_text())
    other = next(r for r in steady if r.run.id == "mlm-readme-h100-32b-384")
    data["unsteady_figures"]["rows"][other.run.id] = "(a): a test"
    real = v._data
    monkeypatch.setattr(v, "_data", lambda path: data if path == str(v.DATA) else real(path))
    t = v.summary(rows)
    assert t["heldout_steady"]["n"] == s["heldout_steady"]["n"] - 1
    assert {k: t[k] for k in s if k != "heldout_steady"} == {k: s[k] for k in s if k != "heldout_steady"}
    assert t["heldout_steady"]["max_abs"] < s["heldout_steady"]["max_abs"]  # the 32B row was the worst


def test_the_audited_rows_read_their_figures_as_the_sources_own_second_figures_do():
    """Each audited row's step time, derived from its published figure, agrees with another figure the same source
    prints for the same run (audit13 read each at the cited commit); a mis-edited figure, batch, GPU count or model
    shape fails here."""
    runs = _runs()
    tokens = {rid: r.global_batch * r.seq_len for rid, r in runs.items()}
    # Megatron-LM README model_table.png at f2e5db402c, 32B row: aggregate 176.5 petaFLOP/s beside 459.6 a GPU
    r = runs["mlm-readme-h100-32b-384"]
    flops = v.megatron2025_flops_per_token(v.model_of(r), r.seq_len, causal_half=False) * tokens[r.id]
    assert r.measured_step_s == pytest.approx(flops / 176.5e15, rel=1e-3)
    assert (r.gpus, r.tp, r.global_batch, r.measured) == (384, 8, 192, 459.6)
    # Megatron-Bridge verification cards at 067f987df0: last_10_steps tokens/s/GPU x step x GPUs = GBS x 4096
    for rid, tps in (("bridgecard-gpt-oss-20b-16", 5851.199), ("bridgecard-gpt-oss-120b-64", 1966.285)):
        r = runs[rid]
        assert tps * r.measured_step_s * r.gpus == pytest.approx(tokens[rid], rel=1e-5), rid
    # llm-foundry benchmarking README: Throughput (T/s/GPU) x GPUs = Throughput (T/s) (H100 30b 8k: 1384 x 8)
    r = runs["mpt-h100-30b-8-s8192"]
    assert r.measured == pytest.approx(1384 * 8, abs=8) and r.measured_step_s == pytest.approx(124.30, abs=0.01)
    r = runs["mpt-a100-40gb-70b-64"]  # A100 40GB table: 276 T/s/GPU on 64 GPUs, MBS 2, GradAccum 1
    assert r.measured == pytest.approx(276 * 64, abs=64) and r.global_batch == r.mbs * r.gpus
    # FlagPerf Llama 3 8B README at 93730d18: MFU 34.2% = token/p/s x 6 x 8e9 / 989e12 (run_pretraining.py's formula)
    r = runs["flagperf-llama3-8b-h100-440"]
    assert r.measured * 6 * 8e9 / 989e12 == pytest.approx(0.342, abs=5e-4)
    assert r.global_batch == 8 * r.gpus // r.tp  # fix_hp gbs=1760: 8 micro-batches of 1 on each of DP 220
    # MoE Parallel Folding Table 4, G8T8 MCore at 1024 GPUs: MFU 13.4% of the 989.5 TFLOP/s peak
    assert runs["folding-t4-g8t8-mcore-1024"].measured == pytest.approx(0.134 * 989.5, abs=0.01)
    # the derived step times the audit checked
    for rid, step in (("mcore-recipes-qwen3-235b-h100-256", 22.636), ("flagperf-mixtral-8x7b-h100-32", 54.008),
                      ("folding-t4-g8t8-mcore-1024", 4.608), ("flagperf-llama3-8b-h100-440", 4.650),
                      ("mpt-a100-40gb-70b-64", 14.834), ("bridge-qwen3-30b-a3b-16-a2a-graphs-smoke", 45.65)):
        assert runs[rid].measured_step_s == pytest.approx(step, abs=1e-3), rid

