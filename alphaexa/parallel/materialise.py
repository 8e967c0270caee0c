"""Allocate and initialise this rank's shards of a model that was parallelized on the meta device.

The large-model path (docs/parallelism.md, "How a large model is built")::

    with torch.device("meta"):
        model = Transformer(cfg)               # shapes only, no memory
    pmodel = parallelize(model, dims)          # the layout: stages, TP/SP, EP, FSDP2 (DTensors on meta)
    materialise(pmodel, seed=cfg.seed)         # this rank's shards on its device, initialised

``materialise`` allocates each parameter's local shard (``to_empty``) and writes into it
the values the single-process build (``build_model``) gives the same parameter: every
parameter has its own generator (``Transformer.param_inits``), so a rank draws the whole
parameter (a stacked expert weight: only the experts it holds, one at a time), keeps the
elements its DTensor shard covers and drops the rest.  Peak memory above the shards is
one parameter (one expert), never the model.

Which global elements a shard covers is read from the DTensor itself: for each tensor
dimension, a vector of global indices is distributed with the parameter's placements
(``distribute_tensor(..., src_data_rank=None)`` slices locally, no communication), so
uneven shards, FSDP2's strided sharding over tensor-parallel shards and expert
placements are all handled by DTensor's own rules.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

from alphaexa.model.transformer import ParamInit

from .parallelize import ParallelModel


@torch.no_grad()
def materialise(pmodel: ParallelModel, seed: int | None) -> None:
    """Allocate this rank's shards on its device and initialise them as ``build_model(seed=seed)`` would.

    ``seed`` None allocates without initialising (a checkpoint is loaded next).  With CPU
    offload the parameters live on the host and only the position tables on the device.
    """
    device = pmodel.dims.device
    for chunk in pmodel.chunks:
        chunk.to_empty(device="cpu" if pmodel.cpu_offload else device)
        chunk.tie_weights()
        chunk.init_buffers(device)
    if seed is None:
        return
    inits: dict[str, ParamInit] = {}
    for chunk in pmodel.chunks:
        inits.update(chunk.param_inits(seed))
    for name, param in pmodel.named_parameters():
        write_initial_shard(param, inits[name])


def write_initial_shard(param: nn.Parameter | Tensor, init: ParamInit) -> None:
    """Write into ``param`` (a DTensor or a plain tensor) its share of the initial values of ``init``."""
    if not isinstance(param, DTensor):
        init.write_whole_(param)
        return
    local = param.to_local()
    index = global_indices(param)
    whole = torch.empty(param.shape[1:] if init.per_expert else param.shape, dtype=local.dtype, device=local.device)
    if init.per_expert:
        for row, expert in enumerate(index[0].tolist()):
            local[row].copy_(_select(init.write_(whole, expert), index[1:]))
    else:
        local.copy_(_select(init.write_(whole), index))


def global_indices(param: DTensor) -> list[Tensor]:
    """Per tensor dimension, the global indices of the elements this rank's shard holds, in local order."""
    out = []
    for dim, size in enumerate(param.shape):
        placements = [p if getattr(p, "dim", None) == dim else Replicate() for p in param.placements]
        shape = [1] * param.ndim
        shape[dim] = size
        ids = torch.arange(size, device=param.device_mesh.device_type).view(shape)
        out.append(distribute_tensor(ids, param.device_mesh, placements, src_data_rank=None).to_local().flatten())
    return out


def _select(whole: Tensor, index: list[Tensor]) -> Tensor:
    """``whole`` restricted to ``index`` per dimension: a view where the indices are a contiguous run."""
    out = whole
    for dim, ids in enumerate(index):
        ids = ids.to(whole.device)
        n = ids.numel()
        start = int(ids[0]) if n else 0
        if n == 0 or torch.equal(ids, torch.arange(start, start + n, device=ids.device)):
            out = out.narrow(dim, start, n)
        else:
            out = out.index_select(dim, ids)
    return out
