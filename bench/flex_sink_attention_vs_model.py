"""Time GPT-OSS attention as NeMo Automodel runs it (flex attention + learnable sinks) on this GPU, against the cost model.

    python3 bench/flex_sink_attention_vs_model.py OUT_DIR [--system h200-x1] [--iters 10] [--mode max-autotune-no-cudagraphs]

Why (docs/planner.md, section 10, "Session 7: MoE rows beyond 12%"): NeMo Automodel's GPT-OSS benchmark configs
set ``backend.attn: flex``, so every layer runs torch's flex attention compiled with
``mode="max-autotune-no-cudagraphs"``, under a causal block mask or, on the sliding layers, a 128-token causal
window, and the learnable sinks are applied after the kernel in eager PyTorch: the output is multiplied by
``sigmoid(lse - sink[h])`` (an fp32 product) and cast back to bf16.  The cost model gives every GPT-OSS layer full
causal attention at the device's fused-attention rate; ``costmodel.WINDOW_KERNEL_SCALE`` is flex on a 512-token
window of another shape.  This measures, forward + backward, at GPT-OSS's heads (64 query heads, 8 key/value heads,
head dim 64), batch 2, sequence 4096 (the 20B row's micro-batch):

* flex, causal, with the sink rescale (Automodel's full layers) and without it;
* flex, 128-token window, with the sink rescale (Automodel's sliding layers);
* SDPA's cuDNN causal kernel at the same shape (key/value heads repeated), the kernel the device figures come from;

each against ``costmodel.attention_seconds`` x (1 + ATTN_BWD_FACTOR) (the window: its visible keys at
WINDOW_KERNEL_SCALE), and the sink rescale alone against ``costmodel.elementwise_seconds`` of 12 + 26 bytes an output
element.  Before timing it checks the flex + rescale output against attention with an explicit sink logit in fp32
on one batch and four heads (``rel_error``).  Writes OUT_DIR/flex_sink_attention.json.  A few minutes on an H200,
most of it max-autotune compiling (``--mode default`` compiles faster, with other kernels than Automodel's).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gemm_shapes_vs_model import bench_arguments, modelled_device, timed, write_results
from topology import costmodel as cm

HEADS, KV_HEADS, HEAD_DIM, WINDOW = 64, 8, 64, 128  # GPT-OSS 20B / 120B attention
SINK_FWD_BYTES, SINK_BWD_BYTES = 12.0, 26.0  # per output element: see docs/planner.md, session 7


def visible_pairs(seq: int, window: int) -> int:
    """Query-key pairs a causal (window 0) or causal-window attention computes."""
    if not window or window >= seq:
        return seq * (seq + 1) // 2
    return window * (window + 1) // 2 + (seq - window) * window


def sink_rescale(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Softmax with one extra logit per head (the sink) from a sink-less output and its log-sum-exp: each row's
    weights shrink by exp(lse) / (exp(lse) + exp(sink)) = sigmoid(lse - sink)."""
    scale = torch.sigmoid(lse - sinks.view(1, -1, 1)).unsqueeze(-1)
    return (out * scale).to(out.dtype)


def reference(q, k, v, sinks, window: int) -> torch.Tensor:
    """Attention with an explicit sink logit per head, in fp32 (q: b, h, s, d; k, v: b, h, s, d)."""
    s = q.shape[2]
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    i = torch.arange(s, device=q.device)
    keep = i[None, :] <= i[:, None]
    if window:
        keep &= (i[:, None] - i[None, :]) < window
    scores = scores.masked_fill(~keep, float("-inf"))
    sink = sinks.float().view(1, -1, 1, 1).expand(scores.shape[0], -1, s, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :s]
    return (probs @ v.float()).to(q.dtype)


