"""``alphaexa describe``: real parameter counts, FLOPs per token and inconsistencies of a model."""
from __future__ import annotations

import argparse
import json

NAME = "describe"
HELP = "parameter counts (total / active per token), training FLOPs per token and config warnings of a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", metavar="NAME|FILE", help="a preset name or a TOML/YAML/JSON model config")
    target.add_argument("--all", action="store_true", help="tabulate every preset")
    parser.add_argument("--seq-len", type=int, default=None, metavar="N",
                        help="sequence length for the attention FLOPs (default: the model's max_seq_len)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from topology.presets import preset_names, resolve_model

    from ..errors import UserError

    if args.seq_len is not None and args.seq_len < 1:
        raise UserError(f"--seq-len must be >= 1, got {args.seq_len}")
    # Resolve (torch-free) before importing the model, so a bad name fails fast.
    configs = [resolve_model(name) for name in (preset_names() if args.all else [args.model])]
    from ..model.describe import describe_model, format_report, format_table

    reports = [describe_model(cfg, args.seq_len) for cfg in configs]
    if args.json:
        print(json.dumps(reports if args.all else reports[0], indent=2))
    elif args.all:
        print(format_table(reports))
        for r in reports:
            for warning in r["warnings"]:
                print(f"{r['name']}: warning: {warning}")
    else:
        print(format_report(reports[0]))
    return 0
