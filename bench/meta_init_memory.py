"""Peak memory per rank when training starts: the meta-device path against the whole-model path.

    python bench/meta_init_memory.py --out DIR        # 1b, FSDP over 4 CPU ranks (gloo), both paths
    python bench/meta_init_memory.py --model debug --nproc 2 --seq-len 32 --out DIR   # plumbing, seconds
    (the GPU variant, one command for an H200: bench/gpu_meta_init.py)

The two paths, each run in fresh processes (one per rank) so that every figure is that path's own:
- ``meta`` (the trainer's): ``Transformer`` on the meta device, ``parallelize``, ``materialise``
  this rank's shards.
- ``whole`` (the trainer's path before issue 11): every rank builds and initialises the whole
  model with ``build_model``, then ``parallelize`` keeps its shards.  On a CPU the ranks build in
  turn (``--stagger``, on by default), so that only one whole copy exists on the machine at a
  time; that changes the sum over ranks, not any rank's own peak.

Then each rank trains as the trainer does: AdamW from ``build_optimizer`` (foreach on CPU, fused
on GPUs), one sequence of ``--seq-len`` random tokens per rank per step, global-norm clipping.
Recorded per rank: the peak resident set (the kernel's high-water mark, ``getrusage``
``ru_maxrss``) after the process group exists (the baseline: interpreter, torch), when the model
is ready, just before the first optimizer step, and after it; on an accelerator also the peak
allocated and reserved device memory, and the time from the launch of the path (before its
processes start) to the end of the first step.

Why both windows: AdamW's first step allocates its two moments.  In fp32 with FSDP over 4 ranks
a rank then holds (4 + 4 + 8) / 4 = 4 bytes per parameter, as much as one whole fp32 copy, so
after the first step the two paths converge whatever the build does; the build itself is what
the meta path changes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 2**30
PATHS = ("meta", "whole")
MARKS = ("baseline", "model_ready", "before_optimizer_step", "after_first_step")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def build_parallel_model(cfg, layout_spec: dict, world: int, path: str, device, compute_dtype, seed: int,
                         stagger: bool):
    """The model of ``path`` on this rank, parallelized with ``layout_spec`` over ``world`` ranks."""
    import torch
    import torch.distributed as dist

    from alphaexa.model import Transformer, build_model
    from alphaexa.parallel import build_mesh, check_layout, materialise, parallelize
    from backends.device import get_backend
    from topology.layout import Layout, resolve_layout

    layout = resolve_layout(Layout.from_dict(layout_spec).resolve(world), world, cfg,
                            layout_spec.get("mbs", 1) * world, cfg.max_seq_len)
    check_layout(layout, cfg, device.type)
    dims = build_mesh(layout, get_backend(device.type), device)
    if path == "meta":
        with torch.device("meta"):
            model = Transformer(cfg)
        pmodel = parallelize(model, dims, compute_dtype=compute_dtype)
        materialise(pmodel, seed=seed)
        return pmodel
    pmodel = None
    for turn in range(world if stagger else 1):
        if not stagger or turn == dist.get_rank():
            pmodel = parallelize(build_model(cfg, device=device, seed=seed), dims, compute_dtype=compute_dtype)
        if stagger:
            dist.barrier()
    return pmodel


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, path: str, launched: float,
              out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from alphaexa.parallel import clip_grad_norm_, make_train_step
    from alphaexa.train.config import TrainSection
    from alphaexa.train.optim import build_optimizer
    from topology import get_preset

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    else:
        device = torch.device(args.device, rank)
        torch.accelerator.set_device_index(rank)
        backend = {"cuda": "nccl", "xpu": "xccl"}[args.device]
        dist.init_process_group(f"cpu:gloo,{args.device}:{backend}", rank=rank, world_size=world,
                                device_id=device, timeout=datetime.timedelta(minutes=30))
    stagger = args.stagger and world > 1
    marks = {"baseline": peak_rss_bytes()}
    cfg = get_preset(args.model).replace(max_seq_len=args.seq_len)
    compute_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    spec = {"dp_shard": world, "mbs": args.mbs, "recompute": args.recompute}
    started = time.perf_counter()
    pmodel = build_parallel_model(cfg, spec, world, path, device, compute_dtype, seed=0, stagger=stagger)
    build_seconds = time.perf_counter() - started
    marks["model_ready"] = peak_rss_bytes()

    optimizers = [build_optimizer([chunk], TrainSection(), device.type) for chunk in pmodel.chunks]
    step = make_train_step(pmodel, n_microbatches=1)
    generator = torch.Generator().manual_seed(rank)
    step_seconds, first_step_since_launch = [], None
    for index in range(args.steps):
        tokens = torch.randint(cfg.vocab_size, (args.mbs, args.seq_len + 1), generator=generator).to(device)
        started = time.perf_counter()
        loss = step(tokens[:, :-1], tokens[:, 1:]).loss
        clip_grad_norm_(pmodel.parameters(), 1.0, pmodel.dims)
        if index == 0:
            marks["before_optimizer_step"] = peak_rss_bytes()
        # Staggered (one step only), the ranks step in turn and then drop their moments and
        # gradients: the optimizer step is local, so each rank's own peak is unchanged.
        for turn in range(world if stagger else 1):
            if not stagger or turn == rank:
                for optimizer in optimizers:
                    optimizer.step()
                    optimizer.zero_grad()
                if device.type != "cpu":
                    torch.accelerator.synchronize()
                step_seconds.append(time.perf_counter() - started)
                if index == 0:
                    marks["after_first_step"] = peak_rss_bytes()
                    first_step_since_launch = time.time() - launched
                if stagger:
                    for optimizer in optimizers:
                        optimizer.state.clear()
            if stagger:
                dist.barrier()
    result = {"rank": rank, "path": path, "peak_rss_bytes": marks, "build_seconds": build_seconds,
              "first_step_since_launch_s": first_step_since_launch, "step_seconds": step_seconds,
              "last_loss": loss, "parameters_on_rank": sum(p.to_local().numel() if hasattr(p, "to_local")
                                                         else p.numel() for p in pmodel.parameters())}
    if device.type != "cpu":
        runtime = getattr(torch, device.type)
        result["device_peak_allocated_bytes"] = runtime.max_memory_allocated(device)
        result["device_peak_reserved_bytes"] = runtime.max_memory_reserved(device)
    Path(out_dir, f"{path}-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run_path(args: argparse.Namespace, path: str, out_dir: Path) -> list[dict]:
    import torch.multiprocessing as mp

    from backends.launch import free_port

    launched = time.time()
    context = mp.start_processes(rank_main, args=(args.nproc, free_port(), args, path, launched, str(out_dir)),
                                 nprocs=args.nproc, join=False, start_method="spawn")
    # Other work shares this machine: stop before the ranks take its last memory.
    while not context.join(timeout=1):
        if available_memory_bytes() < args.min_free_gib * GIB:
            for process in context.processes:
                process.kill()
            raise SystemExit(f"{path}: stopped, less than {args.min_free_gib} GiB of memory left on this machine")
    return [json.loads((out_dir / f"{path}-rank{r}.json").read_text()) for r in range(args.nproc)]


def summarise(per_path: dict[str, list[dict]]) -> dict:
    """Per path the worst rank's figure at each mark; the meta/whole ratio of each window."""
    out: dict = {"paths": {}}
    for path, ranks in per_path.items():
        row = {f"peak_rss_gib_{mark}": max(r["peak_rss_bytes"][mark] for r in ranks) / GIB for mark in MARKS}
        row["build_seconds"] = max(r["build_seconds"] for r in ranks)
        row["first_step_since_launch_s"] = max(r["first_step_since_launch_s"] for r in ranks)
        # The first step includes one-off work (the optimizer's state, allocator growth).
        row["median_step_s"] = statistics.median(s for r in ranks for s in r["step_seconds"][1:] or r["step_seconds"])
        if "device_peak_allocated_bytes" in ranks[0]:
            row["device_peak_allocated_gib"] = max(r["device_peak_allocated_bytes"] for r in ranks) / GIB
            row["device_peak_reserved_gib"] = max(r["device_peak_reserved_bytes"] for r in ranks) / GIB
        out["paths"][path] = row
    if set(per_path) == set(PATHS):
        meta, whole = out["paths"]["meta"], out["paths"]["whole"]
        out["meta_over_whole"] = {mark: meta[f"peak_rss_gib_{mark}"] / whole[f"peak_rss_gib_{mark}"]
                                  for mark in ("model_ready", "before_optimizer_step", "after_first_step")}
        if "device_peak_allocated_gib" in meta:
            out["meta_over_whole"]["device_peak_allocated"] = (meta["device_peak_allocated_gib"]
                                                               / whole["device_peak_allocated_gib"])
    return out


