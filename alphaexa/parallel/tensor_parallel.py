"""Tensor + sequence parallelism for one model chunk with DTensor ``parallelize_module``.

The residual stream between blocks is a plain tensor holding this rank's
sequence shard (Megatron sequence parallelism): norms run on the shard
(``SequenceParallel``); attention and the dense FFN all-gather the sequence on
entry (``PrepareModuleInput``), split their projections column-wise (q/k/v,
w1/w3: each rank holds n_heads/tp query heads and n_kv_heads/tp key/value
heads, which keeps every query head with its GQA key/value head) and
reduce-scatter back to the shard on exit (row-wise wo/w2 with ``Shard(1)``
output).  ``Attention.forward`` reshapes with ``-1`` heads, so no module
attribute needs rewriting.

Vocabulary parallelism: the embedding is split row-wise over the vocabulary
(``RowwiseParallel``: each rank looks up its slice, the partial sums are
reduce-scattered to the sequence shard), the LM head column-wise over the
vocabulary, and the loss is computed with ``loss_parallel`` on the
vocabulary-sharded logits (``Shard(-1)`` DTensor): the full (B, S, V) logits
never exist on one rank.

MoE blocks under tensor parallelism: routing runs on the rank's own sequence
shard (the router weight is replicated, ``SequenceParallel`` over the flattened
token dimension, so its gradient is summed over tp like a norm weight), the
experts are split tp ways on their hidden dimension (expert tensor parallel,
see ``expert_parallel``) and shared experts like a dense FFN.

Non-rope positions (learned, sinusoidal) are added to the full-sequence
embedding, so with them the embedding all-reduces and the first block takes
its shard.  Between pipeline stages the activation travels whole (all-gathered
at the end of a stage, re-sharded at the start of the next): the model derives
positions from the length of what a stage receives.
"""
from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from alphaexa.model.transformer import Transformer


def apply_tensor_parallel(chunk: Transformer, tp_mesh: DeviceMesh, *, receives_full_sequence: bool,
                          sends_full_sequence: bool) -> None:
    """Parallelize ``chunk`` in place over ``tp_mesh``.

    ``receives_full_sequence``: the chunk's first block gets the whole sequence
    (a pipeline stage after the first, or non-rope positions added to the full
    embedding); ``sends_full_sequence``: the chunk's last block must return the
    whole sequence (a pipeline stage before the last).
    """
    rope = chunk.cfg.pos_encoding == "rope"
    plan: dict[str, object] = {}
    if chunk.tok_embeddings is not None:
        plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(),
                                                 output_layouts=Shard(1) if rope else Replicate())
        receives_full_sequence = receives_full_sequence or not rope
    if chunk.norm is not None:
        plan["norm"] = SequenceParallel()
    if chunk.output is not None:
        plan["output"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False)
    parallelize_module(chunk, tp_mesh, plan)

    names = list(chunk.layers.keys())
    for position, name in enumerate(names):
        block = chunk.layers[name]
        parallelize_module(block, tp_mesh, _block_plan(block))
        gather_in = receives_full_sequence and position == 0
        gather_out = sends_full_sequence and position == len(names) - 1
        # Block.forward(h, rope, cache): only h changes layout.
        to_shard = {"input_layouts": (Replicate(), None, None), "desired_input_layouts": (Shard(1), None, None)}
        to_full = {"output_layouts": Shard(1), "desired_output_layouts": Replicate(), "use_local_output": True}
        if gather_in and gather_out:
            parallelize_module(block, tp_mesh, PrepareModuleInputOutput(**to_shard, use_local_input=True, **to_full))
        elif gather_in:
            parallelize_module(block, tp_mesh, PrepareModuleInput(**to_shard, use_local_output=True))
        elif gather_out:
            parallelize_module(block, tp_mesh, PrepareModuleOutput(**to_full))


def _block_plan(block: nn.Module) -> dict[str, object]:
    plan: dict[str, object] = {
        "attention_norm": SequenceParallel(),
        # Attention.forward(x, rope, cache): gather the sequence of x only.
        "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                        desired_input_layouts=(Replicate(), None, None), use_local_output=True),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
    }
    if block.is_moe:
        plan["moe"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),),
                                         use_local_output=True)
        # MoE.forward flattens its input to (tokens, d): the shard is now dimension 0.
        plan["moe.gate"] = SequenceParallel(sequence_dim=0, use_local_output=True)
        if block.moe.shared_experts is not None:
            plan.update(_ffn_plan("moe.shared_experts", block.moe.shared_experts, sequence_dim=0))
    else:
        plan.update(_ffn_plan("feed_forward", block.feed_forward, sequence_dim=1))
    return plan


def _ffn_plan(prefix: str, ffn: nn.Module, sequence_dim: int) -> dict[str, object]:
    plan: dict[str, object] = {
        prefix: PrepareModuleInput(input_layouts=(Shard(sequence_dim),), desired_input_layouts=(Replicate(),),
                                   use_local_output=True),
        f"{prefix}.w1": ColwiseParallel(),
        f"{prefix}.w2": RowwiseParallel(output_layouts=Shard(sequence_dim)),
    }
    if ffn.w3 is not None:
        plan[f"{prefix}.w3"] = ColwiseParallel()
    return plan
