"""The planner's step time against the trainer's: `1b` and `1b-moe` at two global batches on one GPU.

    python3 bench/gpu_planner_check.py --out $OUT/planner_check.json   # one H200, ~6 minutes
    python3 bench/gpu_planner_check.py --smoke                           # debug model on the CPU: checks the script

Each case is a real ``alphaexa train`` run (configs/1b.toml with the case's preset and global
batch: bf16, FSDP2 on one GPU, AdamW, mbs 4, no recompute, sequence 2048); measured = the
median step time of the steps after the warm-up, from the run's metrics.jsonl.  Predicted =
``topology.costmodel.estimate`` of exactly that layout on the ``--system`` entry (h200-x1),
computed before the run.  Prints both and the error, and writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alphaexa.train.metrics import read_metrics
from topology import costmodel as cm
from topology.hardware import load_system
from topology.layout import Layout
from topology.presets import get_preset

CASES = [("1b", 16), ("1b", 64), ("1b-moe", 16), ("1b-moe", 64)]
SMOKE_CASES = [("debug", 4), ("debug", 8)]


def predicted_step(preset: str, system: str, global_batch: int, seq: int, mbs: int) -> float:
    req = cm.Request(get_preset(preset), load_system(system), 1, global_batch, seq)
    layout = Layout(dp_shard=1, mbs=mbs, recompute="none", sharding="zero3")
    return cm.estimate(req, layout).step_time_s


def measure(preset: str, global_batch: int, args, work: Path) -> float:
    config = work / f"{preset}-{global_batch}.toml"
    text = (REPO / "configs" / "1b.toml").read_text().replace('preset = "1b"', f'preset = "{preset}"')
    config.write_text(text)
    sets = [f"train.global_batch={global_batch}", f"train.steps={args.steps}", f"train.warmup={args.steps // 3}",
            f"parallel.mbs={args.mbs}", "train.eval_every=0", "train.eval_batches=0", "checkpoint.every=0", "checkpoint.keep_last=1",
            f"train.seq_len={args.seq_len}", "train.log_every=5"]
    if args.smoke:
        sets += ["train.dtype=fp32", "data.val_fraction=0.25"]
    run_dir = work / f"run-{preset}-{global_batch}"
    cmd = [sys.executable, "-m", "alphaexa", "train", "--nproc", "1", "--config", str(config), "--run-dir",
           str(run_dir), *[a for s in sets for a in ("--set", s)]]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    steps, _, _ = read_metrics(run_dir)
    steady = [r["step_time_s"] for r in steps if r["step"] > args.warmup_steps]
    shutil.rmtree(run_dir, ignore_errors=True)  # the final checkpoint: GiBs of disk
    return statistics.median(steady)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="h200-x1", help="catalogue entry or file the prediction uses")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the median")
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--cases", default=None, metavar="PRESET:BATCH,...",
                    help="the cases, in this order (default: " + ",".join(f"{p}:{b}" for p, b in CASES) + ")")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--smoke", action="store_true", help="debug preset on the CPU (fp32): checks the script only")
    args = ap.parse_args()
    if args.smoke:
        args.system, args.steps, args.warmup_steps, args.mbs, args.seq_len = "cpu", 6, 2, 2, 64
    cases = SMOKE_CASES if args.smoke else CASES
    if args.cases:
        try:
            cases = [(p, int(b)) for p, b in (c.split(":") for c in args.cases.split(","))]
        except ValueError:
            ap.error(f"--cases {args.cases!r}: expected PRESET:BATCH,PRESET:BATCH (e.g. 1b-moe:16,1b:64)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="planner-check-") as tmp:
        for preset, gb in cases:
            pred = predicted_step(preset, args.system, gb, args.seq_len, args.mbs)
            meas = measure(preset, gb, args, Path(tmp))
            rows.append({"model": preset, "global_batch": gb, "mbs": args.mbs, "seq_len": args.seq_len,
                         "system": args.system, "measured_step_s": meas, "predicted_step_s": pred,
                         "error_pct": 100.0 * (pred - meas) / meas})
            if args.out:  # after every case: a later failure or timeout keeps what was measured
                write_rows(rows, Path(args.out))
    print(f"\n== planner vs trainer on one device ({args.system}), mbs {args.mbs}, sequence {args.seq_len} ==")
    print(f"{'model':>8} {'batch':>6} {'measured s':>11} {'predicted s':>12} {'error':>8}")
    for r in rows:
        print(f"{r['model']:>8} {r['global_batch']:6d} {r['measured_step_s']:11.3f} {r['predicted_step_s']:12.3f} "
              f"{r['error_pct']:+7.1f}%")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
