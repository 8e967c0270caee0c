"""Backend selection, the device API on this machine, peak FLOP/s lookup and `alphaexa env`."""

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backends.device import (
    BACKEND_ENV,
    Backend,
    XpuBackend,
    detected_family,
    get_backend,
    measured_cpu_matmul_flops,
    peak_bf16_flops_for,
)
from backends.errors import BackendError

BIN = Path(sys.executable).parent
ACCELERATOR = torch.accelerator.is_available()


def test_auto_selection_follows_what_torch_sees(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert get_backend().device_type == detected_family()
    assert get_backend("auto").device_type == detected_family()
    if not ACCELERATOR:
        assert detected_family() == "cpu"


def test_environment_variable_overrides_detection(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "cpu")
    backend = get_backend()
    assert type(backend) is Backend and backend.dist_backend == "gloo"


def test_unknown_backend_name_names_value_and_choices(monkeypatch):
    with pytest.raises(
        BackendError, match=r"^unknown backend 'tpu' \(requested\); choices: auto, cpu, cuda, xpu$"
    ):
        get_backend("tpu")
    monkeypatch.setenv(BACKEND_ENV, "gpu")
    with pytest.raises(BackendError, match=r"^unknown backend 'gpu' \(from ALPHAEXA_BACKEND or --backend\)"):
        get_backend()


@pytest.mark.parametrize("family", ["cuda", "xpu"])
def test_requesting_an_absent_accelerator_fails_clearly(family):
    if getattr(torch, family).is_available():
        pytest.skip(f"this machine has {family}")
    with pytest.raises(
        BackendError, match=rf"^backend '{family}' \(requested\) is not available: .* sees no {family}"
    ):
        get_backend(family)


@pytest.mark.parametrize(
    "device_name,flops",
    [
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835.5e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835.5e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("Intel(R) Data Center GPU Max 1550", 419.4304e12),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_flops_lookup_prefers_the_specific_name(device_name, flops):
    if flops is None:
        assert peak_bf16_flops_for(device_name) is None
    else:
        assert peak_bf16_flops_for(device_name) == pytest.approx(flops)


def test_cpu_peak_is_measured_once():
    first = measured_cpu_matmul_flops()
    assert first > 1e8  # any CPU that runs torch does more than 0.1 GFLOP/s
    assert measured_cpu_matmul_flops() == first


def test_cpu_device_api():
    backend = Backend()
    assert backend.device_count() == 1
    assert backend.set_device(3) == torch.device("cpu")
    backend.manual_seed(123)
    first = torch.randn(4)
    backend.manual_seed(123)
    assert torch.equal(torch.randn(4), first)

    # 64 MiB of fresh anonymous pages, every one touched: the resident size grows by them whatever an allocator has
    # kept (a 32 MiB torch tensor left it unmoved in a CI run, session 13: reused memory an earlier test had freed)
    before = backend.memory_allocated()
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\x01" * (64 * 2**20))
    assert backend.memory_allocated() - before >= 60 * 2**20
    peak_with_block = backend.max_memory_allocated()
    block.close()
    backend.reset_peak_memory()
    if os.path.exists("/proc/self/clear_refs"):
        assert backend.max_memory_allocated() < peak_with_block - 32 * 2**20


def test_xpu_quirk_forces_sum_reduction_on_fsdp_modules(monkeypatch):
    """XpuBackend.fsdp_quirks on a real (world-1, gloo) FSDP2 model; the CPU backend leaves it alone."""
    from torch.distributed.fsdp import fully_shard

    from backends.launch import destroy_distributed, init_distributed

    for var in (
        "RANK",
        "WORLD_SIZE",
        "PMI_RANK",
        "OMPI_COMM_WORLD_RANK",
        "SLURM_PROCID",
        "PALS_RANKID",
        BACKEND_ENV,
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(BACKEND_ENV, "cpu")
    init_distributed(timeout_s=30)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        for layer in model:
            fully_shard(layer)
        fully_shard(model)

        def forced():
            # FSDP2 keeps the flag on each parameter group (what set_force_sum_reduction_for_comms sets).
            return [
                g.force_sum_reduction_for_comms
                for m in model.modules()
                if hasattr(m, "_get_fsdp_state")
                for g in m._get_fsdp_state()._fsdp_param_groups
            ]

        Backend().fsdp_quirks(model)
        assert len(forced()) == 2 and not any(forced())  # one parameter group per Linear
        # Constructing XpuBackend touches no XPU; its quirk is pure module configuration.
        xpu = XpuBackend()
        assert xpu.needs_force_sum_reduction
        xpu.fsdp_quirks(model)
        assert forced() == [True, True]
    finally:
        destroy_distributed()


def test_env_json_reports_this_machine_and_checks_all_reduce():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", BACKEND_ENV)}
    result = subprocess.run(
        [str(BIN / "alphaexa"), "env", "--json", "--init"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    expected_family = detected_family()
    assert info["device_type"] == expected_family
    assert info["dist_backend"] == {"cpu": "gloo", "cuda": "nccl", "xpu": "xccl"}[expected_family]
    if expected_family == "cpu":
        assert info["attention_kernels"] == ["sdpa", "math"]
        assert info["peak_bf16_flops_source"].startswith("measured") and info["peak_bf16_flops"] > 0
    assert (info["launcher"], info["rank"], info["local_rank"], info["world_size"]) == ("none", 0, 0, 1)
    assert info["torch_version"] == torch.__version__
    assert info["all_reduce_ok"] is True and info["all_reduce_value"] == 1.0


def test_env_cli_rejects_unknown_backend_flag_in_one_line():
    result = subprocess.run(
        [str(BIN / "alphaexa"), "--backend", "tpu", "env"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "alphaexa env: error: unknown backend 'tpu' (from ALPHAEXA_BACKEND or --backend); "
        "choices: auto, cpu, cuda, xpu\n"
    )


def test_dist_backend_override_from_environment(monkeypatch):
    from backends.device import get_backend

    monkeypatch.setenv("ALPHAEXA_DIST_BACKEND", "gloo")
    assert get_backend("cpu").dist_backend == "gloo"
    monkeypatch.setenv("ALPHAEXA_DIST_BACKEND", "nccl")
    with pytest.raises(BackendError, match=r"ALPHAEXA_DIST_BACKEND='nccl' is not a collective backend for cpu"):
        _ = get_backend("cpu").dist_backend
