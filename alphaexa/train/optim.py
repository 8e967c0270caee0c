"""AdamW and the learning-rate schedules (linear warmup, then cosine, WSD or constant).

The learning rate is a pure function of the step, so a resumed run needs nothing but
the step counter to be on the same schedule (and it stays right when a resume
changes ``train.steps``: the schedule is the new run's).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .config import TrainSection


def learning_rate(step: int, cfg: TrainSection) -> float:
    """LR of optimizer step ``step`` (1-based).

    warmup: ``lr * step / warmup`` for step <= warmup (never 0 on the first step).
    cosine: from lr down to min_lr over the remaining steps, reaching min_lr at ``steps``.
    wsd: lr held until the last ``decay_fraction`` of the steps, then linear down to min_lr.
    constant: lr after warmup.
    """
    if cfg.warmup and step <= cfg.warmup:
        return cfg.lr * step / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    remaining = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, max(0.0, (step - cfg.warmup) / remaining))
    if cfg.schedule == "cosine":
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    # wsd
    decay_steps = max(1, round(cfg.decay_fraction * cfg.steps))
    decay_start = cfg.steps - decay_steps
    if step <= decay_start:
        return cfg.lr
    return cfg.lr + (cfg.min_lr - cfg.lr) * min(1.0, (step - decay_start) / decay_steps)


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Matrices and embeddings decay; vectors (norm gains, biases) do not."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for param in module.parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(modules: Iterable[nn.Module], cfg: TrainSection, device_type: str) -> torch.optim.AdamW:
    """AdamW over the parameters of ``modules`` (one optimizer for this rank's model chunks).

    ``optimizer_impl="auto"``: the fused kernel on accelerators, foreach (multi-tensor) on CPU,
    where the fused kernel gains little and DTensor parameters are best supported by foreach.
    """
    return torch.optim.AdamW(parameter_groups(modules, cfg.weight_decay), **_adamw_kwargs(cfg, device_type))


def _adamw_kwargs(cfg: TrainSection, device_type: str) -> dict:
    impl = cfg.optimizer_impl
    if impl == "auto":
        impl = "foreach" if device_type == "cpu" else "fused"
    kwargs = {"fused": impl == "fused", "foreach": impl == "foreach"}
    if impl == "for-loop":
        kwargs = {"foreach": False}
    return {"lr": learning_rate(1, cfg), "betas": tuple(cfg.betas), "eps": cfg.eps, **kwargs}


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_master_weight_optimizer(model: nn.Module, cfg: TrainSection, compiled: bool) -> torch.optim.Optimizer:
    """``model``'s compute weights stored in bf16 with fp32 masters, and the AdamW that updates both
    (``train.bf16_weights``, alphaexa.train.master_weights); the same groups and settings as ``build_optimizer``."""
    from .master_weights import MasterWeightAdamW, to_compute_weights

    device = next(model.parameters()).device
    # The settings torch's AdamW would hold here (fused, foreach, amsgrad, ...): a checkpoint's parameter groups
    # are then the ones a run without the option saves and expects.
    settings = torch.optim.AdamW([torch.zeros(1, device=device)], **_adamw_kwargs(cfg, device.type)).defaults
    masters = to_compute_weights(model)
    return MasterWeightAdamW(parameter_groups([model], cfg.weight_decay), masters, settings, compiled=compiled)
