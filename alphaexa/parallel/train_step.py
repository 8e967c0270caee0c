"""One training step's forward and backward for any layout, pipelined or not.

Batch layout (what makes every layout train the single-process model): a step
runs ``n_microbatches`` micro-steps; micro-step m of the global batch is the
block of ``global_batch / n_microbatches`` consecutive rows starting at
``m * global_batch / n_microbatches``, and data rank d reads the ``mbs`` rows
``d * mbs ...`` of each block (``local_rows``).  Tensor- and pipeline-parallel
ranks of one data rank read the same rows.

Loss normalisation: each micro-batch's loss is its summed token cross-entropy
divided by the number of target tokens of the WHOLE global batch (counted once
per step with an all-reduce over the data ranks), and gradients are summed
(FSDP reduces with SUM, the pipeline schedules do not rescale).  The gradient
is then the gradient of the global mean loss, exactly as one process computing
the mean over the global batch.  MoE auxiliary losses are injected per
micro-step with weight ``1 / n_microbatches``; their routing statistics cover
the whole micro-step (see ``expert_parallel``), so they too equal the
single-process ones for the same micro-step split.

The returned loss is the global mean token cross-entropy: summed over data
ranks and broadcast from the pipeline rank that holds the last stage.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from alphaexa.model.layers import at_least_float32
from alphaexa.model.loss import IGNORE_INDEX
from alphaexa.model.moe import moe_layers

from .data_parallel import set_gradient_sync
from .parallelize import ParallelModel
from .pipeline import build_schedule, rank_of_stage


def local_rows(global_batch: int, n_microbatches: int, dp_rank: int, dp: int) -> Tensor:
    """Indices of the global-batch rows this data rank trains on, in micro-batch order."""
    per_micro = global_batch // n_microbatches
    mbs = per_micro // dp
    starts = torch.arange(n_microbatches) * per_micro + dp_rank * mbs
    return (starts.unsqueeze(1) + torch.arange(mbs)).reshape(-1)


@dataclass
class StepResult:
    loss: float  # global mean token cross-entropy of the step
    tokens: int  # target tokens in the global batch


def summed_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum of token cross-entropies in at least fp32; works on vocabulary-sharded DTensor logits under loss_parallel."""
    return F.cross_entropy(at_least_float32(logits.flatten(0, 1)), targets.flatten(), reduction="sum",
                           ignore_index=IGNORE_INDEX)


def _plain(t: Tensor) -> Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


