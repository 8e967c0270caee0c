"""The LM head and the token cross-entropy fused, chunk by chunk, without the full fp32 logits.

``F.cross_entropy(output(h).float(), targets)`` holds the (tokens x vocab) logits in the compute
dtype, again in fp32, and their gradient: at 16k tokens and a 32k vocabulary that is 6 GiB
for one micro-batch.  ``fused_linear_cross_entropy`` computes the logits of
``LOSS_CHUNK_TOKENS`` tokens at a time, their loss, and right away the gradients of that
chunk with respect to the hidden states and the head weight (the softmax minus the one-hot
targets, multiplied back through the head), so only one chunk's logits ever exist.  Backward
then only scales the stored gradients by the incoming gradient of the loss.  The arithmetic is
that of the unfused path: logits rounded to the compute dtype (bf16 under autocast), softmax and
loss in fp32, the logits' gradient rounded to the compute dtype for the two matrix products.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .layers import matmul_dtype

IGNORE_INDEX = -100
LOSS_CHUNK_TOKENS = 4096


def chunk_loss(h_c: Tensor, w: Tensor, y_c: Tensor, accumulate: torch.dtype):
    """One chunk's logits (``h_c @ w.T`` in ``accumulate``), which targets count (``valid``), the targets with the
    ignored ones at 0 (``safe``), each row's log-sum-exp and the chunk's summed loss."""
    logits = (h_c @ w.t()).to(accumulate)
    valid = y_c != IGNORE_INDEX
    safe = torch.where(valid, y_c, 0)
    log_z = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
    return logits, valid, safe, log_z, torch.where(valid, log_z - target_logit, 0.0).sum()


def _softmax_minus_targets(logits: Tensor, log_z: Tensor, safe: Tensor, valid: Tensor, columns: Tensor) -> Tensor:
    """The gradient of the summed loss with respect to one chunk's ``logits``: softmax minus the one-hot targets,
    zero on ignored rows.  Compiled, one elementwise expression of the logits and ``log_z``, so inductor reads the
    logits once and writes only what the caller rounds it to (an in-place scatter would need the fp32 softmax
    written out first, and a masking pass after it).  Eager, in place on ``logits`` (no longer needed by then):
    no fp32 temporary of the chunk's size beside it."""
    if torch.compiler.is_compiling():
        is_target = (columns == safe.unsqueeze(1)).to(logits.dtype)
        return torch.where(valid.unsqueeze(1), torch.exp(logits - log_z.unsqueeze(1)) - is_target, 0.0)
    grad = logits.sub_(log_z.unsqueeze(1)).exp_()
    grad.scatter_add_(1, safe.unsqueeze(1), torch.full_like(log_z, -1.0).unsqueeze(1))
    return grad.mul_(valid.unsqueeze(1))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are chosen, not cast
            return _FusedLinearCrossEntropy._forward(ctx, hidden, weight, targets, chunk, dtype, needs_grad)

    @staticmethod
    def _forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, dtype: torch.dtype,
                 needs_grad: bool) -> Tensor:
        h, w = hidden.to(dtype), weight.to(dtype)
        accumulate = torch.promote_types(dtype, torch.float32)
        total = torch.zeros((), dtype=accumulate, device=hidden.device)
        grad_hidden = torch.empty_like(h) if needs_grad else None
        grad_weight = None
        columns = torch.arange(w.shape[0], device=hidden.device)
        for start in range(0, h.shape[0], chunk):
            h_c, y_c = h[start:start + chunk], targets[start:start + chunk]
            logits, valid, safe, log_z, loss = chunk_loss(h_c, w, y_c, accumulate)
            total = total + loss
            if needs_grad:
                grad_logits = _softmax_minus_targets(logits, log_z, safe, valid, columns).to(dtype)
                grad_hidden[start:start + chunk] = grad_logits @ w
                part = (grad_logits.t() @ h_c).to(accumulate)
                if grad_weight is None:  # the first chunk's product is the sum so far: no zero fill, no extra pass
                    grad_weight = part
                else:
                    grad_weight += part
        if needs_grad:
            if grad_weight is None:  # no tokens
                grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device)
            ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        scale = grad_total.to(grad_weight.dtype)
        return ((grad_hidden * scale.to(grad_hidden.dtype)).to(hidden_dtype) if ctx.needs_input_grad[0] else None,
                (grad_weight * scale).to(weight_dtype) if ctx.needs_input_grad[1] else None, None, None, None)


def fused_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor,
                               chunk_tokens: int = LOSS_CHUNK_TOKENS) -> Tensor:
    """Summed token cross-entropy of ``hidden @ weight.T`` against ``targets`` (``IGNORE_INDEX`` skipped).

    ``hidden`` (..., d), ``weight`` (vocab, d), ``targets`` (...) of hidden's leading shape; the
    result is an fp32 (fp64 for fp64 inputs) scalar with gradients for ``hidden`` and ``weight``.
    """
    return _FusedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                          chunk_tokens, matmul_dtype(hidden))


__all__ = ["IGNORE_INDEX", "LOSS_CHUNK_TOKENS", "chunk_loss", "fused_linear_cross_entropy"]
