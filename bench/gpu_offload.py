"""ZeRO-Infinity (NVMe) and ZeRO-Offload (CPU) on one GPU: a model trained with its state off the device.

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 bench/gpu_offload.py --out $OUT          # nvme then cpu, 7b with 24 blocks

It never compiles.  DeepSpeed must come from a wheel built with its ``cpu_adam``, ``pin_memory`` and
``async_io`` ops inside it for the ``cuda`` accelerator and this torch (``deepspeed.git_version_info.
installed_ops``; how the wheel is built: docs/parallelism.md "Offload"); any op missing there is one line
and exit 2 within seconds (``ALPHAEXA_DS_NO_JIT=1``, and DeepSpeed's own ``jit_load`` is replaced by
that error).  The prebuilt async_io op needs libaio.so.1 at run time: when the machine has none,
``.deb/libaio1_*.deb`` is unpacked with ``dpkg -x`` and loaded first.

Each run is a child process (its host memory returns to the system before the next) under its own
time limit; a run that hangs prints its Python stacks (faulthandler) before it is killed:
* ``nvme``: parameters on NVMe (``--nvme-dir``); optimizer state in host memory (``--optimizer-on
  cpu``, the default: the H200 machine's 64 GiB disk does not hold a large model's 12 bytes a
  parameter) or on NVMe too (``nvme``, or ``auto``: when the disk holds it);
* ``cpu``: parameters and optimizer state in host memory.
Before each run its host-memory peak is predicted (``host_peak``) and must stay under
``HOST_HEADROOM`` of what is available; when it does not, the run trains the deepest model that
does (fewer ``--n-layers``, logged as SHRUNK) or is skipped, instead of being OOM-killed.  The
arithmetic, bytes per parameter n unless said: fp32 master + Adam m, v 12 (when the optimizer is in
host memory); fp32 gradient partitions 4; bf16 parameters in host memory (cpu run) 4.7, measured
(its RSS after the engine build, 88.9 GiB, minus the nvme run's, 66.4 GiB, over 5.12B: DeepSpeed's
bf16 partitions plus its flat pinned copy); a transient 5.5, measured (the nvme run's step-1 peak,
105.0 GiB, minus all the rest, over 5.12B: the bf16 model built in host memory before DeepSpeed
partitions it, 2, and gradient staging); and for the nvme run the fixed pinned part: DeepSpeed's
max_in_cpu (1e9 elements kept in host memory) x 2 bytes, plus buffer_count x buffer_size x 2 bytes
of swap buffers (deepspeed_engine.nvme_param_buffers).  7b with 24 blocks (5.12B) on 124 GiB:
nvme 108 GiB, fits; cpu 125 GiB, does not (it was killed), 21 blocks do.
Printed with UTC timestamps per phase (model built, engine built, every step) and written to
``OUT/gpu_offload.json``: tokens/s, step time, GPU peak memory, host peak RSS, bytes read and
written per step (this process, ``/proc/self/io``, and the NVMe directory's block device when it
has one), and the planner's predicted step time for the same layout with that offload, with the
measured error.  Before the runs: the planner's verdict without offload for the model, the
state's size against this machine's GPU, RAM and disk, and the same for ``--check-model`` (30b).

    python bench/gpu_offload.py --smoke --out /tmp/smoke --model 125m --n-layers 2 --seq 64 --global-batch 2 --mbs 2 --steps 2

checks this script on a CPU (DeepSpeed's CPU accelerator, whose ops may compile once; no GPU figures).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LIBAIO_DIR = Path("/tmp/alphaexa-libaio")
MULTIARCH = "usr/lib/x86_64-linux-gnu"
GIB = 2**30
SYSTEM = "h200-x1"
# DeepSpeed ZeRO-3 with optimizer offload, bytes per parameter: bf16 weights, fp32 gradient
# partition, fp32 master + Adam m and v (the last 12 are what NVMe optimizer offload moves).
PARAM_BYTES, GRAD_BYTES, OPTIMIZER_BYTES = 2, 4, 12
HOST_HEADROOM = 0.9  # of MemAvailable a run's predicted host peak (host_peak) may take
# Host bytes per parameter at a run's peak (the module docstring says where each comes from).
HOST_GRAD_BYTES, HOST_PARAM_BYTES_CPU, HOST_TRANSIENT_BYTES = 4, 4.7, 5.5
NVME_MAX_IN_CPU = 10**9  # DeepSpeed's offload_param.max_in_cpu default: elements kept in host memory
DISK_HEADROOM = 0.9
# The lent H200 machine's disk (64 GiB, device-mapper 254:0, kind unknown) under DeepSpeed's aio, GB/s,
# reads and writes alike: not the catalogue's 3 GB/s NVMe.  Fitted on one run, the 18-block NVMe run of
# session 5 (steady steps 14.2 and 15.2 s moving 13.6 GiB in and 7.3 GiB out, with a blocking write-back
# and the host step serial to it), with the cost model's offload terms and its fitted host rate;
# bench/offload_vs_measured.py --fit recomputes it.  The same lease's dd probe (O_DIRECT, 64 MiB blocks,
# one request at a time: write 1.3, read 1.4 GB/s) is below it; DeepSpeed's aio keeps queue_depth 8
# requests of 1 MiB in flight per handle.  Earlier leases' runs imply ~1.45 GB/s (their checks).
LENT_DISK_GBPS = 1.84
OPS = ("CPUAdamBuilder", "PinMemoryBuilder", "AsyncIOBuilder")
T0 = time.time()


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())} +{time.time() - T0:5.0f}s] {line}", flush=True)


def fail(line: str) -> None:
    log(f"gpu_offload: {line}")
    sys.exit(2)


# ------------------------------------------------------------------ what the machine has
def libaio() -> None:
    """Load libaio.so.1 into this process (prebuilt async_io needs it), unpacking the carried .deb if the system lacks it."""
    try:
        ctypes.CDLL("libaio.so.1", mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    lib = LIBAIO_DIR / MULTIARCH
    if not any(lib.glob("libaio.so.1*")):
        debs = sorted((REPO / ".deb").glob("libaio1*.deb"))
        if not debs:
            fail("libaio.so.1 is missing and .deb/ holds no libaio1*.deb (apt-get download libaio1 on Debian)")
        if shutil.which("dpkg") is None:
            fail("libaio.so.1 is missing and dpkg is not there to unpack .deb/libaio1*.deb")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(LIBAIO_DIR)], check=True)
        log(f"libaio from {debs[0].name} unpacked into {LIBAIO_DIR}")
    ctypes.CDLL(str(min(lib.glob("libaio.so.1*"))), mode=ctypes.RTLD_GLOBAL)
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), os.environ.get("LD_LIBRARY_PATH")]))


def prebuilt_ops() -> dict[str, float]:
    """Load each op DeepSpeed's offload needs from the install (seconds each); one line and exit if any is not prebuilt."""
    os.environ["ALPHAEXA_DS_NO_JIT"] = "1"
    try:
        import deepspeed
        from deepspeed.ops.op_builder.builder import OpBuilder
    except ImportError as e:
        fail(f"deepspeed is not importable ({e}); install the carried wheels first: python3 -m pip install -q "
             "--no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site")

    def refuse_jit(self, verbose=True):
        raise RuntimeError(f"DeepSpeed tried to compile its {self.name} op (not prebuilt); this bench never compiles")

    OpBuilder.jit_load = refuse_jit
    from deepspeed.accelerator import get_accelerator

    from alphaexa.parallel.deepspeed_ops import prebuilt, prebuilt_summary

    seconds = {}
    for name in OPS:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not prebuilt(builder):
            fail(f"DeepSpeed {deepspeed.__version__}: {name} is not prebuilt ({prebuilt_summary()}); "
                 "rebuild the wheel with DS_ACCELERATOR=cuda DS_BUILD_CPU_ADAM=1 DS_BUILD_AIO=1")
        t = time.perf_counter()
        try:
            builder.load(verbose=False)
        except Exception as e:  # noqa: BLE001 - wrong torch/CUDA version, a missing shared library: one line
            fail(f"DeepSpeed's prebuilt {builder.name} op does not load: {type(e).__name__}: {e}")
        seconds[builder.name] = time.perf_counter() - t
    return seconds


