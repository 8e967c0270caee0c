"""Time the planner's full search: alphaexa-250b-spec on 512 Aurora nodes (6144 tiles), and more.

    .venv/bin/python bench/planner_speed.py            # the headline case, best of 3
    .venv/bin/python bench/planner_speed.py --all      # also Polaris and a DGX H100 cluster

Prints layouts searched, how many fit, how many were fully costed, wall and CPU
seconds, and candidates per second.  The search must stay well under 2 s on a
2-core CI machine; wall time on a shared machine includes other processes, so
CPU time is printed too.
"""
from __future__ import annotations

import argparse
import time

from topology.planner import plan

CASES = {
    "aurora": ("alphaexa-250b-spec", "aurora", 512, 1536, 8192),
    "polaris": ("alphaexa-250b-spec", "polaris", 512, 2048, 8192),
    "dgx-h100": ("alphaexa-250b", "dgx-h100", 64, 1024, 4096),
}


def run(name: str, repeats: int) -> None:
    model, system, nodes, batch, seq = CASES[name]
    best_wall = best_cpu = float("inf")
    result = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = plan(model, system, nodes, batch, seq, top=5)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    winner = result.best.estimate.layout.short() if result.best else "none fits"
    print(f"{model} on {nodes} x {system} (global batch {batch} x {seq}): {result.candidates:,} layouts, "
          f"{result.feasible:,} fit, {result.evaluated:,} costed | wall {best_wall:.3f} s, cpu {best_cpu:.3f} s | "
          f"{result.candidates / best_wall:,.0f} candidates/s | best: {winner}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also time the Polaris and DGX H100 cases")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for name in CASES if args.all else ["aurora"]:
        run(name, args.repeats)


if __name__ == "__main__":
    main()