class TrainStep:
    """``step(inputs, targets)``: forward + backward of one step on this rank's rows; returns StepResult.

    ``inputs`` / ``targets``: (n_microbatches * mbs, seq) token ids of this data rank
    (``local_rows``).  Gradients are left in the parameters for clipping and the optimizer.

    ``fused_loss``: the model computes head + loss itself (``Transformer.forward(targets=)``,
    no full fp32 logits), where the layout allows: no pipeline, no vocabulary-parallel loss;
    elsewhere ``loss_fn`` on the logits.  ``loss_scale()`` multiplies every micro-batch's loss
    (the trainer's fault injection).
    """

    def __init__(self, model: ParallelModel, n_microbatches: int,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = summed_cross_entropy, *,
                 fused_loss: bool = False, loss_scale: Callable[[], float] = lambda: 1.0):
        self.model = model
        self.dims = model.dims
        self.n_microbatches = n_microbatches
        self.sum_loss_fn = loss_fn
        self.loss_scale = loss_scale
        self._token_count: Tensor | None = None
        # Loss sums and token counts in the master weights' precision, at least fp32.
        self.accumulate_dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)
        layout = self.dims.layout
        self.pipelined = layout.pp > 1
        self.vocab_parallel = layout.tp > 1
        self.fused_loss = fused_loss and not self.pipelined and not self.vocab_parallel
        for chunk in model.chunks:
            for moe in moe_layers(chunk).values():
                moe.aux_loss_scale = 1.0 / n_microbatches
        self.schedule = None
        if self.pipelined:
            self.schedule = build_schedule(model.chunks, model.stage_ids, model.n_stages, layout.schedule,
                                           n_microbatches, self._normalised_loss, self.dims.device,
                                           self.dims.group("pp"))
            last_stage_pp_rank = rank_of_stage(model.n_stages - 1, layout.pp, layout.schedule)
            self._last_stage_global_rank = dist.get_global_rank(self.dims.group("pp"), last_stage_pp_rank)

    def _normalised_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.sum_loss_fn(logits, targets) * self.loss_scale() / self._token_count

    def _summed_loss(self, chunk: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        """Summed token cross-entropy of one micro-batch through the whole (unpipelined) model."""
        if self.fused_loss:
            return chunk(inputs, targets=targets)
        return self.sum_loss_fn(chunk(inputs), targets)

    def _loss_context(self):
        return loss_parallel() if self.vocab_parallel else contextlib.nullcontext()

    def __call__(self, inputs: Tensor, targets: Tensor) -> StepResult:
        loss_sum, count = self.launch(inputs, targets)
        return StepResult(loss=float(loss_sum), tokens=int(count))

    def launch(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The step without waiting for the device: (global mean loss, target tokens), both 0-d
        tensors on the device.  Reading them (``float``) is the step's host synchronisation, which
        the trainer does once, after the optimizer step has been queued behind the backward."""
        device = self.dims.device
        # Pinned batches (the trainer's loader pins them for CUDA) copy without stalling the host.
        inputs = inputs.to(device, non_blocking=inputs.is_pinned())
        targets = targets.to(device, non_blocking=targets.is_pinned())
        count = (targets != IGNORE_INDEX).sum().to(self.accumulate_dtype)
        dist.all_reduce(count, group=self.dims.group("dp_cp"))
        self._token_count = count
        loss_sum = torch.zeros((), device=device, dtype=self.accumulate_dtype)
        if self.pipelined:
            loss_sum = self._pipelined(inputs, targets, loss_sum)
        else:
            loss_sum = self._accumulated(inputs, targets, loss_sum)
        dist.all_reduce(loss_sum, group=self.dims.group("dp_cp"))
        if self.pipelined:
            dist.broadcast(loss_sum, src=self._last_stage_global_rank, group=self.dims.group("pp"))
        return loss_sum, count

    @torch.no_grad()
    def evaluate(self, inputs: Tensor, targets: Tensor) -> tuple[float, int]:
        """(summed token cross-entropy, target tokens) of the global batch these rows belong to,
        forward only; call with the model in eval mode.

        Pipelines run the stages in order, micro-batch by micro-batch, with plain
        send/recv (torch 2.13's ``schedule.eval`` fails for the V-shaped zbv placement).
        """
        device = self.dims.device
        inputs, targets = inputs.to(device), targets.to(device)
        count = (targets != IGNORE_INDEX).sum().to(self.accumulate_dtype)
        dist.all_reduce(count, group=self.dims.group("dp_cp"))
        loss_sum = torch.zeros((), device=device, dtype=self.accumulate_dtype)
        for x, y in zip(inputs.chunk(self.n_microbatches), targets.chunk(self.n_microbatches)):
            with self._loss_context():
                if self.pipelined:
                    logits = self._pipelined_forward(x)
                    if logits is not None:
                        loss_sum += _plain(self.sum_loss_fn(logits, y)).to(loss_sum.dtype)
                else:
                    loss_sum += _plain(self._summed_loss(self.model.chunks[0], x, y)).to(loss_sum.dtype)
        dist.all_reduce(loss_sum, group=self.dims.group("dp_cp"))
        if self.pipelined:
            dist.broadcast(loss_sum, src=self._last_stage_global_rank, group=self.dims.group("pp"))
        return float(loss_sum), int(count)

    def _pipelined_forward(self, tokens: Tensor) -> Tensor | None:
        """One micro-batch through every stage; the logits on the rank holding the last stage, else None."""
        layout, group = self.dims.layout, self.dims.group("pp")
        chunk_of = dict(zip(self.model.stage_ids, self.model.chunks))
        d_model = self.model.chunks[0].cfg.d_model
        h = None
        for stage in range(self.model.n_stages):
            holder = rank_of_stage(stage, layout.pp, layout.schedule)
            previous = rank_of_stage(stage - 1, layout.pp, layout.schedule) if stage else holder
            if stage in chunk_of:
                if stage == 0:
                    h = tokens
                elif previous != holder:
                    h = torch.empty(*tokens.shape, d_model, dtype=self.model.activation_dtype, device=tokens.device)
                    dist.recv(h, group=group, group_src=previous)
                h = chunk_of[stage](h)
            elif stage > 0 and stage - 1 in chunk_of and previous != holder:
                dist.send(h.contiguous(), group=group, group_dst=holder)
        return h if self.model.has_last_stage else None

    def _accumulated(self, inputs: Tensor, targets: Tensor, loss_sum: Tensor) -> Tensor:
        (chunk,) = self.model.chunks
        sharding = self.dims.layout.sharding
        for m, (x, y) in enumerate(zip(inputs.chunk(self.n_microbatches), targets.chunk(self.n_microbatches))):
            set_gradient_sync([chunk], m == self.n_microbatches - 1, sharding)
            with self._loss_context():
                loss = self._summed_loss(chunk, x, y) * self.loss_scale() / self._token_count
                loss.backward()
            loss_sum += _plain(loss.detach()).to(loss_sum.dtype)
        return loss_sum

    def _pipelined(self, inputs: Tensor, targets: Tensor, loss_sum: Tensor) -> Tensor:
        args = (inputs,) if self.model.has_first_stage else ()
        kwargs = {}
        losses: list[Tensor] = []
        if self.model.has_last_stage:
            kwargs = {"target": targets, "losses": losses}
        with self._loss_context():
            self.schedule.step(*args, **kwargs)
        for loss in losses:
            loss_sum += _plain(loss.detach()).to(loss_sum.dtype)
        return loss_sum


def make_train_step(model: ParallelModel, n_microbatches: int,
                    loss_fn: Callable[[Tensor, Tensor], Tensor] = summed_cross_entropy, *,
                    fused_loss: bool = False, loss_scale: Callable[[], float] = lambda: 1.0) -> TrainStep:
    return TrainStep(model, n_microbatches, loss_fn, fused_loss=fused_loss, loss_scale=loss_scale)
