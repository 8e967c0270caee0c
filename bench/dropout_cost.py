"""Time dropout on an H200: hidden dropout (Megatron's bias-dropout-add) and attention dropout (SDPA backends).

    python3 bench/dropout_cost.py OUT_DIR [--system h200-x1] [--iters 20] [--budget-s 100]

Why (docs/planner.md, section 10, "Session 8: dropout"): Megatron-LM's --hidden-dropout and --attention-dropout
default to 0.1, and two groups of published rows ran with them on (the DGX Cloud GPT-3 175B recipe sets 0.1; the
Megatron-LM README's H100 weak-scaling rows do not set them).  The cost model charges dropout only on materialised
attention probabilities (``Implementation.score_dropout``, 5 bytes a score each way, from the FlashAttention
paper's A100 tables); inside a fused attention kernel and in the compiled bias-dropout-add it charges nothing,
because no Hopper figure for either was documented beyond one Transformer Engine issue (+3% of a cuDNN
attention's forward + backward on an H200).  This measures, forward + backward, bf16:

* hidden dropout: ``residual + dropout(x + bias)`` as Megatron-Core's ``bias_dropout_add_fused_train`` runs it
  (torch.compile of the same function, the probability passed as an argument) at p = 0.1 and p = 0, and eagerly
  (``F.dropout``, which returns its input at p = 0), at the 1.7B README row's shape (4096 tokens x 2048), a
  4096-hidden shape and the GPT-3 175B recipe's (512 sequence-parallel tokens x 12288);
* attention dropout: ``F.scaled_dot_product_attention(..., dropout_p=p, is_causal=True)`` under each of the
  flash, efficient, cuDNN and (small shapes only) math backends at p = 0, 0.1 and 0.125 (some cuDNN kernels take
  only multiples of 1/16), at b 1, s 4096, 16 heads, d 128 (the 1.7B row), b 1, s 4096, 32 heads, d 128 and
  b 1, s 2048, 24 heads, d 128 (GPT-3 175B at TP 4); a backend that refuses a case is recorded as such.

Prints ms and the ratio to p = 0 of the same backend, and for the math backend (the probabilities materialised,
as Megatron-LM's unfused path) the model's 5 + 5 bytes a score beside the measured difference.  Writes
OUT_DIR/dropout_cost.json.  About a minute on an H200 (the attention cases first; the compiled bias-dropout-add
cases compile once each, and whatever is left past --budget-s is recorded as skipped).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gemm_shapes_vs_model import bench_arguments, modelled_device, timed, write_results
from topology import costmodel as cm

HIDDEN_SHAPES = [("mlm-1.7b tp1", 4096, 2048), ("4096 hidden", 4096, 4096), ("gpt3-175b tp4 sp", 512, 12288)]
ATTN_SHAPES = [("mlm-1.7b", 1, 4096, 16, 128), ("32 heads", 1, 4096, 32, 128), ("gpt3-175b tp4", 1, 2048, 24, 128)]
MATH_MAX_SEQ = 2048  # the math backend materialises b x h x s x s scores (fp32 softmax): small shapes only
PROBS = (0.0, 0.1, 0.125)


def _bda(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, prob: float) -> torch.Tensor:
    """Megatron-Core's _bias_dropout_add_func in training (fused_bias_dropout.py): bias, dropout, residual."""
    return residual + F.dropout(x + bias, p=prob, training=True)


_bda_compiled = torch.compile(_bda, dynamic=False)


def hidden_case(tokens: int, hidden: int, prob: float, compiled: bool, iters: int) -> float:
    """Seconds of one forward + backward of the bias-dropout-add on (tokens x hidden)."""
    bf = torch.bfloat16
    x = torch.randn(tokens, hidden, device="cuda", dtype=bf, requires_grad=True)
    residual = torch.randn(tokens, hidden, device="cuda", dtype=bf, requires_grad=True)
    bias = torch.randn(hidden, device="cuda", dtype=bf, requires_grad=True)
    grad = torch.randn(tokens, hidden, device="cuda", dtype=bf)
    fn = _bda_compiled if compiled else _bda

    def step():
        fn(x, bias, residual, prob).backward(grad)
    return timed(step, iters)


