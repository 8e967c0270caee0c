"""Constrained decoding: a mask on the logits that lets a model emit only valid tool calls.

The registry's schemas are compiled to a character automaton (an NFA) over compact JSON:
objects with their declared properties in declared order (required ones always, optional
ones or not), strings of printable ASCII without escapes, integers and decimals, arrays,
enums and ``anyOf``/``oneOf``.  That is a subset of JSON Schema and of JSON's syntax, and
every text it accepts is valid JSON that validates.  At each step :class:`JsonConstraint`
allows the tokens whose text keeps the output a prefix of some accepted text (a walk of a
trie of the vocabulary, cached per automaton state set), and only EOS once the value is
complete.  :func:`alphaexa.model.generate.generate` applies it through ``allowed_tokens``.

Not covered: string escapes and non-ASCII text, whitespace between tokens, ``patternProperties``,
free-form objects (``{"type": "object"}`` without properties accepts only ``{}``).  A string has
no length bound in the automaton, so ``max_new_tokens`` can still cut a call short.
"""
from __future__ import annotations

import json
from collections.abc import Callable

import torch

from .registry import Registry

STRING_CHARS = frozenset(chr(c) for c in range(32, 127)) - {'"', "\\"}
DIGITS = frozenset("0123456789")
Fragment = Callable[[int], int]  # builds its states ending in the given state; returns its start state


class Automaton:
    def __init__(self):
        self.edges: list[list[tuple[frozenset[str] | None, int]]] = []
        self._step_cache: dict[tuple[frozenset[int], str], frozenset[int]] = {}

    def state(self) -> int:
        self.edges.append([])
        return len(self.edges) - 1

    def closure(self, states) -> frozenset[int]:
        seen, todo = set(states), list(states)
        while todo:
            for chars, target in self.edges[todo.pop()]:
                if chars is None and target not in seen:
                    seen.add(target)
                    todo.append(target)
        return frozenset(seen)

    def step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        key = (states, ch)
        if key not in self._step_cache:
            self._step_cache[key] = self.closure(
                {t for s in states for chars, t in self.edges[s] if chars is not None and ch in chars})
        return self._step_cache[key]


def _chars(a: Automaton, charset: frozenset[str]) -> Fragment:
    def build(nxt: int) -> int:
        s = a.state()
        a.edges[s].append((charset, nxt))
        return s
    return build


def _seq(*parts: Fragment) -> Fragment:
    def build(nxt: int) -> int:
        for part in reversed(parts):
            nxt = part(nxt)
        return nxt
    return build


def _literal(a: Automaton, text: str) -> Fragment:
    return _seq(*[_chars(a, frozenset(ch)) for ch in text])


def _alt(a: Automaton, *parts: Fragment) -> Fragment:
    def build(nxt: int) -> int:
        s = a.state()
        a.edges[s].extend((None, part(nxt)) for part in parts)
        return s
    return build


def _star(a: Automaton, part: Fragment) -> Fragment:
    def build(nxt: int) -> int:
        loop = a.state()
        a.edges[loop].append((None, nxt))
        a.edges[loop].append((None, part(loop)))
        return loop
    return build


def _empty(nxt: int) -> int:
    return nxt


def schema_fragment(a: Automaton, schema: dict) -> Fragment:
    if "enum" in schema:
        return _alt(a, *[_literal(a, json.dumps(v, separators=(",", ":"))) for v in schema["enum"]])
    if "anyOf" in schema or "oneOf" in schema:
        return _alt(a, *[schema_fragment(a, s) for s in schema.get("anyOf", schema.get("oneOf"))])
    kind = schema.get("type")
    if kind == "string":
        return _seq(_literal(a, '"'), _star(a, _chars(a, STRING_CHARS)), _literal(a, '"'))
    if kind in ("integer", "number"):
        digit = _chars(a, DIGITS)
        integer = _seq(_alt(a, _literal(a, "-"), _empty),
                       _alt(a, _literal(a, "0"), _seq(_chars(a, DIGITS - {"0"}), _star(a, digit))))
        if kind == "integer":
            return integer
        return _seq(integer, _alt(a, _empty, _seq(_literal(a, "."), digit, _star(a, digit))))
    if kind == "boolean":
        return _alt(a, _literal(a, "true"), _literal(a, "false"))
    if kind == "array":
        item = schema_fragment(a, schema.get("items", {"type": "string"}))
        items = _seq(item, _star(a, _seq(_literal(a, ","), item)))
        return _seq(_literal(a, "["), items if schema.get("minItems", 0) >= 1 else _alt(a, _empty, items),
                    _literal(a, "]"))
    if kind == "object":
        return _object(a, schema)
    raise ValueError(f"constrained decoding does not cover the schema {json.dumps(schema)[:200]}")


