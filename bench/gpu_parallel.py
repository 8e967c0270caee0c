"""Layout matrix on N GPUs with NCCL: loss match against a single-GPU reference, and tokens/s.

    torchrun --nproc-per-node 2 bench/gpu_parallel.py          # 2-GPU subset
    torchrun --nproc-per-node 4 bench/gpu_parallel.py          # + HSDP, tp x fsdp, pp x tp, 3-D with ep
    torchrun --nproc-per-node 8 bench/gpu_parallel.py          # + pp x fsdp x ep, pp x fsdp x tp x ep
    options: --dtype float32 (tight check, TF32 off), --compile, --steps N, --only NAME[,NAME]

Each layout trains the same model (8 blocks, d_model 1024, GQA 16/4 heads, every
2nd block MoE with 8 experts top-2, 32k vocabulary) from the same weights on the
same batches.  Rank 0 first trains the plain model alone in fp32 (the reference);
each layout then runs in --dtype (default bf16: FSDP2 mixed precision, fp32
master weights and reductions).  Printed per layout: the largest relative
difference of the per-step loss and gradient norm to the reference, PASS/FAIL
against the tolerance (bf16: 2e-2 loss / 5e-2 norm; fp32: 1e-4 / 1e-3), and
tokens/s over the steps after the first (global: all ranks together).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from alphaexa.model import build_model
from alphaexa.parallel import (
    build_mesh,
    check_layout,
    clip_grad_norm_,
    local_rows,
    make_train_step,
    parallelize,
)
from alphaexa.parallel.equivalence import reference_history, token_batches
from backends.launch import init_distributed
from topology.layout import Layout, resolve_layout
from topology.modelcfg import ModelConfig

GLOBAL_BATCH, SEQ, MICRO_STEPS, LR, MAX_NORM = 32, 1024, 4, 3e-4, 1.0
MODEL = ModelConfig(name="bench-moe", n_layers=8, d_model=1024, n_heads=16, n_kv_heads=4, d_ff=2816,
                    ffn_type="swiglu", vocab_size=32000, tokenizer="sentencepiece", max_seq_len=SEQ, moe_every=2,
                    n_experts=8, top_k=2, moe_d_ff=1408)
LAYOUTS = {
    2: {"dp2-replicate": {"dp_replicate": 2, "sharding": "none"}, "fsdp2": {"dp_shard": 2},
        "fsdp2-zero2": {"dp_shard": 2, "sharding": "zero2"}, "tp2": {"tp": 2},
        "pp2-gpipe": {"pp": 2, "schedule": "gpipe"}, "pp2-1f1b": {"pp": 2, "schedule": "1f1b"},
        "pp2-interleaved": {"pp": 2, "vpp": 2, "schedule": "interleaved1f1b"},
        "pp2-zbv": {"pp": 2, "vpp": 2, "schedule": "zbv"}, "ep2": {"dp_shard": 2, "ep": 2},
        "fsdp2-full-recompute": {"dp_shard": 2, "recompute": "full"},
        "fsdp2-cpu-offload": {"dp_shard": 2, "cpu_offload": True}},
    4: {"hsdp2x2": {"dp_replicate": 2, "dp_shard": 2}, "fsdp2-tp2": {"dp_shard": 2, "tp": 2},
        "pp2-tp2": {"pp": 2, "tp": 2}, "fsdp2-tp2-ep2": {"dp_shard": 2, "tp": 2, "ep": 2},
        "pp2-fsdp2-ep2": {"pp": 2, "dp_shard": 2, "ep": 2}, "fsdp4-ep4": {"dp_shard": 4, "ep": 4}},
    8: {"pp2-fsdp4-ep2": {"pp": 2, "dp_shard": 4, "ep": 2, "vpp": 2, "schedule": "interleaved1f1b"},
        "pp2-fsdp2-tp2-ep2": {"pp": 2, "dp_shard": 2, "tp": 2, "ep": 2},
        "fsdp8-ep8": {"dp_shard": 8, "ep": 8}},
}


def fit(spec: dict, world: int) -> dict:
    """Scale a layout's data dimension so that it fills ``world`` ranks."""
    spec = dict(spec)
    own = spec.get("pp", 1) * spec.get("tp", 1) * spec.get("dp_replicate", 1) * spec.get("dp_shard", 1)
    factor = world // own
    if factor == 1:
        return spec
    if spec.get("sharding") == "none":
        spec["dp_replicate"] = spec.get("dp_replicate", 1) * factor
    else:
        spec["dp_shard"] = spec.get("dp_shard", 1) * factor
    return spec


