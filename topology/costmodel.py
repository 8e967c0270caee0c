"""Cost model: memory per device and step time of one layout (torch-free).

Sources of the closed forms (docs/planner.md derives each term):

* Memory of mixed-precision Adam - Rajbhandari et al. 2020, "ZeRO": 16 bytes
  per parameter = 2 (bf16 weights) + 2 (bf16 gradients) + 12 (fp32 master
  weights, Adam m and v).  ZeRO-1 shards the 12 optimizer bytes over the
  sharding group, ZeRO-2 also the gradients, ZeRO-3 (= FSDP2 ``fully_shard``)
  everything.
* Activations per transformer layer - Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models", bytes for sequence s,
  micro-batch b, width h, heads a, tensor-parallel t:
  ``sbh(34 + 5as/h)`` without TP, ``sbh(10 + 24/t + 5as/(ht))`` with TP,
  ``sbh(34/t + 5as/(ht))`` with TP + sequence parallel, ``sbh*34/t`` with
  selective recomputation, ``2sbh`` (the layer input) with full recomputation.
  ``layer_activation_bytes`` generalises the same bookkeeping to GQA, SwiGLU,
  MoE, fused attention and no dropout, and reduces to the closed forms for the
  paper's GPT layer (a test checks it).
* Pipeline: 1F1B keeps min(m, pp - stage) micro-batches in flight, GPipe all m;
  the interleaved schedule multiplies stage 0's by (1 + (pp-1)/(pp*vpp))
  (Korthikanti sec. 4.2); bubble (pp-1)/m of the ideal for GPipe and 1F1B,
  divided by vpp for interleaved (Narayanan et al. 2021); ZB-V after Qi et al.
  2024: (pp-1)(F + B - 2W) per chunk with F, B, W the forward, input-gradient
  and weight-gradient times, floored at 10% of a chunk.
* Collectives: ring reduce-scatter / all-gather move (n-1)/n of the buffer over
  the slowest link the group crosses, all-reduce twice that; latency
  ceil(log2 n) steps each (tree/recursive-halving latency, as NCCL and oneCCL
  pick for large groups).  A group spread over nodes runs hierarchically: the
  intra-node part on the node's link, the inter-node part on the NIC bandwidth
  of a node shared by all of its ranks.  Each call also pays the device's
  fixed per-call cost, and on links with a low-latency protocol (NVLink) the
  transfer is the faster of that protocol and the bandwidth protocol after its
  set-up (``hardware.Link``).
* GEMM time: a roofline per GEMM, max(FLOPs / (peak * efficiency * wave
  utilisation), bytes / HBM bandwidth) + launch overhead; the wave utilisation
  (output tiles of 128x128 over the device's compute units) makes small GEMMs
  slower per FLOP, which is the size dependence.  Grouped expert GEMMs share
  their waves.  Fused attention runs at its own efficiency, its backward at 2.5x
  the forward; elementwise work is the HBM traffic the eager implementation
  moves (counted below) at the device's elementwise efficiency, plus launches.

Nothing here is measured on the fly; efficiencies live in the hardware
catalogue, fitted to bench/gpu_calibrate.py runs; bench/calibration_report.py
compares a run's measurements with the current model.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

from .hardware import GIB, PVC_ATTENTION_BWD_SHARE, PVC_XETLA_BWD_GROUP_TFLOPS, Device, Link, System
from .layout import RECOMPUTE_MODES, Layout, expert_shard_dim
from .modelcfg import ConfigError, ModelConfig, ffn_params, flops_per_token, norm_params
from .support import compiled_by_default

WEIGHT_BYTES = 2  # bf16 weights
GRAD_BYTES = 2  # bf16 gradients (ZeRO's accounting)
OPTIMIZER_BYTES = 12  # fp32 master + Adam m + v
ADAM_UPDATE_BYTES = 30  # read/write master, m, v (24) + read grad (2) + write bf16 weight (2) + slack
# The optimizer step on the device, per local parameter, as the trainer runs it (FSDP2 or a plain module:
# fp32 parameters and gradients; torch's fused AdamW reads parameter, gradient, m and v, 16 bytes, and
# writes parameter, m and v, 12) and the gradient clipping before it (the global norm reads each
# gradient, 4; clip_grads_with_norm_ scales it in place, 4 + 4): 40 bytes, streamed through HBM at the
# device's elementwise efficiency like any memory-bound kernel.  Megatron's distributed optimizer moves
# about the same (fp32 main parameters and gradients, plus the bf16 copy it writes, 2).
DEVICE_OPTIMIZER_BYTES = 28 + 12
# Composer's DecoupledAdamW (composer/optim/decoupled_weight_decay.py, the same loop in v0.13.3 and v0.16.3: the
# optimizer of llm-foundry's MPT yamls, ``decoupled_adamw``) updates one parameter tensor at a time with eager
# ops, each streaming its fp32 operands through HBM, per element: exp_avg.mul_ (4 read, 4 written) .add_(grad)
# (8, 4), exp_avg_sq.mul_ (4, 4) .addcmul_(grad, grad) (8, 4: the gradient read once from HBM), denom =
# exp_avg_sq.sqrt() (4, 4) / sqrt(bias_correction2) (4, 4) .add_(eps) (4, 4), param.addcdiv_(exp_avg, denom)
# (12, 4): 80 bytes where torch's fused AdamW moves 28 (weight decay 0 in the yamls: no decay pass).
COMPOSER_DECOUPLED_ADAMW_BYTES = 8 + 12 + 8 + 12 + 8 + 8 + 8 + 16
# Composer 0.16 (llm-foundry v0.3.0, the October 2023 rows) keeps each tensor's step counter on the device
# (``state['step'] = torch.zeros((), device=p.device)``) and its DecoupledAdamW reads it with ``.item()`` in the
# per-tensor loop (composer/optim/decoupled_weight_decay.py at v0.16.3: ``step = state_steps[i].item()``): one host
# synchronisation per parameter tensor with a gradient on the rank, so the host enqueues the tensor's eight eager
# ops only after the device has finished the previous tensor's.  A tensor costs max(host time, its device time).
# Composer 0.13.3 (the April 2023 rows) keeps the step as a Python int and, on torch 1.13, FSDP hands the optimizer
# one flat parameter a unit: no synchronisation, the host runs ahead.  The host time a tensor is the H200's
# measurement (bench/composer_adamw_host.py, session 8: 95-97 us a tensor on the 64-way shards, where the device
# time is small; a per-tensor max(90 us, the 92-byte device time) reproduces all four shards within 10%):
# Python dispatch of the ops and one synchronisation, host time that the rows' hosts are assumed to match.
COMPOSER_STEP_SYNC_HOST_S = 90e-6
# Megatron-Core's DDP keeps every gradient of the rank in one contiguous buffer (fp32 under Megatron-LM's bf16:
# ``accumulate_allreduce_grads_in_fp32``) and, besides the optimizer's shard, streams the whole of it once a step on
# the compute stream (Megatron-LM core_v0.8.0, baf94af3c6): ``train_step`` starts with ``zero_grad_buffer`` ->
# ``ParamAndGradBuffer.reset`` -> ``grad_data.zero_()`` (1 write); in the last micro-batch's backward each bucket's
# ``start_grad_sync`` (param_and_grad_buffer.py) runs ``grad_data.norm(p=2)`` and asserts it is not NaN when
# ``check_for_nan_in_grad`` (DistributedDataParallelConfig from ``--check-for-nan-in-loss-and-grad``, on unless
# ``--no-check-for-nan-in-loss-and-grad``: 1 read) and then ``grad_data *= gradient_scaling_factor`` (1 / dp unless
# ``--ddp-average-in-collective``, off by default: 1 read, 1 write) before the reduce-scatter.  4 element accesses;
# the same passes at core_v0.9.0 to v0.14.0 (the NaN check through the rerun state machine from v0.10).
MEGATRON_DDP_GRAD_BUFFER_PASSES = 4.0
# Megatron-Core's word embedding (``VocabParallelEmbedding.forward``: ``F.embedding(masked_input, self.weight)``,
# megatron/core/tensor_parallel/layers.py at core_v0.8.0 and at main d98e8a64) has PyTorch's dense embedding backward:
# ``embedding_dense_backward`` allocates the rank's whole [V / tp, h] gradient with ``at::zeros`` before adding the
# tokens' rows (2 bytes written an element), and DDP's param hook (``_make_param_hook``, distributed_data_parallel.py,
# core_v0.8.0 to main) adds it into the main gradient, ``param.main_grad.add_(param.grad.data)`` (2 read, and the
# main gradient read and written in the buffer's dtype), every micro-batch: Implementation.embed_dense_grad.
# The zero fill is ``embedding_dense_backward``'s (PyTorch's CUDA kernel, whatever the framework); the add is the DDP
# hook's where the framework has one.  Where the implementation already counts a per-parameter accumulation of every
# gradient a micro-batch (DeepSpeed's BF16_Optimizer ``hp_grad_accum_bytes``, autograd's ``grad_accum_bytes``: both
# over the stage's parameters, the table included), only the fill is new (session 9, branch megfwd11).
EMBED_GRAD_FILL_BYTES = 2.0  # at::zeros of the rank's [V / tp, h] table in the 16-bit parameter dtype
TILE = 128  # GEMM output tile edge used for wave quantisation


# --------------------------------------------------------- ZeRO closed forms
def zero_bytes_per_param(sharding: str, shards: int) -> dict[str, float]:
    """Bytes per parameter for weights, gradients and optimizer state (ZeRO paper, Fig. 1)."""
    n = max(1, shards)
    if sharding == "none":
        return {"params": WEIGHT_BYTES, "grads": GRAD_BYTES, "optimizer": OPTIMIZER_BYTES}
    if sharding == "zero1":
        return {"params": WEIGHT_BYTES, "grads": GRAD_BYTES, "optimizer": OPTIMIZER_BYTES / n}
    if sharding == "zero2":
        return {"params": WEIGHT_BYTES, "grads": GRAD_BYTES / n, "optimizer": OPTIMIZER_BYTES / n}
    if sharding == "zero3":
        return {"params": WEIGHT_BYTES / n, "grads": GRAD_BYTES / n, "optimizer": OPTIMIZER_BYTES / n}
    raise ValueError(f"unknown sharding {sharding!r}")


# --------------------------------------------------- Korthikanti closed forms
def korthikanti_layer_activation_bytes(s: int, b: int, h: int, a: int, t: int = 1,
                                       sequence_parallel: bool = False, recompute: str = "none") -> float:
    """Activation bytes of one GPT layer (16-bit, dropout, MHA, 4h GELU MLP), Korthikanti et al. 2022."""
    sbh = s * b * h
    if recompute == "full":
        return 2 * sbh / (t if sequence_parallel else 1)
    attn_scores = 5 * a * s / h
    if recompute == "selective":
        return sbh * (34 / t if sequence_parallel else 10 + 24 / t)
    if t == 1:
        return sbh * (34 + attn_scores)
    if sequence_parallel:
        return sbh * (34 / t + attn_scores / t)
    return sbh * (10 + 24 / t + attn_scores / t)


def _ffn_activation_bytes(cfg: ModelConfig, tokens: float, width: float) -> float:
    """Saved tensors inside one FFN (not its input), for ``tokens`` rows of local width ``width``."""
    if cfg.ffn_type == "swiglu":
        # gate output, up output, silu(gate), silu(gate)*up (the down projection's input)
        return tokens * width * 2 * 4
    # GELU input (the up projection's output) and GELU output (the down projection's input)
    return tokens * width * 2 * 2


def layer_activation_bytes(cfg: ModelConfig, moe: bool, s: int, b: int, t: int = 1, cp: int = 1,
                           recompute: str = "none", sequence_parallel: bool = True,
                           fused_attention: bool = True, dropout: bool = False) -> float:
    """Bytes one rank saves for the backward of one layer and one micro-batch.

    ``s`` is the full sequence, split ``cp`` ways; with ``sequence_parallel``
    (what the trainer applies whenever t > 1) the tensors outside the
    tensor-parallel regions are split ``t`` ways too.  Terms follow Korthikanti
    et al.; ``fused_attention`` replaces the s^2 score tensors by the kernel's
    fp32 log-sum-exp, ``dropout`` adds the masks of the paper's GPT layer.
    """
    h, a = cfg.d_model, cfg.n_heads
    sl = s / cp  # local sequence
    tok = sl * b
    rep = t if sequence_parallel else 1  # divisor of the replicated (non-TP) regions
    if recompute == "full":
        return 2 * tok * h / rep
    # layer norms: inputs of both norms
    out = 2 * (2 * tok * h) / rep
    # attention: QKV input, Q, K, V, output-projection input; dropout mask after it
    out += 2 * tok * h / rep
    out += 2 * tok * (cfg.q_dim + 2 * cfg.kv_dim + cfg.q_dim) / t
    out += tok * h / rep if dropout else 0
    if recompute != "selective":
        if fused_attention:
            out += 4 * b * a * sl / t  # fp32 log-sum-exp per query and head
        else:
            scores = a * sl * s * b / t
            out += 2 * scores + (3 * scores if dropout else 0)  # softmax out (+ mask + dropout out)
    # feed-forward: its input, then the FFN internals
    out += 2 * tok * h / rep
    if not moe:
        out += _ffn_activation_bytes(cfg, tok, cfg.d_ff / t)
        return out + (tok * h / rep if dropout else 0)  # dropout mask after the FFN
    routed = tok * cfg.top_k * (cfg.capacity_factor or 1.0)
    out += 4 * tok * cfg.n_experts / rep  # fp32 router logits
    out += 2 * routed * h / rep * 2  # dispatched expert inputs and expert outputs before the combine
    out += _ffn_activation_bytes(cfg, routed, cfg.moe_d_ff / t)
    if cfg.n_shared_experts:
        out += _ffn_activation_bytes(cfg, tok, cfg.n_shared_experts * cfg.moe_d_ff / t)
    return out


# ----------------------------------------------------------- communication
@dataclass(slots=True)
class CommPath:
    """Where a process group's traffic goes: ``k`` members per node on ``intra``, ``nodes`` nodes."""

    size: int
    k: int
    nodes: int
    intra: Link | None
    inter_gbps: float  # per rank, all ranks of a node sharing the NICs
    inter_latency_us: float
    link_class: str  # human-readable: "MDFI", "XeLink", "NVLink3", "Slingshot-11", "XeLink+Slingshot-11"
    call_us: float = 0.0  # the device's fixed cost per collective call
    # A hierarchical collective's node-link and network legs run at once (NCCL: its rings and trees cut
    # the buffer into chunks that stream through every hop together, each of the node's ranks driving its
    # own NIC), so the slower leg sets the time; False: one after the other (oneCCL's staged "topo"
    # algorithms, as the model has assumed for XPU: not measured).
    pipelined: bool = False
    # A group that straddles node boundaries unevenly (charged as inter-node throughout, though some of its
    # ranks share a node and its link)
    misaligned: bool = False


def comm_path(system: System, size: int, stride: int) -> CommPath:
    """The links a group of ``size`` ranks ``stride`` apart crosses (rank order of topology.layout)."""
    node = system.node
    r = node.ranks
    net = system.network
    inter_gbps = net.node_gbps / r if net else 0.0
    inter_lat = net.nic.latency_us if net else 0.0
    inter_name = net.nic.name if net else "none"
    call = node.device.collective_call_us
    if size <= 1:
        return CommPath(1, 1, 1, None, inter_gbps, inter_lat, "local", call)
    span = size * stride
    if span <= r and r % span == 0:
        level = next(lv for lv in node.link_levels if lv.size % span == 0)
        return CommPath(size, size, 1, level.link, inter_gbps, inter_lat, level.link.name, call)
    if stride % r == 0:
        return CommPath(size, 1, size, None, inter_gbps, inter_lat, inter_name, call)
    if r % stride == 0 and span % r == 0:
        k = r // stride
        link = node.link_levels[-1].link
        return CommPath(size, k, size // k, link, inter_gbps, inter_lat, f"{link.name}+{inter_name}", call,
                        node.device.vendor == "nvidia")
    # A group that straddles node boundaries unevenly: charge it as inter-node throughout.
    return CommPath(size, 1, size, None, inter_gbps, inter_lat, f"{inter_name} (misaligned)", call, misaligned=True)


def pair_paths(system: System, distance: int, span: int) -> tuple[CommPath, CommPath]:
    """The links of a pipeline's two-rank transfers: rank i to rank i + ``distance`` for every i of a stage, the
    ranks ``0 .. span - 1`` holding the pipeline (rank order of topology.layout).  Returns the path of such a pair
    inside a node and the path of one between nodes (one rank a node on either side).

    comm_path's size-2 rule prices the pair ``(0, distance)``: aligned (2 x distance divides the node) it is the
    link level holding both, else "misaligned" and the network, though a pair of stages 4 ranks apart on
    Aurora's 12 ranks a node (ranks 4-11, say) shares a node.  A pair inside a node that no aligned level holds
    goes over the node's own link (its last level: XeLink on Aurora, where any pair 2 or more ranks apart is on
    two GPUs); one that leaves the node, over the network."""
    r = system.node.ranks
    first = comm_path(system, 2, distance)
    if span <= r:  # the pipeline is one node
        inside = first if first.nodes == 1 else _node_pair(system)
        return inside, inside
    if distance >= r:  # ranks a node or more apart never share one
        return first, first
    return (first if first.nodes == 1 else _node_pair(system)), comm_path(system, 2, r)


def _node_pair(system: System) -> CommPath:
    node, net = system.node, system.network
    link = node.link_levels[-1].link
    return CommPath(2, 2, 1, link, net.node_gbps / node.ranks if net else 0.0, net.nic.latency_us if net else 0.0,
                    link.name, node.device.collective_call_us)


def _move(volume: float, link: Link | None, gbps: float) -> float:
    """Seconds to move ``volume`` bytes per rank: over ``link`` with its protocols, else at ``gbps``."""
    if link is None:
        return volume / (gbps * 1e9)
    bulk = volume / (link.effective_gbps * 1e9)
    if link.low_latency_efficiency > 0:
        # NCCL-style protocol choice: the low-latency protocol until the bandwidth
        # protocol's pipeline set-up pays for itself.
        return min(volume / (link.gbps * link.low_latency_efficiency * 1e9),
                   link.bandwidth_setup_us * 1e-6 + bulk)
    return bulk


def _ring(op: str, n: int, nbytes: float, latency_us: float, link: Link | None, gbps: float = 0.0) -> float:
    if n <= 1 or nbytes <= 0:
        return 0.0
    steps = math.ceil(math.log2(n))
    frac = (n - 1) / n
    if op == "all_reduce":
        return _move(2 * frac * nbytes, link, gbps) + 2 * steps * latency_us * 1e-6
    return _move(frac * nbytes, link, gbps) + steps * latency_us * 1e-6


# NCCL's point-to-point split (src/enqueue.cc scheduleP2pTasksToPlan and calcP2pChunkSize, src/graph/paths.cc
# ncclTopoComputeP2pChannels, src/init.cc; the same from v2.14.3 to v2.19.4, 2022-2024).  A send or receive of
# more than NCCL_P2P_LL_THRESHOLD bytes runs the Simple protocol (no LL / LL128, whatever its size).
NCCL_P2P_LL_THRESHOLD = 16384
NCCL_P2P_CHANNELS = 32  # comm->p2pnChannels: the collectives' channel count rounded up to a power of 2, at most
#                         MAXCHANNELS (32); NVSwitch nodes (24 channels or more) reach 32
NCCL_NVL_PEER_CHANNELS = 32  # p2pnChannelsPerPeer in one NVSwitch node: 2 x (links of the pair), to a power of 2
NCCL_NET_PEER_CHANNELS = 2  # NCCL_NCHANNELS_PER_NET_PEER (default 2): p2pnChannelsPerPeer of EVERY peer once the
#                             communicator has a rank on another node (the minimum over all its peers)
NCCL_P2P_NVL_CHUNK = 1 << 19  # NCCL_P2P_NVL_CHUNKSIZE, a communicator inside one NVLink node
NCCL_P2P_NET_CHUNK = 1 << 17  # NCCL_P2P_NET_CHUNKSIZE, a communicator spanning nodes (for all its peers)


