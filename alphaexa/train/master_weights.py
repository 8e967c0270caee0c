"""bf16 compute weights with fp32 masters kept by the optimizer (``train.bf16_weights``).

Under ``torch.autocast`` a plain module keeps fp32 weights and every GEMM casts its weight to bf16: in the forward,
again in the backward (the cast is recomputed or its output saved), and the bf16 weight gradient is cast back to
fp32 for ``.grad``.  On a MoE model that is most of its parameters cast three times a step (the Mixtral-like shape
on an H100: 13.0 ms of weight casts and 6.7 ms of gradient casts in a 281 ms step, docs/performance.md), beside a
fused AdamW pass that reads and writes the fp32 weights, gradients and moments once more.

Here the weights that autocast only ever multiplies in bf16 are stored in bf16 (``compute_weight_modules``: the
blocks' linear layers, router included, and the stacked expert weights), their fp32 masters live beside the
optimizer's moments, and one update pass reads the bf16 gradient, the master and both moments and writes the
master, the moments and the bf16 copy (compiled into one fused kernel per tensor on accelerators).  The forward is
the autocast forward bit for bit (the bf16 copy is the master rounded to nearest, which is what autocast's cast
gives) and so are the gradients' values (the bf16 GEMM's output; autocast only widens it to fp32).

What stays as before:
* checkpoints: a module's ``state_dict`` holds the fp32 masters under the parameters' names (a state-dict hook), and
  loading one writes the masters and the rounded copies, so checkpoints are the same files as without the option
  and resume on any layout; the optimizer's state is torch's AdamW state (``step``, ``exp_avg``, ``exp_avg_sq``);
* the embedding, the norms and the LM head stay fp32 (the fused loss accumulates the head's gradient in fp32);
* the clip (its coefficient reaches the update as ``grad_scale``) and the device-side skip (``found_inf``), which
  the trainer hands over as to torch's fused AdamW.

Limits: one micro-batch a step (bf16 gradients would accumulate in bf16 across micro-batches), one rank's plain
module (FSDP2 has its own mixed precision), bf16 compute, not with float8 or offload; ``RunConfig.validate`` and
``Trainer`` refuse the rest with a message.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch._dynamo.exc import FailOnRecompileLimitHit

from ..model.moe import GroupedExperts
from ..model.transformer import Block

log = logging.getLogger("alphaexa.train")


def compute_weight_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose every parameter autocast multiplies in its compute dtype and nothing else reads: each
    block's ``nn.Linear`` layers (attention, dense FFN, router, shared experts) and its stacked experts."""
    found: list[nn.Module] = []
    for block in (m for m in model.modules() if isinstance(m, Block)):
        found += [m for m in block.modules() if isinstance(m, (nn.Linear, GroupedExperts))]
    return found


def to_compute_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[Tensor, Tensor]:
    """Store ``model``'s compute weights in ``dtype`` (the same Parameter objects) and return each one's fp32
    master (a copy of its value before the cast).  The model's ``state_dict`` then shows the masters and its
    ``load_state_dict`` writes them (hooks on ``model``)."""
    masters: dict[Tensor, Tensor] = {}
    for module in compute_weight_modules(model):
        for param in module.parameters(recurse=False):
            if param.dtype != torch.float32:
                raise ValueError(f"bf16 compute weights need fp32 weights to start from, got {param.dtype}")
            masters[param] = param.detach().clone()
        module.to(dtype)  # param.data replaced: the Parameter objects (and the optimizer's references) stay
    if not masters:
        raise ValueError("bf16 compute weights: the model has no block linear layers or experts")
    by_name = {name: masters[p] for name, p in model.named_parameters() if p in masters}

    def show_masters(_module: nn.Module, state: dict[str, Any], prefix: str, _metadata: Any) -> None:
        for name, master in by_name.items():
            if prefix + name in state:
                state[prefix + name] = master

    def load_masters(_module: nn.Module, state: dict[str, Any], prefix: str, *_args: Any) -> None:
        with torch.no_grad():
            for name, master in by_name.items():
                value = state.get(prefix + name)
                if isinstance(value, Tensor) and value is not master:
                    master.copy_(value)

    model.register_state_dict_post_hook(show_masters)
    model.register_load_state_dict_pre_hook(load_masters)
    return masters


