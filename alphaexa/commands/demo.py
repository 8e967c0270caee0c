"""``alphaexa demo`` (``make demo``): plan, train tiny-moe on 4 CPU ranks, evaluate, checkpoint, resume, generate."""
from __future__ import annotations

import argparse

NAME = "demo"
HELP = "the main job on this machine: plan, train tiny-moe on 4 CPU ranks, checkpoint, resume, generate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", metavar="DIR", help="where the run goes (default: runs/demo-TIMESTAMP)")
    parser.add_argument("--nproc", type=int, default=4, metavar="N", help="CPU ranks (default 4)")
    parser.add_argument("--steps", type=int, metavar="N", help="training steps (default: configs/tiny-moe.toml)")
    parser.add_argument("--resume-steps", type=int, default=40, metavar="N",
                        help="steps left to the resumed second launch (default 40)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..train.demo import run_demo

    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    return run_demo(Path(args.run_dir) if args.run_dir else None, args.nproc, args.steps, args.resume_steps)
