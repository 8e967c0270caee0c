"""Where NCCL's NVLink SHARP (NVLS) would change a Hopper row, and why no validation row needs it yet
(docs/planner.md section 10, "Session 10: NVLink SHARP in NCCL on H100/H200 nodes", branch nvls12).

NVLink4 (hardware.py) is fitted on 2-4 H200 with NVLink multicast off, so it is NCCL's ring.  From NCCL 2.18
(src/transport/nvls.cc: NCCL_NVLS_ENABLE default 2, off for a communicator of 2 GPUs or fewer) NCCL runs a one-node
all-reduce of 3 or more NVSwitch-connected Hopper GPUs with NVLS, measured at 480 GB/s bus bandwidth on 8 H100
against 365-370 for the ring and no gain at 2-4 GPUs (NVIDIA/nccl issue 1455).  For all-gather and reduce-scatter
NVLS sends (or receives) the whole buffer instead of (n-1)/n of it and is slower than the ring (NVIDIA/nccl issues
1083 and 1506, maintainer's answers; 300 against 350 GB/s all-gather at 1 GB), so NCCL's tuner keeps the ring.
So the ring-fitted link prices every Hopper row right as long as none of them runs an NCCL all-reduce over 3 or
more GPUs of one node.  These tests pin that: a row added with one (Megatron without sequence parallelism at TP 4-8,
DDP inside one node) needs the NVLS all-reduce figure first."""
from __future__ import annotations

from topology import costmodel as cm
from topology import validation as v

HOPPER = [r for r in v.load_runs() if "h100" in r.system or "h200" in r.system]


def test_hopper_rows_at_tp_3_or_more_run_no_nccl_all_reduce_for_tp():
    # TP of 3 or more is where NCCL would enable NVLS; each such row either hands its TP collectives to
    # Transformer Engine's userbuffers (+tp-overlap) or runs them as sequence-parallel all-gather /
    # reduce-scatter, which NCCL keeps on the ring
    rows = [r for r in HOPPER if r.tp >= 3]
    assert rows, "no Hopper row at TP 3 or more: the check is empty"
    for run in rows:
        impl = v.implementation_of(run)
        assert impl.tp_overlap or impl.sequence_parallel, (
            f"{run.id}: TP {run.tp} all-reduce through NCCL on NVSwitch; NCCL >= 2.18 runs it with NVLS "
            "(480 against ~370 GB/s bus bandwidth on 8 H100), which NVLink4's ring fit does not price")


def test_no_hopper_row_prices_a_one_node_all_reduce_over_3_or_more_nvlink4_ranks(monkeypatch):
    seen, calls = [], []
    orig = cm.collective_seconds

    def record(op, nbytes, path, *args, **kwargs):
        calls.append(op)
        if op == "all_reduce" and path.intra is not None and path.intra.name == "NVLink4" and path.k >= 3:
            seen.append((op, path.k, path.nodes, nbytes))
        return orig(op, nbytes, path, *args, **kwargs)

    monkeypatch.setattr(cm, "collective_seconds", record)
    rows = v.evaluate(HOPPER)
    assert len(rows) == len(HOPPER) > 0 and "all_reduce" in calls  # the recorder sees the rows' collectives
    # every all-reduce the Hopper rows pay is on 2 GPUs of a node or fewer (NCCL: no NVLS), so the ring figure holds
    assert not seen, f"all-reduces NCCL would run with NVLS (NVLS/NVLSTree): {seen[:5]}"
