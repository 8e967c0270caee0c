"""Megatron's non-interleaved 1F1B replayed call by call with blocking exchanges, against the cost model (issue 15).

    PYTHONPATH=$PWD .venv/bin/python bench/megatron_1f1b_replay.py [--markdown]

``forward_backward_pipelining_without_interleaving`` (NVIDIA/Megatron-LM megatron/core/pipeline_parallel/schedules.py;
the same call sequence at core_v0.6.0, core_r0.9.0, d98e8a64dd and in the Zero Bubble fork's legacy copy at f68d3879)
runs on stage s of p, with w = min(p - s - 1, m) warm-up micro-batches and r = m - w steady ones:

* warm-up, w times: ``recv_forward``, forward, ``send_forward``; then ``recv_forward`` once if r > 0;
* steady, r times: forward, ``send_forward_recv_backward``, backward, then ``send_backward_recv_forward`` (the last
  time ``send_backward``);
* cool-down, w times: ``recv_backward``, backward, ``send_backward``.

Each call is one ``_communicate``: a ``batch_isend_irecv`` of its sends and receives followed by
``torch.cuda.synchronize()`` (``batch_p2p_comm and batch_p2p_sync``, both on without interleaving: the schedule
refuses ``overlap_p2p_comm``), so a stage leaves a call only when every transfer of it has landed.  A transfer starts
when both ends have posted it (NCCL matches the k-th send on a link with the k-th receive) and lasts ``c``.  The
replay runs those calls with each stage's forward and backward from the cost model's own ``StageTerms`` (the
pass-setting stage and the lighter end stages as the model cuts them) and the model's own hop, and prints:

1. every non-interleaved pipeline row: the model's step against the replayed step of the model's own stages (the
   model charges (m + p - 1) x the slowest stage's slot; the replay gives the fill and the drain of the lighter
   stages at their own pace);
2. the micro-batch series (rows that differ only in m): step = a + b m through the measured steps and through the
   replayed ones; a uniform error in the passes scales a and b alike, a cost that only the steady state pays
   raises b alone;
3. the steady state's sensitivity to random pass times (each forward and backward drawn normal with coefficient of
   variation cv): the blocking rendezvous couples the stages, so the period exceeds the mean slot where a run
   without a pipeline only adds the draws up.

Nothing here enters a reported figure (docs/planner.md section 10, "Session 14: what a non-interleaved 1F1B stage
pays per micro-batch").  CPU only, about 15 s.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import validation as v

Transfer = tuple[str, tuple[str, int], int]  # ("send"|"recv", (link kind "f"|"b", lower stage of the link), micro-batch)


def megatron_calls(p: int, m: int, s: int) -> list[tuple[str, object]]:
    """Stage ``s``'s program: ("F"|"B", None) passes and ("P", [transfers]) blocking calls, in Megatron's order."""
    w = min(p - s - 1, m)
    r = m - w

    def rf(i):
        return [("recv", ("f", s - 1), i)] if s > 0 else []

    def sf(i):
        return [("send", ("f", s), i)] if s < p - 1 else []

    def rb(i):
        return [("recv", ("b", s), i)] if s < p - 1 else []

    def sb(i):
        return [("send", ("b", s - 1), i)] if s > 0 else []

    calls: list[tuple[str, object]] = []
    for i in range(w):
        calls += [("P", rf(i)), ("F", None), ("P", sf(i))]
    if r > 0:
        calls.append(("P", rf(w)))
    for k in range(r):
        calls += [("F", None), ("P", sf(w + k) + rb(k)), ("B", None)]
        calls.append(("P", sb(k)) if k == r - 1 else ("P", sb(k) + rf(w + k + 1)))
    for i in range(w):
        calls += [("P", rb(r + i)), ("B", None), ("P", sb(r + i))]
    return calls


def replay(p: int, m: int, fwd: list[float], bwd: list[float], hop: float, cv: float = 0.0, seed: int = 0) -> float:
    """The step (the last stage to finish) of Megatron's 1F1B with per-stage pass times ``fwd[s]`` / ``bwd[s]``, each
    blocking call held until all its transfers (``hop`` each, from when both ends have posted) have landed; ``cv`` > 0
    draws every pass normal with that coefficient of variation."""
    rnd = random.Random(seed)

    def draw(x: float) -> float:
        return max(0.0, rnd.gauss(x, cv * x)) if cv > 0 else x

    prog = [megatron_calls(p, m, s) for s in range(p)]
    ptr, now = [0] * p, [0.0] * p
    posted: dict[Transfer, float] = {}
    waiting = [False] * p
    while True:
        moved = False
        for s in range(p):
            while ptr[s] < len(prog[s]):
                kind, arg = prog[s][ptr[s]]
                if kind != "P":
                    now[s] += draw(fwd[s] if kind == "F" else bwd[s])
                    ptr[s] += 1
                    moved = True
                    continue
                if not waiting[s]:
                    for t in arg:
                        posted[t] = now[s]
                    waiting[s] = True
                end = now[s]
                for (way, link, i) in arg:
                    other = ("recv" if way == "send" else "send", link, i)
                    if other not in posted:
                        break
                    end = max(end, max(posted[(way, link, i)], posted[other]) + hop)
                else:
                    now[s], waiting[s] = end, False
                    ptr[s] += 1
                    moved = True
                    continue
                break
        if all(ptr[s] == len(prog[s]) for s in range(p)):
            return max(now)
        if not moved:
            raise RuntimeError("the replay is stuck: the calls do not match")


def row_stages(run: v.Run) -> tuple[int, int, list[float], list[float], float, float, float]:
    """(p, m, forward a stage, backward a stage, hop, per-step seconds beyond the passes, model step) of a
    non-interleaved pipeline row, from the cost model's own structure.  The hop is the model's mean pipeline hop
    (its ``pp_comm`` over the hops it charges); on DeepSpeed's engine the steady exchanges are in the stage's
    ``pipe_xchg`` (added to its backward, less the two hops a slot the replay adds) and ``pp_comm`` holds the fill
    and drain."""
    req, lay = v.request_of(run), run.layout()
    st = cm.structure_of(req, lay)
    est = v.predict(run)
    p, m = run.pp, st.microbatches
    ds = req.impl.deepspeed_pipe
    hop = st.pp_comm / (2 * (p - 1) + (0 if ds else 2 * m))
    ranks = sorted(s.rank for s in st.stages)
    by_rank = {s.rank: s for s in st.stages}
    fwd, bwd = [], []
    for q in range(p):
        # rank_profiles' lowest rank of each distinct content: the middle ranks share rank 1's (or 0's) terms
        s = by_rank[q] if q in by_rank else by_rank[max(x for x in ranks if x <= q and x < p - 1)]
        fwd.append(s.t_f)
        bwd.append(s.t_b + s.cp_comm + (s.pipe_xchg - 2 * hop if ds else 0.0))
    per_step = est.step_time_s - st.time_lower_bound
    return p, m, fwd, bwd, hop, per_step, est.step_time_s


def row_replay(run: v.Run) -> tuple[float, float]:
    """(replayed step of the model's own stages, the model's step)."""
    p, m, fwd, bwd, hop, per_step, model = row_stages(run)
    return replay(p, m, fwd, bwd, hop) + per_step, model


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def pipeline_rows() -> list[v.Run]:
    return [r for r in v.load_runs() if r.pp > 1 and r.vpp == 1]


def series(runs: list[v.Run]) -> dict[str, list[v.Run]]:
    """Rows that differ only in the global batch (so in m), three or more of them."""
    out: dict[tuple, list[v.Run]] = {}
    for r in runs:
        key = (r.source, r.model, r.system, r.gpus, r.tp, r.pp, r.ep, r.mbs, r.seq_len, r.recompute, r.sharding,
               r.implementation)
        out.setdefault(key, []).append(r)
    return {f"{k[1]} ({k[0]})": sorted(rs, key=lambda r: r.global_batch) for k, rs in out.items() if len(rs) >= 3}


def series_fit(rows: list[v.Run]) -> dict[str, float]:
    ms, meas, rep = [], [], []
    for r in rows:
        p, m, fwd, bwd, hop, per_step, _ = row_stages(r)
        ms.append(m)
        meas.append(r.measured_step_s)
        rep.append(replay(p, m, fwd, bwd, hop) + per_step)
    am, bm = _line(ms, meas)
    ar, br = _line(ms, rep)
    return {"a_measured": am, "b_measured": bm, "a_replay": ar, "b_replay": br, "a_ratio": am / ar, "b_ratio": bm / br}


def jitter_excess(p: int, m: int, cv: float, seeds: int = 4, ratio_bf: float = 2.0, hop: float = 0.01) -> float:
    """Mean replayed step with random passes over the step with fixed ones, minus 1 (uniform stages, backward
    ``ratio_bf`` x the forward, a hop ``hop`` x the forward)."""
    fwd, bwd = [1.0] * p, [ratio_bf] * p
    fixed = replay(p, m, fwd, bwd, hop)
    return sum(replay(p, m, fwd, bwd, hop, cv, seed) for seed in range(seeds)) / seeds / fixed - 1.0


# ALCF's AuroraGPT-70B 'PyTorch 2.5 Results' table (argonne-lcf/Megatron-DeepSpeed ALCF/notes/AuroraGPT-70B.md at
# 3848f6fb): 8 nodes, 96 tiles, PP 8, DP 6, TP 2, MBS 1, activation checkpointing on; GAS -> (GBS, sps).  GAS 8-32 are
# the data file's aurora-megds-70b-pp8-tp2-gas* rows; GAS 1-4 (fewer micro-batches than stages) are not rows (the cost
# model refuses m < p) but the replay runs them.
AURORA_70B_PP8_TP2 = {1: (6, 0.541), 2: (12, 0.936), 4: (24, 1.525), 8: (48, 2.229), 16: (96, 2.882), 32: (192, 3.376)}


def aurora_gas_table() -> list[tuple[int, float, float]]:
    """(GAS, measured step, replay of the model's stages) for every GAS of ALCF's table (the per-step work at the
    GAS 8 row's value: the reduction and the optimizer do not depend on the micro-batch count)."""
    run = next(r for r in v.load_runs() if r.id == "aurora-megds-70b-pp8-tp2-gas8")
    p, _, fwd, bwd, hop, per_step, _ = row_stages(run)
    return [(g, gbs / sps, replay(p, g, fwd, bwd, hop) + per_step) for g, (gbs, sps) in AURORA_70B_PP8_TP2.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    sep = " | " if args.markdown else "  "
    print("1. non-interleaved pipeline rows: the model's step against the replay of its own stages")
    print(sep.join(["row", "p", "m", "measured s", "model s", "replay s", "replay / model", "error now",
                    "error at the replay"]))
    for r in pipeline_rows():
        rep, model = row_replay(r)
        meas = r.measured_step_s
        print(sep.join([r.id, str(r.pp), str(row_stages(r)[1]), f"{meas:.3f}", f"{model:.3f}", f"{rep:.3f}",
                        f"{rep / model:.3f}", f"{100 * (model / meas - 1):+.1f}%", f"{100 * (rep / meas - 1):+.1f}%"]))
    print()
    print("2. micro-batch series: step = a + b m, measured against the replay of the model's stages")
    for name, rows in series(pipeline_rows()).items():
        f = series_fit(rows)
        ms = [row_stages(r)[1] for r in rows]
        print(f"{name}, m {ms}: measured a {f['a_measured']:.3f} s b {1e3 * f['b_measured']:.1f} ms; replay a "
              f"{f['a_replay']:.3f} s b {1e3 * f['b_replay']:.1f} ms; measured / replay: a {f['a_ratio']:.3f}, "
              f"b {f['b_ratio']:.3f}")
    print()
    print("   ALCF's Aurora 70B table at every GAS (GAS 1-4: fewer micro-batches than stages, not data-file rows)")
    prev = None
    for g, meas, rep in aurora_gas_table():
        inc = "" if prev is None else (f"; a micro-batch more: measured {(meas - prev[1]) / (g - prev[0]):.3f} s, "
                                       f"replay {(rep - prev[2]) / (g - prev[0]):.3f} s")
        print(f"   GAS {g:2d}: measured {meas:.2f} s, replay {rep:.2f} s, ratio {meas / rep:.3f}{inc}")
        prev = (g, meas, rep)
    print()
    print("3. random pass times (normal, cv): replayed step over the fixed one, minus 1 (uniform stages, B = 2 F)")
    for p, m in ((4, 64), (8, 32), (16, 128), (32, 256)):
        print(f"p {p:2d} m {m:3d}: " + "  ".join(f"cv {cv:.2f}: {100 * jitter_excess(p, m, cv):+.1f}%"
                                                   for cv in (0.01, 0.02, 0.05, 0.10)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
