"""ZeRO-Infinity (NVMe) and ZeRO-Offload (CPU) on one GPU: a model trained with its state off the device.

    python3 bench/gpu_offload.py --out $OUT                       # both runs, 7b, 4 steps each
    python3 bench/gpu_offload.py --out $OUT --runs nvme --model 7b --n-layers 40 --steps 3

For a machine with no package registry and no libaio (the H200 image): before anything
else this script
* unpacks ``.deb/libaio1_*.deb`` and ``.deb/libaio-dev_*.deb`` (``apt-get download`` on a
  Debian machine) with ``dpkg -x`` into a private folder, and re-executes itself with
  ``CPATH`` / ``LIBRARY_PATH`` (DeepSpeed compiles async_io against them) and
  ``LD_LIBRARY_PATH`` (the loader reads it only at process start) pointing there;
* installs DeepSpeed from the wheels in ``.whl/`` (``pip install --no-index``) when it is
  not importable.

Each run (one process, DeepSpeed ZeRO-3 on the GPU, bf16 compute, DeepSpeed's CPU AdamW):
* ``nvme``: parameters on NVMe (``--nvme-dir``), optimizer state on NVMe too when the disk
  holds it (``--optimizer-on auto``), else in host memory;
* ``cpu``: parameters and optimizer state in host memory.
Printed and written to ``OUT/gpu_offload.json``: the planner's memory figure for the model
without offload (why it needs offload), tokens/s, step times, GPU peak memory, host
memory (peak RSS), bytes this process read and wrote per step (``/proc/self/io``, which
counts the NVMe swap traffic; with --nvme-dir on a page-cached file system reads may be
served from memory, so the swap directory's size is reported too) and the loss per step.
"""
from __future__ import annotations

import argparse
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
BYTES_PER_PARAM_STATE = {"params": 2, "optimizer": 12}  # bf16 weights; fp32 master + Adam m, v


def bring_libaio() -> None:
    """Unpack libaio next to us and restart with the paths set, unless this process already has them."""
    if os.environ.get("ALPHAEXA_LIBAIO") == str(LIBAIO_DIR):
        return
    if Path("/usr/include/libaio.h").exists():
        return
    debs = sorted((REPO / ".deb").glob("libaio*.deb"))
    if not debs:
        sys.exit("gpu_offload: libaio is not installed and .deb/ holds no libaio*.deb (apt-get download "
                 "libaio1 libaio-dev on a Debian machine)")
    if shutil.which("dpkg") is None:
        sys.exit("gpu_offload: dpkg is missing, cannot unpack .deb/libaio*.deb")
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(LIBAIO_DIR)], check=True)
    lib = LIBAIO_DIR / MULTIARCH
    if not (lib / "libaio.so").exists():  # the -dev package's link may point at an absolute path
        (lib / "libaio.so").unlink(missing_ok=True)
        (lib / "libaio.so").symlink_to(next(lib.glob("libaio.so.1*")).name)
    env = dict(os.environ, ALPHAEXA_LIBAIO=str(LIBAIO_DIR))
    for var, path in (("CPATH", LIBAIO_DIR / "usr/include"), ("LIBRARY_PATH", lib), ("LD_LIBRARY_PATH", lib)):
        env[var] = os.pathsep.join(filter(None, [str(path), env.get(var)]))
    print(f"gpu_offload: libaio from {', '.join(d.name for d in debs)} unpacked into {LIBAIO_DIR}", flush=True)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def bring_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                        str(REPO / ".whl"), "deepspeed==0.19.8"], check=True)


def io_bytes() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["read_bytes"]), int(fields["write_bytes"])


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def planner_memory(model_cfg, global_batch: int, seq: int) -> str:
    """The planner's verdict for this model on one H200 without offload (best or nearest layout's memory)."""
    from topology.planner import plan

    result = plan(model_cfg, "h200-x1", nodes=1, global_batch=global_batch, seq_len=seq, offload="none")
    best = result.plans[0].estimate if result.plans else result.nearest_miss
    verdict = "fits" if result.plans else "does not fit"
    return f"{verdict}: {best.memory['total']:.1f} of {best.memory['capacity']:.0f} GiB ({best.layout.short()})"


