"""Full-scale simulation of a plan: the real ``parallelize`` on the meta device under a fake process group.

``alphaexa plan ... --verify`` runs this for the planner's best layout.  For a sample of ranks
(first and last pipeline stage, a middle stage, an expert-parallel rank, the last rank), it
initialises PyTorch's fake process group (``torch.testing._internal.distributed.fake_pg``:
every collective returns at once, nothing is sent) at the plan's full world size as that
rank, builds the plan's ``DeviceMesh`` with ``build_mesh``, the model on the meta device, and
applies the layout with the same ``parallelize`` the trainer runs.  Nothing is allocated: the
parameters are meta DTensors whose local shapes are the shards this rank would hold.

Measured per rank, from those shards (``ResidentBytes``):

* parameters: every local shard, in its dtype (fp32: FSDP2 keeps the master weights as the
  sharded parameters and casts to bf16 only for compute);
* gradients: one shard per parameter shard in FSDP2's reduce dtype (fp32), which is what
  the reduce-scatter leaves on the rank;
* optimizer: the trainer's AdamW (``build_optimizer``) stepped once on meta gradients, so its
  state tensors (exp_avg, exp_avg_sq, step) are the ones a real step creates.

Compared with ``topology.costmodel.resident_state_bytes`` for the rank's pipeline stage.  What
this proves and what it cannot is in docs/planner.md ("Verifying a plan").
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from alphaexa.model.transformer import Transformer
from backends.device import get_backend
from topology.costmodel import Request, resident_state_bytes
from topology.hardware import GIB
from topology.layout import Layout
from topology.modelcfg import ConfigError, ModelConfig

from .mesh import build_mesh
from .parallelize import check_layout, parallelize

KEYS = ("params", "grads", "optimizer")
TOLERANCE = 0.03  # the verdict: every sampled rank within 3% of the planner
LAST_RANK = "last rank (lightest)"


@dataclass
class RankReport:
    rank: int
    role: str
    stages: list[int]
    measured: dict[str, float]  # bytes
    predicted: dict[str, float]
    fullest: bool  # holds the largest shards of its stage (what the planner predicts)

    @property
    def rel_error(self) -> float:
        """Relative error of the rank's parameter, gradient and optimizer bytes (the worst part).

        The planner predicts the fullest rank of a stage; a rank whose ``torch.chunk`` shards
        come out smaller (the last data ranks) only has to stay below that.
        """
        errors = []
        for k in KEYS:
            if self.predicted[k]:
                gap = (self.measured[k] - self.predicted[k]) / self.predicted[k]
                errors.append(abs(gap) if self.fullest else max(gap, 0.0))
        return max(errors, default=0.0)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "role": self.role,
                "measured_gib": {k: round(self.measured[k] / GIB, 4) for k in KEYS},
                "predicted_gib": {k: round(self.predicted[k] / GIB, 4) for k in KEYS}}


def sample_ranks(layout: Layout) -> list[tuple[int, str]]:
    """(rank, role) for the ranks worth simulating, in rank order of ``topology.layout``.

    The first data rank of a stage holds its largest shards (``torch.chunk`` gives the first
    pieces the extra rows); the last rank of the job the smallest.
    """
    world = layout.world
    per_stage = world // layout.pp
    picks = [(0, "first stage")]
    if layout.pp > 2:
        picks.append((layout.pp // 2 * per_stage, "middle stage"))
    if layout.pp > 1:
        picks.append(((layout.pp - 1) * per_stage, "last stage"))
    if layout.ep > 1:
        # ep groups are consecutive data ranks, tp apart: the last member, last tp index.
        picks.append(((layout.ep - 1) * layout.tp + layout.tp - 1, "expert-parallel rank"))
    picks.append((world - 1, LAST_RANK))
    out, seen = [], set()
    for rank, role in picks:
        if rank not in seen:
            seen.add(rank)
            out.append((rank, role))
    return sorted(out)


def check_simulated_layout(layout: Layout, model: ModelConfig, device_type: str) -> list[str]:
    """``check_layout``'s rules for the plan's devices; notes on what the simulation leaves out."""
    notes = []
    if layout.cp > 1:
        # The mesh, FSDP over dp_shard*cp and every shard are those of the plan; only the
        # ring-attention kernels are missing, and they hold no parameters.
        notes.append(f"cp={layout.cp}: context parallelism is not implemented in the trainer yet; its "
                     "parameter sharding (FSDP over dp_shard*cp) is simulated, its attention is not")
        layout = layout.replace(cp=1)
    check_layout(layout, model, device_type)
    return notes


def _resident_bytes(pmodel, optimizer_cfg) -> dict[str, float]:
    from alphaexa.train.optim import build_optimizer

    local = [p.to_local() if isinstance(p, DTensor) else p for p in pmodel.parameters()]
    measured = {"params": float(sum(t.numel() * t.element_size() for t in local))}
    # FSDP2's reduce-scatter leaves the gradient shard in the reduce dtype: fp32 here.
    measured["grads"] = float(sum(t.numel() for t in local) * (torch.finfo(torch.float32).bits // 8))
    # The trainer's AdamW stepped once on meta tensors of the local shards' shapes: its state is
    # elementwise per shard, so this is the state a real step creates, without DTensor dispatch
    # (which costs minutes over thousands of sharded parameters).
    shards = [torch.nn.Parameter(torch.empty_like(t, device="meta")) for t in local]
    for shard in shards:
        shard.grad = torch.zeros_like(shard)
    optimizer = build_optimizer([torch.nn.ParameterList(shards)], optimizer_cfg, "cpu")
    optimizer.step()
    state = [t for per_param in optimizer.state.values() for t in per_param.values() if torch.is_tensor(t)]
    measured["optimizer"] = float(sum(t.numel() * t.element_size() for t in state))
    return measured


def simulate_rank(model: ModelConfig, layout: Layout, rank: int, role: str, request: Request) -> RankReport:
    """Build ``rank``'s share of the parallelized model under a fake process group and measure it."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from alphaexa.train.config import TrainSection

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=layout.world)
    try:
        dims = build_mesh(layout, get_backend("cpu"), torch.device("cpu"))
        with torch.device("meta"):
            meta_model = Transformer(model)
        pmodel = parallelize(meta_model, dims, compute_dtype=torch.bfloat16)
        measured = _resident_bytes(pmodel, TrainSection())
        predicted = resident_state_bytes(request, layout, dims.pp_rank)
        return RankReport(rank, role, pmodel.stage_ids, measured, predicted, fullest=role != LAST_RANK)
    finally:
        dist.destroy_process_group()


