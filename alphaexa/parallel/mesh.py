"""One DeviceMesh for every layout, and the named sub-meshes each parallel dimension uses.

``build_mesh`` makes ONE ``init_device_mesh`` call over all five names of
``topology.layout.MESH_DIMS`` = (pp, dp_replicate, dp_shard, cp, tp), size-1
dimensions included: every sub-mesh then exists under its name whatever the
layout, so no code asks "is this dimension there?" (a size-1 group costs one
trivial communicator).  Everything else is derived from that root with
``_flatten`` / ``_unflatten`` and kept here by name (torch deprecates slicing a
flattened dimension out of the root, so we keep the flattened meshes ourselves):

==============  ===============================================  ============================================
name            ranks                                            used for
==============  ===============================================  ============================================
pp, tp, cp,     the root's dimensions                            pipeline p2p, tensor/sequence parallel, ...
dp_replicate,
dp_shard
dp              flatten(dp_replicate, dp_shard)                  which data rows a rank reads
dp_shard_cp     flatten(dp_shard, cp)                            FSDP's shard dimension (cp ranks hold
                                                                 different tokens, so they shard like dp)
dp_cp           flatten(dp_replicate, dp_shard, cp)              loss / token-count all-reduce; plain
                                                                 replication when sharding=none
fsdp            2-D (dp_replicate, dp_shard_cp), unflattened     HSDP (replicate x shard); 1-D dp_shard_cp
                from dp_cp                                       when dp_replicate == 1
tokens          flatten(dp_replicate, dp_shard, cp, tp)          every rank holding different tokens of the
                                                                 same micro-batch: MoE routing statistics
edp, ep, etp    3-D unflatten of ``tokens`` into                 expert data parallel (expert gradients are
                (tokens/(ep*tp), ep, tp)                         reduced here), expert parallel (experts
                                                                 split along dim 0), expert tensor parallel
==============  ===============================================  ============================================

Expert parallelism borrows ranks as ``topology.layout`` describes: the ``ep``
ranks of one expert group are consecutive members of the flattened data ranks
with stride tp, i.e. ``ep`` is the middle factor of ``tokens`` unflattened as
(edp, ep, etp); ``etp`` has exactly the ranks of ``tp`` (experts are split tp
ways like the dense FFN).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from backends.device import Backend
from topology.layout import MESH_DIMS, Layout
from topology.modelcfg import ConfigError


@dataclass
class ParallelDims:
    """A resolved layout, its meshes, and this rank's place in them."""

    layout: Layout
    backend: Backend
    device: torch.device
    root: DeviceMesh
    meshes: dict[str, DeviceMesh] = field(default_factory=dict)

    def __getitem__(self, name: str) -> DeviceMesh:
        if name not in self.meshes:
            raise KeyError(f"no mesh named {name!r}; known: {', '.join(self.meshes)}")
        return self.meshes[name]

    def group(self, name: str) -> dist.ProcessGroup:
        return self.meshes[name].get_group()

    def size(self, name: str) -> int:
        return self.meshes[name].size()

    def local_rank(self, name: str) -> int:
        return self.meshes[name].get_local_rank()

    # ------------------------------------------------------------- shortcuts
    @property
    def pp_rank(self) -> int:
        return self.local_rank("pp")

    @property
    def dp_rank(self) -> int:
        """Index of this rank's share of the global batch (0 .. dp-1)."""
        return self.local_rank("dp")


def build_mesh(layout: Layout, backend: Backend, device: torch.device | None = None) -> ParallelDims:
    """The DeviceMesh of a resolved ``layout`` over the already initialised default process group.

    Validate the layout first (``topology.layout.resolve_layout`` and
    ``alphaexa.parallel.check_layout``): this function creates process groups.
    """
    world = dist.get_world_size()
    if layout.dp_shard < 1:
        raise ConfigError("build_mesh needs a resolved layout (dp_shard=-1 left); call resolve_layout first")
    if layout.world != world:
        raise ConfigError(f"layout {layout.short()} needs {layout.world} ranks but the job has {world}")
    root = init_device_mesh(backend.device_type, layout.mesh_shape, mesh_dim_names=MESH_DIMS)
    meshes = {name: root[name] for name in MESH_DIMS}
    meshes["dp"] = root["dp_replicate", "dp_shard"]._flatten("dp")
    meshes["dp_shard_cp"] = root["dp_shard", "cp"]._flatten("dp_shard_cp")
    meshes["dp_cp"] = root["dp_replicate", "dp_shard", "cp"]._flatten("dp_cp")
    if layout.dp_replicate > 1:
        meshes["fsdp"] = meshes["dp_cp"]._unflatten(
            0, (layout.dp_replicate, layout.dp_shard * layout.cp), ("hsdp_replicate", "hsdp_shard"))
    else:
        meshes["fsdp"] = meshes["dp_shard_cp"]
    tokens = root["dp_replicate", "dp_shard", "cp", "tp"]._flatten("tokens")
    meshes["tokens"] = tokens
    edp = tokens.size() // (layout.ep * layout.tp)
    experts = tokens._unflatten(0, (edp, layout.ep, layout.tp), ("edp", "ep", "etp"))
    meshes["experts"] = experts
    for name in ("edp", "ep", "etp"):
        meshes[name] = experts[name]
    meshes["ep_etp"] = experts["ep", "etp"]
    return ParallelDims(layout=layout, backend=backend, device=device or backend.device, root=root,
                        meshes=meshes)
