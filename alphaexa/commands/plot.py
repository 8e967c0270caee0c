"""``alphaexa plot RUN_DIR``: loss, throughput and expert-load curves of a run, as PNG files."""
from __future__ import annotations

import argparse

NAME = "plot"
HELP = ("draw loss, throughput, expert-load (per layer) and predicted-vs-measured step-time plots of a run "
        "directory to PNG files")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where the PNG files go (default: RUN_DIR/plots)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..train.metrics import read_metrics
    from ..train.plots import plot_run, read_plan

    steps, evals, _ = read_metrics(args.run_dir)
    if not steps:
        raise UserError(f"{args.run_dir}/metrics.jsonl holds no training step yet")
    out = Path(args.out) if args.out else Path(args.run_dir) / "plots"
    for path in plot_run(steps, evals, out, read_plan(Path(args.run_dir))):
        print(path)
    return 0
