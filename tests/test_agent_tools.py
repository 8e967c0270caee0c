"""The math tool against hand-checked answers, the http tool's routing, the protocol and
``alphaexa tool`` on the command line."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading

import pytest
import sympy

from alphaexa.agent.http import http_tool
from alphaexa.agent.mathparse import parse_expression
from alphaexa.agent.mathtool import math_tool
from alphaexa.agent.protocol import ToolFailure, parse_turn
from alphaexa.agent.registry import Registry
from alphaexa.cli import main
from topology.modelcfg import ConfigError

# (op, expr, extra arguments, the answer worked out by hand)
PROBLEMS = [
    ("evaluate", "2 + 3*4", {}, "14"),
    ("evaluate", "2^10 - 24", {}, "1000"),
    ("evaluate", "(7 - 3)/(1 + 1)", {}, "2"),
    ("evaluate", "sqrt(144) + 17 % 5", {}, "14"),
    ("evaluate", "factorial(5)", {}, "120"),
    ("evaluate", "sin(pi/6)", {}, "0.5"),
    ("evaluate", "log(E^3)", {}, "3"),
    ("evaluate", "binomial(6, 2)", {}, "15"),
    ("simplify", "(x^2 - 1)/(x - 1)", {}, "x + 1"),
    ("simplify", "sin(x)^2 + cos(x)^2", {}, "1"),
    ("simplify", "(a*b)/(b*c)", {}, "a/c"),
    ("expand", "(x + 1)^2", {}, "x^2 + 2*x + 1"),
    ("expand", "(a - b)*(a + b)", {}, "a^2 - b^2"),
    ("expand", "(x + 2)^3", {}, "x^3 + 6*x^2 + 12*x + 8"),
    ("factor", "x^2 - 5*x + 6", {}, "(x - 2)*(x - 3)"),
    ("factor", "x^3 - x", {}, "x*(x - 1)*(x + 1)"),
    ("diff", "x^3", {}, "3*x^2"),
    ("diff", "sin(x)*x", {"symbol": "x"}, "sin(x) + x*cos(x)"),
    ("diff", "exp(2*t)", {}, "2*exp(2*t)"),
    ("diff", "x^4", {"order": 2}, "12*x^2"),
    ("integrate", "2*x", {}, "x^2"),
    ("integrate", "cos(x)", {}, "sin(x)"),
    ("integrate", "x^2", {"lower": "0", "upper": "3"}, "9"),
    ("integrate", "1/x", {"lower": "1", "upper": "E"}, "1"),
    ("limit", "sin(x)/x", {"point": "0"}, "1"),
    ("limit", "(1 + 1/n)^n", {"point": "oo"}, "E"),
    ("limit", "(x^2 - 4)/(x - 2)", {"point": "2"}, "4"),
    ("series", "exp(x)", {"order": 4}, "1 + x + x^2/2 + x^3/6"),
    ("series", "1/(1 - x)", {"order": 3}, "1 + x + x^2"),
]
SOLVE = [
    ("solve", "2*x + 3 = 11", {}, ["4"]),
    ("solve", "x^2 = 9", {}, ["-3", "3"]),
    ("solve", "x^2 - 5*x + 6", {}, ["2", "3"]),
    ("solve", "3*y - 7 = 2*y + 1", {"symbol": "y"}, ["8"]),
    ("solve", "x + y = 10, x - y = 2", {"symbol": "x, y"}, [{"x": "6", "y": "4"}]),
    ("linsolve", "x + y = 3; 2*x - y = 0", {"symbol": "x,y"}, ["(1, 2)"]),
    ("linsolve", "x + y + z = 6, x - y = 0, z = 2*x", {"symbol": "x,y,z"}, ["(3/2, 3/2, 3)"]),
]


def _same(result: str, expected: str) -> bool:
    return sympy.simplify(parse_expression(result) - parse_expression(expected)) == 0


@pytest.fixture(scope="module")
def math():
    return Registry([math_tool(wall_s=5)])


def _run(registry, op, expr, extra):
    return registry.call_text(json.dumps({"name": "math", "arguments": {"op": op, "expr": expr, **extra}}))


@pytest.mark.parametrize("op,expr,extra,expected", PROBLEMS, ids=[f"{p[0]}:{p[1]}" for p in PROBLEMS])
def test_math_problem(math, op, expr, extra, expected):
    out = _run(math, op, expr, extra)
    assert "result" in out, out
    assert _same(out["result"], expected), f"{expr}: {out['result']} != {expected}"


@pytest.mark.parametrize("op,expr,extra,expected", SOLVE, ids=[f"{p[0]}:{p[1]}" for p in SOLVE])
def test_math_solve(math, op, expr, extra, expected):
    out = _run(math, op, expr, extra)
    assert "result" in out, out
    got = out["result"]
    if expected and isinstance(expected[0], dict):
        assert [{k: str(parse_expression(v)) for k, v in s.items()} for s in got] == expected
    elif op == "linsolve":
        assert [str(sympy.Tuple(*[parse_expression(c) for c in g.strip("()").split(",")])) for g in got] == expected
    else:
        assert sorted(got, key=lambda s: float(parse_expression(s))) == expected


def test_math_problem_count():
    assert len(PROBLEMS) + len(SOLVE) >= 30


def test_math_errors_are_one_line(math):
    out = _run(math, "diff", "x*y", {})
    assert out["error"]["type"] == "MathSyntax" and "symbol" in out["error"]["message"]
    assert _run(math, "evaluate", "x + 1", {})["error"]["type"] == "MathSyntax"
    assert _run(math, "integrate", "x", {"lower": "0"})["error"]["type"] == "MathSyntax"


class _Api(http.server.BaseHTTPRequestHandler):
    def _reply(self, payload: dict, status: int = 200):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/steal")
            self.end_headers()
            return
        self._reply({"method": "GET", "path": self.path})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._reply({"method": "POST", "path": self.path, "body": body})

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path_factory.mktemp("http") / "endpoints.toml"
    base = f"http://127.0.0.1:{server.server_port}"
    config.write_text(f"""
