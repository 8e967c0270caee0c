"""The Zero Bubble paper's own profile of its Megatron-LM passes against ``topology.costmodel``'s stage terms.

    python bench/zero_bubble_passes_vs_model.py [--markdown]

No torch, no GPU.  The 12 rows of group unseen13's second part (``zb-1f1b-*``: Qi et al. 2024, "Zero Bubble
Pipeline Parallelism", ICLR 2024, arXiv 2401.10241, Table 4's Megatron-LM 1F1B baseline) are predicted 7-19% fast.
The paper publishes, for the same models, layouts and micro-batch counts, the pass times its scheduler profiled
(Appendix D, Table 9: T_F, T_B, T_W and T_comm in ms).  Its fork (sail-sg/zero-bubble-pipeline-parallelism at
f68d3879, ``megatron/core/pipeline_parallel/zb_schedules.py``) takes them from ``ScheduleTimers`` (megatron.timers
``Timer``: ``torch.cuda.synchronize()`` at start and stop, so a pass is timed from an idle GPU to an idle GPU, with
no communication in flight) around ``forward_step`` (T_F), ``backward_step`` with the weight gradients deferred to
``WeightGradStore`` (T_B: input gradients and the non-GEMM backward) and ``WeightGradStore.pop`` (T_W: the
weight-gradient GEMMs accumulating into ``main_grad``), and ``update_schedule`` passes the median over all ranks
(a middle stage) to the scheduler.  T_comm is ``bootstrap_and_profile_p2p_communication``: ten rounds of the
1F1B path's blocking exchanges (batched isend/irecv, ``torch.cuda.synchronize()``) through the whole pipeline,
divided by 2 (p - 1) x 10: one synchronised stage-to-stage hop.

For each row this prints the model's middle stage (``costmodel.structures``' stage terms for a rank holding the
most layers): its forward, the backward split the way the fork splits it (W = the layer's forward GEMM time, the
weight gradients' FLOPs; B = the rest of the modelled backward) and the model's stage-to-stage send (the mean over
the pipeline's p - 1 hops, those across a node boundary on the network, as T_comm averages them), against the
paper's figures; and the measured step per micro-batch slot (step / (m + p - 1)) against the profile (T_F + T_B +
T_W + 2 T_comm: one forward, one backward and the two exchanges of a 1F1B steady-state slot) and the model.

It is an analysis of where the rows' error lies (docs/planner.md section 10, "Session 9: the Zero Bubble rows'
1F1B passes"), not a fit: nothing here sets a constant of the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import validation as v

SOURCE = "Qi et al. 2024 (arXiv 2401.10241), Appendix D, Table 9 (profiled in ZB-2p runs), ms"

# row id -> (T_F, T_B, T_W, T_comm) in ms, Table 9; the row's own micro-batch count
TABLE9: dict[str, tuple[float, float, float, float]] = {
    "zb-1f1b-1.5b-m24": (18.522, 18.086, 9.337, 0.601),
    "zb-1f1b-1.5b-m32": (18.513, 18.086, 9.331, 0.626),
    "zb-1f1b-1.5b-m64": (18.546, 18.097, 9.321, 0.762),
    "zb-1f1b-6.2b-m24": (29.718, 29.444, 19.927, 0.527),
    "zb-1f1b-6.2b-m32": (29.802, 29.428, 19.530, 0.577),
    "zb-1f1b-6.2b-m64": (29.935, 29.621, 19.388, 0.535),
    "zb-1f1b-14.6b-m48": (11.347, 11.248, 8.132, 0.377),
    "zb-1f1b-14.6b-m64": (11.307, 11.254, 8.101, 0.379),
    "zb-1f1b-14.6b-m128": (11.325, 11.308, 8.109, 0.378),
    "zb-1f1b-28.3b-m96": (10.419, 10.207, 7.715, 0.408),
    "zb-1f1b-28.3b-m128": (10.408, 10.204, 7.703, 0.408),
    "zb-1f1b-28.3b-m256": (10.402, 10.248, 7.698, 0.460),
}


def layer_forward_gemms(run: v.Run) -> float:
    """Seconds of one layer's forward GEMMs as ``costmodel.layer_cost`` prices them (TP 1 here): the weight
    gradients have the same FLOPs, and W is their pass."""
    model, dev = v.model_of(run), v.system_of(run).node.device
    tokens, h = run.mbs * run.seq_len, model.d_model
    g = cm.gemm_seconds
    up = 2 if model.ffn_type == "swiglu" else 1
    return (g(dev, tokens, model.q_dim, h) + 2 * g(dev, tokens, model.kv_dim, h) + g(dev, tokens, h, model.q_dim)
            + g(dev, tokens, up * model.d_ff, h) + g(dev, tokens, h, model.d_ff))


def compare(run: v.Run) -> dict[str, float]:
    """The row's measured and modelled figures, all in ms."""
    system = v.system_of(run)
    impl = v.row_implementation(run)
    req = v.request_of(run, system, impl=impl)
    lay = run.layout()
    st = cm.structure_of(req, lay)
    middle = max((s for s in st.stages), key=lambda s: s.units)  # a rank with the most layers (no head/embedding)
    profs = {p.rank: p for p in req.profiles(lay.pp, lay.vpp, lay.schedule)}
    assert not profs[middle.rank].embed and not profs[middle.rank].head
    w = middle.units * layer_forward_gemms(run)
    lc = req.layer_cost(lay.tp, lay.cp, lay.ep, lay.mbs, lay.tp * lay.cp, impl)
    est = cm.estimate(req, lay)
    # T_comm is the mean of the pipeline's p - 1 hops (bootstrap_and_profile_p2p_communication); the model's mean
    # hop: the hops inside a node at lc.p2p, those across a node boundary at lc.p2p_node
    hops, crossing = cm.pipeline_node_hops(lay.pp, lay.vpp, lay.schedule, run.gpus // lay.pp, system.node.ranks)
    hop_model = ((hops - crossing) * lc.p2p + crossing * lc.p2p_node) / hops
    m = st.microbatches
    slots = m + lay.pp - 1
    t_f, t_b, t_w, t_comm = TABLE9[run.id]
    return {
        "layers": middle.units, "m": m,
        "F_meas": t_f, "F_model": 1e3 * middle.t_f,
        "B_meas": t_b, "B_model": 1e3 * (middle.t_b - w),
        "W_meas": t_w, "W_model": 1e3 * w,
        "comm_meas": t_comm, "comm_model": 1e3 * hop_model,
        "slot_meas": 1e3 * run.measured_step_s / slots,
        "slot_profile": t_f + t_b + t_w + 2 * t_comm,
        "slot_model": 1e3 * est.step_time_s / slots,
    }


# Table 7 ("Improvement when double the size of each microbatch"), its 1F1B row: (row id whose model and system it
# uses, GPUs = pipeline stages, micro-batches, micro-batch sizes b and 2b, samples per GPU per second at each).
# Layouts of Table 6 (6.2B on 16, 14.6B on 24, 28.3B on 32 GPUs, padded to 2 layers a stage), not rows of the data.
TABLE7 = (("zb-1f1b-6.2b-m64", 16, 64, 3, 6, 3.48, 3.57),
          ("zb-1f1b-14.6b-m64", 24, 96, 1, 2, 1.47, 1.61),
          ("zb-1f1b-28.3b-m128", 32, 128, 1, 2, 0.80, 0.87))


def doubling(row_id: str, gpus: int, m: int, b: int) -> float:
    """The model's step (s) of ``row_id``'s model on a pipeline of ``gpus`` stages, m micro-batches of b."""
    run = {r.id: r for r in v.load_runs()}[row_id]
    system = v.system_of(run)
    req = v.request_of(run, system, nodes=gpus // system.ranks_per_node, global_batch=b * m, embed_stage_unit=True)
    lay = dataclasses.replace(run.layout(), pp=gpus, mbs=b)
    return cm.estimate(req, lay).step_time_s


def fixed_per_microbatch() -> list[tuple[str, float, float]]:
    """Per Table 7 setup: the part of a slot (ms) that does not grow with the micro-batch size, 2 T(b) - T(2b),
    measured and modelled."""
    out = []
    for row_id, gpus, m, b, _b2, s1, s2 in TABLE7:
        slots = m + gpus - 1
        t1, t2 = b * m / (s1 * gpus) / slots, 2 * b * m / (s2 * gpus) / slots
        p1, p2 = doubling(row_id, gpus, m, b) / slots, doubling(row_id, gpus, m, 2 * b) / slots
        out.append((f"{row_id.split('-')[2]} p{gpus} b{b}->{2 * b}", 1e3 * (2 * t1 - t2), 1e3 * (2 * p1 - p2)))
    return out


# Table 12 ("Comparison between 1F1B and ZB-2p on small number of microbatches"), its 1F1B rows with m = p (the
# model refuses m < p): (row id of the same model and layout, m, samples per GPU per second).  Mostly fill and drain,
# at 29-39 GB (Table 12's memory column): the passes without the steady state or ZB-2p's memory.
TABLE12 = (("zb-1f1b-1.5b-m24", 8, 8.26), ("zb-1f1b-6.2b-m24", 8, 2.45), ("zb-1f1b-14.6b-m48", 16, 0.95))


def small_m() -> list[tuple[str, float, float, float]]:
    """Per Table 12 row with m = p: measured step, the model's, and the step from the profiled passes
    ((m + p - 1) profile slots, the slot as above: T_F + T_B + T_W + 2 T_comm), in s."""
    runs = {r.id: r for r in v.load_runs()}
    out = []
    for row_id, m, thr in TABLE12:
        run = runs[row_id]
        system = v.system_of(run)
        req = cm.Request(v.model_of(run), system, run.gpus // system.ranks_per_node, run.mbs * m, run.seq_len,
                         v.row_implementation(run), embed_stage_unit=True)
        t_f, t_b, t_w, t_comm = TABLE9[row_id]
        profile = (m + run.pp - 1) * (t_f + t_b + t_w + 2 * t_comm) / 1e3
        out.append((f"{row_id.split('-')[2]} p{run.pp} m{m}", run.mbs * m / (thr * run.gpus),
                    cm.estimate(req, run.layout()).step_time_s, profile))
    return out


def rows() -> list[tuple[v.Run, dict[str, float]]]:
    runs = {r.id: r for r in v.load_runs()}
    return [(runs[rid], compare(runs[rid])) for rid in TABLE9]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    cols = ("run", "L", "F meas / model", "B meas / model", "W meas / model", "hop meas / model",
            "slot meas", "profile slot", "model slot")
    out = []
    if args.markdown:
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    else:
        out.append(f"{SOURCE}; model: costmodel's middle stage; all ms")
        out.append("  ".join(cols))
    for run, c in rows():
        cells = (run.id, str(c["layers"]),
                 f"{c['F_meas']:.2f} / {c['F_model']:.2f} ({c['F_meas'] / c['F_model'] - 1:+.0%})",
                 f"{c['B_meas']:.2f} / {c['B_model']:.2f} ({c['B_meas'] / c['B_model'] - 1:+.0%})",
                 f"{c['W_meas']:.2f} / {c['W_model']:.2f} ({c['W_meas'] / c['W_model'] - 1:+.0%})",
                 f"{c['comm_meas']:.2f} / {c['comm_model']:.2f}",
                 f"{c['slot_meas']:.1f}", f"{c['slot_profile']:.1f}", f"{c['slot_model']:.1f}")
        out.append("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    out.append("")
    out.append("Table 7 (1F1B, micro-batch size doubled): the slot's part that does not grow with it, 2 T(b) - T(2b), ms")
    for name, meas, model in fixed_per_microbatch():
        out.append(f"  {name}: measured {meas:.1f}, model {model:.1f}")
    out.append("Table 12 (1F1B, m = p): measured step against the model and the profiled passes, s")
    for name, meas, model, prof in small_m():
        out.append(f"  {name}: measured {meas:.3f}, model {model:.3f} ({model / meas - 1:+.1%}), "
                   f"profile {prof:.3f} ({prof / meas - 1:+.1%})")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