def nccl_p2p_channels(nbytes: float, comm_ranks: int, multi_node: bool) -> int:
    """Channels one NCCL send (or receive) of ``nbytes`` runs on, in a communicator of ``comm_ranks`` ranks
    (spanning nodes or not): NCCL cuts the buffer into chunks of at most ``maxSize`` (32 chunk sizes in one node,
    one chunk size across nodes), starting from ``nChannelsMin`` chunks and doubling up to ``nChannelsMax``, each
    chunk on its own channel; both bounds fall as the communicator grows (``nChannelsMin x nRanks <=
    p2pnChannels``, ``nChannelsMax x nRanks <= 4 p2pnChannels``).  PyTorch's ``batch_isend_irecv`` (Megatron's
    pipeline exchange) runs on the whole process group's communicator, a lone ``send``/``recv`` on a two-rank
    one (ProcessGroupNCCL::pointToPoint)."""
    per_peer = NCCL_NET_PEER_CHANNELS if multi_node else NCCL_NVL_PEER_CHANNELS
    chunk = NCCL_P2P_NET_CHUNK if multi_node else NCCL_P2P_NVL_CHUNK
    ranks = max(2, comm_ranks)
    n_min = n_max = per_peer
    while n_min * ranks > NCCL_P2P_CHANNELS and n_min > 1:
        n_min //= 2
    while n_max * ranks > 4 * NCCL_P2P_CHANNELS and n_max > 1:
        n_max //= 2
    min_size, max_size = chunk // 8, (chunk if multi_node else 32 * chunk)
    size, n = max(min_size, math.ceil(nbytes / n_min)), n_min
    while size > max_size and n <= n_max // 2:
        n *= 2
        size = math.ceil(nbytes / n)
    size = -(-size // min_size) * min_size  # alignUp(size, minSize)
    return max(1, min(n, math.ceil(nbytes / size)))


def collective_seconds(op: str, nbytes: float, path: CommPath, comm_ranks: int = 2,
                       comm_multi_node: bool = False) -> float:
    """Time of one collective; ``nbytes`` is the full (unsharded) buffer per rank for
    all_reduce/reduce_scatter/all_gather, the bytes a rank sends for all_to_all and p2p.

    Every call pays the device's ``collective_call_us`` once (one library call, even
    when it runs hierarchically), plus per-step latencies and the transfer.  A p2p inside a node, on a link
    whose NCCL send/recv rate was measured (``Link.p2p_channel_gbps``), moves at the rate of the channels NCCL
    gives it (``nccl_p2p_channels``: the communicator's ``comm_ranks`` and whether it spans nodes)."""
    n = path.size
    if n <= 1 or nbytes <= 0:
        return 0.0
    intra = path.intra
    intra_lat = intra.latency_us if intra else 0.0
    call = path.call_us * 1e-6
    if op == "p2p":
        if path.nodes == 1:
            if intra is not None and intra.p2p_channel_gbps > 0 and nbytes > NCCL_P2P_LL_THRESHOLD:
                ch = nccl_p2p_channels(nbytes, comm_ranks, comm_multi_node)
                gbps = min(intra.p2p_gbps or intra.effective_gbps, ch * intra.p2p_channel_gbps)
                return call + nbytes / (gbps * 1e9) + intra_lat * 1e-6
            return call + _move(nbytes, intra, 0.0) + intra_lat * 1e-6
        return call + nbytes / (path.inter_gbps * 1e9) + path.inter_latency_us * 1e-6
    if op == "all_to_all":
        t_intra = _move(nbytes * (path.k - 1) / n, intra, 0.0) if path.k > 1 else 0.0
        t_inter = nbytes * (n - path.k) / n / (path.inter_gbps * 1e9) if path.nodes > 1 else 0.0
        latency = (intra_lat * math.ceil(math.log2(path.k)) if path.k > 1 else 0.0) + (
            path.inter_latency_us * math.ceil(math.log2(path.nodes)) if path.nodes > 1 else 0.0)
        return call + max(t_intra, t_inter) + latency * 1e-6
    if op not in ("all_reduce", "reduce_scatter", "all_gather"):
        raise ValueError(f"unknown collective {op!r}")
    if path.nodes == 1:
        return call + _ring(op, n, nbytes, intra_lat, intra)
    if path.k == 1:
        return call + _ring(op, n, nbytes, path.inter_latency_us, None, path.inter_gbps)
    # hierarchical: intra-node reduce-scatter/all-gather, inter-node on 1/k of the buffer; pipelined
    # (``CommPath.pipelined``, NCCL) the slower leg sets the transfer time and only the latency steps of
    # both add up, else the legs run one after the other.
    inter = _ring(op, path.nodes, nbytes / path.k, path.inter_latency_us, None, path.inter_gbps)
    if not path.pipelined:
        if op == "all_reduce":
            return call + 2 * _ring("reduce_scatter", path.k, nbytes, intra_lat, intra) + inter
        return call + _ring(op, path.k, nbytes, intra_lat, intra) + inter
    inter_lat = (2 if op == "all_reduce" else 1) * math.ceil(math.log2(path.nodes)) * path.inter_latency_us * 1e-6
    if op == "all_reduce":
        intra_t = 2 * _ring("reduce_scatter", path.k, nbytes, intra_lat, intra)
        intra_lat_s = 2 * math.ceil(math.log2(path.k)) * intra_lat * 1e-6
    else:
        # NCCL's all-gather / reduce-scatter are one flat ring over all n ranks (src/device/all_gather.h runRing,
        # v2.19.3-1; the only algorithm for them across nodes in tuning.cc v2.18-v2.22, PAT from v2.23 being for
        # one rank a node): every chunk passes n - 1 hops, so each node boundary carries (n - 1) / n of the
        # buffer, over the k NICs of the group's ranks, not the (nodes - 1) / nodes a two-level algorithm would
        # send.  Session 11, branch flagperf16; tests/test_planner_flat_ring.py.
        inter = nbytes / path.k * (n - 1) / n / (path.inter_gbps * 1e9) + inter_lat
        intra_t = _ring(op, path.k, nbytes, intra_lat, intra)
        intra_lat_s = math.ceil(math.log2(path.k)) * intra_lat * 1e-6
    return call + max(intra_t - intra_lat_s, inter - inter_lat) + intra_lat_s + inter_lat


# ------------------------------------------------------------ compute time
def gemm_seconds(device: Device, m: float, n: float, k: float) -> float:
    """Roofline time of one bf16 GEMM (m x k) @ (k x n) with wave quantisation."""
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    tiles = math.ceil(m / TILE) * math.ceil(n / TILE)
    waves = math.ceil(tiles / device.compute_units)
    utilisation = tiles / (waves * device.compute_units)
    flops = 2.0 * m * n * k
    t_flops = flops / (device.bf16_tflops * 1e12 * device.gemm_efficiency * utilisation)
    t_bytes = 2.0 * (m * k + k * n + m * n) / (device.memory_gbps * 1e9)
    return max(t_flops, t_bytes) + device.launch_us * 1e-6


@dataclass(slots=True)
class LayerCost:
    """Per micro-batch, per rank: times (s) and bytes of one dense and one MoE layer."""

    fwd_dense: float  # compute of the forward (GEMMs, attention core, elementwise, launches)
    fwd_moe: float
    bwd_dense: float  # compute of the backward
    bwd_moe: float
    attn_fwd: float  # attention core alone (what selective recomputation repeats)
    tp_fwd: float  # exposed tensor-parallel collectives of one layer's forward
    ep_fwd: float  # expert all-to-all of one MoE layer's forward (dispatch + combine)
    cp_fwd_exposed: float  # ring-attention exchange not hidden behind the attention core
    cp_bwd_exposed: float
    head_fwd: float  # LM head GEMM + loss on the last stage (backward: BWD_FACTOR times)
    embed_fwd: float  # embedding lookup (backward: BWD_FACTOR times)
    act: dict[str, tuple[float, float]]  # recompute -> (dense layer bytes, moe layer bytes)
    moe_buffer: float  # all-to-all send+receive buffers of one MoE layer (transient)
    logits: float  # bytes of the last stage's logits for one micro-batch
    p2p: float  # one stage-boundary send (s) on the pipeline path: between the first two stages
    moe_block_fwd: float = 0.0  # router, routed and shared experts and their elementwise work (no attention)
    norm_fwd: float = 0.0  # the two norms of a layer
    tp_fwd_moe: float | None = None  # tensor-parallel collectives of one MoE layer's forward (None: tp_fwd)
    moe_act_fwd: float = 0.0  # the routed experts' activation (elementwise) of one MoE layer's forward
    head_bwd_extra: float = 0.0  # the loss's backward beyond BWD_FACTOR x its forward (``logit_bwd_bytes``)
    pipe_meta: float = 0.0  # DeepSpeed's pipeline: one PartitionedTensor metadata send (s) before each transfer
    pipe_gather: float = 0.0  # DeepSpeed's pipeline: one PartitionedTensor rebuild, an all-gather in the TP group (s)
    # the same send (``p2p``) and metadata send (``pipe_meta``) on a boundary between two nodes: where the first two
    # stages share a node and the pipeline spans nodes, the boundaries at the node edges cross the network
    # (``pipeline_node_hops``); elsewhere equal to ``p2p`` and ``pipe_meta``
    p2p_node: float = 0.0
    pipe_meta_node: float = 0.0
    # tensor-parallel collectives of one dense layer's backward beyond ``tp_fwd`` (``Implementation.parallel_block``:
    # one all-reduce forward, two backward)
    tp_bwd_extra: float = 0.0


# DeepSpeed's PartitionedTensor.to_meta(): an int64 tensor of the shape, the partition count and offsets (a few
# dozen elements); its send costs a call and a latency, not bandwidth
PIPE_META_BYTES = 8 * 16
BWD_FACTOR = 2.0  # backward GEMMs (data + weight gradients, each the forward's FLOPs) and elementwise work
ATTN_BWD_FACTOR = 2.5  # fused attention backward: 5 matmuls (it recomputes the scores) to the forward's 2
ATTN_TILE = 128  # query/key tile of fused attention kernels: causal diagonal tiles are computed whole

# Elementwise traffic of one layer's forward as alphaexa.model runs it in eager PyTorch: bytes read
# plus written per element of the tensor named, and the kernels it takes.  Backward moves about
# BWD_FACTOR times as much.  Counting the implementation (fp32 norms and rotary, unfused SwiGLU)
# is what brings the 125m/1b predictions in line with the H200 measurements; a fused or compiled
# model would move less.
NORM_BYTES, NORM_KERNELS = 20, 3  # x.float() 2+4, fused rms_norm in fp32 4+4, .to(bf16) 4+2
ROPE_BYTES, ROPE_KERNELS = 48, 9  # fp32 rotary: upcast 6, four half-width products 16, two sums 12,
#                                   cat 8, downcast 6
RESIDUAL_BYTES = 6  # read two bf16 tensors, write one
ATTN_OUT_BYTES = 4  # (B, H, S, D) -> (B, S, H*D) copy before the output projection
ACT_BYTES = {"gelu": (4, 1), "swiglu": (10, 2)}  # per hidden unit: gelu 2+2; silu 2+2, product 4+2
# MoE layer, per routed row of width h: gather the token 2+2, weight the expert output 2+2, read it
# in index_add 2; per token: zeros 2, index_add read-modify-write 4.
MOE_ROW_BYTES, MOE_TOKEN_BYTES = 10, 6
# Of MOE_ROW_BYTES, the weighting of each routed row by its routing probability (2 + 2): a framework that multiplies
# the probability inside the experts' activation kernel instead (Megatron-Core from 2659630721, 2025-04-09, which sends
# the probabilities to the experts: Implementation.a2a_probs) runs its unfused unpermutation as zeros + scatter_add_
# alone (moe_utils.py ``unpermute`` with ``probs=None``, as the all-to-all dispatcher's ``combine_postprocess`` calls it).
MOE_WEIGHT_BYTES = 4
# Transformer Engine's fused MoE permutation (``moe_permute`` / ``moe_unpermute`` with a mask map:
# transformer_engine/pytorch/triton/permutation.py, ``_permute_kernel`` and ``_unpermute_kernel``, TE 2.x): the
# permute loads each input row once and stores it to each of its routed rows; the unpermute loads each routed row
# once, merges in registers (with the routing weight where it is applied there) and stores each input row once.
# Per element: a routed row 2 written + 2 read, an input row 2 read + 2 written.  Counted, not fitted.
FUSED_PERMUTE_ROW_BYTES, FUSED_PERMUTE_INPUT_BYTES = 4, 4
# Megatron's all-to-all dispatcher's small collectives (Implementation.a2a_probs / a2a_count_gather): a routing
# probability per dispatched row (fp32 at most: the router's dtype; the call is latency-bound either way) and an int64
# token count per expert and rank.
PROBS_BYTES, COUNT_BYTES = 4, 8
MOE_ROUTING_KERNELS = 45  # fp32 softmax, top-k, bincount, stable sort, gathers, index_add, aux/z losses


# The s_half of each fused causal kernel's sequence curve (attention_rate_scale) by GPU generation
# (Device.arch), from the published charts (FlashAttention-2 paper figure 4d, A100 80GB fwd + bwd causal d 128;
# the flash-attention README's H100 fwd + bwd causal d 128; cuDNN: FlashAttention-3 paper figure 5d, H100 fwd
# causal d 128 until session 8, now our H200's fwd + bwd sweep; least squares of s / (s + s_half) on the bars at 512 .. 16k, docs/planner.md section 10 "Session 7:
# attention rate by sequence length"; nothing fitted to rows).  A kernel without a chart on a generation runs
# on the device's own curve (Device.attention_seq_half), except FlashAttention's Triton kernel on Hopper, whose
# only chart is the A100's: its s_half is taken there as well (the curve is the kernel's per-row prologue and
# epilogue against its row's work; FlashAttention-2's own s_half moves 488 -> 528 from A100 to H100).
KERNEL_SEQ_HALF: dict[str, dict[str, float]] = {
    "flash2": {"ampere": 488.0, "hopper": 528.0},  # FlashAttention-2: 99 .. 189 (A100), 163 .. 328 (H100) TFLOP/s
    # "FlashAttention Triton" 50 .. 80 TFLOP/s (A100 only): the family's curve, not llm-foundry's own kernel, whose
    # sweep is unpublished: the chart's bars are OpenAI Triton's triton.ops.flash_attention (flash-attention 60499abc
    # benchmarks/benchmark_flash_attention.py), llm-foundry's is flash_attn_triton.py on pre-MLIR Triton (session 10)
    "flash-triton": {"ampere": 320.0, "hopper": 320.0},
    # cuDNN: our H200's forward + backward sweep (session 8; hardware.HOPPER_ATTENTION_SEQ_HALF); no A100 figure
    "cudnn": {"hopper": 583.0},
}
ATTENTION_KERNELS = ("", *KERNEL_SEQ_HALF)


@dataclass(frozen=True)
class Implementation:
    """What the framework running the step does, as far as time is concerned.

    The default is alphaexa's eager model (the byte counts above).  Published runs
    use other frameworks: fused kernels move fewer bytes (counted per kernel, not
    fitted), some materialise the attention scores, and some overlap communication
    the trainer leaves exposed.  ``topology/data/published_runs.json`` names one per row.
    """

    name: str = "alphaexa"
    norm_bytes: float = NORM_BYTES  # per element of each norm's input
    norm_kernels: int = NORM_KERNELS
    rope_bytes: float = ROPE_BYTES  # per element of q and k
    rope_kernels: int = ROPE_KERNELS
    residual_bytes: float = RESIDUAL_BYTES
    attn_out_bytes: float = ATTN_OUT_BYTES
    act_scale: float = 1.0  # of ACT_BYTES (1: unfused activation and product; fused SwiGLU/GELU: 0.6)
    logit_bytes: float = 12.0  # per logit after the LM head GEMM (fp32 upcast + cross-entropy)
    attention: str = "fused"  # fused (FlashAttention-style) | unfused (scores in HBM, softmax, dropout)
    # Dropout (p > 0) on the materialised attention probabilities of unfused attention (SCORE_DROPOUT_*_BYTES);
    # False: p = 0 (the module returns its input) or fused attention, where no transferable figure for the kernel's
    # dropout cost is documented (docs/planner.md section 10, "Session 8: dropout").
    score_dropout: bool = False
    moe_routing_kernels: int = MOE_ROUTING_KERNELS
    moe_host_sync: bool = True  # dropless routing sizes its output on the host (torch.bincount)
    ep_overlap: bool = False  # expert all-to-all hidden behind another micro-batch's compute
    tp_overlap: bool = False  # TP all-gathers / reduce-scatters pipelined with their GEMMs (TE's userbuffers)
    ep_dedup: bool = False  # a token goes once to each rank holding its experts (DeepEP), not once per expert
    gemm_scale: float = 1.0  # of the device's gemm_efficiency: this framework's GEMM kernels and their vintage
    attention_scale: float = 1.0  # of the device's attention_efficiency: this framework's attention kernel
    param_gather_overlap: bool = False  # zero1/zero2 parameter all-gather overlapped with the next forward
    # The interleaved schedule's steady-state pipeline exchanges posted ahead (Megatron's ``overlap_p2p_comm``, its
    # default from 4eeff55d1f, 2023-10-12: ``--no-overlap-p2p-communication`` is the opt-out, forced off without a
    # virtual pipeline).  schedules.py ``forward_backward_pipelining_with_interleaving`` (71c394b172) posts each
    # steady-state send / receive right after the op that made the tensor and waits for a receive only before the op
    # that needs it; in the schedule's own order that leaves a hop's latency on the critical path only in the fill and
    # the drain (bench/strong_scaling_vs_model.py replays it), so the steady state's 2 m vpp exchanges are not charged.
    # Nothing is charged for their overlap either: a p2p kernel runs on a few channels (nccl_p2p_channels).
    pp_overlap_p2p: bool = False
    # The gradient buckets of an overlapped zero1/zero2 reduction, in parameters: ``(floor, per_rank)`` gives buckets
    # of ``max(floor, per_rank x dp)`` parameters, the data-parallel size ``dp`` of the rank's dense group (Megatron-
    # Core's DDP since 0fda386c04, 2024-04-11: ``max(40000000, 1000000 x dp)`` when the run sets no bucket size,
    # "larger DP sizes need larger buckets to ensure collectives do not become latency-bound";
    # MEGATRON_CORE_DDP_BUCKETS).  The last bucket's reduction (and, with ``param_gather_overlap``, the first
    # bucket's gather) is what the backward (forward) cannot hide, so at large dp the exposed share grows with dp.
    # Megatron buckets only the first pipeline stage (``pipeline_model_parallel_rank() > 0``: one bucket, "not on the
    # critical path"), so later stages keep the one-block rule.  (0, 0): one block a bucket (the rule before).
    dp_bucket_params: tuple[float, float] = (0.0, 0.0)
    # Host time of one MoE layer's forward (s): the framework's Python/C++ launch path and its host
    # synchronisations (the token counts the dispatcher and the grouped GEMM size their outputs from).
    # The device cannot run ahead of the host past such a synchronisation, so the layer's forward takes
    # the longer of its GPU time (incl. exposed TP/EP collectives) and this.  0: not modelled.
    moe_host_floor_s: float = 0.0
    # Megatron's sequence parallelism (Korthikanti et al. 2022): with tp > 1 the norms, dropouts and residual
    # adds between the TP regions run on 1/tp of the tokens.  Without it (Megatron-LM before 2022) every TP
    # rank runs them on all the tokens.
    sequence_parallel: bool = True
    # The fused-attention kernel family the framework runs.  Its rate by head dimension, where the device's
    # attention_efficiency (measured at head dim 128) does not carry it: "cudnn" (Transformer Engine's fused
    # attention) scales it by CUDNN_HEAD_DIM_SCALE.  Its rate by sequence length: the kernel's own published
    # curve on the device's generation (KERNEL_SEQ_HALF: "flash2", FlashAttention-2; "flash-triton",
    # FlashAttention's Triton kernel; "cudnn") where it has one, else the device's curve.  "": the device's
    # curve, no head-dim table.
    attention_kernel: str = ""
    # A clamped GLU activation (GPT-OSS: gate clamped to <= 7, linear half to [-7, 7]) that the framework
    # clamps outside its fused activation kernel: extra bytes per expert hidden unit (and kernels), forward
    # and backward.  0: none.
    glu_clamp_fwd_bytes: float = 0.0
    glu_clamp_bwd_bytes: float = 0.0
    glu_clamp_kernels: tuple[int, int] = (0, 0)
    # The routed experts' second-projection bias added outside the grouped GEMM, one local expert at a time, each row's
    # bias scaled by its routing probability (the probability multiplies inside the activation, before that
    # projection): bytes per element of the rows it touches (routed rows x d_model), forward and backward, and
    # kernels per local expert and once a layer, forward and backward.  0: none (no bias, or added in the GEMM).
    moe_bias_fwd_bytes: float = 0.0
    moe_bias_bwd_bytes: float = 0.0
    moe_bias_kernels_per_expert: tuple[int, int] = (0, 0)
    moe_bias_kernels_fixed: tuple[int, int] = (0, 0)
    # Bytes a gradient element has in the data-parallel reduction (reduce-scatter / all-reduce): 2 for a bf16
    # reduction, 4 where the framework reduces in fp32 (FSDP's MixedPrecision reduce_dtype=float32).
    grad_reduce_bytes: float = GRAD_BYTES
    # Passes over the rank's whole contiguous gradient buffer (every parameter the rank holds, not the optimizer's
    # shard) once a step, on the compute stream, in element accesses of ``grad_reduce_bytes`` each: Megatron-Core's
    # DDP under Megatron-LM's training defaults (MEGATRON_DDP_GRAD_BUFFER_PASSES).  0: none counted.
    grad_buffer_passes: float = 0.0
    # The embedding's backward as PyTorch's ``F.embedding`` gives it (``embedding_dense_backward``: a dense gradient of
    # the rank's whole table, zero-filled, 2 bytes written an element, then the tokens' rows added) and a DDP hook
    # that adds it into the parameter's main gradient (``param.main_grad.add_(param.grad.data)``: the bf16 gradient
    # read, the main gradient read and written in ``grad_reduce_bytes``), every micro-batch on the embedding's stage:
    # Megatron-Core's VocabParallelEmbedding (and its learned position embedding) under its DDP (MEGATRON_EMBED_GRAD).
    embed_dense_grad: bool = False
    # Megatron-Core's all-to-all token dispatcher (``MoEAlltoAllTokenDispatcher``) with the routed experts split
    # over an expert-tensor-parallel group (etp > 1): each rank routes its own sequence-parallel tokens, the EP
    # all-to-all moves them, then a plain NCCL all-gather over the expert-TP group collects the *routed rows*
    # (top_k x capacity copies of the tokens, not the tokens) and the combine gives them back with a
    # reduce-scatter (``gather_from_sequence_parallel_region`` / ``reduce_scatter_to_sequence_parallel_region``
    # in ``dispatch_postprocess`` / ``combine_preprocess``): torch.distributed collectives, outside Transformer
    # Engine's userbuffers, so ``tp_overlap`` does not hide them.  A rank holding several experts then sorts the
    # gathered rows by local expert (``sort_chunks_by_idxs``, or with capacity padding a transpose and
    # ``contiguous``) and restores the order after the experts: one copy each way.
    moe_dispatch_tp_gather: bool = False
    # Megatron-Core's ``SequentialMLP`` (``moe_grouped_gemm: false``): each local expert is its own MLP module,
    # so its GEMMs and activation run as separate kernels (no shared waves); with several local experts the
    # forward first reads the token counts to the host (``tokens_per_expert.tolist()``: one synchronisation),
    # splits the rows into views and concatenates the experts' outputs (``torch.cat``: one copy), and the
    # backward concatenates the split's gradients (one copy).  False: one grouped GEMM per projection.
    expert_loop: bool = False
    # The MoE permutation runs as Transformer Engine's fused kernels (Megatron ``--moe-permute-fusion``; NeMo
    # Automodel's DeepEP dispatcher sets it; HybridEP permutes inside its dispatch and un-permutes inside its
    # combine): FUSED_PERMUTE_*_BYTES per routed row and per input row (the rank's tokens for a dispatcher that
    # permutes before the all-to-all, the token copies DeepEP delivers for one that permutes after it) instead of
    # the eager gather / weighting / index_add of MOE_ROW_BYTES and MOE_TOKEN_BYTES.
    moe_permute_fused: bool = False
    # Megatron-Core's all-to-all token dispatcher (``MoEAlltoAllTokenDispatcher``, token_dispatcher.py) runs two small
    # collectives beside the token all-to-alls of every MoE layer and micro-batch.  ``a2a_probs``: the routing
    # probabilities of the permuted rows go in an all-to-all of their own after the tokens' (``token_dispatch``:
    # ``global_probs = all_to_all(ep_group, permuted_probs, ...)``; Megatron-LM from 2659630721, 2025-04-09, which
    # moved the probability product into the experts' activation; not at core v0.8 - v0.11), and their gradient comes
    # back in one more in the backward.  ``a2a_count_gather``: the dropless dispatcher all-gathers each rank's token
    # counts per expert over the expert-TP x EP group before the dispatch (``preprocess``:
    # ``gather_from_sequence_parallel_region(num_local_tokens_per_expert, group=tp_ep_group)``, int64), forward
    # only (integer counts carry no gradient); with drop-and-pad (``moe_pad_expert_input_to_capacity``)
    # ``preprocess`` returns before it.  Both are latency-bound NCCL calls on the layer's critical path, priced by
    # ``collective_seconds`` with the device's call cost and the links' latencies.  False: not run (DeepEP /
    # HybridEP carry the probabilities in their dispatch kernel and size it in their own layout kernel).  With
    # ``a2a_probs`` the probability multiplies inside the experts' activation, so an unfused permutation has no
    # weighting pass (MOE_WEIGHT_BYTES).
    a2a_probs: bool = False
    a2a_count_gather: bool = False
    # DeepSpeed's BF16_Optimizer (bf16 weights, fp32 gradient accumulation: DeepSpeed's choice for bf16
    # without ZeRO, for bf16 + ZeRO-1 with ``grad_accum_dtype`` fp32, and BigScience's BLOOM run), read in
    # deepspeed/runtime/bf16_optimizer.py at 56c52238 (2022, the upstreamed olruwase/bf16-updates branch) and
    # at master: after every micro-batch's backward, on every pipeline stage (``_exec_backward_pass`` for the
    # others, ``engine.backward`` -> ``optimizer.backward`` on the last), ``update_hp_grads`` adds each bf16
    # gradient into its fp32 copy: ``hp_grad.add_(lp.grad.to(fp32))``, a cast (2 read, 4 written) and an add
    # (4 + 4 read, 4 written): 18 bytes per parameter of the rank, a micro-batch.  0: not this optimizer.
    hp_grad_accum_bytes: float = 0.0
    # Once a step, per parameter of the rank, around the engine's gradient all-reduce
    # (``buffered_allreduce_fallback`` -> ``allreduce_bucket``): the fp32 gradients cast to the bf16
    # communication type (4 read, 2 written) and the result cast back (2 read, 4 written), and
    # ``clear_hp_grads`` zeroing the fp32 buffer after the step (4 written): 16 bytes.
    hp_grad_step_bytes: float = 0.0
    # DeepSpeed's engine reduces the gradients (``allreduce_gradients``, or the pipeline engine's
    # ``ReduceGrads`` instruction) once the backward pass has finished, bucket by bucket: none of it
    # overlaps the backward's compute.  With the BF16_Optimizer the reduction is a full all-reduce
    # (``_bf16_reduce_grads`` / ``buffered_allreduce_fallback``) even where it shards the optimizer state.
    dp_reduce_after_backward: bool = False
    # Bytes per logit of the loss's backward, where the framework's count is not BWD_FACTOR times the
    # forward's ``logit_bytes`` (negative: BWD_FACTOR x logit_bytes).
    logit_bwd_bytes: float = -1.0
    # The rotary embedding's backward, per element of q and k, where the framework's count is not BWD_FACTOR times
    # the forward's (negative: BWD_FACTOR x rope_bytes and rope_kernels).
    rope_bwd_bytes: float = -1.0
    rope_bwd_kernels: int = -1
    # The optimizer step's bytes per parameter of the rank's optimizer shard (``local``): by default the
    # trainer's fused AdamW and the clipping of that shard's gradients (DEVICE_OPTIMIZER_BYTES).  A framework
    # that clips the full gradients outside the sharded step counts the clipping in ``hp_grad_step_bytes``.
    optimizer_bytes: float = DEVICE_OPTIMIZER_BYTES
    # Host seconds per parameter tensor of an optimizer that synchronises with the device once a tensor (Composer
    # 0.16's DecoupledAdamW: COMPOSER_STEP_SYNC_HOST_S); 0: a fused or multi-tensor step whose launches run ahead.
    # The tensors are those with elements on the busiest rank (``fsdp_rank_tensor_numels``) of a dense model whose
    # linear layers and norms carry biases when ``param_biases`` (MPT with no_bias false).
    optimizer_tensor_host_s: float = 0.0
    param_biases: bool = False
    # Dropless routing that is not forced to balance (Megatron's aux-loss router without
    # ``--moe-router-force-load-balancing``): in each MoE layer the expert-parallel rank holding the most routed rows
    # receives (1 + this) times the mean in the dispatch, runs its grouped GEMMs and routed-row elementwise work on
    # them and sends them back in the combine, and the all-to-alls wait for it, so those terms of the layer are the
    # fullest rank's.  0: balanced (forced balance, or capacity with padding).  Set per row from a documented
    # measurement (topology/validation.py ``AUX_LOSS_IMBALANCE``); applied only with ep > 1 and no capacity factor.
    moe_load_imbalance: float = 0.0
    # Megatron-Core's layer-scoped Transformer Engine CUDA graphs (``cuda_graph_impl="transformer_engine"``,
    # ``cuda_graph_scope`` moe_router + moe_preprocess; session 10, branch moe12).  TE's ``make_graphed_callables``
    # replays a graph through ``Graphed.forward``, which copies every tensor argument (positional and keyword) into
    # the graph's static input buffer unless it already lives there (``static_input_surface[i].copy_(inputs[i])``),
    # and ``Graphed.backward``, which copies every incoming output gradient into the static grad-output buffer
    # (``g.copy_(grad)``); the outputs and the input gradients are the static buffers themselves, no copy
    # (transformer_engine/pytorch/graph.py, the same code in v2.4, v2.9, v2.12, v2.13, v2.14 and at d0067d0).
    # Megatron-LM's partial MoE graph (transformer_layer.py ``_te_cuda_graph_capture`` / ``_forward_mlp`` and
    # moe_utils.py ``MoECudaGraphPartialCaptureSignal``, at e41b37002) takes the layer's hidden states (the
    # attention block's output, the rank's sequence-parallel rows) and returns the preprocess step's outputs, the
    # residual (the input itself) and the dispatcher's integer metadata: the all-to-all dispatcher's
    # ``dispatch_preprocess`` permutes before the dispatch, so its output is the permuted rows (top_k x capacity a
    # token), the flex dispatcher's (DeepEP, HybridEP; ``ep_dedup``) the tokens as they are.  Per MoE layer and
    # micro-batch: forward, the input's copy (2 read + 2 written a d_model element of the rank's tokens); backward,
    # the copies of the preprocess output's gradient (4 an element of its rows), the residual's (4 an element) and
    # the probabilities' (2 x PROBS_BYTES, top_k a token; fp32 at most).  The eager copies the model did not have.
    graph_copies: bool = False
    # ... with the attention inside the same graph (scope attn + moe_router + moe_preprocess): the input is the
    # layer's input (the same size) and the attention mask; with no mask from the data (Megatron-Bridge's
    # ``skip_getting_attention_mask_from_dataset`` True) Megatron builds a zero boolean mask of (mbs, 1, s / cp, s)
    # every replay (``get_zero_attention_mask``, transformer_layer.py ``_get_te_cuda_graph_replay_args`` at
    # e41b37002) and TE copies it into the static buffer: 1 byte written, then 1 read + 1 written an element, 2
    # kernels more in the forward.
    graph_attn: bool = False
    # Megatron-DeepSpeed's grouped-query attention (``ParallelAttention.repeat_kv``, argonne-lcf's fork): K and
    # V are expanded to the query's heads and materialised (``expand`` + ``reshape``: kv read, q width
    # written, bf16) before the rotary embedding and the attention kernel, so the rotary runs on q-width keys.
    # False: K and V enter the rotary and the kernel at their own width (the trainer, SDPA's enable_gqa).
    gqa_repeat_kv: bool = False
    # The fused attention's backward runs one work-group a (micro-batch sample, head) pair (XeTLA's flash-attention
    # backward in IPEX 2.5.10-2.7.10: hardware.PVC_XETLA_BWD_GROUP_TFLOPS), so with fewer pairs than the device's
    # measured backward had, it runs slower, by that kernel's published rate at the rank's mbs x heads / tp pairs
    # (head_grid_bwd_slowdown).  False: a backward whose grid also spans the sequence (FlashAttention, cuDNN, IPEX
    # 2.8.10's rewritten XeTLA backward), at the device's figure.
    attn_bwd_head_grid: bool = False
    # DeepSpeed's PipelineEngine (deepspeed/runtime/pipe/engine.py and p2p.py, read at 56c52238, 2022, and at master
    # 38327e07, unchanged): the TrainSchedule's forward step runs ``RecvActivation`` then ``SendGrad`` and its
    # backward step ``SendActivation`` then ``RecvGrad``, each a blocking ``dist.send`` / ``dist.recv`` of its own
    # (p2p.send asserts ``async_op == False``), so a middle stage pays four transfers a micro-batch on its path
    # where Megatron's batched isend/irecv pays two.  With TP > 1 the activation and its gradient go as a 1/tp
    # ``PartitionedTensor``: each transfer is preceded by its small metadata tensor (one more send, its call and
    # latency), and the tensor is rebuilt with an all-gather in the TP group three times a micro-batch
    # (``part_input.full()`` before the forward, the output and the received gradient before the backward).
    deepspeed_pipe: bool = False
    # Per attention score, the forward bytes of an additive bias the unfused attention adds through
    # ``torch.baddbmm(bias, q, k^T, beta=1)`` (BigScience's ALiBi, megatron/model/transformer.py at 640c8180):
    # PyTorch's out-of-place baddbmm expands the broadcast bias and copies it into the result (2 bytes written)
    # before the batched GEMM reads it back as C (2 read; ATen native/cuda/Blas.cpp ``baddbmm_out_cuda_impl``:
    # ``result.copy_(self)`` when beta != 0).  The bias needs no gradient: the backward is unchanged.
    score_bias_bytes: float = 0.0
    # The QKV projection's bias added outside its GEMM, bytes an element of the projection's output (q + 2 kv per
    # token and TP rank), forward and backward: legacy Megatron's ``ColumnParallelLinear`` for ``query_key_value`` keeps
    # its bias (``skip_bias_add`` False; the other projections hand theirs to the fused bias-GeLU / bias-dropout-add)
    # and adds it after the GEMM: ``output = torch.matmul(total_input, weight.t())`` then ``output = output + bias``
    # (megatron/mpu/layers.py at 35a3fa8b, megatron/core/tensor_parallel/layers.py in the Zero Bubble fork at
    # f68d3879: 2 read, 2 written), or ``F.linear(input, weight, bias)`` on the 3-D activation (aed2f75e, BigScience's
    # and gpt-neox's copies: PyTorch's matmul then ``add_``, the same bytes); the backward's ``grad_bias =
    # grad_output.sum(dim=0)`` reads the output gradient once (2).  One kernel each way.  (0, 0): the bias in the GEMM's
    # epilogue (Transformer Engine) or no bias (session 9, branch megfwd11).
    qkv_bias_bytes: tuple[float, float] = (0.0, 0.0)
    # The FFN's first-projection bias gradient reduced by autograd outside the GEMM, bytes an element of that
    # projection's output (up x d_ff / tp a token), backward only: Megatron-Core builds ``linear_fc1`` with
    # ``skip_bias_add=True`` and hands the bias to its fused bias-activation function, whose backward returns the
    # input's gradient as the bias's too (``BiasSwiGLUFunction.backward``: ``return tmp, tmp``,
    # megatron/core/fusions/fused_bias_swiglu.py at core_v0.6.0), which autograd sums to the bias's shape: one read
    # of the bf16 gradient (2), one kernel.  Dense layers only.  0: no linear biases (``--disable-bias-linear``) or
    # the bias in the GEMM's epilogue (session 10, branch flagperf12).
    ffn_bias_grad_bytes: float = 0.0
    # Megatron-LM's GPT data loader builds the causal attention mask ([mbs, 1, s, s] bool: ``GPTDatasetConfig.
    # create_attention_mask``, on unless ``--no-create-attention-mask-in-dataloader``), and every micro-batch TP
    # rank 0 copies it to the device (``.cuda(non_blocking=True)`` from the loader's pinned memory, on the compute
    # stream) and broadcasts it over the TP group (``get_batch_on_this_tp_rank``, megatron/training/utils.py at
    # core_v0.6.0), on the first and the last pipeline stage; the fused causal kernel never reads it.
    loader_attn_mask: bool = False
    # Every norm's forward all-reduces its weight and bias over the TP group before it runs (BigScience's
    # "layer-norm auto-sync" band-aid against TP-desynchronised LayerNorm weights: MixedFusedLayerNorm.forward
    # calls ``all_reduce(self.weight, AVG)`` and ``all_reduce(self.bias, AVG)``, Megatron-DeepSpeed branch
    # ds_ckpt_reshape-with-layer-norm-auto-sync at c44c85b9; chronicles.md, 2022-03-30): two small collectives a
    # norm, latency-bound, in the forward and so in a full recompute's redone forward, none in the backward.
    norm_tp_sync: bool = False
    # Attention and MLP in parallel on one input (GPT-J's residual; gpt-neox ``gpt_j_residual``, megatron/model/
    # transformer.py ``ParallelTransformerLayer.forward`` at c560814b, the GPT-NeoX-20B release): both output
    # projections keep their partial sums (``parallel_output``), the layer adds them and all-reduces the sum once
    # (``reduce_from_model_parallel_region``), so the forward runs one TP all-reduce a layer, not two; the backward
    # still runs two, one for each column-parallel input (``copy_to_model_parallel_region`` under the QKV and the
    # first MLP projection, which read two different norms' outputs).  Counted for TP without sequence parallelism.
    parallel_block: bool = False
    # Low-precision gradients accumulated by autograd across micro-batches (no fp32 copy): each micro-batch's
    # ``AccumulateGrad`` adds the new fp16 gradient into ``param.grad`` in place (2 + 2 read, 2 written), per
    # parameter of the rank.  DeepSpeed's fp16 ZeRO stage 1 (``FP16_DeepSpeedZeroOptimizer_Stage1``) keeps the
    # gradients in the parameters' ``.grad`` until the boundary.  0: not this accumulation.
    grad_accum_bytes: float = 0.0
    # The gradients are set to None at each step (``zero_grad(set_to_none=True)``), so the first micro-batch's
    # ``AccumulateGrad`` takes the new gradient without a copy: ``grad_accum_bytes`` is paid by m - 1 of the m
    # micro-batches (charged as (m - 1) / m of it each).  False: every micro-batch (the count as it stood).
    grad_accum_first_free: bool = False
    # With ``dp_reduce_after_backward`` and ZeRO-1: the reduction after the backward is a reduce-scatter of the
    # gradients (DeepSpeed's fp16 ZeRO stage 1 ``reduce_scatter_gradients`` with ``reduce_scatter: true``), not the
    # BF16_Optimizer's full all-reduce; then the step's all-gather of the parameters.
    dp_reduce_scatter: bool = False
    # Automatic mixed precision over fp32 parameters (torch.autocast: PyTorch Lightning's ``precision: bf16``, whose
    # module "remains in FP32", Lightning-AI/lightning#12591), without a low-precision copy of the weights kept between
    # micro-batches: every forward casts each fp32 weight to bf16 again (``weight.to(bf16)``: 4 read, 2 written), and
    # every backward casts its bf16 weight gradient back to the fp32 parameter's dtype (2 read, 4 written) before
    # AccumulateGrad adds it into the fp32 ``.grad`` in place (4 + 4 read, 4 written).  Bytes per parameter of the
    # stage, a micro-batch: ``autocast_fwd_bytes`` in the forward (redone by a full recompute), ``autocast_bwd_bytes``
    # in the backward.  0: the framework keeps bf16 weights (Megatron, DeepSpeed, FSDP's param_dtype).
    autocast_fwd_bytes: float = 0.0
    autocast_bwd_bytes: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.type != "float":
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{f.name}={v!r}: must be a finite number")
            # byte counts, time floors and rate scales are >= 0; logit_bwd_bytes < 0 means BWD_FACTOR x logit_bytes
            if v < 0 and f.name not in ("logit_bwd_bytes", "rope_bwd_bytes"):
                raise ConfigError(f"{f.name}={v!r}: must be >= 0")
        for name in ("gemm_scale", "attention_scale", "act_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"attention_kernel={self.attention_kernel!r}: must be one of "
                              f"{', '.join(repr(k) for k in ATTENTION_KERNELS)}")
        if self.grad_reduce_bytes not in (2, 4):
            raise ConfigError(f"grad_reduce_bytes={self.grad_reduce_bytes!r}: must be 2 (bf16) or 4 (fp32)")
        if len(self.qkv_bias_bytes) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float))
                                                or not math.isfinite(b) or b < 0 for b in self.qkv_bias_bytes):
            raise ConfigError(f"qkv_bias_bytes={self.qkv_bias_bytes!r}: must be (forward, backward) bytes, each a "
                              f"finite number >= 0")
        if min(self.glu_clamp_kernels) < 0:
            raise ConfigError(f"glu_clamp_kernels={self.glu_clamp_kernels!r}: must be >= 0")
        for name in ("moe_bias_kernels_per_expert", "moe_bias_kernels_fixed"):
            if min(getattr(self, name)) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be >= 0")
        if self.optimizer_bytes <= 0:
            raise ConfigError(f"optimizer_bytes={self.optimizer_bytes!r}: must be > 0")
        if self.moe_load_imbalance < 0:
            raise ConfigError(f"moe_load_imbalance={self.moe_load_imbalance!r}: must be >= 0")
        if self.optimizer_tensor_host_s < 0:
            raise ConfigError(f"optimizer_tensor_host_s={self.optimizer_tensor_host_s!r}: must be >= 0")
        # rope_bwd_kernels counts only beside rope_bwd_bytes (layer_cost reads it only then): refuse a count that
        # would be ignored, or a negative other than the -1 sentinel
        if self.rope_bwd_kernels < -1 or (self.rope_bwd_kernels >= 0 and self.rope_bwd_bytes < 0):
            raise ConfigError(f"rope_bwd_kernels={self.rope_bwd_kernels!r}: must be -1 (BWD_FACTOR x rope_kernels) "
                              f"or >= 0 together with rope_bwd_bytes >= 0 (got rope_bwd_bytes={self.rope_bwd_bytes!r})")


