"""The MoE Parallel Folding rows (Liu et al. 2025, arXiv 2504.14960; group unseen15): what the paper's other tables
and its ablation say about the rows' assumptions and the model's MoE layer (session 10, branch folding12)."""
import pytest

from topology import costmodel as cm
from topology import validation as v

PEAK_TFLOPS = 989.5  # section 4.1: a GPU's peak; Table 3's MFU is the TFLOP/s over it (Table 2)
# Table 4 (strong scaling, GBS 1024; 'All parallel configurations are the same as those identified in the performance
# experiments'): MFU at the Table 3 GPU count of each layout
TABLE4_MFU_GBS1024 = {
    "folding-mixtral-8x22b-128-mcore": 0.494,
    "folding-qwen2-57b-64-mcore": 0.362,
    "folding-qwen2-57b-64-folding": 0.399,
    "folding-g8t8-128-mcore": 0.198,
    "folding-g8t8-128-folding": 0.300,
}


def _bubble_ratio(run: v.Run, vpp: int) -> float:
    """Step time per sample at GBS 256 over that at GBS 1024 from the model's interleaved 1F1B bubble alone (the same
    per-micro-batch times; per-step costs only add to the ratio)."""
    dp = run.gpus // (run.tp * run.pp)
    m = run.global_batch // (run.mbs * dp)
    per_sample = []
    for micro in (m, 4 * m):
        schedule = "interleaved1f1b" if vpp > 1 else "1f1b"
        per_sample.append((micro + cm.bubble_seconds(schedule, run.pp, vpp, 1.0, 0.0)) / micro)
    return per_sample[0] / per_sample[1]


def test_the_folding_rows_virtual_pipeline_is_within_what_the_papers_gbs1024_mfu_allows():
    # Four times the micro-batches in the same layout cannot make a step slower per sample, so Table 4's MFU over
    # Table 3's bounds the pipeline bubble's share from above.  The rows' VPP 7 (one layer a virtual stage) fits every
    # row; no interleaving (VPP 1) would need more than the source gives on four of the five (docs/planner.md,
    # 'Session 10: the MoE Parallel Folding rows: FLOP count, dispatcher, virtual pipeline and the G8T8 folding gap').
    runs = {r.id: r for r in v.load_runs()}
    excluded = []
    for rid, mfu_1024 in TABLE4_MFU_GBS1024.items():
        run = runs[rid]
        mfu_256 = run.measured / PEAK_TFLOPS
        allowed = mfu_1024 / mfu_256
        assert run.vpp == 7 and _bubble_ratio(run, run.vpp) <= allowed, rid
        if _bubble_ratio(run, 1) > allowed:
            excluded.append(rid)
    assert sorted(excluded) == sorted(set(TABLE4_MFU_GBS1024) - {"folding-g8t8-128-mcore"})


def _moe_layer_split(tp: int, ep: int, etp: int) -> tuple[float, float]:
    """(communication, compute) of one Mixtral-8x22B-G8T8 MoE block's forward at attention TP ``tp`` with the experts
    over EP ``ep`` x ETP ``etp``: the all-to-all and the expert-TP gather / scatter, and the router, permutation,
    experts and sorts."""
    run = next(r for r in v.load_runs() if r.id == "folding-g8t8-128-folding")
    req = v.request_of(run)
    impl = req.implementation(tp, "none")
    lc = cm.layer_cost(req.model, req.system, req.world, tp, 1, ep, 1, run.seq_len, tp * 4, impl, etp=etp)
    expert_tp_comm = lc.tp_fwd_moe - lc.tp_fwd / 2  # beyond the attention's own all-gather / reduce-scatter
    return lc.ep_fwd + expert_tp_comm, lc.moe_block_fwd


def test_expert_tensor_parallelism_and_leaving_the_node_raise_the_moe_layers_communication_as_the_paper_found():
    # Section 4.4 (attention TP 4, the G8T8 model): '(2) ETP in the MoE layer introduces substantially higher
    # communication overhead compared to EP, with this effect being particularly pronounced in fine-grained MoE
    # models. (3) ... When ETPxEP exceeds 8, necessitating inter-node communication, communication overhead dominates'.
    inside = [_moe_layer_split(4, ep, etp) for ep, etp in ((8, 1), (4, 2), (2, 4))]
    across = [_moe_layer_split(4, ep, etp) for ep, etp in ((16, 1), (8, 2), (4, 4))]
    comm_inside = [c for c, _ in inside]
    assert comm_inside == sorted(comm_inside)  # more of EP x ETP = 8 on ETP: more communication
    for (c_in, m_in), (c_out, m_out) in zip(inside, across):
        assert c_out / (c_out + m_out) > c_in / (c_in + m_in)  # the same ETP, EP doubled across two nodes
        assert c_out > m_out  # communication dominates


@pytest.mark.xfail(strict=True, reason="open (folding12): the model puts 61-63% of a G8T8 MoE block's forward in "
                   "communication at EP x ETP = 16 where section 4.4 measured over 70%; no mechanism found")
def test_communication_is_over_70_percent_of_the_g8t8_moe_layer_across_nodes():
    # Section 4.4: 'When ETPxEP exceeds 8, necessitating inter-node communication, communication overhead dominates,
    # accounting for over 70% of the total latency' (Figure 5; its bar values are not in the stored transcription).
    for ep, etp in ((16, 1), (8, 2), (4, 4)):
        comm, compute = _moe_layer_split(4, ep, etp)
        assert comm / (comm + compute) > 0.70, (ep, etp)
