"""``alphaexa export --checkpoint RUN --to hf DIR``: a training checkpoint as a Hugging Face model directory."""
from __future__ import annotations

import argparse

NAME = "export"
HELP = "write a training checkpoint's weights as a Hugging Face transformers directory (config.json + safetensors)"
FORMATS = ("hf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a training run directory, its checkpoints/ directory or one step_N checkpoint")
    parser.add_argument("--to", nargs=2, required=True, metavar=("FORMAT", "DIR"),
                        help="'hf' and the directory to write (created; existing files are replaced)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint.huggingface import hf_family, write_hf_dir
    from ..errors import UserError
    from ..train.restore import is_training_checkpoint, load_trained_model

    fmt, out = args.to
    if fmt not in FORMATS:
        raise UserError(f"--to {fmt!r}: the formats are {', '.join(FORMATS)}")
    if not is_training_checkpoint(args.checkpoint):
        raise UserError(f"{args.checkpoint} is not a training run, checkpoint root or checkpoint directory")
    trained = load_trained_model(args.checkpoint)
    family = hf_family(trained.config)  # refuses before anything is written
    tokenizer_dir = trained.tokenizer_dir
    state = trained.model.state_dict()
    write_hf_dir(Path(out), trained.config, state, dtype=args.dtype, tokenizer_dir=tokenizer_dir)
    print(f"{out}: {family} ({trained.config.name}, step {trained.step} of {trained.checkpoint}, {args.dtype})")
    return 0
