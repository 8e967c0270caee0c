"""The MoE layer's dispatch and combine on a GPU, three ways: alphaexa's index_add path as it runs by default
(a token's k copies accumulated with atomic adds), the same under torch's deterministic mode (what
``train.deterministic`` runs: torch's deterministic index_add and index backward), and an atomic-free rewrite
(each assignment its own row, the k results summed over the choice axis; tried in session 8 and measured slower
than torch's deterministic kernels, so it stays here).  For each: forward + backward time at the ``1b-moe``
preset's MoE shape, and whether repeated runs from the same inputs give the same bits (output, input gradient,
expert-weight gradients).  Prints a line per path and the time ratios to the default; writes JSON.

    python3 bench/moe_combine_determinism.py OUT_DIR [--tokens 16384] [--repeats 5] [--iters 20]

Needs a CUDA GPU (the point is the device's atomics); exits with a one-line error elsewhere.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaexa.model.moe import MoE
from topology.presets import get_preset


class AtomicFreeMoE(MoE):
    """Dispatch and combine without atomic adds: each assignment its own row, a token's k results summed in order."""

    def forward(self, x):  # the routing part as MoE.forward, the two index paths as before
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        n_tokens = tokens.shape[0]
        logits = self.gate(tokens).float()
        probs = logits.softmax(dim=-1)
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)
        flat_experts = top_experts.t().reshape(-1)
        counts = torch.zeros(self.n_experts, dtype=torch.long, device=x.device).scatter_add_(
            0, flat_experts, torch.ones_like(flat_experts))
        order = torch.sort(flat_experts, stable=True).indices
        weights = top_probs.t().reshape(-1)[order]
        expert_out = self._run_experts(tokens.repeat(self.top_k, 1)[order], counts)
        weighted = (expert_out * weights.unsqueeze(1).to(expert_out.dtype)).to(tokens.dtype)
        per_assignment = weighted.new_zeros(self.top_k * n_tokens, tokens.shape[-1]).index_put_((order,), weighted)
        return per_assignment.view(self.top_k, n_tokens, -1).sum(0).view(shape)


def run(layer, x, grad):
    x = x.detach().requires_grad_(True)
    for p in layer.parameters():
        p.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    out.backward(grad)
    return out.detach().clone(), x.grad.clone(), [p.grad.clone() for p in layer.parameters() if p.grad is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("moe_combine_determinism: needs a CUDA GPU", file=sys.stderr)
        return 2
    cfg = get_preset("1b-moe")
    torch.manual_seed(0)
    new = MoE(cfg).cuda()
    for p in new.parameters():
        torch.nn.init.normal_(p, std=0.02)
    old = AtomicFreeMoE(cfg).cuda()
    old.load_state_dict(new.state_dict())
    new.aux_loss_coef = new.z_loss_coef = old.aux_loss_coef = old.z_loss_coef = 0.0
    x = torch.randn(args.tokens, cfg.d_model, device="cuda")
    grad = torch.randn(args.tokens, cfg.d_model, device="cuda")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": args.tokens,
               "d_model": cfg.d_model, "n_experts": cfg.n_experts, "top_k": cfg.top_k}
    paths = (("index_add (default)", new, False), ("index_add, torch deterministic mode", new, True),
             ("atomic-free rewrite", old, False))
    for name, layer, deterministic in paths:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        first = run(layer, x, grad)
        same = True
        for _ in range(args.repeats - 1):
            again = run(layer, x, grad)
            same &= all(torch.equal(a, b) for a, b in zip([first[0], first[1], *first[2]], [again[0], again[1], *again[2]]))
        for _ in range(3):
            run(layer, x, grad)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            run(layer, x, grad)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / args.iters * 1e3
        torch.cuda.reset_peak_memory_stats()
        run(layer, x, grad)
        peak = torch.cuda.max_memory_allocated() / 2**20
        results[name] = {"ms_fwd_bwd": ms, "bitwise_reproducible": bool(same), "peak_mib": peak}
        ratio = ms / results["index_add (default)"]["ms_fwd_bwd"]
        print(f"{name:36s} fwd+bwd {ms:8.3f} ms ({ratio:.3f}x the default)  peak {peak:8.1f} MiB  "
              f"same bits in {args.repeats} runs: {same}")
    torch.use_deterministic_algorithms(False)
    diff = (run(old, x, grad)[0].float() - run(new, x, grad)[0].float()).abs().max().item()
    results["max_abs_output_difference_atomic_free_vs_default"] = diff
    print(f"max |output difference| atomic-free vs default: {diff:.3e}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moe_combine_determinism.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
