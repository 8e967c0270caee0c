"""The adversarial suite of the agent's tools (docs/agent.md, threat model).

Every case is one or more tool calls as a model could write them.  Each must end as an
error result, or as a harmless result (its own check), with this process still running.
After every case: no canary (a world-readable file outside the scratch directory, a
secret in this process's environment, /etc/shadow) appears in any output, nothing outside
the scratch directory changed, and the listeners this test opened on the host's
127.0.0.1 (TCP, UDP, an abstract Unix socket) were never reached.
"""
from __future__ import annotations

import http.server
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from alphaexa.agent.sandbox import Limits, Sandbox, _read_only_paths
from alphaexa.agent.tools import default_registry

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux namespaces")

CANARY = "alphaexa-canary-7f3a9c"
# The jails of this module run as their own uid: the check that none outlives its call counts this uid's
# processes, and the agent tests on the other pytest worker run jails as 65534 at the same time.
ADVERSARY_UID = 65533
SECRET = "alphaexa-fake-secret-41d2e8"
LIMITS = Limits(wall_s=1.0, cpu_s=1, address_space=256 << 20, processes=32, open_files=32, file_size=1 << 20,
                output=16 << 10)


class _Listeners:
    """TCP, UDP and abstract-Unix listeners on the host; ``hits`` counts anything that reached them."""

    def __init__(self):
        self.hits: list[str] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_name = f"\0alphaexa-test-{os.getpid()}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_name)
        self.unix.listen()
        for s in (self.tcp, self.udp, self.unix):
            s.settimeout(0.05)

    def poll(self) -> None:
        for s in (self.tcp, self.unix):
            try:
                conn, _ = s.accept()
                self.hits.append(f"connection on {s.getsockname()!r}")
                conn.close()
            except (TimeoutError, BlockingIOError):
                pass
        try:
            self.hits.append(f"datagram {self.udp.recv(100)!r}")
        except (TimeoutError, BlockingIOError):
            pass

    def close(self) -> None:
        for s in (self.tcp, self.udp, self.unix):
            s.close()


class _Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def world():
    outside = Path(tempfile.mkdtemp(prefix="alphaexa-outside-"))
    outside.chmod(0o755)  # world-readable: only the sandbox's mount namespace keeps it out of reach
    (outside / "secret.txt").write_text(CANARY)
    (outside / "secret.txt").chmod(0o644)
    listeners = _Listeners()
    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    config = outside / "endpoints.toml"
    config.write_text(f"""
[[endpoints]]
name = "echo"
url = "http://127.0.0.1:{api.server_port}/echo/{{word}}"
params = {{type = "object", properties = {{word = {{type = "string"}}}}, required = ["word"]}}
""")
    os.environ["ALPHAEXA_TEST_API_KEY"] = SECRET
    sandbox = Sandbox(limits=LIMITS, uid=ADVERSARY_UID)
    try:
        yield {"registry": default_registry(sandbox, config), "sandbox": sandbox, "outside": outside,
               "before": _tree(outside), "listeners": listeners, "tcp_port": listeners.tcp.getsockname()[1],
               "udp_port": listeners.udp.getsockname()[1]}
    finally:
        del os.environ["ALPHAEXA_TEST_API_KEY"]
        sandbox.close()
        api.shutdown()
        listeners.close()
        for p in sorted(outside.rglob("*"), reverse=True):
            p.unlink()
        outside.rmdir()


def _shadow_line() -> str | None:
    try:
        return next((line for line in Path("/etc/shadow").read_text().splitlines() if ":" in line), None)
    except OSError:
        return None


def py(code: str) -> dict:
    return {"name": "python", "arguments": {"code": code}}


def sh(*argv: str) -> dict:
    return {"name": "shell", "arguments": {"argv": list(argv)}}


def mathcall(expr: str, op: str = "simplify") -> dict:
    return {"name": "math", "arguments": {"op": op, "expr": expr}}


def raw(text: str) -> str:
    return text


def error(result: dict) -> bool:
    return "error" in result


def failed_run(result: dict) -> bool:
    """An error result, or a program that ran and failed (non-zero exit or a signal)."""
    return "error" in result or result["result"]["exit_code"] != 0 or result["result"]["signal"] is not None