def meminfo_gib(field: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def available_gib() -> float:
    """Host memory a run may take: MemAvailable, or less where this container's cgroup caps it."""
    available = meminfo_gib("MemAvailable")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, (int(limit) - used) / GIB)
    except (OSError, ValueError):
        pass
    return available


def block_device_stat(path: Path) -> Path | None:
    """/sys stat file of the block device holding ``path`` (None on overlay/tmpfs: no device counters)."""
    dev = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    return stat if os.major(dev) and stat.exists() else None


def device_bytes(stat: Path | None) -> tuple[int, int]:
    if stat is None:
        return 0, 0
    f = stat.read_text().split()
    return int(f[2]) * 512, int(f[6]) * 512  # sectors read, sectors written


def process_bytes() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["read_bytes"]), int(fields["write_bytes"])


# ------------------------------------------------------------------ the planner's side
def model_config(name: str, n_layers: int | None):
    from topology.presets import get_preset

    cfg = get_preset(name)
    return cfg.replace(n_layers=n_layers, name=f"{name}-{n_layers}l") if n_layers else cfg


def host_peak(cfg, run: str, optimizer_on: str) -> dict:
    """Predicted host-memory peak of one run, GiB, and its parts (the arithmetic: module docstring)."""
    import torch

    from alphaexa.model.transformer import Transformer
    from alphaexa.parallel.deepspeed_engine import NVME_PARAM_BUFFER, nvme_param_buffers

    with torch.device("meta"):  # shapes only: the swap buffers' count and size
        model = Transformer(cfg)
    n = sum(p.numel() for p in model.parameters())
    parts = {"optimizer": n * OPTIMIZER_BYTES if optimizer_on == "cpu" else 0, "gradients": n * HOST_GRAD_BYTES,
             "transient": n * HOST_TRANSIENT_BYTES}
    if run == "cpu":
        parts["parameters"] = n * HOST_PARAM_BYTES_CPU
    else:
        largest = max(p.numel() for p in model.parameters())
        parts["parameters"] = min(n, NVME_MAX_IN_CPU) * PARAM_BYTES
        parts["swap_buffers"] = nvme_param_buffers(model) * max(NVME_PARAM_BUFFER, largest) * PARAM_BYTES
    parts = {k: v / GIB for k, v in parts.items()}
    return {"gib": sum(parts.values()), "parts_gib": parts, "params": n}