[[endpoints]]
name = "convert"
description = "unit conversion"
url = "{base}/convert/{{unit}}"
params = {{type = "object", properties = {{unit = {{type = "string"}}, value = {{type = "number"}}}}, required = ["unit", "value"], additionalProperties = false}}

[[endpoints]]
name = "store"
method = "POST"
url = "{base}/store"
params = {{type = "object", properties = {{key = {{type = "string"}}}}}}

[[endpoints]]
name = "moved"
url = "{base}/moved"
""")
    yield Registry([http_tool(config)]), config
    server.shutdown()


def _http(registry, endpoint, params):
    return registry.call_text(json.dumps({"name": "http", "arguments": {"endpoint": endpoint, "params": params}}))


def test_http_routes_to_declared_endpoints(api):
    registry, _ = api
    got = json.loads(_http(registry, "convert", {"unit": "km", "value": 5})["result"]["body"])
    assert got == {"method": "GET", "path": "/convert/km?value=5"}
    got = json.loads(_http(registry, "store", {"key": "a b"})["result"]["body"])
    assert got == {"method": "POST", "path": "/store", "body": {"key": "a b"}}


def test_http_refuses_what_is_not_declared(api):
    registry, _ = api
    assert _http(registry, "elsewhere", {})["error"]["type"] == "InvalidArguments"  # not in the endpoint enum
    assert _http(registry, "convert", {"unit": "km"})["error"]["type"] == "InvalidArguments"
    assert _http(registry, "convert", {"unit": "km", "value": 1, "host": "x"})["error"]["type"] == "InvalidArguments"
    assert _http(registry, "moved", {})["error"]["type"] == "HttpRedirectRefused"


def test_http_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[endpoints]]\nname = "x"\nurl = "http://{host}/api"\n')
    with pytest.raises(ConfigError, match="placeholders only after the host"):
        http_tool(bad)
    bad.write_text('[[endpoints]]\nname = "x"\nurl = "file:///etc/passwd"\n')
    with pytest.raises(ConfigError, match="http"):
        http_tool(bad)


def test_turn_parsing():
    assert parse_turn('{"answer": "42"}') == "42"
    call = parse_turn('{"name": "math", "arguments": {"op": "evaluate", "expr": "1"}}')
    assert (call.id, call.name) == ("1", "math")
    for bad in ('{"answer": 42}', '{"name": "math"}', "[1]", "hello"):
        with pytest.raises(ToolFailure):
            parse_turn(bad)


def _cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``alphaexa tool ARGS`` in this process (the entry point is checked once as a real process below)."""
    capsys.readouterr()
    returncode = main(["tool", *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, returncode, out.out, out.err)


def test_cli_entry_point():
    out = subprocess.run([sys.executable, "-m", "alphaexa", "tool", "call",
                          '{"id": "x", "name": "shell", "arguments": {"argv": ["echo", "$HOME"]}}'],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["result"]["stdout"] == "$HOME\n"


def test_cli_tool_call_and_list(tmp_path, capsys):
    out = _cli(capsys, "call", "--workdir", str(tmp_path), '{"id": "7", "name": "python", "arguments": '
               '{"code": "open(\'out.txt\', \'w\').write(\'hi\'); print(2+2)"}}')
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply == {"id": "7", "name": "python", "result": {"exit_code": 0, "signal": None, "stdout": "4\n",
                                                             "stderr": "", "files": ["out.txt"]}}
    assert (tmp_path / "out.txt").read_text() == "hi"
    out = _cli(capsys, "call", '{"id": "8", "name": "math", "arguments": {"op": "solve", "expr": 5}}')
    assert out.returncode == 0 and set(json.loads(out.stdout)) == {"id", "name", "error"}
    listed = json.loads(_cli(capsys, "list").stdout)
    assert [t["name"] for t in listed] == ["math", "python", "shell"]
    assert listed[1]["parameters"]["required"] == ["code"]


@pytest.mark.parametrize("call,message", [
    ('{"name": ', "malformed call"),
    ('{"name": "nope", "arguments": {}}', "unknown tool 'nope'"),
    ('["python"]', "malformed call"),
])
def test_cli_bad_input_is_one_line(call, message, capsys):
    out = _cli(capsys, "call", call)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
