"""Time an optimizer step shaped like Composer 0.16's DecoupledAdamW under FSDP use_orig_params (one GPU).

    python3 bench/composer_adamw_host.py [OUT_DIR]

Why (docs/planner.md, "Session 7: llm-foundry rows"): the cost model now charges llm-foundry's optimizer step 92
bytes a local parameter at the device's elementwise rate (Composer's unfused DecoupledAdamW plus FSDP's clip).  That
is a roofline; it leaves out the host.  Composer 0.16 (the October 2023 rows) keeps FSDP's original parameters
(``use_orig_params: True`` by default, composer/trainer/dist_strategy.py) and its DecoupledAdamW
(composer/optim/decoupled_weight_decay.py) walks them one tensor at a time: it reads the step counter, a 0-dim CUDA
tensor, with ``.item()`` (one host synchronisation a tensor), then runs eight eager ops on the tensor's fp32 shard;
FSDP's ``clip_grad_norm_`` adds a norm and a scale a tensor.  A rank updates only the parameters with elements in
its shard of each block's flat parameter.  This times that loop (written here from the op sequence the docs list;
Composer is not needed) for MPT-7B and MPT-13B sharded 8 and 64 ways, on the rank holding the most tensors, against
one fused torch AdamW step with foreach clipping on the same tensors and the 92-byte roofline.  Writes a JSON to
OUT_DIR.

Expected wall time on one H200: under a minute.  No arguments are required.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

MODELS = {"mpt-7b": (32, 4096), "mpt-13b": (40, 5120)}  # layers, d_model (expansion 4, biases, LayerNorm with bias)
VOCAB, SEQ = 50368, 2048


def block_tensors(d: int) -> list[int]:
    """Numel of one MPT block's original parameters in registration order (MPTBlock at v0.3.0): norm_1 (weight,
    bias), attn.Wqkv (weight, bias), attn.out_proj (weight, bias), norm_2 (weight, bias), ffn.up_proj (weight, bias),
    ffn.down_proj (weight, bias)."""
    return [d, d, 3 * d * d, 3 * d, d * d, d, d, d, 4 * d * d, 4 * d, 4 * d * d, d]


def shard_sizes(layers: int, d: int, ranks: int, rank: int) -> list[int]:
    """The local numel of every original parameter with elements on ``rank`` of ``ranks``: FSDP flattens each
    unit's parameters into one flat parameter and gives each rank a contiguous 1/ranks of it."""
    units = [block_tensors(d)] * layers + [[VOCAB * d, SEQ * d, d, d]]  # the root: wte, wpe, norm_f
    out = []
    for unit in units:
        chunk = math.ceil(sum(unit) / ranks)
        lo, hi = rank * chunk, (rank + 1) * chunk
        start = 0
        for n in unit:
            local = max(0, min(start + n, hi) - max(start, lo))
            if local:
                out.append(local)
            start += n
    return out


def busiest_rank(layers: int, d: int, ranks: int) -> int:
    return max(range(ranks), key=lambda r: (len(shard_sizes(layers, d, ranks, r)), r))


def composer_like_step(params, grads, m, v, steps, lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, max_norm=1.0):
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])  # clip_grad_norm_
    total = torch.linalg.vector_norm(norms)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    for s in steps:  # the optimizer bumps each tensor's step counter before the update loop
        s += 1
    for p, g, a, q, s in zip(params, grads, m, v, steps):
        step = s.item()  # a 0-dim CUDA tensor: one host synchronisation a tensor
        c1, c2 = 1 - b1 ** step, 1 - b2 ** step
        a.mul_(b1).add_(g, alpha=1 - b1)
        q.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (q.sqrt() / math.sqrt(c2)).add_(eps)
        p.addcdiv_(a, denom, value=-lr / c1)


def timed(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, layers: int, d: int, ranks: int) -> dict:
    dev = torch.device("cuda")
    rank = busiest_rank(layers, d, ranks)
    sizes = shard_sizes(layers, d, ranks, rank)
    params = [torch.randn(n, device=dev) for n in sizes]
    grads = [torch.randn(n, device=dev) * 1e-3 for n in sizes]
    m = [torch.zeros(n, device=dev) for n in sizes]
    v = [torch.zeros(n, device=dev) for n in sizes]
    steps = [torch.zeros((), device=dev) for _ in sizes]
    loop = timed(lambda: composer_like_step(params, grads, m, v, steps))
    fused_params = [torch.nn.Parameter(p.clone()) for p in params]
    for fp, g in zip(fused_params, grads):
        fp.grad = g.clone()
    opt = torch.optim.AdamW(fused_params, lr=1e-4, weight_decay=0.0, fused=True)

    def fused_step():
        torch.nn.utils.clip_grad_norm_(fused_params, 1.0, foreach=True)
        opt.step()

    fused = timed(fused_step)
    numel = sum(sizes)
    bw = 4.8e12  # H200 HBM3e bytes/s
    print(f"{name} / {ranks} ranks (rank {rank}): {len(sizes)} tensors, {numel / 1e9:.3f}e9 elements: "
          f"composer-like {loop * 1e3:.1f} ms, fused AdamW + clip {fused * 1e3:.1f} ms")
    return {"model": name, "ranks": ranks, "rank": rank, "tensors": len(sizes), "local_numel": numel,
            "composer_like_s": loop, "fused_s": fused, "roofline_92_bytes_s": 92 * numel / bw}


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    if not torch.cuda.is_available():
        print("composer_adamw_host: needs a CUDA GPU (it times the optimizer loop on the device)", file=sys.stderr)
        return 2
    results = []
    for name, (layers, d) in MODELS.items():
        for ranks in (8, 64):
            results.append(measure(name, layers, d, ranks))
            torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "note": "roofline_92_bytes_s at 4.8 TB/s (H200 HBM), before the device's elementwise efficiency"}
    (out / "composer_adamw_host.json").write_text(json.dumps({**meta, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
