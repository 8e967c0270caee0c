"""Measured against predicted growth of the step with the GPU count, per same-source multi-scale series (a diagnostic).

    PYTHONPATH=$PWD .venv/bin/python bench/scale_series_vs_model.py [--all]

A series is the rows of topology/data/published_runs.json that share source, model, system, implementation, TP, PP,
VPP, EP, sharding, micro-batch, sequence and recompute, and differ in the GPU count (data-parallel size), at two or
more counts.  Where the micro-batches a replica also change (a fixed global batch over more replicas, e.g. FlagPerf's
Llama 3 8B), the per-GPU work is not fixed: the table then also gives the step per micro-batch.  Growth is each
row's step over the series' smallest-scale step; "drift" is the error (predicted against measured) at the largest
scale minus the error at the smallest, in points: a series whose measured step grows faster than the model's has a
negative drift.  By default only series whose per-GPU work is fixed (the same micro-batches a replica) or whose GPU
count spans at least 4x are listed; ``--all`` lists every series.  Nothing here is fitted or enters a reported figure
(docs/planner.md, "Session 10: step time that grows with the GPU count").
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import validation as v

# NCCL's own latency model of a ring all-gather / reduce-scatter with the Simple protocol (src/graph/tuning.cc,
# ncclTopoTuneModel, the same figures from v2.18.5-1 to v2.22.3-1): baseLat 8.4 us, then (nRanks - nNodes) intra-node
# steps at the NVLink ring latency 3.4 us (netOverhead x 3 = 3 us on Intel hosts does not exceed it) and nNodes - 1
# network steps at 14 us (plus twice the net plugin's latencyInter, taken as 0).  These collectives have no tree
# algorithm there (only ring; PAT from v2.23 for one rank a node): the latency grows with the ring, not its log.
NCCL_RING_BASE_US, NCCL_RING_NVL_US, NCCL_RING_NET_US = 8.4, 3.4, 14.0


def nccl_ring_latency_s(ranks: int, nodes: int) -> float:
    if ranks <= 1:
        return 0.0
    return (NCCL_RING_BASE_US + (ranks - nodes) * NCCL_RING_NVL_US + (nodes - 1) * NCCL_RING_NET_US) * 1e-6


def dp_ring(run: v.Run) -> tuple[int, int]:
    """(ranks, nodes) of the row's data-parallel (FSDP / distributed-optimizer) group."""
    lay = run.layout()
    per_node = v.system_of(run).node.ranks
    dp = run.gpus // (lay.tp * lay.pp * v.row_options(run).get("cp", 1))
    stride = lay.tp
    nodes = max(1, dp * stride // per_node) if stride < per_node else dp
    return dp, nodes


def series(rows: list[v.Row]) -> dict[tuple, list[v.Row]]:
    out: dict[tuple, list[v.Row]] = defaultdict(list)
    for r in rows:
        x = r.run
        key = (x.source, x.model, x.system, x.implementation, x.tp, x.pp, x.vpp, x.ep, x.sharding, x.mbs,
               x.seq_len, x.recompute, tuple(sorted(v.row_options(x).items())))
        out[key].append(r)
    return {k: sorted(g, key=lambda r: r.run.gpus) for k, g in out.items() if len({r.run.gpus for r in g}) > 1}


def main(argv: list[str]) -> int:
    rows = v.evaluate()
    found = series(rows)
    show_all = "--all" in argv
    summary = []
    for key, g in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        mbs_set = {r.estimate.microbatches for r in g}
        span = g[-1].run.gpus / g[0].run.gpus
        fixed = len(mbs_set) == 1
        if not (show_all or fixed or span >= 4):
            continue
        m0, p0, n0 = g[0].run.measured_step_s, g[0].estimate.step_time_s, g[0].estimate.microbatches
        print(f"\n{key[0]} / {key[1]} ({v.layout_text(g[0].run)}; {v.group_of(g[0].run)}) "
              f"{'fixed per-GPU work' if fixed else 'micro-batches a replica change'}")
        print(f"  {'run':36s} {'GPUs':>5s} {'DP':>5s} {'mb':>4s} {'meas s':>8s} {'pred s':>8s} {'err':>7s} "
              f"{'meas gr':>8s} {'pred gr':>8s} {'meas/mb':>8s} {'pred/mb':>8s} {'dp exp':>7s}")
        for r in g:
            e, mb = r.estimate, r.estimate.microbatches
            dp = dp_ring(r.run)[0]
            print(f"  {r.run.id:36s} {r.run.gpus:5d} {dp:5d} {mb:4d} {r.run.measured_step_s:8.3f} {e.step_time_s:8.3f} "
                  f"{r.error_pct:+6.1f}% {100 * (r.run.measured_step_s / m0 - 1):+7.1f}% "
                  f"{100 * (e.step_time_s / p0 - 1):+7.1f}% "
                  f"{r.run.measured_step_s / mb * 1e3:8.1f} "
                  f"{e.step_time_s / mb * 1e3:8.1f} {e.breakdown['dp_comm_exposed_s']:7.3f}")
        meas_gr = 100 * (g[-1].run.measured_step_s / m0 * n0 / g[-1].estimate.microbatches - 1)
        pred_gr = 100 * (g[-1].estimate.step_time_s / p0 * n0 / g[-1].estimate.microbatches - 1)
        drift = g[-1].error_pct - g[0].error_pct
        (n0r, n0n), (n1r, n1n) = dp_ring(g[0].run), dp_ring(g[-1].run)
        lat0, lat1 = nccl_ring_latency_s(n0r, n0n), nccl_ring_latency_s(n1r, n1n)
        print(f"  NCCL ring latency of one DP all-gather / reduce-scatter: {lat0 * 1e3:.2f} ms ({n0r} ranks, {n0n} "
              f"nodes) -> {lat1 * 1e3:.2f} ms ({n1r} ranks, {n1n} nodes); measured growth "
              f"{g[-1].run.measured_step_s - m0 * g[-1].estimate.microbatches / n0:+.3f} s = "
              f"{(g[-1].run.measured_step_s - m0 * g[-1].estimate.microbatches / n0) / max(lat1 - lat0, 1e-9):.0f} "
              f"such latency increments")
        summary.append((key[0], key[1], g[0].run.gpus, g[-1].run.gpus, fixed, meas_gr, pred_gr, drift))
    print(f"\n{'source':34s} {'model':28s} {'GPUs':>11s} {'work':6s} {'meas/mb gr':>10s} {'pred/mb gr':>10s} "
          f"{'drift':>7s}")
    for src, model, lo, hi, fixed, mg, pg, d in summary:
        print(f"{src:34s} {model:28s} {lo:5d}-{hi:<5d} {'fixed' if fixed else 'varies':6s} {mg:+9.1f}% {pg:+9.1f}% "
              f"{d:+6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