def fitting_depth(cfg, run: str, optimizer_on: str, allowed_gib: float) -> int | None:
    """The most blocks (at most cfg's) whose predicted host peak is within ``allowed_gib``; None: not even one."""
    for depth in range(cfg.n_layers, 0, -1):
        if host_peak(cfg.replace(n_layers=depth), run, optimizer_on)["gib"] <= allowed_gib:
            return depth
    return None


def planner_view(cfg, args, machine: dict) -> dict:
    """No-offload verdict, state size against this machine, and the planner's own offloaded plans."""
    from topology.modelcfg import param_counts
    from topology.planner import plan

    n = param_counts(cfg).total
    out = {"model": cfg.name, "params": n, "state_gib": n * (PARAM_BYTES + GRAD_BYTES + OPTIMIZER_BYTES) / GIB,
           "host_state_gib": {"nvme": n * (GRAD_BYTES + OPTIMIZER_BYTES) / GIB,
                              "cpu": n * (PARAM_BYTES + GRAD_BYTES + OPTIMIZER_BYTES) / GIB},
           "nvme_optimizer_gib": n * OPTIMIZER_BYTES / GIB, "nvme_params_gib": n * PARAM_BYTES / GIB}
    for offload in ("none", "cpu", "nvme"):
        result = plan(cfg, SYSTEM, nodes=1, global_batch=args.global_batch, seq_len=args.seq, offload=offload)
        est = result.plans[0].estimate if result.plans else result.nearest_miss
        out[f"planner_{offload}"] = None if est is None else {
            "fits": bool(result.plans), "layout": est.layout.short(), "gpu_gib": est.memory["total"],
            "capacity_gib": est.memory["capacity"], "step_s": est.step_time_s,
            "offloaded_gib": est.memory.get("offloaded_per_node"), "offload_capacity_gib": est.memory.get("offload_capacity")}
    none = out["planner_none"]
    out["fits_gpu_without_offload"] = bool(none and none["fits"])
    out["fits_this_host"] = {
        "nvme (params on disk, optimizer in RAM)": out["host_state_gib"]["nvme"] <= machine["ram_gib"]
        and out["nvme_params_gib"] <= machine["disk_free_gib"],
        "nvme (params and optimizer on disk)": out["nvme_params_gib"] + out["nvme_optimizer_gib"] <= machine["disk_free_gib"]
        and n * GRAD_BYTES / GIB <= machine["ram_gib"],
        "cpu": out["host_state_gib"]["cpu"] <= machine["ram_gib"]}
    return out


