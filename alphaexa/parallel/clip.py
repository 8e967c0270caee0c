"""Gradient clipping by the global norm over every parallel dimension.

Each gradient is a DTensor (FSDP/HSDP, tensor, expert shards) or, for a
parameter no wrapper touched, a plain tensor replicated over the non-pipeline
ranks.  Gradients are grouped by (mesh, placements); a group's norm is
computed by DTensor (``get_total_norm`` then ``full_tensor``), which reduces
shards and does not count replicas twice, so every rank of a pipeline stage
gets the norm of all of that stage's gradients.  Squared stage norms are then
summed over the pipeline ranks (each stage's parameters live on exactly one
pipeline rank).  The result equals ``torch.nn.utils.clip_grad_norm_`` on the
single-process model up to summation order.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from .mesh import ParallelDims


def _group_key(grad: Tensor) -> tuple:
    if isinstance(grad, DTensor):
        return (id(grad.device_mesh), tuple(grad.placements))
    return ("local",)


def _local_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of plain tensors; bf16/fp16 ones (``train.bf16_weights``) summed in fp32, as their fp32 values
    would be (torch's ``get_total_norm`` returns each tensor's norm in the tensor's own dtype)."""
    low = [g for g in grads if g.dtype in (torch.bfloat16, torch.float16)]
    if not low:
        return torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    parts = list(torch._foreach_norm(low, 2.0, dtype=torch.float32))
    rest = [g for g in grads if g.dtype not in (torch.bfloat16, torch.float16)]
    if rest:
        parts.append(torch.nn.utils.get_total_norm(rest, norm_type=2.0).to(torch.float32))
    return torch.linalg.vector_norm(torch.stack(parts))


@torch.no_grad()
def global_grad_norm(params: Iterable[torch.nn.Parameter], dims: ParallelDims) -> Tensor:
    """The 2-norm of all gradients of the whole model (every stage, shard and expert), on every rank."""
    groups: dict[tuple, list[Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            groups[_group_key(p.grad)].append(p.grad)
    # At least fp32; float64 gradients (the CPU equivalence tests) keep their precision.
    dtype = torch.promote_types(torch.float32, next(iter(groups.values()))[0].dtype if groups else torch.float32)
    squared = torch.zeros((), device=dims.device, dtype=dtype)
    for key, grads in groups.items():
        norm = _local_norm(grads) if key == ("local",) else torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        # With CPU offload the gradients (and so this norm) live on the host.
        squared += norm.to(dtype).square().to(squared.device)
    if dims.layout.pp > 1:
        dist.all_reduce(squared, group=dims.group("pp"))
    return squared.sqrt()


@torch.no_grad()
def clip_divisor(total: Tensor, max_norm: float) -> Tensor:
    """The ``grad_scale`` under which a fused Adam/AdamW step sees the gradients ``clip_grad_norm_`` leaves.

    torch's fused kernels divide each gradient by ``grad_scale`` as they load it (and store the quotient
    back), so passing 1 / the clip coefficient clips inside the optimizer's own pass over the gradients:
    one read of every gradient and the multiply's launches less than scaling them first (the kernel's store
    of the quotient replaces the multiply's write; docs/performance.md, session 11's profile).  The coefficient is
    ``clip_grads_with_norm_``'s (max_norm / (norm + 1e-6), at most 1); the quotient can differ from its
    product in the last bit.  A float32 scalar on the norm's device (the kernels read a float)."""
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return torch.reciprocal(coefficient).to(torch.float32)


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.nn.Parameter], max_norm: float, dims: ParallelDims) -> Tensor:
    """Scale all gradients so that their global norm is at most ``max_norm``; returns the norm before."""
    params = [p for p in params if p.grad is not None]
    total = global_grad_norm(params, dims)
    if max_norm == float("inf"):  # no clipping (train.clip=0): nothing to scale (the coefficient would be 1, or
        return total  # NaN where the norm is not finite: inf / inf, which would spread one bad gradient to all)
    groups: dict[tuple, list[Tensor]] = defaultdict(list)
    for p in params:
        groups[_group_key(p.grad)].append(p)
    for key, group in groups.items():
        # DTensor gradients are scaled one at a time: torch's foreach multiply over a list of DTensors runs
        # DTensor's sharding propagation for the whole list, uncached (torch 2.13: about 0.4 s per group and
        # step on a 2-core CPU, profiled on 4 ranks of fsdp2 x tp2 x ep2), while each tensor's own ``mul_``
        # hits its cache.  The same product either way (each element times the same coefficient).
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=None if key == ("local",) else False)
    return total
