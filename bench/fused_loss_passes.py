"""The fused LM head + cross-entropy (alphaexa/model/loss.py) against its session-15 formulation, compiled.

    python bench/fused_loss_passes.py [--tokens 16384] [--vocab 32000] [--dim 2048] [--chunk 4096]

Session 16 rewrote the per-chunk gradient of the fused loss: the softmax minus the one-hot targets is now one
elementwise expression of the logits and their log-sum-exp (``exp(logit - log_z) - is_target``, masked), where
session 15 materialised the softmax in fp32, scattered -1 into it in place and masked it in another pass; and the
head's fp32 gradient starts from the first chunk's product instead of a zero fill.  This prints both, compiled
(``fullgraph``), forward + backward of the loss alone at the ``1b`` preset's shape (8 x 2048 tokens, vocabulary
32000, width 2048, bf16 under autocast as the trainer runs it): milliseconds, peak memory above what was held, and
how far each one's loss and gradients are from the unfused loss (the full logits, fp32 cross-entropy) and from each
other.  Inside a compiled graph the loss takes the one-expression form; run eagerly it works in place on the logits
(``_softmax_minus_targets``), which ``tests/test_speed_levers.py`` checks.  On CPU it runs at a small shape and its
times mean little.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaexa.model.loss import IGNORE_INDEX, _FusedLinearCrossEntropy, chunk_loss, fused_linear_cross_entropy


class _Session15(_FusedLinearCrossEntropy):
    """Session 15's forward (softmax, in-place scatter, mask, zero-filled fp32 head gradient), kept here only to
    compare against; the backward is the module's."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            accumulate = torch.promote_types(dtype, torch.float32)
            total = torch.zeros((), dtype=accumulate, device=hidden.device)
            grad_hidden = torch.empty_like(h)
            grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device)
            for start in range(0, h.shape[0], chunk):
                h_c, y_c = h[start:start + chunk], targets[start:start + chunk]
                logits, valid, safe, log_z, loss = chunk_loss(h_c, w, y_c, accumulate)
                total = total + loss
                grad_logits = torch.softmax(logits, dim=-1)
                grad_logits.scatter_add_(1, safe.unsqueeze(1), torch.full_like(log_z, -1.0).unsqueeze(1))
                grad_logits = (grad_logits * valid.unsqueeze(1)).to(dtype)
                grad_hidden[start:start + chunk] = grad_logits @ w
                grad_weight += (grad_logits.t() @ h_c).to(accumulate)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total


def _differences(reference: list, other: list) -> str:
    """``loss |diff| D of L; gradients' max |diff| / max: H, W`` (hidden's, then the head weight's)."""
    loss, grads = reference[0], reference[1:]
    return (f"loss |diff| {float((other[0] - loss).abs()):.3g} of {float(loss):.6g}; gradients' max |diff| / max: "
            + ", ".join(f"{float((b - a).abs().max() / a.abs().max()):.2g}" for a, b in zip(grads, other[1:])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--tokens", type=int, default=16384 if cuda else 2048)
    parser.add_argument("--vocab", type=int, default=32000 if cuda else 8000)
    parser.add_argument("--dim", type=int, default=2048 if cuda else 256)
    parser.add_argument("--chunk", type=int, default=4096 if cuda else 512)
    parser.add_argument("--iters", type=int, default=20 if cuda else 3)
    args = parser.parse_args(argv)
    device = "cuda" if cuda else "cpu"
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(args.tokens, args.dim, generator=gen).to(device).requires_grad_(True)
    weight = (torch.randn(args.vocab, args.dim, generator=gen) * args.dim ** -0.5).to(device).requires_grad_(True)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(device)
    targets[:7] = IGNORE_INDEX
    variants = {
        "session 15": lambda h, w, y: _Session15.apply(h, w, y, args.chunk, torch.bfloat16),
        "now": lambda h, w, y: fused_linear_cross_entropy(h, w, y, chunk_tokens=args.chunk),
    }
    results = {}
    for name, fn in variants.items():
        compiled = torch.compile(fn, fullgraph=True)

        def step(compiled=compiled):
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = compiled(hidden, weight, targets)
            return [t.detach() for t in (loss, *torch.autograd.grad(loss, (hidden, weight)))]

        for _ in range(3):
            out = step()
        del out
        if cuda:  # the peak above what is held before the timed steps (the other variant's results included)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            held = torch.cuda.memory_allocated()
        begin = time.perf_counter()
        for _ in range(args.iters):
            out = step()
        if cuda:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - begin) / args.iters * 1e3
        peak = (torch.cuda.max_memory_allocated() - held) / 2**30 if cuda else float("nan")
        results[name] = out
        print(f"{name:>10}: {ms:8.3f} ms forward + backward, peak {peak:.2f} GiB above what was held", flush=True)
    # the unfused loss (the full logits under autocast, cross-entropy in fp32), eager, as the reference for both
    with torch.autocast(device, dtype=torch.bfloat16):
        logits = hidden @ weight.t()
    loss = F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=IGNORE_INDEX)
    results["unfused"] = [t.detach() for t in (loss, *torch.autograd.grad(loss, (hidden, weight)))]
    for name in ("session 15", "now"):
        print(f"{name:>10} against the unfused loss: " + _differences(results["unfused"], results[name]))
    print(f"{'now':>10} against session 15: " + _differences(results["session 15"], results["now"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
