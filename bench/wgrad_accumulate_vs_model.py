"""Time weight-gradient GEMMs writing bf16 against the same GEMMs accumulating into fp32, next to the cost model.

    python3 bench/wgrad_accumulate_vs_model.py OUT_DIR [--system h200-x1] [--iters 20]

Why (docs/planner.md, section 10, "Session 6, second round"): after changes I and J the 2024 Grok-1 proxies
are still predicted fast by about 0.4 / 0.9 / 2.0 ms a layer pass with 1 / 2 / 4 local experts at fixed tokens.
Megatron's ``gradient_accumulation_fusion`` runs each weight-gradient GEMM (dW = X^T dY, K = the rows the
layer saw) with an fp32 output it reads and writes back (the main gradient, beta = 1): 8 bytes a weight a
micro-batch on top of the GEMM's operands, which grows with the local experts' weights while the FLOPs stay.
The model's roofline hides that traffic under the GEMM's compute (``gemm_seconds`` counts a bf16 output).
This measures both outputs for the Grok-1 expert shapes (TP 4: fc1 6144 x 16384, fc2 8192 x 6144) at K =
2,048 / 4,096 / 8,192 rows (EP 2 / 4 / 8), and for dense controls (GPT-3 175B and Llama 3.1 70B at TP 4),
and prints measured / modelled and accumulate / bf16.  ``torch.addmm(c, a, b, out_dtype=torch.float32)``
(bf16 operands, fp32 C and output, CUDA only) stands for TE's accumulate-into-main-grad GEMM.  Writes
OUT_DIR/wgrad_accumulate.json.  Under a minute on an H200.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gemm_shapes_vs_model import bench_arguments, modelled_device, timed, write_results
from topology import costmodel as cm

# (label, d_in, d_out, K rows): the weight gradient is (d_in x K) @ (K x d_out)
CASES = [(f"grok1 expert fc1 K={k}", 6144, 16384, k) for k in (2048, 4096, 8192)] + \
        [(f"grok1 expert fc2 K={k}", 8192, 6144, k) for k in (2048, 4096, 8192)] + [
    ("gpt3-175b qkv K=2048", 12288, 9216, 2048),
    ("gpt3-175b fc1 K=2048", 12288, 12288, 2048),
    ("llama31-70b fc1 K=4096", 8192, 14336, 4096),
    ("llama31-70b fc2 K=4096", 7168, 8192, 4096),
]


def measure(d_in: int, d_out: int, k: int, iters: int, label: str) -> tuple[float, float]:
    """(bf16 output, fp32 accumulate) seconds of dW = X^T dY with X (k x d_in), dY (k x d_out)."""
    bf = torch.bfloat16
    x = torch.randn(k, d_in, device="cuda", dtype=bf)
    dy = torch.randn(k, d_out, device="cuda", dtype=bf)
    main_grad = torch.zeros(d_in, d_out, device="cuda", dtype=torch.float32)
    t_bf16 = timed(lambda: x.t() @ dy, iters)
    t_acc = float("nan")
    for in_place in (True, False):  # accumulate in place (TE's beta = 1 into main_grad); else a new fp32 tensor
        kw = {"out": main_grad} if in_place else {}
        try:
            t_acc = timed(lambda kw=kw: torch.addmm(main_grad, x.t(), dy, out_dtype=torch.float32, **kw), iters)
            break
        except (RuntimeError, TypeError) as exc:  # this torch has no fp32-output addmm: say so, go on
            print(f"{label:26s} fp32 accumulate (in place: {in_place}) failed: {exc}".splitlines()[0])
    return t_bf16, t_acc


def main() -> int:
    args = bench_arguments(__doc__).parse_args()
    device = modelled_device(args, "wgrad_accumulate_vs_model")
    results = []
    print(f"{'case':26s} {'bf16 ms':>8s} {'fp32 acc ms':>11s} {'model ms':>9s} {'bf16/model':>10s} "
          f"{'acc/model':>9s} {'acc/bf16':>8s} {'acc - bf16 us':>13s} {'8 B/weight at HBM us':>20s}")
    for label, d_in, d_out, k in CASES:
        t_bf16, t_acc = measure(d_in, d_out, k, args.iters, label)
        model = cm.gemm_seconds(device, d_in, d_out, k)
        rmw = 8.0 * d_in * d_out / (device.memory_gbps * 1e9)
        results.append({"case": label, "d_in": d_in, "d_out": d_out, "k": k, "bf16_s": t_bf16,
                        "fp32_accumulate_s": t_acc, "modelled_s": model, "fp32_rmw_at_hbm_s": rmw,
                        "tflops_bf16": 2.0 * d_in * d_out * k / t_bf16 / 1e12})
        print(f"{label:26s} {t_bf16 * 1e3:8.3f} {t_acc * 1e3:11.3f} {model * 1e3:9.3f} {t_bf16 / model:10.2f} "
              f"{t_acc / model:9.2f} {t_acc / t_bf16:8.2f} {(t_acc - t_bf16) * 1e6:13.1f} {rmw * 1e6:20.1f}",
              flush=True)
    write_results(args, "wgrad_accumulate.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