ALPHAEXA = Implementation()
ALPHAEXA_EAGER = Implementation(name="alphaexa-eager")  # the trainer's eager kernels, asked for explicitly
# The same trainer where ``train.compile=auto`` compiles it (support.compiled_by_default: CUDA, tp 1,
# no selective recompute): inductor fuses each chain of elementwise kernels, so the counts are those of
# one kernel reading its inputs and writing its output once.  Counted, not fitted:
#   norm: bf16 in 2 + bf16 out 2, one kernel;  rotary: q/k in 2 + out 2, one kernel;
#   SwiGLU: gate and up in 4 + product out 2 (6 of the eager 10);  the fused chunked LM-head loss
#   (train.fused_loss): each chunk's bf16 logits written once and read back once for softmax-minus-one-hot
#   (2 + 2) plus the loss reduction's read (2);  MoE dispatch counts experts with scatter_add (no host
#   sync) and its routing is fused to about 20 kernels.
ALPHAEXA_COMPILED = Implementation(name="alphaexa-compiled", norm_bytes=4.0, norm_kernels=1, rope_bytes=4.0,
                                   rope_kernels=1, act_scale=0.6, logit_bytes=6.0, moe_routing_kernels=20,
                                   moe_host_sync=False)
DEVICE_TYPES = {"nvidia": "cuda", "intel": "xpu", "cpu": "cpu"}  # hardware vendor -> torch device type


