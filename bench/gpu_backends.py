"""Check the backends layer on a GPU machine (H100/H200, 1 or 2 GPUs); prints figures, exits non-zero on failure.

    python bench/gpu_backends.py            # env, device API, attention equivalence + timings, all-reduce
    python bench/gpu_backends.py --quick    # smaller attention shapes, no timings

Sections:
  1. what `alphaexa env --json` reports here (device, collectives, kernels, peak FLOP/s);
  2. the Backend device API on this GPU (memory counters, seeding, sync) and a bf16
     matmul's measured TFLOP/s against the peak table (a measurement above the table's
     peak means the table is wrong);
  3. every attention kernel -- flash-attn (FA2/FA3 if installed), SDPA with its default
     dispatch and each SDPA backend forced (flash, efficient, cuDNN) -- against the float64
     math reference, values and gradients, bf16 and fp16, causal / non-causal / GQA /
     sliding window / KV-cache decode; fwd+bwd timings on a long causal case;
  4. with >= 2 visible GPUs (or --nproc N): N processes under torchrun, each through
     backends.launch.init_distributed (nccl on CUDA), all-reduce checked exactly, and
     the bus bandwidth of a 256 MiB all-reduce; the same under mpiexec when mpiexec and
     mpi4py are installed (exercises the mpi4py rendezvous bootstrap).

Runs on a CPU-only machine too (what exists there: SDPA flash/math, gloo), which is how
its logic was checked before it met a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel

from backends.attention import KERNELS, attend, available_kernels, describe_call, select_kernel
from backends.device import get_backend, peak_bf16_flops_for
from backends.errors import BackendError
from backends.launch import destroy_distributed, init_distributed

FAILURES: list[str] = []


def fail(message: str) -> None:
    FAILURES.append(message)
    print(f"  FAIL {message}", flush=True)


# --- 1. env ---------------------------------------------------------------------------------------


def section_env() -> None:
    from alphaexa.commands.env import collect

    print("== alphaexa env --json", flush=True)
    info = collect()
    print(json.dumps(info, indent=1), flush=True)
    if torch.cuda.is_available():
        if (info["device_type"], info["dist_backend"]) != ("cuda", "nccl"):
            fail(f"env reports {info['device_type']}/{info['dist_backend']} on a CUDA machine")
        if "sdpa" not in info["attention_kernels"]:
            fail("sdpa missing from the CUDA attention kernels")


# --- 2. device API --------------------------------------------------------------------------------


def timed(fn, iters: int, sync) -> float:
    """Median seconds per call after two warm-up calls."""
    fn()
    fn()
    sync()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def section_device(quick: bool) -> None:
    backend = get_backend()
    backend.set_device(0)
    device = backend.device
    print(f"\n== device API: {backend} name={backend.device_name()!r}", flush=True)
    print(
        f"  device_count={backend.device_count()} bf16={backend.supports_bf16()} fp16={backend.supports_fp16()}"
    )
    if device.type == "cpu":
        print("  (CPU: memory counters are the process RSS; see tests/test_backends.py)")
        return
    backend.empty_cache()
    backend.reset_peak_memory()
    base = backend.memory_allocated()
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    grown = backend.memory_allocated() - base
    peak = backend.max_memory_allocated()
    del block
    backend.reset_peak_memory()
    after_reset = backend.max_memory_allocated()
    print(
        f"  256 MiB block: memory_allocated +{grown / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, "
        f"peak after free+reset {after_reset / 2**20:.0f} MiB"
    )
    if grown < 256 * 2**20 or after_reset >= peak:
        fail("memory counters did not follow a 256 MiB allocation")
    backend.manual_seed(7)
    first = torch.randn(8, device=device)
    backend.manual_seed(7)
    if not torch.equal(first, torch.randn(8, device=device)):
        fail("manual_seed does not reproduce device random numbers")

    n = 4096 if quick else 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    seconds = timed(lambda: a @ b, 5 if quick else 20, backend.synchronize)
    measured = 2 * n**3 / seconds
    try:
        peak_flops = backend.peak_bf16_flops()
    except BackendError as e:
        fail(str(e))
        return
    print(
        f"  bf16 matmul {n}^3: {measured / 1e12:.1f} TFLOP/s measured, table peak {peak_flops / 1e12:.1f} "
        f"TFLOP/s -> {100 * measured / peak_flops:.0f}% of peak"
    )
    if measured > 1.05 * peak_flops:
        fail(
            f"measured bf16 matmul {measured / 1e12:.1f} TF exceeds the table's peak for {backend.device_name()!r}"
        )
    if peak_bf16_flops_for(backend.device_name()) is None:
        fail(f"no peak entry matches {backend.device_name()!r}")


# --- 3. attention ---------------------------------------------------------------------------------

# (name, batch, q_heads, kv_heads, q_len, kv_len, head_dim, causal, window, q_offset)
SMALL_CASES = [
    ("causal", 2, 8, 8, 128, 128, 64, True, 0, 0),
    ("noncausal", 2, 8, 8, 128, 128, 64, False, 0, 0),
    ("gqa4", 2, 16, 4, 256, 256, 128, True, 0, 0),
    ("window64", 2, 8, 2, 256, 256, 64, True, 64, 0),
    ("window_noncausal", 1, 4, 4, 128, 128, 64, False, 32, 0),
    ("decode_one", 4, 16, 4, 1, 300, 128, True, 0, 299),
    ("decode_chunk", 2, 16, 4, 16, 300, 128, True, 0, 284),
    ("decode_window", 2, 16, 4, 16, 300, 128, True, 100, 284),
]
LONG_CASE = ("long_causal_gqa", 2, 32, 8, 4096, 4096, 128, True, 0, 0)
QUICK_LONG_CASE = ("long_causal_gqa", 1, 16, 4, 1024, 1024, 128, True, 0, 0)
# Relative to the reference's largest magnitude; a wrong mask or head mapping is O(0.1-1).
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float32: 1e-3}


def variants(device_type: str) -> list[tuple[str, str, SDPBackend | None]]:
    """(label, kernel, forced SDPA backend) for everything that could serve attention here."""
    found = [(name, name, None) for name in available_kernels(device_type) if name not in ("sdpa", "math")]
    found.append(("sdpa", "sdpa", None))
    forced = (
        ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]
        if device_type == "cuda"
        else ["FLASH_ATTENTION", "MATH"]
    )
    found += [(f"sdpa[{b.lower()}]", "sdpa", getattr(SDPBackend, b)) for b in forced]
    return found


def run_attention(case, kernel: str, sdpa_backend, q, k, v, grad_out):
    *_, causal, window, q_offset = case
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    with warnings.catch_warnings():
        # SDPA warns about each backend it skips; a refusal is reported below instead.
        warnings.simplefilter("ignore")
        if sdpa_backend is None:
            out = attend(q, k, v, causal=causal, window=window, q_offset=q_offset, kernel=kernel)
            out.backward(grad_out)
        else:
            with sdpa_kernel([sdpa_backend]):
                out = attend(q, k, v, causal=causal, window=window, q_offset=q_offset, kernel=kernel)
                out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def make_inputs(case, device, dtype, seed=0):
    _, b, hq, hkv, sq, sk, d, *_ = case
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [(b, hq, sq, d), (b, hkv, sk, d), (b, hkv, sk, d), (b, hq, sq, d)]
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]


def attention_flops(case) -> float:
    """Forward + backward matmul FLOPs (backward = 2.5x forward), counting only visible pairs."""
    _, b, hq, _, sq, sk, d, causal, window, q_offset = case
    visible = 0
    for i in range(sq):
        p = q_offset + i
        hi = p + 1 if causal else sk
        lo = max(0, p - window + 1) if window else 0
        if window and not causal:
            hi = min(sk, p + window)
        visible += max(0, hi - lo)
    return 3.5 * 4 * b * hq * visible * d


def section_attention(quick: bool) -> None:
    backend = get_backend()
    device = backend.set_device(0)
    dtypes = [torch.bfloat16, torch.float16] if device.type != "cpu" else [torch.bfloat16, torch.float32]
    print(f"\n== attention on {device}: kernels {available_kernels(device.type)}", flush=True)
    cases = SMALL_CASES + [QUICK_LONG_CASE if quick or device.type == "cpu" else LONG_CASE]
    print(
        f"  {'variant':<26}{'dtype':<10}{'case':<18}{'err out':>9}{'err dq':>9}{'err dk':>9}{'err dv':>9}  status"
    )
    for case in cases:
        for dtype in dtypes:
            q, k, v, grad_out = make_inputs(case, device, dtype)
            *_, causal, window, q_offset = case
            call = describe_call(q, k, v, causal=causal, window=window, q_offset=q_offset)
            default = select_kernel(call).name
            reference = run_attention(
                case, "math", None, q.double(), k.double(), v.double(), grad_out.double()
            )
            for label, kernel, sdpa_backend in variants(device.type):
                row = f"  {label:<26}{str(dtype).removeprefix('torch.'):<10}{case[0]:<18}"
                if KERNELS[kernel].unsupported(call) is not None:
                    print(f"{row}{'':>36}  n/a: {KERNELS[kernel].unsupported(call)}")
                    continue
                try:
                    got = run_attention(case, kernel, sdpa_backend, q, k, v, grad_out)
                except RuntimeError as e:
                    if sdpa_backend is not None and "No available kernel" in str(e):
                        print(f"{row}{'':>36}  refused by this SDPA backend")
                        continue
                    fail(f"{label} {dtype} {case[0]}: {str(e).splitlines()[0]}")
                    continue
                errors = [
                    ((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
                    for g, r in zip(got, reference)
                ]
                ok = all(e <= TOLERANCE[dtype] for e in errors) and got[0].dtype == dtype
                print(f"{row}" + "".join(f"{e:>9.1e}" for e in errors) + ("  ok" if ok else "  MISMATCH"))
                if not ok:
                    fail(f"{label} {dtype} {case[0]} differs from the math reference: {errors}")
            print(f"  (default dispatch for {case[0]} {str(dtype).removeprefix('torch.')}: {default})")

    if quick or device.type == "cpu":
        return
    print(f"\n  fwd+bwd timings, {LONG_CASE[0]} {LONG_CASE[1:7]} bf16:", flush=True)
    q, k, v, grad_out = make_inputs(LONG_CASE, device, torch.bfloat16)
    for label, kernel, sdpa_backend in variants(device.type) + [("math", "math", None)]:
        try:
            seconds = timed(
                lambda kernel=kernel, forced=sdpa_backend: run_attention(
                    LONG_CASE, kernel, forced, q, k, v, grad_out
                ),
                10,
                backend.synchronize,
            )
        except (RuntimeError, BackendError) as e:
            print(f"    {label:<26} n/a ({str(e).splitlines()[0][:80]})")
            continue
        print(
            f"    {label:<26} {seconds * 1e3:8.2f} ms  {attention_flops(LONG_CASE) / seconds / 1e12:7.1f} TFLOP/s"
        )


# --- 4. all-reduce across processes ---------------------------------------------------------------


def allreduce_worker() -> int:
    info = init_distributed(timeout_s=300)
    try:
        expected_backend = {"cpu": "gloo", "cuda": "nccl", "xpu": "xccl"}[info.backend.device_type]
        value = torch.full((1024,), float(info.rank + 1), device=info.device)
        dist.all_reduce(value)
        want = info.world_size * (info.world_size + 1) / 2
        ok = info.dist_backend == expected_backend and bool((value == want).all())
        size = 256 * 2**20 // 4
        buf = torch.ones(size, dtype=torch.float32, device=info.device)
        seconds = timed(lambda: dist.all_reduce(buf), 10, info.backend.synchronize)
        n = info.world_size
        bus_bw = 2 * (n - 1) / n * size * 4 / seconds
        status = torch.tensor([0 if ok else 1], device=info.device)
        dist.all_reduce(status)
        if info.rank == 0:
            print(
                f"  {info.launch.launcher}: {n} ranks, {info.dist_backend} on {info.device.type}, "
                f"all_reduce {'exact' if status.item() == 0 else 'WRONG'}; "
                f"256 MiB all_reduce {seconds * 1e3:.2f} ms, bus bandwidth {bus_bw / 1e9:.1f} GB/s",
                flush=True,
            )
        return int(status.item() != 0)
    finally:
        destroy_distributed()


def section_allreduce(nproc: int) -> None:
    print(f"\n== all-reduce through init_distributed, {nproc} processes", flush=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    runs = [
        (
            "torchrun",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                str(nproc),
                "--master-port",
                str(_free_port()),
                __file__,
                "--allreduce-worker",
            ],
        )
    ]
    mpiexec = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    try:
        import mpi4py  # noqa: F401

        has_mpi4py = True
    except ImportError:
        has_mpi4py = False
    if mpiexec and has_mpi4py:
        runs.append(("mpiexec", [mpiexec, "-n", str(nproc), sys.executable, __file__, "--allreduce-worker"]))
    else:
        print("  (mpiexec or mpi4py not installed: the mpiexec run is skipped)")
    for name, command in runs:
        result = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
        print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            fail(f"{name} all-reduce run exited {result.returncode}: {result.stderr.strip()[-2000:]}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, no timings")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="processes for the all-reduce check (default: the visible GPU count if >= 2)",
    )
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce_worker:
        return allreduce_worker()

    section_env()
    section_device(args.quick)
    section_attention(args.quick)
    nproc = args.nproc if args.nproc is not None else get_backend().device_count()
    if nproc >= 2:
        section_allreduce(nproc)
    else:
        print("\n== all-reduce: skipped (one device; pass --nproc 2 to force)")
    print(
        f"\n{'FAILED: ' + str(len(FAILURES)) + ' check(s)' if FAILURES else 'ALL CHECKS PASSED'}", flush=True
    )
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
