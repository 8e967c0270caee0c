"""The cost model's step time for the stored H200 offload runs against what they measured (CPU, seconds).

    python bench/offload_vs_measured.py          # one row per run: measured, predicted before/now, error
    python bench/offload_vs_measured.py --fit    # also: the two figures fitted on the runs, recomputed
    python bench/offload_vs_measured.py --json   # the rows as JSON

The runs (bench/results, DeepSpeed 0.19.8 ZeRO-3, cpu_adam, one H200, global batch 4 = one micro-batch
of 4 x 2048 tokens, bf16, never compiled) are on the lent machine: 16 CPUs, 126 GiB RAM, a 64 GiB disk
of unknown kind (device-mapper 254:0).  Each is predicted with bench/gpu_offload.predicted_step on that
machine as it was measured (``run_system``: its CPUs, RAM and disk; the disk's throughput
``LENT_DISK_GBPS``).  What is fitted where (docs/planner.md "Offload"):
* ``costmodel.CPU_ADAM_PARAMS_PER_CORE_S`` on ``cpu-6l`` (its only step: the step is compute + exposed
  PCIe + Adam, solved for Adam);
* ``gpu_offload.LENT_DISK_GBPS`` on ``nvme-12l`` (its steady steps 2-3), with the Adam rate above;
* ``nvme-24l`` is fitted on nothing: the check.
The first step of a run also builds DeepSpeed's trace, allocates Adam's m and v and reads every
parameter twice (no read-ahead yet): ``nvme-12l`` measured step 1 at +21% over its steady steps.  The
other two runs have only a first step, so their errors include that.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
GIB = 2**30


@dataclass(frozen=True)
class Run:
    name: str
    file: str  # the run's record (gpu_offload's run-NAME.json)
    machine_file: str  # gpu_offload.json of the same session: the machine
    n_layers: int  # of the 7b preset
    params_on: str
    optimizer_on: str
    before_s: float  # gpu_offload.predicted_step at commit 775d143 (catalogue h200-x1 node, old terms)
    fitted: str  # what this run calibrates ("": a check)


RUNS = (
    Run("nvme-12l", "h200-2026-12-04-s4-offload-nvme-12l-cap24.json", "h200-2026-12-04-s4-offload-planner-view.json",
        12, "nvme", "cpu", 5.740, "LENT_DISK_GBPS"),
    Run("cpu-6l", "h200-2026-12-04-s4-offload-cpu-6l.json", "h200-2026-12-04-s4-offload-planner-view.json",
        6, "cpu", "cpu", 1.337, "CPU_ADAM_PARAMS_PER_CORE_S"),
    Run("nvme-24l", "h200-2026-12-04-offload-run-nvme.json", "h200-2026-12-04-offload.json",
        24, "nvme", "cpu", 10.921, ""),
)
ARGS = argparse.Namespace(global_batch=4, seq=2048, mbs=4)


def measured(run: Run) -> dict:
    """Step time (steady: steps 2+ where there are any, else the first step) and disk bytes per step."""
    record = json.loads((RESULTS / run.file).read_text())
    steps = record["steps"]
    steady = steps[1:] or steps
    n = len(steady)
    return {"step_s": sum(s["step_s"] for s in steady) / n, "first_step_only": len(steps) == 1,
            "step1_s": steps[0]["step_s"],
            "disk_read_gib": sum(s["device_read_gib"] or 0.0 for s in steady) / n,
            "disk_written_gib": sum(s["device_written_gib"] or 0.0 for s in steady) / n}


def machine(run: Run) -> dict:
    return json.loads((RESULTS / run.machine_file).read_text())["machine"]


def predict(run: Run, disk_gbps: float | None = None) -> dict:
    from bench.gpu_offload import model_config, predicted_step

    system = predict_system(run, disk_gbps)
    return predicted_step(model_config("7b", run.n_layers), ARGS, run.params_on, run.optimizer_on, system)


def traffic(run: Run) -> dict:
    """The cost model's disk bytes per step for the run (GiB)."""
    from bench.gpu_offload import model_config
    from topology.costmodel import Request, offload_traffic
    from topology.modelcfg import param_counts

    cfg = model_config("7b", run.n_layers)
    req = Request(cfg, predict_system(run), 1, 4, 2048, offload=run.params_on, engine="deepspeed",
                  offload_optimizer="" if run.optimizer_on == run.params_on else run.optimizer_on)
    t = offload_traffic(req, param_counts(cfg).total)
    return {"disk_read_gib": t["disk_read"] / GIB, "disk_written_gib": (t["disk_write"] + t["disk_state"]) / GIB}