def grouped_gemm_seconds(device: Device, groups: float, m: float, n: float, k: float,
                         bandwidth_efficiency: float = 1.0) -> float:
    """``groups`` GEMMs (m x k) @ (k x n) in one kernel (torch._grouped_mm): the tiles of all
    groups share the waves, one launch.  Its bytes stream at ``bandwidth_efficiency`` of the device's
    HBM bandwidth (1: the roofline; the unfused attention's batched GEMMs: UNFUSED_BMM_BANDWIDTH_EFFICIENCY)."""
    if groups <= 0 or m <= 0 or n <= 0 or k <= 0:
        return 0.0
    tiles = groups * math.ceil(m / TILE) * math.ceil(n / TILE)
    waves = math.ceil(tiles / device.compute_units)
    utilisation = tiles / (waves * device.compute_units)
    t_flops = groups * 2.0 * m * n * k / (device.bf16_tflops * 1e12 * device.gemm_efficiency * utilisation)
    t_bytes = 2.0 * groups * (m * k + k * n + m * n) / (device.memory_gbps * 1e9 * bandwidth_efficiency)
    return max(t_flops, t_bytes) + device.launch_us * 1e-6


def elementwise_seconds(device: Device, nbytes: float, kernels: int) -> float:
    """Memory-bound kernels streaming ``nbytes`` through HBM, plus their launches."""
    return nbytes / (device.memory_gbps * 1e9 * device.elementwise_efficiency) + kernels * device.launch_us * 1e-6


def kernel_seq_half(kernel: str, device: Device) -> float:
    """The s_half of ``kernel``'s sequence curve on ``device``: its chart on the device's generation
    (KERNEL_SEQ_HALF), else the device's own (``attention_seq_half``; also for a device without a curve,
    attention_seq_half == ATTN_TILE, which keeps one rate)."""
    if device.attention_seq_half == ATTN_TILE:
        return ATTN_TILE
    return KERNEL_SEQ_HALF.get(kernel, {}).get(device.arch, device.attention_seq_half)


def attention_rate_scale(device: Device, keys: float) -> float:
    """The fused causal kernel's rate (per FLOP ``attention_seconds`` counts) at ``keys`` keys a query row,
    over its rate at the device's ``attention_ref_seq``, where ``attention_efficiency`` holds.  Published
    kernel benchmarks (FlashAttention-2 and -3 papers) put the visible-half TFLOP/s of causal kernels on
    s / (s + s_half) with s_half 270-540 (per-row prologue and epilogue, the masked diagonal and the
    shorter rows of the causal triangle, amortised over longer rows); the diagonal tiles that
    ``attention_seconds`` adds back are s_half = ATTN_TILE of it, so this is the rest.  1 where the
    device has no curve (``attention_seq_half`` == ATTN_TILE)."""
    half = device.attention_seq_half
    if half == ATTN_TILE:
        return 1.0
    ref = device.attention_ref_seq
    return (keys + ATTN_TILE) / (keys + half) * (ref + half) / (ref + ATTN_TILE)


def attention_seconds(device: Device, mbs: int, queries: float, keys: float, q_width: float,
                      rate_keys: float | None = None) -> float:
    """Forward of fused causal attention: QK^T and AV over the visible half, diagonal tiles whole
    (at most the full square, for sequences of one tile or less), at the device's rate for rows of
    ``rate_keys`` keys (default ``keys``; attention_rate_scale)."""
    flops = 4.0 * mbs * queries * keys * q_width * 0.5 * min(2.0, 1 + ATTN_TILE / keys)
    rate = device.bf16_tflops * 1e12 * device.attention_efficiency * attention_rate_scale(
        device, keys if rate_keys is None else rate_keys)
    return flops / rate + device.launch_us * 1e-6


def head_grid_bwd_slowdown(groups: float) -> float:
    """The time of XeTLA's head-grid flash-attention backward (Implementation.attn_bwd_head_grid) with ``groups``
    work-groups (micro-batch samples x heads on the rank) over its time at the device figure's point: the kernel's
    published rates at 16 and 32 groups (hardware.PVC_XETLA_BWD_GROUP_TFLOPS), a power law between and below them
    (rate ~ groups^0.80); 1 at 32 groups or more (the device figure's point: not extrapolated upward)."""
    (g0, r0), (g1, r1) = PVC_XETLA_BWD_GROUP_TFLOPS
    if groups >= g1:
        return 1.0
    return (g1 / max(groups, 1.0)) ** (math.log(r1 / r0) / math.log(g1 / g0))


UNFUSED_SCORE_BYTES = 4  # per attention score, forward: Megatron's fused scale-mask-softmax, 2 read + 2 written
# Dropout on the materialised probabilities (``Implementation.score_dropout``; Megatron's ``attention_dropout``
# module, torch.nn.Dropout with p > 0): forward, ATen's ``native_dropout`` reads the probabilities (2), writes the
# result (2) and its bool mask (1); backward, ``native_dropout_backward`` reads the gradient (2) and the mask (1)
# and writes the gradient (2).  Counted per score, one kernel each way.  Its backward is its own, not
# ATTN_BWD_FACTOR times its forward: the FlashAttention paper's A100 tables (Dao et al. 2022, arXiv 2205.14135,
# appendix E.6 "Full Benchmarking Results", not E.5 as first cited; tables 15/18 and 16/19, the Megatron row at
# sequence 2048, batch 16, 8 heads, head dim 64) put dropout at +2.28 ms forward and +1.94 ms backward on 537M
# scores: 5 bytes a score each way at 76% and 89% of the A100 40GB's 1555 GB/s.  With p = 0 the module returns its
# input (ATen ``dropout``: no fused kernel for p = 0, and ``_dropout`` returns the input when p == 0), so a source
# that sets 0 pays nothing.
SCORE_DROPOUT_FWD_BYTES = 5
SCORE_DROPOUT_BWD_BYTES = 5
# Megatron's unfused attention, measured as a kernel path: the FlashAttention paper's A100 40GB tables (Dao et al.
# 2022, arXiv 2205.14135 v2, appendix E.6 "Full benchmarking results", tables 18-20: fp16, batch 16, 8 heads, head
# dim 64, no dropout, no masking; tables 15-17 with dropout 0.1), Megatron row at sequence 2048: forward 4.28 ms,
# backward 8.86 ms, forward + backward 13.21 ms on 537M scores (docs/planner.md section 10, "Session 8: unfused
# attention against the FlashAttention paper's Megatron tables").
#  * The two batched GEMMs (k or n = head dim) stream the score matrix they write or read well below the HBM
#    roofline: the forward less the softmax at the device's elementwise rate (4 bytes a score at 72%: 1.92 ms)
#    leaves 2.36 ms for two GEMMs of 1.14 GB each, 62% of 1555 GB/s (the dropout kernel on the same tensor, tables
#    15 - 18, streams at 76%: the slow part is the GEMMs, not the elementwise passes).
#  * Its backward is 2.07 times its forward (table 19 / table 18 at 2048; 1.95 at 1024; PyTorch's standard
#    attention row 2.04 at 2048 and 2.06 at 4096), not the fused kernel's ATTN_BWD_FACTOR (2.5: FlashAttention
#    recomputes the scores).  Counting its kernels (four batched GEMMs and the softmax's 6-byte backward) at the
#    rates above gives 7.62 ms, 14% short of the measurement: the ratio is what is measured, so the ratio is used.
#    Dropout's own backward stays SCORE_DROPOUT_BWD_BYTES (not scaled).
UNFUSED_BMM_BANDWIDTH_EFFICIENCY = 0.62
UNFUSED_ATTN_BWD_FACTOR = 8.86 / 4.28


def unfused_attention_seconds(device: Device, mbs: int, heads: float, queries: float, keys: float,
                              head_dim: float) -> float:
    """Forward of attention that materialises the scores (Megatron before FlashAttention): two
    batched GEMMs over the full square, their bytes at UNFUSED_BMM_BANDWIDTH_EFFICIENCY of the HBM bandwidth,
    then the softmax streaming the scores through HBM (dropout on the probabilities, where the source has it,
    is ``score_dropout_seconds``).  Its backward is UNFUSED_ATTN_BWD_FACTOR times this."""
    gemms = 2 * grouped_gemm_seconds(device, mbs * heads, queries, keys, head_dim,
                                     bandwidth_efficiency=UNFUSED_BMM_BANDWIDTH_EFFICIENCY)
    return gemms + elementwise_seconds(device, UNFUSED_SCORE_BYTES * mbs * heads * queries * keys, 1)


def score_dropout_seconds(device: Device, mbs: int, heads: float, queries: float, keys: float) -> tuple[float, float]:
    """Forward and backward of dropout on materialised attention probabilities (SCORE_DROPOUT_*_BYTES a score)."""
    scores = mbs * heads * queries * keys
    return (elementwise_seconds(device, SCORE_DROPOUT_FWD_BYTES * scores, 1),
            elementwise_seconds(device, SCORE_DROPOUT_BWD_BYTES * scores, 1))


def expected_destinations(n_experts: int, top_k: int, ep: int) -> float:
    """Expected number of the ``ep`` ranks (``n_experts/ep`` experts each) a token's ``top_k``
    distinct experts fall on, under balanced routing."""
    per_rank = n_experts // ep
    miss = math.comb(n_experts - per_rank, top_k) / math.comb(n_experts, top_k) if top_k <= n_experts - per_rank else 0.0
    return ep * (1.0 - miss)


def deepep_internode_seconds(token_bytes: float, rank_copies: float, node_copies: float, path: CommPath) -> float:
    """One DeepEP dispatch (or combine) over ``path.nodes`` nodes: each of a rank's tokens (``token_bytes``
    in all) goes over the network once to each remote node holding one of its experts (``node_copies``
    nodes on average), then over NVLink to each rank there that holds one (``rank_copies`` ranks in all).
    The two legs are pipelined; the slower sets the time."""
    remote_nodes = node_copies * (path.nodes - 1) / path.nodes
    t_inter = token_bytes * remote_nodes / (path.inter_gbps * 1e9)
    t_intra = _move(token_bytes * rank_copies * (path.k - 1) / path.k, path.intra, 0.0) if path.k > 1 else 0.0
    latency = path.inter_latency_us * math.ceil(math.log2(path.nodes)) + (
        path.intra.latency_us * math.ceil(math.log2(path.k)) if path.k > 1 and path.intra else 0.0)
    return path.call_us * 1e-6 + max(t_inter, t_intra) + latency * 1e-6


# A sliding window runs through the registry's block-sparse kernel (FlexAttention), which reaches about
# half the rate of the fused causal kernels per FLOP it computes: on an H200 (2026-12-04, bench/vs_peers.py's
# attention section, 1b's heads, 8 x 2048 tokens, fwd + bwd) 131.2 TFLOP/s with a 512-token window
# against 272.9 for SDPA's causal kernel.  A kernel microbenchmark, like the device's own efficiencies.
WINDOW_KERNEL_SCALE = 131.2 / 272.9
WINDOW_KERNEL_SEQ = 2048  # the causal kernel's sequence in that ratio: a window runs at the causal rate there


# cuDNN's fused attention per head dimension, relative to head dim 128 (the head dim the devices'
# attention_efficiency was measured at): H100 SXM5, forward, causal, sequence 4k, from the FlashAttention-3
# paper (Shah et al. 2024, figure 5, panels b, d, f, cuDNN bars: 363 TFLOP/s at head dim 64, 518 at 128,
# 483 at 256; flash-attention assets/flash3_fp16_fwd.png).  Until session 7 the table mixed panels: 408 and
# 609 are the non-causal bars of head dims 64 and 128 (panels a, c) and 483 the causal bar of 256 (the
# non-causal one reads 581); the rows are causal.  The ratio hardly moves with the sequence (head dim 64
# over 128: 0.70 at 1k, 0.70 at 4k, 0.72 at 16k), so it composes with attention_rate_scale.  At head dim 64
# each tile holds half the matrix-multiply work per softmax element, so the exponentials (the
# special-function units, far slower than the tensor cores) weigh twice as much.  A kernel
# microbenchmark, like WINDOW_KERNEL_SCALE.
# Session 8 (gpu_pending PART=a, bench/results/h200-2026-12-05-s8-attention-headdim.json): our H200, SDPA's cuDNN
# backend (torch 2.11+cu130), causal, s 4096, batch 4, forward + backward, 64 heads of 64 against 32 heads of 128
# (the same query width, key/value heads repeated up front): 384.0 against 480.2 TFLOP/s, 0.800, where the
# FA3 chart's forward-only bars give 0.701.  The rows pay forward and backward, and the backward (2.5x the
# forward's FLOPs, its matrix work per softmax element twice the forward's) loses less at head dim 64, so the
# measured forward + backward ratio replaces the forward-only one at 64; 256 (no row) keeps the chart's.  The
# ratio is the kernel's on Hopper's SMs (tensor cores against special-function units), the same GH100 compute
# on H100 and H200; the table is applied on every device as before (no A100 figure exists).
CUDNN_HEAD_DIM_SCALE = {64: 384.0 / 480.2, 128: 1.0, 256: 483 / 518}


def head_dim_scale(kernel: str, head_dim: int) -> float:
    """The attention kernel's rate at ``head_dim`` over its rate at 128 (1 for kernels without a table);
    linear between the measured head dims, the nearest outside them."""
    if kernel != "cudnn":
        return 1.0
    table = sorted(CUDNN_HEAD_DIM_SCALE.items())
    if head_dim <= table[0][0]:
        return table[0][1]
    for (d0, s0), (d1, s1) in itertools.pairwise(table):
        if head_dim <= d1:
            return s0 + (s1 - s0) * (head_dim - d0) / (d1 - d0)
    return table[-1][1]


