"""One ``Backend`` per device family (cpu, cuda, xpu): device API, collectives, quirks, peak FLOP/s.

``get_backend()`` picks the family from, in order: its ``name`` argument, the
``ALPHAEXA_BACKEND`` environment variable (the CLI's ``--backend`` sets it), or
what torch sees (``torch.accelerator.current_accelerator()``; CPU when none).

Accelerator families go through ``torch.accelerator`` so cuda and xpu share one
code path; only the collective backend, the peak FLOP/s table and the quirks
differ.  The CPU family answers the same questions from the host.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import resource
import sys
import time
from functools import cache

import torch

from .attention import available_kernels
from .errors import BackendError

BACKEND_ENV = "ALPHAEXA_BACKEND"
DIST_BACKEND_ENV = "ALPHAEXA_DIST_BACKEND"
FAMILIES = ("cpu", "cuda", "xpu")

# Peak dense (no structured sparsity) bf16 tensor-core FLOP/s per device, for MFU.
# Matched against torch's device name, first match wins, so the more specific
# names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float, str], ...] = (
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): BF16 Tensor Core
    # 1,979 TF (SXM), 1,671 TF (NVL), 1,513 TF (PCIe), all quoted "with sparsity";
    # dense is half.
    ("H100 NVL", 835.5e12, "NVIDIA H100 datasheet, NVL: 1671 TF sparse / 2"),
    ("H100 PCIe", 756e12, "NVIDIA H100 datasheet, PCIe: 1513 TF sparse / 2"),
    # torch reports an H100 SXM as e.g. "NVIDIA H100 80GB HBM3".
    ("H100", 989e12, "NVIDIA H100 datasheet, SXM: 1979 TF sparse / 2"),
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): 1,979 TF (SXM) and
    # 1,671 TF (NVL) with sparsity, the same tensor cores as H100.
    ("H200 NVL", 835.5e12, "NVIDIA H200 datasheet, NVL: 1671 TF sparse / 2"),
    ("GH200", 989e12, "NVIDIA GH200 datasheet: H100-class GPU, 1979 TF sparse / 2"),
    ("H200", 989e12, "NVIDIA H200 datasheet, SXM: 1979 TF sparse / 2"),
    # NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): BF16 Tensor Core
    # 312 TF dense (624 TF with sparsity), SXM and PCIe alike.  Polaris has A100 SXM4.
    ("A100", 312e12, "NVIDIA A100 datasheet: 312 TF dense"),
    # Intel Data Center GPU Max 1550 (Aurora): Intel ark lists 128 Xe cores in 2
    # stacks at up to 1.6 GHz; Intel's Xe-HPC overview gives 8 XMX engines per Xe
    # core, each 512 bf16 FLOP per clock (256 FMA), i.e. 4096 FLOP/clock per Xe core.
    # 128 * 4096 * 1.6e9 = 838.9 TF per card, 419.4 TF per stack.  Derived from those
    # published parameters, not from a quoted TFLOP/s figure; not yet checked on Aurora.  Aurora exposes each stack as one device (FLAT mode), so the
    # figure is per stack; XpuBackend scales it when a device spans both stacks.
    ("Max 1550", 64 * 4096 * 1.6e9, "Intel Max 1550: 64 Xe cores/stack * 4096 bf16 FLOP/clk * 1.6 GHz"),
)


def peak_bf16_entry(device_name: str) -> tuple[float, str] | None:
    """(FLOP/s, source) from the table by torch device name; None for a device not in it."""
    for pattern, flops, source in PEAK_BF16_FLOPS:
        if pattern.lower() in device_name.lower():
            return flops, source
    return None


def peak_bf16_flops_for(device_name: str) -> float | None:
    entry = peak_bf16_entry(device_name)
    return entry[0] if entry else None


PROBE_SIZE = 256  # a dtype's first look: a quarter of the side, 1/8 of the work


@cache
def measured_cpu_matmul_flops(size: int = 512, seconds: float = 0.3) -> float:
    """Fastest fp32 or bf16 matmul seen on this host, in FLOP/s; timed once per process.

    A CPU has no datasheet figure we can look up portably, so MFU on CPU is relative
    to what torch's matmul reaches here with the current thread count.  The fastest
    single call, not the mean, approximates the peak on a machine shared with others.
    Each dtype is first timed on a PROBE_SIZE matrix; one whose probe runs at under half the rate of
    the best probe cannot hold the peak and is not timed further (bf16 on a CPU without bf16
    instructions: 1.4 against 20 GFLOP/s in fp32, and one 512 call takes 0.3 s, twice the time
    budget of a dtype, paid by every rank of every CPU run before).
    """
    probes: dict[torch.dtype, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(PROBE_SIZE, PROBE_SIZE, dtype=dtype)
        a @ a  # warm-up: the first call pays for thread-pool start and kernel selection
        start = time.perf_counter()
        a @ a
        probes[dtype] = 2 * PROBE_SIZE**3 / max(time.perf_counter() - start, 1e-9)
    best_probe = max(probes.values())
    fastest_call = float("inf")
    for dtype, rate in probes.items():
        if rate < best_probe / 2:
            continue
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        a @ b
        deadline = time.perf_counter() + seconds / 2
        while (start := time.perf_counter()) < deadline:
            a @ b
            fastest_call = min(fastest_call, time.perf_counter() - start)
    return 2 * size**3 / fastest_call


class Backend:
    """The CPU family; accelerator families override what differs."""

    device_type = "cpu"

    def __init__(self) -> None:
        self._device_index = 0

    # --- device -----------------------------------------------------------------------------
    def device_count(self) -> int:
        # The host is one device: one rank per CPU socket set is the caller's choice.
        return 1

    def set_device(self, local_rank: int) -> torch.device:
        return self.device

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def device_name(self) -> str:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"

    def synchronize(self) -> None:
        """CPU ops run synchronously."""

    def manual_seed(self, seed: int) -> None:
        # torch.manual_seed seeds the CPU generator and every accelerator's generators.
        torch.manual_seed(seed)

    def supports_bf16(self) -> bool:
        return True

    def supports_fp16(self) -> bool:
        return True

    # --- memory: the process's resident set, since torch keeps no CPU allocator stats ----
    def memory_allocated(self) -> int:
        return _proc_status_bytes("VmRSS") or 0

    def max_memory_allocated(self) -> int:
        peak = _proc_status_bytes("VmHWM")
        if peak is None:
            # getrusage reports kilobytes on Linux, bytes on macOS.
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak *= 1 if sys.platform == "darwin" else 1024
        return peak

    def reset_peak_memory(self) -> None:
        # Writing 5 to clear_refs resets the kernel's high-water mark (VmHWM) for this
        # process (Linux >= 4.0, see proc(5)); elsewhere the peak cannot be reset.
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def empty_cache(self) -> None:
        """The CPU allocator returns memory to the OS itself; nothing is cached."""

    # --- collectives and quirks -------------------------------------------------------------
    # Collective libraries this family can use; the first is the default unless
    # _default_dist_backend decides otherwise.  $ALPHAEXA_DIST_BACKEND picks one.
    dist_backend_choices: tuple[str, ...] = ("gloo",)

    @property
    def dist_backend(self) -> str:
        forced = os.environ.get(DIST_BACKEND_ENV, "").strip()
        if not forced:
            return self._default_dist_backend()
        if forced not in self.dist_backend_choices:
            raise BackendError(f"{DIST_BACKEND_ENV}={forced!r} is not a collective backend for "
                               f"{self.device_type}; choose one of {', '.join(self.dist_backend_choices)}")
        return forced

    def _default_dist_backend(self) -> str:
        return self.dist_backend_choices[0]

    @property
    def needs_force_sum_reduction(self) -> bool:
        """True where the collective library lacks PREMUL_SUM (FSDP2 must reduce with plain SUM)."""
        return False

    def fsdp_quirks(self, module: torch.nn.Module) -> None:
        """Apply this backend's FSDP2 workarounds to every FSDP module inside ``module``.

        Call after ``fully_shard`` has been applied.
        """
        if not self.needs_force_sum_reduction:
            return
        from torch.distributed.fsdp import FSDPModule

        for sub in module.modules():
            if isinstance(sub, FSDPModule):
                sub.set_force_sum_reduction_for_comms(True)

    # --- performance and kernels ------------------------------------------------------------
    def peak_bf16_flops(self) -> float:
        return measured_cpu_matmul_flops()

    def peak_bf16_source(self) -> str:
        return "measured: fastest 512^3 fp32/bf16 matmul on this host"

    def attention_kernels(self) -> list[str]:
        return available_kernels(self.device_type)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device}, dist_backend={self.dist_backend})"


class AcceleratorBackend(Backend):
    """Shared by cuda and xpu: everything through torch.accelerator."""

    def device_count(self) -> int:
        return torch.accelerator.device_count()

    def set_device(self, local_rank: int) -> torch.device:
        count = self.device_count()
        if local_rank < count:
            index = local_rank
        elif count == 1:
            # A site script that pins one device per rank (CUDA_VISIBLE_DEVICES,
            # ZE_AFFINITY_MASK) leaves each rank seeing device 0 only.
            index = 0
        else:
            raise BackendError(
                f"local rank {local_rank} has no {self.device_type} device: only {count} visible"
            )
        torch.accelerator.set_device_index(index)
        self._device_index = index
        return self.device

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_type, self._device_index)

    def synchronize(self) -> None:
        torch.accelerator.synchronize(self._device_index)

    def memory_allocated(self) -> int:
        return torch.accelerator.memory_allocated(self._device_index)

    def max_memory_allocated(self) -> int:
        return torch.accelerator.max_memory_allocated(self._device_index)

    def reset_peak_memory(self) -> None:
        torch.accelerator.reset_peak_memory_stats(self._device_index)

    def empty_cache(self) -> None:
        torch.accelerator.empty_cache()

    def peak_bf16_source(self) -> str:
        entry = peak_bf16_entry(self.device_name())
        return entry[1] if entry else "unknown device"

    def peak_bf16_flops(self) -> float:
        flops = peak_bf16_flops_for(self.device_name())
        if flops is None:
            raise BackendError(
                f"no peak bf16 FLOP/s known for {self.device_name()!r}; add it to "
                "backends.device.PEAK_BF16_FLOPS with its datasheet source"
            )
        return flops


class CudaBackend(AcceleratorBackend):
    device_type = "cuda"

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self._device_index)

    def supports_bf16(self) -> bool:
        # Native bf16 needs Ampere (sm80) or newer; emulation on older GPUs is too slow to count.
        return torch.cuda.is_bf16_supported(including_emulation=False)

    def supports_fp16(self) -> bool:
        return True

    dist_backend_choices = ("nccl", "gloo")


class XpuBackend(AcceleratorBackend):
    """Intel GPUs through native torch.xpu (torch >= 2.8); coded from documentation, untested here."""

    device_type = "xpu"
    # Xe cores (sub-slices) per Max 1550 stack, to tell a one-stack device from a two-stack one.
    XE_CORES_PER_STACK = 64

    def device_name(self) -> str:
        return torch.xpu.get_device_name(self._device_index)

    def supports_bf16(self) -> bool:
        return torch.xpu.is_bf16_supported()

    def supports_fp16(self) -> bool:
        return True

    dist_backend_choices = ("xccl", "ccl", "gloo")

    def _default_dist_backend(self) -> str:
        # Native xccl ships with torch >= 2.8; oneccl_bindings_for_pytorch ("ccl") is the
        # end-of-life fallback for older stacks and is imported only when it is used.
        if torch.distributed.is_available() and torch.distributed.is_xccl_available():
            return "xccl"
        if importlib.util.find_spec("oneccl_bindings_for_pytorch") is not None:
            return "ccl"
        raise BackendError(
            "no collective backend for xpu: this torch has no xccl and "
            "oneccl_bindings_for_pytorch is not installed"
        )

    @property
    def needs_force_sum_reduction(self) -> bool:
        # xccl (and oneCCL under it) has no PREMUL_SUM reduction, which FSDP2 uses by
        # default to fold the gradient averaging into the reduce-scatter.
        return True

    def peak_bf16_flops(self) -> float:
        per_stack = super().peak_bf16_flops()
        props = torch.xpu.get_device_properties(self._device_index)
        xe_cores = getattr(props, "gpu_subslice_count", 0)
        stacks = max(1, round(xe_cores / self.XE_CORES_PER_STACK)) if xe_cores else 1
        return per_stack * stacks


_FAMILY_CLASSES: dict[str, type[Backend]] = {"cpu": Backend, "cuda": CudaBackend, "xpu": XpuBackend}


def detected_family() -> str:
    """The device family torch sees: the current accelerator's type, else cpu."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is not None and accelerator.type in _FAMILY_CLASSES:
        return accelerator.type
    return "cpu"


def _family_available(family: str) -> bool:
    if family == "cpu":
        return True
    module = getattr(torch, family, None)
    return module is not None and module.is_available()


def get_backend(name: str | None = None) -> Backend:
    """The Backend for ``name``, else $ALPHAEXA_BACKEND, else the detected family.

    BackendError for an unknown name or a family this machine cannot run.
    """
    source = "requested"
    if name is None:
        name = os.environ.get(BACKEND_ENV) or None
        source = f"from {BACKEND_ENV} or --backend"
    if name is None or name == "auto":
        return _FAMILY_CLASSES[detected_family()]()
    if name not in _FAMILY_CLASSES:
        raise BackendError(f"unknown backend {name!r} ({source}); choices: auto, {', '.join(FAMILIES)}")
    if not _family_available(name):
        raise BackendError(
            f"backend {name!r} ({source}) is not available: torch {torch.__version__} sees no {name} device"
        )
    return _FAMILY_CLASSES[name]()


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
