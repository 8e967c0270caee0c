"""Measure a machine for the planner: GEMMs by shape, fused attention, collectives by size and group.

Raw timings only (each a synchronised call timed from the host, median of repeats);
``topology.profile.fit_profile`` turns them into cost-model constants.  Used by
``alphaexa calibrate`` (writes a profile ``alphaexa plan --profile`` reads) and by
``bench/gpu_calibrate.py`` (measured vs predicted report).  ``smoke``: tiny sizes on
the CPU with gloo, to check the code path on a machine without GPUs.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

GEMM_SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192),
               (8192, 12288, 4096), (8192, 4096, 11008), (16384, 5632, 2048), (2048, 32000, 2048)]
SMOKE_GEMM_SHAPES = [(64, 64, 64), (128, 256, 64)]
# (batch, heads, seq, head_dim): transformer-shaped causal attention
ATTENTION_CASES = [(2, 32, 4096, 128), (4, 16, 2048, 128), (1, 64, 8192, 128)]
SMOKE_ATTENTION_CASES = [(1, 2, 64, 16)]
COLLECTIVE_BYTES = [1 << 20, 16 << 20, 256 << 20, 1 << 30]
SMOKE_COLLECTIVE_BYTES = [1 << 12, 1 << 16]
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
# torch >= 2.12 names the tensor collectives *_single (the *_into_tensor / *_tensor names are deprecated)
GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_reps(fn, device: torch.device, reps: int, warmup: int) -> list[float]:
    """Seconds of each of ``reps`` calls after ``warmup`` (a fixed count: collectives must match across ranks)."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - t0)
    return samples


def timed(fn, device: torch.device, min_seconds: float, warmup: int = 3) -> float:
    """Median seconds per call, over enough calls to fill ``min_seconds``."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(3, min(200, int(min_seconds / once)))
    return statistics.median(timed_reps(fn, device, reps, 0))


def measure_gemms(device: torch.device, shapes: list[tuple[int, int, int]], min_seconds: float) -> list[dict]:
    rows = []
    for m, n, k in shapes:
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
        rows.append({"m": m, "n": n, "k": k, "measured_s": timed(lambda a=a, b=b: a @ b, device, min_seconds)})
    return rows


def measure_attention(device: torch.device, cases: list[tuple[int, int, int, int]], min_seconds: float) -> list[dict]:
    """Causal SDPA forward + backward (the kernel torch picks by default), bf16."""
    rows = []
    for batch, heads, seq, dim in cases:
        q, k, v = (torch.randn(batch, heads, seq, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))

        def step(q=q, k=k, v=v):
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        rows.append({"batch": batch, "heads": heads, "seq": seq, "head_dim": dim,
                     "measured_s": timed(step, device, min_seconds)})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collective_worker(rank: int, world: int, port: int, smoke: bool, sizes: list[int], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if smoke:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world)
    else:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    results = []
    for nbytes in sizes:
        numel = nbytes // 2 // world * world  # bf16, divisible by the world
        full = torch.ones(numel, device=device, dtype=torch.bfloat16)
        shard = torch.ones(numel // world, device=device, dtype=torch.bfloat16)
        recv = torch.empty_like(full)
        calls = {
            "all_reduce": lambda full=full: dist.all_reduce(full),
            "all_gather": lambda recv=recv, shard=shard: GATHER(recv, shard),
            "reduce_scatter": lambda shard=shard, full=full: REDUCE_SCATTER(shard, full),
            "all_to_all": lambda recv=recv, full=full: dist.all_to_all_single(recv, full),
        }
        reps = 5 if nbytes >= 1 << 30 else 10 if nbytes >= 1 << 28 else 20
        for op in OPS:
            dist.barrier()
            samples = timed_reps(calls[op], device, reps, warmup=2)
            mine = torch.tensor([statistics.median(samples)], dtype=torch.float64, device=device)
            dist.all_reduce(mine, op=dist.ReduceOp.MAX)  # the slowest rank is the collective's time
            results.append({"op": op, "bytes": numel * 2, "seconds": float(mine.item()), "world": world})
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def measure_collectives(world: int, sizes: list[int], smoke: bool, tmp: Path) -> list[dict]:
    """Every op of OPS at every size on ``world`` local ranks (one process per GPU, or gloo on CPU)."""
    out = tmp / f"collectives_{world}.json"
    mp.spawn(_collective_worker, args=(world, free_port(), smoke, sizes, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def group_sizes(n_devices: int) -> list[int]:
    """2, 4, ... up to the devices there are: the groups collectives are measured on."""
    out, world = [], 2
    while world <= n_devices:
        out.append(world)
        world *= 2
    return out


def measure_machine(smoke: bool, n_devices: int, tmp: Path, skip: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """Everything a profile is fitted from: gemm, attention and collectives rows."""
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    measured: dict[str, list[dict]] = {}
    if "gemm" not in skip:
        measured["gemm"] = measure_gemms(device, SMOKE_GEMM_SHAPES if smoke else GEMM_SHAPES, 0.05 if smoke else 0.3)
    if "attention" not in skip:
        measured["attention"] = measure_attention(device, SMOKE_ATTENTION_CASES if smoke else ATTENTION_CASES,
                                                  0.05 if smoke else 0.5)
    if "collectives" not in skip:
        sizes = SMOKE_COLLECTIVE_BYTES if smoke else COLLECTIVE_BYTES
        measured["collectives"] = [row for world in group_sizes(n_devices)
                                   for row in measure_collectives(world, sizes, smoke, tmp)]
    return measured
