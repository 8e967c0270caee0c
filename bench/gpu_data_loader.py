"""Loader to accelerator: pinned-memory prefetch vs plain, host->device tokens/s (needs a GPU/XPU).

    .venv/bin/python bench/gpu_data_loader.py [--seq-len 2048] [--global-batch 16] [--steps 300]

Checks that pinned batches are pinned and identical to unpinned ones, then times
``next(loader)`` + ``.to(device, non_blocking=True)`` for both.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from alphaexa.data import PackedSamples, PackedTokens, TrainLoader, ensure_demo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if not torch.accelerator.is_available():
        raise SystemExit("no accelerator: this benchmark measures host-to-device transfer")
    device = torch.accelerator.current_accelerator()
    with tempfile.TemporaryDirectory() as cache:
        samples = PackedSamples(PackedTokens(ensure_demo_dataset(cache, tokenizer="byte")), args.seq_len)
        with TrainLoader(samples, args.global_batch, prefetch=0) as plain, \
                TrainLoader(samples, args.global_batch, prefetch=0, pin_memory=True) as pinned:
            a, b = next(plain), next(pinned)
            assert b.inputs.is_pinned() and b.targets.is_pinned() and not a.inputs.is_pinned()
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        print(f"device {device}, {len(samples)} samples of {args.seq_len + 1} tokens, global batch "
              f"{args.global_batch}, {args.steps} steps")
        for pin in (False, True):
            with TrainLoader(samples, args.global_batch, prefetch=4, pin_memory=pin) as loader:
                next(loader)
                torch.accelerator.synchronize()
                start = time.perf_counter()
                for _ in range(args.steps):
                    batch = next(loader)
                    inputs = batch.inputs.to(device, non_blocking=True)
                    targets = batch.targets.to(device, non_blocking=True)
                torch.accelerator.synchronize()
                seconds = time.perf_counter() - start
            assert inputs.device.type == device.type and targets.shape == inputs.shape
            tokens = args.steps * args.global_batch * args.seq_len
            print(f"pin_memory={pin!s:<5} {args.steps / seconds:8.0f} batches/s  {tokens / seconds / 1e6:8.1f} "
                  f"M tokens/s to {device.type}")


if __name__ == "__main__":
    main()