def _object(a: Automaton, schema: dict) -> Fragment:
    properties = list(schema.get("properties", {}).items())
    required = set(schema.get("required", []))

    def build(nxt: int) -> int:
        memo: dict[tuple[int, bool], int] = {}
        close = _literal(a, "}")(nxt)

        def rest(i: int, first: bool) -> int:
            """The state before property i, or before the closing brace when i is past the last."""
            if (i, first) in memo:
                return memo[i, first]
            if i == len(properties):
                memo[i, first] = close
                return close
            name, sub = properties[i]
            start = a.state()
            memo[i, first] = start
            key = _literal(a, ("" if first else ",") + json.dumps(name) + ":")
            a.edges[start].append((None, _seq(key, schema_fragment(a, sub))(rest(i + 1, False))))
            if name not in required:
                a.edges[start].append((None, rest(i + 1, first)))
            return start

        return _literal(a, "{")(rest(0, True))
    return build


def turn_automaton(registry: Registry) -> tuple[Automaton, frozenset[int], int]:
    """The automaton of one model turn: a call of any registered tool, or ``{"answer": "..."}``.
    Returns (automaton, start state set, accepting state)."""
    a = Automaton()
    calls = [_seq(_literal(a, '{"name":' + json.dumps(tool.name) + ',"arguments":'),
                  schema_fragment(a, tool.parameters), _literal(a, "}")) for tool in registry.tools.values()]
    answer = _seq(_literal(a, '{"answer":'), schema_fragment(a, {"type": "string"}), _literal(a, "}"))
    accept = a.state()
    start = _alt(a, *calls, answer)(accept)
    return a, a.closure({start}), accept


class JsonConstraint:
    """``allowed_tokens`` for :func:`~alphaexa.model.generate.generate`: each row may only write a
    valid turn, then EOS.  ``token_text[i]`` is the text of token i (None: never allowed)."""

    def __init__(self, registry: Registry, token_text: list[str | None], eos_id: int):
        self.automaton, self.start, self.accept = turn_automaton(registry)
        self.token_text, self.eos_id, self.vocab_size = token_text, eos_id, len(token_text)
        self.trie: dict = {}
        for token, text in enumerate(token_text):
            if text:
                node = self.trie
                for ch in text:
                    node = node.setdefault(ch, {})
                node.setdefault(None, []).append(token)
        self._masks: dict[frozenset[int], torch.Tensor] = {}
        self._rows: dict[int, tuple[int, frozenset[int]]] = {}

    def reset(self) -> None:
        self._rows.clear()

    def states_after(self, text: str, states: frozenset[int] | None = None) -> frozenset[int]:
        states = self.start if states is None else states
        for ch in text:
            states = self.automaton.step(states, ch)
        return states

    def __call__(self, row: int, tokens: list[int]) -> torch.Tensor:
        done, states = self._rows.get(row, (0, self.start))
        if done > len(tokens):  # a new generation reuses the row
            done, states = 0, self.start
        for token in tokens[done:]:
            states = self.states_after(self.token_text[token] or "", states)
        self._rows[row] = (len(tokens), states)
        if states not in self._masks:
            self._masks[states] = self._mask(states)
        return self._masks[states]

    def _mask(self, states: frozenset[int]) -> torch.Tensor:
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if self.accept in states:
            mask[self.eos_id] = True
        stack = [(self.trie, states)]
        while stack:
            node, here = stack.pop()
            for ch, child in node.items():
                if ch is None:
                    mask[child] = True
                    continue
                after = self.automaton.step(here, ch)
                if after:
                    stack.append((child, after))
        return mask


def byte_token_text(vocab_size: int = 256) -> list[str | None]:
    """Token texts of the byte tokenizer: printable ASCII only (ids 32..126)."""
    return [chr(i) if 32 <= i < 127 else None for i in range(vocab_size)]
