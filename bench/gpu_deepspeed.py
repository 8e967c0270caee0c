"""DeepSpeed engine on N GPUs: ZeRO 1/2/3, optimizer offload to CPU, ZeRO-Infinity to a local NVMe directory.

    torchrun --nproc-per-node 2 bench/gpu_deepspeed.py --nvme-dir /local/scratch/alphaexa-nvme
    options: --dtype float32|bfloat16 (default bfloat16), --steps N, --only zero1,zero3,...

Rank 0 first trains the plain model alone in fp32 (the reference), then every
configuration trains the same model from the same weights on the same batches.
Printed per configuration: largest relative loss and gradient-norm difference to
the reference, PASS/FAIL (bf16: 2e-2 / 5e-2; fp32: 1e-4 / 1e-3), tokens/s and
peak GPU memory.  The NVMe runs need DeepSpeed's async_io op (it builds it on
first use and needs libaio, e.g. ``apt-get install libaio-dev``); a failure to
build is printed as such, not as a mismatch.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from alphaexa.model import build_model
from alphaexa.parallel import local_rows
from alphaexa.parallel.deepspeed_engine import DeepSpeedOptions, DeepSpeedTrainStep
from alphaexa.parallel.equivalence import reference_history, token_batches
from backends.launch import init_distributed
from topology.layout import Layout
from topology.modelcfg import ModelConfig

GLOBAL_BATCH, SEQ, MICRO_STEPS, LR, MAX_NORM = 16, 1024, 2, 3e-4, 1.0
MODEL = ModelConfig(name="bench-ds", n_layers=8, d_model=1024, n_heads=16, n_kv_heads=4, d_ff=2816,
                    ffn_type="swiglu", vocab_size=32000, tokenizer="sentencepiece", max_seq_len=SEQ, moe_every=2,
                    n_experts=8, top_k=2, moe_d_ff=1408)


def configurations(nvme_dir: str) -> dict[str, tuple[str, DeepSpeedOptions]]:
    base = {"lr": LR, "max_norm": MAX_NORM, "betas": (0.9, 0.999), "weight_decay": 0.01}
    return {
        "zero1": ("zero1", DeepSpeedOptions(**base)),
        "zero2": ("zero2", DeepSpeedOptions(**base)),
        "zero3": ("zero3", DeepSpeedOptions(**base)),
        "zero2-offload-opt-cpu": ("zero2", DeepSpeedOptions(offload_optimizer="cpu", **base)),
        "zero3-infinity-nvme": ("zero3", DeepSpeedOptions(offload_optimizer="nvme", offload_params="nvme",
                                                           nvme_path=nvme_dir, **base)),
    }


def batches(steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return token_batches(steps, GLOBAL_BATCH, SEQ, MODEL.vocab_size, device)


def reference(steps: int, device) -> list[tuple[float, float]]:
    model = build_model(MODEL, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    out = reference_history(model, optimizer, *batches(steps, device), MICRO_STEPS, MAX_NORM)
    del model, optimizer
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--nvme-dir", default="./alphaexa-nvme-offload")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    loss_tol, norm_tol = (2e-2, 5e-2) if dtype == torch.bfloat16 else (1e-4, 1e-3)
    torch.backends.cuda.matmul.allow_tf32 = False

    info = init_distributed()
    world, rank, device = info.world_size, info.rank, info.device
    ref = reference(args.steps, device) if rank == 0 else None
    dist.barrier()
    configs = configurations(args.nvme_dir)
    if args.only:
        configs = {n: configs[n] for n in args.only.split(",")}
    if rank == 0:
        print(f"{world} x {torch.cuda.get_device_name()}, DeepSpeed, {args.dtype}; reference (1 GPU, fp32): "
              + " ".join(f"{loss:.4f}/{norm:.3f}" for loss, norm in ref), flush=True)
    failures = 0
    inputs, targets = batches(args.steps, device)
    for name, (sharding, options) in configs.items():
        layout = Layout(dp_shard=world, sharding=sharding, mbs=GLOBAL_BATCH // (MICRO_STEPS * world))
        rows = local_rows(GLOBAL_BATCH, MICRO_STEPS, rank, world).to(device)
        try:
            step = DeepSpeedTrainStep(build_model(MODEL, device=device), layout, options,
                                      n_microbatches=MICRO_STEPS, compute_dtype=dtype)
            history, started = [], None
            for s in range(args.steps):
                if s == 1:
                    torch.cuda.synchronize()
                    started = time.perf_counter()
                result = step(inputs[s][rows], targets[s][rows])
                history.append((result.loss, step.last_grad_norm))
            torch.cuda.synchronize()
            tps = GLOBAL_BATCH * SEQ * (args.steps - 1) / (time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - report and go on with the next configuration
            failures += 1
            if rank == 0:
                print(f"{name:24s} FAILED: {type(error).__name__}: {str(error)[:300]}", flush=True)
            continue
        if rank == 0:
            d_loss = max(abs(a - b) / abs(b) for (a, _), (b, _) in zip(history, ref))
            d_norm = max(abs(a - b) / abs(b) for (_, a), (_, b) in zip(history, ref))
            ok = d_loss <= loss_tol and d_norm <= norm_tol
            failures += not ok
            nvme = Path(args.nvme_dir)
            used = sum(f.stat().st_size for f in nvme.rglob("*") if f.is_file()) / 2**30 if nvme.exists() else 0
            print(f"{name:24s} d_loss {d_loss:.2e} d_norm {d_norm:.2e} {'PASS' if ok else 'FAIL'} "
                  f"{tps:9.0f} tokens/s peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
                  + (f", nvme files {used:.2f} GiB" if "nvme" in name else ""), flush=True)
        del step
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    if rank == 0:
        shutil.rmtree(args.nvme_dir, ignore_errors=True)
    dist.destroy_process_group()
    raise SystemExit(1 if failures and rank == 0 else 0)


if __name__ == "__main__":
    main()
