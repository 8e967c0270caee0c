"""Expert parallelism (EP) and expert tensor parallelism (ETP) for the MoE blocks.

Placement: the stacked expert weights become DTensors on the ``ep`` x ``etp``
sub-mesh (see ``mesh``): ``Shard(0)`` over ep, so each rank holds
``n_experts / ep`` whole experts, and over etp (= the tp ranks) the hidden
dimension is split like a dense FFN (w1/w3 ``Shard(2)``, w2 ``Shard(1)``).
Their gradients are reduced by FSDP over the expert-data mesh ``edp`` (the
data ranks holding the same expert shard), never over the whole dp group.

Routing (``MoE.forward``, unchanged) happens on the rank that owns the tokens,
before any communication, so top-k choices, capacity and dropping are those of
that rank's tokens.  Capacity is therefore per rank: ``ceil(capacity_factor *
local_tokens * top_k / n_experts)`` over the tokens of this rank's micro-batch
(its sequence shard under tensor parallelism), as in GShard/Megatron; expert
parallelism does not change which assignments are dropped.  Dropless routing
gives the same result whatever the layout.

``_run_experts`` (the seam ``MoE`` leaves for this) is replaced per MoE layer:

1. etp > 1: every tp rank needs the tokens of the whole tp group (each holds a
   slice of every local expert): all-gather (variable sizes, via all-to-all)
   the rank's expert-sorted tokens, then regroup by expert.
2. ep > 1: exchange per-expert counts (all-to-all of the count vector), then
   send each token to the ep rank owning its expert (``all_to_all_single``
   with autograd), regroup the received tokens by local expert.
3. run the local experts (grouped GEMM) on local weight shards.
4. undo 2 (all-to-all back) and 1 (each tp rank sends every source its partial
   outputs, the source sums them: a reduce-scatter with variable sizes).

The all-to-alls are ``torch.distributed._functional_collectives.
all_to_all_single_autograd``, whose backward is the reverse all-to-all; it works
on gloo, NCCL and xccl.

Routing statistics (``MoE.stats_reduce_hook``) are summed over the ``tokens``
mesh (all ranks holding different tokens of one micro-batch: dp, cp and tp),
so the auxiliary and z losses equal those of one process seeing the whole
micro-batch.
"""
from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from alphaexa.model.moe import GroupedExperts, MoE, moe_layers, set_stats_reduce_hook


def stats_reduce_hook(group: dist.ProcessGroup) -> Callable[[Tensor], Tensor]:
    """A ``MoE.stats_reduce_hook`` summing the routing statistics over ``group``."""

    def reduce(stats: Tensor) -> Tensor:
        total = stats.clone()
        dist.all_reduce(total, group=group)
        return total

    return reduce


def apply_moe_statistics(chunk: nn.Module, tokens_mesh: DeviceMesh) -> None:
    """Make every MoE layer's aux/z loss see the statistics of the whole micro-batch."""
    if tokens_mesh.size() > 1:
        set_stats_reduce_hook(chunk, stats_reduce_hook(tokens_mesh.get_group()))


def apply_expert_parallel(chunk: nn.Module, ep_mesh: DeviceMesh, etp_mesh: DeviceMesh,
                          ep_etp_mesh: DeviceMesh) -> None:
    """Shard the experts of every MoE layer in ``chunk`` over ep x etp and route tokens to them."""
    ep, etp = ep_mesh.size(), etp_mesh.size()
    if ep == 1 and etp == 1:
        return
    if ep > 1 and etp > 1:
        mesh, dims = ep_etp_mesh, ("ep", "etp")
    elif ep > 1:
        mesh, dims = ep_mesh, ("ep",)
    else:
        mesh, dims = etp_mesh, ("etp",)
    for moe in moe_layers(chunk).values():
        _shard_experts(moe.experts, mesh, dims)
        moe.experts.forward = types.MethodType(_local_experts_forward, moe.experts)
        dispatcher = _Dispatcher(moe.n_experts, ep_mesh.get_group() if ep > 1 else None, ep,
                                 etp_mesh.get_group() if etp > 1 else None, etp)
        moe._run_experts = types.MethodType(dispatcher.run_experts, moe)


def _shard_experts(experts: GroupedExperts, mesh: DeviceMesh, dims: tuple[str, ...]) -> None:
    # Every rank holds the same full weights (same seed), so each keeps its own slice
    # without communication (src_data_rank=None).
    hidden_dim = {"w1": 2, "w3": 2, "w2": 1}
    for name, param in list(experts.named_parameters(recurse=False)):
        placements = [Shard(0) if d == "ep" else Shard(hidden_dim[name]) for d in dims]
        sharded = distribute_tensor(param.detach(), mesh, placements, src_data_rank=None)
        experts.register_parameter(name, nn.Parameter(sharded, requires_grad=param.requires_grad))


