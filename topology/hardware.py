"""Hardware catalogue: devices, links, nodes and clusters (torch-free).

A ``System`` is what the cost model, the planner and placement read:

* ``Device``  - what one rank drives (an A100, an H100, one tile of a Max 1550),
  with its peak matrix FLOP/s, memory, and the efficiencies the cost model uses.
* ``Link``    - a bandwidth (GB/s per direction per device, or per NIC), a
  latency per collective step and the fraction of the bandwidth collectives
  achieve (for NVLink4 also the low-latency protocol NCCL uses for small
  buffers, see ``Link``).
* ``Node``    - the devices of one node ("slots", one rank each), the link
  levels between them (innermost first: Aurora's two tiles of one GPU share
  MDFI, all twelve tiles share Xe Link), NUMA domains with their physical
  cores, reserved cores, NICs and which NUMA domain each device and NIC sits on.
* ``Network`` - the inter-node fabric: NICs per node and the per-NIC link.
* ``System``  - a node type, a network and the largest node count.

Figures come from vendor datasheets and ALCF user guides; each preset carries
its sources.  Efficiencies (fraction of peak a large bf16 GEMM reaches, fraction
of link bandwidth a collective reaches, fraction of HBM bandwidth elementwise
kernels reach, per-kernel and per-call overheads) are measured values where a
measurement is cited - the H100/H200 ones are fitted to the H200x4 run of
bench/gpu_calibrate.py (2026-11-22, tests of the fit: bench/calibration_report.py)
- otherwise conservative estimates marked "estimate: calibrate".

Custom systems: a YAML/JSON file with the same fields (``load_system``); a file
may start from a preset with ``preset: NAME`` and override any field, nested
sections merged key by key.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .modelcfg import ConfigError

GIB = 1024**3


@dataclass(frozen=True)
class Device:
    name: str
    vendor: str  # nvidia | intel | cpu
    bf16_tflops: float  # dense peak matrix bf16
    fp8_tflops: float  # dense peak matrix fp8 (0 = none)
    fp32_tflops: float  # peak vector fp32
    memory_gib: float
    memory_gbps: float  # HBM bandwidth, GB/s
    compute_units: int  # SMs / Xe cores / CPU cores: for GEMM wave quantisation
    gemm_efficiency: float  # best sustained fraction of bf16 peak on large GEMMs
    attention_efficiency: float  # fused attention, fraction of bf16 peak
    reserved_gib: float  # runtime context, allocator slack, NCCL/CCL buffers
    fused_attention: bool = True  # FlashAttention-style kernel: no s^2 activations
    launch_us: float = 5.0  # per kernel queued in a stream: launch gap and ramp-up/tail
    elementwise_efficiency: float = 0.8  # fraction of memory_gbps eager elementwise kernels stream at
    collective_call_us: float = 0.0  # fixed cost of one collective call (kernel launch, rank handshake)
    host_sync_us: float = 0.0  # host->device->host round trip of one synchronised call (a timed kernel,
    #                            a .item()): what an isolated measurement adds to the device time
    # How the fused causal kernel's rate grows with the keys a query row sees: its TFLOP/s (visible half)
    # follow s / (s + attention_seq_half), and attention_efficiency holds at attention_ref_seq (the length
    # it was measured or fitted at).  128 (costmodel.ATTN_TILE, the default) is the diagonal tile alone:
    # no curve beyond it.  The devices' figures and their sources: docs/planner.md section 10, "Session 7:
    # attention rate by sequence length".
    attention_seq_half: float = 128.0
    attention_ref_seq: float = 4096.0
    # The GPU generation ("ampere", "hopper"; "" for others), for the per-kernel sequence curves of kernels other
    # than the one attention_seq_half was read for (costmodel.KERNEL_SEQ_HALF: each kernel's published chart on
    # that generation).  "" (or a kernel without a chart there): the device's own curve.
    arch: str = ""
    source: str = ""


@dataclass(frozen=True)
class Link:
    """A link class and how collectives use it.

    A collective moving ``V`` bytes per rank over ``steps`` latency steps takes
    ``steps * latency_us + V / (gbps * efficiency)``; when
    ``low_latency_efficiency`` is set the link also has a low-latency protocol
    (NCCL's LL/LL128: no pipeline set-up, lower bandwidth) and the collective
    takes the faster of ``V / (gbps * low_latency_efficiency)`` and
    ``bandwidth_setup_us + V / (gbps * efficiency)`` - the protocol switch NCCL
    makes as buffers grow.
    """

    name: str
    gbps: float  # GB/s per direction, per device (intra-node) or per NIC
    latency_us: float  # per collective step
    efficiency: float  # achievable fraction of gbps in collectives (bandwidth protocol)
    low_latency_efficiency: float = 0.0  # fraction of gbps of the low-latency protocol; 0: none
    bandwidth_setup_us: float = 0.0  # pipeline set-up of the bandwidth protocol (with a low-latency one)
    # NCCL point-to-point (ncclSend/ncclRecv) over this link, where measured: the rate one p2p channel (one CTA's
    # send or receive warps, Simple protocol) moves, and the ceiling of all channels together.  NCCL splits one
    # send into as many chunks, each on its own channel, as its rule gives (costmodel.nccl_p2p_channels: few
    # when the communicator has many ranks or spans nodes), so a send runs at min(p2p_gbps, channels x
    # p2p_channel_gbps).  0: not measured; the send is priced as a collective's transfer (effective_gbps and
    # the protocol switch).
    p2p_channel_gbps: float = 0.0
    p2p_gbps: float = 0.0
    source: str = ""

    @property
    def effective_gbps(self) -> float:
        return self.gbps * self.efficiency


@dataclass(frozen=True)
class LinkLevel:
    """Devices ``size`` consecutive local ranks apart share ``link``."""

    size: int
    link: Link


@dataclass(frozen=True)
class Slot:
    """One device a rank can own: its visibility id, NUMA domain and nearest NIC."""

    id: str  # CUDA_VISIBLE_DEVICES / ZE_AFFINITY_MASK value ("3", "0.1")
    numa: int
    nic: str = ""  # empty: nearest by NUMA domain


@dataclass(frozen=True)
class Nic:
    name: str
    numa: int


@dataclass(frozen=True)
class Node:
    name: str
    device: Device
    slots: tuple[Slot, ...]
    link_levels: tuple[LinkLevel, ...]  # innermost first; the last covers every slot
    numa_cores: tuple[str, ...]  # physical cores per NUMA domain (cpulist syntax)
    reserved_cores: tuple[int, ...] = ()
    threads_per_core: int = 1
    nics: tuple[Nic, ...] = ()
    visibility_env: str = ""  # CUDA_VISIBLE_DEVICES | ZE_AFFINITY_MASK | ""
    ccl_worker_affinity: bool = False  # emit CCL_WORKER_AFFINITY (oneCCL)
    host_memory_gib: float = 0.0
    # What offload (parameters, gradients and optimizer state off the device) runs on; 0 = unknown,
    # and the planner then does not offload to it.
    pcie_gbps: float = 0.0  # host <-> device copies, GB/s per direction per device (achievable)
    host_memory_gbps: float = 0.0  # host DRAM bandwidth of the node (the CPU optimizer step streams through it)
    nvme_gbps: float = 0.0  # local NVMe of the node, GB/s per direction (achievable, all drives)
    nvme_gib: float = 0.0  # local NVMe capacity of the node

    @property
    def ranks(self) -> int:
        return len(self.slots)

    @property
    def cores(self) -> int:
        """Physical cores the node's processes may use: its NUMA domains' cores less the reserved ones."""
        listed: set[int] = set()
        for text in self.numa_cores:
            for part in text.replace(" ", "").split(","):
                if part:
                    lo, _, hi = part.partition("-")
                    listed.update(range(int(lo), int(hi or lo) + 1))
        return len(listed - set(self.reserved_cores))


@dataclass(frozen=True)
class Network:
    nic: Link
    nics_per_node: int
    topology: str = ""

    @property
    def node_gbps(self) -> float:
        """Achievable injection bandwidth of one node, GB/s per direction."""
        return self.nic.effective_gbps * self.nics_per_node


@dataclass(frozen=True)
class System:
    name: str
    description: str
    node: Node
    network: Network | None  # None: a single machine
    max_nodes: int
    sources: tuple[str, ...] = ()

    @property
    def ranks_per_node(self) -> int:
        return self.node.ranks

    def summary(self) -> dict[str, Any]:
        d = self.node.device
        return {
            "name": self.name,
            "description": self.description,
            "device": d.name,
            "ranks_per_node": self.ranks_per_node,
            "device_memory_gib": d.memory_gib,
            "bf16_tflops": d.bf16_tflops,
            "intra_node": [{"size": lv.size, "link": lv.link.name, "gbps": lv.link.gbps} for lv in
                           self.node.link_levels],
            "inter_node": None if self.network is None else {
                "nic": self.network.nic.name, "nics_per_node": self.network.nics_per_node,
                "gbps_per_nic": self.network.nic.gbps},
            "max_nodes": self.max_nodes,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------- devices
# Fitted to H200x4 measurements 2026-11-22, bench/gpu_calibrate.py (NVIDIA H200 SXM, torch
# 2.11+cu130, NCCL; figures in docs/planner.md "Calibration", re-check with
# bench/calibration_report.py).  Hopper = H100 and H200: the same GH100 compute at the same 700 W,
# the same NVLink4 and NCCL, so every figure below applies to both; only HBM differs (datasheets).
HOPPER_GEMM_EFFICIENCY = 0.665  # least squares over 8 GEMM shapes (1024^3 .. 16384x5632x2048) with the
#   128x128-tile wave rule: 655 TF/s sustained on 8192^3.  Sustained matters: the same GEMM timed
#   for 35 ms instead of 0.3 s gave 772 TF/s (bench/gpu_backends.py, same machine) - boost clocks
#   before the 700 W cap bites; a training step runs at the sustained figure.
HOPPER_ATTENTION_EFFICIENCY = 0.457  # SDPA's default kernel on H200 (cuDNN attention), causal,
#   b=2 hq=32 hkv=8 s=4096 d=128 forward+backward: 438 TF/s counting the visible half at 3.5x the
#   forward (bench/gpu_backends.py, same machine), i.e. 0.443 of peak; / (1 + 128/4096) for the
#   diagonal tiles the cost model adds back.
HOPPER_ATTENTION_SEQ_HALF = 583.0  # cuDNN's fused attention (SDPA's default) on our H200, causal, head dim 128,
#   forward + backward, 16k tokens a call: 478.6, 523.9, 539.7 TFLOP/s at 4k, 16k, 32k (session 8, gpu_pending
#   PART=a, bench/attention_headdim_vs_model.py, bench/results/h200-2026-12-05-s8-attention-headdim.json); least
#   squares of s / (s + s_half) on the three, rms 0.6%.  Until session 8: 384, the FlashAttention-3 paper's H100
#   forward-only bars (figure 5d: 315 .. 539 TFLOP/s at 512 .. 16k), which rise earlier than forward + backward
#   (FlashAttention-2's H100 curve: 400 forward, 528 forward + backward).  The curve is the kernel's per-row work on
#   the SMs, the same GH100 compute on H100 and H200.  The kernel the efficiency above was measured with, at 4096.
HOPPER_ATTENTION_REF_SEQ = 4096.0
HOPPER_LAUNCH_US = 2.0  # kernel-to-kernel gap in a busy stream; not separable from the elementwise
#   efficiency with these data (any 1-5 us fits the model steps within 5% with a matching efficiency);
#   2 us is the usual figure for back-to-back launches on Hopper.
HOPPER_ELEMENTWISE_EFFICIENCY = 0.72  # fitted (least squares) to forward+backward of 125m (mbs 8) and
#   1b (mbs 4), seq 2048, with the eager traffic counted in costmodel; 1b-moe held out (-3%).
HOPPER_HOST_SYNC_US = 18.5  # intercept of the GEMM fit (20.5 us) less one launch: what timing a
#   single synchronised call adds (Python dispatch, launch latency, cudaStreamSynchronize).
NCCL_CALL_US = 26.0  # fixed cost of one NCCL call beyond the host round trip (kernel launch, rank
#   handshake): fitted with NVLINK4 below on 32 collectives (1 MiB-1 GiB, 2 and 4 GPUs).  Measured on
#   isolated calls, so an upper bound for collectives queued back to back.

# Fitted to the fit rows of topology/data/published_runs.json (Megatron-LM 2022 and llm-foundry A100
# runs, 8-280 GPUs; bench/fit_published_runs.py, docs/planner.md "Validation").  Before: 0.80 and 0.55,
# estimates.  The attention figure is what the runs' FlashAttention-class kernels sustained there.
# Session 9 (branch refit11): refitted, GEMM 0.86 -> 0.84, the attention held at 0.40 (the free fit's 0.55 is
# above FlashAttention-2's published A100 rate at 2k; bench/fit_published_runs.py HELD).
A100_GEMM_EFFICIENCY = 0.84
A100_ATTENTION_EFFICIENCY = 0.40
A100_ATTENTION_SEQ_HALF = 320.0  # FlashAttention-class kernels of 2022-23 on A100 80GB SXM4, causal, head dim
#   128, forward + backward (FlashAttention-2 paper, Dao 2023, figure 4d; flash-attention
#   assets/flash2_a100_fwd_bwd_benchmark.png, panel d): "FlashAttention Triton" 50, 61, 68, 74, 78, 80 TFLOP/s at
#   512 .. 16k (s_half 320, rms 1.3%), FlashAttention (v1, CUDA) 55 .. 83 (272), xformers 58 .. 92 (320);
#   FlashAttention-2 itself 99 .. 189 rises later (488).  The fit rows' fused kernel is llm-foundry's Triton
#   FlashAttention (FlashAttention v1's algorithm), so the v1-class figure.
A100_ATTENTION_REF_SEQ = 2048.0  # the fit rows' sequence (llm-foundry's A100 fit rows: 1k-2k, most at 2k)

A100_40 = Device(
    name="A100-SXM4-40GB", vendor="nvidia", bf16_tflops=312.0, fp8_tflops=0.0, fp32_tflops=19.5,
    memory_gib=40.0, memory_gbps=1555.0, compute_units=108, gemm_efficiency=A100_GEMM_EFFICIENCY,
    attention_efficiency=A100_ATTENTION_EFFICIENCY, reserved_gib=1.5, launch_us=HOPPER_LAUNCH_US,
    elementwise_efficiency=HOPPER_ELEMENTWISE_EFFICIENCY, collective_call_us=NCCL_CALL_US,
    host_sync_us=HOPPER_HOST_SYNC_US, attention_seq_half=A100_ATTENTION_SEQ_HALF,
    attention_ref_seq=A100_ATTENTION_REF_SEQ, arch="ampere",
    source="NVIDIA A100 datasheet (312 TF dense bf16, 40GB HBM2 1555 GB/s); ALCF Polaris machine "
           "overview; GEMM and attention efficiencies fitted to the published A100 runs of "
           "topology/data/published_runs.json (fit rows, bench/fit_published_runs.py); launch, "
           "elementwise, NCCL call and host sync as fitted on H200 (same CUDA/NCCL stack, assumed)")
A100_80 = dataclasses.replace(
    A100_40, name="A100-SXM4-80GB", memory_gib=80.0, memory_gbps=2039.0,
    source="NVIDIA A100 datasheet (80GB HBM2e 2039 GB/s); efficiencies as A100-40GB")
H100_SXM = Device(
    name="H100-SXM5-80GB", vendor="nvidia", bf16_tflops=989.4, fp8_tflops=1978.9, fp32_tflops=66.9,
    memory_gib=80.0, memory_gbps=3350.0, compute_units=132, gemm_efficiency=HOPPER_GEMM_EFFICIENCY,
    attention_efficiency=HOPPER_ATTENTION_EFFICIENCY, reserved_gib=2.0, launch_us=HOPPER_LAUNCH_US,
    elementwise_efficiency=HOPPER_ELEMENTWISE_EFFICIENCY, collective_call_us=NCCL_CALL_US,
    host_sync_us=HOPPER_HOST_SYNC_US, attention_seq_half=HOPPER_ATTENTION_SEQ_HALF,
    attention_ref_seq=HOPPER_ATTENTION_REF_SEQ, arch="hopper",
    source="NVIDIA H100 datasheet (SXM5: 989 TF dense bf16, 1979 TF fp8, 80GB HBM3 3.35 TB/s); "
           "efficiencies fitted on H200 (same GH100 compute and power), bench/gpu_calibrate.py 2026-11-22")
H200_SXM = dataclasses.replace(
    H100_SXM, name="H200-SXM-141GB", memory_gib=141.0, memory_gbps=4800.0,
    source="NVIDIA H200 datasheet (same Hopper compute as H100 SXM, 141GB HBM3e 4.8 TB/s); efficiencies "
           "fitted to H200x4 measurements 2026-11-22, bench/gpu_calibrate.py")
# Intel Max 1550 tile (one of the two stacks of a Max 1550, one rank each on Aurora).  Every figure below is
# a published measurement of the hardware where one was found (docs/planner.md section 2 lists them), except
# PVC_TRAINING_RATE_SCALE, fitted on the one FIT row of topology/data/published_runs.json that runs on the tile.
PVC_CLOCK_GHZ = 1.5  # ALCF, "Aurora node performance overview" (user-guides, Jan. 12 2026): "The default GPU
#   frequency on Aurora was 1.5 GHz" (commit 7ec7c016: the page's first numbers, Mar. 2024, were at 1.6 GHz,
#   the datasheet's clock; Aurora now runs 1.5 GHz with the second FP64 pipeline disabled).
PVC_TILE_BF16_PEAK = 64 * 4096 * PVC_CLOCK_GHZ / 1000  # 393.2 TF: 64 Xe cores x 8 XMX engines x 512 bf16
#   FLOP a clock (Intel ark: 838.9 TF for 128 Xe cores at 1.6 GHz = 4096 FLOP a clock an Xe core) at 1.5 GHz
PVC_GEMM_TFLOPS = 2487.0 / 12  # 207.3 TF a tile with all 12 tiles of a node busy: ALCF node performance
#   overview (Jan. 2026, 1.5 GHz), oneMKL BF16 GEMM 8192^3 (bf16 in, fp32 out), best of 100, "Full Node"
#   2487 TF over 12 ranks (one tile alone: 256 TF; the node scales 9.7x on 12 tiles: power).  A training
#   step runs every tile at once, so the full-node figure applies.  Corroborated by ALCF's fleet-wide GEMM
#   runs (github.com/argonne-lcf/gemm_benchmarking, aurora_2026/01 and /04: 24576x21504x16384 BF16 on
#   ~49,000 GPUs, 12 ranks a node, median 410.6 TF a GPU = 205.3 a tile).  At 1.6 GHz (before 2026) the
#   same table read 2645 TF (220.4 a tile, +6%).
PVC_ATTENTION_TFLOPS = 3.5 / (1 / 102.5 + 2.5 / 43.5)  # 52.1 TF, forward + backward at 3.5x the forward,
#   causal, head dim 128, s 8192, b 2 x 16 heads, one tile, counting the visible half (Intel's triton
#   benchmark counts the full square, so its figures are halved here): backward 87.0 TF (43.5) for XeTLA's
#   flash-attention kernel, the family DeepSpeed's XPU flash-attention builder runs
#   (intel/intel-xpu-backend-for-triton PR 5150, Sep. 2025); forward 205.0 TF (102.5) for SYCL-TLA's
#   kernel (issue 5771, Jan. 2026), which replaced XeTLA's forward in that benchmark as the faster
#   (PR 4524): an upper bound for XeTLA's.  Measured on one tile alone (not under a full node's power
#   limit, which takes GEMMs from 256 to 207 TF), in fp16 (the benchmark's dtype; PVC's XMX rate is the same
#   for bf16); the PR and the issue do not name their device, the repository's benchmark CI runs on Max 1550
#   runners by default (.github/workflows/triton-benchmarks.yml: runner label max1550).
PVC_ATTENTION_FWD_TFLOPS = 102.5  # the two halves of PVC_ATTENTION_TFLOPS (visible-half counts, as above)
PVC_ATTENTION_BWD_TFLOPS = 43.5
# The backward's share of the fused attention's forward + backward time at the figures above (0.855): the part of
# the device's attention time that a slower backward kernel stretches.
PVC_ATTENTION_BWD_SHARE = (2.5 / PVC_ATTENTION_BWD_TFLOPS) / (1 / PVC_ATTENTION_FWD_TFLOPS
                                                              + 2.5 / PVC_ATTENTION_BWD_TFLOPS)
# XeTLA's flash-attention backward as IPEX 2.5.10-2.7.10 ship it (csrc/gpu/aten/operators/xetla/kernels/SDP/
# fmha_backward.cpp at v2.5.10+xpu: ``get_nd_range(num_batches * num_heads)``, one work-group of 32 threads and 66 KB
# of SLM a (batch, head) pair, looping over every key and query block of its head) and as Intel's triton benchmark
# runs it (benchmarks/xetla_kernel/flash_attention/fmha_backward.h, fe45283d, 2024-10, unchanged until its removal in
# 2026): the kernel has batch x heads work-groups, one per Xe core, so a call with fewer (batch, head) pairs than the
# tile's 64 Xe cores leaves cores idle.  The same benchmark table that gives PVC_ATTENTION_BWD_TFLOPS
# (intel/intel-xpu-backend-for-triton PR 5150, 2025-09-20, XeTLA-TFlops column, causal, head dim 128, full-square
# count) has it at two work-group counts: Z 1 x H 16 (16 groups, N_CTX 16384) 49.81 TF, and Z 2 x H 16 (32 groups,
# N_CTX 8192, the device figure's point) 86.99 TF.  IPEX 2.8.10 (eeddffd8, 2025-05-28, "[SDPA] perf improvement for
# sdpa") rewrote the backward with a (batch x heads, keys / 128) grid: not this curve.
PVC_XETLA_BWD_GROUP_TFLOPS = ((16, 49.806569), (32, 86.991577))
PVC_TRIAD_GBPS = 1000.0  # ALCF node performance overview: STREAM-like triad (2 loads, 1 store) 1 TB/s a
#   tile, 12 TB/s a node (both pages, 2024 and 2026; one significant digit as printed)
ONECCL_CALL_US = 350.0  # a oneCCL call's fixed cost on Aurora (PyTorch 2.5.1, oneccl_bindings_for_pytorch 2.5.0,
#   oneAPI 24.347): ALCF's DLcomm_benchmark example logs (github.com/argonne-lcf/DLcomm_benchmark,
#   examples/2_multimode, Aug. 2025): a 512 KB all-reduce between one tile on each of 2 nodes (12 such pairs at
#   once) takes 0.42 ms (median of 4 timed iterations x 12 groups), of which the cost model's latency (16 us),
#   transfer (37 us at 8 NICs x 21.25 GB/s / 12 tiles) and host round trip (18.5 us) explain 72 us.  Isolated,
#   synchronised calls: an upper bound for calls queued back to back; the same logs' 12-tile all-gather of
#   512 KB (0.8 ms) and 24-rank all-reduce of 100 KB (1.2 ms) cost more, so a lower bound for larger groups.
# The tile's rates in a training step of argonne-lcf/Megatron-DeepSpeed, as a fraction of the microbenchmark figures
# above (GEMM, attention and elementwise alike: one factor).  FITTED (session 9, branch auroracal11), not measured:
# bench/fit_published_runs.py fits it on the FIT rows that print per-phase timers, which is one row, ALCF's
# AuroraGPT-2B cooldown run on 3072 tiles (topology/data/published_runs.json 'alcf-aurora2b-cooldown-3072',
# ALCF/notes/cooldown.md at 6c208091): its forward + backward compute a micro-batch (DeepSpeed's fwd_microstep +
# bwd_inner_microstep, 960.7 ms) against the model's.  That run used a newer stack (Agama 1146.12, oneAPI 2025.2.0,
# DeepSpeed 0.17.5) than the sweep rows of group unseen8 (Agama 1099.12, oneAPI 2025.0.5, torch 2.5.1); the factor
# is applied to every Max 1550 prediction whatever its stack (docs/planner.md section 10, 'Session 9: the Max 1550
# fitted on ALCF's cooldown run').  1.0 reproduces the microbenchmark-only tile of sessions 6-9.
PVC_TRAINING_RATE_SCALE = 0.805


def pvc_tile(rate_scale: float = PVC_TRAINING_RATE_SCALE) -> Device:
    """The Max 1550 tile with its GEMM, attention and elementwise rates at ``rate_scale`` times the published
    microbenchmark figures (PVC_GEMM_TFLOPS, PVC_ATTENTION_TFLOPS, PVC_TRIAD_GBPS); the fit varies it."""
    return Device(
        name="Max1550-tile", vendor="intel", bf16_tflops=round(PVC_TILE_BF16_PEAK, 1), fp8_tflops=0.0,
        fp32_tflops=round(64 * 256 * PVC_CLOCK_GHZ / 1000, 1),  # 24.6 TF at 1.5 GHz (ALCF measured 21 a tile)
        memory_gib=64.0, memory_gbps=1638.4, compute_units=64,
        gemm_efficiency=rate_scale * round(PVC_GEMM_TFLOPS / PVC_TILE_BF16_PEAK, 3),  # 0.527 x rate_scale
        # 0.130 x rate_scale: / (1 + 128/s) for the diagonal tiles the cost model adds back, as for Hopper
        attention_efficiency=rate_scale * round(PVC_ATTENTION_TFLOPS / PVC_TILE_BF16_PEAK / (1 + 128 / 8192), 3),
        reserved_gib=2.0, launch_us=8.0,
        elementwise_efficiency=rate_scale * round(PVC_TRIAD_GBPS / 1638.4, 2),  # 0.61 x rate_scale: triad / HBM
        collective_call_us=ONECCL_CALL_US, host_sync_us=HOPPER_HOST_SYNC_US,
        source="Intel ark Max 1550 (128 GB HBM2e 3.2768 TB/s per GPU = 2 tiles; 838.9 TF bf16 at 1.6 GHz); "
               "ALCF Aurora node performance overview (Jan. 2026): 1.5 GHz default clock (peak 393.2 TF a "
               "tile), BF16 GEMM 2487 TF a node = 207 a tile (GEMM efficiency 0.527), triad 1 TB/s a tile "
               "(elementwise efficiency 0.61); attention 52 TF a tile fwd+bwd from Intel's triton benchmark "
               "(XeTLA backward, SYCL-TLA forward, causal d128 s8192); all three times the training rate scale "
               f"{rate_scale:.3f}, fitted on ALCF's AuroraGPT-2B cooldown timers (bench/fit_published_runs.py); "
               "oneCCL call 350 us from ALCF's DLcomm_benchmark logs; still estimates (no measurement found): "
               "launch 8 us, host sync (as fitted on H200)")


PVC_TILE = pvc_tile()
CPU_SOCKET = Device(
    name="cpu", vendor="cpu", bf16_tflops=2.0, fp8_tflops=0.0, fp32_tflops=1.0, memory_gib=64.0,
    memory_gbps=100.0, compute_units=32, gemm_efficiency=0.5, attention_efficiency=0.2,
    reserved_gib=4.0, fused_attention=False, launch_us=2.0,
    source="generic server socket (AVX-512/AMX class); estimate - use --system auto for the real host")

# ------------------------------------------------------------------- links
# NVLink4 fitted to H200x4 measurements 2026-11-22, bench/gpu_calibrate.py: NCCL all-reduce,
# all-gather, reduce-scatter and all-to-all of 1 MiB-1 GiB on 2 and 4 GPUs (NV18, NVSwitch),
# least squares on log time with NCCL_CALL_US and the host round trip: |error| median 3.6%.
# Large buffers reach 0.74 x 450 = 333 GB/s bus bandwidth after ~120 us of pipeline set-up; below
# ~96 MB moved per rank the low-latency protocol at 0.52 x 450 = 234 GB/s is faster; 4.2 us per ring step
# (log2 n steps; all-reduce twice).  What no link parameter captures, and is left as error: the
# 2-GPU all-gather/reduce-scatter of 1 GiB (12-15% below the bus bandwidth 4 GPUs reach) and the
# 4-GPU all-to-all of 16 MiB (35% slower: 4 MiB per peer, between NCCL's protocols).
NVLINK4 = Link("NVLink4", gbps=450.0, latency_us=4.2, efficiency=0.74, low_latency_efficiency=0.52,
               bandwidth_setup_us=122.0,
               source="H100/H200 SXM: 18 NVLink4 links x 25 GB/s per direction = 450 GB/s (900 bidir); "
                      "efficiencies, latency and protocols fitted to H200x4 measurements 2026-11-22, "
                      "bench/gpu_calibrate.py")
# NCCL send/recv on 8 A100 SXM4 on NVSwitch (github.com/li-plus/playground, cuda/nccl.md at b85070fb:
# nccl-tests ``sendrecv_perf -b 128M -e 1G -f 2 -g 8``, each GPU sending to the next and receiving from the
# previous at once): 110.8 GB/s at 128 MiB, 188.6 / 192.8 / 195.1 GB/s at 256 MiB / 512 MiB / 1 GiB.  NCCL
# 2.14-2.19's split (costmodel.nccl_p2p_channels; 8 ranks, 32 p2p channels, 32 a peer on NVSwitch) puts 128 MiB
# on 8 channels and 256 MiB or more on 16: 110.8 / 8 = 13.85 GB/s a channel, and 16 channels (221.6) run into
# the 195.1 GB/s ceiling (the 256 and 512 MiB points: 1376 and 2753 us from these two figures against 1423 and
# 2785 measured).  NVIDIA (sjeaugey, NVIDIA/nccl-tests issue 149): SM copies reach ~20 of 25 GB/s a link
# (128-byte payloads), 240 GB/s on 12 links, "~230 GB/s" after other limits.
A100_P2P_CHANNEL_GBPS = 110.81 / 8
A100_P2P_GBPS = 195.1
NVLINK3 = Link("NVLink3", gbps=300.0, latency_us=3.0, efficiency=0.78,
               low_latency_efficiency=round(0.78 * NVLINK4.low_latency_efficiency / NVLINK4.efficiency, 3),
               bandwidth_setup_us=NVLINK4.bandwidth_setup_us,
               p2p_channel_gbps=round(A100_P2P_CHANNEL_GBPS, 2), p2p_gbps=A100_P2P_GBPS,
               source="A100: 12 NVLink3 links x 25 GB/s per direction = 300 GB/s (600 GB/s bidirectional); "
                      "efficiency estimate (no A100 access); NCCL's protocol switch as fitted on H200 "
                      "NVLink4 (same ratio of low-latency to bandwidth protocol, same set-up); NCCL send/recv "
                      "13.85 GB/s a channel, 195.1 GB/s in all, from nccl-tests sendrecv_perf on 8 A100 "
                      "(li-plus/playground cuda/nccl.md)")
MDFI = Link("MDFI", gbps=230.0, latency_us=3.0, efficiency=0.80,
            source="Max 1550 tile-to-tile on one package: ALCF node performance overview (Jan. 2026) MPI "
                   "Tile2Tile unidirectional 185 GB/s (= 0.80 x 230; write 158.5, read 173.6 GB/s with "
                   "SYCL copies, Sep. 2025); 230 GB/s and the latency: estimates")
XELINK = Link("XeLink", gbps=106.0, latency_us=5.0, efficiency=0.60,
              source="Max 1550: 16 Xe Links x 26.5 GB/s per direction per GPU, 4 usable per tile towards "
                     "peers in Aurora's 6-GPU all-to-all; efficiency as measured on one link: ALCF node "
                     "performance overview, GPU2GPU unidirectional 15 GB/s (MPI), 15.8 read / 18.9 write "
                     "GB/s per tile pair (SYCL, Sep. 2025) = 0.60-0.71 of 26.5; how many links a collective "
                     "drives at once and the latency: estimates")
SLINGSHOT11 = Link("Slingshot-11", gbps=25.0, latency_us=8.0, efficiency=0.85,
                   source="HPE Slingshot-11 Cassini NIC: 200 Gb/s = 25 GB/s per direction; ALCF (Aurora "
                          "DAOS overview): each NIC drives 20-25 GB/s unidirectional")
HDR200 = Link("InfiniBand-HDR", gbps=25.0, latency_us=6.0, efficiency=0.90,
              source="ConnectX-6 HDR 200 Gb/s = 25 GB/s per direction")
NDR400 = Link("InfiniBand-NDR", gbps=50.0, latency_us=6.0, efficiency=0.90,
              source="ConnectX-7 NDR 400 Gb/s = 50 GB/s per direction")
SHARED_MEMORY = Link("shared-memory", gbps=20.0, latency_us=2.0, efficiency=0.8,
                     source="gloo over host shared memory; estimate")
ETHERNET = Link("ethernet", gbps=3.0, latency_us=30.0, efficiency=0.7, source="25 GbE; estimate")


# ------------------------------------------------------------- node builders
def _polaris_node() -> Node:
    # ALCF Polaris machine overview, "Polaris Device Affinity Information" (nvidia-smi topo -m):
    #   GPU0: CPU 24-31,56-63 NUMA 3 | GPU1: 16-23,48-55 NUMA 2 | GPU2: 8-15,40-47 NUMA 1 |
    #   GPU3: 0-7,32-39 NUMA 0; GPU pairs NV4; mlx5_0 PHB to GPU3, mlx5_1 PHB to GPU1.
    # Hence ALCF's set_affinity_gpu_polaris.sh assigns GPUs in reverse order
    # (CUDA_VISIBLE_DEVICES = 3 - local_rank) with --cpu-bind depth -d 8.
    # The two NICs are cxi0/cxi1 since the Slingshot-11 upgrade.
    return Node(
        name="polaris", device=A100_40,
        slots=(Slot("0", 3, "cxi1"), Slot("1", 2, "cxi1"), Slot("2", 1, "cxi0"), Slot("3", 0, "cxi0")),
        link_levels=(LinkLevel(4, NVLINK3),),
        numa_cores=("0-7", "8-15", "16-23", "24-31"), threads_per_core=2,
        nics=(Nic("cxi0", 0), Nic("cxi1", 2)),
        visibility_env="CUDA_VISIBLE_DEVICES", host_memory_gib=512.0,
        # estimates: PCIe Gen4 x16 per GPU, 8 channels DDR4-3200, 2 local NVMe drives (ALCF: 2x 1.6 TB)
        pcie_gbps=22.0, host_memory_gbps=150.0, nvme_gbps=6.0, nvme_gib=2980.0)


def _aurora_node() -> Node:
    # ALCF "Running Jobs on Aurora": 2 sockets x 52 cores, 2 hw threads; cores 0
    # and 52 reserved for the OS since 2025-03-31; GPUs 0-2 on socket 0 and 3-5
    # on socket 1; one rank per tile with ZE_AFFINITY_MASK=gpu.tile in compact
    # order (gpu_tile_compact.sh) and
    # --cpu-bind=list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100.
    # 8 Slingshot-11 NICs, 4 per socket (ALCF hands-on "AI frameworks at scale").
    slots = tuple(Slot(f"{g}.{t}", 0 if g < 3 else 1) for g in range(6) for t in range(2))
    return Node(
        name="aurora", device=PVC_TILE, slots=slots,
        link_levels=(LinkLevel(2, MDFI), LinkLevel(12, XELINK)),
        numa_cores=("0-51", "52-103"), reserved_cores=(0, 52), threads_per_core=2,
        nics=tuple(Nic(f"cxi{i}", 0 if i < 4 else 1) for i in range(8)),
        visibility_env="ZE_AFFINITY_MASK", ccl_worker_affinity=True, host_memory_gib=1024.0,
        # PCIe: ALCF node performance overview (Jan. 2026), all 12 tiles at once: H2D 318 GB/s, D2H 257 GB/s
        # a node = 26.5 / 21.4 a tile; the slower direction is taken.  Estimate: DDR5 of two Xeon Max
        # sockets.  No local NVMe for jobs (DAOS instead), so no NVMe offload
        pcie_gbps=21.4, host_memory_gbps=500.0)


def _dgx_a100_node() -> Node:
    # DGX A100: 2x AMD EPYC 7742 (64 cores each, NPS4 -> 8 NUMA domains of 16
    # cores), 8x A100-80GB on NVSwitch, 8x ConnectX-6 HDR for compute.  NVIDIA
    # deepops syscfg-dgxa100-80gb.sh: CPU_AFFINITY 32-47:48-63:0-15:16-31:
    # 96-111:112-127:64-79:80-95 and MEM_AFFINITY 2:3:0:1:6:7:4:5 for GPUs 0-7,
    # UCX_AFFINITY mlx5_0:1:2:3:6:7:8:9.
    gpu_numa = (2, 3, 0, 1, 6, 7, 4, 5)
    nics = ("mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_6", "mlx5_7", "mlx5_8", "mlx5_9")
    return Node(
        name="dgx-a100-80gb", device=A100_80,
        slots=tuple(Slot(str(g), gpu_numa[g], nics[g]) for g in range(8)),
        link_levels=(LinkLevel(8, NVLINK3),),
        numa_cores=tuple(f"{16 * i}-{16 * i + 15}" for i in range(8)), threads_per_core=2,
        nics=tuple(Nic(n, gpu_numa[i]) for i, n in enumerate(nics)),
        visibility_env="CUDA_VISIBLE_DEVICES", host_memory_gib=2048.0,
        # DGX A100 user guide: 8x 3.84 TB NVMe (RAID 0), PCIe Gen4; bandwidths are estimates
        pcie_gbps=22.0, host_memory_gbps=300.0, nvme_gbps=20.0, nvme_gib=28600.0)


def _hgx_h_node(name: str, device: Device, n_gpus: int) -> Node:
    # HGX/DGX H100 and H200: 2x Xeon 8480C (56 cores each, one NUMA domain per
    # socket), GPUs 0-3 on socket 0 and 4-7 on socket 1, NVSwitch all-to-all,
    # one ConnectX-7 NDR NIC per GPU on the GPU's PCIe switch (DGX H100 user
    # guide).  A machine with fewer GPUs keeps the same per-GPU share of cores.
    per_socket = max(1, n_gpus // 2) if n_gpus > 1 else 1
    sockets = 2 if n_gpus > 1 else 1
    slots = tuple(Slot(str(g), min(g // per_socket, sockets - 1), f"mlx5_{g}") for g in range(n_gpus))
    return Node(
        name=name, device=device, slots=slots,
        link_levels=(LinkLevel(n_gpus, NVLINK4),),
        numa_cores=("0-55", "56-111")[:sockets], threads_per_core=2,
        nics=tuple(Nic(f"mlx5_{g}", slots[g].numa) for g in range(n_gpus)),
        # DGX H100/H200 user guides: 2 TB DDR5, 8x 3.84 TB NVMe U.2 (RAID 0), PCIe Gen5 per GPU; a machine
        # with fewer GPUs gets its per-GPU share.  Bandwidths: estimates (Gen5 x16 ~50 GB/s achievable,
        # 16 channels DDR5-4800, ~3 GB/s per drive under DeepSpeed's async I/O) - calibrate.
        visibility_env="CUDA_VISIBLE_DEVICES", host_memory_gib=256.0 * n_gpus,
        pcie_gbps=50.0, host_memory_gbps=75.0 * n_gpus, nvme_gbps=3.0 * n_gpus, nvme_gib=3576.0 * n_gpus)


def _cpu_node() -> Node:
    return Node(name="cpu", device=CPU_SOCKET, slots=(Slot("0", 0),),
                link_levels=(LinkLevel(1, SHARED_MEMORY),), numa_cores=("0-31",), threads_per_core=2,
                host_memory_gib=64.0)


ANY_NODES = 1_000_000  # generic catalogue systems (DGX/HGX clusters): as many nodes as a request names


def _presets() -> dict[str, System]:
    alcf = "https://docs.alcf.anl.gov"
    out = {
        "polaris": System(
            "polaris", "ALCF Polaris: 560 nodes of 4x A100-40GB (NV4 all-to-all), 1x EPYC 7543P 32-core, "
            "2 Slingshot-11 NICs", _polaris_node(), Network(SLINGSHOT11, 2, "dragonfly"), 560,
            (f"{alcf}/polaris/hardware-overview/machine-overview/", f"{alcf}/polaris/running-jobs/")),
        "aurora": System(
            "aurora", "ALCF Aurora: 10,624 nodes of 6x Max 1550 (12 tiles, 64 GB each, Xe Link), "
            "2x Xeon Max 9470C 52-core, 8 Slingshot-11 NICs", _aurora_node(),
            Network(SLINGSHOT11, 8, "dragonfly"), 10624,
            (f"{alcf}/aurora/hardware-overview/machine-overview/", f"{alcf}/aurora/running-jobs-aurora/",
             "https://www.intel.com/content/www/us/en/products/sku/232873/")),
        "dgx-a100-80gb": System(
            "dgx-a100-80gb", "NVIDIA DGX A100: 8x A100-80GB on NVSwitch, 8x HDR 200 Gb/s",
            _dgx_a100_node(), Network(HDR200, 8, "fat-tree"), ANY_NODES,
            ("NVIDIA DGX A100 user guide", "https://github.com/NVIDIA/deepops workloads/bit/syscfg-dgxa100-80gb.sh")),
        "dgx-h100": System(
            "dgx-h100", "NVIDIA DGX H100: 8x H100-SXM5-80GB on NVSwitch, 8x NDR 400 Gb/s",
            _hgx_h_node("dgx-h100", H100_SXM, 8), Network(NDR400, 8, "fat-tree"), ANY_NODES,
            ("NVIDIA DGX H100 user guide", "NVIDIA H100 datasheet")),
        "dgx-h200": System(
            "dgx-h200", "NVIDIA DGX/HGX H200: 8x H200-SXM-141GB on NVSwitch, 8x NDR 400 Gb/s",
            _hgx_h_node("dgx-h200", H200_SXM, 8), Network(NDR400, 8, "fat-tree"), ANY_NODES,
            ("NVIDIA DGX H200 user guide", "NVIDIA H200 datasheet")),
        "cpu": System("cpu", "one CPU host (gloo); use --system auto for the real machine", _cpu_node(),
                      Network(ETHERNET, 1, "ethernet"), 64, ()),
    }
    for gpu, dev in (("h100", H100_SXM), ("h200", H200_SXM)):
        for n in (1, 2, 4, 8):
            name = f"{gpu}-x{n}"
            out[name] = System(
                name, f"one machine with {n}x {dev.name} on NVLink/NVSwitch (a slice of an HGX board)",
                _hgx_h_node(name, dev, n), None, 1, ("NVIDIA H100/H200 datasheets",))
    return out


PRESETS: dict[str, System] = _presets()


def system_names() -> list[str]:
    return list(PRESETS)


# ------------------------------------------------------------------- loading
def _convert(hint: Any, value: Any, where: str) -> Any:
    """Convert a parsed YAML/JSON value to the annotated field type (dataclasses, tuples, optionals)."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}={value!r}: expected {hint.__name__}")
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    """Dataclass from a mapping, recursively; unknown keys and wrong types are one-line errors."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    missing = [f.name for f in fields.values()
               if f.name not in kwargs and f.default is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def system_from_dict(data: dict[str, Any], where: str = "system") -> System:
    data = dict(data)
    base = data.pop("preset", None)
    if base is not None:
        if base not in PRESETS:
            raise ConfigError(f"{where}: unknown preset {base!r}; known: {', '.join(PRESETS)}")
        data = _merge(PRESETS[base].to_dict(), data)
    system = _build(System, data, where)
    validate_system(system)
    return system


def validate_system(system: System) -> None:
    node = system.node
    where = f"system {system.name}"
    if not node.slots:
        raise ConfigError(f"{where}: a node needs at least one device slot")
    if not node.link_levels or node.link_levels[-1].size < node.ranks:
        raise ConfigError(f"{where}: the last link level must cover all {node.ranks} devices of a node")
    for lv in node.link_levels:
        if node.ranks % lv.size:
            raise ConfigError(f"{where}: link level size {lv.size} does not divide {node.ranks} devices")
    for s in node.slots:
        if not 0 <= s.numa < len(node.numa_cores):
            raise ConfigError(f"{where}: slot {s.id} names NUMA domain {s.numa}, node has "
                              f"{len(node.numa_cores)}")
    if system.max_nodes < 1:
        raise ConfigError(f"{where}: max_nodes must be >= 1")
    d = node.device
    for f in ("bf16_tflops", "memory_gib", "memory_gbps", "gemm_efficiency", "attention_efficiency",
              "elementwise_efficiency", "attention_seq_half", "attention_ref_seq"):
        if getattr(d, f) <= 0:
            raise ConfigError(f"{where}: device.{f} must be > 0")


def yaml_error() -> type[Exception]:
    import yaml

    return yaml.YAMLError


def load_system(name_or_path: str) -> System:
    """A preset name or a YAML/JSON file describing a system (see module docstring)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    p = Path(name_or_path)
    if not p.is_file():
        raise ConfigError(f"system {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, yaml_error()) as e:  # JSON and YAML parse errors
        raise ConfigError(f"{p}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    data = data.get("system", data)
    data.setdefault("name", p.stem)
    return system_from_dict(data, where=str(p))


__all__ = [
    "ANY_NODES",
    "GIB",
    "PRESETS",
    "Device",
    "Link",
    "LinkLevel",
    "Network",
    "Nic",
    "Node",
    "Slot",
    "System",
    "load_system",
    "system_from_dict",
    "system_names",
    "validate_system",
]
