"""How long checkpoints take: save (blocking vs total), load, verification, size on disk.

Builds a model of about --params parameters (a stack of square Linear layers, fp32, with
AdamW state after one step, so 12 bytes per parameter are saved), then for each save
mode (sync, async thread, async process) saves it --repeats times and loads it back
through alphaexa.checkpoint.CheckpointManager. The first async save includes one-off
costs (allocating the staging buffers, starting the writer process); later ones are the
steady state a training run sees.

    python bench/checkpoint_speed.py --params 50M                       # CPU, one process
    python bench/checkpoint_speed.py --params 1B --dir /local/scratch    # one GPU
    torchrun --nproc-per-node 4 bench/checkpoint_speed.py --params 1B    # FSDP2 over 4 GPUs

"save blocking" is the time the training loop is stopped; "save total" runs until the
checkpoint is complete (written, checksummed, renamed). Prints one row per save.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from alphaexa.checkpoint import CheckpointManager, ModelOptimizerState, RNGState, read_manifest

_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}


def parse_count(text: str) -> int:
    match = re.fullmatch(r"([0-9.eE+]+)\s*([KMBG]?)", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a parameter count: {text!r} (e.g. 50M, 1B, 3e8)")
    return int(float(match.group(1)) * _SUFFIX[match.group(2)])


def init_distributed() -> torch.device:
    """A process group even for one process: the process-based writer joins one."""
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if device.type != "cpu":
        device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
        torch.accelerator.set_device_index(device.index)
        backend = {"cuda": "nccl", "xpu": "xccl"}.get(device.type)
        dist.init_process_group(backend=f"cpu:gloo,{device.type}:{backend}" if backend else "gloo")
    else:
        dist.init_process_group(backend="gloo")
    return device


def build(params: int, layers: int, device: torch.device):
    width = max(8, int(math.sqrt(params / layers)))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)]).to(device)
    if dist.get_world_size() > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(4, width, device=device)).square().mean().backward()
    optim.step()
    optim.zero_grad()
    return model, optim, width


def sync_device(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=parse_count, default=parse_count("20M"), help="model size, e.g. 50M, 1B")
    parser.add_argument("--layers", type=int, default=24, help="square Linear layers the parameters are split into")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--modes", default="sync,thread,process", help="comma list of sync, thread, process")
    parser.add_argument("--repeats", type=int, default=2, help="saves per mode")
    args = parser.parse_args()

    device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    model, optim, width = build(args.params, args.layers, device)
    n_params = args.layers * width * width
    app = {"model": ModelOptimizerState(model, optim), "rng": RNGState(0), "counters": {"step": 0}}
    root = args.dir or Path(tempfile.gettempdir())
    work = root / f"checkpoint_speed_{os.environ['MASTER_PORT']}"
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"checkpoint_speed: {n_params / 1e6:.1f}M params ({args.layers} x Linear({width}, {width})), fp32 + AdamW, "
        f"device {device.type}, {world} rank(s), torch {torch.__version__}, dir {work}")
    say(f"{'mode':<15}{'save':>5}{'blocking s':>12}{'total s':>10}{'write s':>10}{'sha256 s':>10}{'size GB':>10}"
        f"{'GB/s':>8}{'load s':>9}{'load(no sha) s':>16}")
    for mode in args.modes.split(","):
        directory = work / mode
        manager = CheckpointManager(directory, keep_last=1, async_save=mode != "sync",
                                    async_mode="process" if mode == "process" else "thread")
        for repeat in range(args.repeats):
            step = repeat + 1
            sync_device(device)
            dist.barrier()
            started = time.perf_counter()
            manager.save(step, app)
            blocking = time.perf_counter() - started
            manager.wait()
            total = time.perf_counter() - started
            manifest = read_manifest(directory / f"step_{step:06d}")
            size = sum(f["size"] for f in manifest["files"].values())
            timings = []
            for verify in (True, False):
                dist.barrier()
                loader = CheckpointManager(directory, verify_checksums=verify)
                started = time.perf_counter()
                loader.load_latest(app)
                sync_device(device)
                timings.append(time.perf_counter() - started)
                loader.close()
            say(f"{mode:<15}{step:>5}{blocking:>12.3f}{total:>10.3f}{manifest['save']['write_s']:>10.3f}"
                f"{manifest['save']['checksum_s']:>10.3f}{size / 1e9:>10.3f}{size / 1e9 / total:>8.2f}"
                f"{timings[0]:>9.3f}{timings[1]:>16.3f}")
        manager.close()
        dist.barrier()
        if rank == 0:  # one mode's checkpoints at a time on disk (12 bytes per parameter each)
            shutil.rmtree(directory, ignore_errors=True)
    if rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
