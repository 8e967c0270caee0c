"""Forward + backward of the ``1b`` and ``1b-moe`` presets on one GPU in bf16: tokens/s, memory, MFU.

For the lead to run on an H100/H200:

    .venv/bin/python bench/gpu_model.py                 # 1b, 1b-moe (grouped GEMM), 1b-moe (expert loop)
    .venv/bin/python bench/gpu_model.py --batch 8 --seq-len 4096 --kernel sdpa

Weights and activations are bf16 (no optimizer step: the figure is the model's
own forward + backward).  The attention kernel is the backend's best for the
device (flash-attn when installed, else SDPA) unless ``--kernel`` forces one.
MFU = training FLOPs per token (6 x active matmul parameters + attention term,
``topology.modelcfg.flops_per_token``) x tokens/s / the GPU's dense bf16 peak.
Before timing the MoE preset, the grouped-GEMM expert path is checked against
the per-expert loop on the same input.  Exits non-zero when anything fails.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from alphaexa.model import build_model
from alphaexa.model.moe import GroupedExperts, grouped_mm_usable
from backends.attention import describe_call, select_kernel
from backends.device import peak_bf16_flops_for
from backends.errors import BackendError
from topology.modelcfg import flops_per_token
from topology.presets import get_preset


def attention_kernel_name(cfg, batch: int, seq: int, forced: str | None) -> str:
    q = torch.empty(batch, cfg.n_heads, seq, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
    kv = torch.empty(batch, cfg.n_kv_heads, seq, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
    return select_kernel(describe_call(q, kv, kv, causal=True, window=cfg.sliding_window, q_offset=0), forced).name


def check_grouped_mm(model, tokens) -> float:
    """Max |difference| of the logits between the grouped-GEMM and loop expert paths."""
    with torch.no_grad():
        GroupedExperts.use_grouped_mm = True
        grouped = model(tokens).float()
        GroupedExperts.use_grouped_mm = False
        loop = model(tokens).float()
        GroupedExperts.use_grouped_mm = True
    return float((grouped - loop).abs().max() / loop.abs().max())


def run_case(preset: str, grouped: bool, args, peak: float | None) -> dict:
    cfg = get_preset(preset)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16, seed=0).train()
    model.set_attention_kernel(args.kernel)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(0))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    row = {"preset": preset, "experts": "-", "kernel": attention_kernel_name(cfg, args.batch, args.seq_len, args.kernel)}
    if cfg.is_moe:
        moe = next(m for m in model.modules() if isinstance(m, GroupedExperts))
        usable = grouped_mm_usable(torch.empty(8, cfg.d_model, device="cuda", dtype=torch.bfloat16), moe.w1)
        row["experts"] = ("grouped_mm" if usable else "loop (grouped_mm unusable)") if grouped else "loop"
        if grouped:
            row["grouped_vs_loop"] = check_grouped_mm(model, inputs[:1, :256])
    GroupedExperts.use_grouped_mm = grouped

    def step() -> float:
        logits = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        for p in model.parameters():
            p.grad = None
        return loss.detach()

    try:
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        losses = [step() for _ in range(args.iters)]
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        GroupedExperts.use_grouped_mm = True
    loss = float(torch.stack(losses).float().mean())
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"{preset}: non-finite loss {loss}")
    tokens_per_s = args.batch * args.seq_len * args.iters / elapsed
    flops = flops_per_token(cfg, args.seq_len)["total"]
    row.update(tokens_per_s=tokens_per_s, step_ms=1000 * elapsed / args.iters,
               peak_gib=torch.cuda.max_memory_allocated() / 2**30, loss=loss,
               tflops=flops * tokens_per_s / 1e12, mfu=flops * tokens_per_s / peak if peak else None)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["1b", "1b-moe"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--kernel", default=None, help="force an attention kernel (flash_attn3, flash_attn, sdpa, math)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the GPU is not in the table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_model: no CUDA device", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_bf16_flops_for(name)
    print(f"device {name}; torch {torch.__version__}; bf16 peak "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (MFU not shown; pass --peak-tflops)'}")
    print(f"batch {args.batch} x seq {args.seq_len}, {args.warmup} warm-up + {args.iters} timed forward+backward steps")
    cases = [(p, True) for p in args.presets]
    cases += [(p, False) for p in args.presets if get_preset(p).is_moe]
    rows, failures = [], []
    for preset, grouped in cases:
        try:
            rows.append(run_case(preset, grouped, args, peak))
        except (RuntimeError, ValueError, BackendError) as e:  # report every case (OOM included), then fail
            failures.append(f"{preset} ({'grouped' if grouped else 'loop'}): {type(e).__name__}: {e}")
            torch.cuda.empty_cache()
    header = f"{'preset':<8}{'experts':<28}{'attention':<12}{'tokens/s':>10}{'ms/step':>9}{'peak GiB':>10}{'TFLOP/s':>9}{'MFU':>7}{'loss':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['preset']:<8}{r['experts']:<28}{r['kernel']:<12}{r['tokens_per_s']:>10,.0f}{r['step_ms']:>9.1f}"
              f"{r['peak_gib']:>10.1f}{r['tflops']:>9.1f}{mfu:>7}{r['loss']:>7.2f}")
    for r in rows:
        if "grouped_vs_loop" in r:
            print(f"{r['preset']}: grouped-GEMM vs loop logits, max relative difference {r['grouped_vs_loop']:.2e}")
            if r["grouped_vs_loop"] > 5e-2:
                failures.append(f"{r['preset']}: grouped-GEMM and loop expert paths disagree")
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
