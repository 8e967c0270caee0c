"""The trainer on GPUs: the `1b` preset in bf16, then a restart with --resume; prints the figures.

    python3 bench/gpu_train.py                      # all visible GPUs (--nproc), 200 steps, resume after 150
    python3 bench/gpu_train.py --nproc 1            # one GPU
    python3 bench/gpu_train.py --launcher torchrun  # the same under torchrun instead of --nproc
    options: --steps N --stop-at N --config FILE --set section.key=value ... --out result.json
    e.g. --set train.compile=true, --set parallel.sharding=zero2, --set parallel.mbs=8

Two launches of ``alphaexa train`` (configs/1b.toml: 32 x 2048 tokens per step, FSDP2 over
the GPUs, bf16 compute with fp32 master weights, async checkpoints every 100 steps):
steps 1..stop-at, then ``--resume`` to the end.  Printed, from the run's metrics.jsonl
and checkpoint manifests: tokens/s and MFU (median of the steps after the first 10,
whole job), peak memory (max over ranks), checkpoint save time (blocking part and the
background write + checksums), restore time (the checkpoint load), and the time from
the restart command to the first step after the resume (process start, imports,
process groups, model build, load).  Needs ~13 GB of disk per kept checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alphaexa.train.config import load_run_config
from alphaexa.train.metrics import read_metrics


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()))
    parser.add_argument("--launcher", choices=("nproc", "torchrun"), default="nproc")
    parser.add_argument("--config", default=str(REPO / "configs" / "1b.toml"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--stop-at", type=int, default=150)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run-dir", help="default: a temporary directory, removed afterwards")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()

    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="gpu-train-")) / "run"
    sets = [f"train.steps={args.steps}", *args.overrides]
    set_args = [a for s in sets for a in ("--set", s)]
    try:
        first_started = time.time()
        _train(args, ["--config", args.config, "--run-dir", str(run_dir), "--stop-at", str(args.stop_at), *set_args])
        restart = time.time()
        _train(args, ["--run-dir", str(run_dir), "--resume", *set_args])
        figures = _figures(run_dir, first_started, restart, args)
    finally:
        if not args.run_dir:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
    _print(figures)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def _train(args, train_args: list[str]) -> None:
    if args.launcher == "torchrun":
        cmd = ["torchrun", "--standalone", f"--nproc-per-node={args.nproc}", "-m", "alphaexa", "train", *train_args]
    else:
        cmd = [sys.executable, "-m", "alphaexa", "train", "--nproc", str(args.nproc), *train_args]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def _figures(run_dir: Path, first_started: float, restart: float, args) -> dict:
    steps, evals, events = read_metrics(run_dir)
    config = load_run_config(run_dir / "config.toml")
    start = next(e for e in events if e["event"] == "start")
    resume = next(e for e in events if e["event"] == "resume")
    steady = [r for r in steps if r["step"] > 10]
    first_after_resume = next(r for r in steps if r["step"] == resume["step"] + 1)
    first_step = next(r for r in steps if r["step"] == 1)
    manifests = [json.loads(p.read_text()) for p in sorted((run_dir / "checkpoints").glob("step_*/manifest.json"))]
    saves = [e for e in events if e["event"] == "checkpoint"]
    checkpoint_bytes = [sum(f["size"] for f in m["files"].values()) for m in manifests]
    return {
        "gpus": args.nproc, "launcher": args.launcher, "layout": resume["layout_short"],
        "steps": len(steps), "tokens_per_step": config.train.global_batch * config.train.seq_len,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "tokens_per_s_per_gpu": statistics.median(r["tokens_per_s"] for r in steady) / args.nproc,
        "mfu": statistics.median(r["mfu"] for r in steady),
        "step_time_s": statistics.median(r["step_time_s"] for r in steady),
        "peak_mem_gib": max(r["mem_gib"] for r in steps),
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]],
        "eval_loss": [(e["step"], e["loss"]) for e in evals],
        "checkpoint_gib": [round(b / 2**30, 2) for b in checkpoint_bytes],
        "checkpoint_blocking_s": [round(e["blocking_s"], 3) for e in saves],
        "checkpoint_background": [m["save"] for m in manifests],
        "restore_load_s": resume["load_s"],
        "first_launch_to_first_step_s": first_step["time"] - first_started,
        "restart_to_first_step_s": first_after_resume["time"] - restart,
        "restart_setup_s": resume["setup_s"],
        "setup_s_fresh": start["setup_s"],
    }


def _print(f: dict) -> None:
    print(f"\n== gpu_train: {f['gpus']} GPU(s) via {f['launcher']}, layout {f['layout']}, {f['steps']} steps")
    print(f"tokens/s            {f['tokens_per_s']:,.0f} ({f['tokens_per_s_per_gpu']:,.0f} per GPU), "
          f"step {f['step_time_s']:.3f} s for {f['tokens_per_step']:,} tokens")
    print(f"MFU                 {100 * f['mfu']:.1f}%")
    print(f"peak memory         {f['peak_mem_gib']:.1f} GiB (max over ranks)")
    print(f"loss                {f['loss_first_last'][0]:.3f} -> {f['loss_first_last'][1]:.3f}; held-out "
          + ", ".join(f"{loss:.3f}@{step}" for step, loss in f["eval_loss"]))
    print(f"checkpoint          {f['checkpoint_gib']} GiB; blocking {f['checkpoint_blocking_s']} s; background "
          + "; ".join(f"write {s.get('write_s', 0):.1f} s + checksums {s.get('checksum_s', 0):.1f} s"
                      for s in f["checkpoint_background"]))
    print(f"restore (load)      {f['restore_load_s']:.2f} s")
    print(f"restart -> 1st step {f['restart_to_first_step_s']:.1f} s (of which setup before the load "
          f"{f['restart_setup_s']:.1f} s; a fresh start took {f['first_launch_to_first_step_s']:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
