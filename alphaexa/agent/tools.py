"""The python and shell tools (both run in the :class:`~alphaexa.agent.sandbox.Sandbox`) and
the default registry of all tools."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .protocol import ToolFailure
from .registry import Registry, Tool
from .sandbox import Sandbox

MAX_CODE_CHARS = 100_000
# Programs that read and write only the files named on their command line.  Left out on
# purpose: anything that runs other programs (sh, env, xargs, find -exec, sed's `e`,
# awk's system(), tar --to-command, timeout, nice) or reaches the network.
SHELL_PROGRAMS = ("base64", "cat", "cp", "cut", "diff", "echo", "head", "ls", "md5sum", "mkdir", "mv", "nl",
                  "rm", "rmdir", "sha256sum", "sort", "stat", "tail", "touch", "tr", "uniq", "wc", "grep")
MAX_ARGS = 256
MAX_ARG_CHARS = 4096


def confined_path(scratch: Path, word: str) -> None:
    """Refuse ``word`` when, read as a path relative to the scratch directory (symlinks
    resolved), it leaves it; absolute paths are refused outright."""
    if "\0" in word:
        raise ToolFailure("PathOutsideScratch", "an argument holds a NUL byte")
    if word.startswith(("/", "~")):
        raise ToolFailure("PathOutsideScratch", f"absolute path {word[:200]!r}: paths are relative to the scratch directory")
    resolved = os.path.realpath(os.path.join(scratch, word))
    if resolved != str(scratch) and not resolved.startswith(str(scratch) + os.sep):
        raise ToolFailure("PathOutsideScratch", f"{word[:200]!r} resolves outside the scratch directory")


def python_tool(sandbox: Sandbox) -> Tool:
    def run(arguments: dict) -> dict:
        # -I: no environment variables, no user site, no script directory on sys.path; the code comes on stdin.
        return sandbox.run([sys.executable, "-I", "-"], stdin=arguments["code"].encode()).as_result()

    return Tool("python", "Run Python 3 code in a fresh sandboxed process (no network; files stay in the "
                          "scratch directory); returns stdout, stderr, exit_code and the files it made.",
                {"type": "object", "properties": {"code": {"type": "string", "maxLength": MAX_CODE_CHARS}},
                 "required": ["code"], "additionalProperties": False}, run)


def shell_tool(sandbox: Sandbox) -> Tool:
    def run(arguments: dict) -> dict:
        argv = arguments["argv"]
        program = argv[0]
        if program not in SHELL_PROGRAMS:
            raise ToolFailure("ProgramNotAllowed", f"{program[:100]!r} is not an allowed program; allowed: "
                                                   f"{', '.join(SHELL_PROGRAMS)}")
        executable = shutil.which(program, path="/usr/bin:/bin")
        if executable is None:
            raise ToolFailure("ProgramNotAllowed", f"{program!r} is not installed on this host")
        for word in argv[1:]:
            # "--file=PATH" carries a path too; a bare option is only checked for that value.
            confined_path(sandbox.scratch, word.split("=", 1)[1] if word.startswith("-") and "=" in word
                          else word if not word.startswith("-") else ".")
        return sandbox.run([executable, *argv[1:]]).as_result()

    return Tool("shell", f"Run one program from an argv list, without a shell, in the sandbox; paths are "
                         f"relative to the scratch directory. Programs: {', '.join(SHELL_PROGRAMS)}.",
                {"type": "object",
                 "properties": {"argv": {"type": "array", "minItems": 1, "maxItems": MAX_ARGS,
                                         "items": {"type": "string", "maxLength": MAX_ARG_CHARS}}},
                 "required": ["argv"], "additionalProperties": False}, run)


def default_registry(sandbox: Sandbox, http_config: str | Path | None = None) -> Registry:
    from .http import http_tool
    from .mathtool import math_tool

    tools = [math_tool(sandbox.limits.wall_s), python_tool(sandbox), shell_tool(sandbox)]
    if http_config is not None:
        tools.append(http_tool(http_config))
    return Registry(tools)
