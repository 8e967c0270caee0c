"""llm-foundry's Triton attention kernel: the rate its published rows imply, and a variant of the model (a diagnostic).

    PYTHONPATH=$PWD .venv/bin/python bench/llmfoundry_triton_rate.py            # the implied rates (seconds)
    PYTHONPATH=$PWD .venv/bin/python bench/llmfoundry_triton_rate.py --variant  # + the variant, refitted (~1 min)

Part 1.  For each llm-foundry benchmark row (the data file's, the README rows that bench/llmfoundry_unlisted_rows.py
costs, and the README's 16k-64k rows, which the data file leaves out by its "sequence <= 8192" rule), the model is
run twice, with the implementation's attention rate as committed and doubled: the difference is the step's
attention time A (the kernel's forward, backward and recomputed forward), the rest R.  The multiplier x of the
kernel's rate that gives the measured step, R + A / x = measured, is printed with A's share.  Where attention is most
of the step (16k-64k) x hardly depends on the rest of the model; at 1k-2k it is noise.

Part 2 (``--variant``).  The model's rate for this kernel is the device's fused-attention efficiency times
``llm-foundry.attention_scale``: on the A100 the fitted 0.40, on Hopper cuDNN's (measured on our H200, a kernel on
Hopper's warpgroup MMA), so the same kernel runs 3.5 times faster on an H100 than on an A100 at 4k.  The kernel is
``flash_attn_triton.py`` compiled by the pre-MLIR Triton fork llm-foundry v0.3.0 pins, which emits PTX ISA 7.4 (no
``wgmma``): Ampere code on both GPUs.  The variant ties its Hopper rate to its A100 rate by FlashAttention-2's
H100 / A100 ratio (an Ampere-instruction kernel charted on both: 294 / 173 TFLOP/s at 4k, fwd + bwd, causal, d 128),
refits the llm-foundry constants with ``bench/fit_published_runs.py``'s search (its held A100 attention efficiency
kept; ``llm-foundry.attention_scale`` searched, since the Hopper efficiency no longer enters these rows), and prints
the fit and group figures against the committed model.  Nothing here changes the model or a reported figure
(docs/planner.md section 10, "Session 10: llm-foundry's Triton attention kernel by device").
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llmfoundry_unlisted_rows as unlisted

from topology import costmodel as cm
from topology import hardware as hw
from topology import validation as v

PURE, DEFAULT = "llm-foundry", "llm-foundry+fp32-reduce+step-sync"
# mosaicml/llm-foundry b2a43a1 (#543, 2023-10-19) scripts/train/benchmarking/README.md: the 7b / 13b rows above
# 8192 tokens (October 2023: v0.3.0, torch 2.1, amp_bf16, FSDP DEFAULT) and the A100-40GB 7b 16k row (April 2023);
# columns as bench/llmfoundry_unlisted_rows.ROWS (label, sibling row for the system, model, GPUs, micro-batch,
# global batch, sequence, T/s, implementation).
LONG_ROWS = [
    ("A100-80GB 7b s16384 (Oct 2023)", "mpt-a100-80gb-7b-8-s1024", "mpt-7b", 8, 4, 64, 16384, 19629, DEFAULT),
    ("A100-80GB 7b s32768 (Oct 2023)", "mpt-a100-80gb-7b-8-s1024", "mpt-7b", 8, 2, 32, 32768, 13382, DEFAULT),
    ("A100-80GB 7b s65536 (Oct 2023)", "mpt-a100-80gb-7b-8-s1024", "mpt-7b", 8, 1, 16, 65536, 8108, DEFAULT),
    ("A100-80GB 13b s16384 (Oct 2023)", "mpt-a100-80gb-7b-8-s1024", "mpt-13b", 8, 3, 72, 16384, 11454, DEFAULT),
    ("A100-80GB 13b s32768 (Oct 2023)", "mpt-a100-80gb-7b-8-s1024", "mpt-13b", 8, 1, 24, 32768, 8134, DEFAULT),
    ("H100 7b s32768 (Oct 2023)", "mpt-h100-7b-8-s1024", "mpt-7b", 8, 2, 32, 32768, 26550, DEFAULT),
    ("H100 7b s65536 (Oct 2023)", "mpt-h100-7b-8-s1024", "mpt-7b", 8, 1, 16, 65536, 15654, DEFAULT),
    ("H100 13b s16384 (Oct 2023)", "mpt-h100-7b-8-s1024", "mpt-13b", 8, 3, 72, 16384, 23881, DEFAULT),
    ("H100 13b s32768 (Oct 2023)", "mpt-h100-7b-8-s1024", "mpt-13b", 8, 1, 24, 32768, 15812, DEFAULT),
    ("A100-40GB 7b s16384 (Apr 2023)", "mpt-a100-40gb-7b-8", "mpt-7b", 8, 1, 32, 16384, 17998, PURE),
]
# FlashAttention-2 (mma.sync on every sm >= 80: flash-attention 4f285b35 csrc/flash_attn/src/kernel_traits.h),
# fwd + bwd, causal, head dim 128, TFLOP/s at 4k: H100 SXM5 (flash-attention README "H100") over A100 80GB (the
# FlashAttention-2 paper's figure 4d); 1.65-1.74 at 512 .. 16k
AMPERE_CODE_HOPPER_OVER_A100 = 294.0 / 173.0
# The October 2023 rows (llm-foundry v0.3.0 on torch 2.1: the rows session 8 flagged "+step-sync") and the name of
# their own GEMM scale in the --split refit
OCTOBER_FLAG, OCTOBER_SCALE = "+step-sync", "llm-foundry-2310.gemm_scale"


def diagnostic_rows() -> list[v.Run]:
    """The data file's llm-foundry rows, then the README rows it does not hold (costed like their siblings)."""
    runs = v.load_runs()
    by_id = {r.id: r for r in runs}
    rows = [r for r in runs if v.implementation_of(r).name == "llm-foundry"]
    for label, sibling, model, gpus, mbs, gb, seq, tps, impl in unlisted.ROWS + LONG_ROWS:
        if impl == "llm-foundry+fp32-reduce":  # llmfoundry_unlisted_rows predates the step-sync flag
            impl = DEFAULT
        rows.append(replace(by_id[sibling], id=label, model=model, gpus=gpus, mbs=mbs, global_batch=gb,
                            seq_len=seq, measured=tps, implementation=impl, split="diagnostic", note=""))
    return rows