def _adamw_update(copy: Tensor | None, master: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                  step: Tensor, lr: Tensor, beta2: Tensor, one_minus_beta1: Tensor, one_minus_beta2: Tensor,
                  log_beta1: Tensor, log_beta2: Tensor, eps: Tensor, weight_decay: Tensor, grad_scale: Tensor,
                  found_inf: Tensor) -> None:
    """torch's AdamW (decoupled decay, bias-corrected moments, ``exp_avg.lerp_``) on one fp32 ``master``, its
    gradient divided by ``grad_scale`` as it is read; nothing changes where ``found_inf`` is nonzero.  A bf16
    ``compute`` copy gets the new master rounded to nearest.  Compiled: one kernel, one pass over each tensor; the
    tensors come as ``_flat`` makes them and their size is symbolic, so a model takes two graphs, one with a bf16
    copy and one without (``MasterWeightAdamW`` says why and what happens past torch's recompile limit).  Every
    scalar is a 0-d tensor: with python floats torch 2.13's compile under ``dynamic=True`` updated a second parameter
    group's weights several times too far on CPU (tests/test_bf16_weights.py).

    The bias corrections are ``-expm1(step * log(beta))``, not ``1 - beta ** step``: with beta2 = 0.999 the
    subtraction cancels three digits, so an fp32 ``pow`` one ulp off (inductor's CUDA ``pow`` against the eager one)
    moved the update by ~3e-5 of itself, and the CUDA test of the compiled update failed on it; ``1 - beta`` and
    ``log(beta)`` come from the optimizer's python floats (double), rounded once to fp32."""
    keep = found_inf == 0
    g = grad.to(torch.float32) / grad_scale
    new_step = torch.where(keep, step + 1, step)
    bias1 = -torch.expm1(new_step * log_beta1)
    bias2 = -torch.expm1(new_step * log_beta2)
    m = exp_avg.lerp(g, one_minus_beta1)
    v = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    w = master * (1 - lr * weight_decay)
    w = w - (lr / bias1) * m / (v.sqrt() / bias2.sqrt() + eps)
    master.copy_(torch.where(keep, w, master))
    exp_avg.copy_(torch.where(keep, m, exp_avg))
    exp_avg_sq.copy_(torch.where(keep, v, exp_avg_sq))
    step.copy_(new_step)
    if copy is not None:
        copy.copy_(master)


