"""Pipeline parallelism with ``torch.distributed.pipelining``.

The model is cut into ``pp * vpp`` stages of consecutive blocks; the first
stage also holds the embedding, the last the final norm and the LM head.  Each
stage is a ``Transformer`` whose ``layers`` keep their global names ("0",
"1", ...), so parameter names, and therefore checkpoints, are those of the
whole model.

Stage -> pipeline rank: ``loop`` (gpipe, 1f1b, interleaved1f1b) gives rank r the
stages r, r + pp, r + 2 pp, ...; ``v`` (zbv) gives rank r the stages r and
2 pp - 1 - r, so rank 0 holds both the first and the last stage.

Layers per stage: the planner's counts when given (``stage_layers``), else
balanced: ``n_layers // n_stages`` each and one more for the first
``n_layers % n_stages`` stages (the last stage, which also runs the LM head and
the loss, is the last to get an extra block).

The schedules get the loss function and ``scale_grads=False``: our loss is
already divided by the global token count, so micro-batch gradients just add.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from alphaexa.model.moe import moe_layers
from alphaexa.model.transformer import Transformer
from topology.modelcfg import ConfigError

if TYPE_CHECKING:
    from torch.distributed.pipelining import PipelineStage

# torch.distributed.pipelining is imported by build_schedule, when a pipeline is built: it imports torch._dynamo,
# 1.4 s of every process that imports alphaexa.parallel on a 2-core machine (profiled), with or without pp.
SCHEDULE_CLASSES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved1f1b": "ScheduleInterleaved1F1B",
                    "zbv": "ScheduleZBVZeroBubble"}


def stage_layer_counts(n_layers: int, n_stages: int, given: list[int] | None = None) -> list[int]:
    if given is not None:
        if len(given) != n_stages or sum(given) != n_layers or min(given) < 1:
            raise ConfigError(f"stage_layers={given}: need {n_stages} counts >= 1 summing to n_layers={n_layers}")
        return list(given)
    base, extra = divmod(n_layers, n_stages)
    return [base + (1 if s < extra else 0) for s in range(n_stages)]


def stage_ids_of_rank(pp: int, pp_rank: int, vpp: int, schedule: str) -> list[int]:
    if schedule == "zbv":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(vpp)]


def rank_of_stage(stage: int, pp: int, schedule: str) -> int:
    if schedule == "zbv":
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


def split_model(model: Transformer, stage_ids: list[int], counts: list[int]) -> list[Transformer]:
    """One ``Transformer`` per stage in ``stage_ids``, sharing ``model``'s modules and buffers."""
    starts = [sum(counts[:s]) for s in range(len(counts))]
    last = len(counts) - 1
    chunks = []
    for stage in stage_ids:
        with torch.device("meta"):
            chunk = Transformer(model.cfg)
        names = [str(i) for i in range(starts[stage], starts[stage] + counts[stage])]
        chunk.layers = nn.ModuleDict({name: model.layers[name] for name in names})
        chunk.tok_embeddings = model.tok_embeddings if stage == 0 else None
        chunk.pos_embeddings = model.pos_embeddings if stage == 0 else None
        chunk.norm = model.norm if stage == last else None
        chunk.output = model.output if stage == last else None
        for name, buffer in model.named_buffers(recurse=False):
            setattr(chunk, name, buffer)
        chunks.append(chunk)
    return chunks


def _no_deferred_weight_grads():
    return lambda: None


def _flag_shape_inference(stage: PipelineStage) -> None:
    """Mark the stage's MoE layers (``MoE.inferring_shapes``) while torch prepares the stage's forward.

    On a schedule's first step torch runs every stage's forward once more to learn the shapes it
    sends (torch 2.13: the first stage on the first micro-batch, the others on uninitialised
    ``torch.empty`` inputs): that forward is no micro-batch of the step, and its routing figures
    (NaN or garbage on the later stages) must not reach the step's MoE statistics.
    """
    prepare = getattr(stage, "_prepare_forward_infra", None)
    layers = list(moe_layers(stage.submod).values())
    if prepare is None or not layers:
        return

    def prepare_flagged(*args, **kwargs):
        for layer in layers:
            layer.inferring_shapes = True
        try:
            return prepare(*args, **kwargs)
        finally:
            for layer in layers:
                layer.inferring_shapes = False

    stage._prepare_forward_infra = prepare_flagged


def build_schedule(chunks: list[nn.Module], stage_ids: list[int], n_stages: int, schedule: str,
                   n_microbatches: int, loss_fn, device: torch.device, pp_group):
    # zbv: with torch 2.13's split backward (input gradients first, weight gradients later by
    # autograd-graph surgery) our training step got wrong weight gradients (checked against
    # the single-process reference; docs/parallelism.md); a dw_builder makes the I step run
    # the full backward and W a no-op, so the V schedule stays exact, only the I/W split is lost.
    from torch.distributed import pipelining

    dw_builder = _no_deferred_weight_grads if schedule == "zbv" else None
    stages = [pipelining.PipelineStage(chunk, stage, n_stages, device, group=pp_group, dw_builder=dw_builder)
              for chunk, stage in zip(chunks, stage_ids)]
    for stage in stages:
        _flag_shape_inference(stage)
    cls = getattr(pipelining, SCHEDULE_CLASSES[schedule])
    target = stages[0] if schedule in ("gpipe", "1f1b") else stages
    return cls(target, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)