@contextlib.contextmanager
def long_models() -> Iterator[None]:
    """v.model_of with max_seq_len raised to the row's sequence (the data file's models stop at 8192)."""
    saved = v.model_of

    def model_of(run: v.Run, path: Path = v.DATA):
        model = saved(run, path)
        return replace(model, max_seq_len=max(model.max_seq_len, run.seq_len))

    v.model_of = model_of
    try:
        yield
    finally:
        v.model_of = saved


@contextlib.contextmanager
def attention_scaled(x: float) -> Iterator[None]:
    """llm-foundry's attention rate times ``x`` (its implementation's attention_scale)."""
    saved = v.IMPLEMENTATIONS["llm-foundry"]
    v.IMPLEMENTATIONS["llm-foundry"] = replace(saved, attention_scale=saved.attention_scale * x)
    try:
        yield
    finally:
        v.IMPLEMENTATIONS["llm-foundry"] = saved


def implied_multiplier(run: v.Run) -> tuple[float, float, float]:
    """(predicted step s, attention's share of it, the multiplier of the kernel's rate that gives the measured
    step; inf where the rest of the step alone exceeds the measurement)."""
    with long_models():
        p1 = v.predict(run).step_time_s
        with attention_scaled(2.0):
            p2 = v.predict(run).step_time_s
    attention = 2.0 * (p1 - p2)
    rest = p1 - attention
    measured = run.measured_step_s
    return p1, attention / p1, attention / (measured - rest) if measured > rest else float("inf")


def hopper_device(device: hw.Device) -> hw.Device:
    """The variant: ``device`` (a Hopper GPU) with the fused-attention efficiency that makes llm-foundry's kernel
    (before its attention_scale, which layer_cost applies) run at its A100 rate times AMPERE_CODE_HOPPER_OVER_A100,
    at every sequence (both on the kernel's curve, cm.KERNEL_SEQ_HALF["flash-triton"])."""
    a100 = replace(hw.A100_40, attention_seq_half=cm.KERNEL_SEQ_HALF["flash-triton"]["ampere"])
    rate = a100.bf16_tflops * a100.attention_efficiency * cm.attention_rate_scale(a100, device.attention_ref_seq)
    return replace(device, attention_efficiency=rate * AMPERE_CODE_HOPPER_OVER_A100 / device.bf16_tflops)


@contextlib.contextmanager
def variant() -> Iterator[None]:
    """The model with llm-foundry's Hopper rows on hopper_device (v.system_of patched; nothing else changes)."""
    saved = v.system_of

    def system_of(run: v.Run, path: Path = v.DATA):
        system = saved(run, path)
        dev = system.node.device
        if dev.arch == "hopper" and v.implementation_of(run).attention_kernel == "flash-triton":
            system = replace(system, node=replace(system.node, device=hopper_device(dev)))
        return system

    v.system_of = system_of
    try:
        yield
    finally:
        v.system_of = saved


