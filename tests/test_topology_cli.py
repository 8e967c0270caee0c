"""`alphaexa plan/topo`, `python -m topology`, custom systems, and the torch-free rule."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alphaexa.cli import main as alphaexa_main
from topology.hardware import PRESETS, load_system
from topology.modelcfg import ConfigError

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY_MODULES = sorted(p.stem for p in (REPO / "topology").glob("*.py") if p.stem != "__main__")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=False)


def test_no_topology_module_imports_torch():
    code = ("import importlib, sys\n"
            f"for name in {TOPOLOGY_MODULES!r}:\n"
            "    importlib.import_module(name if name == 'topology' else 'topology.' + name)\n"
            "from topology.planner import plan\n"
            "plan('debug', 'h100-x2', 1, 8, 64, top=1)\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print('torch modules:', bad)\n"
            "sys.exit(1 if bad else 0)\n")
    res = run_python(code)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "torch modules: []" in res.stdout
    assert {"layout", "hardware", "costmodel", "planner", "placement", "discovery", "cli"} <= set(TOPOLOGY_MODULES)


def test_python_m_topology_runs_where_torch_cannot_be_imported():
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
            "sys.argv = ['topology', 'plan', '--model', '1b-moe', '--system', 'aurora', '--nodes', '2',\n"
            "            '--global-batch', '48', '--seq-len', '2048', '--top', '2', '--explain']\n"
            "runpy.run_module('topology', run_name='__main__')\n")
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    assert "2 x aurora = 24 Max1550-tile" in res.stdout and "Winner:" in res.stdout


def test_alphaexa_plan_table_json_and_out(tmp_path, capsys):
    args = ["plan", "--model", "1b-moe", "--system", "dgx-h100", "--nodes", "2", "--global-batch", "64",
            "--seq-len", "2048", "--top", "3"]
    assert alphaexa_main(args + ["--out", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "1b-moe:" in out and "MFU" in out and f"plan written to {tmp_path / 'plan.json'}" in out
    written = json.loads((tmp_path / "plan.json").read_text())
    assert alphaexa_main(args + ["--json", "--sharding", "zero3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(written["plans"]) == 3 and written["request"]["world"] == 16
    assert all(p["layout"]["sharding"] == "zero3" for p in printed["plans"])
    assert printed["request"]["pins"] == {"sharding": "zero3"}


def test_alphaexa_plan_reports_bad_pins_on_one_line(capsys):
    code = alphaexa_main(["plan", "--model", "7b", "--system", "h100-x8", "--global-batch", "64", "--seq-len",
                          "4096", "--tp", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err == "alphaexa plan: error: tp=3 does not divide n_heads=32\n"


def test_infeasible_plan_exits_1_with_advice(capsys):
    code = alphaexa_main(["plan", "--model", "30b", "--system", "h100-x1", "--global-batch", "8",
                          "--seq-len", "4096", "--offload", "none"])
    out = capsys.readouterr().out
    assert code == 1 and "NO LAYOUT FITS" in out and "GiB over the 80 GiB capacity" in out


def test_plan_for_this_machine_and_named_hosts(capsys, monkeypatch):
    monkeypatch.delenv("PBS_NODEFILE", raising=False)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-09]")
    assert alphaexa_main(["plan", "--model", "debug", "--system", "auto", "--global-batch", "4", "--seq-len", "64",
                          "--top", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["system"]["name"] == "auto" and d["plans"][0]["placement"]["hosts"] == ["gpu07"]
    code = alphaexa_main(["plan", "--model", "debug", "--system", "polaris", "--nodes", "2", "--global-batch",
                          "8", "--seq-len", "64", "--hosts", "a,b,c"])
    assert code == 2 and "--hosts names 3 host(s) for --nodes 2" in capsys.readouterr().err
    assert alphaexa_main(["plan", "--model", "debug", "--system", "polaris", "--nodes", "2", "--global-batch",
                          "8", "--seq-len", "64", "--hosts", "a,b", "--json", "--top", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["plans"][0]["placement"]["hosts"] == ["a", "b"]


def test_topo_json_describes_this_machine(capsys):
    assert alphaexa_main(["topo", "--json", "--no-torch"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["discovery"]["cpu"]["physical_cores"] >= 1 and d["system"]["name"] == "auto"
    assert alphaexa_main(["topo", "--no-torch"]) == 0
    assert "placement: --cpu-bind list:" in capsys.readouterr().out


def test_systems_listing(capsys):
    from topology.cli import main
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


def test_custom_system_from_yaml(tmp_path, capsys):
    path = tmp_path / "mycluster.yaml"
    path.write_text("preset: dgx-h100\nmax_nodes: 4\nnode:\n  device:\n    memory_gib: 40\n"
                    "network:\n  nics_per_node: 4\n")
    system = load_system(str(path))
    assert system.name == "mycluster" and system.max_nodes == 4 and system.node.device.memory_gib == 40
    assert system.network.nics_per_node == 4 and system.node.ranks == 8
    assert alphaexa_main(["plan", "--model", "1b", "--system", str(path), "--nodes", "4", "--global-batch", "64",
                          "--seq-len", "2048", "--top", "1"]) == 0
    assert "4 x mycluster = 32 H100-SXM5-80GB" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("preset: dgx-h100\nnode:\n  gpus: 8\n", "unknown key(s) gpus"),
    ("preset: nope\n", "unknown preset 'nope'"),
    (("preset: polaris\nnode:\n  link_levels:\n  - size: 3\n    link: {name: x, gbps: 1, latency_us: 1, "
      "efficiency: 1}\n  - size: 4\n    link: {name: y, gbps: 1, latency_us: 1, efficiency: 1}\n"),
     "link level size 3 does not divide 4 devices"),
    ("name: [unclosed\n", "cannot parse"),
    ("preset: polaris\nmax_nodes: many\n", "max_nodes='many': expected int"),
])
def test_custom_system_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_system(str(path))
    with pytest.raises(ConfigError, match="neither a preset"):
        load_system(str(tmp_path / "missing.yaml"))