def verify(request: Request, layout: Layout) -> tuple[dict, list[RankReport], list[str]]:
    """Simulate the sampled ranks of ``layout``: (the plan JSON's ``verify`` object, reports, notes)."""
    started = time.perf_counter()
    # The plan is for the system's accelerators; check_layout only tells CPU from the rest.
    notes = check_simulated_layout(layout, request.model, "accelerator")
    reports = [simulate_rank(request.model, layout, rank, role, request) for rank, role in sample_ranks(layout)]
    worst = max(r.rel_error for r in reports)
    return ({"ranks": [r.to_dict() for r in reports], "max_rel_error": round(worst, 6),
             "seconds": round(time.perf_counter() - started, 2)}, reports, notes)


def verify_table(reports: list[RankReport], verdict: dict, layout: Layout) -> str:
    head = ("rank", "role", "stages", *(f"{k} GiB meas/pred" for k in KEYS), "error")
    rows = [(str(r.rank), r.role, ",".join(map(str, r.stages)),
             *(f"{r.measured[k] / GIB:.2f}/{r.predicted[k] / GIB:.2f}" for k in KEYS), f"{100 * r.rel_error:.2f}%")
            for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [(f"simulated {len(reports)} of {layout.world} ranks of {layout.short()} on the meta device "
              f"(fake process group) in {verdict['seconds']:.1f} s"),
             "  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    worst = verdict["max_rel_error"]
    ok = worst <= TOLERANCE
    lines.append(f"verdict: {'OK' if ok else 'MISMATCH'}: parameter, gradient and optimizer bytes of every sampled "
                 f"rank {'within' if ok else 'beyond'} {100 * TOLERANCE:.0f}% of the planner (worst "
                 f"{100 * worst:.2f}%)")
    return "\n".join(lines)


def layout_of_plan_file(plan: dict, request: Request) -> Layout:
    """The best layout of a plan JSON, after checking it was made for ``request``'s model and world."""
    try:
        saved_model, saved_world = ModelConfig.from_dict(plan["model"], where="plan model"), plan["request"]["world"]
        best = plan["plans"][0]["layout"]
    except (KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"the plan file has no usable best layout (missing {e})") from None
    if saved_model.to_dict() != request.model.to_dict():
        raise ConfigError(f"the plan is for model {saved_model.name!r}, not {request.model.name!r}")
    if saved_world != request.world:
        raise ConfigError(f"the plan is for {saved_world} ranks, this request has {request.world}")
    layout = Layout.from_dict(best, where="plan layout")
    layout.validate(world=request.world, model=request.model, global_batch=request.global_batch,
                    seq_len=request.seq_len)
    return layout