@contextlib.contextmanager
def constants(values: dict[str, float]) -> Iterator[None]:
    """The fit script's constants (A100 GEMM efficiency, llm-foundry's scales, DP_OVERLAP_CONTENTION) in place."""
    saved_impl, saved_sys, saved_c = v.IMPLEMENTATIONS["llm-foundry"], v.system_of, cm.DP_OVERLAP_CONTENTION
    v.IMPLEMENTATIONS["llm-foundry"] = replace(saved_impl, gemm_scale=values["llm-foundry.gemm_scale"],
                                               attention_scale=values["llm-foundry.attention_scale"])
    cm.DP_OVERLAP_CONTENTION = values["dp_overlap_contention"]

    def system_of(run: v.Run, path: Path = v.DATA):
        system = saved_sys(run, path)
        dev = system.node.device
        if dev.name.startswith("A100"):
            dev = replace(dev, gemm_efficiency=values["a100.gemm_efficiency"],
                          attention_efficiency=values["a100.attention_efficiency"])
            system = replace(system, node=replace(system.node, device=dev))
        return system

    saved_impl_of = v.implementation_of

    def implementation_of(run: v.Run, *args, **kwargs):
        impl = saved_impl_of(run, *args, **kwargs)
        if OCTOBER_SCALE in values and OCTOBER_FLAG in run.implementation:
            impl = replace(impl, gemm_scale=values[OCTOBER_SCALE])
        return impl

    v.system_of, v.implementation_of = system_of, implementation_of
    try:
        yield
    finally:
        v.IMPLEMENTATIONS["llm-foundry"], v.system_of, cm.DP_OVERLAP_CONTENTION = saved_impl, saved_sys, saved_c
        v.implementation_of = saved_impl_of


def groups() -> dict[str, tuple[float, float]]:
    """Mean / max |error| (%) of topology.validation's groups and of the three llm-foundry tables, under what is in
    place."""
    rows = v.evaluate()
    out = {k: (s["mean_abs"], s["max_abs"]) for k, s in v.summary(rows).items()}
    for src in ("llmfoundry-h100", "llmfoundry-a100-80gb", "llmfoundry-a100-40gb"):
        errs = [abs(r.error_pct) for r in rows if r.run.source == src]
        out[src] = (statistics.fmean(errs), max(errs))
    return out


def refit_variant(split: bool = False) -> tuple[dict[str, float], float]:
    """bench/fit_published_runs.py's coordinate search on the fit rows under the variant, with
    llm-foundry.attention_scale searched (the A100 attention efficiency held as the script holds it).  ``split``:
    the October 2023 rows (OCTOBER_FLAG: llm-foundry v0.3.0, torch 2.1) get a GEMM scale of their own
    (OCTOBER_SCALE, the same grid), the April 2023 rows keep ``llm-foundry.gemm_scale``."""
    import fit_published_runs as fit_mod

    saved_held, saved_params, saved_predict = dict(fit_mod.HELD), dict(fit_mod.PARAMS), fit_mod.predict
    fit_mod.HELD.pop("llm-foundry.attention_scale", None)
    if split:
        fit_mod.PARAMS[OCTOBER_SCALE] = fit_mod.PARAMS["llm-foundry.gemm_scale"]

        def predict(run: v.Run, values: dict[str, float]) -> float:
            if OCTOBER_FLAG in run.implementation:
                values = {**values, "llm-foundry.gemm_scale": values[OCTOBER_SCALE]}
            return saved_predict(run, values)

        fit_mod.predict = predict
    try:
        with variant():
            return fit_mod.fit_constants([r for r in v.load_runs() if r.split == "fit"])
    finally:
        fit_mod.HELD.clear()
        fit_mod.HELD.update(saved_held)
        fit_mod.PARAMS.clear()
        fit_mod.PARAMS.update(saved_params)
        fit_mod.predict = saved_predict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="store_true", help="also refit and report the variant (about a minute)")
    parser.add_argument("--split", action="store_true",
                        help="with --variant: also refit with a GEMM scale of the October 2023 rows' own")
    args = parser.parse_args()
    print(f"{'row':46s} {'seq':>6s} {'mbs':>4s} {'measured':>9s} {'model':>8s} {'error':>7s} {'attn':>6s} {'x':>6s}")
    for run in diagnostic_rows():
        p, share, x = implied_multiplier(run)
        m = run.measured_step_s
        print(f"{run.id:46s} {run.seq_len:6d} {run.mbs:4d} {m:9.2f} {p:8.2f} {100 * (p / m - 1):+6.1f}% "
              f"{100 * share:5.1f}% {x:6.2f}")
    if not args.variant:
        return 0
    columns = {"committed": groups()}
    for name, split in (("variant", False), ("variant+split", True))[:2 if args.split else 1]:
        values, best = refit_variant(split)
        print(f"\n{name} refitted on the fit rows: " + ", ".join(f"{k} = {x:.3f}" for k, x in values.items())
              + f"; fit rows mean |error| {100 * best:.2f}%")
        with variant(), constants(values):
            columns[name] = groups()
    print(f"\n{'group (mean / max |error| %)':28s}" + "".join(f" {k:>15s}" for k in columns))
    for k in columns["committed"]:
        print(f"{k:28s}" + "".join(f" {c[k][0]:6.2f} / {c[k][1]:5.1f}" for c in columns.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
