"""``alphaexa tokenize``: text, JSONL or WebDataset tar files -> packed train/val token shards."""
from __future__ import annotations

import argparse
import sys

NAME = "tokenize"
HELP = "tokenize text/JSONL/tar files (or the built-in demo corpus) into packed token shards"


# Literal copies of alphaexa.data's choices (which validates them again): importing it here
# would load numpy on every `alphaexa --help`.
_MODEL_TYPES = ("bpe", "unigram")
_TEXT_UNITS = ("file", "paragraph", "line")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="text (.txt/.md/.rst or no suffix), JSONL (.jsonl[.gz]) or tar (.tar[.gz]) files, "
                             "or directories of them")
    parser.add_argument("--demo", action="store_true",
                        help="tokenize the built-in demo corpus (the Python documentation shipped with CPython)")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create or replace")
    parser.add_argument("--tokenizer", default="byte", metavar="byte|sentencepiece|PATH",
                        help="'byte', 'sentencepiece' (train one on the inputs, stored in DIR/tokenizer), or an "
                             "existing tokenizer directory / dataset directory / .model file (default: byte)")
    parser.add_argument("--vocab-size", type=int, default=None, help="SentencePiece vocabulary size to train")
    parser.add_argument("--model-type", choices=_MODEL_TYPES, default="bpe",
                        help="SentencePiece model type (default: bpe)")
    parser.add_argument("--val-fraction", type=float, default=0.01,
                        help="fraction of documents held out for validation (default: 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the tokenizer's line sample")
    parser.add_argument("--text-unit", choices=_TEXT_UNITS, default="file",
                        help="what one document of a plain text file is (default: the whole file)")
    parser.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    parser.add_argument("--shard-tokens", type=int, default=None,
                        help="tokens per shard file (default: 2^27, 256 MiB of uint16)")
    parser.add_argument("--sentence-sample", type=int, default=2_000_000,
                        help="lines sampled to train SentencePiece (default: 2000000)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from alphaexa.data.demo_corpus import write_demo_corpus
    from alphaexa.data.ingest import DEFAULT_SHARD_TOKENS, demo_metadata, tokenize_corpus
    from alphaexa.errors import UserError

    if bool(args.input) == args.demo:
        raise UserError("give either --input PATH... or --demo")
    with tempfile.TemporaryDirectory(prefix="alphaexa-demo-corpus-") as corpus_dir:
        inputs = write_demo_corpus(corpus_dir) if args.demo else args.input
        dataset = tokenize_corpus(
            inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, model_type=args.model_type,
            val_fraction=args.val_fraction, seed=args.seed, text_unit=args.text_unit, text_field=args.text_field,
            shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS, sentence_sample=args.sentence_sample,
            progress=not args.quiet, metadata=demo_metadata() if args.demo else None)
    index = dataset.index
    text_bytes = sum(s["bytes"] for s in index["sources"])
    tokens = sum(s["tokens"] for s in index["splits"].values())
    print(f"{Path(args.out)}: {index['tokenizer']['kind']} tokenizer, {index['tokenizer']['vocab_size']} ids, "
          f"{index['dtype']}; train {index['splits']['train']['tokens']} tokens / "
          f"{index['splits']['train']['documents']} docs, val {index['splits']['val']['tokens']} tokens / "
          f"{index['splits']['val']['documents']} docs; {text_bytes / max(tokens, 1):.2f} input bytes per token",
          file=sys.stdout)
    return 0
