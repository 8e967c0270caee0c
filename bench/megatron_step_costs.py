"""What a Megatron-LM (Megatron-Core r0.8.0) training iteration does besides forward, backward and the optimizer's
shard, per step or per micro-batch, estimated for the Megatron-LM README's H100 weak-scaling rows (group unseen11)
with the cost model's own device and link figures.  No GPU: an estimate from the code's documented behaviour.

    PYTHONPATH=. python3 bench/megatron_step_costs.py

Why (docs/planner.md section 10, "Session 9: what a Megatron-LM r0.8 step does besides the passes"): the 1.7B and
7.1B rows are short by about 80 ms a step, which looked like a fixed cost.  The code read is Megatron-LM at tag
core_v0.8.0 (baf94af3c6): megatron/training/training.py ``train_step`` / ``train``, pretrain_gpt.py ``loss_func``,
megatron/training/utils.py ``get_batch_on_this_tp_rank``, megatron/core/distributed/param_and_grad_buffer.py and
distributed_data_parallel.py, megatron/core/optimizer/{optimizer,distrib_optimizer,clip_grads}.py.  Each item
below names the call; ``modelled`` says whether topology/costmodel.py charges it for these rows.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology import costmodel as cm
from topology import validation as v

ROWS = ["mlm-readme-h100-1.7b-48", "mlm-readme-h100-7.1b-96", "mlm-readme-h100-16b-192", "mlm-readme-h100-32b-384"]


def items(run: v.Run) -> list[tuple[str, float, str]]:
    """(item, seconds a step, modelled?) for one row."""
    system = v.system_of(run)
    dev = system.node.device
    model = v.model_of(run)
    impl = v.row_implementation(run)
    req = v.request_of(run, system, impl=impl)
    tp, dp = run.tp, run.gpus // (run.tp * run.pp)
    m = run.global_batch // (run.mbs * dp)
    lp = req.params(tp, 1)  # PP 1: the rank holds every layer, the embedding and the head (its TP share)
    p_rank = model.n_layers * lp.dense_layer + lp.embed + lp.head
    hbm = dev.memory_gbps * 1e9 * dev.elementwise_efficiency
    sync = dev.host_sync_us * 1e-6
    bucket = max(40_000_000, 1_000_000 * dp)  # distributed_data_parallel.py: the default bucket size
    buckets = math.ceil(p_rank / bucket)
    dp_path = req.path(dp, tp)
    world_path = req.path(run.gpus, 1)
    tp_path = req.path(tp, 1)
    mask = run.mbs * run.seq_len ** 2  # [mbs, 1, s, s] bool: create_attention_mask_in_dataloader defaults True
    out = [
        ("grad buffer: zero_(), NaN-check norm, *= 1/dp (16 B a rank parameter)", 4 * 4 * p_rank / hbm,
         "yes, +grad-buffer (this branch)"),
        ("host syncs: loss NaN assert a micro-batch, a bucket's NaN assert, grad-norm and loss-scale .item()",
         (m + buckets + 2) * sync, "no"),
        ("loss all-reduce over DP a micro-batch (8 bytes) and the grad norm's over the world (4 bytes)",
         m * cm.collective_seconds("all_reduce", 8, dp_path) + cm.collective_seconds("all_reduce", 4, world_path),
         "no"),
        ("attention mask H2D a micro-batch (mbs s^2 bytes, on the compute stream)",
         m * mask / (system.node.pcie_gbps * 1e9) if system.node.pcie_gbps else float("nan"), "no"),
        ("attention mask broadcast over TP a micro-batch (as a ring all-gather of that size, an upper bound)",
         m * cm.collective_seconds("all_gather", mask, tp_path) if tp > 1 else 0.0, "no"),
        ("embedding's dense gradient: zero-fill (2 B) and main_grad.add_ (10 B) a micro-batch, the rank's table (V / tp rows and the learned positions)",
         m * 12 * lp.embed / hbm, "yes, embed_dense_grad (this branch)"),
    ]
    return out


def main() -> int:
    rows = {r.id: r for r in v.load_runs()}
    for rid in ROWS:
        run = rows[rid]
        est = v.predict(run)
        gap = run.measured_step_s - est.step_time_s
        print(f"{rid}: measured {run.measured_step_s:.3f} s, modelled {est.step_time_s:.3f} s "
              f"(measured - modelled {1e3 * gap:+.1f} ms)")
        total = 0.0
        for name, sec, modelled in items(run):
            print(f"  {1e3 * sec:7.2f} ms  {name}  [modelled: {modelled}]")
            if not modelled.startswith("yes"):
                total += sec
        print(f"  {1e3 * total:7.2f} ms  not modelled, in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
