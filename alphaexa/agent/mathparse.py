"""An allow-listed parser from a model's math text to SymPy objects.

``sympify`` and ``parse_expr`` evaluate Python; this module never does.  The text goes
through :func:`ast.parse` (which only builds a tree), and a walker accepts a short list of
node types — numbers, names, + - * / ** ^ %, unary signs, and calls of known functions by
bare name — building every SymPy object itself.  Attributes, subscripts, keywords, strings,
lambdas, comprehensions and every name that is not a plain identifier (so no dunders) are
refused.  ``a = b`` is an equation; ``,`` or ``;`` separate equations of a system.
"""
from __future__ import annotations

import ast
import math
import re

import sympy

from .protocol import ToolFailure

MAX_EXPR_CHARS = 2000
MAX_NODES = 400
MAX_INT_DIGITS = 60
MAX_RESULT_DIGITS = 10_000
FUNCTIONS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec, "csc": sympy.csc,
    "asin": sympy.asin, "acos": sympy.acos, "atan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh,
    "tanh": sympy.tanh, "exp": sympy.exp, "log": sympy.log, "ln": sympy.log, "sqrt": sympy.sqrt,
    "abs": sympy.Abs, "Abs": sympy.Abs, "floor": sympy.floor, "ceiling": sympy.ceiling,
    "factorial": sympy.factorial, "binomial": sympy.binomial, "gcd": sympy.gcd, "lcm": sympy.lcm,
    "Min": sympy.Min, "Max": sympy.Max, "min": sympy.Min, "max": sympy.Max,
}
CONSTANTS = {"pi": sympy.pi, "E": sympy.E, "e": sympy.E, "I": sympy.I, "oo": sympy.oo, "inf": sympy.oo}
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,15}$")
BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b, ast.Mod: lambda a, b: sympy.Mod(a, b)}
FACTORIAL_LIMIT = 1000


def symbol(name: str) -> sympy.Symbol:
    if not NAME.match(name) or name in FUNCTIONS or name in CONSTANTS:
        raise ToolFailure("MathSyntax", f"{name[:40]!r} is not a variable name (letters and digits, starting "
                                        "with a letter)")
    return sympy.Symbol(name)


def _power(base, exponent):
    if exponent.is_Number and abs(exponent) > 10_000:
        raise ToolFailure("MathTooLarge", f"exponent {exponent} is too large")
    if base.is_Number and exponent.is_Number and base not in (0, 1, -1):
        digits = float(abs(exponent)) * math.log10(max(abs(float(base)), 1 / abs(float(base))))
        if digits > MAX_RESULT_DIGITS:
            raise ToolFailure("MathTooLarge", f"{base}**{exponent} has about {digits:.0f} digits "
                                              f"(at most {MAX_RESULT_DIGITS})")
    return sympy.Pow(base, exponent)


class _Builder:
    def __init__(self):
        self.nodes = 0

    def build(self, node: ast.AST):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ToolFailure("MathTooLarge", f"expression has more than {MAX_NODES} parts")
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            if type(node.value) is int and len(str(node.value)) > MAX_INT_DIGITS:
                raise ToolFailure("MathTooLarge", f"integer of more than {MAX_INT_DIGITS} digits")
            return sympy.Integer(node.value) if type(node.value) is int else sympy.Float(node.value)
        if isinstance(node, ast.Name):
            return CONSTANTS[node.id] if node.id in CONSTANTS else symbol(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            value = self.build(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            left, right = self.build(node.left), self.build(node.right)
            if isinstance(node.op, ast.Pow):
                return _power(left, right)
            if type(node.op) in BINARY:
                return BINARY[type(node.op)](left, right)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                and not node.keywords and not any(isinstance(a, ast.Starred) for a in node.args)):
            args = [self.build(a) for a in node.args]
            if node.func.id == "factorial" and args and args[0].is_Number and abs(args[0]) > FACTORIAL_LIMIT:
                raise ToolFailure("MathTooLarge", f"factorial of more than {FACTORIAL_LIMIT}")
            try:
                return FUNCTIONS[node.func.id](*args)
            except TypeError as e:
                raise ToolFailure("MathSyntax", f"{node.func.id}: {e}") from None
        raise ToolFailure("MathSyntax", f"{type(node).__name__} is not allowed in a math expression "
                                        "(numbers, variables, + - * / ^ %, and known functions only)")


def _split_top_level(text: str, separators: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch in separators and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_expression(text: str):
    if len(text) > MAX_EXPR_CHARS:
        raise ToolFailure("MathTooLarge", f"expression of {len(text)} characters (at most {MAX_EXPR_CHARS})")
    if not text.strip():
        raise ToolFailure("MathSyntax", "empty expression")
    try:
        # Models write x^2 for a power; as Python's xor it would bind looser than + and -.
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ToolFailure("MathSyntax", f"cannot parse {text[:80]!r}: {getattr(e, 'msg', e)}") from None
    return _Builder().build(tree.body)


def parse_equation(text: str):
    """``lhs = rhs`` as an Eq, or a bare expression (read as ``expr = 0`` by the solvers)."""
    sides = re.split(r"(?<![<>=!])=(?!=)", text.replace("==", "="))
    if len(sides) > 2:
        raise ToolFailure("MathSyntax", f"more than one '=' in {text[:80]!r}")
    if len(sides) == 2:
        return sympy.Eq(parse_expression(sides[0]), parse_expression(sides[1]), evaluate=False)
    return parse_expression(text)


def parse_system(text: str) -> list:
    """Equations separated by ',' or ';' outside brackets."""
    return [parse_equation(part) for part in _split_top_level(text, ",;") if part.strip()]
