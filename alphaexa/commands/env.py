"""``alphaexa env``: what this process detected (device, collectives, kernels, launcher)."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys

NAME = "env"
HELP = "show the detected device backend, collectives, attention kernels and launch environment"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--init",
        action="store_true",
        help="also initialise torch.distributed and check an all_reduce across all ranks",
    )


def collect() -> dict:
    """Everything detectable without communicating with other ranks."""
    import torch

    from backends.device import BACKEND_ENV, get_backend
    from backends.errors import BackendError
    from backends.launch import detect_launch

    backend = get_backend()
    launch = detect_launch()
    backend.set_device(launch.local_rank)
    try:
        dist_backend = backend.dist_backend
    except BackendError as e:
        dist_backend = f"unavailable: {e}"
    try:
        peak = backend.peak_bf16_flops()
    except BackendError:
        peak = None
    info = {
        "device_type": backend.device_type,
        "backend_source": BACKEND_ENV if os.environ.get(BACKEND_ENV) else "auto",
        "device": str(backend.device),
        "device_name": backend.device_name(),
        "device_count": backend.device_count(),
        "dist_backend": dist_backend,
        "attention_kernels": backend.attention_kernels(),
        "supports_bf16": backend.supports_bf16(),
        "supports_fp16": backend.supports_fp16(),
        "peak_bf16_flops": peak,
        "peak_bf16_flops_source": backend.peak_bf16_source(),
        "needs_force_sum_reduction": backend.needs_force_sum_reduction,
        "hostname": socket.gethostname(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    info.update(launch.as_dict())
    return info


def check_all_reduce() -> dict:
    """Initialise the process group, all-reduce rank+1 on this rank's device, compare with the sum."""
    import torch
    import torch.distributed as dist

    from backends.launch import destroy_distributed, init_distributed

    dist_info = init_distributed(timeout_s=120)
    try:
        value = torch.tensor([float(dist_info.rank + 1)], device=dist_info.device)
        dist.all_reduce(value)
        world = dist_info.world_size
        expected = world * (world + 1) / 2
        got = value.item()
        return {
            "all_reduce_ok": got == expected,
            "all_reduce_value": got,
            "all_reduce_expected": expected,
            "initialised_backend": dist_info.dist_backend,
        }
    finally:
        destroy_distributed()


def _format_value(key: str, value) -> str:
    if key == "peak_bf16_flops" and isinstance(value, float):
        return f"{value / 1e12:.3g} TFLOP/s"
    if isinstance(value, list):
        return " > ".join(value) if value else "-"
    return "-" if value is None else str(value)


def run(args) -> int:
    info = collect()
    if args.init:
        info.update(check_all_reduce())
        if not info["all_reduce_ok"]:
            print(
                f"alphaexa env: error: all_reduce on rank {info['rank']} gave {info['all_reduce_value']}, "
                f"expected {info['all_reduce_expected']}",
                file=sys.stderr,
            )
            return 1
        if info["rank"] != 0:
            # Every rank checked its own result; one report is enough.
            return 0
    if args.json:
        print(json.dumps(info, sort_keys=False))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {_format_value(key, value)}")
    return 0
