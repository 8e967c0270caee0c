"""The ``alphaexa`` command line.

Each subcommand is a module in ``alphaexa/commands/`` that defines ``NAME``,
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.  Modules keep heavy
imports (torch) inside ``run`` so that ``alphaexa --help`` and torch-free
commands (``plan``, ``topo``, ``describe``) start fast.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from . import commands as _commands


def _load_commands():
    mods = []
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{_commands.__name__}.{info.name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphaexa", description="AlphaExa: train hybrid dense + MoE transformers on CPU, NVIDIA and Intel XPU.")
    parser.add_argument("--version", action="version", version=f"alphaexa {__version__}")
    parser.add_argument("--backend", default=None,
                        help="force the device backend (cpu|cuda|xpu); default: $ALPHAEXA_BACKEND or auto")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend:
        import os

        os.environ["ALPHAEXA_BACKEND"] = args.backend
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from .errors import ONE_LINE_ERRORS

    try:
        return int(args._run(args) or 0)
    except ONE_LINE_ERRORS as e:
        print(f"alphaexa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alphaexa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