def batches(steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return token_batches(steps, GLOBAL_BATCH, SEQ, MODEL.vocab_size, device)


def reference(steps: int, device) -> list[tuple[float, float]]:
    model = build_model(MODEL, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    out = reference_history(model, optimizer, *batches(steps, device), MICRO_STEPS, MAX_NORM)
    return out


def run_layout(spec: dict, world: int, backend, steps: int, dtype: torch.dtype, compile: bool):
    spec = dict(spec)
    cpu_offload = spec.pop("cpu_offload", False)  # a parallelize option, not a layout field
    layout = Layout.from_dict(spec).resolve(world)
    layout = resolve_layout(layout.replace(mbs=GLOBAL_BATCH // (MICRO_STEPS * layout.dp)), world, MODEL,
                            GLOBAL_BATCH, SEQ)
    check_layout(layout, MODEL, backend.device_type, compile=compile)
    dims = build_mesh(layout, backend)
    pmodel = parallelize(build_model(MODEL, device=backend.device), dims, compute_dtype=dtype, compile=compile,
                         cpu_offload=cpu_offload)
    n_micro = layout.n_microbatches(GLOBAL_BATCH)
    step = make_train_step(pmodel, n_micro)
    optimizer = torch.optim.AdamW(list(pmodel.parameters()), lr=LR)
    inputs, targets = batches(steps, backend.device)
    rows = local_rows(GLOBAL_BATCH, n_micro, dims.dp_rank, layout.dp).to(backend.device)
    history, started = [], None
    for s in range(steps):
        if s == 1:
            backend.synchronize()
            started = time.perf_counter()
        result = step(inputs[s][rows], targets[s][rows])
        norm = clip_grad_norm_(pmodel.parameters(), MAX_NORM, dims)
        optimizer.step()
        optimizer.zero_grad()
        history.append((result.loss, float(norm)))
    backend.synchronize()
    tokens_per_s = GLOBAL_BATCH * SEQ * (steps - 1) / (time.perf_counter() - started)
    peak = backend.max_memory_allocated() / 2**30
    del pmodel, optimizer, step
    backend.empty_cache()
    backend.reset_peak_memory()
    return history, tokens_per_s, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--tiny", action="store_true", help="a 4-block d_model-64 model: a CPU smoke run of this script")
    args = parser.parse_args()
    if args.tiny:
        global GLOBAL_BATCH, SEQ, MODEL
        GLOBAL_BATCH, SEQ = 16, 32
        MODEL = MODEL.replace(n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, moe_d_ff=64, vocab_size=512,
                              n_experts=4, max_seq_len=SEQ)
    dtype = getattr(torch, args.dtype)
    loss_tol, norm_tol = (2e-2, 5e-2) if dtype == torch.bfloat16 else (1e-4, 1e-3)
    # Exact fp32 on the GPU: no TF32 in matmuls or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    info = init_distributed()
    world, rank = info.world_size, info.rank
    if rank == 0:
        ref = reference(args.steps, info.device)
        info.backend.empty_cache()
    dist.barrier()
    layouts = {name: spec for size, group in LAYOUTS.items() if size <= world and world % size == 0
               for name, spec in group.items()}
    if args.only:
        layouts = {n: layouts[n] for n in args.only.split(",")}
    if rank == 0:
        print(f"{world} x {info.backend.device_name()}, {args.dtype}, global batch {GLOBAL_BATCH} x {SEQ}, "
              f"{MICRO_STEPS} micro-steps, {args.steps} steps; reference (1 GPU, fp32): "
              + " ".join(f"{loss:.4f}/{norm:.3f}" for loss, norm in ref), flush=True)
        print(f"{'layout':24s} {'world':>5s} {'d_loss':>9s} {'d_norm':>9s} {'match':>5s} {'tokens/s':>10s} "
              f"{'peak GiB':>8s}", flush=True)
    failures = 0
    for name, spec in layouts.items():
        # A layout for fewer ranks than the job gets the rest as data parallelism.
        spec = fit(spec, world)
        name = f"{name}" if spec == layouts[name] else f"{name}+dp"
        try:
            history, tps, peak = run_layout(spec, world, info.backend, args.steps, dtype, args.compile)
        except Exception as error:  # noqa: BLE001 - report and go on with the next layout
            if rank == 0:
                print(f"{name:24s} FAILED: {type(error).__name__}: {error}", flush=True)
            failures += 1
            continue
        if rank == 0:
            d_loss = max(abs(a - b) / abs(b) for (a, _), (b, _) in zip(history, ref))
            d_norm = max(abs(a - b) / abs(b) for (_, a), (_, b) in zip(history, ref))
            ok = d_loss <= loss_tol and d_norm <= norm_tol
            failures += not ok
            print(f"{name:24s} {world:5d} {d_loss:9.2e} {d_norm:9.2e} {'PASS' if ok else 'FAIL':>5s} "
                  f"{tps:10.0f} {peak:8.1f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    raise SystemExit(1 if failures and rank == 0 else 0)


if __name__ == "__main__":
    main()
