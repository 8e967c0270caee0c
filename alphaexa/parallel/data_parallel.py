"""Data parallelism with FSDP2: ``fully_shard`` per block + root, HSDP, mixed precision, offload.

What each ``sharding`` mode maps to (``dp_shard`` ranks share one copy; the
``dp_replicate`` dimension always holds replicas, HSDP when both are > 1):

=========  ===============================================================================
zero3      ``fully_shard(reshard_after_forward=True)`` per block: parameters, gradients and
           optimizer state sharded; parameters all-gathered again for backward.
zero2      ``fully_shard(reshard_after_forward=False)``: parameters stay gathered from
           forward to backward of a micro-batch; gradients reduce-scattered every
           micro-batch, so gradients and optimizer state are sharded.
zero1      as zero2, and during gradient accumulation the micro-batches before the last
           neither reduce nor reshard (``set_requires_gradient_sync(False)``,
           ``set_reshard_after_backward(False)``): full gradients accumulate locally and
           are reduce-scattered once per step, so only the optimizer state (and the stored
           parameters between steps) are sharded.
none       FSDP2's ``replicate`` (``torch.distributed._composable.replicate_with_fsdp``) on
           the data ranks: plain replication with gradients all-reduced once per step
           (no sync on the micro-batches before the last), parameters are DTensors
           ``Replicate()`` so checkpoints and clipping treat every mode alike.
=========  ===============================================================================

Under a pipeline schedule, ``torch.distributed.pipelining`` itself turns gradient
sync off until the last micro-batch for every mode.

One rank alone (world size 1, nothing offloaded) gets no wrapper by default: the
model stays a plain module of fp32 master weights and bf16 compute comes from
``torch.autocast`` around its forward (``apply_autocast``), as in a hand-written
loop, without FSDP's per-block hooks, copies and DTensor parameters; DCP,
clipping and the optimizer take plain tensors alike.  ``parallelize(...,
fsdp_on_one_rank=True)`` wraps it anyway (a size-1 mesh, mixed precision by
FSDP's ``MixedPrecisionPolicy``, every parameter a DTensor).

Reductions SUM (``set_gradient_divide_factor(1)`` and, so that no backend needs
PREMUL_SUM, ``set_force_sum_reduction_for_comms(True)``): the loss is normalised by
the global token count instead (see ``train_step``), which keeps the gradient
equal to the single-process one whatever the number of ranks.

Experts sharded over ep/etp get their own ``fully_shard`` over the expert-data
mesh ``edp`` (the only ranks holding the same experts): plain FSDP over all of
it, no HSDP split, in every zero mode; ``replicate`` over it for none.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.distributed._composable.replicate_with_fsdp import replicate
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor, Shard

from alphaexa.model.transformer import Transformer
from topology.layout import expert_shard_dim

from .mesh import ParallelDims


def mixed_precision(compute_dtype: torch.dtype) -> MixedPrecisionPolicy:
    """bf16/fp16 compute with fp32 gradient reduction; fp32 and fp64 (CPU tests) cast nothing."""
    if compute_dtype in (torch.float32, torch.float64):
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)


def needs_data_parallel_wrapper(dims: ParallelDims, *, cpu_offload: bool, fsdp_on_one_rank: bool) -> bool:
    """Whether FSDP2 wraps the chunks: any parallelism, offload, or when asked for on one rank."""
    return dims.layout.world > 1 or cpu_offload or fsdp_on_one_rank


def apply_autocast(chunk: nn.Module, compute_dtype: torch.dtype, device_type: str) -> None:
    """Run ``chunk``'s forward under ``torch.autocast(compute_dtype)`` (nothing for fp32/fp64)."""
    if compute_dtype in (torch.float32, torch.float64):
        return
    forward = chunk.forward

    @functools.wraps(forward)
    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=compute_dtype):
            return forward(*args, **kwargs)

    chunk.forward = autocast_forward


def apply_data_parallel(chunk: Transformer, dims: ParallelDims, *, compute_dtype: torch.dtype,
                        cpu_offload: bool = False) -> None:
    layout = dims.layout
    policy = mixed_precision(compute_dtype)
    # Pinned host memory needs an accelerator runtime.
    offload = CPUOffloadPolicy(pin_memory=dims.device.type != "cpu") if cpu_offload else OffloadPolicy()
    experts_apart = layout.ep > 1 or layout.tp > 1

    def wrap(module: nn.Module, mesh_name: str, reshard: bool | None, placement=None) -> None:
        if layout.sharding == "none":
            replicate(module, mesh=dims[mesh_name], mp_policy=policy, offload_policy=offload)
        else:
            fully_shard(module, mesh=dims[mesh_name], reshard_after_forward=reshard, mp_policy=policy,
                        offload_policy=offload, shard_placement_fn=placement)

    dense_mesh = "dp_cp" if layout.sharding == "none" else "fsdp"
    reshard = layout.sharding == "zero3"
    for block in chunk.layers.values():
        if experts_apart and block.is_moe:
            wrap(block.moe.experts, "edp", reshard, _expert_placement(chunk.cfg.d_model, dims.size("edp")))
        wrap(block, dense_mesh, reshard)
    # The root keeps what no block owns (embedding, final norm, head); None lets FSDP
    # keep it gathered between forward and backward, since backward starts with it.
    wrap(chunk, dense_mesh, None if reshard else False)
    for module in chunk.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            # A plain SUM: dividing by 1 needs no PREMUL_SUM, which gloo and xccl lack.
            module.set_force_sum_reduction_for_comms(True)
    dims.backend.fsdp_quirks(chunk)


def _expert_placement(d_model: int, shards: int):
    """FSDP's ``shard_placement_fn`` for stacked expert weights (``topology.layout.expert_shard_dim``)."""

    def placement(param: nn.Parameter) -> Shard:
        local = param.to_local() if isinstance(param, DTensor) else param
        if expert_shard_dim(local.shape[0], d_model, shards) == 0:
            return Shard(0)
        split = {p.dim for p in param.placements if hasattr(p, "dim")} if isinstance(param, DTensor) else set()
        return Shard(next(d for d in range(1, local.ndim) if local.shape[d] == d_model and d not in split))

    return placement


def set_gradient_sync(chunks: list[nn.Module], last_microbatch: bool, sharding: str) -> None:
    """Before each non-pipelined micro-batch: defer reduction for zero1 and none (see the table)."""
    if sharding not in ("zero1", "none"):
        return
    for chunk in chunks:
        if isinstance(chunk, FSDPModule):
            chunk.set_requires_gradient_sync(last_microbatch)
            chunk.set_reshard_after_backward(last_microbatch)
