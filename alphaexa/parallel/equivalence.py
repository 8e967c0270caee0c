"""The single-process reference that parallel layouts are checked against (tests and bench/ scripts).

Every layout must reproduce, up to the order of floating-point sums, what one process computes
when it trains the plain model on the same token batches split into the same micro-steps.
"""
from __future__ import annotations

import torch

from alphaexa.model import moe_layers

from .train_step import summed_cross_entropy


def token_batches(steps: int, global_batch: int, seq: int, vocab: int,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random tokens, (steps, global_batch, seq) inputs and the same shifted by one as targets."""
    tokens = torch.randint(0, vocab, (steps, global_batch, seq + 1), generator=torch.Generator().manual_seed(1))
    return tokens[..., :-1].to(device), tokens[..., 1:].to(device)


def reference_history(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                      targets: torch.Tensor, micro_steps: int, max_norm: float) -> list[tuple[float, float]]:
    """Train ``model`` in one process, one step per leading index of ``inputs``, each step's batch
    split into ``micro_steps`` chunks: [(mean loss, gradient norm before clipping)] per step."""
    # The MoE auxiliary losses are summed over micro-steps, so each counts 1/micro_steps as in the layouts.
    for moe in moe_layers(model).values():
        moe.aux_loss_scale = 1.0 / micro_steps
    out = []
    for s in range(inputs.shape[0]):
        total = 0.0
        for x, y in zip(inputs[s].chunk(micro_steps), targets[s].chunk(micro_steps)):
            loss = summed_cross_entropy(model(x), y) / targets[s].numel()
            loss.backward()
            total += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        optimizer.zero_grad()
        out.append((total, float(norm)))
    return out
