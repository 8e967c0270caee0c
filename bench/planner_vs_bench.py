"""The planner's step time against every AlphaExa row that a GPU bench measured, from the saved results.

    python3 bench/planner_vs_bench.py bench/results/h200-*.json [--system h200-x1]

Reads ``vs_peers.json`` files (rows of ``alphaexa train`` runs: shape, tokens per step, layout
overrides, measured mean step time) and ``gpu_planner_check`` files (rows with
``measured_step_s``), predicts each with ``topology.costmodel.estimate`` for exactly that model
and layout on one device of ``--system``, and prints measured, predicted and the error.  Needs
no GPU: it re-predicts saved measurements, so a change of the cost model is checked against
them at once.  Rows whose lever the cost model does not describe (float8) are listed as such.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vs_peers import SHAPES  # the bench's model shapes: preset and overrides

from topology import costmodel as cm
from topology.hardware import load_system
from topology.layout import Layout
from topology.presets import get_preset

NOT_MODELLED = ("train.float8=true",)


def bench_cases(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    cases = []
    if isinstance(data, list):  # gpu_planner_check rows
        for r in data:
            cases.append({"source": path.name, "name": f"{r['model']} gb{r['global_batch']}", "shape": r["model"],
                          "batch": r["global_batch"], "mbs": r["mbs"], "seq": r["seq_len"], "window": 0,
                          "recompute": "none", "measured": r["measured_step_s"], "sets": []})
        return cases
    for r in data.get("rows", []):
        if r.get("kind") != "alphaexa" or r.get("status") != "ok" or r.get("shape") not in SHAPES:
            continue
        sets = r.get("sets", [])
        recompute = next((s.split("=", 1)[1] for s in sets if s.startswith("parallel.recompute=")), "none")
        cases.append({"source": path.name, "name": r["name"], "shape": r["shape"], "batch": r["batch"],
                      "mbs": r["batch"], "seq": r["seq"], "window": r.get("options", {}).get("window", 0),
                      "recompute": recompute, "measured": r["step_s"], "sets": sets})
    return cases


def predict(case: dict, system: str) -> float:
    preset, overrides = SHAPES[case["shape"]]
    model = get_preset(preset).replace(**overrides, max_seq_len=max(case["seq"], 2048),
                                        sliding_window=case["window"])
    req = cm.Request(model, load_system(system), 1, case["batch"], case["seq"])
    layout = Layout(dp_shard=1, mbs=case["mbs"], recompute=case["recompute"], sharding="zero3")
    return cm.estimate(req, layout).step_time_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--system", default="h200-x1")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    rows = []
    print(f"{'row':<34} {'source':<42} {'measured s':>10} {'predicted s':>11} {'error':>8}")
    for path in args.results:
        for case in bench_cases(path):
            skipped = [s for s in case["sets"] if s in NOT_MODELLED]
            if skipped:
                print(f"{case['name']:<34} {case['source']:<42} {case['measured']:10.3f} {'-':>11}  "
                      f"not modelled ({', '.join(skipped)})")
                continue
            predicted = predict(case, args.system)
            error = 100.0 * (predicted - case["measured"]) / case["measured"]
            rows.append({**case, "predicted": predicted, "error_pct": error})
            print(f"{case['name']:<34} {case['source']:<42} {case['measured']:10.3f} {predicted:11.3f} {error:+7.1f}%")
    if rows:
        errors = [abs(r["error_pct"]) for r in rows]
        print(f"\n{len(rows)} rows: mean |error| {statistics.fmean(errors):.1f}%, max {max(errors):.1f}%")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
