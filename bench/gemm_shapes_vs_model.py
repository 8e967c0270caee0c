"""Time the GEMMs of one MoE layer of published models on this GPU, against the cost model's figure.

    python3 bench/gemm_shapes_vs_model.py OUT_DIR [--system h200-x1] [--iters 20]

Why: after session 5's host floor, the published GPT-OSS rows (Megatron-Bridge at micro-batch 1
and 4, NeMo Automodel's 20B) are still 20-25% fast, and taken apart their layers are about 35-45%
slower than modelled at both micro-batch sizes (a GPU-side share, not a fixed host time), where the
Qwen3-235B and Mixtral rows are not.  GPT-OSS's GEMMs have odd shapes (d_model 2880 = 22.5 x 128,
expert width 2880, q width 4096 > d_model, 201k vocabulary).  This measures, for GPT-OSS-120B and
Qwen3-235B-A22B (the control), the attention projections, the grouped expert GEMMs (forward,
data-gradient and weight-gradient shapes; ``torch._grouped_mm``, as the trainer runs them) and the
LM head, at the per-rank token counts of the published rows (EP 8: 16 local experts), and prints
each measured time next to ``topology.costmodel``'s ``gemm_seconds`` / ``grouped_gemm_seconds`` for
the system named.  Writes OUT_DIR/gemm_shapes.json.  About one minute on an H200.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology.hardware import load_system

# (model, d_model, q width, kv width, expert width, local experts, top_k, vocab)
MODELS = {
    "gpt-oss-120b": (2880, 4096, 512, 2880, 16, 4, 201088),
    "qwen3-235b-a22b": (4096, 8192, 512, 1536, 16, 8, 151936),
}
TOKENS = (4096, 16384)  # tokens a rank: micro-batch 1 and 4 at 4096


def timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def cases(d, qw, kvw, f, experts, top_k, vocab, tokens):
    """(name, kind, shape) of one layer's GEMMs; kind 'mm' (m, n, k) or 'grouped' (groups, m, n, k)."""
    rows = tokens * top_k // experts  # balanced: rows a local expert gets under EP 8 (tokens of 8 ranks / 8)
    out = [("q proj", "mm", (tokens, qw, d)), ("kv proj", "mm", (tokens, 2 * kvw, d)),
           ("out proj", "mm", (tokens, d, qw)),
           ("expert fc1 fwd", "grouped", (experts, rows, 2 * f, d)),
           ("expert fc2 fwd", "grouped", (experts, rows, d, f)),
           ("expert fc1 dgrad", "grouped", (experts, rows, d, 2 * f)),
           ("expert fc2 dgrad", "grouped", (experts, rows, f, d)),
           ("expert fc1 wgrad", "wgrad", (experts, d, 2 * f, rows)),
           ("expert fc2 wgrad", "wgrad", (experts, f, d, rows))]
    if tokens == TOKENS[0]:
        out.append(("lm head", "mm", (tokens, vocab, d)))
    return out


def run_case(kind, shape, iters):
    dev = "cuda"
    bf = torch.bfloat16
    if kind == "mm":
        m, n, k = shape
        a, b = torch.randn(m, k, device=dev, dtype=bf), torch.randn(k, n, device=dev, dtype=bf)
        return timed(lambda: a @ b, iters)
    if kind == "grouped":
        g, m, n, k = shape
        a = torch.randn(g * m, k, device=dev, dtype=bf)
        w = torch.randn(g, k, n, device=dev, dtype=bf)
        offs = torch.arange(1, g + 1, device=dev, dtype=torch.int32) * m
        return timed(lambda: torch._grouped_mm(a, w, offs=offs), iters)
    # weight gradient: per expert (k_rows x m)^T-style: out (g, m, n) from a (m, total_k) and b (total_k, n)
    g, m, n, k = shape
    a = torch.randn(m, g * k, device=dev, dtype=bf)
    b = torch.randn(g * k, n, device=dev, dtype=bf)
    offs = torch.arange(1, g + 1, device=dev, dtype=torch.int32) * k
    return timed(lambda: torch._grouped_mm(a, b, offs=offs), iters)


def modelled(device, kind, shape):
    if kind == "mm":
        return cm.gemm_seconds(device, *shape)
    g, m, n, k = shape
    return cm.grouped_gemm_seconds(device, g, m, n, k)


def bench_arguments(doc: str, iters: int = 20) -> argparse.ArgumentParser:
    """The arguments these GPU-against-the-model benches share: OUT, --system, --iters."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--system", default="h200-x1", help="the catalogue system whose device the model uses")
    ap.add_argument("--iters", type=int, default=iters)
    return ap


def modelled_device(args, name: str):
    """The catalogue device of ``--system``; stops with a one-line reason where there is no CUDA GPU."""
    if not torch.cuda.is_available():
        raise SystemExit(f"{name}: needs a CUDA GPU")
    return load_system(args.system).node.device


def write_results(args, filename: str, results: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / filename).write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "system": args.system,
         "results": results}, indent=1))


def main() -> int:
    args = bench_arguments(__doc__).parse_args()
    device = modelled_device(args, "gemm_shapes_vs_model")
    results = []
    print(f"{'model':16s} {'tokens':>6s} {'gemm':18s} {'shape':>28s} {'meas ms':>8s} {'model ms':>9s} "
          f"{'meas/model':>10s} {'TFLOP/s':>8s}")
    for name, spec in MODELS.items():
        for tokens in TOKENS:
            for label, kind, shape in cases(*spec, tokens):
                try:
                    t = run_case(kind, shape, args.iters)
                except (RuntimeError, TypeError) as exc:  # a layout this torch's kernel refuses: say so, go on
                    print(f"{name:16s} {tokens:6d} {label:18s} {shape!s:>28s} failed: {exc}".splitlines()[0])
                    continue
                mod = modelled(device, kind, shape)
                g = 1 if kind == "mm" else shape[0]
                flops = 2.0 * g * shape[-3] * shape[-2] * shape[-1] if kind != "mm" else 2.0 * shape[0] * shape[1] * shape[2]
                results.append({"model": name, "tokens": tokens, "gemm": label, "kind": kind, "shape": shape,
                                "measured_s": t, "modelled_s": mod, "tflops": flops / t / 1e12})
                print(f"{name:16s} {tokens:6d} {label:18s} {shape!s:>28s} {t * 1e3:8.3f} {mod * 1e3:9.3f} "
                      f"{t / mod:10.2f} {flops / t / 1e12:8.1f}", flush=True)
    write_results(args, "gemm_shapes.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
