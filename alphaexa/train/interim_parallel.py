"""TEMPORARY data-parallel path, used only until ``alphaexa.parallel`` provides the full layout.

It supports layouts whose only parallelism is data parallelism (dp_replicate x dp_shard:
FSDP2 ``fully_shard`` per block and at the root, HSDP on a 2-D mesh) and refuses the rest
with a one-line error.  The trainer talks to it through the same small surface it uses
for ``alphaexa.parallel`` (model parts, data-parallel coordinates, forward+backward over
micro-batches, evaluation loss, global gradient-norm clipping), so switching is local.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from topology.layout import MESH_DIMS, Layout
from topology.modelcfg import ModelConfig

from ..errors import UserError
from ..model import Transformer, build_model


@dataclass
class DataParallelModel:
    model: Transformer
    mesh: DeviceMesh
    layout: Layout
    dp_rank: int
    dp_size: int

    @property
    def model_parts(self) -> list[nn.Module]:
        return [self.model]

    def forward_backward(self, micro_batches: list[tuple[Tensor, Tensor]], loss_scale: float = 1.0,
                         after_micro_batch: Callable[[], None] | None = None) -> Tensor:
        """Accumulate the gradient of ``loss_scale * mean token loss`` over the micro-batches (each
        weighted 1/n); returns the mean loss (detached).  ``after_micro_batch`` runs after each
        backward, while the MoE layers still hold that micro-batch's routing statistics."""
        n = len(micro_batches)
        total = torch.zeros((), dtype=torch.float32, device=micro_batches[0][0].device)
        for i, (inputs, targets) in enumerate(micro_batches):
            # Reduce-scatter gradients once, after the last micro-batch.
            self.model.set_requires_gradient_sync(i == n - 1)
            logits = self.model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            (loss * (loss_scale / n)).backward()
            total += loss.detach()
            if after_micro_batch is not None:
                after_micro_batch()
        return total / n

    @torch.no_grad()
    def eval_loss(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        logits = self.model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        return loss, targets.numel()

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Global L2 norm of all gradients (clipped to ``max_norm`` when > 0), as a plain tensor."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm


def build_data_parallel(cfg: ModelConfig, layout: Layout, device: torch.device, dtype: str, seed: int,
                        mesh: DeviceMesh | None = None) -> DataParallelModel:
    others = {d: getattr(layout, d) for d in ("tp", "pp", "cp", "ep") if getattr(layout, d) > 1}
    if others:
        raise UserError(f"layout {layout.short()}: this build trains data parallelism only "
                        f"(dp_replicate x dp_shard); {', '.join(f'{k}={v}' for k, v in others.items())} needs "
                        f"alphaexa.parallel")
    if mesh is None:
        mesh = init_device_mesh(device.type, layout.mesh_shape, mesh_dim_names=MESH_DIMS)
    # A 2-D (replicate, shard) mesh makes fully_shard run HSDP; without replicas plain FSDP.
    dp_mesh = mesh["dp_replicate", "dp_shard"] if layout.dp_replicate > 1 else mesh["dp_shard"]
    # Full weights on every rank first, then sharded: the initial weights do not depend on the layout.
    model = build_model(cfg, device=device, seed=seed)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if dtype == "bf16" else None,
                                  reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=policy)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy)
    coordinate = mesh.get_coordinate()
    dp_rank = coordinate[MESH_DIMS.index("dp_replicate")] * layout.dp_shard + coordinate[MESH_DIMS.index("dp_shard")]
    return DataParallelModel(model, mesh, layout, dp_rank, layout.dp)
