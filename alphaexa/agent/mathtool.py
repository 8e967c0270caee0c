"""The math tool: SymPy on expressions from :mod:`alphaexa.agent.mathparse`.

Parsing happens here; the SymPy work runs in a forked child with an address-space and CPU
limit and a wall-clock timeout, because some inputs that parse fine (``expand((x+y+z)^900)``,
a hard integral) would otherwise hold the agent for minutes or exhaust its memory.
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import time

import sympy

from .mathparse import parse_expression, parse_system, symbol
from .protocol import ToolFailure
from .registry import Tool

OPS = ("evaluate", "simplify", "expand", "factor", "solve", "linsolve", "diff", "integrate", "limit", "series")
MAX_RESULT_CHARS = 20_000
WALL_S = 5.0
CPU_S = 5
MEMORY_HEADROOM = 1 << 30

PARAMETERS = {
    "type": "object",
    "properties": {
        "op": {"enum": list(OPS)},
        "expr": {"type": "string", "maxLength": 2000},
        "symbol": {"type": "string", "maxLength": 64,
                   "description": "the variable (solve, diff, integrate, limit, series); "
                                  "comma-separated for a system"},
        "point": {"type": "string", "maxLength": 200, "description": "limit/series point, e.g. 0 or oo"},
        "lower": {"type": "string", "maxLength": 200, "description": "definite integral: lower bound"},
        "upper": {"type": "string", "maxLength": 200, "description": "definite integral: upper bound"},
        "order": {"type": "integer", "minimum": 1, "maximum": 20, "description": "series: number of terms"},
    },
    "required": ["op", "expr"],
    "additionalProperties": False,
}


def _symbols(arguments: dict, expr) -> list[sympy.Symbol]:
    if "symbol" in arguments:
        return [symbol(s.strip()) for s in arguments["symbol"].split(",")]
    free = sorted(getattr(expr, "free_symbols", set()), key=str)
    if not free:
        raise ToolFailure("MathSyntax", "no variable in the expression; give 'symbol'")
    return free


def _one_symbol(arguments: dict, expr) -> sympy.Symbol:
    found = _symbols(arguments, expr)
    if len(found) != 1:
        raise ToolFailure("MathSyntax", f"several variables ({', '.join(map(str, found))}); give 'symbol'")
    return found[0]


def _as_zero(eq):
    return eq.lhs - eq.rhs if isinstance(eq, sympy.Equality) else eq


def compute(arguments: dict):
    """The SymPy object (or list of them) that answers one call; parsing errors raise ToolFailure."""
    op, text = arguments["op"], arguments["expr"]
    if op in ("solve", "linsolve"):
        equations = parse_system(text)
        unknowns = _symbols(arguments, sympy.Tuple(*[_as_zero(e) for e in equations]))
        if op == "linsolve":
            return list(sympy.linsolve([_as_zero(e) for e in equations], unknowns))
        solutions = sympy.solve([_as_zero(e) for e in equations], unknowns, dict=True)
        if len(unknowns) == 1:
            return [s[unknowns[0]] for s in solutions if unknowns[0] in s]
        return solutions
    expr = parse_expression(text)
    if op == "evaluate":
        if expr.is_Rational:  # 2+3*4 is 14, not 14.0000000000000
            return expr
        value = sympy.N(expr, 15)
        if value.free_symbols:
            raise ToolFailure("MathSyntax", f"cannot evaluate numerically: free variables {value.free_symbols}")
        return value
    if op in ("simplify", "expand", "factor"):
        return getattr(sympy, op)(expr)
    var = _one_symbol(arguments, expr)
    if op == "diff":
        return sympy.diff(expr, var, arguments.get("order", 1))
    if op == "integrate":
        if ("lower" in arguments) != ("upper" in arguments):
            raise ToolFailure("MathSyntax", "a definite integral needs both 'lower' and 'upper'")
        if "lower" in arguments:
            return sympy.integrate(expr, (var, parse_expression(arguments["lower"]),
                                          parse_expression(arguments["upper"])))
        return sympy.integrate(expr, var)
    point = parse_expression(arguments.get("point", "0"))
    if op == "limit":
        return sympy.limit(expr, var, point)
    return sympy.series(expr, var, point, arguments.get("order", 6)).removeO()


def render(value) -> object:
    if isinstance(value, dict):
        return {str(k): render(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(v) for v in value]
    text = str(value)
    if len(text) > MAX_RESULT_CHARS:
        raise ToolFailure("MathTooLarge", f"the result has {len(text)} characters (at most {MAX_RESULT_CHARS})")
    return text


def _virtual_memory() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_bounded(arguments: dict, wall_s: float = WALL_S) -> object:
    """:func:`compute` and render in a forked child under limits; the rendered result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_end)
        try:
            limit = _virtual_memory() + MEMORY_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S))
            payload = {"result": render(compute(arguments))}
        except ToolFailure as e:
            payload = {"error": [e.type, e.message]}
        except MemoryError:
            payload = {"error": ["MathTooLarge", "the computation ran out of its memory limit"]}
        except BaseException as e:  # noqa: BLE001 -- whatever SymPy raises becomes the call's error
            payload = {"error": ["MathError", f"{type(e).__name__}: {e}"]}
        data = json.dumps(payload).encode()
        while data:
            data = data[os.write(write_end, data):]
        os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + wall_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise ToolFailure("TimeLimit", f"the computation ran past {wall_s:g} s and was stopped")
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not chunks:
        raise ToolFailure("MathError", "the computation died (CPU or memory limit)")
    payload = json.loads(b"".join(chunks))
    if "error" in payload:
        raise ToolFailure(*payload["error"])
    return payload["result"]


def math_tool(wall_s: float = WALL_S) -> Tool:
    def run(arguments: dict) -> object:
        # Parse in this process first: a syntax error comes back without a fork.
        (parse_system if arguments["op"] in ("solve", "linsolve") else parse_expression)(arguments["expr"])
        return run_bounded(arguments, wall_s)

    return Tool("math", f"SymPy symbolic math. op: {', '.join(OPS)}. expr uses numbers, variables, + - * / ^, "
                        "and functions like sin, exp, log, sqrt; 'a = b' is an equation, ',' separates a system.",
                PARAMETERS, run)
