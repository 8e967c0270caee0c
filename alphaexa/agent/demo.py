"""``alphaexa agent --demo``: teach a small byte-level model to use the math tool, then measure it.

1. Synthetic tasks (:mod:`alphaexa.agent.tasks`), disjoint training and held-out sets.
2. Each worked example goes through the chat template (:mod:`alphaexa.data.chat`): the loss
   is only on the model's own turns (the call and the final answer).
3. A small dense model trains for a few minutes on the CPU (AdamW, warmup + cosine).  Its job
   is mostly copying (the question's expression into the call, the tool's result into the
   answer), so it is shaped for that: few layers, several RoPE heads, short conversations.
4. On the held-out tasks the agent loop runs the model with and without the JSON constraint:
   the share solved (the final answer equals the math tool's answer to the question), and the
   share of the model's turns that were valid calls or answers.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from topology.presets import get_preset

from ..data.chat import render
from ..data.tokenizer import ByteTokenizer
from ..model.transformer import build_model
from .constrain import JsonConstraint, byte_token_text
from .loop import ModelPolicy, run_task
from .mathtool import math_tool
from .registry import Registry
from .tasks import split

KINDS = ("arithmetic", "algebra", "units")

# Two layers of four RoPE heads: copying a span needs a head that reads the previous token and one
# that matches on it (an induction pair), and little else; d_model 64 keeps a step ~0.2 s on 2 cores.
MODEL = replace(get_preset("debug"), name="agent-demo", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4,
                d_ff=192, moe_every=0, n_experts=0, max_seq_len=256)
MAX_NEW_TOKENS = 96  # the longest call of these tasks is ~70 characters


def _batches(examples: list[tuple[list[int], list[bool]]], batch_size: int, rng: random.Random):
    while True:
        rows = rng.sample(examples, batch_size)
        width = max(len(ids) for ids, _ in rows) - 1
        inputs = torch.zeros(batch_size, width, dtype=torch.long)
        targets = torch.full((batch_size, width), -100, dtype=torch.long)
        for b, (ids, mask) in enumerate(rows):
            inputs[b, :len(ids) - 1] = torch.tensor(ids[:-1])
            keep = torch.tensor(mask[1:])
            targets[b, :len(ids) - 1] = torch.where(keep, torch.tensor(ids[1:]), torch.tensor(-100))
        yield inputs, targets


def train(model, examples, steps: int, batch_size: int = 32, lr: float = 5e-3, warmup: int = 100, seed: int = 0,
          log=print) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(min(warmup, steps // 4), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s / steps, 1.0)))))
    batches, losses = _batches(examples, batch_size, random.Random(seed)), []
    model.train()
    started = time.monotonic()
    for step, (inputs, targets) in zip(range(1, steps + 1), batches):
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps:
            log(f"step {step:5d}  loss on the model's turns {sum(losses[-100:]) / len(losses[-100:]):.4f}  "
                f"{step / (time.monotonic() - started):.2f} steps/s")
    return losses


def evaluate(model, tokenizer, registry: Registry, tasks, constrained: bool, transcripts: Path | None) -> dict:
    constraint = JsonConstraint(registry, byte_token_text(), tokenizer.eos_id) if constrained else None
    policy = ModelPolicy(model, tokenizer, constraint, max_new_tokens=MAX_NEW_TOKENS)
    turns = valid = 0
    solved: dict[str, list[bool]] = {}
    for i, task in enumerate(tasks):
        path = transcripts / f"task{i:04d}.jsonl" if transcripts else None
        outcome = run_task(task.question, policy, registry, path, max_steps=3, system=registry.brief())
        solved.setdefault(task.kind, []).append(outcome.answer == task.answer)
        turns += outcome.turns
        valid += outcome.valid_turns
    return {"tasks": len(tasks), "solved": sum(map(sum, solved.values())) / len(tasks),
            "solved_by_kind": {kind: sum(hits) / len(hits) for kind, hits in solved.items()},
            "turns": turns, "valid_json_turns": valid / max(turns, 1)}


def run_demo(out_dir: Path, steps: int = 2000, n_train: int = 4000, n_heldout: int = 100, seed: int = 0,
             batch_size: int = 32, log=print) -> dict:
    started = time.monotonic()
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = ByteTokenizer()
    registry = Registry([math_tool()])
    train_tasks, heldout = split(n_train, n_heldout, seed, KINDS)
    system = registry.brief()
    examples = [render(t.conversation(system), tokenizer) for t in train_tasks]
    longest = max(len(ids) for ids, _ in examples)
    if longest > MODEL.max_seq_len:
        raise ValueError(f"a training conversation has {longest} tokens; the demo model holds {MODEL.max_seq_len}")
    model = build_model(MODEL, seed=seed)
    log(f"training {MODEL.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) on "
        f"{len(train_tasks)} worked tasks ({', '.join(KINDS)}) for {steps} steps of {batch_size}, "
        f"{torch.get_num_threads()} threads; {len(heldout)} held-out tasks")
    losses = train(model, examples, steps, batch_size=batch_size, seed=seed, log=log)
    trained_s = time.monotonic() - started
    torch.save(model.state_dict(), out_dir / "model.pt")
    (out_dir / "model.json").write_text(json.dumps(MODEL.to_dict(), indent=2))
    model.eval()
    results = {}
    for constrained in (True, False):
        name = "constrained" if constrained else "unconstrained"
        transcripts = out_dir / f"transcripts-{name}"
        transcripts.mkdir(exist_ok=True)
        results[name] = evaluate(model, tokenizer, registry, heldout, constrained, transcripts)
        log(f"held-out, {name:13s}: solved {results[name]['solved']:.1%}, valid JSON turns "
            f"{results[name]['valid_json_turns']:.1%} of {results[name]['turns']}")
    summary = {"model": MODEL.name, "steps": steps, "batch_size": batch_size, "threads": torch.get_num_threads(),
               "train_tasks": len(train_tasks), "heldout_tasks": len(heldout),
               "final_loss": sum(losses[-50:]) / len(losses[-50:]), "train_seconds": round(trained_s, 1),
               "total_seconds": round(time.monotonic() - started, 1),
               "load_average_at_end": [round(x, 2) for x in os.getloadavg()], **results}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done in {summary['total_seconds']:.0f} s; weights, transcripts and summary.json in {out_dir}")
    return summary
