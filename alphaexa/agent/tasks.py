"""Synthetic tool-use tasks for training and evaluating a model's tool calls.

Each task is a question, the math-tool call that answers it, and the expected final answer
(computed by the math tool's own code).  Kinds: arithmetic, linear equations, unit
conversion, derivatives.  :func:`split` draws disjoint training and held-out sets: no
held-out question appears in training.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

from .mathtool import compute, render

UNITS = {("km", "m"): 1000, ("m", "cm"): 100, ("kg", "g"): 1000, ("h", "min"): 60, ("min", "s"): 60,
         ("l", "ml"): 1000}
KINDS = ("arithmetic", "algebra", "units", "derivative")


@dataclass(frozen=True)
class Task:
    kind: str
    question: str
    arguments: dict
    result: object  # what the math tool returns
    answer: str

    def conversation(self, system: str) -> list[dict]:
        """The worked example: the call, the tool's result, the answer."""
        call = json.dumps({"name": "math", "arguments": self.arguments}, separators=(",", ":"))
        return [{"role": "system", "content": system}, {"role": "user", "content": self.question},
                {"role": "assistant", "content": call},
                {"role": "tool", "content": json.dumps({"result": self.result}, separators=(",", ":"))},
                {"role": "assistant", "content": json.dumps({"answer": self.answer}, separators=(",", ":"))}]


def _question(kind: str, rng: random.Random) -> tuple[str, dict]:
    if kind == "arithmetic":
        expr = f"{rng.randint(2, 99)}{rng.choice('+-*')}{rng.randint(2, 99)}{rng.choice('+-*')}{rng.randint(2, 99)}"
        return f"What is {expr}?", {"op": "evaluate", "expr": expr}
    if kind == "algebra":
        a, x, b = rng.randint(2, 9), rng.randint(-20, 20), rng.randint(1, 50)
        equation = f"{a}*x+{b}={a * x + b}"
        return f"Solve {equation}.", {"op": "solve", "expr": equation}  # one variable: the tool finds it
    if kind == "units":
        (src, dst), factor = rng.choice(sorted(UNITS.items()))
        value = rng.randint(2, 999)
        return f"Convert {value} {src} to {dst}.", {"op": "evaluate", "expr": f"{value}*{factor}"}
    a, n = rng.randint(2, 9), rng.randint(2, 6)
    expr = f"{a}*x^{n} + {rng.randint(2, 9)}*x"
    return f"Differentiate {expr}.", {"op": "diff", "expr": expr, "symbol": "x"}


def make_task(kind: str, rng: random.Random) -> Task:
    question, arguments = _question(kind, rng)
    result = render(compute(arguments))
    answer = result[0] if isinstance(result, list) and len(result) == 1 else str(result)
    return Task(kind, question, arguments, result, answer)


def split(n_train: int, n_heldout: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> tuple[list[Task], list[Task]]:
    rng = random.Random(seed)
    heldout: dict[str, Task] = {}
    while len(heldout) < n_heldout:
        task = make_task(kinds[len(heldout) % len(kinds)], rng)
        heldout.setdefault(task.question, task)
    train: list[Task] = []
    while len(train) < n_train:
        task = make_task(kinds[len(train) % len(kinds)], rng)
        if task.question not in heldout:
            train.append(task)
    return train, list(heldout.values())
