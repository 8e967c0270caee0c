"""Where torch.compile splits AlphaExa's model: graphs and graph-break reasons of one training forward.

    python3 bench/graph_breaks.py                      # 1b preset, 2 blocks, on the GPU (or the CPU)
    python3 bench/graph_breaks.py --preset 1b-moe --n-layers 4 --seq 512

The trainer compiles the whole model into one graph where the layout allows (one rank, no
recompute): every graph break splits it, runs what is between the graphs eagerly (copies,
launch gaps) and stops fusion across the break.  This traces the model's forward with the fused
loss, as the trainer's step does, under bf16 autocast on an accelerator, with
``torch._dynamo.explain`` and prints the graph count and each distinct break reason.  Exit status 1
when there is any break, so it can gate a GPU run.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaexa.model.transformer import Transformer
from topology.presets import get_preset


def explain(preset: str, n_layers: int, batch: int, seq: int, device: torch.device) -> dict:
    cfg = get_preset(preset).replace(n_layers=n_layers)
    with torch.device(device):
        model = Transformer(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    torch._dynamo.reset()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type != "cpu")
    with autocast:
        result = torch._dynamo.explain(model)(tokens[:, :-1], targets=tokens[:, 1:])
    reasons = Counter(str(r.reason).splitlines()[0][:200] for r in result.break_reasons)
    return {"graphs": result.graph_count, "breaks": result.graph_break_count, "reasons": reasons}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    device = torch.device(accelerator.type if accelerator is not None else "cpu")
    found = explain(args.preset, args.n_layers, args.batch, args.seq, device)
    print(f"{args.preset} with {args.n_layers} blocks on {device.type} (torch {torch.__version__}): "
          f"{found['graphs']} graph(s), {found['breaks']} graph break(s)")
    for reason, count in found["reasons"].most_common():
        print(f"  {count:4d} x {reason}")
    return 1 if found["breaks"] else 0


if __name__ == "__main__":
    sys.exit(main())