def predict_system(run: Run, disk_gbps: float | None = None):
    """The lent machine as the run measured it, its disk at ``disk_gbps`` (default the fitted figure)."""
    from bench.gpu_offload import LENT_DISK_GBPS, run_system

    return run_system(machine(run), LENT_DISK_GBPS if disk_gbps is None else disk_gbps)


def rows() -> list[dict]:
    out = []
    for run in RUNS:
        m, p = measured(run), predict(run)
        t = traffic(run)
        out.append({"run": run.name, "model": f"7b-{run.n_layers}l", "params": run.params_on, "optimizer": run.optimizer_on,
                    "measured_s": m["step_s"], "measured_is": "step 1 only" if m["first_step_only"] else "steady (steps 2-3)",
                    "step1_s": m["step1_s"], "before_s": run.before_s, "before_error": run.before_s / m["step_s"] - 1,
                    "predicted_s": p["step_s"], "error": p["step_s"] / m["step_s"] - 1,
                    "breakdown": {k: round(v, 3) for k, v in p["breakdown"].items()}, "assumes": p["assumes"],
                    "disk_read_gib": {"measured": m["disk_read_gib"], "model": t["disk_read_gib"]},
                    "disk_written_gib": {"measured": m["disk_written_gib"], "model": t["disk_written_gib"]},
                    "fitted_here": run.fitted or "nothing (check)"})
    return out


def fit() -> dict:
    """The Adam rate from cpu-6l, then the disk throughput from nvme-12l (bisection), as the model sees them."""
    from bench.gpu_offload import model_config
    from topology import costmodel as cm
    from topology.modelcfg import param_counts

    cpu, nvme = RUNS[1], RUNS[0]
    p = predict(cpu)
    non_adam = p["step_s"] - p["breakdown"]["optimizer_s"]
    adam = measured(cpu)["step_s"] - non_adam
    n = param_counts(model_config("7b", cpu.n_layers)).total
    cores = predict_system(cpu).node.cores
    per_core = n / adam / cores
    saved = cm.CPU_ADAM_PARAMS_PER_CORE_S
    cm.CPU_ADAM_PARAMS_PER_CORE_S = per_core
    try:
        target = measured(nvme)["step_s"]
        lo, hi = 0.05, 50.0
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            if predict(nvme, mid)["step_s"] > target:
                lo = mid
            else:
                hi = mid
    finally:
        cm.CPU_ADAM_PARAMS_PER_CORE_S = saved
    return {"CPU_ADAM_PARAMS_PER_CORE_S": per_core, "adam_s_cpu_6l": adam, "non_adam_s_cpu_6l": non_adam,
            "LENT_DISK_GBPS": (lo * hi) ** 0.5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="recompute the fitted figures from the runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = rows()
    out = {"runs": table}
    if args.fit:
        out["fit"] = fit()
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{'run':9} {'measured':>9} {'':19} {'before':>7} {'err':>5} {'now':>7} {'err':>5}  disk r/w GiB measured | model  fitted here")
    for r in table:
        print(f"{r['run']:9} {r['measured_s']:8.2f}s {r['measured_is']:19} {r['before_s']:6.2f}s {r['before_error']:+5.0%} "
              f"{r['predicted_s']:6.2f}s {r['error']:+5.0%}  {r['disk_read_gib']['measured']:5.2f}/{r['disk_written_gib']['measured']:5.2f}"
              f" | {r['disk_read_gib']['model']:5.2f}/{r['disk_written_gib']['model']:5.2f}  {r['fitted_here']}")
    for r in table:
        print(f"  {r['run']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["breakdown"].items()) + f"  [{r['assumes']}]")
    if args.fit:
        f = out["fit"]
        from bench.gpu_offload import LENT_DISK_GBPS
        from topology.costmodel import CPU_ADAM_PARAMS_PER_CORE_S

        print(f"fit: cpu_adam {f['CPU_ADAM_PARAMS_PER_CORE_S'] / 1e6:.1f}M params/s per core on cpu-6l (Adam "
              f"{f['adam_s_cpu_6l']:.2f} s of its step; in use: {CPU_ADAM_PARAMS_PER_CORE_S / 1e6:.1f}M); disk "
              f"{f['LENT_DISK_GBPS']:.2f} GB/s on nvme-12l (in use: {LENT_DISK_GBPS:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
