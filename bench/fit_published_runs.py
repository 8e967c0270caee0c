"""Fit the cost model's uncalibrated constants to the FIT rows of topology/data/published_runs.json.

    .venv/bin/python bench/fit_published_runs.py

Coordinate search (each constant over a grid, repeated until nothing moves) minimising the mean
|step-time error| of the fit rows only; the held-out rows are never read here.  Prints the
constants to write into topology/hardware.py (A100), topology/validation.py (framework
kernel scales) and topology/costmodel.py (DP_OVERLAP_CONTENTION), then the fit-set error.  topology.validation then reports both splits.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import validation as v

# (what, grid): device constants of the A100 and kernel scales of llm-foundry (Composer, triton FlashAttention)
PARAMS = {
    "a100.gemm_efficiency": [0.70 + 0.02 * i for i in range(12)],
    "a100.attention_efficiency": [0.30 + 0.05 * i for i in range(9)],
    "llm-foundry.gemm_scale": [0.70 + 0.025 * i for i in range(13)],
    "llm-foundry.attention_scale": [0.40 + 0.1 * i for i in range(7)],
    # costmodel.DP_OVERLAP_CONTENTION, at most one half: NCCL kernels hold at most 32 of 132 SMs (24%) plus a
    # share of HBM, so hidden traffic cannot cost more than about half its time (a bound set before fitting)
    "dp_overlap_contention": [0.05 * i for i in range(11)],
}


def predict(run: v.Run, values: dict[str, float]) -> float:
    cm.DP_OVERLAP_CONTENTION = values["dp_overlap_contention"]
    system = v.system_of(run)
    dev = system.node.device
    if dev.name.startswith("A100"):
        dev = dataclasses.replace(dev, gemm_efficiency=values["a100.gemm_efficiency"],
                                  attention_efficiency=values["a100.attention_efficiency"])
        system = dataclasses.replace(system, node=dataclasses.replace(system.node, device=dev))
    impl = v.implementation_of(run)
    if impl.name == "llm-foundry":
        impl = dataclasses.replace(impl, gemm_scale=values["llm-foundry.gemm_scale"],
                                   attention_scale=values["llm-foundry.attention_scale"])
    req = cm.Request(v.model_of(run), system, run.gpus // system.ranks_per_node, run.global_batch, run.seq_len, impl)
    return cm.estimate(req, run.layout()).step_time_s


def loss(runs: list[v.Run], values: dict[str, float]) -> float:
    return statistics.fmean(abs(predict(r, values) / r.measured_step_s - 1) for r in runs)


def main() -> int:
    fit = [r for r in v.load_runs() if r.split == "fit"]
    values = {k: grid[len(grid) // 2] for k, grid in PARAMS.items()}
    best = loss(fit, values)
    moved = True
    while moved:
        moved = False
        for name, grid in PARAMS.items():
            for x in grid:
                trial = {**values, name: x}
                e = loss(fit, trial)
                if e < best - 1e-6:
                    best, values, moved = e, trial, True
    for k, x in values.items():
        print(f"{k} = {x:.3f}")
    print(f"fit rows: {len(fit)}, mean |error| {100 * best:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