def _flat(t: Tensor) -> Tensor:
    """``t``'s elements as a 1-D tensor over the same memory that is not a view of ``t``.  ``view(-1)`` alone is a
    view, and dynamo guards a view input's base (its rank and strides, equalities between its sizes, sizes 0 and 1
    specialised), so differently shaped bases took graphs of their own: 4 or 5 for each preset (5 for ``tiny-moe``
    and ``1b-moe``), 9 for tests/test_bf16_weights.py's shapes, where the ninth, past torch's ``recompile_limit``
    of 8, was a hard error.  ``detach`` keeps the memory and drops the link to the base: dynamo sees a contiguous
    1-D tensor of symbolic size, 2 graphs for all of those, and the update's results are the same bit for bit
    (inductor on CPU, ``tiny-moe``, four steps).  Marking the size unbacked (``mark_unbacked``) would also cover
    sizes 0 and 1, but inductor then writes every result through a scratch buffer of the tensor's size (CPU output
    code), so it is not done.  ``t`` must be contiguous: the update writes through the result."""
    return t.view(-1).detach()


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW over a module's parameters where some are bf16 compute copies of fp32 ``masters``
    (``to_compute_weights``); the others (fp32) are their own masters.

    Like torch's fused AdamW it reads ``found_inf`` (skip the step on the device) and ``grad_scale`` (divide each
    gradient by it: the folded clip) from its attributes when they are set (``Trainer._step_optimizers``).  Its
    ``state_dict`` is torch AdamW's (the masters are the model's state, not the optimizer's), and loading one
    keeps the moments in fp32.

    Compiled (``compiled``; ``backend`` is torch.compile's), the update takes two graphs whatever the parameters'
    shapes: every tensor reaches it flattened by ``_flat`` (1-D, contiguous, not a view) with a symbolic size, so
    only the bf16 copy's presence (and the gradient's dtype with it) tells graphs apart.  Dynamo still specialises
    sizes 0 and 1, so one-element (or empty) tensors add a graph with a copy and one without: at most 6, under
    torch's ``recompile_limit`` of 8.  Should a graph still be refused (``FailOnRecompileLimitHit``, a hard error
    under ``fullgraph=True``: another torch, a lower limit), that tensor takes the eager update from then on and one
    warning says so; the run goes on.
    """

    takes_found_inf = True  # and grad_scale, as torch's fused kernels do

    def __init__(self, params: Iterable[Any], masters: dict[Tensor, Tensor], settings: dict[str, Any],
                 compiled: bool, backend: Any = "inductor"):
        """``settings``: a torch AdamW's ``defaults`` (lr, betas, eps, weight_decay and its implementation flags,
        kept in the parameter groups so that checkpoints hold what an AdamW run's hold; amsgrad, maximize and
        capturable must be off)."""
        unsupported = [key for key in ("amsgrad", "maximize", "capturable", "differentiable") if settings.get(key)]
        if unsupported or not settings.get("decoupled_weight_decay", True):
            raise ValueError(f"MasterWeightAdamW does not do {', '.join(unsupported) or 'coupled weight decay'}")
        super().__init__(params, dict(settings))
        self.masters = masters
        self._update = (torch.compile(_adamw_update, fullgraph=True, dynamic=True, backend=backend) if compiled
                        else _adamw_update)
        self._eager: set[Tensor] = set()  # parameters whose graph torch refused (recompile limit): eager update
        self._scalars: dict[tuple[torch.device, int], tuple[Tensor, ...]] = {}
        for group in self.param_groups:  # state made now: checkpoints see AdamW's keys before the first step
            for p in group["params"]:
                self._init_state(p)

    def _init_state(self, p: Tensor) -> None:
        master = self.masters.get(p, p)
        if master.dtype != torch.float32:
            raise ValueError(f"MasterWeightAdamW keeps fp32 masters; a {p.dtype} parameter has none")
        self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                         "exp_avg": torch.zeros_like(master), "exp_avg_sq": torch.zeros_like(master)}

    def _device_scalars(self, device: torch.device, group: dict[str, Any]) -> tuple[Tensor, ...]:
        """lr (refilled at every step: the schedule changes it), beta2, 1 - beta1, 1 - beta2, log(beta1), log(beta2)
        (computed in double), eps, weight decay, a grad_scale of 1 and a found_inf of 0 as float32 tensors on
        ``device``, one set per group and device."""
        key = (device, id(group))
        if key not in self._scalars:
            beta1, beta2 = (float(b) for b in group["betas"])
            logs = tuple(math.log(b) if b > 0 else -math.inf for b in (beta1, beta2))
            values = (group["lr"], beta2, 1.0 - beta1, 1.0 - beta2, *logs, group["eps"], group["weight_decay"], 1.0,
                      0.0)
            self._scalars[key] = tuple(torch.tensor(float(v), dtype=torch.float32, device=device) for v in values)
        return self._scalars[key]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("MasterWeightAdamW takes no closure")
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            if not with_grad:
                continue
            if any(p.grad.is_sparse for p in with_grad):
                raise ValueError("MasterWeightAdamW does not take sparse gradients")
            device = with_grad[0].device
            *hyper, one, zero = self._device_scalars(device, group)
            hyper[0].fill_(group["lr"])
            settings = (*hyper, one if grad_scale is None else grad_scale, zero if found_inf is None else found_inf)
            for p in with_grad:
                state = self.state[p]
                master = self.masters.get(p)
                args = (None if master is None else _flat(p), _flat(p if master is None else master),
                        p.grad.reshape(-1).detach(), _flat(state["exp_avg"]), _flat(state["exp_avg_sq"]),
                        state["step"], *settings)
                if p not in self._eager:
                    try:
                        self._update(*args)
                        continue
                    except FailOnRecompileLimitHit:  # raised before the graph runs: nothing was written yet
                        if not self._eager:
                            log.warning("MasterWeightAdamW: torch refused another graph of the update (recompile "
                                        "limit); the tensors it refuses take the eager update")
                        self._eager.add(p)
                _adamw_update(*args)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``Optimizer.load_state_dict`` casts every state tensor to its parameter's dtype (bf16 moments
        here): this one keeps them fp32 on the parameter's device; the groups' settings are taken as torch does."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, self.param_groups)):
            raise ValueError("the loaded optimizer state has other parameter groups than this optimizer")
        by_id = {saved_id: p for s, g in zip(saved_groups, self.param_groups) for saved_id, p in zip(s["params"], g["params"])}
        for saved_id, values in state_dict["state"].items():
            p = by_id[saved_id]
            self.state[p] = {key: value.to(device=p.device, dtype=torch.float32) if isinstance(value, Tensor) else value
                             for key, value in values.items()}
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({key: value for key, value in saved.items() if key != "params"})
        self._scalars.clear()  # the loaded groups' betas, eps and decay
