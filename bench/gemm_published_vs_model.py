"""Published BF16/FP16 GEMM throughputs by shape (A100, H100-class) against ``topology.costmodel``'s rate.

    python bench/gemm_published_vs_model.py [--markdown] [--whatif-k0 K0 [--whatif-arch ampere]]

No torch, no GPU: the figures below are published measurements, each with its source (docs/planner.md
section 10, "Session 8: GEMM rate by shape on A100 and H100").  For each point it prints the measured
TFLOP/s, the rate the cost model gives the same GEMM on the catalogue device (``gemm_seconds`` /
``grouped_gemm_seconds``, launch included), their ratio, and the ratio normalised to the source's own
largest-K point of the same family (so that a burst clock or another kernel library, which shifts the
whole family, drops out and only the shape dependence is compared).

``--whatif-k0 K0`` prints, for the published rows of topology/data/published_runs.json, the group errors
with every GEMM's compute time multiplied by (K + K0) / K on devices of ``--whatif-arch`` (a fixed cost per
output tile, amortised over the reduction), the efficiency unchanged.  It is a what-if, not the model: the
rows of group unseen13 are left out of every figure it prints.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import hardware as hw

MAMF = "stas00/ml-engineering compute/accelerator/README.md, MAMF table"
XLA = ("tensorflow/tensorflow third_party/xla/xla/service/gpu/model/matmul_interpolator_data.h "
       "(OpenXLA 2025, commit 372d578b), sm_90 bf16 entries")
TILELANG = "xwhzz/tilelang benchmark/matmul/README.md (commit b2acfc37), H800 SXM, fp16, TileLang kernel"

# (source, family, device, batch, m, n, k, measured TFLOP/s)
POINTS: list[tuple[str, str, hw.Device, int, int, int, int, float]] = [
    # MAMF: the best of a sweep (mean of 100 timed after 50 warm-up, L2 flushed), torch 2.6.0+cu126 (at 744d01e);
    # 267.9 / 792.1 are the table's CUDA 12.1 figures before 16c2d5a (Jan. 2025).
    (MAMF + " (744d01e)", "mamf-a100", hw.A100_80, 1, 1024, 10240, 5120, 271.2),
    (MAMF + " (before 16c2d5a)", "mamf-a100", hw.A100_80, 1, 6912, 16384, 2048, 267.9),
    (MAMF + " (744d01e)", "mamf-h100", hw.H100_SXM, 1, 2048, 2048, 13312, 794.5),
    (MAMF + " (before 16c2d5a)", "mamf-h100", hw.H100_SXM, 1, 6144, 17920, 2816, 792.1),
    # XLA's default matmul table for sm_90 (device not named; the batch is a batched matmul, b x m x n x k)
    (XLA, "xla-4096sq-b4", hw.H100_SXM, 4, 4096, 4096, 256, 503.9),
    (XLA, "xla-4096sq-b4", hw.H100_SXM, 4, 4096, 4096, 512, 619.9),
    (XLA, "xla-4096sq-b4", hw.H100_SXM, 4, 4096, 4096, 4096, 793.1),
    (XLA, "xla-4096sq-b2", hw.H100_SXM, 2, 4096, 4096, 256, 464.0),
    (XLA, "xla-4096sq-b2", hw.H100_SXM, 2, 4096, 4096, 512, 607.7),
    (XLA, "xla-4096sq-b2", hw.H100_SXM, 2, 4096, 4096, 2048, 763.0),
    (XLA, "xla-4096sq-b2", hw.H100_SXM, 2, 4096, 4096, 4096, 807.7),
    (XLA, "xla-4096sq-b1", hw.H100_SXM, 1, 4096, 4096, 256, 392.2),
    (XLA, "xla-4096sq-b1", hw.H100_SXM, 1, 4096, 4096, 512, 543.1),
    (XLA, "xla-4096sq-b1", hw.H100_SXM, 1, 4096, 4096, 2048, 738.7),
    (XLA, "xla-4096sq-b1", hw.H100_SXM, 1, 4096, 4096, 4096, 783.3),
    (XLA, "xla-n-b4", hw.H100_SXM, 4, 4096, 512, 4096, 728.6),
    (XLA, "xla-n-b4", hw.H100_SXM, 4, 4096, 1024, 4096, 777.6),
    (XLA, "xla-n-b4", hw.H100_SXM, 4, 4096, 2048, 4096, 808.7),
    (XLA, "xla-n-b4", hw.H100_SXM, 4, 4096, 4096, 4096, 793.1),
    # TileLang's own autotuned kernel on an H800 SXM (GH100 compute as the H100 SXM), M = N = 8192
    (TILELANG, "tilelang-8192sq", hw.H100_SXM, 1, 8192, 8192, 256, 386.0),
    (TILELANG, "tilelang-8192sq", hw.H100_SXM, 1, 8192, 8192, 512, 520.0),
    (TILELANG, "tilelang-8192sq", hw.H100_SXM, 1, 8192, 8192, 1024, 628.0),
    (TILELANG, "tilelang-8192sq", hw.H100_SXM, 1, 8192, 8192, 2048, 705.0),
    (TILELANG, "tilelang-8192sq", hw.H100_SXM, 1, 8192, 8192, 4096, 736.0),
    (TILELANG, "tilelang-8192sq", hw.H100_SXM, 1, 8192, 8192, 8192, 758.0),
    (TILELANG, "tilelang-8192sq", hw.H100_SXM, 1, 8192, 8192, 16384, 766.0),
]


def model_tflops(dev: hw.Device, b: int, m: int, n: int, k: int) -> float:
    t = cm.gemm_seconds(dev, m, n, k) if b == 1 else cm.grouped_gemm_seconds(dev, b, m, n, k)
    return 2.0 * b * m * n * k / t / 1e12


def comparison(markdown: bool) -> str:
    ref: dict[str, tuple[float, float]] = {}
    for _src, fam, dev, b, m, n, k, tf in POINTS:
        if fam not in ref or k >= ref[fam][2]:
            ref[fam] = (tf, model_tflops(dev, b, m, n, k), k)
    head = ("family", "device", "b x m x n x k", "measured TF", "model TF", "model/measured",
            "measured vs family ref", "model vs family ref")
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        lines.append("  ".join(head))
    for _src, fam, dev, b, m, n, k, tf in POINTS:
        mt = model_tflops(dev, b, m, n, k)
        row = (fam, dev.name, f"{b} x {m} x {n} x {k}", f"{tf:.1f}", f"{mt:.1f}", f"{mt / tf:.2f}",
               f"{tf / ref[fam][0]:.2f}", f"{mt / ref[fam][1]:.2f}")
        lines.append(("| " + " | ".join(row) + " |") if markdown else "  ".join(row))
    return "\n".join(lines)


def whatif(k0: float, arch: str, eff_scale: float = 1.0) -> str:
    """Group errors with a per-tile fixed cost K0 on ``arch`` devices (their GEMM efficiency times
    ``eff_scale``); unseen13 left out."""
    from topology import validation as v

    base_gemm, base_grouped = cm.gemm_seconds, cm.grouped_gemm_seconds

    def scaled(dev: hw.Device, t: float, k: float) -> float:
        if dev.arch != arch or t <= 0:
            return t
        launch = dev.launch_us * 1e-6
        return (t - launch) * (k + k0) / k / eff_scale + launch

    def gemm(dev, m, n, k):
        return scaled(dev, base_gemm(dev, m, n, k), k)

    def grouped(dev, groups, m, n, k, bandwidth_efficiency=1.0):
        return scaled(dev, base_grouped(dev, groups, m, n, k, bandwidth_efficiency), k)

    def groups_of(rows):
        out: dict[str, list[float]] = {}
        for r in rows:
            g = v.group_of(r.run)
            if g == "unseen13":
                continue
            e = r.error_pct
            out.setdefault(g, []).append(e)
            if r.run.split != "fit":
                out.setdefault("heldout (without unseen13)", []).append(e)
                if v.model_is_moe(r.run):
                    out.setdefault("heldout_moe", []).append(e)
            if v.system_of(r.run).node.device.arch == arch and r.run.split != "fit":
                out.setdefault(f"heldout {arch} rows (without unseen13)", []).append(e)
        return out

    before = groups_of(v.evaluate())
    cm.gemm_seconds, cm.grouped_gemm_seconds = gemm, grouped
    try:
        after = groups_of(v.evaluate())
    finally:
        cm.gemm_seconds, cm.grouped_gemm_seconds = base_gemm, base_grouped
    lines = [(f"what-if: GEMM compute x (K + {k0:g}) / K / {eff_scale:g} on '{arch}' devices "
              "(unseen13 left out; memory-bound GEMMs scaled too: an upper bound)"),
             "group  n  before mean|err| / max / signed  ->  after"]
    for g in sorted(before):
        b, a = before[g], after[g]

        def fmt(x):
            return (f"{sum(map(abs, x)) / len(x):.1f}% / {max(map(abs, x)):.1f}% / "
                    f"{sum(x) / len(x):+.1f}%")
        lines.append(f"{g}  {len(b)}  {fmt(b)}  ->  {fmt(a)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--whatif-k0", type=float, default=None)
    ap.add_argument("--whatif-arch", default="ampere")
    ap.add_argument("--whatif-eff-scale", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.whatif_k0 is not None and (a.whatif_k0 < 0 or math.isnan(a.whatif_k0)):
        ap.error("--whatif-k0 must be a non-negative number")
    print(comparison(a.markdown))
    if a.whatif_k0 is not None:
        print()
        print(whatif(a.whatif_k0, a.whatif_arch, a.whatif_eff_scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
