"""The cost model's step time for the stored H200 offload runs against what they measured (CPU, seconds).

    python bench/offload_vs_measured.py          # one row per run: measured, predicted before/now, error, role
    python bench/offload_vs_measured.py --fit    # also: the three figures fitted on the runs, recomputed
    python bench/offload_vs_measured.py --json   # the rows as JSON

The runs (bench/results, DeepSpeed 0.19.8 ZeRO-3, cpu_adam, one H200, global batch 4 = one micro-batch
of 4 x 2048 tokens, bf16, never compiled, the optimizer state in host memory) are on lent machines: 16
CPUs, 126 GiB RAM, a 64 GiB disk of unknown kind (device-mapper 254:0); each session's lease may be a
different host.  Each is predicted with bench/gpu_offload.predicted_step on that machine as it was
measured (``run_system``: its CPUs, RAM and disk, no DRAM cap; the disk at ``LENT_DISK_GBPS``).

The target is the steady step (the mean of steps 2+).  Step 1 is a warm-up (cpu_adam allocates and
first-touches Adam's m and v; DeepSpeed records its trace and reads every parameter twice): it is
compared with the model's first step (steady + ``costmodel.offload_first_step_seconds``), and a run with
only a first step bounds its steady step from above.  What is fitted where (docs/planner.md "Offload"):
* ``costmodel.HOST_STREAM_GBPS_PER_CORE`` on ``cpu-6l`` (session 5), its steady step: the step less the
  model's compute and exposed PCIe is the host optimizer step, HOST_STEP_BYTES a parameter on 16 cores;
* ``costmodel.HOST_FIRST_TOUCH_GBPS`` on ``cpu-6l`` (session 5), its step 1 less its steady step;
* ``gpu_offload.LENT_DISK_GBPS`` on ``nvme-18l`` (session 5), its steady step, with the host rate above;
  the same lease's dd probe (O_DIRECT, 64 MiB blocks: write 1.3, read 1.4 GB/s) is a lower bound of it;
* the rest are checks: ``nvme-12l`` (session 4, GPU capped at 24 GiB), ``nvme-24l`` (session 3, step 1
  only), ``cpu-6l-s4`` (session 4, step 1 only), and every nvme run's step 1.
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
DD_PROBE_GBPS = {"write": 1.3, "read": 1.4}  # session 5's lease, dd O_DIRECT 64 MiB blocks, 4 GiB


@dataclass(frozen=True)
class Run:
    name: str
    file: str  # the run's record (gpu_offload's run-NAME.json)
    machine_file: str  # gpu_offload.json of the same session: the machine
    n_layers: int  # of the 7b preset
    params_on: str
    before_s: float  # gpu_offload.predicted_step of the session-4 model (commit 3de9698), same machine
    fitted: str  # what this run calibrates ("": a check)
    caveat: str = ""


S5 = "h200-2026-12-04-s5-offload.json"
RUNS = (
    Run("cpu-6l", "h200-2026-12-04-s5-offload-cpu-6l.json", S5, 6, "cpu", 2.206,
        "HOST_STREAM_GBPS_PER_CORE (steady), HOST_FIRST_TOUCH_GBPS (step 1)"),
    Run("nvme-18l", "h200-2026-12-04-s5-offload-nvme-18l.json", S5, 18, "nvme", 17.856, "LENT_DISK_GBPS"),
    Run("nvme-12l", "h200-2026-12-04-s4-offload-nvme-12l-cap24.json", "h200-2026-12-04-s4-offload-planner-view.json",
        12, "nvme", 12.615, "", "GPU capped at 24 GiB (reserved peak 23.99 GiB: the allocator at its cap); session-4 lease"),
    Run("nvme-24l", "h200-2026-12-04-offload-run-nvme.json", "h200-2026-12-04-offload.json",
        24, "nvme", 22.816, "", "step 1 only; session-3 lease"),
    Run("cpu-6l-s4", "h200-2026-12-04-s4-offload-cpu-6l.json", "h200-2026-12-04-s4-offload-planner-view.json",
        6, "cpu", 2.206, "", "step 1 only; session-4 lease"),
)
ARGS = argparse.Namespace(global_batch=4, seq=2048, mbs=4)


def run_named(name: str) -> Run:
    return next(r for r in RUNS if r.name == name)


def measured(run: Run) -> dict:
    """The steady step (mean of steps 2+; None with only a first step), step 1, and disk bytes a step."""
    steps = json.loads((RESULTS / run.file).read_text())["steps"]
    steady = steps[1:]
    n = len(steady)

    def mean(key, of):
        return sum(s[key] or 0.0 for s in of) / len(of)

    return {"steady_s": mean("step_s", steady) if n else None, "step1_s": steps[0]["step_s"],
            "steady_steps": [s["step_s"] for s in steady],
            "disk_read_gib": mean("device_read_gib", steady or steps),
            "disk_written_gib": mean("device_written_gib", steady or steps),
            "step1_disk_read_gib": steps[0]["device_read_gib"] or 0.0}


def machine(run: Run) -> dict:
    return json.loads((RESULTS / run.machine_file).read_text())["machine"]


def predict_system(run: Run, disk_gbps: float | None = None):
    """The lent machine as the run measured it, its disk at ``disk_gbps`` (default the fitted figure)."""
    from bench.gpu_offload import LENT_DISK_GBPS, run_system

    return run_system(machine(run), LENT_DISK_GBPS if disk_gbps is None else disk_gbps)


def _request(run: Run, disk_gbps: float | None = None):
    from bench.gpu_offload import model_config
    from topology.costmodel import Request

    return Request(model_config("7b", run.n_layers), predict_system(run, disk_gbps), 1, ARGS.global_batch, ARGS.seq,
                   offload=run.params_on, engine="deepspeed", offload_optimizer="" if run.params_on == "cpu" else "cpu")


def predict(run: Run, disk_gbps: float | None = None) -> dict:
    """The model's steady step (``step_s``) and first step (``step1_s``) for the run."""
    from bench.gpu_offload import model_config, predicted_step
    from topology.costmodel import offload_first_step_seconds
    from topology.modelcfg import param_counts

    cfg = model_config("7b", run.n_layers)
    out = predicted_step(cfg, ARGS, run.params_on, "cpu", predict_system(run, disk_gbps))
    out["step1_s"] = out["step_s"] + offload_first_step_seconds(_request(run, disk_gbps), param_counts(cfg).total)
    return out