def run_system(machine: dict | None = None, disk_gbps: float = 0.0):
    """The ``SYSTEM`` catalogue node as the machine a run is on has it: its CPUs, RAM and free disk
    from ``machine`` (gpu_offload.json's ``machine``), and its disk's throughput where one was
    measured (``disk_gbps``; 0 keeps the catalogue's NVMe figure).  No ``machine``: the catalogue node."""
    import dataclasses

    from topology.planner import resolve_system

    system = resolve_system(SYSTEM)
    if not machine:
        return system
    node = dataclasses.replace(
        system.node, numa_cores=(f"0-{int(machine['cpus']) - 1}",), reserved_cores=(), threads_per_core=1,
        host_memory_gib=float(machine["ram_gib"]), nvme_gib=float(machine["disk_free_gib"]),
        # its DRAM bandwidth is not measured: the catalogue's 75 GB/s is a DGX H200's per-GPU share, and
        # this machine's 16 cores stream more than half of it (the 6-block CPU run's steady step), so no
        # DRAM cap: the cores bind (costmodel.host_stream_gbps)
        host_memory_gbps=0.0, nvme_gbps=disk_gbps or system.node.nvme_gbps)
    return dataclasses.replace(system, name=f"{SYSTEM} as measured", node=node)


def predicted_step(cfg, args, offload_params: str, optimizer_on: str, system=None) -> dict:
    """The cost model's step time for the layout the run uses (ZeRO-3, dp 1, --mbs), DeepSpeed engine,
    parameters on ``offload_params`` and the optimizer state on ``optimizer_on`` (the cost model's
    ``offload`` and ``offload_optimizer``), on ``system`` (default: the catalogue node; ``run_system``
    for the machine the run was on)."""
    from topology.costmodel import Request, estimate
    from topology.layout import Layout

    system = system or run_system()
    layout = Layout(dp_shard=1, sharding="zero3", mbs=args.mbs)
    req = Request(cfg, system, 1, args.global_batch, args.seq, offload=offload_params, engine="deepspeed",
                  offload_optimizer="" if optimizer_on == offload_params else optimizer_on)
    est = estimate(req, layout)
    node = system.node
    return {"step_s": est.step_time_s, "how": f"params {offload_params}, optimizer {optimizer_on}",
            "layout": est.layout.short(), "breakdown": {k: v for k, v in est.breakdown.items() if v},
            "assumes": f"{node.cores} cores, PCIe {node.pcie_gbps} GB/s, disk {node.nvme_gbps:.2f} GB/s, host DRAM "
                       f"{node.host_memory_gbps} GB/s ({system.name})"}