def layer_cost(model: ModelConfig, system: System, world: int, tp: int, cp: int, ep: int, mbs: int,
               seq: int, pp_stride: int, impl: Implementation = ALPHAEXA, etp: int = 0) -> LayerCost:
    """Per micro-batch costs of one dense and one MoE layer.  ``etp`` (expert tensor parallel, 0 = tp):
    the routed experts are split ``etp`` ways; with etp != tp the expert-parallel groups are folded over
    the tensor- and data-parallel ranks (Megatron's parallel folding): each rank routes its own 1/tp
    sequence-parallel share of the tokens, experts see ``etp`` ranks' tokens at 1/etp of their width."""
    etp = etp or tp
    dev = system.node.device
    attention_scale = impl.attention_scale
    if model.sliding_window and model.sliding_window < seq:
        attention_scale *= WINDOW_KERNEL_SCALE
    attention_scale *= head_dim_scale(impl.attention_kernel, model.head_dim)
    if impl.gemm_scale != 1.0 or attention_scale != 1.0:
        dev = dataclasses.replace(dev, gemm_efficiency=dev.gemm_efficiency * impl.gemm_scale,
                                  attention_efficiency=dev.attention_efficiency * attention_scale)
    # the framework's kernel's sequence curve, through the device's reference point (its rate there unchanged)
    seq_half = kernel_seq_half(impl.attention_kernel, dev)
    if seq_half != dev.attention_seq_half:
        dev = dataclasses.replace(dev, attention_seq_half=seq_half)
    h, q, kv, v = model.d_model, model.q_dim, model.kv_dim, model.vocab_size
    t = tp
    # with sequence parallelism (the trainer's whenever t > 1) norms and residuals see 1/t of the tokens
    rep = t if impl.sequence_parallel else 1
    tokens = mbs * seq / cp  # queries per rank; the GEMMs of a TP group see all of them
    g = gemm_seconds
    # wq, wk and wv are separate projections in alphaexa.model
    attn_gemm = g(dev, tokens, q / t, h) + 2 * g(dev, tokens, kv / t, h) + g(dev, tokens, h, q / t)
    s_eff = min(seq, model.sliding_window) if model.sliding_window else seq
    drop_fwd = drop_bwd = 0.0  # dropout on the materialised probabilities (Implementation.score_dropout)
    # the attention core's backward over its forward: FlashAttention-style kernels recompute the scores (2.5),
    # the unfused path reads them back (UNFUSED_ATTN_BWD_FACTOR, measured)
    attn_bwd_factor = ATTN_BWD_FACTOR
    if impl.attention == "unfused":
        attn_bwd_factor = UNFUSED_ATTN_BWD_FACTOR
        attn_core = unfused_attention_seconds(dev, mbs, model.n_heads / t, seq / cp, s_eff, model.head_dim)
        if impl.score_dropout:
            drop_fwd, drop_bwd = score_dropout_seconds(dev, mbs, model.n_heads / t, seq / cp, s_eff)
    else:
        # the kernel's row length for its rate: with context parallelism each call (a ring step) sees one
        # rank's block of s / cp keys, so its per-row overheads are paid once a block
        windowed = bool(model.sliding_window and model.sliding_window < seq)
        attn_core = attention_seconds(dev, mbs, seq / cp, s_eff, q / t,
                                      rate_keys=WINDOW_KERNEL_SEQ if windowed else s_eff / cp)
    # the backward of a head-grid kernel (Implementation.attn_bwd_head_grid): its share of the device's forward +
    # backward attention time (hardware.PVC_ATTENTION_BWD_SHARE) stretched by the kernel's rate at the rank's pairs
    attn_bwd = attn_bwd_factor * attn_core
    if impl.attn_bwd_head_grid and impl.attention == "fused":
        slowdown = head_grid_bwd_slowdown(mbs * model.n_heads / t)
        attn_bwd += (slowdown - 1.0) * PVC_ATTENTION_BWD_SHARE * (1.0 + attn_bwd_factor) * attn_core
    # the QKV projection's bias added after its GEMM, and its gradient's reduction (Implementation.qkv_bias_bytes)
    qkv_out = tokens * (q + 2 * kv) / t
    qkv_bias_fwd = elementwise_seconds(dev, impl.qkv_bias_bytes[0] * qkv_out, 1) if impl.qkv_bias_bytes[0] else 0.0
    qkv_bias_bwd = elementwise_seconds(dev, impl.qkv_bias_bytes[1] * qkv_out, 1) if impl.qkv_bias_bytes[1] else 0.0
    bias_fwd = 0.0  # an additive score bias through baddbmm (Implementation.score_bias_bytes): forward only
    if impl.attention == "unfused" and impl.score_bias_bytes:
        # the expanded copy is a kernel of its own; the batched GEMM that reads it back as C is bandwidth-bound
        # at these head dims (k = head_dim), so its read adds to its time as streamed bytes
        bias_fwd = elementwise_seconds(dev, impl.score_bias_bytes * mbs * model.n_heads / t * (seq / cp) * s_eff, 1)
    up = 2 if model.ffn_type == "swiglu" else 1
    act_bytes, act_kernels = ACT_BYTES[model.ffn_type]
    act_bytes *= impl.act_scale
    rope = model.pos_encoding == "rope"
    # grouped-query attention whose K and V the framework repeats to the query's heads (gqa_repeat_kv): the two
    # copies (kv read, q written, bf16), and the rotary then runs on q-width keys.  With one KV head a TP rank
    # repeat_kv returns the ``expand`` alone, a view: no copies, the rotary still reads it at q width.
    repeat = impl.gqa_repeat_kv and kv < q
    key_width = q if repeat else kv
    copies = repeat and model.n_kv_heads > t
    # norms, residual adds, rotary, attention-output copy: the same in dense and MoE layers
    common_bytes = tokens * ((2 * impl.norm_bytes + 2 * impl.residual_bytes) * h / rep + impl.attn_out_bytes * q / t
                             + (impl.rope_bytes * (q + key_width) / t if rope else 0.0)
                             + (2 * (2.0 * kv + 2.0 * q) / t if copies else 0.0))
    common_kernels = 2 * impl.norm_kernels + 2 + 1 + (2 * impl.rope_kernels if rope else 0) + (2 if copies else 0)

    def ffn(width: float, rows: float) -> float:
        return g(dev, rows, up * width / t, h) + g(dev, rows, h, width / t)

    dense_gemms = attn_gemm + ffn(model.d_ff, tokens)
    dense_ew = elementwise_seconds(dev, common_bytes + tokens * act_bytes * model.d_ff / t,
                                   common_kernels + act_kernels)
    norm_sync = 0.0  # Implementation.norm_tp_sync: two all-reduces of a norm's weight and bias, two norms a layer
    if impl.norm_tp_sync and tp > 1:
        norm_sync = 2 * 2 * collective_seconds("all_reduce", WEIGHT_BYTES * h, comm_path(system, tp, 1))
    fwd_dense = dense_gemms + dense_ew + attn_core + bias_fwd + drop_fwd + norm_sync + qkv_bias_fwd
    # the rotary's backward where the framework's count is its own (Implementation.rope_bwd_bytes): the difference
    # from BWD_FACTOR x its forward, which the layers' backward below already counts
    rope_bwd = 0.0
    if rope and impl.rope_bwd_bytes >= 0:
        bwd_kernels = impl.rope_bwd_kernels if impl.rope_bwd_kernels >= 0 else BWD_FACTOR * impl.rope_kernels
        rope_bwd = ((impl.rope_bwd_bytes - BWD_FACTOR * impl.rope_bytes) * tokens * (q + key_width) / t
                    / (dev.memory_gbps * 1e9 * dev.elementwise_efficiency)
                    + 2 * (bwd_kernels - BWD_FACTOR * impl.rope_kernels) * dev.launch_us * 1e-6)
    # the FFN bias's gradient reduced by autograd (Implementation.ffn_bias_grad_bytes), dense layers
    ffn_bias_bwd = elementwise_seconds(dev, impl.ffn_bias_grad_bytes * tokens * up * model.d_ff / t, 1) \
        if impl.ffn_bias_grad_bytes else 0.0
    bwd_dense = BWD_FACTOR * (dense_gemms + dense_ew) + attn_bwd + drop_bwd + rope_bwd + qkv_bias_bwd + ffn_bias_bwd
    fwd_moe = bwd_moe = moe_block_fwd = moe_act_fwd = 0.0
    moe_buffer = 0.0
    ep_fwd = 0.0
    hot = 1.0  # the fullest expert-parallel rank's routed rows over the mean (set below for a MoE layer)
    is_moe = model.is_moe
    if is_moe:
        cf = model.capacity_factor or 1.0
        local_experts = model.n_experts / ep
        # the fullest expert-parallel rank's share over the mean (Implementation.moe_load_imbalance): dropless only
        hot = 1.0 + impl.moe_load_imbalance if ep > 1 and not model.capacity_factor else 1.0
        balanced_rows = tokens / t * etp * model.top_k * cf * ep / model.n_experts  # a local expert's mean rows
        rows_per_expert = balanced_rows * hot
        routed = rows_per_expert * local_experts
        gg = grouped_gemm_seconds
        # The fullest rank's expert GEMMs take ``hot`` times the balanced GEMMs' time: its excess rows run at the
        # balanced GEMM's rate.  The excess is a mean over layers and micro-batches whose single values spread
        # around it, so the 128-row tile quantisation of any one of them averages out (and the wave rule's time,
        # not monotone in the rows just past a tile edge, is not asked about rows it cannot resolve).
        if impl.expert_loop:  # one MLP module per local expert (SequentialMLP)
            experts = hot * local_experts * (g(dev, balanced_rows, up * model.moe_d_ff / etp, h)
                                             + g(dev, balanced_rows, h, model.moe_d_ff / etp))
        else:
            experts = hot * (gg(dev, local_experts, balanced_rows, up * model.moe_d_ff / etp, h)
                             + gg(dev, local_experts, balanced_rows, h, model.moe_d_ff / etp))
        shared_width = model.n_shared_experts * model.moe_d_ff
        shared = ffn(shared_width, tokens) if shared_width else 0.0
        router = g(dev, tokens, model.n_experts, h)
        copies = expected_destinations(model.n_experts, model.top_k, ep) if impl.ep_dedup and ep > 1 \
            else model.top_k * cf
        shared_bytes = tokens * (act_bytes * shared_width / t + RESIDUAL_BYTES * h) if shared_width else 0.0
        if impl.moe_permute_fused:
            # input rows: the rank's tokens (permuted before the all-to-all), or with DeepEP the token copies it
            # delivers (one a destination rank; permuted after the dispatch)
            inputs = routed / (model.top_k * cf) * (copies if impl.ep_dedup and ep > 1 else 1.0 / hot)
            moe_bytes = (common_bytes + routed * act_bytes * model.moe_d_ff / etp + shared_bytes
                         + (FUSED_PERMUTE_ROW_BYTES * routed + FUSED_PERMUTE_INPUT_BYTES * inputs) * h)
        else:  # the eager gather, weighting and index_add
            row_bytes = MOE_ROW_BYTES - (MOE_WEIGHT_BYTES if impl.a2a_probs else 0)
            moe_bytes = (common_bytes + routed * (act_bytes * model.moe_d_ff / etp + row_bytes * h)
                         + tokens * MOE_TOKEN_BYTES * h + shared_bytes)
        expert_act_kernels = act_kernels * (math.ceil(local_experts) if impl.expert_loop else 1)
        moe_kernels = common_kernels + expert_act_kernels + impl.moe_routing_kernels + (
            act_kernels + 1 if shared_width else 0)
        moe_gemms = attn_gemm + experts + shared + router
        moe_ew = elementwise_seconds(dev, moe_bytes, moe_kernels)
        clamp_fwd = elementwise_seconds(dev, routed * impl.glu_clamp_fwd_bytes * model.moe_d_ff / etp,
                                        impl.glu_clamp_kernels[0]) if impl.glu_clamp_fwd_bytes else 0.0
        clamp_bwd = elementwise_seconds(dev, routed * impl.glu_clamp_bwd_bytes * model.moe_d_ff / etp,
                                        impl.glu_clamp_kernels[1]) if impl.glu_clamp_bwd_bytes else 0.0
        moe_ew += clamp_fwd
        # the second projection's bias added per local expert, scaled by the probability (Implementation.moe_bias_*)
        ebias_fwd = ebias_bwd = 0.0
        if impl.moe_bias_fwd_bytes or impl.moe_bias_bwd_bytes:
            n_local = math.ceil(local_experts)
            ebias_fwd = elementwise_seconds(dev, routed * h * impl.moe_bias_fwd_bytes, n_local * impl.moe_bias_kernels_per_expert[0]
                                            + impl.moe_bias_kernels_fixed[0])
            ebias_bwd = elementwise_seconds(dev, routed * h * impl.moe_bias_bwd_bytes, n_local * impl.moe_bias_kernels_per_expert[1]
                                            + impl.moe_bias_kernels_fixed[1])
        # the dispatcher's sort of the gathered rows by local expert and its restore (read + write, bf16)
        sort_fwd = elementwise_seconds(dev, routed * 2 * 4.0 * h, 2) \
            if impl.moe_dispatch_tp_gather and local_experts > 1 else 0.0
        if impl.expert_loop and local_experts > 1:  # SequentialMLP: the outputs' cat (its backward: the split's)
            sort_fwd += elementwise_seconds(dev, routed * 4.0 * h, 1)
        loop_sync = dev.host_sync_us * 1e-6 if impl.expert_loop and local_experts > 1 else 0.0
        moe_act_fwd = elementwise_seconds(dev, routed * act_bytes * model.moe_d_ff / etp, act_kernels) + clamp_fwd
        moe_block_fwd = experts + shared + router + elementwise_seconds(
            dev, moe_bytes - common_bytes, moe_kernels - common_kernels) + sort_fwd + loop_sync + ebias_fwd + (
            dev.host_sync_us * 1e-6 if impl.moe_host_sync else 0.0)
        # Megatron's all-to-all dispatcher: the token counts all-gathered over the expert-TP x EP group (int64 a
        # count; Implementation.a2a_count_gather), forward only
        count_gather = collective_seconds("all_gather", COUNT_BYTES * model.n_experts * ep * etp,
                                          comm_path(system, ep * etp, 1)) if impl.a2a_count_gather and ep > 1 else 0.0
        moe_block_fwd += count_gather
        # Transformer Engine's graph replay copies (Implementation.graph_copies, graph_attn)
        graph_fwd = graph_bwd = 0.0
        if impl.graph_copies:
            rows_in = tokens / rep  # the graph's input: the rank's (sequence-parallel) rows of the hidden states
            # the preprocess output: the permuted rows of the all-to-all dispatcher, the tokens of the flex dispatcher
            rows_out = rows_in * (1.0 if impl.ep_dedup else model.top_k * cf)
            fwd_bytes, fwd_kernels = 4.0 * rows_in * h, 1
            if impl.graph_attn:  # the zero mask built and copied every replay
                fwd_bytes, fwd_kernels = fwd_bytes + 3.0 * mbs * (seq / cp) * seq, fwd_kernels + 2
            graph_fwd = elementwise_seconds(dev, fwd_bytes, fwd_kernels)
            graph_bwd = elementwise_seconds(
                dev, 4.0 * (rows_out + rows_in) * h + 2 * PROBS_BYTES * rows_in * model.top_k * cf, 3)
        # dropless routing sizes its output from the token counts (torch.bincount): one host
        # synchronisation per MoE layer forward, after which the device waits for the host
        fwd_moe = moe_gemms + moe_ew + sort_fwd + attn_core + bias_fwd + drop_fwd + norm_sync + loop_sync + (
            count_gather + ebias_fwd + qkv_bias_fwd + graph_fwd) + (
            dev.host_sync_us * 1e-6 if impl.moe_host_sync else 0.0)
        bwd_moe = BWD_FACTOR * (moe_gemms + moe_ew - clamp_fwd) + clamp_bwd + sort_fwd + attn_bwd \
            + drop_bwd + rope_bwd + ebias_bwd + qkv_bias_bwd + graph_bwd
        dispatched = tokens / t * copies * h * 2  # bytes a rank sends per all-to-all
        moe_buffer = 2 * dispatched * hot
        if ep > 1:
            ep_path = comm_path(system, ep, etp)  # ep ranks etp apart: tp apart for the trainer
            if impl.ep_dedup and ep_path.nodes > 1:
                # DeepEP across nodes: a token crosses the network once per destination node (to the
                # same-index GPU there), which forwards it over NVLink to that node's ranks
                node_copies = expected_destinations(model.n_experts, model.top_k, ep_path.nodes)
                ep_fwd = 2 * deepep_internode_seconds(tokens / t * h * 2, copies, node_copies, ep_path)
            else:
                ep_fwd = 2 * collective_seconds("all_to_all", dispatched, ep_path)
            if impl.a2a_probs:  # the probabilities' own all-to-all (forward; its gradient's in the backward)
                ep_fwd += collective_seconds("all_to_all", tokens / t * copies * PROBS_BYTES, ep_path)
            # the fullest rank receives ``hot`` times the mean in the dispatch and sends it back in the combine
            ep_fwd *= hot
            if impl.ep_overlap:
                # hidden behind another micro-batch's compute, whose kernels it still slows (SMs, HBM
                # bandwidth): the share that overlapped data-parallel traffic costs
                ep_fwd *= DP_OVERLAP_CONTENTION
    tp_fwd = tp_fwd_moe = tp_bwd_extra = 0.0
    routed_tp = 0.0  # the dispatcher's expert-TP gather / scatter of routed rows (not under TE's overlap)
    if tp > 1:
        tp_path = comm_path(system, tp, 1)
        full = 2.0 * tokens * h  # bf16 activation of the whole TP group
        if impl.sequence_parallel:  # all-gather in, reduce-scatter out
            block = collective_seconds("all_gather", full, tp_path) + collective_seconds("reduce_scatter", full, tp_path)
        else:  # Megatron without sequence parallelism: one all-reduce a block (forward out, backward in)
            block = collective_seconds("all_reduce", full, tp_path)
        tp_fwd = 2 * block  # attention and FFN
        tp_fwd_moe = tp_fwd
        if impl.parallel_block:
            if impl.sequence_parallel or is_moe:
                raise ConfigError("parallel_block is counted for dense layers under TP without sequence parallelism")
            tp_fwd = tp_fwd_moe = block  # one all-reduce of the summed outputs forward
            tp_bwd_extra = block  # backward: one all-reduce for each of the two column-parallel inputs
        if is_moe and impl.moe_dispatch_tp_gather and etp > 1:
            # The MoE block routes the attention's sequence-parallel shard as it is; the routed rows (top_k x
            # capacity copies) are gathered and scattered in the expert-TP group by plain collectives (see
            # Implementation.moe_dispatch_tp_gather); a shared expert is a TP-split MLP with its own pair
            etp_path = comm_path(system, etp, 1)
            routed_full = 2.0 * tokens / t * etp * copies * h * hot
            tp_fwd_moe = block * (2 if model.n_shared_experts else 1)
            routed_tp = collective_seconds("all_gather", routed_full, etp_path) + collective_seconds(
                "reduce_scatter", routed_full, etp_path)
        elif is_moe and etp != tp:
            # Parallel folding: the MoE block takes the attention's sequence-parallel shard as it is (each
            # rank routes its own 1/tp of the tokens) and gives it back the same way, so only the attention
            # half of the layer's TP collectives run; experts split etp > 1 ways gather and scatter their
            # etp ranks' tokens inside the expert-tensor-parallel group instead.
            tp_fwd_moe = block
            if etp > 1:
                etp_path = comm_path(system, etp, 1)
                routed_full = 2.0 * tokens / t * etp * h
                tp_fwd_moe += collective_seconds("all_gather", routed_full, etp_path) + collective_seconds(
                    "reduce_scatter", routed_full, etp_path)
    if impl.tp_overlap:
        # Transformer Engine's communication overlap (Megatron --tp-comm-overlap): each all-gather is
        # split into chunks that stream into the GEMM consuming them, each reduce-scatter out of the GEMM
        # producing it, so the collectives run under the GEMMs; like other overlapped traffic they still
        # take SMs and HBM bandwidth from them (the same share as hidden data-parallel traffic)
        tp_fwd *= DP_OVERLAP_CONTENTION
        tp_fwd_moe *= DP_OVERLAP_CONTENTION
        tp_bwd_extra *= DP_OVERLAP_CONTENTION
    tp_fwd_moe += routed_tp
    cp_fwd_exposed = cp_bwd_exposed = 0.0
    if cp > 1:
        cp_path = comm_path(system, cp, tp)
        kv_chunk = 2 * 2 * mbs * (seq / cp) * kv / t  # K and V, bf16
        ring = (cp - 1) * collective_seconds("p2p", kv_chunk, cp_path)
        cp_fwd_exposed = max(0.0, ring - attn_core)
        cp_bwd_exposed = max(0.0, 2 * ring - attn_bwd)
    # LM head GEMM, then logits.float() and the fp32 cross-entropy: 12 bytes per logit, 3 kernels
    head_fwd = g(dev, tokens, v / t, h) + elementwise_seconds(dev, impl.logit_bytes * tokens * v / t, 3)
    head_bwd_extra = 0.0
    if impl.logit_bwd_bytes >= 0:
        head_bwd_extra = elementwise_seconds(dev, impl.logit_bwd_bytes * tokens * v / t, 0) \
            - BWD_FACTOR * elementwise_seconds(dev, impl.logit_bytes * tokens * v / t, 0)
    embed_fwd = elementwise_seconds(dev, 2.0 * tokens * h * 2, 1)
    act = {}
    for mode in ("none", "selective", "full"):
        kw = {"s": seq, "b": mbs, "t": tp, "cp": cp, "recompute": mode, "fused_attention": dev.fused_attention,
              "sequence_parallel": impl.sequence_parallel}
        act[mode] = (layer_activation_bytes(model, False, **kw),
                     layer_activation_bytes(model, True, **kw) if is_moe else 0.0)
    logits = 10.0 * tokens * v / t  # bf16 logits + fp32 log-softmax + fp32 gradient
    p2p = p2p_node = 0.0
    # a hop between two stages inside a node (pp_path) and one between nodes (node_path: one rank a node on either
    # side); the pipeline is the world (pp_stride x pp, pp outermost); pipeline_node_hops says which hop is which
    pp_path, node_path = pair_paths(system, pp_stride, world)
    if pp_stride < world:
        # NCCL's communicator for the exchange (nccl_p2p_channels): DeepSpeed's PipelineEngine sends on a two-rank
        # one (p2p.py: dist.send / dist.recv, or a broadcast in a two-rank group); Megatron's batch_isend_irecv
        # on the pipeline group's (pp ranks, on every node the pipeline crosses)
        comm = (2, False) if impl.deepspeed_pipe else (world // pp_stride, world > system.node.ranks)
        p2p = collective_seconds("p2p", 2.0 * tokens * h / t, pp_path, *comm)
        p2p_node = collective_seconds("p2p", 2.0 * tokens * h / t, node_path, *comm)
    pipe_meta = pipe_meta_node = pipe_gather = 0.0
    if impl.deepspeed_pipe and p2p and tp > 1:  # the 1/tp PartitionedTensor: its metadata and its all-gather
        pipe_meta = collective_seconds("p2p", PIPE_META_BYTES, pp_path)
        pipe_meta_node = collective_seconds("p2p", PIPE_META_BYTES, node_path)
        pipe_gather = collective_seconds("all_gather", 2.0 * tokens * h, comm_path(system, tp, 1))
    norm_fwd = elementwise_seconds(dev, tokens * 2 * impl.norm_bytes * h / rep, 2 * impl.norm_kernels)
    return LayerCost(fwd_dense, fwd_moe, bwd_dense, bwd_moe, attn_core + bias_fwd + drop_fwd, tp_fwd, ep_fwd, cp_fwd_exposed,
                     cp_bwd_exposed, head_fwd, embed_fwd, act, moe_buffer, logits, p2p, moe_block_fwd, norm_fwd,
                     tp_fwd_moe, moe_act_fwd, head_bwd_extra, pipe_meta, pipe_gather, p2p_node, pipe_meta_node,
                     tp_bwd_extra)


# ------------------------------------------------------------ parameters
@dataclass(slots=True)
class LayerParams:
    """Parameters one rank holds per layer type (dense part, expert part)."""

    dense_layer: float
    moe_layer_dense: float  # attention, shared experts, router, norms of a MoE layer
    moe_layer_experts: float  # this rank's share of the routed experts
    embed: float
    head: float
    tied_copy: float = 0.0  # a tied LM head on a stage without the embedding holds its own copy of the weight


def stage_dense_params(lp: LayerParams, prof: StageProfile) -> float:
    """Parameters outside routed experts on a pipeline rank: its layers, the embedding and the head, and with tied
    embeddings the head's own copy of the shared weight where the embedding is on another rank (every pipeline
    keeps the weight the logits need on the last stage: DeepSpeed's TiedLayerSpec builds the tied module on each
    stage that uses it and all-reduces its gradient between them)."""
    return prof.n_dense * lp.dense_layer + prof.n_moe * lp.moe_layer_dense + (lp.embed if prof.embed else 0.0) \
        + (lp.head if prof.head else 0.0) + (lp.tied_copy if prof.head and not prof.embed else 0.0)


def layer_params(model: ModelConfig, tp: int, ep: int, etp: int = 0) -> LayerParams:
    d = model.d_model
    attn = d * model.q_dim + 2 * d * model.kv_dim + model.q_dim * d
    norms = 2 * norm_params(model)
    expert = ffn_params(model, model.moe_d_ff)
    vocab = model.vocab_size * d
    return LayerParams(
        dense_layer=(attn + ffn_params(model, model.d_ff)) / tp + norms,
        moe_layer_dense=(attn + model.n_shared_experts * expert) / tp + d * model.n_experts + norms,
        moe_layer_experts=model.n_experts * expert / (ep * (etp or tp)) if model.is_moe else 0.0,
        embed=vocab / tp + (model.max_seq_len * d if model.pos_encoding == "learned" else 0),
        head=(0 if model.tie_embeddings else vocab / tp) + norm_params(model),
        tied_copy=vocab / tp if model.tie_embeddings else 0.0,
    )


# ----------------------------------------------------------- stage profiles
@dataclass(slots=True)
class StageProfile:
    """One pipeline rank: its layers, embedding/head, and micro-batches in flight at its peak."""

    rank: int
    n_dense: int
    n_moe: int
    embed: bool
    head: bool


def hop_crossings(pp: int, stride: int, ranks_per_node: int) -> tuple[list[bool], bool]:
    """Which boundaries of a pipeline cross a node: stage ``s`` -> ``s + 1`` for ``s < pp - 1``, and the wrap from
    the last stage back to stage 0.  Stage ``s`` is the block of ``stride`` ranks from ``s stride`` (rank order of
    topology.layout: pp outermost), and each of its ranks ``i`` sends to ``i + stride`` (its pipeline group), all at
    once.  Where ``stride`` does not divide the node a stage can straddle two nodes (stride 8 on 12 ranks: ranks
    8-15); its ranks on one node send inside it, the others over the network, and the hop is over when the last
    transfer lands (the stage's ranks go on together: their TP/CP collectives every layer, their sharded data-
    parallel ones), so a hop crosses where any of its pairs does: where the two stages' block of ``2 stride``
    ranks spans a node boundary."""
    r = ranks_per_node
    inner = [s * stride // r != ((s + 2) * stride - 1) // r for s in range(pp - 1)]
    return inner, (pp * stride - 1) // r != 0


def pipeline_node_hops(pp: int, vpp: int, schedule: str, stride: int, ranks_per_node: int) -> tuple[int, int]:
    """A micro-batch's stage-to-stage hops through the pipeline (``pp vpp - 1``: each chunk to the next) and how
    many of them cross a node boundary (hop_crossings).  Interleaved chunks wrap from the last rank back to rank 0,
    zbv's V turns on the last rank (no transfer, counted as a hop inside the node as before)."""
    inner, wrap = hop_crossings(pp, stride, ranks_per_node)
    if schedule == "zbv":  # down the V and back up it
        crossing = 2 * sum(inner)
    else:
        crossing = vpp * sum(inner) + (vpp - 1) * wrap
    return pp * vpp - 1, crossing


def pipeline_edge_crossings(pp: int, vpp: int, schedule: str, stride: int, ranks_per_node: int) -> int:
    """How many of its two steady-state receives (the input from the stage before, the output's gradient from the
    stage after) cross a node on the stage where most do: 0, 1 or 2.  Interleaved chunks make the pipeline a ring
    (rank 0's input comes from the last rank); otherwise the end stages, with one neighbour, count as their
    neighbour's stage does, and with two stages both receives use the one boundary."""
    if pp < 2:
        return 0
    inner, wrap = hop_crossings(pp, stride, ranks_per_node)
    if pp == 2:
        return 2 * inner[0]
    if schedule == "interleaved1f1b":
        ring = inner + [wrap]
        return max(ring[s - 1] + ring[s] for s in range(pp))
    return max(inner[s - 1] + inner[s] for s in range(1, pp - 1))


def stage_profiles(model: ModelConfig, pp: int, vpp: int, schedule: str,
                   embed_unit: bool = False) -> tuple[StageProfile, ...]:
    """Every pipeline rank with a distinct (layers, embedding, head) content; the lowest rank of each."""
    seen: dict[tuple, StageProfile] = {}
    for prof in rank_profiles(model, pp, vpp, schedule, embed_unit):
        seen.setdefault((prof.n_dense, prof.n_moe, prof.embed, prof.head), prof)
    return tuple(seen.values())


def rank_profiles(model: ModelConfig, pp: int, vpp: int, schedule: str,
                  embed_unit: bool = False) -> list[StageProfile]:
    """The content of every pipeline rank 0..pp-1 (stages of balanced layer counts, as the trainer cuts them).
    ``embed_unit`` (published runs only): the embedding and the head each take a layer's place in the
    balance (DeepSpeed's ``partition_method 'type:transformer|embedding'``), so the end chunks hold fewer
    layers."""
    chunks = pp * vpp
    units = model.n_layers + (2 if embed_unit else 0)
    base, extra = divmod(units, chunks)
    bounds = [0]
    for c in range(chunks):
        bounds.append(bounds[-1] + base + (1 if c < extra else 0))
    moe = set(model.moe_layer_indices())
    owner = []
    for c in range(chunks):
        if schedule == "zbv":  # V shape: rank r runs chunk r and chunk 2pp-1-r
            owner.append(c if c < pp else 2 * pp - 1 - c)
        else:
            owner.append(c % pp)
    per_rank: dict[int, list[int]] = {r: [] for r in range(pp)}
    for c in range(chunks):
        per_rank[owner[c]].append(c)
    out = []
    for r in range(pp):
        layers = [u - 1 if embed_unit else u for c in per_rank[r] for u in range(bounds[c], bounds[c + 1])
                  if not embed_unit or 1 <= u <= model.n_layers]
        n_moe = sum(1 for i in layers if i in moe)
        out.append(StageProfile(r, len(layers) - n_moe, n_moe, 0 in per_rank[r], chunks - 1 in per_rank[r]))
    return out


def inflight(schedule: str, pp: int, vpp: int, m: int, rank: int) -> float:
    """Micro-batches whose activations (of all this rank's layers) are alive at the rank's peak."""
    if pp == 1:
        return 1.0
    if schedule == "gpipe":
        return float(m)
    if schedule == "zbv":
        return float(min(m, pp))
    held = float(min(m, pp - rank))
    if schedule == "interleaved1f1b":
        held *= 1 + (pp - 1) / (pp * vpp)
    return held


OFFLOAD_USABLE = 0.8  # of host memory / NVMe an offloaded state may take (the OS, pinned buffers, data)
# Megatron-Core's DDP gradient buckets when the run sets no bucket size (Implementation.dp_bucket_params):
# ``max(40000000, 1000000 * dp_size)`` parameters, NVIDIA/Megatron-LM 0fda386c04 (2024-04-11, "Tune DDP bucket size
# to improve speed at large DP counts"; core_r0.7.0 onwards, unchanged in form to 2026), distributed_data_parallel.py.
MEGATRON_CORE_DDP_BUCKETS = (40_000_000.0, 1_000_000.0)
DP_OVERLAP_CONTENTION = 0.5  # of hidden data-parallel traffic that still costs compute time (fitted: bench/fit_published_runs.py)
ZBV_SPLIT_BACKWARD = False  # the trainer's zbv runs without the split weight-gradient step (see bubble_seconds)


def bubble_seconds(schedule: str, pp: int, vpp: int, t_fwd: float, t_bwd: float) -> float:
    """Idle time per step of the slowest stage, from its per-micro-batch forward/backward times."""
    if pp == 1:
        return 0.0
    if schedule in ("gpipe", "1f1b"):
        return (pp - 1) * (t_fwd + t_bwd)
    if schedule == "interleaved1f1b":
        return (pp - 1) * (t_fwd + t_bwd) / vpp
    # zbv: two chunks per rank.  The zero bubble needs the backward split into B (input grads) and
    # W (weight grads, deferred into the bubble); the trainer runs the whole backward in B and an
    # empty W (docs/parallelism.md, "ZBV caveat"), so with ZBV_SPLIT_BACKWARD off a chunk's backward
    # is all B and the V schedule idles like an interleaved one with two chunks.
    f = t_fwd / 2
    if not ZBV_SPLIT_BACKWARD:
        return (pp - 1) * (f + t_bwd / 2)
    b, w = t_bwd / 4, t_bwd / 4
    return (pp - 1) * max(f + b - 2 * w, 0.1 * (f + b + w))


# ------------------------------------------------------------------ result
@dataclass
class Estimate:
    layout: Layout
    memory: dict[str, float]  # GiB: params, grads, optimizer, activations, overhead, total, capacity
    step_time_s: float
    tokens_per_s: float
    model_tflops_per_device: float
    mfu: float
    breakdown: dict[str, float]  # seconds per step
    worst_stage: int
    microbatches: int
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory["total"] <= self.memory["capacity"] and (
            self.memory.get("offloaded_per_node", 0.0) <= OFFLOAD_USABLE * self.memory.get("offload_capacity", 0.0))


@dataclass(frozen=True, eq=False)
class Request:
    """What is being planned; also holds the memo tables of the pieces layouts share."""

    model: ModelConfig
    system: System
    nodes: int
    global_batch: int
    seq_len: int
    impl: Implementation = ALPHAEXA  # the framework whose step is predicted (the trainer by default)
    # Where the optimizer state (fp32 master, Adam m and v) goes when it differs from the parameters
    # (``offload``; DeepSpeed's offload_optimizer.device next to offload_param.device): "" = with them.
    offload_optimizer: str = ""
    offload: str = "none"  # none | cpu | nvme: parameters, gradients and optimizer state off the device
    engine: str = "native"  # native (FSDP2) | deepspeed: who runs the step (the CPU optimizer differs)
    # Expert tensor parallel of a published run (0: experts split tp ways and expert parallelism borrowing
    # data-parallel ranks, as the trainer runs them; the planner never sets it).  k > 0: experts split k
    # ways, ep x k x (expert data parallel) folded over tp x dp x cp ranks (Megatron's parallel folding).
    expert_tp: int = 0
    # A published run that recomputes each MoE block (router, dispatch, experts, combine) and the norms in the
    # backward on top of its recompute mode (Megatron --recompute-modules layernorm moe); never the trainer.
    recompute_moe: bool = False
    # A published run that recomputes the norms and the routed experts' activation in the backward on top of
    # its recompute mode (Megatron --recompute-modules layernorm moe_act); never the trainer.
    recompute_norm_act: bool = False
    # A published run whose pipeline partition counts the embedding and the head as a layer each
    # (DeepSpeed's ``--pp-partition-method 'type:transformer|embedding'``); never the trainer.
    embed_stage_unit: bool = False
    _memo: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.offload not in ("none", "cpu", "nvme"):
            raise ConfigError(f"offload={self.offload!r}: must be none, cpu or nvme")
        if self.offload_optimizer not in ("", "cpu", "nvme"):
            raise ConfigError(f"offload_optimizer={self.offload_optimizer!r}: must be cpu, nvme or empty (with the parameters)")
        if self.offload_optimizer and self.offload == "none":
            raise ConfigError(f"offload_optimizer={self.offload_optimizer!r} needs offload=cpu or nvme (the parameters offloaded)")

    @property
    def grad_reduce_bytes(self) -> float:
        """Bytes a gradient element has in the data-parallel reduction: the trainer's native engine reduces in
        fp32 (alphaexa.parallel.data_parallel: FSDP2 MixedPrecisionPolicy(reduce_dtype=torch.float32)), the
        DeepSpeed engine in the gradients' bf16; a published run's framework says."""
        if self.impl.name.startswith("alphaexa") and self.engine == "native":
            return 4.0
        return self.impl.grad_reduce_bytes

    @property
    def optimizer_on(self) -> str:
        """Where the optimizer state lives: none (the device), cpu or nvme."""
        return self.offload_optimizer or self.offload

    @property
    def world(self) -> int:
        return self.nodes * self.system.ranks_per_node

    @property
    def model_flops_per_step(self) -> float:
        return flops_per_token(self.model, self.seq_len)["total"] * self.global_batch * self.seq_len

    def implementation(self, tp: int, recompute: str) -> Implementation:
        """The step's kernels: for the trainer (``impl`` ALPHAEXA), compiled where ``train.compile=auto``
        compiles (support.compiled_by_default; the native engine only), eager elsewhere; ALPHAEXA_EAGER
        for a measurement of the eager model; a published run's framework as given."""
        if self.impl is ALPHAEXA and self.engine == "native" and compiled_by_default(
                DEVICE_TYPES.get(self.system.node.device.vendor, ""), tp, recompute):
            return ALPHAEXA_COMPILED
        return self.impl

    def layer_cost(self, tp: int, cp: int, ep: int, mbs: int, pp_stride: int,
                   impl: Implementation | None = None) -> LayerCost:
        impl = impl or self.impl
        key = ("lc", tp, cp, ep, mbs, pp_stride, impl.name)
        if key not in self._memo:
            self._memo[key] = layer_cost(self.model, self.system, self.world, tp, cp, ep, mbs,
                                         self.seq_len, pp_stride, impl, self.expert_tp)
        return self._memo[key]

    def profiles(self, pp: int, vpp: int, schedule: str) -> tuple[StageProfile, ...]:
        key = ("sp", pp, vpp, schedule)
        if key not in self._memo:
            self._memo[key] = stage_profiles(self.model, pp, vpp, schedule, self.embed_stage_unit)
        return self._memo[key]

    def path(self, size: int, stride: int) -> CommPath:
        key = ("path", size, stride)
        if key not in self._memo:
            self._memo[key] = comm_path(self.system, size, stride)
        return self._memo[key]

    def params(self, tp: int, ep: int) -> LayerParams:
        key = ("lp", tp, ep)
        if key not in self._memo:
            self._memo[key] = layer_params(self.model, tp, ep, self.expert_tp)
        return self._memo[key]


@dataclass(slots=True)
class StageTerms:
    """One distinct pipeline rank of a structure: what does not depend on data-parallel sharding."""

    rank: int
    p_dense: float  # parameters on this rank outside routed experts
    p_exp: float  # routed-expert parameters on this rank
    unit: float  # parameters of this rank's largest block (the ZeRO-3 gather unit)
    acts: float  # activation bytes at the rank's peak (in-flight micro-batches, buffers, logits)
    fwd: float  # forward compute of one micro-batch
    bwd: float  # backward compute of one micro-batch
    t_f: float  # forward incl. exposed TP/EP communication
    t_b: float  # backward incl. recomputation and exposed TP/EP communication
    cp_comm: float  # exposed context-parallel exchange per micro-batch
    tp_comm: float  # forward TP collectives of one micro-batch
    ep_comm: float  # forward EP all-to-alls of one micro-batch
    recompute: float  # recomputation (compute + its communication) of one micro-batch
    units: int  # blocks on the rank (gradient buckets for the overlap rule)
    redo_compute: float = 0.0  # the compute part of ``recompute`` (runs in the backward pass, hides DP traffic)
    host_wait: float = 0.0  # forward time the MoE layers wait for the host beyond their GPU time (in t_f)
    # the parts of t_f and t_b that the pass's own TP and EP collectives spend on the network (their groups span
    # nodes): the NICs are busy, so ZeRO-3 traffic on them does not hide there (``sharded_cost``)
    nic_f: float = 0.0
    nic_b: float = 0.0
    # DeepSpeed's PipelineEngine (``Implementation.deepspeed_pipe``): this rank's blocking exchanges with its
    # neighbours and its PartitionedTensor all-gathers, per micro-batch (in the steady state, on its own path)
    pipe_xchg: float = 0.0
    tp_bwd_extra: float = 0.0  # the backward's TP collectives beyond ``tp_comm`` (Implementation.parallel_block)


@dataclass(slots=True)
class Structure:
    """Everything about a layout except sharding and the dp_replicate/dp_shard split."""

    microbatches: int
    stages: tuple[StageTerms, ...]
    bubble: float
    pp_comm: float
    time_lower_bound: float  # step time with free data-parallel traffic and optimizer
    mem_terms: tuple[tuple[float, float, float, float], ...]  # (p_dense, p_exp, unit, acts) per stage


def structures(req: Request, tp: int, cp: int, ep: int, mbs: int, pp: int, vpp: int, schedule: str,
               modes: tuple[str, ...] = RECOMPUTE_MODES) -> dict[str, Structure]:
    """The structure of a layout for each recomputation mode in ``modes`` (one pass over the stages
    for each implementation the modes run with: the trainer compiles with some and not others)."""
    by_impl: dict[str, tuple[Implementation, list[str]]] = {}
    for mode in modes:
        impl = req.implementation(tp, mode)
        by_impl.setdefault(impl.name, (impl, []))[1].append(mode)
    out: dict[str, Structure] = {}
    for impl, group in by_impl.values():
        out.update(_structures(req, impl, tp, cp, ep, mbs, pp, vpp, schedule, tuple(group)))
    return out


def loader_mask_seconds(req: Request, tp: int, mbs: int) -> float:
    """A micro-batch's data-loader attention mask (Implementation.loader_attn_mask): mbs x s x s bool bytes copied
    from pinned host memory at the node's PCIe rate, then broadcast over the TP group (NCCL's pipelined ring
    broadcast moves the buffer once a hop: counted as one point-to-point transfer of it)."""
    nbytes = float(mbs) * req.seq_len * req.seq_len
    pcie = req.system.node.pcie_gbps
    if pcie <= 0:
        raise ConfigError(f"loader_attn_mask needs the node's pcie_gbps (system {req.system.node.name})")
    bcast = collective_seconds("p2p", nbytes, req.path(tp, 1)) if tp > 1 else 0.0
    return nbytes / (pcie * 1e9) + bcast


def _structures(req: Request, impl: Implementation, tp: int, cp: int, ep: int, mbs: int, pp: int, vpp: int,
                schedule: str, modes: tuple[str, ...]) -> dict[str, Structure]:
    if impl.deepspeed_pipe and pp > 1 and (vpp > 1 or schedule != "1f1b"):
        # its exchanges (StageTerms.pipe_xchg) are counted for DeepSpeed's TrainSchedule: 1F1B, one chunk a rank
        raise ConfigError(f"deepspeed_pipe runs DeepSpeed's 1f1b TrainSchedule with vpp 1, not schedule={schedule} "
                          f"vpp={vpp}")
    dp = req.world // (pp * cp * tp)
    m = req.global_batch // (mbs * dp)
    lc = req.layer_cost(tp, cp, ep, mbs, dp * cp * tp, impl)
    lp = req.params(tp, ep)
    full_dense, full_moe = lc.act["none"]
    tp_on_nics = tp > 1 and req.path(tp, 1).nodes > 1
    ep_on_nics = ep > 1 and req.path(ep, req.expert_tp or tp).nodes > 1  # ep ranks etp apart (layer_cost)
    per_mode: dict[str, list[StageTerms]] = {mode: [] for mode in modes}
    rpn = req.system.node.ranks
    inner = hop_crossings(pp, dp * cp * tp, rpn)[0]
    edge = pipeline_edge_crossings(pp, vpp, schedule, dp * cp * tp, rpn)
    for prof in req.profiles(pp, vpp, schedule):
        p_dense = stage_dense_params(lp, prof)
        p_exp = prof.n_moe * lp.moe_layer_experts
        unit = lp.moe_layer_dense + lp.moe_layer_experts if prof.n_moe else lp.dense_layer
        held = inflight(schedule, pp, vpp, m, prof.rank)
        buffers = (lc.moe_buffer if prof.n_moe else 0.0) + (lc.logits if prof.head else 0.0)
        fwd = prof.n_dense * lc.fwd_dense + prof.n_moe * lc.fwd_moe \
            + (lc.head_fwd if prof.head else 0.0) + (lc.embed_fwd if prof.embed else 0.0)
        bwd = prof.n_dense * lc.bwd_dense + prof.n_moe * lc.bwd_moe \
            + BWD_FACTOR * ((lc.head_fwd if prof.head else 0.0) + (lc.embed_fwd if prof.embed else 0.0)) \
            + (lc.head_bwd_extra if prof.head else 0.0)
        if impl.loader_attn_mask and (prof.embed or prof.head):  # the loader's mask: host to device, TP broadcast
            fwd += loader_mask_seconds(req, tp, mbs)
        if impl.embed_dense_grad and prof.embed:  # the embedding's dense gradient, zero-filled and added to main_grad
            emb_bytes, emb_kernels = EMBED_GRAD_FILL_BYTES, 1
            if not (impl.hp_grad_accum_bytes or impl.grad_accum_bytes):  # the add, unless counted for every parameter
                emb_bytes, emb_kernels = emb_bytes + 2 + 2 * req.grad_reduce_bytes, 2
            bwd += elementwise_seconds(req.system.node.device, emb_bytes * lp.embed, emb_kernels)
        if impl.hp_grad_accum_bytes:  # BF16_Optimizer: the fp32 gradient accumulation after each backward
            bwd += elementwise_seconds(req.system.node.device, impl.hp_grad_accum_bytes * (p_dense + p_exp), 0)
        if impl.grad_accum_bytes:  # autograd's in-place accumulation of low-precision gradients, a micro-batch
            share = (m - 1) / m if impl.grad_accum_first_free else 1.0
            bwd += elementwise_seconds(req.system.node.device, share * impl.grad_accum_bytes * (p_dense + p_exp), 0)
        if impl.autocast_fwd_bytes or impl.autocast_bwd_bytes:  # autocast over fp32 weights: the casts, the fp32 .grad
            fwd += elementwise_seconds(req.system.node.device, impl.autocast_fwd_bytes * (p_dense + p_exp), 0)
            bwd += elementwise_seconds(req.system.node.device, impl.autocast_bwd_bytes * (p_dense + p_exp), 0)
        n_layers = prof.n_dense + prof.n_moe
        tp_comm = prof.n_dense * lc.tp_fwd + prof.n_moe * (lc.tp_fwd if lc.tp_fwd_moe is None else lc.tp_fwd_moe)
        tp_bwd_extra = prof.n_dense * lc.tp_bwd_extra  # the backward's TP collectives beyond the forward's
        ep_comm = prof.n_moe * lc.ep_fwd
        cp_comm = n_layers * (lc.cp_fwd_exposed + lc.cp_bwd_exposed)
        # A MoE layer's forward cannot finish before the host has issued it (host-bound small layers)
        moe_gpu_fwd = lc.fwd_moe + (lc.tp_fwd if lc.tp_fwd_moe is None else lc.tp_fwd_moe) + lc.ep_fwd
        host_wait = prof.n_moe * max(0.0, impl.moe_host_floor_s - moe_gpu_fwd)
        t_f = fwd + tp_comm + ep_comm + host_wait
        nic_f = (tp_comm if tp_on_nics else 0.0) + (ep_comm if ep_on_nics else 0.0)
        pipe_xchg = 0.0
        if impl.deepspeed_pipe and pp > 1:
            # DeepSpeed's PipelineEngine: with the previous stage, RecvActivation then SendGrad (and the input's
            # all-gather); with the next, SendActivation then RecvGrad (and the output's and the gradient's), each a
            # blocking transfer after its metadata send; the first and last stages have one neighbour (vpp is 1)
            # (vpp is 1).  Each neighbour on its own link (hop_crossings): a middle stage is charged as the one with
            # the most neighbours across a node (pipeline_edge_crossings; the costliest middle stage, which this
            # profile stands for), an end stage on its one boundary
            prev, nxt = not prof.embed, not prof.head
            link, link_node = lc.p2p + lc.pipe_meta, lc.p2p_node + lc.pipe_meta_node
            if prev and nxt:  # two transfers with each neighbour, ``edge`` of the two neighbours across
                sends = 2 * ((2 - edge) * link + edge * link_node)
            else:  # an end stage: two transfers with its one neighbour
                sends = 2 * (link_node if (inner[0] if nxt else inner[-1]) else link)
            pipe_xchg = sends + (prev + 2 * nxt) * lc.pipe_gather
        for mode in modes:
            act_dense, act_moe = lc.act[mode]
            acts = (prof.n_dense * act_dense + prof.n_moe * act_moe) * held + buffers
            if mode == "full":  # one layer's activations rebuilt during its backward, and its forward redone
                acts += full_moe if prof.n_moe else full_dense
                redo = fwd - (lc.head_fwd if prof.head else 0.0) + tp_comm + ep_comm + host_wait
            elif mode == "selective":
                redo = n_layers * lc.attn_fwd
            else:
                redo = 0.0
            if req.recompute_moe and mode != "full":
                redo += prof.n_moe * (lc.moe_block_fwd + lc.ep_fwd) + n_layers * lc.norm_fwd
            elif req.recompute_norm_act and mode != "full":
                redo += prof.n_moe * lc.moe_act_fwd + n_layers * lc.norm_fwd
            t_b = bwd + tp_comm + tp_bwd_extra + ep_comm + redo
            redo_compute = redo - (tp_comm + ep_comm + host_wait if mode == "full" else 0.0) - (
                prof.n_moe * lc.ep_fwd if req.recompute_moe and mode != "full" else 0.0)
            nic_b = nic_f * (2 if mode == "full" else 1) + (tp_bwd_extra if tp_on_nics else 0.0) + (
                prof.n_moe * lc.ep_fwd if ep_on_nics and req.recompute_moe and mode != "full" else 0.0)
            per_mode[mode].append(StageTerms(prof.rank, p_dense, p_exp, unit, acts, fwd, bwd, t_f, t_b, cp_comm,
                                             tp_comm, ep_comm, redo, max(1, n_layers), redo_compute,
                                             host_wait, nic_f, nic_b, pipe_xchg, tp_bwd_extra))
    # Pipeline sends on the critical path: the fill and the drain (2 (pp vpp - 1) boundaries), and in the
    # steady state one exposed receive per chunk pass of every micro-batch, forward and backward (a stage
    # waits for its input / output gradient before it computes; Megatron's blocking exchanges and torch's
    # pipelining schedules alike).  Each hop is priced on its own link: a hop whose two stages share a node on the
    # node's link (lc.p2p), one that crosses a node boundary, or whose stages straddle one, on the network
    # (lc.p2p_node; hop_crossings, pipeline_node_hops), and in the steady state the stage with the most neighbours
    # across nodes receives that many of its two transfers over the network (pipeline_edge_crossings: 1 at a
    # node's edge, 2 where a stage of a misaligned stride has both neighbours on other nodes).
    hops, crossing = pipeline_node_hops(pp, vpp, schedule, dp * cp * tp, rpn)
    # (Implementation.pp_overlap_p2p: an interleaved schedule that posts its exchanges ahead pays the fill and the
    # drain only)
    steady = 0.0 if (impl.pp_overlap_p2p and schedule == "interleaved1f1b") else m * vpp
    pp_comm = (2 * ((hops - crossing) * lc.p2p + crossing * lc.p2p_node)
               + steady * ((2 - edge) * lc.p2p + edge * lc.p2p_node) if pp > 1 else 0.0)
    if impl.deepspeed_pipe and pp > 1:
        # DeepSpeed's PipelineEngine (Implementation.deepspeed_pipe): the fill and the drain as above, each transfer
        # after its metadata send; the steady state's exchanges are each stage's own (StageTerms.pipe_xchg: four
        # transfers and three all-gathers a micro-batch on a middle stage, two and one or two on the end stages), on
        # the path of the stage that sets the pace
        pp_comm = 2 * ((hops - crossing) * (lc.p2p + lc.pipe_meta) + crossing * (lc.p2p_node + lc.pipe_meta_node))
        if req.model.tie_embeddings:
            # ``ReduceTiedGrads`` after the last backward: the tied weight's gradient all-reduced between the first
            # and the last stage (pipe/engine.py ``_exec_reduce_tied_grads``: the BF16_Optimizer's fp32 ``_hp_grad``,
            # else the weight's own gradient), blocking, on the first stage, which the 1F1B drain ends the step on
            tied_bytes = (4.0 if impl.hp_grad_accum_bytes else GRAD_BYTES) * lp.tied_copy
            # the pair i, i + (pp - 1) stride: inside a node where the pipeline is one node, else across (pp is
            # outermost, so with two or more nodes the end stages are a node or more apart)
            pp_comm += collective_seconds("all_reduce", tied_bytes,
                                          pair_paths(req.system, (pp - 1) * dp * cp * tp, req.world)[1])
    out = {}
    for mode, stages in per_mode.items():
        slow = stages[0]
        for st in stages:
            if st.t_f + st.t_b + st.cp_comm + st.pipe_xchg > slow.t_f + slow.t_b + slow.cp_comm + slow.pipe_xchg:
                slow = st
        bubble = bubble_seconds(schedule, pp, vpp, slow.t_f, slow.t_b + slow.cp_comm)
        lower = m * (slow.t_f + slow.t_b + slow.cp_comm + slow.pipe_xchg) + bubble + pp_comm
        out[mode] = Structure(m, tuple(stages), bubble, pp_comm, lower,
                              tuple((st.p_dense, st.p_exp, st.unit, st.acts) for st in stages))
    return out


@dataclass(slots=True)
class DPGroups:
    """Data-parallel groups of one (tp, cp, ep, sharding, dp_replicate, dp_shard) choice."""

    dense_shards: int  # ranks one dense parameter is sharded over (1 without sharding)
    expert_shards: int
    bytes_dense: float  # weights + grads + optimizer bytes per dense parameter on a rank
    bytes_expert: float
    gather: float  # ZeRO-3: bytes per parameter of the gathered block(s)
    shard: CommPath
    expert_shard: CommPath
    replicate: CommPath
    expert_replicate: CommPath


def fullest_expert_shards(model: ModelConfig, ep: int, edp: int) -> float:
    """1 / the fraction of a rank's stacked expert weights that the fullest of its ``edp`` FSDP
    ranks holds (``topology.layout.expert_shard_dim``: whole experts in ``torch.chunk`` pieces
    when neither the expert count nor d_model splits evenly)."""
    local = model.n_experts // ep if model.is_moe else 1
    if local % edp == 0 or expert_shard_dim(local, model.d_model, edp) != 0:
        return float(edp)
    return local / math.ceil(local / edp)


def block_param_numels(model: ModelConfig, biases: bool) -> list[int]:
    """Element counts of one dense block's parameter tensors in the order FSDP flattens them (MPTBlock's
    registration order: norm_1, attn.Wqkv, attn.out_proj, norm_2, ffn.up_proj, ffn.down_proj; a SwiGLU's gate
    counted as fused into up_proj, one tensor), each linear's and LayerNorm's bias after its weight when ``biases``."""
    d, q, kv = model.d_model, model.q_dim, model.kv_dim
    ff = model.d_ff * (2 if model.ffn_type == "swiglu" else 1)
    norm = [d, d] if (biases and model.norm == "layernorm") else [d]

    def linear(n_in: int, n_out: int) -> list[int]:
        return [n_in * n_out, n_out] if biases else [n_in * n_out]

    return norm + linear(d, q + 2 * kv) + linear(q, d) + norm + linear(d, ff) + linear(model.d_ff, d)


def fsdp_rank_tensor_numels(units: list[list[int]], ranks: int) -> list[int]:
    """The local element count of every original parameter with elements on the rank holding the most such
    tensors: FSDP (FULL_SHARD, use_orig_params) flattens each wrapped unit's parameters, in order, into one flat
    parameter and gives rank r the contiguous r-th of ``ranks`` equal chunks (the last padded); a parameter
    without elements on a rank has no gradient there and the optimizer skips it."""
    if ranks < 1:
        raise ConfigError(f"ranks={ranks!r}: must be >= 1")
    best: list[int] = []
    for rank in range(ranks):
        out = []
        for unit in units:
            chunk = -(-sum(unit) // ranks)
            lo, hi, start = rank * chunk, (rank + 1) * chunk, 0
            for n in unit:
                local = min(start + n, hi) - max(start, lo)
                if local > 0:
                    out.append(local)
                start += n
        if len(out) > len(best):
            best = out
    return best


def step_sync_excess_s(req: Request, ranks: int, device_rate: float) -> float:
    """What an optimizer that synchronises once a tensor adds to its device roofline on the busiest rank: the sum
    over the rank's tensors of max(0, host time - the tensor's own device time)."""
    h = req.impl.optimizer_tensor_host_s
    if h <= 0:
        return 0.0
    model = req.model
    if model.is_moe:
        raise ConfigError(f"optimizer_tensor_host_s: the per-tensor count covers dense models only, not {model.name}")
    key = ("stepsync", ranks)
    memo = req._memo
    if key not in memo:
        root = [model.vocab_size * model.d_model]
        if model.pos_encoding == "learned":
            root.append(req.seq_len * model.d_model)
        if not model.tie_embeddings:
            root.append(model.vocab_size * model.d_model)
        root += [model.d_model, model.d_model] if (req.impl.param_biases and model.norm == "layernorm") else [model.d_model]
        units = [block_param_numels(model, req.impl.param_biases)] * model.n_layers + [root]
        memo[key] = fsdp_rank_tensor_numels(units, ranks)
    return sum(max(0.0, h - req.impl.optimizer_bytes * n / device_rate) for n in memo[key])


def dp_groups(req: Request, tp: int, cp: int, ep: int, sharding: str, dp_replicate: int,
              dp_shard: int) -> DPGroups:
    """The groups the layout's data parallelism uses (rank order and ep rule of topology.layout)."""
    key = ("dpg", tp, cp, ep, sharding, dp_replicate, dp_shard)
    memo = req._memo
    out = memo.get(key)
    if out is not None:
        return out
    dp = dp_replicate * dp_shard
    etp = req.expert_tp or tp  # expert data-parallel group: the tp*dp*cp ranks over ep*etp, ep*etp apart
    if sharding == "none":
        dense_shards = expert_shards = expert_group = 1
        rep = req.path(dp * cp, tp)
        exp_rep = req.path(dp * cp * tp // (ep * etp), etp * ep)
    else:
        dense_shards = dp_shard * cp
        rep = req.path(dp_replicate, dense_shards * tp)
        if ep == 1 and tp == 1:  # experts inside their block's FSDP unit, sharded like it
            expert_group, expert_shards, exp_rep = dense_shards, dense_shards, rep
        else:
            # Their own FSDP unit over every rank holding the same experts (all of edp, HSDP's
            # replicas included), never replicated; the fullest rank sets the memory.
            expert_group = dp * cp * tp // (ep * etp)
            expert_shards = fullest_expert_shards(req.model, ep, expert_group)
            exp_rep = req.path(1, etp * ep * expert_group)
    zd = zero_bytes_per_param(sharding, dense_shards)
    zx = zero_bytes_per_param(sharding, expert_shards)
    resident = 0.0 if req.offload != "none" else 1.0  # offloaded: the sharded state lives off the device
    out = DPGroups(dense_shards, expert_shards, resident * sum(zd.values()), resident * sum(zx.values()),
                   (2 * WEIGHT_BYTES + GRAD_BYTES) if sharding == "zero3" else 0.0,
                   req.path(dense_shards, tp), req.path(expert_group, etp * ep), rep, exp_rep)
    memo[key] = out
    return out


def dp_comm(req: Request, g: DPGroups, sharding: str, p_dense: float, p_exp: float) -> tuple[float, float, float]:
    """(reduce-scatter of gradients, all-gather of weights, all-reduce across replicas) for one rank."""
    key = ("dpc", id(g), p_dense, p_exp)
    gb = req.grad_reduce_bytes
    memo = req._memo
    out = memo.get(key)
    if out is not None:
        return out
    memo[key] = out = _dp_times(collective_seconds, g, sharding, gb, p_dense, p_exp)
    return out


def _dp_times(cs, g: DPGroups, sharding: str, gb: float, p_dense: float,
              p_exp: float) -> tuple[float, float, float]:
    """(reduce-scatter, all-gather, cross-replica all-reduce) of one rank's data-parallel traffic, each
    collective timed by ``cs(op, bytes, path)``; gradients move ``gb`` bytes a parameter."""
    if sharding == "none":
        return (0.0, 0.0, cs("all_reduce", gb * p_dense, g.replicate)
                + cs("all_reduce", gb * p_exp, g.expert_replicate))
    return (cs("reduce_scatter", gb * p_dense, g.shard)
            + cs("reduce_scatter", gb * p_exp, g.expert_shard),
            cs("all_gather", WEIGHT_BYTES * p_dense, g.shard)
            + cs("all_gather", WEIGHT_BYTES * p_exp, g.expert_shard),
            cs("all_reduce", gb * p_dense / g.dense_shards, g.replicate)
            + cs("all_reduce", gb * p_exp / g.expert_shards, g.expert_replicate))


def dp_comm_nic_only(req: Request, g: DPGroups, p_dense: float, p_exp: float) -> tuple[float, float]:
    """(reduce-scatter, all-gather) seconds of ZeRO-3's per-micro-batch traffic on groups of one rank per
    node (``k == 1``, not misaligned: a misaligned group has several ranks on some nodes): the part that uses
    no intra-node link."""
    key = ("dpn", id(g), p_dense, p_exp)
    gb = req.grad_reduce_bytes
    memo = req._memo
    out = memo.get(key)
    if out is not None:
        return out
    rs = ag = 0.0
    for path, params in ((g.shard, p_dense), (g.expert_shard, p_exp)):
        if path.nodes > 1 and path.k == 1 and not path.misaligned:
            rs += collective_seconds("reduce_scatter", gb * params, path)
            ag += collective_seconds("all_gather", WEIGHT_BYTES * params, path)
    memo[key] = out = (rs, ag)
    return out


def device_share(req: Request, op: str, nbytes: float, path: CommPath) -> float:
    """The share of a collective's time during which its kernels load the GPU as a collective inside the
    node does: the rate it moves data at over the rate the node's own link gives the same collective.  An
    NCCL kernel's claim on the compute it overlaps (the HBM bandwidth its copies and reductions stream, the
    SMs its channels spin on) follows the bytes it pushes through the device a second; a ring that feeds
    one NIC per rank (one rank per node) runs at the NIC's rate, a fraction of NVLink's.  1 inside a node,
    and for hierarchical groups whose node's NICs together keep up with the node link."""
    if path.nodes == 1 or path.size <= 1 or nbytes <= 0:
        return 1.0
    link = req.system.node.link_levels[-1].link
    inside = CommPath(path.size, path.size, 1, link, path.inter_gbps, path.inter_latency_us, link.name, path.call_us)
    actual = collective_seconds(op, nbytes, path)
    return min(1.0, collective_seconds(op, nbytes, inside) / actual) if actual > 0 else 1.0


def dp_comm_device(req: Request, g: DPGroups, sharding: str, p_dense: float,
                   p_exp: float) -> tuple[float, float, float]:
    """``dp_comm``'s three times, each collective weighted by its ``device_share``: what its kernels take
    from the compute they overlap, in seconds of a node-link collective."""
    key = ("dpd", id(g), p_dense, p_exp)
    gb = req.grad_reduce_bytes
    memo = req._memo
    out = memo.get(key)
    if out is not None:
        return out

    def cs(op: str, nbytes: float, path: CommPath) -> float:
        return collective_seconds(op, nbytes, path) * device_share(req, op, nbytes, path)

    memo[key] = out = _dp_times(cs, g, sharding, gb, p_dense, p_exp)
    return out


def peak_memory_bytes(st: Structure, g: DPGroups, reserved: float) -> tuple[float, StageTerms]:
    """Peak bytes over the structure's distinct stages, and the stage that has it."""
    best = -1.0
    worst = st.stages[0]
    bd, bx, ga = g.bytes_dense, g.bytes_expert, g.gather
    for s in st.stages:
        v = s.p_dense * bd + s.p_exp * bx + ga * s.unit + s.acts
        if v > best:
            best, worst = v, s
    return best + reserved, worst


# Offload (docs/planner.md "Offload"; measured against the H200 runs by bench/offload_vs_measured.py).
# The host optimizer step of DeepSpeed's ZeRO-3 with the optimizer offloaded (stage3.py ``step``, per
# sub-group of ``sub_group_size`` elements): ``unscale_and_clip_grads`` multiplies the fp32 gradient
# partition (read and write, 8 bytes a parameter; it runs every step, scale 1 or not), ``cpu_adam``
# reads master, gradient, m and v and writes master, m and v (28), and the updated master is copied
# into the bf16 partition, or with the parameters on NVMe into the pinned swap buffer (read 4, write
# 2): HOST_STEP_BYTES a parameter streamed through host DRAM, a bandwidth-bound pass (cpu_adam's
# arithmetic, ~10 flops a parameter in AVX-512, is far below what 16 cores do in that time).  A core
# streams HOST_STREAM_GBPS_PER_CORE (the one fitted figure: the lent H200 machine's ZeRO-Offload run
# of 7b with 6 blocks, its steady steps 2-3 of 0.90 s; see the docs' table), and the node no faster
# than HOST_DRAM_EFFICIENCY of its DRAM bandwidth where that is known (0 in the catalogue: not known,
# the cores bind).  torch's AdamW on CPU tensors (FSDP2's CPU offload policy) is NATIVE_HOST_SLOWDOWN
# times slower (ZeRO-Offload paper and DeepSpeed's tutorial: CPU-Adam 5-7x faster than PyTorch's).
HOST_STEP_BYTES = 8 + 28 + 6
HOST_STREAM_GBPS_PER_CORE = 5.25
HOST_DRAM_EFFICIENCY = 0.5
NATIVE_HOST_SLOWDOWN = 5.0
# DeepSpeed's cpu_adam creates m and v (zeros_like) at its first step, so a run's first step also
# first-touches 8 bytes a parameter of fresh host memory (page faults, zero fill), at
# HOST_FIRST_TOUCH_GBPS for the node (fitted on the 6-block CPU run: step 1 1.96 s, steady 0.90 s);
# the first step is a warm-up, never a steady step (offload_first_step_seconds).
HOST_FIRST_TOUCH_GBPS = 11.1
NVME_PARAM_WRITE_BYTES = WEIGHT_BYTES  # parameters on NVMe: every step writes the updated bf16 parameters back
# Optimizer state on NVMe (ZeRO-Infinity): fp32 master, m and v in and out every step, and the fp32
# gradient partitions out during the backward and in for the step; with DeepSpeed's defaults
# (offload_optimizer.pipeline_read/pipeline_write off) these swaps do not overlap the Adam.
NVME_STATE_BYTES = 2 * OPTIMIZER_BYTES + 2 * 4


def offload_traffic(req: Request, local_params: float) -> dict[str, float]:
    """Bytes one rank moves with offload (``local_params``: its shard).

    Per micro-batch: the bf16 parameters come to the device twice, gathered for the forward and again
    for the backward (``pcie_params``; read from the drives first when they live on NVMe,
    ``disk_read``), and the gradients go back in the reduction's dtype (``pcie_grads``).  Per step: with the parameters on
    NVMe the updated ones are written back (``disk_write``); with the optimizer state on NVMe it is
    swapped in and out (``disk_state``).  Measured on the H200 (7b, 12 and 18 blocks): the bf16
    parameters written once a step; read twice in the first step and 0.90 GiB less in later ones,
    for both depths (DeepSpeed's read-ahead carries some of the forward's last parameters into the
    backward), so the model's 2x is the first step's read and over-counts a steady one by a few %."""
    params = WEIGHT_BYTES * local_params
    return {
        "pcie_params": 2 * params,
        # the reduced gradient shard in the reduction's dtype (FSDP2 offload copies its fp32 reduce-scatter output)
        "pcie_grads": req.grad_reduce_bytes * local_params,
        "disk_read": 2 * params if req.offload == "nvme" else 0.0,
        "disk_write": NVME_PARAM_WRITE_BYTES * local_params if req.offload == "nvme" else 0.0,
        "disk_state": NVME_STATE_BYTES * local_params if req.optimizer_on == "nvme" else 0.0,
    }


def host_stream_gbps(node) -> float:
    """GB/s the host optimizer step streams on ``node``: its cores, capped by its DRAM where known."""
    cores = node.cores * HOST_STREAM_GBPS_PER_CORE
    dram = node.host_memory_gbps * HOST_DRAM_EFFICIENCY
    if cores and dram:
        return min(cores, dram)
    return cores or dram


def cpu_adam_seconds(req: Request, local_params: float) -> float:
    """The host optimizer step of one rank (clip, Adam, copy back: HOST_STEP_BYTES a parameter): all the
    node's ranks update their shards at once, on the node's cores and its DRAM (DeepSpeed's cpu_adam;
    torch's CPU AdamW, the native engine, NATIVE_HOST_SLOWDOWN times slower)."""
    rate = host_stream_gbps(req.system.node) * 1e9 / HOST_STEP_BYTES
    if req.engine != "deepspeed":
        rate /= NATIVE_HOST_SLOWDOWN
    return local_params * req.system.node.ranks / rate


def offload_first_step_seconds(req: Request, local_params: float) -> float:
    """What a run's first step takes over a steady one: cpu_adam's m and v (8 bytes a parameter, all the
    node's ranks) first-touched in fresh host memory.  Not part of the planner's (steady) step."""
    return 8 * local_params * req.system.node.ranks / (HOST_FIRST_TOUCH_GBPS * 1e9)


def offload_seconds(req: Request, local_params: float, stage: StageTerms) -> tuple[float, float]:
    """(exposed transfer time per micro-batch, optimizer step time) of one rank with offload.

    Per micro-batch the parameters are gathered for the forward and again for the backward; DeepSpeed
    prefetches (its NVMe read-ahead fills the free swap buffers in trace order), so a pass's reads
    hide that pass's compute and the pass takes the longer of the two.  With the parameters on NVMe
    a pass's read is bound by the drives (shared by the node's ranks) as well as PCIe.  The
    optimizer step runs on the host after the backward (DeepSpeed's default: no overlap with the
    next forward), and nothing hides it: with the parameters on NVMe each sub-group's updated bf16
    parameters are written back with a blocking aio write before the next sub-group's Adam starts
    (DeepSpeed 0.19.8: stage3.py ``_partitioned_params_swap_out`` -> partitioned_param_swapper
    ``swap_out_partitioned_params`` -> ``SwapBufferPool.swap_out(handle)`` with ``async_op=False``,
    which waits), so the step is Adam + write.  Optimizer state on NVMe adds its swaps, not overlapped."""
    node = req.system.node
    pcie = node.pcie_gbps * 1e9
    disk = node.nvme_gbps * 1e9 / node.ranks if node.nvme_gbps else 0.0
    t = offload_traffic(req, local_params)
    fetch = t["pcie_params"] / 2 / pcie
    if t["disk_read"]:
        fetch = max(fetch, t["disk_read"] / 2 / disk)
    grads = t["pcie_grads"] / pcie
    exposed = max(0.0, fetch - stage.fwd) + max(0.0, max(fetch, grads) - stage.bwd)
    optimizer = cpu_adam_seconds(req, local_params)
    if t["disk_write"]:
        optimizer += t["disk_write"] / disk
    if t["disk_state"]:
        optimizer += t["disk_state"] / disk
    return exposed, optimizer


def sharded_cost(req: Request, st: Structure, g: DPGroups, sharding: str, want_breakdown: bool = False):
    """(step seconds, details|None) of a structure under one sharding choice."""
    m = st.microbatches

    def bucket_share(stage: StageTerms) -> float:
        # the share of the stage's data-parallel traffic in its last (first) bucket: one block, or the framework's
        # bucket rule on the first pipeline stage (``Implementation.dp_bucket_params``)
        floor, per_rank = req.impl.dp_bucket_params
        if (floor > 0 or per_rank > 0) and stage.rank == 0:
            return min(1.0, max(floor, per_rank * g.dense_shards) / max(stage.p_dense + stage.p_exp, 1.0))
        return 1.0 / stage.units

    def gather_exposed(ag: float, stage: StageTerms) -> float:
        # overlapped with the next step's first forward, bucket by bucket, except the first bucket
        return max(ag - stage.fwd, ag * bucket_share(stage)) if req.impl.param_gather_overlap else ag

    dev = req.system.node.device
    hbm = dev.memory_gbps * 1e9
    sharded = sharding != "none"
    longest = 0.0
    chosen = None
    for s in st.stages:
        rs, ag, ar = dp_comm(req, g, sharding, s.p_dense, s.p_exp)
        # The backward pass's compute, which the gradient reduction (and ZeRO-3's backward gathers) hide
        # behind: with recomputation each block's forward is redone inside it, block by block, between
        # the gather that serves it and the block's backward, so it hides traffic as the backward does.
        bwd = s.bwd + s.redo_compute
        per_mb = 0.0
        if req.impl.dp_reduce_after_backward:
            # DeepSpeed's engine: the whole reduction after the backward (an all-reduce of the gradients,
            # also where the optimizer state is sharded), then the sharded step's parameter all-gather
            reduce = rs if req.impl.dp_reduce_scatter else 2 * rs  # a reduce-scatter, or a full all-reduce
            step_exposed = (reduce + ar + ag if sharding == "zero1" else ar) + elementwise_seconds(
                dev, req.impl.hp_grad_step_bytes * (s.p_dense + s.p_exp), 0)
        elif not sharded:
            step_exposed = max(ar - bwd, ar / s.units)
        elif sharding == "zero1":
            step_exposed = max(rs + ar - bwd, (rs + ar) * bucket_share(s)) + gather_exposed(ag, s)
        elif sharding == "zero2":
            per_mb = max(rs - bwd, rs * bucket_share(s))
            step_exposed = max(ar - bwd, ar / s.units) + gather_exposed(ag, s)
        else:
            # The gathers and reduce-scatters that feed only the NICs (one rank per node) share no link with
            # the TP and EP collectives inside the node, so they also run while those (and any wait for the
            # host) hold the step: their window is the pass's wall time less the time the pass's own
            # collectives hold the NICs (t_f holds the forward's wait for the host, t_b a full recompute's
            # redone wait); the rest's window is its compute.
            rs_nic, ag_nic = dp_comm_nic_only(req, g, s.p_dense, s.p_exp)
            fwd_wall, bwd_wall = s.t_f - s.nic_f, s.t_b - s.nic_b
            per_mb = max(ag - ag_nic - s.fwd, ag - fwd_wall, 0.0) \
                + max(ag + rs - ag_nic - rs_nic - bwd, ag + rs - bwd_wall, 0.0) + ag / s.units
            step_exposed = max(ar - bwd, ar / s.units)
        local = s.p_dense / g.dense_shards + s.p_exp / g.expert_shards
        transfers, step_sync = 0.0, 0.0
        if req.offload == "none":
            optimizer = req.impl.optimizer_bytes * local / (hbm * dev.elementwise_efficiency)
            # the whole gradient buffer of the rank (every parameter it holds, not the optimizer's shard)
            optimizer += req.impl.grad_buffer_passes * req.grad_reduce_bytes * (s.p_dense + s.p_exp) / (
                hbm * dev.elementwise_efficiency)
            step_sync = step_sync_excess_s(req, g.dense_shards, hbm * dev.elementwise_efficiency)
            optimizer += step_sync
        else:
            transfers, optimizer = offload_seconds(req, local, s)
        # Data-parallel traffic hidden behind compute still slows it: the collectives' kernels take SMs
        # and HBM bandwidth from the GEMMs they overlap (a share of the hidden time, fitted).
        per_mb_total = {"zero2": rs, "zero3": 2 * ag + rs}.get(sharding, 0.0)
        step_total = {"none": ar, "zero1": rs + ar}.get(sharding, ar)
        # Each share is weighted by how hard its collectives load the device (``device_share``).
        rs_d, ag_d, ar_d = dp_comm_device(req, g, sharding, s.p_dense, s.p_exp)
        per_mb_d = {"zero2": rs_d, "zero3": 2 * ag_d + rs_d}.get(sharding, 0.0)
        step_d = {"none": ar_d, "zero1": rs_d + ar_d}.get(sharding, ar_d)
        hidden = m * (per_mb_total - per_mb) * (per_mb_d / per_mb_total if per_mb_total > 0 else 1.0) \
            + max(step_total - step_exposed, 0.0) * (step_d / step_total if step_total > 0 else 1.0)
        contention = DP_OVERLAP_CONTENTION * max(hidden, 0.0)
        per_mb += contention / m
        busy = m * (s.t_f + s.t_b + s.cp_comm + s.pipe_xchg + per_mb + transfers) + step_exposed + optimizer
        if busy > longest:
            longest = busy
            chosen = (s, per_mb, step_exposed, optimizer, rs, ag, ar, transfers, step_sync)
    step = longest + st.bubble + st.pp_comm
    if not want_breakdown:
        return step, None
    s, per_mb, step_exposed, optimizer, rs, ag, ar, transfers, step_sync = chosen
    dp_total = {"none": ar, "zero1": rs + ar + ag, "zero2": m * rs + ar + ag}.get(sharding, m * (2 * ag + rs) + ar)
    breakdown = {
        "compute_s": m * (s.fwd + s.bwd),
        "recompute_s": m * s.recompute,
        "tp_comm_s": m * (2 * s.tp_comm + s.tp_bwd_extra),
        "ep_comm_s": m * 2 * s.ep_comm,
        "cp_comm_exposed_s": m * s.cp_comm,
        "host_wait_s": m * s.host_wait,
        "dp_comm_exposed_s": m * per_mb + step_exposed,
        "pp_comm_s": st.pp_comm + m * s.pipe_xchg,
        "bubble_s": st.bubble,
        "optimizer_s": optimizer,
        "optimizer_host_s": step_sync,  # part of optimizer_s: the per-tensor synchronised loop's host excess
        "offload_s": m * transfers,
        "dp_comm_total_s": dp_total,
    }
    return step, {"breakdown": breakdown, "time_stage": s.rank}


# What the FSDP2 trainer keeps between steps, per parameter of a rank, before sharding: the fp32
# parameters (the master weights themselves; bf16 copies exist only around compute), fp32
# gradients (FSDP2's reduce dtype) and AdamW's fp32 exp_avg and exp_avg_sq.  The same 16 bytes
# as ZeRO's 2 + 2 + 12, split as the trainer holds them.
RESIDENT_BYTES = {"params": 4, "grads": 4, "optimizer": 8}


def resident_state_bytes(req: Request, lay: Layout, pp_rank: int) -> dict[str, float]:
    """Bytes of the parameter, gradient and optimizer shards one rank of pipeline rank ``pp_rank``
    holds between steps (what ``alphaexa plan --verify`` measures on the real sharded model)."""
    prof = rank_profiles(req.model, lay.pp, lay.vpp, lay.schedule, req.embed_stage_unit)[pp_rank]
    lp = req.params(lay.tp, lay.ep)
    p_dense = stage_dense_params(lp, prof)
    p_exp = prof.n_moe * lp.moe_layer_experts
    g = dp_groups(req, lay.tp, lay.cp, lay.ep, lay.sharding, lay.dp_replicate, lay.dp_shard)
    per_rank = p_dense / g.dense_shards + p_exp / g.expert_shards
    return {k: v * per_rank for k, v in RESIDENT_BYTES.items()}


def memory_breakdown(req: Request, st: Structure, g: DPGroups, sharding: str) -> tuple[dict[str, float], int]:
    reserved = req.system.node.device.reserved_gib * GIB
    peak, w = peak_memory_bytes(st, g, reserved)
    zd = zero_bytes_per_param(sharding, g.dense_shards)
    zx = zero_bytes_per_param(sharding, g.expert_shards)
    gathered = sharding == "zero3"
    params = w.p_dense * zd["params"] + w.p_exp * zx["params"] + (2 * WEIGHT_BYTES * w.unit if gathered else 0)
    grads = w.p_dense * zd["grads"] + w.p_exp * zx["grads"] + (GRAD_BYTES * w.unit if gathered else 0)
    optim = w.p_dense * zd["optimizer"] + w.p_exp * zx["optimizer"]
    out = {"params": params / GIB, "grads": grads / GIB, "optimizer": optim / GIB,
           "activations": w.acts / GIB, "overhead": reserved / GIB, "total": peak / GIB,
           "capacity": req.system.node.device.memory_gib}
    if req.offload != "none":
        # what left the device (one node's ranks), against the host memory or the NVMe that holds it
        state = w.p_dense * sum(zd.values()) + w.p_exp * sum(zx.values())
        out["params"] -= w.p_dense * zd["params"] / GIB + w.p_exp * zx["params"] / GIB
        out["grads"] -= (w.p_dense * zd["grads"] + w.p_exp * zx["grads"]) / GIB
        out["optimizer"] = 0.0
        node = req.system.node
        if req.optimizer_on != req.offload:
            # split (DeepSpeed's offload_param and offload_optimizer on different devices): what binds is
            # the host's part, the gradients and whichever of parameters / optimizer state it holds
            params = w.p_dense * zd["params"] + w.p_exp * zx["params"]
            optim = w.p_dense * zd["optimizer"] + w.p_exp * zx["optimizer"]
            state -= params if req.offload == "nvme" else optim
            out["offloaded_per_node"] = state * node.ranks / GIB
            out["offload_capacity"] = node.host_memory_gib
        else:
            out["offloaded_per_node"] = state * node.ranks / GIB
            out["offload_capacity"] = node.host_memory_gib if req.offload == "cpu" else node.nvme_gib
    return out, w.rank


def structure_of(req: Request, lay: Layout) -> Structure:
    return structures(req, lay.tp, lay.cp, lay.ep, lay.mbs, lay.pp, lay.vpp, lay.schedule,
                      (lay.recompute,))[lay.recompute]


def estimate(req: Request, layout: Layout) -> Estimate:
    """Validate and cost one layout (dp_shard=-1 resolved against the request's world)."""
    if req.expert_tp:  # resolve without the trainer's ep rule, checked below by the folded one
        lay = dataclasses.replace(dataclasses.replace(layout, ep=1).resolve(req.world), ep=layout.ep)
    else:
        lay = layout.resolve(req.world)
    if req.expert_tp:  # folded expert parallelism: ep x etp must tile the tp x dp x cp ranks instead
        if lay.ep > 1 and (lay.tp * lay.dp * lay.cp) % (lay.ep * req.expert_tp):
            raise ConfigError(f"ep={lay.ep} x expert_tp={req.expert_tp} does not divide tp*dp*cp = "
                              f"{lay.tp * lay.dp * lay.cp}")
        if req.model.is_moe and (req.model.n_experts % lay.ep or req.model.moe_d_ff % req.expert_tp):
            raise ConfigError(f"ep={lay.ep} / expert_tp={req.expert_tp} do not divide the experts of {req.model.name}")
        dataclasses.replace(lay, ep=1).validate(world=req.world, model=req.model, global_batch=req.global_batch,
                                                seq_len=req.seq_len)
    else:
        lay.validate(world=req.world, model=req.model, global_batch=req.global_batch, seq_len=req.seq_len)
    st = structure_of(req, lay)
    g = dp_groups(req, lay.tp, lay.cp, lay.ep, lay.sharding, lay.dp_replicate, lay.dp_shard)
    memory, mem_stage = memory_breakdown(req, st, g, lay.sharding)
    step, det = sharded_cost(req, st, g, lay.sharding, want_breakdown=True)
    tokens = req.global_batch * req.seq_len
    per_device = req.model_flops_per_step / step / req.world
    peak = req.system.node.device.bf16_tflops * 1e12
    return Estimate(layout=lay, memory=memory, step_time_s=step, tokens_per_s=tokens / step,
                    model_tflops_per_device=per_device / 1e12, mfu=per_device / peak,
                    breakdown=det["breakdown"], worst_stage=mem_stage, microbatches=st.microbatches)