def traffic(run: Run) -> dict:
    """The cost model's disk bytes per step for the run (GiB)."""
    from topology.costmodel import offload_traffic
    from topology.modelcfg import param_counts

    req = _request(run)
    t = offload_traffic(req, param_counts(req.model).total)
    return {"disk_read_gib": t["disk_read"] / GIB, "disk_written_gib": (t["disk_write"] + t["disk_state"]) / GIB}


def rows() -> list[dict]:
    out = []
    for run in RUNS:
        m, p, t = measured(run), predict(run), traffic(run)
        steady = m["steady_s"]
        row = {"run": run.name, "model": f"7b-{run.n_layers}l", "params": run.params_on, "optimizer": "cpu",
               "measured_steady_s": steady, "steady_steps": m["steady_steps"], "measured_step1_s": m["step1_s"],
               "before_s": run.before_s, "predicted_s": p["step_s"], "predicted_step1_s": p["step1_s"],
               "breakdown": {k: round(v, 3) for k, v in p["breakdown"].items()}, "assumes": p["assumes"],
               "disk_read_gib": {"measured": m["disk_read_gib"], "model": t["disk_read_gib"],
                                 "measured_step1": m["step1_disk_read_gib"]},
               "disk_written_gib": {"measured": m["disk_written_gib"], "model": t["disk_written_gib"]},
               "role": ("fitted: " + run.fitted) if run.fitted else "independent check", "caveat": run.caveat}
        if steady is not None:
            row.update(before_error=run.before_s / steady - 1, error=p["step_s"] / steady - 1)
        else:  # step 1 only: an upper bound of the steady step; the model's first step is what compares
            row.update(before_error=None, error=None, steady_upper_bound_held=p["step_s"] <= m["step1_s"])
        row["step1_error"] = p["step1_s"] / m["step1_s"] - 1
        out.append(row)
    return out


