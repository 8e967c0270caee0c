"""Compressed against uncompressed checkpoints: size, save time and restore time (one process, CPU).

    python bench/checkpoint_compress.py [--model 125m] [--out DIR] [--json FILE]

The state is the model and its AdamW moments after one optimizer step from the deterministic
initialisation: random-looking weights, so the ratio is a floor for trained checkpoints whose
exponents are as spread. Each figure is one save and one load, with checksums on (as in training).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from alphaexa.checkpoint import CheckpointManager, ModelOptimizerState
from alphaexa.model import build_model
from topology.presets import resolve_model


def _state(model_name: str, seed: int):
    cfg = resolve_model(model_name)
    model = build_model(cfg, seed=seed)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, cfg.vocab_size, (1, 64), generator=torch.Generator().manual_seed(seed))
    model(tokens).float().logsumexp(-1).mean().backward()
    optim.step()
    optim.zero_grad(set_to_none=True)
    return cfg, model, optim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="125m")
    parser.add_argument("--out", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=args.out))
    cfg, model, optim = _state(args.model, 0)
    _, fresh, fresh_optim = _state(args.model, 1)
    results = {}
    try:
        for compress in ("none", "zstd"):
            root = scratch / compress
            with CheckpointManager(root, model_config=cfg, compress=compress) as manager:
                started = time.perf_counter()
                manager.save(1, {"model": ModelOptimizerState(model, optim)})
                save_s = time.perf_counter() - started
                started = time.perf_counter()
                manager.load(1, {"model": ModelOptimizerState(fresh, fresh_optim)})
                restore_s = time.perf_counter() - started
            size = sum(p.stat().st_size for p in (root / "step_000001").iterdir())
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
            results[compress] = {"bytes": size, "save_s": round(save_s, 2), "restore_s": round(restore_s, 2)}
            print(f"{args.model} {compress:>4}: {size / 2**30:.3f} GiB, save {save_s:.1f} s, restore {restore_s:.1f} s "
                  f"(checksums included)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = results["none"]["bytes"] / results["zstd"]["bytes"]
    print(f"ratio {ratio:.3f} (uncompressed / zstd); torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "ratio": ratio, **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
