"""Fixed-global-batch strong scaling: what the MoE Parallel Folding rows lose per step against the model (a diagnostic).

    PYTHONPATH=$PWD .venv/bin/python bench/strong_scaling_vs_model.py

The paper's Table 4 (Liu et al. 2025, arXiv 2504.14960 v2; source entry ``liu2025-moe-parallel-folding-t4``) keeps each
layout and MBS 1 and grows the GPUs at GBS 1024: only the micro-batches a replica (m = 1024 / DP) and the data-parallel
size change, so every per-micro-batch cost (the passes, the expert all-to-all, the MoE dispatcher's host
synchronisations, the GEMMs' shapes: M is MBS x seq / TP at every scale) is paid m times at every scale, and the step
is ``a m + b`` with ``b`` what a step pays once (the bubble, the pipeline's fill and drain, the exposed data-parallel
traffic, the optimizer).

(1) Per layout, ``a`` and ``b`` from the file's 256- and 1024-GPU rows, measured and predicted, and ``b`` in
micro-batch times (``b / a``); the model's own per-step terms.  (2) The same fit on the paper's four Table 4 scales
(128, 256, 512, 1024 GPUs; 64-1024 for Qwen2) from its MFU column (the step a micro-batch is proportional to 1 / MFU
within a layout): not rows of the file, no prediction made for them.  (3) A replay of Megatron-Core's interleaved
1F1B order (schedules.py ``forward_backward_pipelining_with_interleaving`` at 71c394b172, the paper's time: the
``(pp - rank - 1) * 2 + (v - 1) * pp`` warm-up, the chunk of virtual micro-batch k, groups of pp micro-batches) with
every op as soon as its input is there: the makespan against the model's ``m (t_f + t_b) + bubble`` and the per-hop
latency it adds; and the same op by op with the schedule's exchanges as issued (blocking in the warm-up and the
cool-down, posted ahead in the steady state) on NCCL's per-pair streams with rendezvous; and with each op's time
spread at random.  (4) Two readings, not adopted: VPP 1 on the G8T8 layouts, ``+no-dp-overlap`` on every folding row.
Nothing here is fitted or enters a reported figure (docs/planner.md, "Session 11: fixed-global-batch strong scaling").
"""
from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import validation as v

# layout -> (the file's 256- and 1024-GPU rows, the Table 3 row at its own scale or None)
LAYOUTS = {
    "Mixtral-8x22B MCore": ("folding-t4-mixtral-8x22b-mcore-256", "folding-t4-mixtral-8x22b-mcore-1024",
                            "folding-mixtral-8x22b-128-mcore"),
    "Mixtral-8x22B folded": ("folding-t4-mixtral-8x22b-folding-256", "folding-t4-mixtral-8x22b-folding-1024", None),
    "Qwen2-57B MCore": ("folding-t4-qwen2-57b-mcore-256", "folding-t4-qwen2-57b-mcore-1024",
                        "folding-qwen2-57b-64-mcore"),
    "Qwen2-57B folded": ("folding-t4-qwen2-57b-folding-256", "folding-t4-qwen2-57b-folding-1024",
                         "folding-qwen2-57b-64-folding"),
    "G8T8 MCore": ("folding-t4-g8t8-mcore-256", "folding-t4-g8t8-mcore-1024", "folding-g8t8-128-mcore"),
    "G8T8 folded": ("folding-t4-g8t8-folding-256", "folding-t4-g8t8-folding-1024", "folding-g8t8-128-folding"),
}

# Table 4's MFU (%) by GPU count, GBS 1024 (the transcription's merged cells read in order, as the source entry does)
TABLE4_MFU = {
    "Mixtral-8x22B MCore": {128: 49.4, 256: 48.0, 512: 45.5, 1024: 42.3},
    "Mixtral-8x22B folded": {128: 52.2, 256: 50.7, 512: 48.9, 1024: 44.9},
    "Qwen2-57B MCore": {64: 36.2, 128: 36.0, 256: 34.8, 512: 32.5, 1024: 29.8},
    "Qwen2-57B folded": {64: 39.9, 128: 39.7, 256: 38.1, 512: 36.6, 1024: 33.4},
    "G8T8 MCore": {128: 19.8, 256: 18.4, 512: 16.3, 1024: 13.4},
    "G8T8 folded": {128: 30.0, 256: 29.3, 512: 26.7, 1024: 25.5},
}


