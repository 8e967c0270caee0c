"""The JSON tool-call protocol (docs/agent.md).

A call is ``{"id": "1", "name": "python", "arguments": {"code": "print(2+2)"}}``; ``id`` is
optional (the caller numbers calls without one).  Its outcome is either
``{"id", "name", "result"}`` or ``{"id", "name", "error": {"type", "message"}}``.  A model's
turn is a call or a final answer, ``{"answer": "..."}``.

Text from a model or a user is parsed with bounds first: size, nesting depth, digits of a
number, so a JSON bomb is an error result and never a hang or a crash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

MAX_MESSAGE_CHARS = 1 << 20
MAX_DEPTH = 32
MAX_NUMBER_CHARS = 100

CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 64},
        "name": {"type": "string", "pattern": "^[a-z_][a-z0-9_]{0,63}$"},
        "arguments": {"type": "object"},
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 10000}},
    "required": ["answer"],
    "additionalProperties": False,
}


class ToolFailure(Exception):
    """A call that ends as an error result: ``type`` names the kind, the message is one line."""

    def __init__(self, type_: str, message: str):
        super().__init__(message)
        self.type = type_
        self.message = " ".join(str(message).split())[:2000]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


def result_message(call_id: str, name: str, result: Any) -> dict:
    return {"id": call_id, "name": name, "result": result}


def error_message(call_id: str, name: str, failure: ToolFailure) -> dict:
    return {"id": call_id, "name": name, "error": {"type": failure.type, "message": failure.message}}


def _bounded_number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ToolFailure("MalformedCall", f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if value in (float("inf"), float("-inf")):
        raise ToolFailure("MalformedCall", f"number {text[:20]} overflows a double")
    return value


def _refuse_constant(name: str) -> None:
    raise ToolFailure("MalformedCall", f"{name} is not JSON")


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting outside strings (checked before json.loads recurses)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads_bounded(text: str) -> Any:
    """``json.loads`` with the size, depth and number bounds above; raises ToolFailure("MalformedCall")."""
    if not isinstance(text, str):
        raise ToolFailure("MalformedCall", f"a call must be JSON text, got {type(text).__name__}")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ToolFailure("MalformedCall", f"message of {len(text)} characters (at most {MAX_MESSAGE_CHARS})")
    if _nesting_depth(text) > MAX_DEPTH:
        raise ToolFailure("MalformedCall", f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_bounded_number, parse_float=_bounded_number,
                          parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ToolFailure("MalformedCall", f"not valid JSON: {e}") from None


def parse_turn(text: str) -> ToolCall | str:
    """A model's turn: a :class:`ToolCall`, or the final answer as a string."""
    obj = loads_bounded(text.strip())
    if isinstance(obj, dict) and set(obj) == {"answer"}:
        if not isinstance(obj["answer"], str):
            raise ToolFailure("MalformedCall", "answer must be a string")
        return obj["answer"]
    return to_call(obj)


def schema_error(schema: dict, value: Any) -> str | None:
    """The most relevant violation of ``schema`` by ``value``, as one line, or None."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message[:300]}"


def to_call(obj: Any, default_id: str = "1") -> ToolCall:
    problem = schema_error(CALL_SCHEMA, obj)
    if problem:
        raise ToolFailure("MalformedCall", f"not a tool call ({problem}); expected "
                                           '{"id": "1", "name": "TOOL", "arguments": {...}}')
    return ToolCall(obj.get("id", default_id), obj["name"], obj["arguments"])
