"""The tool registry: each tool's name, description and JSON Schema of its arguments.

:meth:`Registry.call` is the one entry point that runs a call: the arguments are checked
against the tool's schema (jsonschema) before the tool sees them, and any failure becomes
an error result, so nothing a model writes can stop the agent.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema

from .protocol import (
    ToolCall,
    ToolFailure,
    error_message,
    loads_bounded,
    result_message,
    schema_error,
    to_call,
)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict
    run: Callable[[dict], Any]

    def spec(self) -> dict:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


class Registry:
    def __init__(self, tools: Iterable[Tool]):
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            jsonschema.Draft202012Validator.check_schema(tool.parameters)
            if tool.name in self.tools:
                raise ValueError(f"tool {tool.name!r} registered twice")
            self.tools[tool.name] = tool

    def specs(self) -> list[dict]:
        return [t.spec() for t in self.tools.values()]

    def prompt(self) -> str:
        """The registry as it goes into a prompt: one line per tool, its arguments and their schemas."""
        lines = ['Call a tool with {"name": TOOL, "arguments": {...}}; finish with {"answer": "..."}. Tools:']
        lines += [f"{t.name}: {t.description} arguments: {json.dumps(t.parameters, separators=(',', ':'))}"
                  for t in self.tools.values()]
        return "\n".join(lines)

    def brief(self) -> str:
        """The registry in one short line (tool names and argument names), for small models' contexts."""
        return "tools: " + "; ".join(f"{t.name}({', '.join(t.parameters.get('properties', {}))})"
                                     for t in self.tools.values())

    def call(self, call: ToolCall) -> dict:
        tool = self.tools.get(call.name)
        if tool is None:
            return error_message(call.id, call.name, ToolFailure(
                "UnknownTool", f"no tool {call.name!r}; the tools are {', '.join(self.tools)}"))
        problem = schema_error(tool.parameters, call.arguments)
        if problem:
            return error_message(call.id, call.name, ToolFailure("InvalidArguments", problem))
        try:
            return result_message(call.id, call.name, tool.run(call.arguments))
        except ToolFailure as failure:
            return error_message(call.id, call.name, failure)
        except (RecursionError, MemoryError, ValueError, TypeError, ArithmeticError, OSError) as e:
            return error_message(call.id, call.name, ToolFailure(type(e).__name__, str(e) or type(e).__name__))

    def call_text(self, text: str) -> dict:
        """Parse and run one call given as JSON text; a malformed call is an error result too."""
        try:
            call = to_call(loads_bounded(text))
        except ToolFailure as failure:
            return {"id": None, "name": None, "error": {"type": failure.type, "message": failure.message}}
        return self.call(call)