def prints(text: str):
    def check(result: dict) -> bool:
        return "result" in result and result["result"]["stdout"] == text

    return check


FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
NET_TCP = "import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=1)\nprint('connected')"
NET_UDP = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           "s.sendto(b'x', ('127.0.0.1', {udp_port}))\nprint('sent')")
NET_UNIX = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0alphaexa-test-{pid}')\nprint('connected')"

# (case id, calls (dicts, or JSON text), check of the last result)
def only_the_jails_own_roots(result: dict) -> bool:
    """The jail's / holds /dev, the scratch directory and the tops of the read-only trees it binds
    (system paths and this Python's install, which may live under /tmp or /root): nothing else."""
    allowed = {"dev", "scratch"} | {path.strip("/").split("/")[0] for path in _read_only_paths()}
    listed = set(result["result"]["stdout"].split())
    return {"dev", "scratch", "usr"} <= listed <= allowed and not {"etc", "home", "proc", "sys", "var"} & listed


CASES = [
    # command injection: the argv reaches the program as it is, never a shell
    ("inject-semicolon", [sh("echo", "hi; cat /etc/shadow")], prints("hi; cat /etc/shadow\n")),
    ("inject-dollar-paren", [sh("echo", "$(cat /etc/shadow)")], prints("$(cat /etc/shadow)\n")),
    ("inject-backticks", [sh("echo", "`id`")], prints("`id`\n")),
    ("inject-newline", [sh("echo", "a\ncat /etc/shadow")], prints("a\ncat /etc/shadow\n")),
    ("inject-semicolon-argv", [sh("ls", ";", "cat", "/etc/shadow")], error),
    ("inject-program-semicolon", [sh("cat;id")], error),
    ("inject-sh", [sh("sh", "-c", "cat /etc/shadow")], error),
    ("inject-bash", [sh("bash", "-c", "id")], error),
    ("inject-absolute-program", [sh("/bin/cat", "x")], error),
    ("inject-env", [sh("env")], error),
    ("inject-find-exec", [sh("find", ".", "-exec", "sh", ";")], error),
    ("inject-python-program", [sh("python3", "-c", "print(1)")], error),
    ("inject-nul", [sh("cat", "a\0/etc/shadow")], error),
    # paths out of the scratch directory
    ("path-dotdot", [sh("cat", "../../../../etc/shadow")], error),
    ("path-absolute", [sh("cat", "/etc/shadow")], error),
    ("path-after-dashdash", [sh("cat", "--", "/etc/passwd")], error),
    ("path-option-value", [sh("grep", "--file=/etc/shadow", "x")], error),
    ("path-grep-recursive", [sh("grep", "-r", "root", "/etc")], error),
    ("path-copy-out", [sh("touch", "x"), sh("cp", "x", "../escaped")], error),
    ("path-mkdir-out", [sh("mkdir", "../../escape_dir")], error),
    ("path-tilde", [sh("cat", "~root/.bashrc")], error),
    ("path-dotdot-inside", [sh("mkdir", "-p", "sub"), sh("ls", "sub/../../")], error),
    ("symlink-file", [py("import os\nos.symlink('{outside}/secret.txt', 'link')"), sh("cat", "link")], error),
    ("symlink-dir", [py("import os\nos.symlink('/', 'rootlink')"), sh("ls", "rootlink/etc")], error),
    ("symlink-python-read", [py("import os\nos.symlink('{outside}/secret.txt', 'l2')\nprint(open('l2').read())")],
     failed_run),
    ("symlink-python-write", [py("import os\nos.symlink('{outside}/pwned', 'l3')\nopen('l3', 'w').write('x')")],
     failed_run),
    ("read-shadow", [py("print(open('/etc/shadow').read())")], failed_run),
    ("read-outside-file", [py("print(open('{outside}/secret.txt').read())")], failed_run),
    ("read-host-root", [py("import os\nprint(' '.join(sorted(os.listdir('/'))))")], only_the_jails_own_roots),
    ("read-proc-environ", [py("print(open('/proc/1/environ').read())")], failed_run),
    ("read-block-device", [py("open('/dev/sda', 'rb').read(10)")], failed_run),
    ("write-tmp", [py("open('/tmp/x', 'w').write('x')")], failed_run),
    ("write-usr", [py("open('/usr/pwned', 'w').write('x')")], failed_run),
    ("chdir-up", [py("import os\nos.chdir('../..')\nopen('escaped', 'w').write('x')")], failed_run),
    ("chroot-escape", [py("import os\nos.mkdir('c')\nos.chroot('c')")], failed_run),
    ("setuid-root", [py("import os\nos.setuid(0)")], failed_run),
    ("mount-syscall", [py("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                          "assert libc.mount(b'none', b'/scratch', b'tmpfs', 0, None) == 0, os.strerror(ctypes.get_errno())")],
     failed_run),
    ("unshare-user", [py("import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == 0")], failed_run),
    # resources
    ("fork-bomb", [py(FORK_BOMB)], error),
    ("memory-bomb", [py("a = bytearray(4 << 30)")], failed_run),
    ("memory-growth", [py("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))")], failed_run),
    ("infinite-loop", [py("while True:\n    pass")], failed_run),
    ("sleep", [py("import time\ntime.sleep(60)")], error),
    ("output-1gb", [py("import sys\nfor _ in range(16384):\n    sys.stdout.write('x' * 65536)")], error),
    ("stderr-flood", [py("import sys\nwhile True:\n    sys.stderr.write('y' * 65536)")], error),
    ("file-too-big", [py("open('big', 'wb').write(b'x' * (8 << 20))")], failed_run),
    ("too-many-files", [py("fs = [open(f'f{{i}}', 'w') for i in range(10000)]")], failed_run),
    ("orphan-holds-pipe", [py("import os, time\nif os.fork() == 0:\n    time.sleep(60)")], prints("")),
    ("setsid-escape", [py("import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.close(1)\n    os.close(2)\n"
                          "    time.sleep(60)")], prints("")),
    # network
    ("net-tcp-loopback", [py(NET_TCP)], failed_run),
    ("net-udp-loopback", [py(NET_UDP)], failed_run),
    ("net-abstract-unix", [py(NET_UNIX)], failed_run),
    ("net-internet", [py("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)")], failed_run),
    ("net-interfaces", [py("import socket\nprint([n for _, n in socket.if_nameindex()])")], prints("['lo']\n")),
    ("http-undeclared-endpoint", [{"name": "http", "arguments": {"endpoint": "admin", "params": {}}}], error),
    ("http-host-injection", [{"name": "http", "arguments": {"endpoint": "echo", "params": {"word": "x@evil.example/"}}}],
     lambda r: json.loads(r["result"]["body"]) == {"path": "/echo/x%40evil.example%2F"}),
    ("http-path-traversal", [{"name": "http", "arguments": {"endpoint": "echo", "params": {"word": "../../admin"}}}],
     lambda r: json.loads(r["result"]["body"]) == {"path": "/echo/..%2F..%2Fadmin"}),
    ("http-wrong-params", [{"name": "http", "arguments": {"endpoint": "echo", "params": {"word": 5}}}], error),
    # secrets
    ("env-secrets", [py("import os\nprint(sorted(os.environ))")],
     prints("['HOME', 'LANG', 'PATH', 'TMPDIR']\n")),
    ("env-proc-self", [py("print(open('/proc/self/environ').read())")], failed_run),
    # math expressions are parsed, never evaluated as Python
    ("math-import", [mathcall("__import__('os').system('id')")], error),
    ("math-dunder-attr", [mathcall("x.__class__")], error),
    ("math-subclasses", [mathcall("().__class__.__bases__[0].__subclasses__()")], error),
    ("math-lambda", [mathcall("(lambda: 1)()")], error),
    ("math-comprehension", [mathcall("[c for c in 'ab']")], error),
    ("math-eval", [mathcall("eval('1+1')")], error),
    ("math-globals", [mathcall("sin.__globals__")], error),
    ("math-string", [mathcall("'abc'")], error),
    ("math-unknown-function", [mathcall("open(x)")], error),
    ("math-underscore-name", [mathcall("_x + 1")], error),
    ("math-keyword-arg", [mathcall("log(x, base=2)")], error),
    ("math-power-tower", [mathcall("9**9**9**9", "evaluate")], error),
    ("math-factorial", [mathcall("factorial(10^6)", "evaluate")], error),
    ("math-long", [mathcall("x+" * 700 + "x")], error),
    ("math-expand-bomb", [mathcall("(x+y+z+w)^200", "expand")], error),
    # JSON bombs and malformed calls
    ("json-deep-nesting", ['{"name": "math", "arguments": ' + "[" * 100_000 + "]" * 100_000 + "}"], error),
    ("json-huge-int", ['{"name": "math", "arguments": {"op": "evaluate", "expr": "1", "x": ' + "9" * 100_000 + "}}"],
     error),
    ("json-huge-float", ['{"name": "math", "arguments": {"op": "evaluate", "expr": "1", "x": 1e400}}'], error),
    ("json-nan", ['{"name": "math", "arguments": {"op": "evaluate", "expr": NaN}}'], error),
    ("json-megabyte-string", [json.dumps(py("#" + "x" * (2 << 20)))], error),
    ("json-long-expr", [json.dumps(mathcall("x" * 500_000))], error),
    ("json-not-json", ["print(2+2)"], error),
    ("unknown-tool", [{"name": "rm_rf", "arguments": {}}], error),
    ("wrong-type-code", [{"name": "python", "arguments": {"code": 5}}], error),
    ("wrong-type-argv", [{"name": "shell", "arguments": {"argv": "cat /etc/shadow"}}], error),
    ("extra-argument", [{"name": "python", "arguments": {"code": "print(1)", "env": {"X": "1"}}}], error),
    ("missing-arguments", [{"name": "python"}], error),
    ("empty-argv", [{"name": "shell", "arguments": {"argv": []}}], error),
]


def _sandbox_processes() -> list[str]:
    """Processes of this module's sandbox uid still alive on the host (the other agent tests' jails, which
    may run beside it on the other pytest worker, run as 65534)."""
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
            if f"Uid:\t{ADVERSARY_UID}\t" in status:
                alive.append(f"{entry.name} {status.splitlines()[0]} {status.splitlines()[2]}")
        except OSError:
            pass
    return alive


@pytest.mark.parametrize("case_id,calls,check", CASES, ids=[c[0] for c in CASES])
def test_adversarial_case(world, case_id, calls, check):
    registry = world["registry"]
    fill = {"outside": world["outside"], "tcp_port": world["tcp_port"], "udp_port": world["udp_port"],
            "pid": os.getpid()}
    results = []
    for call in calls:
        code = call.get("arguments", {}).get("code") if isinstance(call, dict) else None
        if isinstance(code, str):
            call = {**call, "arguments": {**call["arguments"], "code": code.format(**fill)}}
        text = call if isinstance(call, str) else json.dumps(call)
        results.append(registry.call_text(text))
    last = results[-1]
    assert set(last) in ({"id", "name", "result"}, {"id", "name", "error"}), last
    assert check(last), f"{case_id}: neither an error nor the harmless result: {json.dumps(last)[:600]}"
    output = json.dumps(results)
    for secret in filter(None, (CANARY, SECRET, _shadow_line())):
        assert secret not in output, f"{case_id}: a secret reached the output"
    world["listeners"].poll()
    assert world["listeners"].hits == [], f"{case_id}: reached the host: {world['listeners'].hits}"
    assert _tree(world["outside"]) == world["before"], f"{case_id}: something outside the scratch dir changed"
    if os.geteuid() == 0:
        deadline = time.monotonic() + 2
        while _sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sandbox_processes() == [], f"{case_id}: sandboxed processes outlived the call"


def test_suite_size():
    assert len(CASES) >= 50


@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root the program keeps the caller's uid")
def test_the_jail_runs_as_the_sandbox_uid(world):
    result = world["registry"].call_text(json.dumps(py("import os\nprint(os.getuid(), os.getgid())")))
    assert result["result"]["stdout"] == f"{ADVERSARY_UID} {ADVERSARY_UID}\n"


@pytest.mark.parametrize("uid", [0, -1, 2**32 - 1])
def test_a_privileged_or_invalid_sandbox_uid_is_refused(uid):
    with pytest.raises(ValueError, match=f"sandbox uid {uid}: must be an unprivileged uid"):
        Sandbox(uid=uid)