def print_table(args: argparse.Namespace, summary: dict) -> None:
    print(f"{args.model}: FSDP over {args.nproc} {args.device} rank(s), {args.dtype}, seq {args.seq_len}, "
          f"mbs {args.mbs}, recompute {args.recompute}, {args.steps} step(s); worst rank per figure")
    header = ["path", *(f"RSS {m} GiB" for m in MARKS), "build s", "launch->1st step s", "step s"]
    device_columns = "device_peak_allocated_gib" in next(iter(summary["paths"].values()))
    if device_columns:
        header += ["dev alloc GiB", "dev reserved GiB"]
    print("  ".join(header))
    for path, row in summary["paths"].items():
        cells = [path, *(f"{row[f'peak_rss_gib_{m}']:.2f}" for m in MARKS), f"{row['build_seconds']:.1f}",
                 f"{row['first_step_since_launch_s']:.1f}", f"{row['median_step_s']:.2f}"]
        if device_columns:
            cells += [f"{row['device_peak_allocated_gib']:.2f}", f"{row['device_peak_reserved_gib']:.2f}"]
        print("  ".join(cells))
    for mark, ratio in summary.get("meta_over_whole", {}).items():
        print(f"meta / whole, peak up to {mark}: {ratio:.3f}")


def parser(description: str = __doc__.splitlines()[0], **defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="1b", help="preset")
    p.add_argument("--nproc", type=int, default=4, help="ranks; FSDP shards over all of them")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "xpu"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="compute dtype (master weights fp32)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--mbs", type=int, default=1, help="sequences per rank per step")
    p.add_argument("--recompute", default="none", choices=("none", "selective", "full"))
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated: meta, whole")
    p.add_argument("--stagger", action=argparse.BooleanOptionalAction, default=True,
                   help="ranks build (whole path) and take the optimizer step in turn, so that the machine "
                        "holds one whole copy and one rank's optimizer state at a time (needs --steps 1)")
    p.add_argument("--min-free-gib", type=float, default=1.0,
                   help="stop the run when the machine's available memory falls below this")
    p.add_argument("--malloc-mmap-threshold", type=int, default=2**20,
                   help="glibc M_MMAP_THRESHOLD for the ranks (0: glibc's dynamic default): blocks above it "
                        "go back to the system when freed, so the resident set follows live memory")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--out", default=os.environ.get("OUT"), help="directory for the per-rank and summary JSON")
    p.set_defaults(**defaults)
    return p


def main(argv: list[str] | None = None, **defaults) -> dict:
    args = parser(**defaults).parse_args(argv)
    paths = args.paths.split(",")
    if not args.out or not set(paths) <= set(PATHS):
        raise SystemExit(f"need --out DIR (or $OUT) and --paths from {PATHS}")
    if args.stagger and args.nproc > 1 and args.steps > 1:
        raise SystemExit("--stagger takes one step (the ranks drop their optimizer state after it): "
                         "pass --steps 1 or --no-stagger")
    if args.malloc_mmap_threshold:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    per_path = {path: run_path(args, path, out_dir) for path in paths}
    summary = {"args": vars(args), **summarise(per_path)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(args, summary)
    return summary


if __name__ == "__main__":
    main()
