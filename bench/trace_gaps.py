"""Where a profiled step's GPU waits: the idle gaps of a torch.profiler trace, each put down to the host.

    python3 bench/trace_gaps.py OUT/trace-alphaexa-1b-moe.json.gz [--steps 3] [--top 25]

Reads a Chrome trace written by ``bench/vs_peers.py --profile-steps N --trace``.  The device's
busy time is the union of its kernels, copies and memsets (every stream); each gap in it ends
with a kernel whose launch the trace links to a host runtime call (``args.correlation``).  A gap
whose next kernel was launched after the gap began is *host-bound*: the GPU waited for the host
to launch it, and the gap is charged to the innermost host operator around that launch (the
operator the host was still running).  Other gaps (the launch came earlier: a wait on another
stream, a copy, a synchronisation the host had already issued) are listed as such.  Prints the
idle time per step, the host operators that hold the GPU up, and every kernel's time per step
grouped by ``vs_peers.PROFILE_CATEGORIES`` (the whole list, not the summary's top 15).

The cost model's terms for MoE routing, optimizer and idle time (docs/planner.md, "Validation",
session 5) are checked against these figures.
"""
from __future__ import annotations

import argparse
import bisect
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def analyse(events: list[dict], steps: int) -> dict:
    device = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS),
                    key=lambda e: e["ts"])
    if not device:
        raise SystemExit("no device kernels in this trace (a CPU run: nothing to attribute)")
    launches = {e["args"]["correlation"]: e for e in events if e.get("ph") == "X" and e.get("cat") == "cuda_runtime"
                and "correlation" in e.get("args", {})}
    ops = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"), key=lambda e: e["ts"])
    op_starts = [e["ts"] for e in ops]

    def innermost_op(ts: float) -> str:
        best, i = None, bisect.bisect_right(op_starts, ts) - 1
        # walk back over operators that started before ts; the latest-starting one still running is innermost
        for j in range(i, max(-1, i - 400), -1):
            e = ops[j]
            if e["ts"] + e.get("dur", 0) >= ts:
                best = e
                break
        return best["name"] if best else "(no host operator)"

    gaps_host: dict[str, float] = defaultdict(float)
    gaps_other: dict[str, float] = defaultdict(float)
    reach = device[0]["ts"] + device[0].get("dur", 0)
    busy = device[0].get("dur", 0)
    for e in device[1:]:
        begin, end = e["ts"], e["ts"] + e.get("dur", 0)
        if begin > reach:
            gap = begin - reach
            launch = launches.get(e.get("args", {}).get("correlation"))
            if launch is not None and launch["ts"] > reach:
                gaps_host[innermost_op(launch["ts"])] += gap
            else:
                gaps_other[e["name"][:80]] += gap
            busy += end - begin
            reach = end
        elif end > reach:
            busy += end - reach
            reach = end
    wall = reach - device[0]["ts"]
    from vs_peers import kernel_category as category

    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in device:
        kernels[e["name"]][0] += e.get("dur", 0)
        kernels[e["name"]][1] += 1
    cats: dict[str, float] = defaultdict(float)
    for name, (us, _) in kernels.items():
        cats[category(name)] += us
    ms = 1e-3 / steps
    return {
        "step_ms": wall * ms, "busy_ms": busy * ms, "idle_ms": (wall - busy) * ms,
        "idle_host_bound_ms": sum(gaps_host.values()) * ms,
        "host_ops": sorted(((k, v * ms) for k, v in gaps_host.items()), key=lambda kv: -kv[1]),
        "other_gaps": sorted(((k, v * ms) for k, v in gaps_other.items()), key=lambda kv: -kv[1]),
        "categories_ms": dict(sorted(((k, v * ms) for k, v in cats.items()), key=lambda kv: -kv[1])),
        "kernels": sorted(((k, v[0] * ms, v[1] / steps, category(k)) for k, v in kernels.items()),
                          key=lambda row: -row[1]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--steps", type=int, default=3, help="steps the trace covers (vs_peers --profile-steps)")
    ap.add_argument("--top", type=int, default=25, help="rows of each list to print")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    out = analyse(load(args.trace), args.steps)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"step {out['step_ms']:.2f} ms: busy {out['busy_ms']:.2f}, idle {out['idle_ms']:.2f} "
          f"(host-bound {out['idle_host_bound_ms']:.2f})")
    print("\nkernel time per step by category (ms):")
    for k, v in out["categories_ms"].items():
        print(f"  {v:8.2f}  {k}")
    print("\nidle while the host was in (ms per step):")
    for k, v in out["host_ops"][:args.top]:
        print(f"  {v:8.3f}  {k}")
    print("\nother idle, by the kernel that ended it (ms per step):")
    for k, v in out["other_gaps"][:args.top]:
        print(f"  {v:8.3f}  {k}")
    print("\nkernels (ms per step, calls per step, category):")
    for name, t, calls, cat in out["kernels"][:args.top]:
        print(f"  {t:8.3f} {calls:7.1f}  {cat:28s} {name[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