def line(ms: list[float], steps: list[float]) -> tuple[float, float]:
    """Least-squares ``step = a m + b``."""
    n = len(ms)
    mx, my = sum(ms) / n, sum(steps) / n
    a = sum((x - mx) * (y - my) for x, y in zip(ms, steps)) / sum((x - mx) ** 2 for x in ms)
    return a, my - a * mx


# ------------------------------------------------------------ Megatron-Core's interleaved order, replayed
def megatron_interleaved_order(pp: int, v: int, m: int, rank: int) -> list[tuple[str, int, int]]:
    """(kind, micro-batch, chunk) in the order rank ``rank`` runs them: ``get_model_chunk_id`` and
    ``get_microbatch_id_in_model_chunk`` with ``microbatch_group_size_per_vp_stage = pp`` (the default), the warm-up
    count ``(pp - rank - 1) * 2 + (v - 1) * pp`` (all forwards when it reaches m v), then one forward and one
    backward a step of the steady state, then the cool-down's backwards."""
    total = m * v

    def chunk(k: int, forward: bool) -> int:
        c = (k // pp) % v
        return c if forward else v - 1 - c

    def mb(k: int) -> int:
        return (k // (pp * v)) * pp + k % pp

    warm = min(total, (pp - rank - 1) * 2 + (v - 1) * pp)
    ops = [("F", mb(k), chunk(k, True)) for k in range(warm)]
    for k in range(total - warm):
        ops += [("F", mb(warm + k), chunk(warm + k, True)), ("B", mb(k), chunk(k, False))]
    ops += [("B", mb(k), chunk(k, False)) for k in range(total - warm, total)]
    return ops


def replay_makespan(pp: int, v: int, m: int, t_f: float, t_b: float, hop: float = 0.0, spread: float = 0.0,
                    seed: int = 0) -> float:
    """The step of the slowest rank when each rank runs its ops in Megatron's order, each as soon as its input has
    arrived (``hop`` seconds after the op that made it, on another rank) and the rank is free: the exchanges are
    posted ahead (``overlap_p2p_comm``), so a transfer costs time only where it holds up the op that needs it.
    ``t_f`` and ``t_b`` are a rank's whole micro-batch (all its chunks); a chunk takes 1 / v of them, times a
    Gaussian factor of standard deviation ``spread`` (at least 0.1) where ``spread`` > 0."""
    tf, tb = t_f / v, t_b / v
    rnd = random.Random(seed)
    orders = [megatron_interleaved_order(pp, v, m, r) for r in range(pp)]
    done: dict[tuple[str, int, int], float] = {}
    pos, clock = [0] * pp, [0.0] * pp
    last = pp * v - 1
    moved = True
    while moved:
        moved = False
        for r in range(pp):
            while pos[r] < len(orders[r]):
                kind, b, c = orders[r][pos[r]]
                stage = c * pp + r  # the virtual stage
                if kind == "F":
                    dep = None if stage == 0 else ("F", b, stage - 1)
                else:
                    dep = ("F", b, stage) if stage == last else ("B", b, stage + 1)
                if dep is not None and dep not in done:
                    break
                ready = 0.0 if dep is None else done[dep] + (hop if dep[2] != stage else 0.0)
                factor = max(0.1, rnd.gauss(1.0, spread)) if spread > 0 else 1.0
                clock[r] = max(clock[r], ready) + (tf if kind == "F" else tb) * factor
                done[(kind, b, stage)] = clock[r]
                pos[r] += 1
                moved = True
    if any(pos[r] < len(orders[r]) for r in range(pp)):
        raise RuntimeError("the replayed order deadlocks")
    return max(clock)



# ------------------------------------------------------------ the same, op by op with Megatron's exchanges
def megatron_interleaved_program(pp: int, v: int, m: int, rank: int) -> list[tuple]:
    """What rank ``rank`` issues, in order, under ``overlap_p2p_comm`` (the default) without
    ``overlap_p2p_comm_warmup_flush`` (the default), schedules.py at 71c394b172: ``("comp", "F"|"B", k)``;
    ``("post", name, ops)`` with ops ``(send|recv, peer, tag)``; ``("wait", name)``.  The warm-up and the cool-down
    exchange with blocking ``send_forward_recv_forward`` / ``send_backward_recv_backward`` (posted, then waited on);
    the steady state posts each exchange right after its op and never waits for it there: its receive is waited on by
    the data dependency of the op that needs it, its send one op later (``send_next_wait_handle``), which changes
    nothing here and is left out.  A tag is (kind, micro-batch, the receiving virtual stage)."""
    total, g = m * v, pp
    nxt, prv = (rank + 1) % pp, (rank - 1) % pp
    last = pp * v - 1

    def mb(k: int) -> int:
        return (k // (g * v)) * g + k % g

    def fstage(k: int) -> int:
        return ((k // g) % v) * pp + rank

    def bstage(k: int) -> int:
        return (v - 1 - (k // g) % v) * pp + rank

    def fin(k):  # the input of forward k, if it comes from another rank
        return ("F", mb(k), fstage(k)) if k < total and fstage(k) != 0 else None

    def bin_(k):
        return ("B", mb(k), bstage(k)) if k < total and bstage(k) != last else None

    def fout(k):
        return ("F", mb(k), fstage(k) + 1) if fstage(k) != last else None

    def bout(k):
        return ("B", mb(k), bstage(k) - 1) if bstage(k) != 0 else None

    def ops(*pairs):
        return [(kind, peer, tag) for kind, peer, tag in pairs if tag is not None]

    warm = min(total, (pp - rank - 1) * 2 + (v - 1) * g)
    prog: list[tuple] = []
    if fin(0):
        prog += [("post", "r0", ops(("recv", prv, fin(0)))), ("wait", "r0")]
    for k in range(warm):
        prog += [("comp", "F", k), ("post", f"w{k}", ops(("send", nxt, fout(k)), ("recv", prv, fin(k + 1)))),
                 ("wait", f"w{k}")]
        if k == warm - 1 and warm < total:
            prog.append(("post", "b0", ops(("recv", nxt, bin_(0)))))
    for k in range(total - warm):
        f = k + warm
        prog += [("comp", "F", f), ("post", f"sf{f}", ops(("send", nxt, fout(f)), ("recv", prv, fin(f + 1)))),
                 ("comp", "B", k), ("post", f"sb{k}", ops(("send", prv, bout(k)), ("recv", nxt, bin_(k + 1))))]
    for k in range(total - warm, total):
        prog += [("comp", "B", k), ("post", f"c{k}", ops(("send", prv, bout(k)), ("recv", nxt, bin_(k + 1)))),
                 ("wait", f"c{k}")]
    return prog


def replay_program(pp: int, v: int, m: int, t_f: float, t_b: float, hop: float) -> float:
    """The step of the slowest rank when every rank runs ``megatron_interleaved_program`` on one compute stream and
    its NCCL sends and receives as PyTorch issues them: each on the stream of its rank pair's communicator, in issue
    order, not before the compute issued ahead of it, a send and its receive together ``hop`` seconds after the later
    of the two could start (a rendezvous)."""
    tf, tb = t_f / v, t_b / v
    progs = [megatron_interleaved_program(pp, v, m, r) for r in range(pp)]
    pos, clock = [0] * pp, [0.0] * pp
    streams: dict[tuple[int, int, int], list[dict]] = {}
    unmatched: dict[tuple, dict] = {}
    arrived: dict[tuple, dict] = {}  # (rank, tag) -> the receive
    handles: dict[tuple[int, str], list[dict]] = {}

    def settle() -> None:
        changed = True
        while changed:
            changed = False
            for queue in streams.values():
                free = 0.0
                for op in queue:
                    if op["done"] is None:
                        op["start"] = max(op["issue"], free)
                        mate = op.get("mate")
                        if mate is None or mate.get("start") is None:
                            break
                        op["done"] = mate["done"] = max(op["start"], mate["start"]) + hop
                        changed = True
                    free = op["done"]

    moved = True
    while moved:
        moved = False
        for r in range(pp):
            prog = progs[r]
            while pos[r] < len(prog):
                act = prog[pos[r]]
                if act[0] == "comp":
                    k = act[2]
                    tag = _input_tag(pp, v, m, r, act[1], k)
                    if tag is not None:
                        rec = arrived.get((r, tag))
                        if rec is None or rec["done"] is None:
                            break
                        clock[r] = max(clock[r], rec["done"])
                    clock[r] += tf if act[1] == "F" else tb
                elif act[0] == "post":
                    recs = []
                    for kind, peer, tag in act[2]:
                        op = {"issue": clock[r], "done": None, "start": None}
                        streams.setdefault((r, min(r, peer), max(r, peer)), []).append(op)
                        key = (r, peer, tag) if kind == "send" else (peer, r, tag)
                        if key in unmatched:
                            op["mate"] = unmatched.pop(key)
                            op["mate"]["mate"] = op
                        else:
                            unmatched[key] = op
                        if kind == "recv":
                            arrived[(r, tag)] = op
                        recs.append(op)
                    handles[(r, act[1])] = recs
                else:
                    settle()
                    recs = handles[(r, act[1])]
                    if any(op["done"] is None for op in recs):
                        break
                    clock[r] = max([clock[r]] + [op["done"] for op in recs])
                pos[r] += 1
                moved = True
            settle()
    if any(pos[r] < len(progs[r]) for r in range(pp)) or unmatched:
        raise RuntimeError("the replayed program stalls")
    return max(clock)


def _input_tag(pp: int, v: int, m: int, rank: int, kind: str, k: int):
    """The tag of the tensor op (kind, k) of ``rank`` receives from another rank, or None."""
    g = pp
    b = (k // (g * v)) * g + k % g
    if kind == "F":
        stage = ((k // g) % v) * pp + rank
        return ("F", b, stage) if stage != 0 else None
    stage = (v - 1 - (k // g) % v) * pp + rank
    return ("B", b, stage) if stage != pp * v - 1 else None

def main() -> int:
    runs = {r.id: r for r in v.load_runs()}

    print("(1) step = a m + b from the file's 256 / 1024-GPU rows (GBS 1024, MBS 1)")
    print(f"{'layout':22s} {'m':>7s} {'meas a':>7s} {'pred a':>7s} {'meas b':>7s} {'pred b':>7s} "
          f"{'b/a meas':>8s} {'b/a pred':>8s} | model per-step at 1024: bubble, pp fill+drain, dp exposed, "
          f"optimizer; steady pp exchange a mb")
    for name, (r256, r1024, _) in LAYOUTS.items():
        ra, rb = runs[r256], runs[r1024]
        ea, eb = v.predict(ra), v.predict(rb)
        ma, mb_ = ea.microbatches, eb.microbatches
        a_m, b_m = line([ma, mb_], [ra.measured_step_s, rb.measured_step_s])
        a_p, b_p = line([ma, mb_], [ea.step_time_s, eb.step_time_s])
        pa, pb = ea.breakdown["pp_comm_s"], eb.breakdown["pp_comm_s"]
        steady = (pa - pb) / (ma - mb_)
        bd = eb.breakdown
        print(f"{name:22s} {ma:3d}/{mb_:<3d} {a_m:7.4f} {a_p:7.4f} {b_m:7.3f} {b_p:7.3f} {b_m / a_m:8.2f} "
              f"{b_p / a_p:8.2f} | {bd['bubble_s']:.3f} {pb - mb_ * steady:.3f} {bd['dp_comm_exposed_s']:.3f} "
              f"{bd['optimizer_s']:.3f}; {steady:.4f}")

    print("\n(2) step = a m + b over Table 4's scales (the paper's MFU; step a micro-batch ~ 1 / MFU in a layout)")
    for name, mfu in TABLE4_MFU.items():
        r256 = runs[LAYOUTS[name][0]]
        model_par = r256.tp * r256.pp
        m256 = r256.global_batch // (256 // model_par)
        per_mfu = r256.measured_step_s / m256 * mfu[256]
        ms, steps = [], []
        for gpus, u in sorted(mfu.items()):
            m = 1024 // (gpus // model_par)
            ms.append(m)
            steps.append(m * per_mfu / u)
        a, b = line(ms, steps)
        res = [s - (a * x + b) for x, s in zip(ms, steps)]
        bubble = (r256.pp - 1) / r256.vpp
        print(f"{name:22s} m {[int(x) for x in ms]}: a {a:.4f} s, b {b:.3f} s = {b / a:.2f} micro-batches "
              f"(interleaved bubble {bubble:.2f}, VPP 1 {r256.pp - 1}); largest residual {max(map(abs, res)):.3f} s")

    print("\n(3) Megatron-Core's interleaved order replayed (t_f 1, t_b 2 a micro-batch)")
    for pp, vpp, ms in ((8, 7, (16, 64)), (4, 7, (8, 32))):
        for m in ms:
            span = replay_makespan(pp, vpp, m, 1.0, 2.0)
            model = m * 3.0 + cm.bubble_seconds("interleaved1f1b", pp, vpp, 1.0, 2.0)
            per_hop = (replay_makespan(pp, vpp, m, 1.0, 2.0, hop=1e-3) - span) / 1e-3
            hop = 0.2 / vpp  # a fifth of a chunk's forward
            per_hop_ops = (replay_program(pp, vpp, m, 1.0, 2.0, hop) - span) / hop
            print(f"pp {pp} vpp {vpp} m {m:3d}: replay {span:.4f}, model {model:.4f}; a hop's latency is paid "
                  f"{per_hop:.1f} times, {per_hop_ops:.1f} with Megatron's exchanges op by op (2 (pp vpp - 1) = "
                  f"{2 * (pp * vpp - 1)}; the model's steady state adds 2 m vpp = {2 * m * vpp})")

    print("\n(3b) the same order with each op's time spread (Gaussian, 20 seeds): the mean excess over "
          "m (t_f + t_b) + bubble, in micro-batch times")
    for pp, vpp in ((8, 7), (4, 7)):
        for spread in (0.05, 0.1):
            cells = []
            for m in (16, 64):
                ideal = m * 3.0 + cm.bubble_seconds("interleaved1f1b", pp, vpp, 1.0, 2.0)
                mean = sum(replay_makespan(pp, vpp, m, 1.0, 2.0, spread=spread, seed=s) for s in range(20)) / 20
                cells.append(f"m {m}: {(mean - ideal) / 3.0:.2f}")
            print(f"pp {pp} vpp {vpp} spread {spread:.2f}: " + ", ".join(cells))

    print("\n(4) readings, not adopted: the folding rows' errors (%)")
    folding = [r for r in v.load_runs() if r.id.startswith("folding")]
    readings = {
        "as filed": lambda r: r,
        "G8T8 MCore VPP 1": lambda r: dataclasses.replace(r, vpp=1) if "g8t8" in r.id and "mcore" in r.id else r,
        "+no-dp-overlap": lambda r: dataclasses.replace(r, implementation=r.implementation + "+no-dp-overlap"),
    }
    print(f"{'row':40s}" + "".join(f"{k:>18s}" for k in readings))
    for r in folding:
        print(f"{r.id:40s}" + "".join(f"{v.error_pct(f(r), v.predict(f(r))):+18.1f}" for f in readings.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
