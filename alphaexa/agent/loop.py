"""The agent loop: prompt with the tool registry -> model turn -> tool call -> observation, until an
answer or the step limit; one JSONL transcript per task.

A policy maps the conversation so far to the model's next turn (text).  :class:`ScriptedPolicy`
replays given turns (tests); :class:`ModelPolicy` asks AlphaExa's own model through
:func:`alphaexa.model.generate.generate`, optionally under :class:`~alphaexa.agent.constrain.JsonConstraint`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import ToolCall, ToolFailure, parse_turn
from .registry import Registry

Policy = Callable[[list[dict]], str]


@dataclass
class Outcome:
    answer: str | None
    steps: int
    turns: int = 0
    valid_turns: int = 0
    messages: list[dict] = field(default_factory=list)


class ScriptedPolicy:
    """Replies with the given turns in order, whatever it is asked."""

    def __init__(self, turns: list[str]):
        self.turns = list(turns)

    def __call__(self, messages: list[dict]) -> str:
        if not self.turns:
            raise ToolFailure("ScriptExhausted", "the scripted policy has no turns left")
        return self.turns.pop(0)


class ModelPolicy:
    def __init__(self, model, tokenizer, constraint=None, max_new_tokens: int = 160, temperature: float = 0.0):
        self.model, self.tokenizer, self.constraint = model, tokenizer, constraint
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def __call__(self, messages: list[dict]) -> str:
        from ..data.chat import prompt
        from ..model.generate import generate

        ids = prompt(messages, self.tokenizer)
        room = self.model.cfg.max_seq_len - len(ids) + 1
        if room < 2:
            raise ToolFailure("ContextFull", f"the conversation ({len(ids)} tokens) fills the model's context")
        if self.constraint is not None:
            self.constraint.reset()
        out = generate(self.model, [ids], min(self.max_new_tokens, room), temperature=self.temperature,
                       eos_id=self.tokenizer.eos_id, seed=0, allowed_tokens=self.constraint)
        return self.tokenizer.decode(out.tokens[0])


def observation(result: dict) -> str:
    """A tool's outcome as the model reads it (the call id and name are in the call already)."""
    return json.dumps({k: v for k, v in result.items() if k in ("result", "error")}, separators=(",", ":"))


def run_task(task: str, policy: Policy, registry: Registry, transcript: str | Path | None = None,
             max_steps: int = 4, system: str | None = None) -> Outcome:
    messages = [{"role": "system", "content": registry.prompt() if system is None else system},
                {"role": "user", "content": task}]
    outcome = Outcome(None, 0, messages=messages)
    log = open(transcript, "w") if transcript else None  # noqa: SIM115 -- closed in finally
    try:
        for message in messages:
            _log(log, 0, message)
        for step in range(1, max_steps + 1):
            outcome.steps = step
            try:
                text = policy(messages)
            except ToolFailure as failure:
                _log(log, step, {"role": "error", "content": failure.message, "type": failure.type})
                break
            messages.append({"role": "assistant", "content": text})
            _log(log, step, messages[-1])
            outcome.turns += 1
            try:
                turn = parse_turn(text)
            except ToolFailure as failure:
                result = {"id": None, "name": None, "error": {"type": failure.type, "message": failure.message}}
            else:
                outcome.valid_turns += 1
                if not isinstance(turn, ToolCall):
                    outcome.answer = turn
                    _log(log, step, {"role": "answer", "content": turn})
                    break
                result = registry.call(ToolCall(str(step), turn.name, turn.arguments))
            messages.append({"role": "tool", "content": observation(result)})
            _log(log, step, {**messages[-1], "outcome": result})
    finally:
        if log:
            log.close()
    return outcome


def _log(log, step: int, record: dict) -> None:
    if log:
        log.write(json.dumps({"step": step, **record}) + "\n")
        log.flush()
