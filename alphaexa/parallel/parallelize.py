"""``parallelize``: apply a layout to a model from the outside, in the order the pieces need.

Per model chunk (the whole model, or each pipeline stage of this rank):
activation checkpointing -> tensor + sequence parallel -> expert parallel (experts
become ep/etp DTensors) -> MoE statistics hook -> torch.compile -> FSDP2 (or, for one
rank alone, bf16 autocast on a plain module: ``data_parallel``).

``torch.compile`` compiles the whole chunk (one graph: embedding, blocks, head and the
fused loss) when no FSDP wrapper splits it into per-block units and nothing is recomputed,
else each block (``compile_scope="block"`` forces the latter).

Pass a model built on the meta device (``Transformer(cfg)`` under
``torch.device("meta")``), then allocate and initialise this rank's shards with
``alphaexa.parallel.materialise``: nothing larger than one parameter ever exists on
a rank, and the shards hold exactly the single-process build's values, so a
parallel run starts from the very model one process would train.  A model with
real weights (``alphaexa.model.build_model``) works too: every rank then keeps its
slice of them (every rank needs the whole model's memory for a moment).  Validate
the layout first with ``check_layout`` (no process group is needed for that).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from alphaexa.model.attention import Attention
from alphaexa.model.layers import FeedForward
from alphaexa.model.transformer import Transformer
from topology.layout import Layout
from topology.modelcfg import ModelConfig
from topology.support import check_supported

from .data_parallel import apply_autocast, apply_data_parallel, needs_data_parallel_wrapper
from .expert_parallel import apply_expert_parallel, apply_moe_statistics
from .float8 import apply_float8
from .mesh import ParallelDims
from .pipeline import split_model, stage_ids_of_rank, stage_layer_counts
from .recompute import apply_compile, apply_recompute
from .tensor_parallel import apply_tensor_parallel


def check_layout(layout: Layout, model: ModelConfig, device_type: str, *, compile: bool = False,
                 engine: str = "native", offload: str = "none") -> None:
    """Rules beyond ``topology.layout`` that depend on this implementation; raises ConfigError (one line).

    The rules live in ``topology.support`` (shared with the planner, so a plan is always
    something this trainer runs).  Call after ``resolve_layout`` and before any process
    group exists; ``compile``: whether the blocks will be compiled (``parallelize(compile=...)``).
    """
    check_supported(layout, model, device_type, compile=compile, engine=engine, offload=offload)


@dataclass
class ParallelModel:
    """This rank's share of a parallelized model: one chunk, or its pipeline stages."""

    dims: ParallelDims
    chunks: list[Transformer]
    stage_ids: list[int]
    n_stages: int
    stage_layers: list[int] = field(default_factory=list)
    activation_dtype: torch.dtype = torch.float32  # what flows between pipeline stages
    cpu_offload: bool = False  # FSDP2 keeps the sharded parameters in host memory
    wrapped: bool = True  # FSDP2 wraps the chunks (False: plain modules under autocast, one rank)

    @property
    def layout(self) -> Layout:
        return self.dims.layout

    @property
    def has_first_stage(self) -> bool:
        return 0 in self.stage_ids

    @property
    def has_last_stage(self) -> bool:
        return self.n_stages - 1 in self.stage_ids

    def parameters(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for chunk in self.chunks:
            for param in chunk.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield param

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Names as in the whole single-process model (stages keep the global layer names)."""
        seen: set[int] = set()
        for chunk in self.chunks:
            for name, param in chunk.named_parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield name, param

    def train(self, mode: bool = True) -> ParallelModel:
        for chunk in self.chunks:
            chunk.train(mode)
        return self

    def eval(self) -> ParallelModel:
        return self.train(False)


def parallelize(model: Transformer, dims: ParallelDims, *, compute_dtype: torch.dtype = torch.float32,
                compile: bool = False, compile_scope: str = "auto", cpu_offload: bool = False,
                fsdp_on_one_rank: bool = False, stage_layers: list[int] | None = None,
                compile_mode: str = "default", fused_projections: bool = False, float8: bool = False) -> ParallelModel:
    """Split ``model`` into this rank's pipeline stages and parallelize each one in place.

    ``compute_dtype``: bf16 gives FSDP2 mixed precision (bf16 parameters in compute,
    fp32 master weights, optimizer state and gradient reduction), or autocast on one rank.
    ``compile_scope``: auto (the whole chunk when it is neither FSDP-wrapped nor recomputed, else each
    block) | block.
    ``stage_layers``: blocks per pipeline stage (pp*vpp counts), e.g. from the plan.
    ``compile_mode``: torch.compile's mode.  ``fused_projections``: q/k/v and SwiGLU up/gate each from one
    GEMM over concatenated weights (the parameters stay separate; not with tensor parallelism, which
    shards each projection on its own).  ``float8``: the blocks' linear layers in float8 through torchao
    (``alphaexa.parallel.float8``; one rank's plain module or FSDP2, not with tensor parallelism or fused
    projections, which bypass the layers it swaps).
    """
    if compile_scope not in ("auto", "block"):
        raise ValueError(f"compile_scope={compile_scope!r}: must be auto or block")
    layout = dims.layout
    if fused_projections and layout.tp > 1:
        raise ValueError(f"fused projections with tensor parallelism (tp={layout.tp}): not supported, "
                         "turn one of them off")
    if float8 and (layout.tp > 1 or fused_projections):
        raise ValueError("float8 with tensor parallelism or fused projections: not supported, turn one of them off")
    if fused_projections:
        for module in model.modules():
            if isinstance(module, (Attention, FeedForward)):
                module.fused_projections = True
    wrapped = needs_data_parallel_wrapper(dims, cpu_offload=cpu_offload, fsdp_on_one_rank=fsdp_on_one_rank)
    n_stages = layout.pp * layout.vpp
    counts = stage_layer_counts(model.cfg.n_layers, n_stages, stage_layers)
    if layout.pp > 1:
        stage_ids = stage_ids_of_rank(layout.pp, dims.pp_rank, layout.vpp, layout.schedule)
        chunks = split_model(model, stage_ids, counts)
    else:
        stage_ids, chunks = [0], [model]
    for chunk, stage in zip(chunks, stage_ids):
        if float8:
            apply_float8(chunk)
        # Recompute hooks first: the tensor-parallel input/output hooks registered after them
        # then run inside the checkpointed region, so a selective policy sees (and keeps)
        # their collectives instead of meeting them for the first time during recomputation.
        apply_recompute(chunk, layout.recompute)
        if layout.tp > 1:
            apply_tensor_parallel(chunk, dims["tp"], receives_full_sequence=stage > 0,
                                  sends_full_sequence=stage < n_stages - 1)
        apply_expert_parallel(chunk, dims["ep"], dims["etp"], dims["ep_etp"])
        apply_moe_statistics(chunk, dims["tokens"])
        # The composable checkpoint's hooks do not trace inside a whole-model graph (seen on CPU):
        # with recompute, each block is compiled with its hooks around it instead.
        if compile and (wrapped or compile_scope == "block" or layout.recompute != "none"):
            apply_compile(chunk, compile_mode)
        elif compile:
            chunk.compile(mode=compile_mode)
        if wrapped:
            apply_data_parallel(chunk, dims, compute_dtype=compute_dtype, cpu_offload=cpu_offload)
        else:
            apply_autocast(chunk, compute_dtype, dims.device.type)
    return ParallelModel(dims=dims, chunks=chunks, stage_ids=stage_ids, n_stages=n_stages, stage_layers=counts,
                         activation_dtype=compute_dtype, cpu_offload=cpu_offload, wrapped=wrapped)
