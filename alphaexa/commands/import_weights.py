"""``alphaexa import --from hf DIR --run-dir RUN``: a Hugging Face model directory as a training checkpoint.

RUN gets ``checkpoints/step_000000`` (weights only, sharded DCP), ``tokenizer/`` when DIR has one
AlphaExa can read, and a ``config.toml`` with the model; ``alphaexa generate --checkpoint RUN``
and ``alphaexa train --resume --run-dir RUN`` (fresh optimizer, from the first batch) take it.
"""
from __future__ import annotations

import argparse

NAME = "import"
HELP = "turn a Hugging Face transformers directory (Llama, Arcee, Qwen2-MoE) into a training checkpoint"
FORMATS = ("hf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", nargs=2, required=True, metavar=("FORMAT", "DIR"),
                        help="'hf' and a directory holding config.json and safetensors weights")
    parser.add_argument("--run-dir", required=True, metavar="RUN", help="the run directory to create")
    parser.add_argument("--name", help="the model's name in its config (default: DIR's name)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..train.restore import import_hf_dir

    fmt, source = args.source
    if fmt not in FORMATS:
        raise UserError(f"--from {fmt!r}: the formats are {', '.join(FORMATS)}")
    checkpoint = import_hf_dir(Path(source), Path(args.run_dir), args.name)
    print(f"{checkpoint}: weights of {source}; continue with `alphaexa train --resume --run-dir {args.run_dir}` "
          f"(edit {args.run_dir}/config.toml first) or `alphaexa generate --checkpoint {args.run_dir}`")
    return 0
