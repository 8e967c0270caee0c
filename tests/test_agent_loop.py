"""The agent loop with a scripted policy and with the model, constrained decoding, the chat template."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from alphaexa.agent.constrain import JsonConstraint, byte_token_text
from alphaexa.agent.loop import ModelPolicy, ScriptedPolicy, run_task
from alphaexa.agent.mathtool import math_tool
from alphaexa.agent.protocol import parse_turn
from alphaexa.agent.registry import Registry
from alphaexa.agent.sandbox import Sandbox
from alphaexa.agent.tasks import split
from alphaexa.agent.tools import default_registry
from alphaexa.cli import main
from alphaexa.data.chat import render
from alphaexa.data.tokenizer import ByteTokenizer
from alphaexa.model.generate import generate
from alphaexa.model.transformer import build_model
from topology.presets import get_preset

SMALL = replace(get_preset("debug"), max_seq_len=384)


@pytest.fixture(scope="module")
def registry():
    with Sandbox() as sandbox:
        yield default_registry(sandbox)


def test_scripted_loop_writes_a_transcript(registry, tmp_path):
    turns = ['{"name": "math", "arguments": {"op": "solve", "expr": "2*x = 10"}}',
             "this is not JSON",
             '{"name": "python", "arguments": {"code": "print(6*7)"}}',
             '{"answer": "5"}']
    outcome = run_task("Solve 2x = 10.", ScriptedPolicy(turns), registry, tmp_path / "t.jsonl", max_steps=6)
    assert outcome.answer == "5" and outcome.steps == 4 and (outcome.turns, outcome.valid_turns) == (4, 3)
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["role"] for r in records] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                            "assistant", "tool", "assistant", "answer"]
    assert records[3]["outcome"] == {"id": "1", "name": "math", "result": ["5"]}
    assert records[5]["outcome"]["error"]["type"] == "MalformedCall"
    assert records[7]["outcome"]["result"]["stdout"] == "42\n"
    assert "python" in records[0]["content"] and '"code"' in records[0]["content"]  # the registry is in the prompt


def test_step_limit_ends_the_loop(registry):
    call = '{"name": "math", "arguments": {"op": "evaluate", "expr": "1+1"}}'
    outcome = run_task("loop", ScriptedPolicy([call] * 5), registry, max_steps=3)
    assert outcome.answer is None and outcome.steps == 3


def test_constrained_decoding_always_gives_a_valid_call(registry):
    """An untrained model sampling at temperature 1: every row is a call or answer that parses and validates."""
    model = build_model(SMALL, seed=0)
    constraint = JsonConstraint(registry, byte_token_text(), ByteTokenizer.eos_id)
    out = generate(model, [[65, 66]] * 6, 300, temperature=1.0, eos_id=ByteTokenizer.eos_id, seed=3,
                   allowed_tokens=constraint)
    finished = 0
    for tokens in out.tokens:
        text = ByteTokenizer().decode(tokens)
        if tokens[-1] != ByteTokenizer.eos_id:  # cut by max_new_tokens inside a free-text string
            assert constraint.states_after(text), text
            continue
        finished += 1
        turn = parse_turn(text)
        if not isinstance(turn, str):
            result = registry.call(turn)
            assert result.get("error", {}).get("type") not in ("InvalidArguments", "UnknownTool"), (text, result)
    assert finished >= 1


def test_constraint_forces_the_skeleton():
    registry = Registry([math_tool()])
    constraint = JsonConstraint(registry, byte_token_text(), ByteTokenizer.eos_id)
    allowed = constraint(0, [])
    assert allowed.nonzero().flatten().tolist() == [ord("{")]
    prefix = list(b'{"name":"math","arguments":{"op":"evaluate","expr":"1+1"')
    assert sorted(chr(i) for i in constraint(0, prefix).nonzero().flatten().tolist()) == [",", "}"]
    done = list(b'{"answer":"2"}')
    assert constraint(1, done).nonzero().flatten().tolist() == [ByteTokenizer.eos_id]


def test_chat_template_puts_loss_on_model_turns_only():
    tokenizer = ByteTokenizer()
    task = split(1, 1)[0][0]
    ids, mask = render(task.conversation("tools: math"), tokenizer)
    own = bytes(i for i, m in zip(ids, mask) if m and i != tokenizer.eos_id).decode()
    assert own == json.dumps({"name": "math", "arguments": task.arguments}, separators=(",", ":")) + \
        json.dumps({"answer": task.answer}, separators=(",", ":"))
    assert sum(1 for i, m in zip(ids, mask) if m and i == tokenizer.eos_id) == 2


def test_tasks_split_is_disjoint():
    train, heldout = split(400, 40, seed=1)
    assert not {t.question for t in train} & {t.question for t in heldout}
    assert {t.kind for t in heldout} == {"arithmetic", "algebra", "units", "derivative"}


def test_model_policy_from_a_checkpoint(tmp_path, capsys):
    """`alphaexa agent --checkpoint` runs the loop with weights from disk; untrained weights still
    produce valid turns under the constraint (what the demo measures with trained ones)."""
    model = build_model(SMALL, seed=0)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(SMALL.to_dict()))
    transcript = tmp_path / "run.jsonl"
    assert main(["agent", "--checkpoint", str(tmp_path), "--task", "What is 2+2?", "--tools", "math",
                 "--brief-prompt", "--max-steps", "2", "--max-new-tokens", "60", "--transcript", str(transcript)]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["transcript"] == str(transcript)
    records = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert records[2]["role"] == "assistant"


def test_agent_cli_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.txt").write_text("not a model")
    assert main(["agent", "--checkpoint", str(tmp_path), "--task", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a training checkpoint" in err
    assert main(["agent", "--checkpoint", str(tmp_path / "junk.txt"), "--model", "debug", "--task", "x"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_model_policy_uses_generate(registry):
    policy = ModelPolicy(build_model(SMALL, seed=0), ByteTokenizer(),
                         JsonConstraint(registry, byte_token_text(), ByteTokenizer.eos_id), max_new_tokens=40)
    text = policy([{"role": "user", "content": "hi"}])
    assert text.startswith("{")


def test_demo_smoke(tmp_path):
    """The demo end to end at toy size (a few steps): it trains, saves a loadable model, runs the
    held-out tasks with and without the mask and reports; the full run's figures are in docs/agent.md."""
    from alphaexa.agent.demo import KINDS, run_demo

    summary = run_demo(tmp_path, steps=3, n_train=60, n_heldout=3, batch_size=4, log=lambda line: None)
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored == summary and summary["steps"] == 3 and summary["heldout_tasks"] == 3
    for name in ("constrained", "unconstrained"):
        assert 0 <= summary[name]["solved"] <= 1 and summary[name]["turns"] >= 3
        assert set(summary[name]["solved_by_kind"]) == set(KINDS)
        assert len(list((tmp_path / f"transcripts-{name}").glob("*.jsonl"))) == 3
    assert main(["agent", "--checkpoint", str(tmp_path), "--task", "What is 2+3?", "--tools", "math", "--brief-prompt",
                 "--max-steps", "1", "--max-new-tokens", "40", "--transcript", str(tmp_path / "t.jsonl")]) == 0


def test_demo_rejects_bad_steps(capsys):
    assert main(["agent", "--demo", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_worked_examples_agree_with_the_tool():
    """Each demo kind's worked call, run through the registry, returns the result the example shows."""
    from alphaexa.agent.demo import KINDS
    from alphaexa.agent.protocol import ToolCall

    registry = Registry([math_tool()])
    train, heldout = split(len(KINDS), len(KINDS), seed=3, kinds=KINDS)
    for task in train + heldout:
        outcome = registry.call(ToolCall("1", "math", task.arguments))
        assert outcome["result"] == task.result, (task, outcome)
        assert task.answer in json.dumps(task.result)
