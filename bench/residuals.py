"""The signed step-time error of the published rows against each row feature (a diagnostic, no GPU, ~4 s).

    PYTHONPATH=$PWD .venv/bin/python bench/residuals.py [--split heldout|fit|all] [--top N]

Signed error = (predicted - measured) / measured, as ``python -m topology.validation`` prints it: negative is
optimistic (the model's step too short).  For every categorical feature (framework family, device, software year,
recompute, sharding, MoE, pipeline schedule, source) one line per value: n, mean signed, mean |error|.  For
every numeric feature (GPU count, tp, pp, virtual stages, ep, dp, micro-batches a step, sequence, parameters,
micro-batch size, tokens a step, the predicted step, one pipeline slot, layers a stage, a layer's GEMM work a GPU,
and each cost term's share of the prediction) one line with
three Pearson correlations of the signed error with the feature (log2 of it for the counts and sizes):

* ``r_all``: over the rows as they are;
* ``r_within``: after subtracting each source's mean from both the error and the feature (does the feature
  explain the error *inside* a source; sources with one row or a constant feature drop out);
* ``r_across``: between the sources' means (one point a source), a cross-source trend that may be one
  source's quirk each;

and the mean signed error of the rows by value (at most 6 values) or by quartile.  Then the features ranked by
|r_within| (the ``--top`` first), and every series of rows that differ only in the global batch (so in the
micro-batches a step, m), with a line step = a + b m through the measured and through the predicted steps: b is the
per-micro-batch slot, a the fill and drain plus the per-step work.  Nothing here enters a reported figure
(docs/planner.md section 10, "Session 14: what the held-out rows' optimism follows").
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import validation as v
from topology.modelcfg import param_counts

# the software generation of each framework family (the year of the code the rows ran; megatron-core covers the
# 2024-2026 Megatron-Core / NeMo / Megatron-Bridge releases)
FAMILY_YEAR = {"megatron-2021": 2021, "megatron-2022": 2022, "megatron-deepspeed-2022": 2022, "gpt-neox-2022": 2022,
               "flash-attn-gpt": 2023, "llm-foundry": 2023, "torchtitan-2024": 2024, "megatron-deepspeed-xpu": 2024,
               "megatron-deepspeed-xpu-zero1": 2024, "megatron-core": 2024, "megatron-core-a2a": 2024,
               "automodel-te": 2025}


def family(run: v.Run) -> str:
    return run.implementation.split("+")[0]


@functools.cache
def _device_of_system(system: str) -> str:
    return v.system_of(next(r for r in v.load_runs() if r.system == system)).node.device.name


def device(run: v.Run) -> str:
    return _device_of_system(run.system)


def schedule(run: v.Run) -> str:
    """pp1, 1f1b (a pipeline without virtual stages) or interleaved."""
    return "pp1" if run.pp == 1 else ("1f1b" if run.vpp == 1 else "interleaved")


def dp_of(run: v.Run) -> int:
    lay = run.layout()
    return lay.dp_replicate * lay.dp_shard


def share(key: str) -> Callable[[v.Row], float]:
    return lambda r: r.estimate.breakdown[key] / r.estimate.step_time_s


CATEGORICAL: dict[str, Callable[[v.Row], str]] = {
    "framework": lambda r: family(r.run),
    "device": lambda r: device(r.run),
    "year": lambda r: str(FAMILY_YEAR.get(family(r.run), "?")),
    "recompute": lambda r: r.run.recompute,
    "sharding": lambda r: r.run.sharding,
    "moe": lambda r: "moe" if v.model_is_moe(r.run) else "dense",
    "schedule": lambda r: schedule(r.run),
    "source": lambda r: r.run.source,
}
# (value, take log2): counts and sizes on a log scale, shares as they are
NUMERIC: dict[str, tuple[Callable[[v.Row], float], bool]] = {
    "gpus": (lambda r: r.run.gpus, True),
    "tp": (lambda r: r.run.tp, True),
    "pp": (lambda r: r.run.pp, True),
    "vpp": (lambda r: r.run.vpp, True),
    "ep": (lambda r: r.run.ep, True),
    "dp": (lambda r: dp_of(r.run), True),
    "microbatches": (lambda r: r.estimate.microbatches, True),
    "mbs": (lambda r: r.run.mbs, True),
    "seq_len": (lambda r: r.run.seq_len, True),
    "params": (lambda r: param_counts(v.model_of(r.run)).total, True),
    "tokens_per_step": (lambda r: r.run.global_batch * r.run.seq_len, True),
    "predicted_step_s": (lambda r: r.estimate.step_time_s, True),
    # one pipeline slot (a micro-batch's forward and backward on one stage): the step over (micro-batches + pp - 1)
    "slot_s": (lambda r: r.estimate.step_time_s / (r.estimate.microbatches + r.run.pp - 1), True),
    "layers_per_stage": (lambda r: v.model_of(r.run).n_layers / (r.run.pp * r.run.vpp), True),
    # one layer's GEMM work on one GPU for one micro-batch (24 mbs s h^2 / tp): small = small kernels
    "layer_gemm_flop": (lambda r: 24 * r.run.mbs * r.run.seq_len * v.model_of(r.run).d_model ** 2 / r.run.tp, True),
    **{f"share_{k[:-2]}": (share(k), False) for k in v.SHARES},
}
FEATURES = (*CATEGORICAL, *NUMERIC)


def pearson(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 3:
        return math.nan
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def correlations(rows: list[v.Row], fn: Callable[[v.Row], float], log: bool,
                 values: list[float] | None = None) -> tuple[float, float, float]:
    """(r_all, r_within, r_across) of the signed error with the feature (``values``: its values, if known)."""
    vals = [fn(r) for r in rows] if values is None else values
    xs = [math.log2(x) if log else x for x in vals]
    es = [r.error_pct for r in rows]
    by_src: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_src.setdefault(r.run.source, []).append(i)
    wx, we, ax, ae = [], [], [], []
    for idx in by_src.values():
        mx, me = statistics.fmean(xs[i] for i in idx), statistics.fmean(es[i] for i in idx)
        ax.append(mx)
        ae.append(me)
        if len(idx) > 1:
            wx += [xs[i] - mx for i in idx]
            we += [es[i] - me for i in idx]
    return pearson(xs, es), pearson(wx, we), pearson(ax, ae)


def _stats(errs: list[float]) -> str:
    return (f"n={len(errs):3d} signed {statistics.fmean(errs):+6.1f}% "
            f"|err| {statistics.fmean(abs(e) for e in errs):5.1f}%")


def bins(values: list[float], errs: list[float]) -> list[tuple[str, list[float]]]:
    """The errors by value when the feature takes at most 6 values, else by quartile."""
    distinct = sorted(set(values))
    if len(distinct) <= 6:
        return [(f"{x:g}", [e for val, e in zip(values, errs) if val == x]) for x in distinct]
    xs = sorted(values)
    edges = [xs[len(xs) * q // 4] for q in (1, 2, 3)]
    out, lo = [], -math.inf
    for hi in (*edges, math.inf):
        sel = [e for val, e in zip(values, errs) if lo <= val < hi]
        if sel:
            label = f"<{hi:.3g}" if lo == -math.inf else (f">={lo:.3g}" if hi == math.inf else f"{lo:.3g}-{hi:.3g}")
            out.append((label, sel))
        lo = hi
    return out


def report(rows: list[v.Row], top: int = 8) -> str:
    errs = [r.error_pct for r in rows]
    out = [f"rows: {_stats(errs)}  (signed < 0: predicted faster than measured)", ""]
    for name, fn in CATEGORICAL.items():
        groups: dict[str, list[float]] = {}
        for r in rows:
            groups.setdefault(fn(r), []).append(r.error_pct)
        out.append(f"feature {name}")
        for key, sel in sorted(groups.items(), key=lambda kv: statistics.fmean(kv[1])):
            out.append(f"    {key:40s} {_stats(sel)}")
    out.append("")
    out.append(f"{'feature':24s} {'r_all':>6s} {'r_within':>8s} {'r_across':>8s}   signed error by value / quartile")
    ranked = []
    for name, (fn, log) in NUMERIC.items():
        values = [fn(r) for r in rows]
        ra, rw, rx = correlations(rows, fn, log, values)
        ranked.append((name, ra, rw, rx))
        parts = [f"{label}: {statistics.fmean(sel):+.1f}% ({len(sel)})" for label, sel in bins(values, errs)]
        out.append(f"feature {name:16s} {ra:+6.2f} {rw:+8.2f} {rx:+8.2f}   " + "  ".join(parts))
    out += ["", f"top {top} numeric features by |r_within| (a trend inside sources, not one source's quirk):"]
    ranked.sort(key=lambda t: -abs(t[2]) if not math.isnan(t[2]) else 0.0)
    for name, ra, rw, rx in ranked[:top]:
        out.append(f"    {name:24s} r_within {rw:+.2f}  r_all {ra:+.2f}  r_across {rx:+.2f}")
    return "\n".join(out)


SERIES_KEY = ("source", "model", "system", "implementation", "gpus", "tp", "pp", "vpp", "ep", "sharding", "mbs",
              "seq_len", "recompute")


def microbatch_series(rows: list[v.Row]) -> str:
    """Rows that differ only in the global batch (so in the micro-batches a step, m): a least-squares line
    step = a + b m through the measured and through the predicted steps.  b is the per-micro-batch slot, a the
    fill and drain (the bubble) plus the per-step work; a measured b above the model's with a close a puts the
    missing time in the slot, not the bubble."""
    series: dict[tuple, list[v.Row]] = {}
    for r in rows:
        series.setdefault(tuple(getattr(r.run, k) for k in SERIES_KEY), []).append(r)
    out = ["micro-batch series (only the global batch differs): step = a + b m, measured against the model"]
    for key, sel in series.items():
        ms = [r.estimate.microbatches for r in sel]
        if len(set(ms)) < 2:
            continue
        sel.sort(key=lambda r: r.estimate.microbatches)
        ms = [r.estimate.microbatches for r in sel]
        am, bm = _line(ms, [r.run.measured_step_s for r in sel])
        ap, bp = _line(ms, [r.estimate.step_time_s for r in sel])
        out.append(f"    {key[0]:28s} {key[1]:16s} tp{key[5]} pp{key[6]}x{key[7]} m {ms}: "
                   f"a {am:7.3f} / {ap:7.3f} s, b {1e3 * bm:8.2f} / {1e3 * bp:8.2f} ms (x{bm / bp:.3f}), "
                   f"errors {' '.join(f'{r.error_pct:+.1f}%' for r in sel)}")
    return "\n".join(out)


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def select(rows: list[v.Row], split: str) -> list[v.Row]:
    return rows if split == "all" else [r for r in rows if r.run.split == split]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=("heldout", "fit", "all"), default="heldout")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    rows = select(v.evaluate(), args.split)
    print(report(rows, args.top))
    print()
    print(microbatch_series(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
