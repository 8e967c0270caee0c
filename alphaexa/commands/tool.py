"""``alphaexa tool``: list the agent's tools, or run one JSON tool call by hand."""
from __future__ import annotations

import argparse
import json

NAME = "tool"
HELP = "list the agent's tools (JSON schemas) or run one tool call: alphaexa tool call '{\"name\": ...}'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the tools with their argument schemas, as JSON")
    listing.add_argument("--prompt", action="store_true", help="print the registry as it goes into a prompt")
    call = sub.add_parser("call", help="run one call; prints {id, name, result} or {id, name, error}")
    call.add_argument("call", metavar="JSON", help='e.g. \'{"id": "1", "name": "python", "arguments": {"code": "print(2+2)"}}\'')
    for p in (listing, call):
        p.add_argument("--http-config", metavar="FILE", help="endpoints of the http tool (TOML/YAML/JSON)")
    call.add_argument("--workdir", metavar="DIR", help="scratch directory (default: a fresh temporary one)")
    call.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wall-clock limit of python/shell")


def run(args: argparse.Namespace) -> int:
    from ..agent.protocol import ToolFailure, loads_bounded, to_call
    from ..agent.sandbox import Limits, Sandbox
    from ..agent.tools import default_registry
    from ..errors import UserError

    with Sandbox(getattr(args, "workdir", None), Limits(wall_s=getattr(args, "timeout", 10.0))) as sandbox:
        registry = default_registry(sandbox, args.http_config)
        if args.action == "list":
            print(registry.prompt() if args.prompt else json.dumps(registry.specs(), indent=2))
            return 0
        try:
            call = to_call(loads_bounded(args.call))
        except ToolFailure as failure:
            raise UserError(f"malformed call: {failure.message}") from None
        if call.name not in registry.tools:
            raise UserError(f"unknown tool {call.name!r}; the tools are {', '.join(registry.tools)}")
        print(json.dumps(registry.call(call)))
    return 0
