"""``alphaexa generate``: continue prompts with a model (KV cache; greedy, temperature, top-k, top-p)."""
from __future__ import annotations

import argparse
import sys

NAME = "generate"
HELP = "generate text from prompts with a model preset or config, optionally from a checkpoint"

# Refuse to materialise a model whose fp32 weights would take more than this share of host memory.
MAX_MEMORY_SHARE = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME|FILE",
                        help="a preset name or a model config file (default with a training checkpoint: its model)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a training run directory, its checkpoints/ directory or one step_N checkpoint "
                             "(sharded DCP, any number of ranks); or weights saved with "
                             "torch.save(model.state_dict()): a file, or a directory holding one .pt file "
                             "(default: untrained weights from --seed)")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text; repeat for a batch of prompts")
    parser.add_argument("--tokenizer", default=None, metavar="SPEC",
                        help="'byte', a saved tokenizer directory or a SentencePiece .model file "
                             "(default: the training run's tokenizer, else byte)")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (and init seed without --checkpoint)")
    parser.add_argument("--no-eos", action="store_true", help="do not stop at the tokenizer's end-of-sequence id")


def run(args: argparse.Namespace) -> int:
    import os

    from backends.device import get_backend
    from topology.modelcfg import param_counts
    from topology.presets import resolve_model

    from ..data.tokenizer import load_tokenizer
    from ..errors import UserError
    from ..model.generate import generate, load_model_for_generation
    from ..model.transformer import build_model

    trained = None
    if args.checkpoint:
        from ..train.restore import is_training_checkpoint, load_trained_model

        if is_training_checkpoint(args.checkpoint):
            trained = load_trained_model(args.checkpoint, device=get_backend().device)
    if trained is None and not args.model:
        raise UserError("give --model NAME|FILE (or --checkpoint of a training run, which records its model)")
    cfg = resolve_model(args.model) if args.model else trained.config
    if trained is not None and args.model:
        from ..train.preflight import check_same_model

        check_same_model(trained.checkpoint, {"model": trained.config.to_dict()}, cfg)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    device = get_backend().device
    if device.type == "cpu":
        weights = 4 * param_counts(cfg).total
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if weights > MAX_MEMORY_SHARE * memory:
            raise UserError(f"model {cfg.name!r} needs {weights / 2**30:,.1f} GiB of fp32 weights; this host has "
                            f"{memory / 2**30:,.1f} GiB of memory")
    run_tokenizer = trained.tokenizer if trained is not None else None
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else run_tokenizer or load_tokenizer("byte")
    tokenizer.check_fits(cfg.vocab_size)
    if cfg.tokenizer != tokenizer.kind:
        print(f"note: model {cfg.name!r} expects a {cfg.tokenizer} tokenizer; using {tokenizer.kind}",
              file=sys.stderr)
    if trained is not None:
        model = trained.model
        print(f"note: weights of {trained.checkpoint} (step {trained.step})", file=sys.stderr)
    elif args.checkpoint:
        model = load_model_for_generation(args.checkpoint, cfg, device=device)
    else:
        print("note: no --checkpoint: the weights are untrained, the output is noise", file=sys.stderr)
        model = build_model(cfg, device=device, seed=args.seed)
    prompts = [tokenizer.encode(p) for p in args.prompt]
    try:
        result = generate(model, prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, eos_id=None if args.no_eos else tokenizer.eos_id, seed=args.seed)
    except ValueError as e:  # prompt too long for the model, bad sampling values
        raise UserError(str(e)) from None
    for text, tokens in zip(args.prompt, result.tokens):
        print(text + tokenizer.decode(tokens))
        if len(args.prompt) > 1:
            print("---")
    return 0