def fit() -> dict:
    """The three fitted figures recomputed from their runs, as the model sees them: the host streaming rate
    and first-touch rate from cpu-6l, then the disk from nvme-18l's steady step (bisection)."""
    from topology import costmodel as cm
    from topology.modelcfg import param_counts

    cpu, nvme = run_named("cpu-6l"), run_named("nvme-18l")
    p, m = predict(cpu), measured(cpu)
    host = m["steady_s"] - (p["step_s"] - p["breakdown"]["optimizer_s"])
    n = param_counts(_request(cpu).model).total
    cores = predict_system(cpu).node.cores
    per_core = n * cm.HOST_STEP_BYTES / host / cores / 1e9
    first_touch = 8 * n / (m["step1_s"] - m["steady_s"]) / 1e9
    saved = cm.HOST_STREAM_GBPS_PER_CORE
    cm.HOST_STREAM_GBPS_PER_CORE = per_core
    try:
        target = measured(nvme)["steady_s"]
        lo, hi = 0.05, 50.0
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            if predict(nvme, mid)["step_s"] > target:
                lo = mid
            else:
                hi = mid
    finally:
        cm.HOST_STREAM_GBPS_PER_CORE = saved
    return {"HOST_STREAM_GBPS_PER_CORE": per_core, "host_step_s_cpu_6l": host,
            "host_params_per_s_cpu_6l": n / host, "HOST_FIRST_TOUCH_GBPS": first_touch,
            "LENT_DISK_GBPS": (lo * hi) ** 0.5}


def _s(x) -> str:
    return "     -" if x is None else f"{x:5.2f}s"


def _e(x) -> str:
    return "    -" if x is None else f"{x:+5.0%}"


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
    print("steady = mean of steps 2+ (step 1 is a warm-up); before = the session-4 model; now = this model")
    print(f"{'run':10} {'steady':>6} {'before':>6} {'err':>5} {'now':>6} {'err':>5} | {'step 1':>6} {'now':>6} {'err':>5}"
          f" | disk r/w GiB measured | model | role")
    for r in table:
        print(f"{r['run']:10} {_s(r['measured_steady_s'])} {_s(r['before_s'])} {_e(r['before_error'])} "
              f"{_s(r['predicted_s'])} {_e(r['error'])} | {_s(r['measured_step1_s'])} {_s(r['predicted_step1_s'])} "
              f"{_e(r['step1_error'])} | {r['disk_read_gib']['measured']:5.2f}/{r['disk_written_gib']['measured']:5.2f}"
              f" | {r['disk_read_gib']['model']:5.2f}/{r['disk_written_gib']['model']:5.2f} | {r['role']}")
    for r in table:
        extra = f"; {r['caveat']}" if r["caveat"] else ""
        bound = ("" if r["measured_steady_s"] is not None else
                 f"; steady <= step 1 {'holds' if r['steady_upper_bound_held'] else 'FAILS'}")
        print(f"  {r['run']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["breakdown"].items())
              + f"  [{r['assumes']}]{bound}{extra}")
    print(f"  dd probe of session 5's disk (a lower bound of DeepSpeed's aio): write {DD_PROBE_GBPS['write']}, "
          f"read {DD_PROBE_GBPS['read']} GB/s")
    if args.fit:
        f = out["fit"]
        from bench.gpu_offload import LENT_DISK_GBPS
        from topology import costmodel as cm

        print(f"fit: host step {f['HOST_STREAM_GBPS_PER_CORE']:.2f} GB/s a core on cpu-6l steady ({f['host_step_s_cpu_6l']:.2f} s,"
              f" {f['host_params_per_s_cpu_6l'] / 1e9:.2f}B params/s; in use {cm.HOST_STREAM_GBPS_PER_CORE:.2f}); first touch "
              f"{f['HOST_FIRST_TOUCH_GBPS']:.1f} GB/s on cpu-6l step 1 (in use {cm.HOST_FIRST_TOUCH_GBPS:.1f}); disk "
              f"{f['LENT_DISK_GBPS']:.2f} GB/s on nvme-18l steady (in use {LENT_DISK_GBPS:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