# ------------------------------------------------------------------ one run (child process)
def child(name: str, args) -> int:
    import faulthandler

    faulthandler.dump_traceback_later(max(args.run_timeout - 20, 10), exit=False)  # where a stuck run sits
    libaio()
    if not args.smoke:
        prebuilt_ops()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    import torch
    import torch.distributed as dist

    from alphaexa.model import build_model
    from alphaexa.parallel.deepspeed_engine import DeepSpeedOptions, DeepSpeedTrainStep
    from alphaexa.parallel.equivalence import token_batches
    from backends.launch import init_distributed
    from topology.layout import Layout

    cfg = model_config(args.model, args.n_layers)
    # one process, no launcher: DeepSpeed's engine asserts on LOCAL_RANK being set
    for var, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(29500 + os.getpid() % 1000))):
        os.environ.setdefault(var, value)
    init_distributed()
    cuda = torch.cuda.is_available()
    if cuda and args.gpu_cap_gib:
        # A smaller GPU on this one: the caching allocator refuses to hold more than the cap
        # (an out-of-memory error past it, as on a device of that size).
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_cap_gib * GIB / total))
        log(f"{name}: GPU memory capped at {args.gpu_cap_gib:.0f} GiB of {total / GIB:.0f} GiB")
    nvme = Path(args.nvme_dir) / name
    shutil.rmtree(nvme, ignore_errors=True)
    nvme.mkdir(parents=True, exist_ok=True)
    stat = block_device_stat(nvme)
    result_file = Path(args.out) / f"run-{name}.json"
    options = DeepSpeedOptions(offload_params=name, offload_optimizer=args.optimizer_on_resolved, nvme_path=str(nvme),
                               lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), max_norm=1.0)
    layout = Layout(dp_shard=1, sharding="zero3", mbs=args.mbs)
    record: dict = {"run": name, "offload_params": name, "offload_optimizer": options.offload_optimizer,
                    "block_device": str(stat.parent.name if stat else None), "steps": []}
    t = time.perf_counter()
    model = build_model(cfg, dtype=torch.bfloat16)  # host memory; DeepSpeed moves the shards
    record["model_build_s"] = time.perf_counter() - t
    log(f"{name}: model built in host memory in {record['model_build_s']:.0f} s")
    t = time.perf_counter()
    disk0 = device_bytes(stat)
    step = DeepSpeedTrainStep(model, layout, options, n_microbatches=args.global_batch // args.mbs,
                              compute_dtype=torch.bfloat16)
    del model
    record["engine_build_s"] = time.perf_counter() - t
    record["engine_build_disk_written_gib"] = (device_bytes(stat)[1] - disk0[1]) / GIB
    log(f"{name}: DeepSpeed engine built in {record['engine_build_s']:.0f} s (params {name}, optimizer "
        f"{options.offload_optimizer}), host RSS {meminfo_rss_gib():.1f} GiB")
    inputs, targets = token_batches(args.steps, args.global_batch, args.seq, cfg.vocab_size)
    for s in range(args.steps):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        proc0, disk0 = process_bytes(), device_bytes(stat)
        t = time.perf_counter()
        result = step(inputs[s], targets[s])
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        proc1, disk1 = process_bytes(), device_bytes(stat)
        r = {"step": s + 1, "loss": result.loss, "grad_norm": step.last_grad_norm, "step_s": seconds,
             "tokens_per_s": args.global_batch * args.seq / seconds,
             "gpu_peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
             "gpu_reserved_peak_gib": torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
             "host_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
             "process_read_gib": (proc1[0] - proc0[0]) / GIB, "process_written_gib": (proc1[1] - proc0[1]) / GIB,
             "device_read_gib": (disk1[0] - disk0[0]) / GIB if stat else None,
             "device_written_gib": (disk1[1] - disk0[1]) / GIB if stat else None,
             "swap_dir_gib": sum(f.stat().st_size for f in nvme.rglob("*") if f.is_file()) / GIB}
        record["steps"].append(r)
        result_file.write_text(json.dumps(record, indent=1))  # what a killed run had done
        dev = (f", disk read {r['device_read_gib']:.1f} / written {r['device_written_gib']:.1f} GiB"
               if stat else "")
        log(f"{name} step {s + 1}: loss {result.loss:.4f}, {seconds:.1f} s, {r['tokens_per_s']:,.0f} tok/s, GPU peak "
            f"{r['gpu_peak_gib']:.1f} GiB, host peak RSS {r['host_peak_rss_gib']:.1f} GiB, process read "
            f"{r['process_read_gib']:.1f} / written {r['process_written_gib']:.1f} GiB{dev}")
    step.engine.destroy()
    dist.destroy_process_group()
    shutil.rmtree(nvme, ignore_errors=True)
    faulthandler.cancel_dump_traceback_later()
    return 0