def attention_case(backend, b: int, s: int, h: int, d: int, prob: float, iters: int) -> tuple[float, float]:
    """(forward, forward + backward) seconds of causal SDPA under ``backend`` with dropout ``prob``."""
    from torch.nn.attention import sdpa_kernel
    bf = torch.bfloat16
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=bf, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, s, d, device="cuda", dtype=bf)
    with sdpa_kernel(backend):
        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, dropout_p=prob, is_causal=True)

        def fwd_bwd():
            F.scaled_dot_product_attention(q, k, v, dropout_p=prob, is_causal=True).backward(grad)
        return timed(fwd, iters), timed(fwd_bwd, iters)


def main() -> int:
    ap = bench_arguments(__doc__)
    ap.add_argument("--budget-s", type=float, default=100.0, help="skip the remaining cases past this many seconds")
    args = ap.parse_args()
    device = modelled_device(args, "dropout_cost")
    from torch.nn.attention import SDPBackend
    start = time.monotonic()
    results: list[dict] = []

    def over_budget() -> bool:
        return time.monotonic() - start > args.budget_s

    print(f"{'attention dropout':28s} {'backend':10s} {'p':>6s} {'fwd ms':>8s} {'f+b ms':>8s} {'vs p=0':>7s} "
          f"{'model +ms (math)':>16s}")
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]
    for label, b, s, h, d in ATTN_SHAPES:
        for name, backend in backends:
            if name == "math" and s > MATH_MAX_SEQ:
                continue
            base = None
            for prob in PROBS:
                row = {"kind": "attention", "case": label, "b": b, "s": s, "heads": h, "head_dim": d,
                       "backend": name, "p": prob}
                if over_budget():
                    row["skipped"] = "over --budget-s"
                    results.append(row)
                    continue
                try:
                    t_fwd, t_all = attention_case(backend, b, s, h, d, prob, args.iters)
                except Exception as exc:  # noqa: BLE001 - a backend that refuses the case: record it, go on
                    row["error"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                    print(f"{label:28s} {name:10s} {prob:6.3f} refused: {row['error'][:80]}")
                    results.append(row)
                    continue
                base = t_all if prob == 0.0 else base
                row.update(fwd_ms=t_fwd * 1e3, fwd_bwd_ms=t_all * 1e3, ratio_to_p0=t_all / base if base else None)
                model = ""
                if name == "math" and prob > 0:  # the cost model's dropout on materialised probabilities
                    f_s, b_s = cm.score_dropout_seconds(device, b, h, s, s)
                    row["model_dropout_ms"] = (f_s + b_s) * 1e3
                    row["measured_dropout_ms"] = (t_all - base) * 1e3 if base else None
                    model = f"{(f_s + b_s) * 1e3:16.3f}"
                print(f"{label:28s} {name:10s} {prob:6.3f} {t_fwd * 1e3:8.3f} {t_all * 1e3:8.3f} "
                      f"{(t_all / base if base else float('nan')):7.3f} {model}")
                results.append(row)
    print(f"\n{'hidden dropout':28s} {'variant':16s} {'p':>6s} {'ms':>8s} {'vs p=0':>7s}")
    for label, tokens, hidden in HIDDEN_SHAPES:
        for compiled in (False, True):
            base = None
            for prob in (0.0, 0.1):
                variant = "compiled" if compiled else "eager"
                row = {"kind": "hidden", "case": label, "tokens": tokens, "hidden": hidden, "variant": variant,
                       "p": prob}
                if over_budget():
                    row["skipped"] = "over --budget-s"
                    results.append(row)
                    continue
                try:
                    t = hidden_case(tokens, hidden, prob, compiled, args.iters)
                except Exception as exc:  # noqa: BLE001 - a compile or kernel failure is a result: record it, go on
                    row["error"] = str(exc).splitlines()[0][:300]
                    print(f"{label:28s} {variant:16s} {prob:6.3f} failed: {row['error']}")
                    results.append(row)
                    continue
                base = t if prob == 0.0 else base
                row["ms"] = t * 1e3
                row["ratio_to_p0"] = t / base if base else None
                print(f"{label:28s} {variant:16s} {prob:6.3f} {t * 1e3:8.3f} "
                      f"{(t / base if base else float('nan')):7.3f}")
                results.append(row)

    write_results(args, "dropout_cost.json", results)
    print(f"\nwrote {args.out / 'dropout_cost.json'} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
