"""Activation checkpointing (recompute modes) and per-block ``torch.compile``.

Both are applied through module hooks/in place, so parameter names (and the
checkpoints that use them) do not change:

* ``full``: ``torch.distributed._composable.checkpoint`` (non-reentrant) on every
  block: only the block's input is kept; the whole block, collectives included,
  runs again in backward.
* ``selective``: the same on every block's ``attention`` module, with a
  selective-checkpoint policy that recomputes only the attention core (the
  scaled-dot-product kernels, and the batched matmuls / softmax / masking of the
  math kernel) and saves every other result, projections and collectives
  included.  It pays off for the math/SDPA-math path, whose S x S score matrix
  it drops; flash kernels already keep only O(S) state.
* ``none``.

``torch.compile`` compiles each block's forward in place (``nn.Module.compile``);
it is meant for accelerators (the trainer enables it there by default); on CPU
it works but needs a C++ toolchain and gains little.
"""
from __future__ import annotations

from functools import partial

import torch
from torch.distributed._composable import checkpoint
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from alphaexa.model.transformer import Transformer


def _attention_core_ops() -> frozenset:
    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math",
             "bmm", "_softmax", "masked_fill", "repeat_interleave")
    # Operator packets (every overload of each op).
    ops = {getattr(aten, n) for n in names if hasattr(aten, n)}
    flash = getattr(torch.ops, "flash_attn", None)
    for n in ("_flash_attn_forward", "_flash_attn_varlen_forward"):
        if flash is not None and hasattr(flash, n):
            ops.add(getattr(flash, n))
    return frozenset(ops)


def _attention_core_policy(ops: frozenset, ctx, op, *args, **kwargs) -> CheckpointPolicy:
    recompute = getattr(op, "overloadpacket", op) in ops
    return CheckpointPolicy.PREFER_RECOMPUTE if recompute else CheckpointPolicy.MUST_SAVE


def apply_recompute(chunk: Transformer, mode: str) -> None:
    if mode == "none":
        return
    if mode == "full":
        for block in chunk.layers.values():
            checkpoint(block)
        return
    if mode == "selective":
        policy = partial(_attention_core_policy, _attention_core_ops())
        for block in chunk.layers.values():
            checkpoint(block.attention, context_fn=partial(create_selective_checkpoint_contexts, policy))
        return
    raise ValueError(f"unknown recompute mode {mode!r}")


def apply_compile(chunk: Transformer, mode: str = "default") -> None:
    for block in chunk.layers.values():
        block.compile(mode=mode)

