"""Can the host (Python, the PyTorch dispatcher, the launch path) bound the steps the model predicts too fast?

    python bench/host_dispatch_vs_device.py [--markdown]

No torch, no GPU.  Session 10's brief (docs/planner.md section 10, "Session 10: host dispatch and synchronisation on
the small-kernel rows"): three row families are predicted fast where the work a kernel does is small, and the cost
model has no host term for their dense layers (only ``Implementation.moe_host_floor_s`` for MoE layers, the device's
``launch_us`` a kernel and Composer's per-tensor optimizer host time):

* the Zero Bubble paper's Megatron-LM 1F1B rows (``zb-1f1b-*``, unseen13; the fork sail-sg/zero-bubble-pipeline-
  parallelism at f68d3879, legacy Megatron layers, fp16, A100 80GB);
* the Megatron-LM README's H100 weak-scaling rows (``mlm-readme-h100-*``, unseen11; Megatron-Core r0.8.0 with
  Transformer Engine);
* ALCF's 24-tile Aurora sweep (``aurora-small-*``, unseen8; argonne-lcf/Megatron-DeepSpeed at 3848f6fb, PyTorch
  2.5.1 with IPEX 2.5.10 on the Max 1550).

Two ways the host can set the pace, each checked per row against the model's own device times:

1. *Inside a pass.*  The device runs a layer's kernels as fast as the host enqueues them only if the host's time per
   launched kernel is below the device's.  The model's layer pass (``costmodel.layer_cost``: ``fwd_dense``,
   ``bwd_dense``) and its kernel count (the derivative of the pass with respect to ``Device.launch_us``) give the
   device's mean time a kernel: the *break-even* host time a kernel.  It is set against published host times per
   eager op (``HOST_PER_OP``).  The host binds a pass only where the cited host time exceeds the break-even.
2. *After a synchronisation.*  Where the framework waits for the device (``torch.cuda.synchronize()``, ``.item()``,
   ``assert not t.isnan()``), the queue is empty and the device idles until the host has issued the next kernel;
   once the host is ahead again (1. says it gets ahead within a layer), nothing more is lost.  Counted per step from
   the code at the rows' commits (``syncs_per_step``); priced two ways: *likely* = the device's host round trip
   (``Device.host_sync_us``) plus one op's host time, and *bound* = one whole layer pass's host time (the longest
   the host can stay behind when each layer's host time is below its device time).

The per-op host figures are other people's measurements on other stacks (or this project's own H200 measurement);
none is of the rows' own hosts and software.  This is an analysis (nothing here sets a constant of the model).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import validation as v
from topology.hardware import HOPPER_HOST_SYNC_US
from topology.modelcfg import param_counts

RESULTS = Path(__file__).resolve().parent / "results"
COMPOSER_HOST_JSON = RESULTS / "h200-2026-12-05-s8-composer-adamw-host.json"
COMPOSER_OPS_A_TENSOR = 8  # the eight eager AdamW ops issued after each tensor's .item() (composer_adamw_host.py)


def h200_eager_op_s() -> float:
    """This project's H200 measurement (bench/composer_adamw_host.py, session 8; torch 2.11): on the 64-way shards the
    Composer-like loop is host-bound, one ``.item()`` and eight eager ops a tensor.  Host time of one eager op = (the
    loop's time a tensor - the device's host round trip) / 8, the mean of the two 64-way shards."""
    rows = json.loads(COMPOSER_HOST_JSON.read_text())["rows"]
    per_tensor = [r["composer_like_s"] / r["tensors"] for r in rows if r["ranks"] == 64]
    sync = HOPPER_HOST_SYNC_US * 1e-6
    return (sum(per_tensor) / len(per_tensor) - sync) / COMPOSER_OPS_A_TENSOR


# Published host (CPU) time of one eager op, seconds, with its source.  "x86" are Xeon / EPYC hosts of DGX boards.
HOST_PER_OP: dict[str, tuple[float, str]] = {
    "torch-x86": (13.48e-6, ("NVIDIA/TransformerEngine issue 2053 (2025-08): torch.nn.Linear forward, CPU time 13.48 us "
                            "on an H100 DGX (Xeon Platinum 8480C), BF16, 8192 tokens x 2048")),
    "te-grace": (90.53e-6, ("the same issue: Transformer Engine's te.Linear forward, CPU time 90.53 us on GH200 (Grace; "
                           "torch.nn.Linear 33.17 us there): the slowest TE host published; the issue's H100 DGX TE "
                           "figure is not in the stored excerpt")),
    "xpu-ipex": (60.85e-6, ("intel/torch-xpu-ops issue 970 (2024-10): aten::sum CPU time 60.85 us a call with IPEX 2.3's "
                           "override")),
    "xpu-op": (91.18e-6, "the same issue: aten::sum CPU time 91.18 us a call with torch-xpu-ops (PyTorch 2.5's XPU ops)"),
    "xpu-linear": (426e-6, ("intel/torch-xpu-ops issue 978 (2024-10): aten::linear host latency 308 us (IPEX) -> 426 us "
                           "(torch 2.5's torch-xpu-ops, an extra aten::copy_ from autocast)")),
}
# The rows' stacks, and the host time an op takes on them: (low, high) keys of HOST_PER_OP.  The low figure is the
# cheapest published for the stack, the high one the dearest that could apply (the bound).
STACKS = {
    "zb-1f1b-": ("legacy Megatron (fork f68d3879), PyTorch eager + apex/TorchScript fusions, A100 DGX",
                 ("torch-x86", "torch-x86")),
    "mlm-readme-h100-": ("Megatron-Core r0.8.0 + Transformer Engine, DGX H100", ("torch-x86", "te-grace")),
    "aurora-small-": ("Megatron-DeepSpeed 3848f6fb + DeepSpeed, PyTorch 2.5.1 / IPEX 2.5.10, Max 1550",
                      ("xpu-ipex", "xpu-op")),
}
# Aurora, high figure: the GEMMs of a layer (fused QKV, output projection, fused gate/up, down projection) at
# aten::linear's host latency; forward, backward (each GEMM's data and weight gradient)
XPU_LINEARS_A_LAYER = (4, 8)

# Host synchronisations a step on the rank that sets the pace, read in the code at each family's commit, in two
# kinds: those after which the next thing the host issues is a layer pass (the device may wait up to that pass's
# host time: ``bound``), and those after which it issues one op and synchronises again (a read loop: round trip + op).
# zb:  megatron/core/pipeline_parallel/p2p_communication.py ``_communicate`` ends with ``torch.cuda.synchronize()`` when
#      ``batch_p2p_comm and batch_p2p_sync`` (ModelParallelConfig defaults True; arguments.py sets ``batch_p2p_comm = not
#      overlap_p2p_comm`` and forces overlap off without interleaving): two exchanges a 1F1B steady-state slot on a
#      middle stage, each followed by a pass (the warm-up and cool-down ones fall in the bubble); ``--timing-log-level``
#      0 (the default; examples/pretrain_zero_bubble.sh does not set it): the schedule's timers are dummies; a step adds
#      the fp16 optimizer's found-inf and grad-norm reads and the loss scale (3, reads).
# mlm: core_v0.8.0 (mlmstep11's inventory): ``loss_func``'s NaN assert a micro-batch (then the backward: a pass); each
#      gradient bucket's NaN assert in the last micro-batch's backward (``check_for_nan_in_grad``; buckets of max(40M,
#      1M x dp) parameters; then the rest of the backward: a pass); the grad norm's ``.item()`` and
#      ``optimizer.get_loss_scale().item()`` (2, reads).
# aurora: 3848f6fb ALCF/helpers.sh passes ``--timing-log-level=${TIMING_LOG_LEVEL:-1}`` and ``--log-interval=1``: the
#      level-1 timers ``forward-backward`` and ``optimizer`` synchronise at start and stop (megatron/timers.py:
#      ``get_accelerator().synchronize()``; 4, the two starts followed by passes); DeepSpeed's ``wall_clock_breakdown``
#      is false (helpers.sh); ``CCL_OP_SYNC=1`` (the frameworks module; aurora11) makes each oneCCL call block the
#      host: the loss's data-parallel average at the end of each micro-batch's forward (then its backward: a pass) and
#      the gradient all-reduce's buckets at the boundary (about 2); the per-step log reads the loss, the loss scale and
#      the grad norm (about 4); ``--log-optimizer-states-to-tensorboard`` (unless NO_TENSORBOARD) reads 12 ``.item()``
#      per parameter of the optimizer's groups (megatron/training_log.py), under the BF16_Optimizer its flat fp32
#      partitions (2 groups: 24).
ZB_READS = 3
MLM_READS = 2
AURORA_PASS_SYNCS_A_STEP, AURORA_READS = 2, 2 + 2 + 4 + 24


def syncs_per_step(run: v.Run, m: int) -> tuple[int, int]:
    """(synchronisations followed by a layer pass, synchronisations in read loops) a step."""
    if run.id.startswith("zb-1f1b-"):
        return 2 * m, ZB_READS
    if run.id.startswith("mlm-readme-h100-"):
        dp = run.gpus // (run.tp * run.pp)
        rank_params = param_counts(v.model_of(run)).total / run.tp
        buckets = math.ceil(rank_params / max(40e6, 1e6 * dp))
        return m + buckets, MLM_READS
    return AURORA_PASS_SYNCS_A_STEP + m, AURORA_READS


def family(run: v.Run) -> str:
    return next(p for p in STACKS if run.id.startswith(p))


def layer_pass(run: v.Run, extra_launch_us: float = 0.0) -> cm.LayerCost:
    req = v.request_of(run)
    system = req.system
    if extra_launch_us:
        dev = dataclasses.replace(system.node.device, launch_us=system.node.device.launch_us + extra_launch_us)
        system = dataclasses.replace(system, node=dataclasses.replace(system.node, device=dev))
        req = v.request_of(run, system)
    lay = run.layout()
    impl = req.implementation(lay.tp, lay.recompute)
    dp = run.gpus // (lay.tp * lay.pp * lay.cp)
    return cm.layer_cost(req.model, system, run.gpus, lay.tp, lay.cp, lay.ep, lay.mbs, run.seq_len, dp, impl)


def host_pass(run: v.Run, kernels: tuple[float, float], level: int) -> tuple[float, float]:
    """Host time to issue one layer's forward and backward at the stack's low (0) or high (1) per-op figure."""
    fam = family(run)
    h = HOST_PER_OP[STACKS[fam][1][level]][0]
    f, b = kernels[0] * h, kernels[1] * h
    if fam == "aurora-small-" and level == 1:  # the GEMMs at aten::linear's host latency
        extra = HOST_PER_OP["xpu-linear"][0] - h
        f, b = f + XPU_LINEARS_A_LAYER[0] * extra, b + XPU_LINEARS_A_LAYER[1] * extra
    return f, b


def analyse(run: v.Run) -> dict[str, float]:
    """The row's layer passes (device, kernels), the host time to issue them, and the synchronisations' cost."""
    base, plus = layer_pass(run), layer_pass(run, 1.0)
    kernels = (round((plus.fwd_dense - base.fwd_dense) / 1e-6, 1), round((plus.bwd_dense - base.bwd_dense) / 1e-6, 1))
    (lo_f, lo_b), (hi_f, hi_b) = host_pass(run, kernels, 0), host_pass(run, kernels, 1)
    est = v.predict(run)
    m = run.global_batch // (run.mbs * (run.gpus // (run.tp * run.pp)))
    n_pass, n_read = syncs_per_step(run, m)
    dev = v.system_of(run).node.device
    h_lo = HOST_PER_OP[STACKS[family(run)][1][0]][0]
    per_read = dev.host_sync_us * 1e-6 + h_lo
    likely = (n_pass + n_read) * per_read
    host_bound = hi_f > base.fwd_dense or hi_b > base.bwd_dense  # at the high figure the pass itself is host-bound
    bound = n_pass * max(hi_f, hi_b) + n_read * per_read
    step = run.measured_step_s
    return {"error_pct": v.error_pct(run, est), "fwd_s": base.fwd_dense, "bwd_s": base.bwd_dense,
            "kernels_fwd": kernels[0], "kernels_bwd": kernels[1],
            "breakeven_fwd_s": base.fwd_dense / kernels[0], "breakeven_bwd_s": base.bwd_dense / kernels[1],
            "ratio_lo_fwd": lo_f / base.fwd_dense, "ratio_lo_bwd": lo_b / base.bwd_dense,
            "ratio_hi_fwd": hi_f / base.fwd_dense, "ratio_hi_bwd": hi_b / base.bwd_dense,
            "microbatches": m, "syncs_pass": n_pass, "syncs_read": n_read, "likely_s": likely,
            "bound_s": math.nan if host_bound else bound,
            "likely_pct": 100 * likely / step, "bound_pct": math.nan if host_bound else 100 * bound / step,
            "gap_s": step - est.step_time_s}


# Qi et al. 2024, Table 7 (bench/zero_bubble_passes_vs_model.py): the part of a 1F1B slot that does not grow with the
# micro-batch, 2 T(1) - T(2), at micro-batch 1 (14.6B and 28.3B, Table 6's layouts of 2 layers a stage), ms
TABLE7_FIXED_MS = {"zb-1f1b-14.6b-m48": 4.0, "zb-1f1b-28.3b-m96": 5.1}


def rows() -> list[tuple[v.Run, dict[str, float]]]:
    return [(r, analyse(r)) for r in v.load_runs() if any(r.id.startswith(p) for p in STACKS)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    print(f"this project's H200 eager op (composer_adamw_host.py, 64-way shards): {h200_eager_op_s() * 1e6:.1f} us")
    for key, (s, src) in HOST_PER_OP.items():
        print(f"host per op {key}: {s * 1e6:.1f} us -- {src}")
    head = ("row", "error", "fwd ms / kernels", "bwd ms / kernels", "break-even us a kernel (f / b)",
            "host / device, low (f / b)", "host / device, high (f / b)", "syncs a step (pass + read)",
            "likely ms (% step)", "bound ms (% step)", "model short by ms")
    sep = "  "
    lines = [sep.join(head)]
    if args.markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, c in rows():
        bound = "host-bound pass" if math.isnan(c["bound_s"]) else f"{c['bound_s'] * 1e3:.1f} ({c['bound_pct']:.1f}%)"
        cells = (run.id, f"{c['error_pct']:+.1f}%",
                 f"{c['fwd_s'] * 1e3:.2f} / {c['kernels_fwd']:.0f}", f"{c['bwd_s'] * 1e3:.2f} / {c['kernels_bwd']:.0f}",
                 f"{c['breakeven_fwd_s'] * 1e6:.0f} / {c['breakeven_bwd_s'] * 1e6:.0f}",
                 f"{c['ratio_lo_fwd']:.2f} / {c['ratio_lo_bwd']:.2f}", f"{c['ratio_hi_fwd']:.2f} / {c['ratio_hi_bwd']:.2f}",
                 f"{c['syncs_pass']} + {c['syncs_read']}",
                 f"{c['likely_s'] * 1e3:.1f} ({c['likely_pct']:.2f}%)", bound, f"{c['gap_s'] * 1e3:.0f}")
        lines.append(("| " + " | ".join(cells) + " |") if args.markdown else sep.join(cells))
    print("\n".join(lines))
    for row_id, fixed_ms in TABLE7_FIXED_MS.items():
        run = next(r for r in v.load_runs() if r.id == row_id)
        c = analyse(run)
        slot_likely = 2 * (v.system_of(run).node.device.host_sync_us * 1e-6 + HOST_PER_OP["torch-x86"][0])
        slot_bound = 2 * max(host_pass(run, (c["kernels_fwd"], c["kernels_bwd"]), 1))
        print(f"Table 7, {row_id.split('-m')[0]} at micro-batch 1: a slot's fixed cost {fixed_ms} ms measured; the host's "
              f"two synchronised exchanges a slot: likely {slot_likely * 1e3:.2f} ms, bound {slot_bound * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