def run(name: str, args, model_cfg) -> dict:
    import torch
    import torch.distributed as dist

    from alphaexa.model import build_model
    from alphaexa.parallel.deepspeed_engine import DeepSpeedOptions, DeepSpeedTrainStep
    from alphaexa.parallel.equivalence import token_batches
    from topology.layout import Layout
    from topology.modelcfg import param_counts

    n_params = param_counts(model_cfg).total
    nvme = Path(args.nvme_dir) / name
    shutil.rmtree(nvme, ignore_errors=True)
    optimizer_on = "cpu"
    if name == "nvme":
        Path(args.nvme_dir).mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(args.nvme_dir).free
        need = n_params * BYTES_PER_PARAM_STATE["optimizer"] * 1.1
        optimizer_on = args.optimizer_on if args.optimizer_on != "auto" else ("nvme" if need < free else "cpu")
        print(f"{name}: disk {free / 2**30:.0f} GiB free, optimizer state needs {need / 2**30:.0f} GiB -> "
              f"optimizer on {optimizer_on}", flush=True)
    options = DeepSpeedOptions(offload_params="nvme" if name == "nvme" else "cpu", offload_optimizer=optimizer_on,
                               nvme_path=str(nvme), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), max_norm=1.0)
    layout = Layout(dp_shard=1, sharding="zero3", mbs=args.mbs)
    n_micro = args.global_batch // args.mbs
    started = time.perf_counter()
    model = build_model(model_cfg, dtype=torch.bfloat16)  # host memory; DeepSpeed moves the shards
    step = DeepSpeedTrainStep(model, layout, options, n_microbatches=n_micro, compute_dtype=torch.bfloat16)
    del model
    setup_s = time.perf_counter() - started
    inputs, targets = token_batches(args.steps, args.global_batch, args.seq, model_cfg.vocab_size)
    records = []
    for s in range(args.steps):
        torch.cuda.reset_peak_memory_stats()
        read0, written0 = io_bytes()
        t0 = time.perf_counter()
        result = step(inputs[s], targets[s])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        read1, written1 = io_bytes()
        record = {"step": s + 1, "loss": result.loss, "grad_norm": step.last_grad_norm, "step_s": seconds,
                  "tokens_per_s": args.global_batch * args.seq / seconds,
                  "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                  "host_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "read_gib": (read1 - read0) / 2**30, "written_gib": (written1 - written0) / 2**30,
                  "swap_dir_gib": dir_bytes(nvme) / 2**30 if nvme.exists() else 0.0}
        records.append(record)
        print(f"{name} step {s + 1}: loss {result.loss:.4f}, {seconds:.1f} s, {record['tokens_per_s']:,.0f} tok/s, "
              f"GPU peak {record['gpu_peak_gib']:.1f} GiB, host RSS {record['host_peak_rss_gib']:.1f} GiB, "
              f"read {record['read_gib']:.1f} GiB, written {record['written_gib']:.1f} GiB", flush=True)
    steady = records[1:] or records  # the first step also allocates swap files and buffers
    summary = {"run": name, "params": n_params, "offload_params": options.offload_params,
               "offload_optimizer": optimizer_on, "setup_s": setup_s, "steps": records,
               "steady_tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
               "steady_step_s": sum(r["step_s"] for r in steady) / len(steady)}
    step.engine.destroy()
    dist.barrier()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-logs"))
    parser.add_argument("--runs", default="nvme,cpu", help="comma list of nvme, cpu")
    parser.add_argument("--model", default="7b")
    parser.add_argument("--n-layers", type=int, help="override the preset's depth (a larger model)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--mbs", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--nvme-dir", default="/tmp/alphaexa-nvme")
    parser.add_argument("--optimizer-on", choices=("auto", "nvme", "cpu"), default="auto",
                        help="nvme run: where the optimizer state goes (auto: nvme when the disk holds it)")
    args = parser.parse_args()
    bring_libaio()
    bring_deepspeed()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    import torch.distributed as dist

    from backends.launch import init_distributed
    from topology.presets import get_preset

    model_cfg = get_preset(args.model)
    if args.n_layers:
        model_cfg = model_cfg.replace(n_layers=args.n_layers, name=f"{args.model}-{args.n_layers}l")
    init_distributed()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": model_cfg.name, "seq": args.seq, "global_batch": args.global_batch,
              "planner_without_offload": planner_memory(model_cfg, args.global_batch, args.seq), "runs": []}
    print(f"{model_cfg.name}: planner without offload: {report['planner_without_offload']}", flush=True)
    for name in args.runs.split(","):
        try:
            report["runs"].append(run(name, args, model_cfg))
        except Exception as e:  # noqa: BLE001 - the next run still runs; the failure is reported
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
            report["runs"].append({"run": name, "error": f"{type(e).__name__}: {e}"})
        (out / "gpu_offload.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()
    return 0 if all("error" not in r for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
