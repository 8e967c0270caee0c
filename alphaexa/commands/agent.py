"""``alphaexa agent``: run the tool-using agent loop with AlphaExa's own model, or the tool-use demo."""
from __future__ import annotations

import argparse

NAME = "agent"
HELP = "run the agent loop (model -> JSON tool call -> sandboxed tool -> observation) on a task, or --demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo", action="store_true",
                        help="train a small model to use the math tool on the CPU, then measure it on held-out tasks")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a training run / checkpoint, or a directory with model.pt and model.json (the demo's)")
    parser.add_argument("--model", metavar="NAME|FILE", help="model preset or config (default: the checkpoint's)")
    parser.add_argument("--task", help="the task for the agent")
    parser.add_argument("--transcript", metavar="FILE", help="JSONL transcript (default: agent-transcript.jsonl)")
    parser.add_argument("--max-steps", type=int, default=4, metavar="N")
    parser.add_argument("--max-new-tokens", type=int, default=160, metavar="N")
    parser.add_argument("--no-constraint", action="store_true", help="decode without the JSON-schema logits mask")
    parser.add_argument("--brief-prompt", action="store_true",
                        help="the one-line tool list as the system prompt (what the demo model was trained on)")
    parser.add_argument("--tools", default="math,python,shell", help="comma-separated tools to offer")
    parser.add_argument("--workdir", metavar="DIR", help="scratch directory of python/shell")
    parser.add_argument("--http-config", metavar="FILE", help="endpoints of the http tool")
    parser.add_argument("--out", metavar="DIR", help="demo output directory (default: runs/agent-demo-TIMESTAMP)")
    parser.add_argument("--steps", type=int, metavar="N", help="demo training steps (default: the demo's own)")


def _load_model(args):
    import json
    from pathlib import Path

    from topology.modelcfg import ModelConfig
    from topology.presets import resolve_model

    from ..data.tokenizer import load_tokenizer
    from ..errors import UserError
    from ..model.generate import load_model_for_generation
    from ..train.restore import is_training_checkpoint, load_trained_model

    if is_training_checkpoint(args.checkpoint):
        trained = load_trained_model(args.checkpoint)
        return trained.model.eval(), trained.tokenizer or load_tokenizer("byte")
    path = Path(args.checkpoint)
    config = path / "model.json" if path.is_dir() else None
    if args.model:
        cfg = resolve_model(args.model)
    elif config is not None and config.is_file():
        cfg = ModelConfig.from_dict(json.loads(config.read_text()), where=str(config))
    else:
        raise UserError(f"{args.checkpoint} is neither a training checkpoint nor a directory with model.pt and "
                        "model.json; give --model for a bare state dict")
    return load_model_for_generation(path, cfg), load_tokenizer("byte")


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from ..errors import UserError

    if args.demo:
        if args.steps is not None and args.steps < 1:
            raise UserError(f"--steps must be at least 1, got {args.steps}")
        import torch

        from ..agent.demo import run_demo

        torch.set_num_threads(min(torch.get_num_threads(), 2))
        out = Path(args.out or f"runs/agent-demo-{time.strftime('%Y%m%d-%H%M%S')}")
        run_demo(out, **({} if args.steps is None else {"steps": args.steps}))
        return 0
    if not args.checkpoint or not args.task:
        raise UserError("give --checkpoint PATH and --task TEXT (or --demo)")
    from ..agent.constrain import JsonConstraint, byte_token_text
    from ..agent.loop import ModelPolicy, run_task
    from ..agent.registry import Registry
    from ..agent.sandbox import Sandbox
    from ..agent.tools import default_registry

    model, tokenizer = _load_model(args)
    with Sandbox(args.workdir) as sandbox:
        full = default_registry(sandbox, args.http_config)
        wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in full.tools]
        if unknown:
            raise UserError(f"unknown tools {', '.join(unknown)}; available: {', '.join(full.tools)}")
        registry = Registry([full.tools[t] for t in wanted])
        constraint = None
        if not args.no_constraint:
            if tokenizer.kind != "byte":
                raise UserError("the JSON constraint covers the byte tokenizer only; use --no-constraint")
            constraint = JsonConstraint(registry, byte_token_text(tokenizer.vocab_size), tokenizer.eos_id)
        policy = ModelPolicy(model, tokenizer, constraint, max_new_tokens=args.max_new_tokens)
        transcript = args.transcript or "agent-transcript.jsonl"
        outcome = run_task(args.task, policy, registry, transcript, max_steps=args.max_steps,
                           system=registry.brief() if args.brief_prompt else None)
    print(json.dumps({"answer": outcome.answer, "steps": outcome.steps, "transcript": transcript}))
    return 0
