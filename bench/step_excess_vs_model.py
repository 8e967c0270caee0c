"""Where the multi-node steps of two H100 series lose time against their own one-node rate (a diagnostic).

    PYTHONPATH=$PWD .venv/bin/python bench/step_excess_vs_model.py

(1) FlagPerf's Llama 3 8B at 8 / 16 / 440 H100 (the same TP 2 layout, 128 / 64 / 8 micro-batches a replica): each
row's measured step less its micro-batches at the 8-GPU row's measured rate a micro-batch, in seconds, against the
model's same difference.  A cost paid once a step gives about the same seconds at every scale; one paid a micro-batch
gives seconds in proportion to the micro-batches.  (2) The model's FlagPerf errors with the data-parallel traffic over
8, 4, 2 or 1 NDR 400 Gb/s NICs a node (the 8B README states no H100 cluster).  (3) The llm-foundry H100 rows with the
network's efficiency lowered: how far the FSDP rows move when the inter-node rate falls.  Nothing here is fitted or
enters a reported figure (docs/planner.md, "Session 11: FlagPerf's Llama 3 8B and MPT-7B on H100 at scale").
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import validation as v

FLAGPERF_8B = ("flagperf-llama3-8b-h100-8", "flagperf-llama3-8b-h100-16", "flagperf-llama3-8b-h100-440")
FLAGPERF_ALL = (*FLAGPERF_8B, "flagperf-llama3-70b-h100-64", "flagperf-mixtral-8x7b-h100-32")
FOUNDRY = ("mpt-h100-7b-8-s2048", "mpt-h100ls-7b-128", "mpt-h100ls-7b-512", "mpt-h100-13b-8-s2048",
           "mpt-h100-13b-16-s2048", "mpt-h100-13b-64-s2048", "mpt-h100ls-13b-128", "mpt-h100ls-13b-512",
           "mpt-h100ls-70b-128", "mpt-h100ls-70b-512")


def with_network(system, **changes):
    net = system.network
    if "efficiency" in changes:
        net = dataclasses.replace(net, nic=dataclasses.replace(net.nic, efficiency=changes.pop("efficiency")))
    return dataclasses.replace(system, network=dataclasses.replace(net, **changes))


def main() -> int:
    runs = {r.id: r for r in v.load_runs()}
    base = runs[FLAGPERF_8B[0]]
    est0 = v.predict(base)
    meas_mb = base.measured_step_s / est0.microbatches
    pred_mb = est0.step_time_s / est0.microbatches
    print("(1) FlagPerf Llama 3 8B: step less its micro-batches at the 8-GPU row's rate")
    print(f"{'row':30s} {'mb':>4s} {'meas ms/mb':>10s} {'pred ms/mb':>10s} {'meas excess s':>13s} "
          f"{'pred excess s':>13s} {'pred dp s':>9s}")
    for rid in FLAGPERF_8B:
        r = runs[rid]
        e = v.predict(r)
        m = e.microbatches
        print(f"{rid:30s} {m:4d} {1e3 * r.measured_step_s / m:10.1f} {1e3 * e.step_time_s / m:10.1f} "
              f"{r.measured_step_s - m * meas_mb:13.3f} {e.step_time_s - m * pred_mb:13.3f} "
              f"{e.breakdown['dp_comm_exposed_s']:9.3f}")
    _sweep(runs, "(2) FlagPerf rows, error with NICs a node (DGX H100: 8)", FLAGPERF_ALL,
           [(f"{nics} NIC(s)", {"nics_per_node": nics}) for nics in (8, 4, 2, 1)],
           lambda err, e: f"{err:+6.1f}% (dp {e.breakdown['dp_comm_exposed_s']:.3f} s)", " | ")
    _sweep(runs, "(3) llm-foundry H100 rows, error with the NDR NIC's efficiency (catalogue 0.90)", FOUNDRY,
           [(f"{eff:.2f} ({eff * 400:.0f} GB/s a node)", {"efficiency": eff}) for eff in (0.90, 0.70, 0.50, 0.35)],
           lambda err, e: f"{err:+5.1f}", " ")
    return 0


def _sweep(runs, title: str, row_ids, settings, cell, sep: str) -> None:
    """One line per network setting: each row's error with the rows' system changed by ``with_network``."""
    print("\n" + title)
    for label, change in settings:
        cells = []
        for rid in row_ids:
            r = runs[rid]
            e = v.predict(r, with_network(v.system_of(r), **change))
            cells.append(cell(v.error_pct(r, e), e))
        print(f"{label}: " + sep.join(cells))
    print("   rows: " + ", ".join(row_ids))


if __name__ == "__main__":
    raise SystemExit(main())
