"""FlagPerf's Megatron-Core 0.6 Llama 3 case against the model on the A800 it was first run on (a diagnostic).

    PYTHONPATH=$PWD .venv/bin/python bench/flagperf_llama3_vs_model.py

FlagOpen/FlagPerf ``training/nvidia/llama3_8B-megatron/README.md`` at 93730d18 (2024-05-15) gives, besides the H100
rows of ``topology/data/published_runs.json`` (group unseen15), the same case on one DGX A800 node: its baseline
(PP2 DP4 TP1, 3698.7 tokens/s/GPU) and a six-layout ablation table, all bf16, MBS 1, GBS 512, sequence 8192, the
same ``pretrain_llama3.sh`` (Megatron-LM core_v0.6.0 in nvcr.io/nvidia/pytorch:24.02-py3, FlagPerf's
``training/nvidia/docker_image/megatron_core060/Dockerfile``).  The A800 rows are not in the data file (the group's
rule took H100 BF16 rows only; the catalogue has no A800).  An A800 is an A100 with its NVLink limited to 400 GB/s
(200 GB/s a direction) against the A100's 600 (press reports of NVIDIA's A800 launch, e.g. tweakers.net 203182; the
compute and the 80 GB HBM2e the same): here the catalogue's dgx-a100-80gb with its NVLink rate scaled by 2/3.

What it shows: the FlagPerf code path (dropout 0.1, the data loader's attention mask, linear biases, learned
positions, the unfused loss, no DP overlap) is what the seven A800 layouts run too, so a cost that this code pays and
the model omits would show on them as well (the split of the H100 rows leaves out the loader mask, a stage term).
Nothing here is fitted or enters a reported figure (docs/planner.md,
"Session 10: FlagPerf's Llama 3 8B on H100: what the case runs that the model does not cost").
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import validation as v

# (layout, pp, tp, tokens/s/GPU): the README's A800 baseline and its ablation table ("A100单机8卡 消融实验")
A800_ROWS = (("PP2DP4TP1", 2, 1, 3698.7), ("PP4DP2TP1", 4, 1, 3306.5), ("PP2DP2TP2", 2, 2, 3409.2),
             ("PP2DP1TP4", 2, 4, 3006.1), ("PP8DP1TP1", 8, 1, 2690.3), ("PP1DP1TP8", 1, 8, 2451.2),
             ("PP4DP1TP2", 4, 2, 3042.7))
A800_NVLINK_SCALE = 400.0 / 600.0  # A800 NVLink 400 GB/s against the A100's 600 GB/s (bidirectional)


def a800_system(system: cm.System) -> cm.System:
    """The catalogue's DGX A100 80GB with the A800's NVLink rate."""
    node = system.node
    levels = tuple(dataclasses.replace(lv, link=dataclasses.replace(
        lv.link, gbps=lv.link.gbps * A800_NVLINK_SCALE, p2p_gbps=lv.link.p2p_gbps * A800_NVLINK_SCALE,
        p2p_channel_gbps=lv.link.p2p_channel_gbps * A800_NVLINK_SCALE)) for lv in node.link_levels)
    return dataclasses.replace(system, node=dataclasses.replace(node, link_levels=levels))


def a800_runs() -> list[v.Run]:
    base = {r.id: r for r in v.load_runs()}["flagperf-llama3-8b-h100-8"]
    a100 = dataclasses.replace(base, system="dgx-a100-80gb")
    return [dataclasses.replace(a100, id=f"flagperf-llama3-8b-a800-{name}", pp=pp, tp=tp, measured=tps,
                                split="diagnostic") for name, pp, tp, tps in A800_ROWS]


def per_microbatch(run: v.Run) -> dict[str, float]:
    """One micro-batch of one pipeline stage (s): the layers' attention core, their TP collectives, the rest of the
    layers (GEMMs, elementwise), the LM head and loss; the step's other terms are in the estimate's breakdown."""
    lc = cm.layer_cost(v.model_of(run), v.system_of(run), run.gpus, run.tp, 1, 1, run.mbs, run.seq_len, 1,
                       v.row_implementation(run))
    layers = v.model_of(run).n_layers / run.pp
    attn = layers * lc.attn_fwd * (1 + cm.ATTN_BWD_FACTOR)
    tp = layers * 2 * lc.tp_fwd
    rest = layers * (lc.fwd_dense + lc.bwd_dense) - attn
    head = (1 + cm.BWD_FACTOR) * lc.head_fwd + lc.head_bwd_extra
    return {"attention": attn, "tp": tp, "layers_rest": rest, "head": head}


def main() -> int:
    runs = {r.id: r for r in v.load_runs()}
    print("H100 rows: one micro-batch of one stage (ms), model; measured = step / (micro-batches + pp - 1)")
    for rid in ("flagperf-llama3-8b-h100-8", "flagperf-llama3-70b-h100-64"):
        r = runs[rid]
        est = v.predict(r)
        slots = est.microbatches + r.pp - 1
        parts = per_microbatch(r)
        total = sum(parts.values())
        print(f"  {rid:30s} measured {1e3 * r.measured_step_s / slots:6.1f}  predicted "
              f"{1e3 * est.step_time_s / slots:6.1f}  ({v.error_pct(r, est):+.1f}%)  "
              + "  ".join(f"{k} {1e3 * x:5.1f} ({100 * x / total:4.1f}%)" for k, x in parts.items()))
    print("\nA800 (one DGX A800 node, FlagPerf README at 93730d18): measured and predicted step (s)")
    print(f"  {'layout':10s} {'measured':>9s} {'A100 NVLink':>12s} {'err':>7s} {'A800 NVLink':>12s} {'err':>7s}  "
          "tp_comm (A800)")
    for r in a800_runs():
        a100_est = v.predict(r)
        a800_est = v.predict(r, system=a800_system(v.system_of(r)))
        print(f"  {r.id.rsplit('-', 1)[1]:10s} {r.measured_step_s:9.2f} {a100_est.step_time_s:12.2f} "
              f"{v.error_pct(r, a100_est):+6.1f}% {a800_est.step_time_s:12.2f} {v.error_pct(r, a800_est):+6.1f}%  "
              f"{a800_est.breakdown['tp_comm_s']:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