def main() -> int:
    ap = bench_arguments(__doc__, iters=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--mode", default="max-autotune-no-cudagraphs", help="torch.compile mode of flex attention")
    args = ap.parse_args()
    device = modelled_device(args, "flex_sink_attention_vs_model")
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, mode=args.mode)
    b, s, dt = args.batch, args.seq, torch.bfloat16
    q = torch.randn(b, HEADS, s, HEAD_DIM, device="cuda", dtype=dt, requires_grad=True)
    k = torch.randn(b, KV_HEADS, s, HEAD_DIM, device="cuda", dtype=dt, requires_grad=True)
    v = torch.randn(b, KV_HEADS, s, HEAD_DIM, device="cuda", dtype=dt, requires_grad=True)
    sinks = torch.randn(HEADS, device="cuda", dtype=dt, requires_grad=True)
    grad = torch.randn(b, HEADS, s, HEAD_DIM, device="cuda", dtype=dt)
    masks = {}
    for window in (0, WINDOW):
        def mod(_b, _h, qi, ki, window=window):
            keep = ki <= qi
            return keep & (qi - ki < window) if window else keep
        masks[window] = create_block_mask(mod, None, None, s, s, device="cuda")

    def flex_out(window: int, with_sinks: bool) -> torch.Tensor:
        out, lse = flex(q, k, v, block_mask=masks[window], enable_gqa=True, return_lse=True)
        return sink_rescale(out, lse, sinks) if with_sinks else out

    results = []
    for window in (0, WINDOW):  # correctness first: one batch, four heads (and their key/value heads)
        got = flex_out(window, True).detach()[:1, :4].float()  # with autograd on: the graph the timing compiles
        with torch.no_grad():
            kk, vv = (t[:1].repeat_interleave(HEADS // KV_HEADS, dim=1)[:, :4] for t in (k, v))
            want = reference(q[:1, :4], kk, vv, sinks[:4], window).float()
        rel = ((got - want).norm() / want.norm()).item()
        print(f"flex + sinks, window {window or 'none'}: rel_error {rel:.2e} against an explicit sink logit", flush=True)
        results.append({"case": f"check window {window}", "rel_error": rel})

    q_width = HEADS * HEAD_DIM
    fused_model = cm.attention_seconds(device, b, s, s, q_width) * (1 + cm.ATTN_BWD_FACTOR)
    # a window in the cost model: its visible keys, at the window kernel's rate (costmodel.layer_cost)
    window_dev = dataclasses.replace(device, attention_efficiency=device.attention_efficiency * cm.WINDOW_KERNEL_SCALE)
    window_model = cm.attention_seconds(window_dev, b, s, WINDOW, q_width) * (1 + cm.ATTN_BWD_FACTOR)
    kr, vr = (t.detach().repeat_interleave(HEADS // KV_HEADS, dim=1).requires_grad_() for t in (k, v))

    def sdpa_step():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
        out.backward(grad)

    steps = {
        "flex causal + sinks": (lambda: flex_out(0, True).backward(grad), 0, fused_model),
        "flex causal": (lambda: flex_out(0, False).backward(grad), 0, fused_model),
        f"flex window {WINDOW} + sinks": (lambda: flex_out(WINDOW, True).backward(grad), WINDOW, window_model),
        "sdpa cudnn causal": (sdpa_step, 0, fused_model),
    }
    for name, (step, window, model) in steps.items():
        try:
            t = timed(step, args.iters)
        except RuntimeError as exc:  # a backend this build or shape does not support: say so, go on
            print(f"{name:26s} failed: {exc}".splitlines()[0], flush=True)
            continue
        flops = 4.0 * b * HEADS * visible_pairs(s, window) * HEAD_DIM * (1 + cm.ATTN_BWD_FACTOR)
        results.append({"case": name, "batch": b, "seq": s, "window": window, "heads": HEADS, "kv_heads": KV_HEADS,
                        "head_dim": HEAD_DIM, "measured_s": t, "tflops": flops / t / 1e12, "modelled_s": model})
        print(f"{name:26s} {t * 1e3:8.3f} ms {flops / t / 1e12:7.1f} TFLOP/s | model {model * 1e3:8.3f} ms "
              f"(x{t / model:.2f})", flush=True)

    # the eager sink rescale alone, against its byte count
    out0, lse0 = (x.detach() for x in flex(q, k, v, block_mask=masks[0], enable_gqa=True, return_lse=True))
    out0.requires_grad_()
    lse0.requires_grad_()

    def rescale_step():
        sink_rescale(out0, lse0, sinks).backward(grad)
    t = timed(rescale_step, args.iters)
    elements = b * HEADS * s * HEAD_DIM
    model = cm.elementwise_seconds(device, (SINK_FWD_BYTES + SINK_BWD_BYTES) * elements, 6)
    results.append({"case": "sink rescale alone", "measured_s": t, "modelled_s": model,
                    "bytes_per_element": SINK_FWD_BYTES + SINK_BWD_BYTES})
    print(f"{'sink rescale alone':26s} {t * 1e3:8.3f} ms | model ({SINK_FWD_BYTES + SINK_BWD_BYTES:.0f} bytes an "
          f"element) {model * 1e3:8.3f} ms (x{t / model:.2f})", flush=True)
    write_results(args, "flex_sink_attention.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
