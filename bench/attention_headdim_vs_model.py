"""Time causal attention forward + backward at head dim 64 and 128 on this GPU, against the cost model.

    python3 bench/attention_headdim_vs_model.py OUT_DIR [--system h200-x1] [--iters 10]

Why: session 6 scales Transformer Engine's (cuDNN's) fused attention at head dim 64 by 408/609 of its
head-dim-128 rate (``costmodel.CUDNN_HEAD_DIM_SCALE``; 363/518, the causal bars, since session 7), a ratio read
from the FlashAttention-3 paper's H100 forward benchmark, because the devices' ``attention_efficiency`` was measured at head dim 128 only.
This measures the ratio on our own GPU, forward and backward, for SDPA's cuDNN and flash backends: GPT-OSS's
heads (64 query heads, 8 key/value heads, head dim 64) and a head-dim-128 control with the same query
width (32 heads, 8 key/value heads), sequence 4096, batch 4.  For each it prints the measured time, the
TFLOP/s (causal: half the square, forward 4 b s^2 h d / 2, backward 2.5x) and ``costmodel.attention_seconds``
x 3.5 (forward + backward) with and without the head-dim scale; then cuDNN causal attention at head dim 128
(``--long-head-dims``, default 128) over sequence lengths (``--long-seqs``, default 4k / 16k / 32k, 16k tokens a
call) against the model (its sequence curve, ``costmodel.attention_rate_scale``), for the long-context rows.
Writes OUT_DIR/attention_headdim.json.  About a minute on an H200 with the defaults.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gemm_shapes_vs_model import bench_arguments, modelled_device, timed, write_results
from topology import costmodel as cm

CASES = {  # name: (query heads, key/value heads, head dim)
    "gpt-oss (64 x 64, 8 kv)": (64, 8, 64),
    "control (32 x 128, 8 kv)": (32, 8, 128),
}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def main() -> int:
    ap = bench_arguments(__doc__, iters=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--long-seqs", type=int, nargs="*", default=[4096, 16384, 32768],
                    help="sequence lengths of the causal sweep (16k tokens a call)")
    ap.add_argument("--long-head-dims", type=int, nargs="*", default=[128],
                    help="head dims of the causal sweep (query width 4096: 32 heads of 128, 64 of 64)")
    args = ap.parse_args()
    device = modelled_device(args, "attention_headdim_vs_model")
    b, s = args.batch, args.seq
    results = []
    for name, (heads, kv_heads, hd) in CASES.items():
        q = torch.randn(b, heads, s, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        # key/value heads repeated up front (as leaves): every backend sees plain multi-head attention of
        # the same FLOPs, whether or not it takes GQA natively
        k = torch.randn(b, kv_heads, s, hd, device="cuda", dtype=torch.bfloat16).repeat_interleave(
            heads // kv_heads, dim=1).requires_grad_()
        v = torch.randn(b, kv_heads, s, hd, device="cuda", dtype=torch.bfloat16).repeat_interleave(
            heads // kv_heads, dim=1).requires_grad_()
        grad = torch.randn(b, heads, s, hd, device="cuda", dtype=torch.bfloat16)
        flops = 4.0 * b * heads * s * s * hd / 2 * (1 + cm.ATTN_BWD_FACTOR)
        fwd_model = cm.attention_seconds(device, b, s, s, heads * hd)
        for backend, which in BACKENDS.items():
            def step(which=which, q=q, k=k, v=v, grad=grad):
                with sdpa_kernel([which]):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                out.backward(grad)
            try:
                t = timed(step, args.iters)
            except RuntimeError as exc:  # a backend this build or shape does not support: say so, go on
                print(f"{name:28s} {backend:6s} failed: {exc}".splitlines()[0])
                continue
            model = fwd_model * (1 + cm.ATTN_BWD_FACTOR)
            scaled = model / cm.head_dim_scale("cudnn", hd)
            results.append({"case": name, "heads": heads, "kv_heads": kv_heads, "head_dim": hd, "backend": backend,
                            "batch": b, "seq": s, "measured_s": t, "tflops": flops / t / 1e12,
                            "modelled_s": model, "modelled_cudnn_scaled_s": scaled})
            print(f"{name:28s} {backend:6s} {t * 1e3:8.3f} ms {flops / t / 1e12:7.1f} TFLOP/s | model {model * 1e3:8.3f} ms"
                  f" (x{t / model:.2f}), with the head-dim scale {scaled * 1e3:8.3f} ms (x{t / scaled:.2f})", flush=True)
    # the sequence-length dependence at head dim 128 (the long-context rows: 16k-128k tokens, their fused
    # attention the larger part of a layer): the same 16k tokens a call, causal
    for seq, hd in [(seq, hd) for hd in args.long_head_dims for seq in args.long_seqs]:
        heads, bb = 4096 // hd, max(1, 16384 // seq)
        q = torch.randn(bb, heads, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(bb, heads, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(bb, heads, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(bb, heads, seq, hd, device="cuda", dtype=torch.bfloat16)
        flops = 4.0 * bb * heads * seq * seq * hd / 2 * (1 + cm.ATTN_BWD_FACTOR)
        model = cm.attention_seconds(device, bb, seq, seq, heads * hd) * (1 + cm.ATTN_BWD_FACTOR)

        def step(q=q, k=k, v=v, grad=grad):
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(grad)
        try:
            t = timed(step, max(2, args.iters // 2))
        except RuntimeError as exc:
            print(f"seq {seq}: failed: {exc}".splitlines()[0])
            continue
        results.append({"case": f"long {seq} d{hd}", "heads": heads, "kv_heads": heads, "head_dim": hd, "backend": "cudnn",
                        "batch": bb, "seq": seq, "measured_s": t, "tflops": flops / t / 1e12, "modelled_s": model})
        print(f"cudnn causal d{hd} seq {seq:6d} x{bb}: {t * 1e3:8.3f} ms {flops / t / 1e12:7.1f} TFLOP/s | "
              f"model {model * 1e3:8.3f} ms (x{t / model:.2f})", flush=True)
    by = {(r["backend"], r["head_dim"]): r["tflops"] for r in results if not r["case"].startswith("long")}
    for backend in BACKENDS:
        if (backend, 64) in by and (backend, 128) in by:
            print(f"{backend}: rate at head dim 64 / 128 = {by[(backend, 64)] / by[(backend, 128)]:.3f} "
                  f"(costmodel.CUDNN_HEAD_DIM_SCALE[64] = {cm.CUDNN_HEAD_DIM_SCALE[64]:.3f})")
    write_results(args, "attention_headdim.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