def _local_experts_forward(self: GroupedExperts, x: Tensor, tokens_per_expert: Tensor) -> Tensor:
    """``GroupedExperts.forward`` on this rank's weight shards (plain tensors, not DTensors).

    It runs inside the module call, after FSDP has all-gathered the data-parallel
    shards, so the DTensors here are split over ep/etp only.
    """
    local = types.SimpleNamespace(
        ffn_type=self.ffn_type, use_grouped_mm=self.use_grouped_mm,
        **{name: (p.to_local() if isinstance(p, DTensor) else p) if p is not None else None
           for name, p in (("w1", self.w1), ("w2", self.w2), ("w3", self.w3))})
    return GroupedExperts.forward(local, x, tokens_per_expert)


def _regroup_by_expert(counts: Tensor) -> Tensor:
    """Permutation that turns blocks ``counts[s, e]`` laid out source-major into expert-major.

    Row order in: (source 0: expert 0..E-1), (source 1: expert 0..E-1), ...
    Row order out: (expert 0: source 0..S-1), (expert 1: ...), ... (stable within a block).
    """
    n_sources, n_experts = counts.shape
    expert_of_row = torch.arange(n_experts, device=counts.device).repeat(n_sources)
    expert_of_row = expert_of_row.repeat_interleave(counts.reshape(-1))
    return torch.sort(expert_of_row, stable=True).indices


def _all_to_all(x: Tensor, output_sizes: list[int], input_sizes: list[int], group: dist.ProcessGroup) -> Tensor:
    """Autograd-aware all-to-all with split sizes (backward: the reverse all-to-all)."""
    out = funcol.all_to_all_single_autograd(x, output_sizes, input_sizes, group)
    return funcol.wait_tensor(out)


class _Dispatcher:
    def __init__(self, n_experts: int, ep_group: dist.ProcessGroup | None, ep: int,
                 tp_group: dist.ProcessGroup | None, tp: int):
        self.n_experts = n_experts
        self.ep_group, self.ep = ep_group, ep
        self.tp_group, self.tp = tp_group, tp

    def run_experts(self, moe: MoE, sorted_tokens: Tensor, tokens_per_expert: Tensor) -> Tensor:
        x, counts = sorted_tokens, tokens_per_expert
        if self.tp > 1:
            x, counts, tp_counts, tp_order = self._gather_tp(x, counts)
        if self.ep > 1:
            x, counts, ep_send, ep_recv, ep_order = self._dispatch_ep(x, counts)
        y = moe.experts(x, counts)
        if self.ep > 1:
            y = self._combine_ep(y, ep_send, ep_recv, ep_order)
        if self.tp > 1:
            y = self._scatter_tp(y, sorted_tokens.shape[0], tp_counts, tp_order)
        return y

    # --------------------------------------------------------- tensor parallel
    def _gather_tp(self, x: Tensor, counts: Tensor):
        gathered_counts = [torch.empty_like(counts) for _ in range(self.tp)]
        dist.all_gather(gathered_counts, counts, group=self.tp_group)
        tp_counts = torch.stack(gathered_counts)  # (tp, E)
        sizes = tp_counts.sum(1).tolist()
        # All-gather with variable sizes: send the whole buffer to every tp rank.  The
        # backward of the repeat sums the gradients coming back from each rank.
        gathered = _all_to_all(x.repeat(self.tp, 1), sizes, [x.shape[0]] * self.tp, self.tp_group)
        order = _regroup_by_expert(tp_counts)
        return gathered[order], tp_counts.sum(0), tp_counts, order

    def _scatter_tp(self, y: Tensor, n_own: int, tp_counts: Tensor, order: Tensor) -> Tensor:
        source_major = torch.empty_like(y).index_copy(0, order, y)
        sizes = tp_counts.sum(1).tolist()
        partials = _all_to_all(source_major, [n_own] * self.tp, sizes, self.tp_group)
        return partials.view(self.tp, n_own, y.shape[1]).sum(0)

    # --------------------------------------------------------- expert parallel
    def _dispatch_ep(self, x: Tensor, counts: Tensor):
        per_rank = self.n_experts // self.ep
        send_counts = counts.view(self.ep, per_rank)  # [destination, its local expert]
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts.contiguous(), group=self.ep_group)  # [source, local expert]
        send_sizes = send_counts.sum(1).tolist()
        recv_sizes = recv_counts.sum(1).tolist()
        received = _all_to_all(x, recv_sizes, send_sizes, self.ep_group)
        order = _regroup_by_expert(recv_counts)
        return received[order], recv_counts.sum(0), send_sizes, recv_sizes, order

    def _combine_ep(self, y: Tensor, send_sizes: list[int], recv_sizes: list[int], order: Tensor) -> Tensor:
        source_major = torch.empty_like(y).index_copy(0, order, y)
        return _all_to_all(source_major, send_sizes, recv_sizes, self.ep_group)