def meminfo_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def run_child(name: str, args, optimizer_on: str, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--optimizer-on-resolved", optimizer_on,
           *[a for a in sys.argv[1:]], *extra]  # extra last: argparse keeps the last value
    (Path(args.out) / f"run-{name}.json").unlink(missing_ok=True)
    started = time.perf_counter()
    last = ""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        import threading

        def pump():
            nonlocal last
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                if line.strip():
                    last = line.strip()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        rc = proc.wait(timeout=args.run_timeout)
        reader.join(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        rc = None
    result_file = Path(args.out) / f"run-{name}.json"
    record = json.loads(result_file.read_text()) if result_file.exists() else {"run": name, "steps": []}
    record["wall_s"] = time.perf_counter() - started
    if rc != 0:
        record["error"] = (f"killed after {args.run_timeout} s" if rc is None else f"exit {rc}") + f"; last line: {last}"
        log(f"{name}: FAILED: {record['error']}")
    return record


def summarise(record: dict, prediction: dict) -> None:
    steady = record["steps"][1:] or record["steps"]  # the first step also allocates swap files and buffers
    if not steady:
        return
    record["steady_step_s"] = sum(r["step_s"] for r in steady) / len(steady)
    record["steady_tokens_per_s"] = sum(r["tokens_per_s"] for r in steady) / len(steady)
    record["predicted"] = prediction
    record["error_vs_predicted"] = record["steady_step_s"] / prediction["step_s"] - 1
    log(f"{record['run']}: measured {record['steady_step_s']:.2f} s/step ({record['steady_tokens_per_s']:,.0f} tok/s) "
        f"vs planner {prediction['step_s']:.2f} s ({prediction['how']}): error {100 * record['error_vs_predicted']:+.0f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-logs"))
    parser.add_argument("--runs", default="nvme,cpu", help="comma list of nvme, cpu")
    parser.add_argument("--model", default="7b")
    parser.add_argument("--n-layers", type=int, default=24, help="the preset's depth (0: the preset's own)")
    parser.add_argument("--cpu-n-layers", type=int, default=None,
                        help="the cpu run's depth, when it differs from --n-layers (it is shrunk to fit the host anyway)")
    parser.add_argument("--gpu-cap-gib", type=float, default=0.0,
                        help="train as on a GPU of this size (torch.cuda.set_per_process_memory_fraction); 0: all of it")
    parser.add_argument("--check-model", default="30b", help="a model whose fit is only reported (issue 14's 30b)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--mbs", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--nvme-dir", default="/tmp/alphaexa-nvme")
    parser.add_argument("--optimizer-on", choices=("auto", "nvme", "cpu"), default="cpu",
                        help="nvme run: where the optimizer state goes (auto: nvme when the disk holds it; nvme "
                             "swaps 24 bytes a parameter through the disk every step: minutes for billions)")
    parser.add_argument("--disk-gbps", type=float, default=LENT_DISK_GBPS,
                        help="the --nvme-dir disk's throughput for the prediction, GB/s (default: the lent H200 "
                             "machine's, fitted on its 18-block run of session 5; 0: the catalogue's NVMe figure)")
    parser.add_argument("--run-timeout", type=float, default=240.0, help="seconds per run before it is killed")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check of this script (use a tiny --model): DeepSpeed's CPU accelerator, ops may compile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--optimizer-on-resolved", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.n_layers = args.n_layers or None
    if args.global_batch % args.mbs:
        fail(f"--global-batch {args.global_batch} is not a multiple of --mbs {args.mbs}")
    if args.child:
        return child(args.child, args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.nvme_dir).mkdir(parents=True, exist_ok=True)
    libaio()
    if args.smoke:
        os.environ["DS_ACCELERATOR"] = "cpu"  # the CPU smoke: DeepSpeed's CPU accelerator, which compiles its ops
    op_seconds = {} if args.smoke else prebuilt_ops()
    import deepspeed
    import torch

    log(f"DeepSpeed {deepspeed.__version__}, torch {torch.__version__}: prebuilt ops loaded without compiling in "
        + ", ".join(f"{k} {v:.2f} s" for k, v in op_seconds.items()))
    gpu = torch.cuda.is_available()
    machine = {"gpu": torch.cuda.get_device_name(0) if gpu else None,
               "gpu_gib": torch.cuda.get_device_properties(0).total_memory / GIB if gpu else 0.0,
               "ram_gib": meminfo_gib("MemTotal"), "ram_available_gib": available_gib(),
               "disk_free_gib": shutil.disk_usage(args.nvme_dir).free / GIB, "cpus": os.cpu_count(),
               "nvme_dir_block_device": getattr(block_device_stat(Path(args.nvme_dir)), "parent", Path("none")).name}
    log(f"machine: {json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in machine.items()})}")
    cfg = model_config(args.model, args.n_layers)
    report: dict = {"machine": machine, "gpu_cap_gib": args.gpu_cap_gib or None, "seq": args.seq, "global_batch": args.global_batch, "mbs": args.mbs,
                    "ops_load_s": op_seconds, "runs": []}
    for key, model in (("model", cfg), ("check_model", model_config(args.check_model, None))):
        view = planner_view(model, args, machine)
        report[key] = view
        none = view["planner_none"]
        log(f"{model.name} ({view['params'] / 1e9:.2f}B params, training state {view['state_gib']:.0f} GiB): planner "
            f"without offload {'fits' if view['fits_gpu_without_offload'] else 'does NOT fit'}: "
            f"{none['gpu_gib']:.1f} of {none['capacity_gib']:.0f} GiB ({none['layout']}); host state "
            f"{view['host_state_gib']['nvme']:.0f} GiB (nvme run) / {view['host_state_gib']['cpu']:.0f} GiB (cpu run) vs "
            f"RAM {machine['ram_gib']:.0f} GiB; optimizer on disk {view['nvme_optimizer_gib']:.0f} GiB vs "
            f"{machine['disk_free_gib']:.0f} GiB free; fits this host: {view['fits_this_host']}")
        for offload in ("cpu", "nvme"):
            p = view[f"planner_{offload}"]
            if p is None:
                log(f"  planner offload={offload}: no layout at all (not even a nearest miss)")
            else:
                log(f"  planner offload={offload}: {'plan' if p['fits'] else 'no plan'} {p['layout']}, GPU "
                    f"{p['gpu_gib']:.1f} GiB, step {p['step_s']:.1f} s, offloaded {p['offloaded_gib'] or 0:.0f} GiB of "
                    f"{p['offload_capacity_gib'] or 0:.0f} GiB ({SYSTEM} catalogue node)")
    (out / "gpu_offload.json").write_text(json.dumps(report, indent=1))
    if not gpu and not args.smoke:
        fail("no CUDA device: the ops and the planner are checked, the runs need a GPU")

    for name in args.runs.split(","):
        view = report["model"]
        optimizer_on = "cpu"
        if name == "nvme":
            optimizer_on = args.optimizer_on
            if optimizer_on == "auto":
                optimizer_on = "nvme" if view["nvme_optimizer_gib"] + view["nvme_params_gib"] < DISK_HEADROOM * machine[
                    "disk_free_gib"] else "cpu"
        available = available_gib()
        allowed = HOST_HEADROOM * available
        run_cfg, extra = cfg, ()
        if name == "cpu" and args.cpu_n_layers:
            run_cfg, extra = model_config(args.model, args.cpu_n_layers), ("--n-layers", str(args.cpu_n_layers))
        peak = host_peak(run_cfg, name, optimizer_on)
        if peak["gib"] > allowed:
            depth = fitting_depth(run_cfg, name, optimizer_on, allowed)
            why = (f"its predicted host peak, {peak['gib']:.0f} GiB "
                   f"({', '.join(f'{k} {v:.1f}' for k, v in peak['parts_gib'].items())}), is more than "
                   f"{HOST_HEADROOM:.0%} of the {available:.0f} GiB available")
            if depth is None:
                log(f"{name}: SKIPPED: {why}, even with one block")
                report["runs"].append({"run": name, "error": f"host peak {peak['gib']:.0f} GiB > {allowed:.0f} GiB allowed",
                                       "host_peak": peak})
                continue
            run_cfg, extra = model_config(args.model, depth), ("--n-layers", str(depth))
            peak = host_peak(run_cfg, name, optimizer_on)
            log(f"{name}: SHRUNK to {depth} blocks: {why}; {depth} blocks: {peak['gib']:.0f} GiB")
        log(f"{name}: starting {run_cfg.name} (params {name}, optimizer {optimizer_on}, predicted host peak "
            f"{peak['gib']:.0f} GiB of {available:.0f} GiB available, limit {args.run_timeout:.0f} s)")
        record = run_child(name, args, optimizer_on, extra)
        record.update(model=run_cfg.name, host_peak=peak)
        if record["steps"]:
            summarise(record, predicted_step(run_cfg, args, name, optimizer_on, run_system(machine, args.disk_gbps)))
        report["runs"].append(record)
        (out / "gpu_offload.json").write_text(json.dumps(report, indent=1))
    log(f"wrote {out / 'gpu_offload.json'}")
    return 0 if all("error" not in r for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
