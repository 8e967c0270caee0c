"""Mixture-of-Experts feed-forward: top-k router, capacity or dropless dispatch, grouped experts.

Semantics (docs/model.md has the longer version):

* Router: ``gate`` (d_model -> n_experts, no bias); softmax over the experts in
  fp32; in training the router input may be multiplied by uniform noise in
  ``[1 - jitter, 1 + jitter]``.  Each token picks its ``top_k`` experts.
* Combine weights are the chosen experts' softmax probabilities, NOT
  renormalised over the top k: the router then gets a gradient from the
  language-model loss even with top-1, and a token's output scale reflects the
  router's confidence.
* Capacity (training only, ``capacity_factor > 0``): each expert takes at most
  ``ceil(capacity_factor * tokens * top_k / n_experts)`` assignments.  Priority:
  every token's first choice, in token order, then every second choice, and so
  on; an expert accepts until full and the rest are dropped (they contribute
  zero; the residual connection carries the token).  ``capacity_factor == 0``
  and evaluation mode are dropless, so a token's output in evaluation does not
  depend on the other tokens in the batch.
* Losses: load balance ``aux = n_experts * sum_i f_i * P_i`` with ``f_i`` the
  fraction of routed assignments (before dropping) that chose expert ``i``
  (``count_i / (tokens * top_k)``, so uniform routing gives exactly 1) and
  ``P_i`` the mean router probability of ``i``; ``z = mean(logsumexp(logits)^2)``.
  They reach the backward pass through ``AuxLossInjector`` instead of being
  returned, so pipeline stages need not carry them; each MoE layer adds its own
  ``aux_loss_coef * aux + z_loss_coef * z`` (summed over layers), scaled by
  ``MoE.aux_loss_scale``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from topology.modelcfg import ModelConfig

from .layers import FeedForward, activate, matmul_dtype


class AuxLossInjector(torch.autograd.Function):
    """Identity on the activation; its backward also sends ``scale`` as the gradient of ``loss``.

    The effect equals adding ``scale * loss`` to the final loss, without the loss
    having to travel to the end of the model (or of the pipeline).
    """

    @staticmethod
    def forward(ctx, activation: Tensor, loss: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        ctx.loss_meta = (loss.shape, loss.dtype, loss.device)
        return activation

    @staticmethod
    def backward(ctx, grad_activation: Tensor):
        shape, dtype, device = ctx.loss_meta
        return grad_activation, torch.full(shape, ctx.scale, dtype=dtype, device=device), None


def grouped_mm_usable(x: Tensor, weight: Tensor) -> bool:
    """Whether ``torch._grouped_mm`` can multiply ``x`` (N, K) by ``weight`` (E, K, M) here.

    It exists since torch 2.8; its CPU kernel (2.9+) takes float32 and bfloat16,
    its CUDA kernel bfloat16, and both need every stride and pointer aligned to
    16 bytes.  Under torch.compile its shape function (torch 2.13) takes bfloat16 only.
    """
    if not hasattr(torch, "_grouped_mm"):
        return False
    compiling = torch.compiler.is_compiling()
    cpu = (torch.bfloat16,) if compiling else (torch.float32, torch.bfloat16)
    allowed = {"cpu": cpu, "cuda": (torch.bfloat16,)}
    if x.dtype not in allowed.get(x.device.type, ()) or weight.dtype != x.dtype:
        return False
    size = x.element_size()
    strides = (*x.stride(), *weight.stride())
    if not all(s * size % 16 == 0 for s in strides if s != 1):
        return False
    # Inside a compiled graph pointers cannot be read, and need not be: inductor copies
    # misaligned graph inputs, and its own buffers are aligned.
    return compiling or (x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


class GroupedExperts(nn.Module):
    """``n_experts`` FFNs stored as stacked 3-D weights, so expert parallelism can shard dim 0.

    ``w1`` (E, d, f) up, ``w3`` (E, d, f) gate (SwiGLU only), ``w2`` (E, f, d) down.
    """

    # Tests and benchmarks turn this off to compare against the per-expert loop.
    use_grouped_mm: ClassVar[bool] = True

    def __init__(self, n_experts: int, d_model: int, hidden: int, ffn_type: str):
        super().__init__()
        self.ffn_type = ffn_type
        self.w1 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.w3 = nn.Parameter(torch.empty(n_experts, d_model, hidden)) if ffn_type == "swiglu" else None

    def forward(self, x: Tensor, tokens_per_expert: Tensor) -> Tensor:
        """``x`` (N, d): tokens sorted by expert, ``tokens_per_expert[e]`` of them for local expert e."""
        # Under autocast the weights are fp32 masters: multiply in autocast's dtype as nn.Linear
        # would (torch._grouped_mm is not on autocast's list, and takes bf16 on CUDA).
        dtype = matmul_dtype(x)
        x = x.to(dtype).contiguous()
        w1, w2 = self.w1.to(dtype), self.w2.to(dtype)
        w3 = self.w3.to(dtype) if self.w3 is not None else None
        if self.use_grouped_mm and grouped_mm_usable(x, w1) and grouped_mm_usable(x, w2):
            offsets = tokens_per_expert.cumsum(0).to(torch.int32)
            gate = torch._grouped_mm(x, w3, offs=offsets) if w3 is not None else None
            hidden = activate(self.ffn_type, torch._grouped_mm(x, w1, offs=offsets), gate)
            return torch._grouped_mm(hidden, w2, offs=offsets)
        outputs = []
        for e, chunk in enumerate(torch.split(x, tokens_per_expert.tolist())):
            gate = chunk @ w3[e] if w3 is not None else None
            outputs.append(activate(self.ffn_type, chunk @ w1[e], gate) @ w2[e])
        return torch.cat(outputs) if outputs else x.new_zeros(0, w2.shape[-1])


class MoE(nn.Module):
    """Routed experts (+ optional always-on shared experts) replacing a block's dense FFN.

    After each forward the module keeps, detached, for logging: ``aux_loss``,
    ``z_loss`` (as seen after ``stats_reduce_hook``), ``tokens_per_expert``
    (LongTensor (E,), this rank's routed assignments before dropping) and
    ``dropped_tokens`` (assignments dropped for capacity).
    """

    # Multiplies the injected aux/z-loss gradient; the trainer sets it, e.g. to
    # 1 / gradient-accumulation steps (class-wide, or per instance).
    aux_loss_scale: ClassVar[float] = 1.0
    # True while a forward is no micro-batch of a step (a pipeline stage learning its shapes on the first
    # step, alphaexa.parallel.pipeline): its figures are not the step's and the trainer skips them.
    inferring_shapes: bool = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts = cfg.n_experts
        self.top_k = cfg.top_k
        self.capacity_factor = cfg.capacity_factor
        self.router_jitter = cfg.router_jitter
        self.aux_loss_coef = cfg.aux_loss_coef
        self.z_loss_coef = cfg.z_loss_coef
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = GroupedExperts(cfg.n_experts, cfg.d_model, cfg.moe_d_ff, cfg.ffn_type)
        # n shared experts of width f equal one FFN of width n * f (hidden units just concatenate).
        self.shared_experts = (FeedForward(cfg.d_model, cfg.n_shared_experts * cfg.moe_d_ff, cfg.ffn_type)
                               if cfg.n_shared_experts else None)
        # Called on the packed routing statistics [counts (E), probability sums (E),
        # sum of logsumexp^2, token count] (float32, detached) before the losses are
        # formed; returns the same layout summed over other ranks, which makes the
        # losses independent of how tokens are split across data/expert-parallel
        # ranks.  ``set_stats_reduce_hook`` sets it on every MoE layer of a model.
        self.stats_reduce_hook: Callable[[Tensor], Tensor] | None = None
        self.aux_loss: Tensor | None = None
        self.z_loss: Tensor | None = None
        self.tokens_per_expert: Tensor | None = None
        self.dropped_tokens: Tensor | None = None

    def capacity(self, n_tokens: int) -> int | None:
        """Assignments each expert accepts, or None for dropless."""
        if self.capacity_factor <= 0 or not self.training:
            return None
        # round() first so that e.g. 1.25 * 8 * 2 / 4 = 5.000000000000001 gives 5, not 6.
        return math.ceil(round(self.capacity_factor * n_tokens * self.top_k / self.n_experts, 9))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        n_tokens = tokens.shape[0]
        router_input = tokens
        if self.training and self.router_jitter > 0:
            noise = torch.empty_like(tokens).uniform_(1 - self.router_jitter, 1 + self.router_jitter)
            router_input = tokens * noise
        logits = self.gate(router_input)
        # Routing in at least fp32 (float64 stays float64, for tests).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        probs = logits.softmax(dim=-1)
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)

        # Assignment a = rank * n_tokens + token: all first choices in token order, then
        # all second choices, ...  A stable sort by expert keeps that priority inside
        # each expert's group, so "the first `capacity` of each group" is the rule.
        flat_experts = top_experts.t().reshape(-1)
        # Counted by scatter_add, not bincount: a fixed output shape (no host sync on CUDA, no
        # graph break under torch.compile).
        routed_counts = torch.zeros(self.n_experts, dtype=torch.long, device=x.device).scatter_add_(
            0, flat_experts, torch.ones_like(flat_experts))
        order = torch.sort(flat_experts, stable=True).indices
        capacity = self.capacity(n_tokens)
        if capacity is None:
            tokens_per_expert = routed_counts
        else:
            group_start = routed_counts.cumsum(0) - routed_counts
            rank_in_expert = torch.arange(order.numel(), device=x.device) - group_start[flat_experts[order]]
            order = order[rank_in_expert < capacity]
            tokens_per_expert = routed_counts.clamp(max=capacity)
        token_of = order % n_tokens
        weights = top_probs.t().reshape(-1)[order]

        # On a GPU the gather's backward and index_add add a token's k copies with atomic adds, in the device's
        # timing order; under torch's deterministic mode (train.deterministic) both take torch's deterministic
        # kernels, which the H200 measured faster than an atomic-free rewrite (bench/moe_combine_determinism.py)
        expert_out = self._run_experts(tokens[token_of], tokens_per_expert)
        weighted = (expert_out * weights.unsqueeze(1).to(expert_out.dtype)).to(tokens.dtype)  # bf16 under autocast
        out = torch.zeros_like(tokens).index_add(0, token_of, weighted)
        if self.shared_experts is not None:
            out = out + self.shared_experts(tokens)

        aux, z = self._losses(logits, probs, routed_counts, n_tokens)
        self.aux_loss, self.z_loss = aux.detach(), z.detach()
        self.tokens_per_expert = routed_counts.detach()
        self.dropped_tokens = (routed_counts.sum() - tokens_per_expert.sum()).detach()
        if self.training and torch.is_grad_enabled() and (self.aux_loss_coef or self.z_loss_coef):
            penalty = self.aux_loss_coef * aux + self.z_loss_coef * z
            out = AuxLossInjector.apply(out, penalty, float(self.aux_loss_scale))
        return out.view(shape)

    def _run_experts(self, sorted_tokens: Tensor, tokens_per_expert: Tensor) -> Tensor:
        """Expert outputs for tokens grouped by expert (the step expert parallelism replaces
        with all-to-all dispatch -> local experts -> all-to-all combine)."""
        return self.experts(sorted_tokens, tokens_per_expert)

    def _losses(self, logits: Tensor, probs: Tensor, routed_counts: Tensor, n_tokens: int) -> tuple[Tensor, Tensor]:
        stats = torch.cat([routed_counts.float(), probs.sum(0),
                           torch.logsumexp(logits, dim=-1).square().sum().unsqueeze(0),
                           logits.new_full((1,), float(n_tokens))])
        hook = self.stats_reduce_hook
        if hook is not None:
            # Value: the reduced statistics; gradient: through this rank's own terms only.
            local = stats.detach()
            stats = stats + (hook(local) - local)
        e = self.n_experts
        counts, prob_sums, z_sum, total = stats[:e], stats[e:2 * e], stats[2 * e], stats[2 * e + 1]
        fraction = counts / (total * self.top_k)
        mean_prob = prob_sums / total
        return e * (fraction * mean_prob).sum(), z_sum / total


def moe_layers(model: nn.Module) -> dict[str, MoE]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoE)}


def set_stats_reduce_hook(model: nn.Module, hook: Callable[[Tensor], Tensor] | None) -> None:
    for layer in moe_layers(model).values():
        layer.stats_reduce_hook = hook


def moe_metrics(model: nn.Module) -> dict[str, float]:
    """Routing figures of the last forward, for the metrics log: mean aux and z-loss over MoE
    layers, the fraction of assignments dropped, and the busiest expert's share of assignments
    relative to an even share (1.0 = perfectly balanced)."""
    layers = [m for m in moe_layers(model).values() if m.aux_loss is not None]
    if not layers:
        return {}
    counts = torch.stack([m.tokens_per_expert.float() for m in layers])
    routed = counts.sum(1)
    return {
        "moe_aux_loss": float(torch.stack([m.aux_loss for m in layers]).mean()),
        "moe_z_loss": float(torch.stack([m.z_loss for m in layers]).mean()),
        "moe_dropped_fraction": float(torch.stack([m.dropped_tokens.float() for m in layers]).sum() / routed.sum()),
        "moe_max_load": float((counts.max(1).values * counts.shape[1] / routed).mean()),
    }


__all__ = ["AuxLossInjector", "GroupedExperts", "MoE", "grouped_mm_usable", "moe_layers", "moe_metrics",
           "set_stats_reduce_hook"]
