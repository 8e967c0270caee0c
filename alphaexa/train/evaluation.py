"""Held-out loss of one global batch under any layout (forward only), with the train step's machinery.

The batch goes through the same micro-step split as training (pipelined: the schedule's
``eval``, which runs forwards only), the loss is the summed token cross-entropy, summed
over the data ranks and sent from the pipeline rank holding the last stage, so every rank
returns the totals of the whole global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from ..parallel import IGNORE_INDEX, TrainStep, summed_cross_entropy


def _plain(t: Tensor) -> Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def evaluate_loss(step: TrainStep, inputs: Tensor, targets: Tensor) -> tuple[float, int]:
    """(summed token cross-entropy, target tokens) of the global batch whose rows these are."""
    dims = step.dims
    inputs, targets = inputs.to(dims.device), targets.to(dims.device)
    tokens = (targets != IGNORE_INDEX).sum().to(torch.float32)
    dist.all_reduce(tokens, group=dims.group("dp_cp"))
    loss_sum = torch.zeros((), device=dims.device, dtype=torch.float32)
    model = step.model
    if step.pipelined:
        # The schedule's loss function divides by the step's token count: make it 1 to get sums.
        step._token_count = torch.ones((), device=dims.device)
        losses: list[Tensor] = []
        args = (inputs,) if model.has_first_stage else ()
        kwargs = {"target": targets, "losses": losses} if model.has_last_stage else {}
        with step._loss_context():
            step.schedule.eval(*args, **kwargs)
        for loss in losses:
            loss_sum += _plain(loss).float()
    else:
        (chunk,) = model.chunks
        for x, y in zip(inputs.chunk(step.n_microbatches), targets.chunk(step.n_microbatches)):
            with step._loss_context():
                loss_sum += _plain(summed_cross_entropy(chunk(x), y)).float()
    dist.all_reduce(loss_sum, group=dims.group("dp_cp"))
    if step.pipelined:
        dist.broadcast(loss_sum, src=step._last_stage_global_rank, group=dims.group("pp"))
    return float(loss_sum), int(tokens)
