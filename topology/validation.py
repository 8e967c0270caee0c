"""The cost model against published training runs (torch-free).

``topology/data/published_runs.json`` holds large published runs - model shape,
GPUs, layout, batch, recompute, the framework that ran them and the throughput
the source reports, with the source of every row.  Each row is in the fit set or
held out, by a rule fixed in the file before anything was fitted.  ``predict``
costs a row's layout with ``costmodel.estimate`` on the row's system and
framework; ``summary`` gives the mean and max |step-time error| of each split; ``plan_record``
gives one device's rows' errors as ``alphaexa plan`` shows them under its table.

    python -m topology.validation            # every row, then the summary
    python -m topology.validation --markdown # the table docs/planner.md shows
    python -m topology.validation --breakdown  # each row's step by term; the error by category
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from . import costmodel as cm
from .hardware import System, system_from_dict
from .layout import Layout
from .modelcfg import ConfigError, ModelConfig, norm_params, param_counts

DATA = Path(__file__).with_name("data") / "published_runs.json"
SPLITS = ("fit", "heldout")

# Byte counts per kernel of each framework's step (what it reads + writes per element; see
# costmodel's alphaexa counts for the notation).  Counted from the frameworks' documented
# kernels, not fitted.
FUSED_NORM = {"norm_bytes": 4.0, "norm_kernels": 1}  # bf16 in, bf16 out, one kernel
# Megatron-Core's MoE layer forward is host-bound below about 5.1 ms: its router, dispatcher, permutation
# and grouped MLP synchronise with the host (AMD Primus "Sync-Free MoE" RFC lists them,
# github.com/AMD-AGI/Primus/issues/203), so the device cannot run ahead of the host's launches.  The figure
# is a measurement taken from a pair of published rows, not fitted to the others: the ModelZoo's EP 32
# overlapped Qwen3-235B layout, run once without (c1ad0b5's table, 17.6 s) and once with CUDA graphs of
# the router and the MoE preprocessing (run_h100_235b.sh at bff1229, 320 TFLOP/s = 15.16 s).  The model
# gives 0.29 s of the 2.44 s difference to the later run's TP overlap; the other 2.15 s is host time the
# graphs removed: the floor that makes the ungraphed row's forward that much longer, its GPU forward being
# 3.60 ms a MoE layer, is 5.11 ms, and the graphs took at least 1.61 ms off it (the graphed row's GPU
# forward, 3.50 ms, is then the longer; that row is +3.7% as GPU-bound).  Both rows are "looked at" for
# it.  tests/test_planner_validation.py re-derives both figures from the two rows.  Session 7 re-derived them
# (the same two rows, the same rule) after the fused MoE permutation's byte count (costmodel.FUSED_PERMUTE_*)
# shortened both rows' GPU forward: 5.00 ms, and at least 1.61 ms off it (the graphed row's GPU forward 3.395 ms).
# Session 10 (branch moe12) re-derived them again after the graphed row took Transformer Engine's replay copies
# (costmodel.Implementation.graph_copies, which lengthen its GPU forward and backward): 5.05 ms, and at least 1.64 ms
# off it (the graphed row's GPU forward 3.411 ms).
MEGATRON_MOE_HOST_S = 5.05e-3
MOE_GRAPHS_HOST_SAVING_S = 1.64e-3  # what CUDA-graphing the router and MoE preprocessing takes off it
# DeepSpeed's engine with its BF16_Optimizer (costmodel.Implementation's hp_grad_* and dp_reduce_after_backward,
# read in deepspeed/runtime/{engine,bf16_optimizer,pipe/engine}.py): fp32 gradient accumulation after every
# micro-batch, the gradient all-reduce after the backward in the bf16 communication type (DeepSpeed's default
# for bf16: 2022's ``communication_data_type`` and master's alike; BigScience needed PyTorch 1.11's NCCL 'for
# BF16 comms'), and Megatron's fp32 vocab-parallel cross-entropy (``cross_entropy(output.float(), labels)``,
# megatron/core/tensor_parallel/cross_entropy.py): forward, the upcast (2 read, 4 written), max (4), subtract
# (4 + 4), in-place exp (4 + 4), sum (4), in-place divide (4 + 4): 38 bytes a logit; backward, the in-place
# multiply by the loss gradient (4 + 4) and the upcast's backward to bf16 (4 + 2): 14.  Counted, not fitted.
# The optimizer's step (session 7, read in deepspeed/runtime/bf16_optimizer.py ``step`` at 56c52238 and at master
# edaa7221, and engine.py ``allreduce_bucket``): the global norm reads every fp32 gradient of the rank (4) and,
# with ``gradient_clipping`` > 0, ``clip_tensors_by_global_norm`` scales them in place (4 + 4), all of them, not
# the rank's shard; the all-reduce averages its bf16 buffer in place after the call (``mul_(1 / dp)``: 2 + 2):
# 16 bytes a parameter of the rank beyond the casts and the zeroing (16), so 32.  The AdamW step then runs on the
# rank's fp32 shard only (28 bytes, as the trainer's), and ``update_lp_params`` writes the shard's bf16 copy
# (4 read + 2 written) before the all-gather: 34 bytes a local parameter.
MEGATRON_VOCAB_CE = {"logit_bytes": 38.0, "logit_bwd_bytes": 14.0}
DEEPSPEED_BF16 = {"hp_grad_accum_bytes": 18.0, "hp_grad_step_bytes": 32.0, "dp_reduce_after_backward": True,
                  **MEGATRON_VOCAB_CE, "optimizer_bytes": 34.0}
# The scaling runs only when the global norm exceeds ``gradient_clipping`` (``clip_tensors_by_global_norm``:
# ``clip_coef = max_norm / (norm + eps)``, then ``if clip_coef < 1`` the in-place ``mul_``; runtime/utils.py at
# 56c52238, v0.17.5 and master alike).  BLOOM's rows print their norm: 'grad norm: 0.174' at iteration 12695
# (chronicles.md) and 0.128-0.154 at the reshape rows' iterations (reshaping-log.md), under the slurm script's
# gradient_clipping 1.0, so they pay the norm's read and the averaging (24), not the scaling (review7).  The ALCF
# rows print no norm (runs from initialisation, where it is often above 1): they keep the scaling, an upper bound.
DEEPSPEED_BF16_UNCLIPPED = {**DEEPSPEED_BF16, "hp_grad_step_bytes": 24.0}
# argonne-lcf/Megatron-DeepSpeed's attention block (megatron/model/transformer.py at 3848f6fb,
# ``ParallelAttention.forward``): one fused QKV projection whose output is viewed as [s, b, nkv, g + 2, hn];
# ``split_tensor`` reshapes the query out of it (a copy: 2 read + 2 written a query element), ``repeat_kv``
# materialises K and V at the query's heads (``Implementation.gqa_repeat_kv``), and the rotary embedding
# (megatron/model/rotary_pos_embedding.py ``apply_rotary_pos_emb``: cos and sin cast to the input's dtype, so
# bf16) runs on the query and the repeated key: ``t * cos`` (2 + 2), ``_rotate_half``'s negation of one half
# (1 + 1) and ``cat`` (2 + 2), ``* sin`` (2 + 2), the sum (4 + 2): 20 bytes an element, 5 kernels.  With MBS 1 the
# ``s b -> b s`` rearranges before the kernel are views (``contiguous`` of a size-1 dimension copies nothing);
# the output's ``b h s d -> s b (h d)`` rearrange is a copy (4).  So 8 bytes a query element of copies in
# and out (attn_out_bytes), against the default 4 for the output copy alone.
ALCF_ATTENTION = {"rope_bytes": 20.0, "rope_kernels": 5, "attn_out_bytes": 8.0, "gqa_repeat_kv": True}
# DeepSpeed's PipelineEngine (costmodel.Implementation.deepspeed_pipe): blocking, unbatched sends and receives (four
# transfers a micro-batch on a middle stage's path, each after its PartitionedTensor metadata with TP > 1) and three
# TP all-gathers a micro-batch rebuilding the partitioned activation and gradient.  Both Megatron-DeepSpeed stacks
# below run it wherever PP > 1 (BLOOM's GPTModelPipe, the ALCF 70B rows' 'DeepSpeed pipeline engine').  Read in
# deepspeed/runtime/pipe/{engine,p2p,schedule}.py at 56c52238 and master 38327e07; counted, not fitted.
DEEPSPEED_PIPE = {"deepspeed_pipe": True}
# IPEX 2.5.10-2.7.10 on XPU: ``torch.nn.functional.scaled_dot_product_attention`` with a gradient, bf16, head dim
# <= 512, 4-D q/k/v of equal heads (DeepSpeed's XPU flash-attention builder's ``flash_attn_func_v2``, after ALCF's
# repeat_kv) selects IPEX's ``efficient_attention`` backend (csrc/gpu/aten/operators/transformers/attention.cpp
# ``_fused_sdp_choice`` -> sdp_utils.h ``use_mem_efficient_attention``; the math fallback only where XeTLA is
# unsupported), and its backward (attention_backward.cpp ``_efficient_attention_backward_impl``) launches XeTLA's
# fmha backward with one work-group per (batch, head) pair (fmha_backward.cpp ``get_nd_range(num_batches *
# num_heads)``, read at v2.5.10+xpu; unchanged at v2.7.10+xpu; rewritten with a (batch x heads, keys / 128) grid in
# eeddffd8, 2025-05-28, first released in v2.8.10+xpu).  costmodel.Implementation.attn_bwd_head_grid.
IPEX_HEAD_GRID_BWD = {"attn_bwd_head_grid": True}
# BigScience's ALiBi (``--position-embedding-type alibi``) enters the unfused attention as the C operand of
# ``torch.baddbmm(alibi, q, k^T, beta=1)`` (megatron/model/transformer.py at 640c8180): PyTorch copies the expanded
# bias into the scores (2 bytes written a score) and the batched GEMM reads it back (2): 4 bytes a score, forward only
# (row option ``alibi``).
ALIBI_BADDBMM_BYTES = 4.0
# Megatron-LM's --attention-dropout and --hidden-dropout default to 0.1 (megatron/arguments.py of 2021-2022, and
# megatron/training/arguments.py at f2e5db402c; BigScience's fork alike); the Megatron-LM 2021/2022 and
# Megatron-DeepSpeed rows keep it unless their source sets 0 (row option ``dropout``: 0; docs/planner.md section 10,
# "Session 8: dropout"), so their unfused attention pays dropout on its probabilities (score_dropout).
MEGATRON_DEFAULT_DROPOUT = {"score_dropout": True}
# PyTorch Lightning's ``precision: bf16`` (1.8.6, the flash-attention training code's pin, training/Dockerfile at
# b8020d73): native AMP, ``torch.autocast`` around the training step, the module's parameters left in fp32
# (Lightning-AI/lightning#12591: "using AMP, the model remains in FP32 ... the same with BF16").  flash-attention's
# own layers cast their weights themselves, once a call: ``FusedDenseFunc.forward`` and ``FusedMLPFunc.forward``
# (flash_attn/ops/fused_dense.py at b8020d73) run ``weight.to(dtype=torch.get_autocast_gpu_dtype())`` when autocast is
# on, save the bf16 copy for the backward and return a bf16 weight gradient, which autograd casts to the fp32
# parameter's dtype (the engine's ``validate_outputs``), and AccumulateGrad adds it into the fp32 ``.grad`` (gradient
# accumulation: trainer.accumulate_grad_batches, under DDP's no_sync until the last micro-batch); the tied LM head is
# an ``nn.Linear`` whose weight autocast casts the same way.  Per parameter, a micro-batch: forward 4 read + 2 written;
# backward the cast 2 + 4 and the accumulation 4 + 4 + 4.  The first micro-batch's AccumulateGrad takes the tensor
# without a copy (the gradients are set to None each step) and the last one's DDP copies it into its bucket (4 + 4):
# 24 - 4/m bytes a micro-batch on average over m, within 4% of 24 at 4-16 micro-batches.  The tied embedding's own dense fp32 gradient (a zero
# fill and the sum with the head's, about 16 bytes per vocabulary parameter) is not counted.  Counted, not fitted.
LIGHTNING_AUTOCAST = {"autocast_fwd_bytes": 6.0, "autocast_bwd_bytes": 18.0}
# gpt-neox's rotary (megatron/model/positional_embeddings.py at c560814b): ``apply_rotary_pos_emb`` (TorchScript, fp16:
# the ``inv_freq`` buffer goes to half with the model, so cos and sin are fp16) on the rotated part of q and of k:
# ``q * cos`` (2 + 2), ``rotate_half``'s negation of one half (1 + 1) and ``cat`` (2 + 2), ``* sin`` (2 + 2), the sum
# (4 + 2): 20 bytes a rotated element in 5 kernels, counted eager (the legacy fuser that ``activations.py`` turns on
# may fuse the products and the sum: 10 bytes in 2 kernels; not established).  With ``rotary_pct`` < 1 (row option;
# 20B.yml: 0.25) only that share of the head dim is rotated, and ``ParallelSelfAttention.forward`` puts q and k back
# together with ``torch.cat((query_layer, query_pass), dim=-1)``: 2 + 2 bytes an element of the whole head, 1 kernel.
# Per element of q and k: pct x 20 (+ 4 for the cat), 5 (+ 1) kernels.  The model's default (48, 9) is the trainer's
# fp32 rotary over the whole head.
GPTNEOX_ROPE_ROTATED_BYTES, GPTNEOX_ROPE_ROTATED_KERNELS = 20.0, 5
GPTNEOX_ROPE_CAT_BYTES = 4.0
GPTNEOX_ROPE_BYTES, GPTNEOX_ROPE_KERNELS = GPTNEOX_ROPE_ROTATED_BYTES, GPTNEOX_ROPE_ROTATED_KERNELS  # rotary_pct 1
# DeepSpeed's fp16 ZeRO stage 1 of 2021 (DeeperSpeed eb7f5cff, deepspeed/runtime/zero/stage1.py
# ``FP16_DeepSpeedZeroOptimizer_Stage1``, which engine.py builds for stage 1; the pipeline engine's ``ReduceGrads``
# calls ``allreduce_gradients`` -> ``reduce_scatter_gradients`` at the boundary).  Per micro-batch: autograd adds each
# fp16 gradient into ``param.grad`` (6 bytes a parameter of the rank; no fp32 accumulation).  Once a step, per
# parameter of the rank: the flatten of every rank's sub-partitions into the reduce-scatter's buffers (2 + 2), the
# overflow check (``CheckOverflow._has_inf_or_nan``: ``float(x.float().sum())``, 2 read, 4 written, 4 read) and the
# norm (``get_grad_norm``: ``p.grad.data.float().norm()``, the same 10): 24 bytes, plus a host synchronisation a
# parameter tensor for each of the last two (``float(...)``, ``.item()``; about 300 a step, not counted).  Per
# parameter of the rank's shard: the flat fp32 gradient (2 read, 4 written), ``unscale_and_clip_grads``'s ``mul_``
# (4 + 4), apex's FusedAdam (gpt-neox ``get_optimizer`` for ``type: Adam``: 28), the fp16 copy of the fp32 shard
# (4 + 2) and the reduce-scatter output's ``mul_(1 / dp)`` (2 + 2): 52 bytes.  The reduction is a reduce-scatter
# (``reduce_scatter: true`` in 20B.yml), fp16, after the backward; the step's all-gather follows.
GPTNEOX_FP16_ZERO1 = {"grad_accum_bytes": 6.0, "hp_grad_step_bytes": 24.0, "optimizer_bytes": 52.0,
                      "dp_reduce_after_backward": True, "dp_reduce_scatter": True}
# The legacy Megatron embedding's gradient (docs/planner.md section 10, "Session 9: the legacy embedding's dense
# gradient"): ``VocabParallelEmbedding`` runs ``F.embedding`` (megatron/mpu/layers.py at aed2f75e, 2021-04, and at
# 35a3fa8b, 2022-05; BigScience's and gpt-neox's copies alike) or ``self.weight[masked_input]`` (the Zero Bubble
# fork, megatron/core/tensor_parallel/layers.py at f68d3879), and the learned positions ``torch.nn.Embedding``: a dense
# zero-filled gradient of the rank's whole table a micro-batch.  Megatron-LM adds it into the gradient buffer or
# ``.grad`` (the local DDP's ``param_hook``: ``param.main_grad.add_(param.grad.data)`` at 35a3fa8b and f68d3879; at
# aed2f75e, whose contiguous buffers are off for fp16, and under torch DDP, autograd's accumulation into the fp16
# ``.grad``: the same bytes); DeepSpeed's and gpt-neox's per-parameter accumulation already counts the add
# (costmodel.EMBED_GRAD_FILL_BYTES).
LEGACY_EMBED_DENSE_GRAD = {"embed_dense_grad": True}
# Legacy Megatron's QKV projection adds its bias after the GEMM (costmodel.Implementation.qkv_bias_bytes: 2 + 2 bytes an
# output element forward, the bias gradient's reduction 2 backward): megatron/mpu/layers.py at aed2f75e (``F.linear``
# with the bias on the 3-D activation) and 35a3fa8b (``output = output + bias``), the Zero Bubble fork's
# megatron/core/tensor_parallel/layers.py at f68d3879 (the same), BigScience's and gpt-neox's ``F.linear`` copies
# (session 9, branch megfwd11).
LEGACY_QKV_BIAS = {"qkv_bias_bytes": (4.0, 2.0)}
# Megatron-LM of April 2021 (aed2f75e, the Narayanan rows' code) has no gradient-accumulation fusion (no
# ``gradient_accumulation_fusion`` anywhere in megatron/), and its local DDP's contiguous buffers are off unless
# ``--use-contiguous-buffers-in-ddp`` or bf16 (arguments.py); the paper's runs are fp16 (examples/sc21/CONFIG.sh,
# added de7dc40f88, 2021-08: ``--fp16``) with ``--DDP-impl`` torch or local (run_table_1.sh).  Either way autograd
# accumulates every weight gradient into the fp16 ``param.grad`` in place (2 + 2 read, 2 written a parameter) in each
# micro-batch after the first (``optimizer.zero_grad(set_to_none=True)``); the fp16 optimizer copies it to fp32 once a
# step.  Counted, not fitted (session 9, branch megfwd11).
MEGATRON_2021_FP16_GRAD_ACCUM = {"grad_accum_bytes": 6.0, "grad_accum_first_free": True}
# Megatron-LM's local DDP of 2021 without contiguous buffers (``--DDP-impl local``, the default, with
# ``--use-contiguous-buffers-in-ddp`` off, its default; examples/sc21/run_table_1.sh at de7dc40f88 runs it for every
# Table 1 model with a pipeline): ``train_step`` (megatron/training.py at de7dc40f88, and aed2f75e) calls each model
# chunk's ``allreduce_gradients`` after ``forward_backward_func`` returns, so the reduction follows the whole backward,
# not overlapped with it (Implementation.dp_reduce_after_backward); it packs the gradients by dtype,
# ``_flatten_dense_tensors`` (2 read, 2 written a parameter), ``coalesced /= dp`` (2 + 2), one all-reduce, and
# ``buf.copy_(synced)`` back into each ``.grad`` (2 + 2): 12 bytes a parameter of the rank once a step
# (megatron/model/distributed.py ``LocalDDP.allreduce_gradients``).  ``--DDP-impl torch`` (the script's choice for the
# pipeline-free models) overlaps its bucketed all-reduce with the last micro-batch's backward (``model.no_sync`` on the
# others, megatron/schedules.py ``forward_backward_no_pipelining``): the implementation's default.  Row flag
# "+local-ddp" (session 9, branch sc21data11).
MEGATRON_2021_LOCAL_DDP = {"dp_reduce_after_backward": True, "hp_grad_step_bytes": 12.0}
IMPLEMENTATIONS: dict[str, cm.Implementation] = {
    "megatron-2022": cm.Implementation(
        name="megatron-2022", **FUSED_NORM, residual_bytes=7.0,  # fused bias-dropout-add: 2+2 in, 2 out, mask 1
        attention="unfused", **MEGATRON_DEFAULT_DROPOUT, **LEGACY_EMBED_DENSE_GRAD, **LEGACY_QKV_BIAS),
    # Megatron-LM of 2021 (Narayanan et al.): the same kernels, before sequence parallelism
    "megatron-2021": cm.Implementation(
        name="megatron-2021", **FUSED_NORM, residual_bytes=7.0, attention="unfused", sequence_parallel=False,
        **MEGATRON_DEFAULT_DROPOUT, **LEGACY_EMBED_DENSE_GRAD, **MEGATRON_2021_FP16_GRAD_ACCUM,
        **LEGACY_QKV_BIAS),
    # FSDP2 and the eager Llama of 2024: the kernels alphaexa's eager trainer runs (the default counts);
    # torchtitan's default training.mixed_precision_reduce is float32: gradients reduce-scattered in fp32
    # SDPA's flash backend (FlashAttention-2 inside PyTorch) on A100: its sequence curve (s_half 488)
    "torchtitan-2024": cm.Implementation(name="torchtitan-2024", grad_reduce_bytes=4.0, attention_kernel="flash2"),
    # low-precision LayerNorm; triton FlashAttention and the cuBLAS of 2023: kernel scales fitted to the
    # fit rows (bench/fit_published_runs.py).  Composer's unfused DecoupledAdamW (80 bytes an element) and
    # FSDP's clip_grad_norm_ (12: the norm reads each gradient, then every gradient is scaled in place)
    # (attn_impl triton: FlashAttention's Triton kernel, flash_attn_triton.py, on A100 and on H100 alike)
    "llm-foundry": cm.Implementation(name="llm-foundry", **FUSED_NORM, gemm_scale=0.975, attention_scale=0.5,
                                     optimizer_bytes=cm.COMPOSER_DECOUPLED_ADAMW_BYTES + 12,
                                     attention_kernel="flash-triton", param_biases=True),  # MPT's no_bias false
    "megatron-core": cm.Implementation(
        name="megatron-core", **FUSED_NORM, rope_bytes=4.0, rope_kernels=1, attn_out_bytes=0.0,
        act_scale=0.6, logit_bytes=4.0, moe_routing_kernels=12, moe_host_sync=False,
        param_gather_overlap=True, ep_dedup=True,  # TE fused rotary, SwiGLU (6 of 10 bytes), cross-entropy; fused router/permute
        dp_bucket_params=cm.MEGATRON_CORE_DDP_BUCKETS,  # max(40M, 1M x dp) parameters a gradient bucket (session 10)
        moe_host_floor_s=MEGATRON_MOE_HOST_S, attention_kernel="cudnn",  # TE's fused attention is cuDNN's
        embed_dense_grad=True,  # VocabParallelEmbedding's F.embedding: a dense gradient added to main_grad (session 9)
        pp_overlap_p2p=True),  # overlap_p2p_comm, Megatron-LM's default with a virtual pipeline (session 11, strong16)
    # argonne-lcf/Megatron-DeepSpeed on Intel Max 1550 (ALCF/helpers.sh): no Megatron fused kernel on XPU (eager
    # SwiGLU, rotary, residual adds), IPEX's fused RMSNorm, flash attention from DeepSpeed's XPU builder, and no
    # Megatron sequence parallelism.  Read from the launch scripts, not fitted.
    # The group's rows ran ALCF's frameworks/2025.0.5 stack (torch 2.5.1, IPEX 2.5.10: docs/planner.md section 10,
    # aurora11), whose SDPA backward on XPU is XeTLA's head-grid kernel (IPEX_HEAD_GRID_BWD); the cooldown run below
    # ran IPEX 2.8.10, whose rewritten backward is not (session 10, branch aurorastack12).
    "megatron-deepspeed-xpu": cm.Implementation(
        name="megatron-deepspeed-xpu", **FUSED_NORM, sequence_parallel=False, **DEEPSPEED_BF16, **ALCF_ATTENTION,
        **DEEPSPEED_PIPE, **IPEX_HEAD_GRID_BWD),
    # The same code under DeepSpeed's ZeRO stage 1 optimizer instead of the BF16_Optimizer (ALCF's AuroraGPT-2B
    # cooldown run, session 9 branch auroracal11: '-ds-stage1-' in its checkpoint path, no overlap_comm): without
    # ``overlap_comm`` stage 1 registers no gradient hooks (deepspeed/runtime/zero/stage_1_and_2.py: ``if
    # self.partition_gradients or self.overlap_comm: self.create_reduce_and_remove_grad_hooks()``), so there is no
    # fp32 accumulation after each micro-batch; autograd adds the bf16 ``.grad`` in place from the second
    # micro-batch on (2 + 2 read, 2 written: MEGATRON_2021_FP16_GRAD_ACCUM's count), and the reduction still runs
    # after the backward (``allreduce_gradients`` at the boundary).  The step's passes are left as the
    # BF16_Optimizer's (not read for stage 1: an approximation of a term of a few milliseconds here).
    "megatron-deepspeed-xpu-zero1": cm.Implementation(
        name="megatron-deepspeed-xpu-zero1", **FUSED_NORM, sequence_parallel=False,
        **{**DEEPSPEED_BF16, "hp_grad_accum_bytes": 0.0}, **MEGATRON_2021_FP16_GRAD_ACCUM, **ALCF_ATTENTION,
        **DEEPSPEED_PIPE),
    # BigScience's Megatron-DeepSpeed of 2022 (BLOOM-176B): Megatron-LM's 2021 kernels (fused LayerNorm,
    # bias-GeLU, bias-dropout-add, scale-mask-softmax; no sequence parallelism) under DeepSpeed's pipeline
    # engine with its BF16_Optimizer (ZeRO stage 0: 'it implements its own zero stage 1 equivalent')
    "megatron-deepspeed-2022": cm.Implementation(
        name="megatron-deepspeed-2022", **FUSED_NORM, residual_bytes=7.0, attention="unfused",
        sequence_parallel=False, **DEEPSPEED_BF16_UNCLIPPED, **DEEPSPEED_PIPE, **MEGATRON_DEFAULT_DROPOUT,
        **LEGACY_EMBED_DENSE_GRAD, **LEGACY_QKV_BIAS),
    # FlashAttention's own GPT training code (Dao-AILab/flash-attention training/, the FlashAttention-2 paper's
    # end-to-end rows; session 8, group unseen13): FlashAttention-2's kernel, fused dropout + residual + LayerNorm,
    # fused dense + bias + GeLU, Apex's fused cross-entropy.  Existing figures only: megatron-2022's fused norm and
    # dropout-add, the default activation count (as megatron-2022's fused bias-GeLU), megatron-core's fused loss
    # (logit_bytes 4), the flash2 curve of torchtitan-2024.  Its fp32 gradient all-reduce is the row's +fp32-reduce.
    # Lightning's ``precision: bf16`` is autocast over the fp32 parameters (LIGHTNING_AUTOCAST): the weights are cast
    # to bf16 in every micro-batch's forward and their gradients cast back and accumulated in fp32 in its backward.
    "flash-attn-gpt": cm.Implementation(
        name="flash-attn-gpt", **FUSED_NORM, residual_bytes=7.0, logit_bytes=4.0, attention_kernel="flash2",
        **LIGHTNING_AUTOCAST),
    # EleutherAI's gpt-neox of the GPT-NeoX-20B run (c560814b, the 20B release, on DeeperSpeed eb7f5cff, DeepSpeed
    # 0.3.15): Megatron's 2021 kernels where 20B.yml turns them on (TorchScript bias-GeLU, the fused upper-triangular
    # scale-mask-softmax; torch.nn.LayerNorm), unfused attention, no sequence parallelism, Megatron's fp32
    # vocab-parallel loss (``cross_entropy``: ``output.float()``), its fp16 rotary (GPTNEOX_ROPE) and DeepSpeed's
    # fp16 ZeRO stage 1 (GPTNEOX_FP16_ZERO1) under DeepSpeed's pipeline engine.  gpt-neox's dropout defaults are 0.1
    # (neox_args.py), so its unfused attention pays score dropout unless the row says 0.
    "gpt-neox-2022": cm.Implementation(
        name="gpt-neox-2022", **FUSED_NORM, residual_bytes=7.0, attention="unfused", sequence_parallel=False,
        rope_bytes=GPTNEOX_ROPE_BYTES, rope_kernels=GPTNEOX_ROPE_KERNELS, **MEGATRON_VOCAB_CE, **GPTNEOX_FP16_ZERO1,
        **DEEPSPEED_PIPE, **MEGATRON_DEFAULT_DROPOUT, **LEGACY_EMBED_DENSE_GRAD, **LEGACY_QKV_BIAS),
    "automodel-te": cm.Implementation(
        name="automodel-te", **FUSED_NORM, rope_bytes=4.0, rope_kernels=1, attn_out_bytes=0.0,
        logit_bytes=6.0, moe_routing_kernels=20, ep_dedup=True,  # TE linear/norm/attention, fused rotary, bf16 loss
        # its DeepEP dispatcher is Megatron's, built with moe_permute_fusion=True (components/moe/layers.py at
        # 89e3a9fdd / 8d9bfb90e, the commits that printed its rows): TE's fused permutation
        moe_permute_fused=True),
}
# "+no-dp-overlap": Megatron-Core's DDP and distributed optimizer run without --overlap-grad-reduce and
# --overlap-param-gather (both off by default).  distributed_data_parallel.py at core_v0.6.0 then sets no buckets
# ("Set bucket_size to infinity if overlap_grad_reduce is False") and ``finish_grad_sync`` issues the whole
# reduce-scatter synchronously after the last micro-batch's backward; the optimizer's parameter all-gather runs in
# the step, before the next forward, not under it.  Counted as the after-backward reduction of the engine rule
# (Implementation.dp_reduce_after_backward with a reduce-scatter, no extra passes) and no overlapped gather
# (session 10, branch scale12; FlagPerf's Megatron cases pass neither flag).
MEGATRON_CORE_NO_DP_OVERLAP = {"dp_reduce_after_backward": True, "dp_reduce_scatter": True,
                               "param_gather_overlap": False}
# Megatron's plain all-to-all dispatcher: a token goes once to each of its routed experts (no DeepEP dedup)
IMPLEMENTATIONS["megatron-core-a2a"] = replace(IMPLEMENTATIONS["megatron-core"], name="megatron-core-a2a",
                                               ep_dedup=False, moe_dispatch_tp_gather=True)
# "+vocab-ce": the loss as Megatron-Core's unfused vocab-parallel cross-entropy (MEGATRON_VOCAB_CE, the same
# passes as the Megatron-DeepSpeed forks': cross_entropy.py at f2e5db402c upcasts the logits with .float() in
# calculate_logits_max, then max, subtract, in-place exp, sum, in-place divide; backward the in-place multiply
# and the upcast's backward).  Megatron-Core r0.8 runs it unless --cross-entropy-loss-fusion is given (off by
# default, arguments.py at f2e5db402c); Transformer Engine's fused loss, which the megatron-core entry counts
# (logit_bytes 4), is an option of later releases.
# "+ffn-bias": Megatron-Core with its default linear biases (no --disable-bias-linear): the fused bias-SwiGLU /
# bias-GeLU's bias gradient, the bf16 input gradient summed by autograd (costmodel.Implementation.ffn_bias_grad_bytes;
# megatron/core/fusions/fused_bias_swiglu.py and fused_bias_gelu.py at core_v0.6.0).  The QKV bias sits in Transformer
# Engine's GEMM epilogue and the two row-parallel biases in the bias-dropout-add (a reduction of 1/tp of the tokens at
# d_model wide): not counted.  "+loader-mask": Megatron-LM's data loader's attention mask copied and TP-broadcast a
# micro-batch (costmodel.Implementation.loader_attn_mask; session 10, branch flagperf12).
MEGATRON_CORE_FFN_BIAS_GRAD_BYTES = 2.0
EP_OVERLAP_SUFFIX = "+ep-overlap"
# A row's implementation may name what its source overlaps: "+ep-overlap" (the expert all-to-all behind
# another micro-batch), "+tp-overlap" (Megatron --tp-comm-overlap: TP collectives pipelined with the GEMMs);
# and what it runs: "+moe-graphs" (router and MoE preprocessing as Transformer Engine CUDA graphs: the host saving and
# the replays' static-buffer copies), "+attn-graph" (the attention inside the same graph: its input and a zero mask
# copied each replay; session 10, branch moe12), "+fp32-reduce" (gradients
# reduced in fp32), "+expert-loop" (moe_grouped_gemm false: Megatron-Core's SequentialMLP, session 6 second round),
# "+permute-fusion" (Megatron --moe-permute-fusion, or HybridEP's permute inside its dispatch: TE's fused MoE
# permutation, costmodel.FUSED_PERMUTE_*_BYTES; session 7), "+probs-a2a" (the all-to-all dispatcher's all-to-all of the
# routing probabilities, forward and backward: Megatron-LM from 2659630721, April 2025) and "+count-gather" (its
# all-gather of the token counts per expert before a dropless dispatch; session 8: costmodel.Implementation.a2a_probs,
# a2a_count_gather), "+local-ddp" (Megatron-LM 2021's local DDP: MEGATRON_2021_LOCAL_DDP; session 9, sc21data11), "+no-dp-overlap" (Megatron-Core without its DP overlap flags: MEGATRON_CORE_NO_DP_OVERLAP; session 10, scale12), "+grad-buffer" (Megatron-Core's DDP passes over the whole gradient buffer a step under Megatron-LM's
# defaults: costmodel.MEGATRON_DDP_GRAD_BUFFER_PASSES; session 9, mlmstep11) and "+step-sync" (an optimizer that reads a device step counter with .item() once a parameter
# tensor: Composer 0.16, llm-foundry v0.3.0's October 2023 rows; session 8, costmodel.COMPOSER_STEP_SYNC_HOST_S)
OVERLAP_FLAGS = {"ep-overlap": "ep_overlap", "tp-overlap": "tp_overlap"}


@dataclass(frozen=True)
class Run:
    id: str
    source: str
    model: str
    system: str
    gpus: int
    tp: int
    pp: int
    vpp: int
    ep: int
    sharding: str
    mbs: int
    global_batch: int
    seq_len: int
    recompute: str
    implementation: str
    measured_kind: str
    measured: float
    split: str
    note: str
    # the layout fields the source does not state (the data file's 'assumed' column, described under
    # 'columns_assumed'; session 11, branch audit16): empty when the row is fully stated
    assumed: tuple[str, ...] = ()

    @property
    def measured_step_s(self) -> float:
        tokens = self.global_batch * self.seq_len
        if self.measured_kind == "step_time_s":
            return self.measured
        if self.measured_kind == "tokens_per_s":
            return tokens / self.measured
        if self.measured_kind == "tokens_per_s_per_gpu":
            return tokens / (self.measured * self.gpus)
        if self.measured_kind in ("megatron2025_tflops_per_gpu", "megatron2024_tflops_per_gpu"):
            causal_half = self.measured_kind == "megatron2025_tflops_per_gpu"
            return megatron2025_flops_per_token(model_of(self), self.seq_len, causal_half) * tokens / (
                self.measured * 1e12 * self.gpus)
        if self.measured_kind == "megatron2021_tflops_per_gpu":  # Narayanan et al. 2021, Eq. 3
            m = _data(str(DATA))["models"][self.model]
            l, h, v = m["n_layers"], m["d_model"], m["vocab_size"]
            flops = 96 * self.global_batch * self.seq_len * l * h * h * (
                1 + self.seq_len / (6 * h) + v / (16 * l * h))
            return flops / (self.measured * 1e12 * self.gpus)
        if self.measured_kind == "samples_per_s_per_gpu":  # sequences a second per GPU
            return self.global_batch / (self.measured * self.gpus)
        if self.measured_kind == "flashattn2_tflops_per_gpu":  # Dao 2023 (FlashAttention-2), section 4.3
            model = model_of(self)
            per_token = 6 * param_counts(model).total + 12 * model.n_layers * model.d_model * self.seq_len
            return per_token * tokens / (self.measured * 1e12 * self.gpus)
        if self.measured_kind == "gptneox2021_flops_per_gpu":  # gpt-neox's own logged count (get_flops, 2021-2023)
            m = model_of(self)
            l, h = m.n_layers, m.d_model
            per_token = 6 * gptneox_logged_params(m, self.tp) + 60 * self.seq_len * h * l
            return per_token * tokens / (self.measured * 1e12 * self.gpus)
        raise ConfigError(f"run {self.id}: unknown measured_kind {self.measured_kind!r}")

    def layout(self) -> Layout:
        cp = row_options(self).get("cp", 1)
        dp = self.gpus // (self.tp * self.pp * cp)
        schedule = "interleaved1f1b" if self.vpp > 1 else "1f1b"
        sharded = self.sharding != "none"
        return Layout(tp=self.tp, pp=self.pp, vpp=self.vpp, dp_replicate=1 if sharded else dp,
                      dp_shard=dp if sharded else 1, ep=self.ep, cp=cp, mbs=self.mbs, schedule=schedule,
                      recompute=self.recompute, sharding=self.sharding)


@cache
def _data(path: str) -> dict:
    return json.loads(Path(path).read_text())


def load_runs(path: Path = DATA) -> list[Run]:
    data = _data(str(path))
    cols = data["columns"]
    runs = [Run(**{**dict(zip(cols, row, strict=True)), "assumed": tuple(row[cols.index("assumed")])})
            for row in data["runs"]]
    known = set(data["columns_assumed"]["names"])
    for r in runs:
        if not set(r.assumed) <= known:
            raise ConfigError(f"run {r.id}: assumed fields {sorted(set(r.assumed) - known)} are not described "
                              "under 'columns_assumed'")
        if r.split not in SPLITS:
            raise ConfigError(f"run {r.id}: split must be fit or heldout, got {r.split!r}")
        if r.source not in data["sources"]:
            raise ConfigError(f"run {r.id}: source {r.source!r} is not described under 'sources'")
    unknown = set(data.get("unsteady_figures", {}).get("rows", {})) - {r.id for r in runs}
    if unknown:
        raise ConfigError(f"unsteady_figures names rows the file does not have: {sorted(unknown)}")
    return runs


def model_of(run: Run, path: Path = DATA) -> ModelConfig:
    return ModelConfig.from_dict({"name": run.model, **_data(str(path))["models"][run.model]})


def system_of(run: Run, path: Path = DATA) -> System:
    return system_from_dict(dict(_data(str(path))["systems"][run.system]), where=f"systems.{run.system}")


def row_options(run: Run, path: Path = DATA) -> dict:
    """The row's layout facts beyond the columns (the file's ``row_options``: etp, cp, recompute_moe,
    recompute_norm_act, glu_clamp, embed_stage_unit, alibi, norm_tp_sync, dropout, rotary_pct, parallel_block,
    aux_loss_routing, no_balance_loss)."""
    return _data(str(path)).get("row_options", {}).get("rows", {}).get(run.id, {})


def expert_tp_of(run: Run, path: Path = DATA) -> int:
    """The source's expert tensor-parallel size where it folds expert parallelism over tp x dp (0: the
    trainer's rule, experts split tp ways)."""
    return row_options(run, path).get("etp", 0)


def gptneox_logged_params(model: ModelConfig, tp: int) -> int:
    """The parameter count gpt-neox logs and puts in its FLOP count (``model.total_params``, megatron/utils.py
    ``get_total_params`` at c560814b): each model-parallel rank's ``sum(p.nelement())`` at data-parallel rank 0,
    all-reduced, so what every TP rank holds whole (the LayerNorms, the row-parallel biases, the final norm) counts
    ``tp`` times.  gpt-neox's linear layers have biases (QKV, attention output, both MLP projections)."""
    h = model.d_model
    biases = model.n_layers * (model.q_dim + 2 * model.kv_dim + h + model.d_ff + h)
    replicated = model.n_layers * (2 * norm_params(model) + 2 * h) + norm_params(model)
    return param_counts(model).total + biases + (tp - 1) * replicated


def megatron2025_flops_per_token(model: ModelConfig, seq: int, causal_half: bool = True) -> float:
    """Megatron-LM's own FLOP count per token of a GQA transformer (fwd + bwd; training.py at 1e05700595):
    what its logged TFLOP/s divide by.  Causal attention counted half, no recomputation.  ``causal_half=False``:
    the 2024 count (training.py at 0b981f9c53 and c230e0d7c2), the same but with the full s/h attention term."""
    h, layers = model.d_model, model.n_layers
    n_moe = len(model.moe_layer_indices()) if model.is_moe else 0
    ffn = ((layers - n_moe) * model.d_ff + n_moe * model.top_k * model.moe_d_ff
           + n_moe * model.n_shared_experts * model.moe_d_ff) * (1.5 if model.ffn_type == "swiglu" else 1.0)
    attn = layers * h * h * (1 + model.kv_dim / model.q_dim + seq / h / (2 if causal_half else 1)) * (model.q_dim / h)
    return 12 * h * ffn + 12 * attn + 6 * h * model.vocab_size


def implementation_of(run: Run) -> cm.Implementation:
    name, *flags = run.implementation.split("+")
    impl = IMPLEMENTATIONS[name]
    known = sorted([*OVERLAP_FLAGS, "moe-graphs", "attn-graph", "fp32-reduce", "expert-loop", "permute-fusion", "vocab-ce",
                    "probs-a2a", "count-gather", "step-sync", "grad-buffer", "local-ddp", "no-dp-overlap",
                    "ffn-bias", "loader-mask"])
    unknown = [f for f in flags if f not in known]
    if unknown:
        raise ConfigError(f"run {run.id}: unknown implementation flag(s) {unknown}; known: {known}")
    impl = replace(impl, **{OVERLAP_FLAGS[f]: True for f in flags if f in OVERLAP_FLAGS}) if flags else impl
    if "ep-overlap" in flags and name.startswith("megatron-core"):
        # Megatron-Core's EP all-to-all overlap (--overlap-moe-expert-parallel-comm, the combined 1F1B schedule)
        # exists only without a pipeline or with a virtual one: TransformerConfig asserts "virtual_pipeline_model_
        # parallel_size must be specified when pipeline_model_parallel_size > 1" (d7bf5aaaa8, 2025-08-26), and
        # refuses full recomputation and EP 1; forward_backward_pipelining_without_interleaving has no combined
        # path (megatron/core/pipeline_parallel/schedules.py at d98e8a64dd).  Session 12, branch a2a17.
        if run.pp > 1 and run.vpp <= 1:
            raise ConfigError(f"run {run.id}: +ep-overlap with PP {run.pp} and no virtual pipeline: Megatron-Core "
                              "overlaps the expert all-to-all only at PP 1 or with an interleaved pipeline")
        if run.ep <= 1 or run.recompute == "full":
            raise ConfigError(f"run {run.id}: +ep-overlap needs EP > 1 and no full recomputation in Megatron-Core")
    if "fp32-reduce" in flags:  # the data-parallel gradient reduction in fp32 (FSDP reduce_dtype=float32)
        impl = replace(impl, grad_reduce_bytes=4.0)
    if "expert-loop" in flags:  # moe_grouped_gemm false: Megatron-Core's SequentialMLP, one MLP per local expert
        impl = replace(impl, expert_loop=True)
    if "vocab-ce" in flags:  # Megatron's unfused fp32 vocab-parallel cross-entropy, not TE's fused loss
        impl = replace(impl, **MEGATRON_VOCAB_CE)
    if "permute-fusion" in flags:  # the MoE permutation as Transformer Engine's fused kernels
        impl = replace(impl, moe_permute_fused=True)
    if "probs-a2a" in flags:  # Megatron's all-to-all dispatcher sends the routing probabilities in their own all-to-all
        impl = replace(impl, a2a_probs=True)
    if "count-gather" in flags:  # ... and, dropless, all-gathers the token counts per expert before the dispatch
        impl = replace(impl, a2a_count_gather=True)
    if "grad-buffer" in flags:  # Megatron-Core's DDP: zero, NaN-check norm and 1/dp scaling of the whole gradient buffer
        impl = replace(impl, grad_buffer_passes=cm.MEGATRON_DDP_GRAD_BUFFER_PASSES)
    if "local-ddp" in flags:  # Megatron-LM 2021's local DDP: the gradient all-reduce after the backward, not overlapped
        if name != "megatron-2021":
            raise ConfigError(f"run {run.id}: +local-ddp describes Megatron-LM 2021's local DDP (megatron-2021), "
                              f"not {name}")
        impl = replace(impl, **MEGATRON_2021_LOCAL_DDP)
    if "no-dp-overlap" in flags:  # Megatron-Core without --overlap-grad-reduce / --overlap-param-gather
        if not name.startswith("megatron-core"):
            raise ConfigError(f"run {run.id}: +no-dp-overlap describes Megatron-Core's DDP run without its overlap "
                              f"flags, not {name}")
        impl = replace(impl, **MEGATRON_CORE_NO_DP_OVERLAP)
    if "ffn-bias" in flags:  # linear biases on: the FFN bias's gradient reduced outside the GEMM (Megatron-Core)
        if not name.startswith("megatron-core"):
            raise ConfigError(f"run {run.id}: +ffn-bias describes Megatron-Core's fused bias-activation, not {name}")
        impl = replace(impl, ffn_bias_grad_bytes=MEGATRON_CORE_FFN_BIAS_GRAD_BYTES)
    if "loader-mask" in flags:  # Megatron-LM's data loader: the attention mask copied and broadcast a micro-batch
        impl = replace(impl, loader_attn_mask=True)
    if "step-sync" in flags:  # Composer 0.16's DecoupledAdamW: one .item() (host synchronisation) a parameter tensor
        impl = replace(impl, optimizer_tensor_host_s=cm.COMPOSER_STEP_SYNC_HOST_S)
    if "moe-graphs" in flags:  # the router and the MoE preprocessing run as CUDA graphs: less host time
        # ... replayed through Transformer Engine's graphed callables, which copy the input and the output gradients
        # into their static buffers every call (costmodel.Implementation.graph_copies; session 10, branch moe12)
        impl = replace(impl, moe_host_floor_s=max(0.0, impl.moe_host_floor_s - MOE_GRAPHS_HOST_SAVING_S),
                       graph_copies=True)
    if "attn-graph" in flags:  # the attention in the same graph: the layer's input and a zero mask copied each replay
        if "moe-graphs" not in flags:
            raise ConfigError(f"run {run.id}: +attn-graph is the attention inside the MoE layer's graph; it needs "
                              f"+moe-graphs")
        impl = replace(impl, graph_attn=True)
    return impl


# Megatron-Core's GPT-OSS activation (``weighted_bias_quick_geglu_impl`` with ``clamp_value``, Megatron-LM
# megatron/core/fusions/fused_bias_geglu.py, e.g. at 034fd2d3): the two halves of the first expert projection's
# output are clamped by two eager torch.clamp calls and put back together with torch.cat before the fused
# quick-GEGLU kernel.  Per expert hidden unit (bf16, the projection's output is 2 units wide): forward, each
# clamp reads and writes its half (2 + 2, twice) and the cat reads and writes both (4 + 4): 16 bytes in 3
# kernels; backward, autograd's clamp backward reads the gradient and the input and writes the gradient for
# each half (6, twice; the cat's backward is a view): 12 bytes in 2 kernels.  Counted, not fitted.
MEGATRON_GLU_CLAMP = {"glu_clamp_fwd_bytes": 16.0, "glu_clamp_bwd_bytes": 12.0, "glu_clamp_kernels": (3, 2)}
# Megatron-Core's rotary embedding with a YaRN concentration factor other than 1 (GPT-OSS: ``yarn_rotary_scaling_factor``
# 32 and no ``yarn_mscale``, so 0.1 ln 32 + 1 = 1.35; ``_yarn_get_concentration_factor``): ``apply_rotary_pos_emb`` passes
# it as ``mscale``, and with ``apply_rope_fusion`` it warns "mscale=... is not supported by TE's fused RoPE. Using unfused
# implementation" and runs ``_apply_rotary_pos_emb_bshd`` (megatron/core/models/common/embeddings/rope_utils.py at
# 92c8482e6, e41b37002 and d98e8a64d alike), on q and on k apart.  Per element of q or k (bf16): forward ``t * cos_``
# (2 + 2), ``_rotate_half``'s negation of one half (1 + 1) and ``cat`` (2 + 2), ``* sin_`` (2 + 2), the sum (4 + 2) and
# the closing ``cat((t, t_pass))`` with an empty ``t_pass`` (2 + 2): 24 bytes in 6 kernels, plus 6 small ones
# building ``cos_`` and ``sin_`` from the fp32 frequencies (cos, sin, the mscale products, the casts; s x d elements, no
# bytes counted); backward, the products' gradients (4 each), the negation's (2), the chunk's gradient put back
# together (4) and the two paths' sum into t's gradient (6): 20 bytes in 5 kernels (the slices' backward, which may add
# a zero fill and a copy, not counted).  Counted, not fitted; the fused count it replaces is 4 bytes, 1 kernel.
# Megatron-Core's TEGroupedMLP with linear biases (GPT-OSS: add_bias_linear): the second projection is built with
# ``skip_bias_add=True`` and ``_apply_bias`` adds each local expert's bias scaled by its rows' probabilities in a Python
# loop, ``torch.cat([t + b * p for t, b, p in zip(split(out), biases, split(probs))]).to(out.dtype)`` (megatron/core/
# transformer/moe/experts.py at 92c8482e6 for Bridge 25.11, d7288711b for Bridge v0.4.0 / 26.04, e41b37002; the TE op
# fuser path that avoids it is off in Megatron-Bridge's performance scripts).  With bf16 probabilities (the router in
# the input's dtype: moe_router_dtype unset) and per element of the routed rows' d_model-wide output: forward ``b * p``
# written (2), the sum (2 + 2 read, 2 written) and the ``cat`` (2 + 2); ``.to`` is a no-op: 12 bytes, 2 kernels a local
# expert and the cat; backward, the product's two gradients each a product (2 + 2) and a reduction (2), and the
# split's gradient put back together by a ``cat`` (2 + 2): 16 bytes, 4 kernels a local expert and 2 (the two splits'
# cats).  Counted, not fitted.
MEGATRON_EXPERT_BIAS = {"moe_bias_fwd_bytes": 12.0, "moe_bias_bwd_bytes": 16.0, "moe_bias_kernels_per_expert": (2, 4),
                        "moe_bias_kernels_fixed": (1, 2)}
MEGATRON_YARN_ROPE = {"rope_bytes": 24.0, "rope_kernels": 12, "rope_bwd_bytes": 20.0, "rope_bwd_kernels": 5}
# Dropless routing without forced balance (session 9, branch moeimb11; docs/planner.md section 10, "Session 9: routing
# imbalance"): the fullest expert-parallel rank's routed rows over the mean, minus 1 (costmodel.Implementation
# .moe_load_imbalance), per model family, as measured by its source's pair of runs of one layout with Megatron's
# aux-loss router and with ``--moe-router-force-load-balancing`` and nothing else changed; each v is the one that
# turns the model's forced-balance step into the pair's dropless step (tests/test_planner_validation.py re-derives
# them).  Each entry: (v, EP size, experts per EP rank) of the measurement.
# * mixtral: yanring/Megatron-MoE-ModelZoo best_practice/Mixtral/run_mixtral_8x22B.sh at 31942f0 (the commit that
#   put the pair in): Mixtral-8x22B from its checkpoint (--finetune, aux loss 1e-2), TP 2, PP 8 x VPP 7, EP 8,
#   dropless "around 445TFLOPS", forced balance "around 455TFLOPS": v = 0.0325 (0.035 before review9 made the
#   fullest rank's expert GEMMs scale with its excess instead of re-running the wave rule on the excess rows).
#   (b09773a raised the forced figure to 465 with a configuration change and left the dropless 445 as it was: v =
#   0.065 if both were current.)
# * qwen3: the same repository's best_practice/qwen3/readme.md at 020b813, "Long Context": Qwen3-235B-A22B from its
#   checkpoint (aux loss 1e-3), TP 4, PP 8 x VPP 4, EP 8, CP 1-8, 16k-128k tokens, "295/335/368/389 (forced
#   balance) / 237/277/320/357 (dropless)": v = 0.50, 0.54, 0.56, 0.55 at the four lengths, while the share of
#   the step the imbalance scales falls from 0.49 to 0.16 (one imbalance of the MoE block, not of the step).
AUX_LOSS_IMBALANCE = {"mixtral": (0.0325, 8, 1), "qwen3": (0.54, 8, 16)}


def expected_max_normal(n: int) -> float:
    """E[max of ``n`` independent standard normals] (0 for n = 1), by quadrature."""
    if n <= 1:
        return 0.0
    steps, lo, hi = 4000, -10.0, 10.0
    dx = (hi - lo) / steps
    total = 0.0
    for i in range(steps + 1):
        x = lo + i * dx
        pdf = math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        total += x * n * pdf * cdf ** (n - 1) * (0.5 if i in (0, steps) else 1.0)
    return total * dx


def aux_loss_imbalance(family: str, ep: int, n_experts: int) -> float:
    """The fullest EP rank's excess load for a layout of ``ep`` ranks holding ``n_experts / ep`` experts each, from
    the family's measured (v, EP, experts a rank): the experts' loads taken as independent deviations around the
    mean, a rank's load is the mean of its m experts' (its deviation 1/sqrt(m) of one expert's) and the fullest of
    R ranks sits E[max of R normals] deviations above the mean, so v scales as E[max of R] / sqrt(m)."""
    v_ref, ep_ref, m_ref = AUX_LOSS_IMBALANCE[family]
    if ep <= 1:
        return 0.0
    m = n_experts / ep
    return v_ref * (expected_max_normal(ep) / math.sqrt(m)) / (expected_max_normal(ep_ref) / math.sqrt(m_ref))


# Routing with no load-balancing loss at all and no forced balance (session 10, branch noblance12; docs/planner.md
# section 10, "Session 10: routing with no balancing loss"): the spread of the experts' loads a batch, as the
# coefficient of variation of Load(X) over the experts, measured by Shazeer et al. 2017 ("Outrageously Large Neural
# Networks", arXiv 1701.06538), Appendix A, Table 6: their MoE-256 (256 experts, noisy top-4 gating, 1 Billion Word
# LM, 10 epochs = 27,000 steps), trained with w_importance = w_load = 0: CV(Load(X)) 3.01, max(Load)/mean(Load)
# 17.80, "averaged over several training batches" (with either loss: CV 0.02-0.17, max/mean 1.07-1.47).  The paper
# calls the max/mean ratio "significant for load balancing purposes on distributed hardware".  An expert-parallel
# rank holding m of the experts carries their sum, so the moeimb11 rule (``aux_loss_imbalance``) gives its
# excess: a rank's spread is CV / sqrt(m) and the fullest of R ranks sits E[max of R normals] spreads above the
# mean.  The same rule run on the table's own rows with a loss (R = 256, m = 1) gives their max/mean within 5%;
# on the no-loss row it gives 9.5 where the table has 17.8 (a heavier tail than a normal one), so the figure
# is the conservative reading of the measurement.  Its limits: an LSTM language model, at the end of its
# training, where the rows it serves are Megatron runs at steps 91-100 from random initialisation.  Review
# (session 10, branch review10): 3.01 is 38% of the largest CV top-4 routing can give over 256 experts (every token
# on the same 4 experts: sqrt(256 / 4 - 1) = 7.9) and more than it can give over 32 (sqrt(7) = 2.65), so the spread
# is taken up to that bound (``no_balance_loss_imbalance``).
NO_BALANCE_LOSS_CV = 3.01
# Shazeer et al. 2017 Table 6, the rows the rule is checked on: (w_importance, w_load) -> (CV(Load), max/mean)
SHAZEER2017_TABLE6 = {(0.0, 0.0): (3.01, 17.80), (0.2, 0.0): (0.17, 1.47), (0.0, 0.2): (0.04, 1.15),
                      (0.1, 0.1): (0.05, 1.14), (0.01, 0.01): (0.11, 1.37), (1.0, 1.0): (0.02, 1.07)}


def collapsed_router_excess(ep: int, n_experts: int, top_k: int) -> float:
    """The fullest EP rank's expected excess load over the mean when every token picks the same ``top_k`` experts
    (a fully collapsed router), the experts placed at random over ``ep`` ranks of n_experts / ep: each live expert
    holds every token's row, the mean rank top_k / ep of them.  Exact, over the compositions of the live experts
    over the ranks.  It bounds any top-k router's expected fullest-rank excess: that excess is convex in the
    experts' loads, which lie between 0 and every token, so it is largest at a vertex of that set, where top_k
    experts take every token (session 10 review, branch review10)."""
    if ep <= 1:
        return 0.0
    m = n_experts // ep
    # by the live experts placed so far: {the fullest rank's live experts: placements}, rank by rank
    layers = [{0: {0: 1}}]
    for _ in range(ep):
        nxt: dict = {}
        for used, by_max in layers[-1].items():
            for c in range(min(m, top_k - used) + 1):
                row = nxt.setdefault(used + c, {})
                for mx, w in by_max.items():
                    row[max(mx, c)] = row.get(max(mx, c), 0) + w * math.comb(m, c)
        layers.append(nxt)
    dist = layers[-1].get(top_k, {})
    return sum(mx * w for mx, w in dist.items()) / math.comb(n_experts, top_k) * ep / top_k - 1.0


def no_balance_loss_imbalance(ep: int, n_experts: int, top_k: int) -> float:
    """The fullest EP rank's excess load under routing with no balancing loss (NO_BALANCE_LOSS_CV): the experts'
    loads independent with spread CV around the mean, a rank of m = n_experts / ep of them deviates CV / sqrt(m)
    and the fullest of ep ranks sits E[max of ep normals] of that above the mean.

    Bounds of top-k routing (session 10 review, branch review10): a token picks ``top_k`` distinct experts, so an
    expert receives at most every token and the experts' CV is at most sqrt(n_experts / top_k - 1), reached when
    every token picks the same ``top_k`` experts; Shazeer's 3.01 (over 256 experts, top-4: bound 7.9) is taken up
    to that bound.  The normal reading of a rank's sum is then capped at the collapsed router's exact excess
    (``collapsed_router_excess``), which no top-k router exceeds; it binds only where a rank's spread is not
    small (few ranks, few experts a rank)."""
    if ep <= 1:
        return 0.0
    if n_experts % ep or not 1 <= top_k <= n_experts:
        raise ConfigError(f"no_balance_loss_imbalance: ep={ep} must divide n_experts={n_experts} and "
                          f"top_k={top_k} lie in 1..n_experts")
    m = n_experts / ep
    cv = min(NO_BALANCE_LOSS_CV, math.sqrt(n_experts / top_k - 1.0))
    return min(cv * expected_max_normal(ep) / math.sqrt(m), collapsed_router_excess(ep, n_experts, top_k))


def row_implementation(run: Run, path: Path = DATA) -> cm.Implementation:
    """The framework of ``run`` with what its row options say the source ran beyond its implementation's name."""
    impl = implementation_of(run)
    opts = row_options(run, path)
    if opts.get("glu_clamp") and impl.name.startswith("megatron-core"):
        impl = replace(impl, name=impl.name + "+glu-clamp", **MEGATRON_GLU_CLAMP)
    if opts.get("expert_bias") and impl.name.startswith("megatron-core"):  # per-expert bias loop
        impl = replace(impl, name=impl.name + "+expert-bias", **MEGATRON_EXPERT_BIAS)
    if "aux_loss_routing" in opts:  # dropless routing not forced to balance: the fullest EP rank's excess load
        family = opts["aux_loss_routing"]
        if family not in AUX_LOSS_IMBALANCE:
            raise ConfigError(f"run {run.id}: row option aux_loss_routing must name a measured family "
                              f"{sorted(AUX_LOSS_IMBALANCE)}, got {family!r}")
        model = model_of(run, path)
        impl = replace(impl, name=impl.name + "+imbalance",
                       moe_load_imbalance=aux_loss_imbalance(family, run.ep, model.n_experts))
    if opts.get("no_balance_loss"):  # no balancing loss at all, no forced balance: Shazeer et al.'s measured spread
        if "aux_loss_routing" in opts:
            raise ConfigError(f"run {run.id}: row options no_balance_loss and aux_loss_routing exclude each other")
        model = model_of(run, path)
        impl = replace(impl, name=impl.name + "+no-balance-imbalance",
                       moe_load_imbalance=no_balance_loss_imbalance(run.ep, model.n_experts, model.top_k))
    # Megatron-Core's unfused rotary (_apply_rotary_pos_emb_bshd): YaRN's mscale sends it there whatever
    # apply_rope_fusion says (yarn_rope); --no-rope-fusion sends a plain rotary there with mscale 1, the same kernels
    # (unfused_rope, session 8 review)
    if (opts.get("yarn_rope") or opts.get("unfused_rope")) and impl.name.startswith("megatron-core"):
        impl = replace(impl, name=impl.name + ("+yarn-rope" if opts.get("yarn_rope") else "+unfused-rope"),
                       **MEGATRON_YARN_ROPE)
    if opts.get("alibi") and impl.attention == "unfused":  # the bias through baddbmm's C
        impl = replace(impl, name=impl.name + "+alibi", score_bias_bytes=ALIBI_BADDBMM_BYTES)
    if opts.get("norm_tp_sync"):  # the source's code all-reduces each norm's weights a forward
        impl = replace(impl, name=impl.name + "+norm-sync", norm_tp_sync=True)
    if "rotary_pct" in opts:  # gpt-neox's partial rotary (GPTNEOX_ROPE_*)
        pct = opts["rotary_pct"]
        if not impl.name.startswith("gpt-neox") or isinstance(pct, bool) or not isinstance(pct, (int, float)) \
                or not 0 < pct <= 1:
            raise ConfigError(f"run {run.id}: row option rotary_pct must be a number in (0, 1] on a gpt-neox row, "
                              f"got {pct!r} on {impl.name}")
        if pct < 1:
            impl = replace(impl, name=impl.name + f"+rotary-{pct:g}",
                           rope_bytes=pct * GPTNEOX_ROPE_ROTATED_BYTES + GPTNEOX_ROPE_CAT_BYTES,
                           rope_kernels=GPTNEOX_ROPE_ROTATED_KERNELS + 1)
    if opts.get("parallel_block"):  # attention and MLP on one input, one TP all-reduce forward (gpt_j_residual)
        impl = replace(impl, name=impl.name + "+parallel-block", parallel_block=True)
    if "dropout" in opts:  # the source sets dropout off where its framework's default has it on
        if opts["dropout"] != 0:
            raise ConfigError(f"run {run.id}: row option dropout must be 0 (the source turns dropout off), "
                              f"got {opts['dropout']!r}")
        impl = replace(impl, name=impl.name + "+no-dropout", score_dropout=False)
    return impl


def request_of(run: Run, system: System | None = None, path: Path = DATA, *, impl: cm.Implementation | None = None,
               nodes: int | None = None, global_batch: int | None = None,
               embed_stage_unit: bool | None = None) -> cm.Request:
    """The cost model's request for ``run`` with its row options (``system``, ``impl``, ``nodes``, ``global_batch``
    and ``embed_stage_unit`` replace the row's own, e.g. with trial constants or another pipeline)."""
    system = system or system_of(run, path)
    opts = row_options(run, path)
    return cm.Request(model_of(run, path), system,
                      run.gpus // system.ranks_per_node if nodes is None else nodes,
                      run.global_batch if global_batch is None else global_batch, run.seq_len,
                      row_implementation(run, path) if impl is None else impl,
                      expert_tp=expert_tp_of(run, path), recompute_moe=opts.get("recompute_moe", False),
                      recompute_norm_act=opts.get("recompute_norm_act", False),
                      embed_stage_unit=opts.get("embed_stage_unit", False) if embed_stage_unit is None
                      else embed_stage_unit)


def predict(run: Run, system: System | None = None, path: Path = DATA) -> cm.Estimate:
    """The cost model's estimate of ``run`` (``system`` replaces the row's, e.g. with trial constants)."""
    return cm.estimate(request_of(run, system, path), run.layout())


def error_pct(run: Run, est: cm.Estimate) -> float:
    return 100.0 * (est.step_time_s - run.measured_step_s) / run.measured_step_s


@dataclass
class Row:
    run: Run
    estimate: cm.Estimate

    @property
    def error_pct(self) -> float:
        return error_pct(self.run, self.estimate)


def evaluate(runs: list[Run] | None = None) -> list[Row]:
    return [Row(r, predict(r)) for r in (load_runs() if runs is None else runs)]


# The clean held-out batches: unseen_rows_session{N} in the data file, group "unseen{N}" (session 3's own list is
# unseen_rows, group "unseen"); a held-out row in none of them is "seen".
UNSEEN_SESSIONS = tuple(range(4, 17))
GROUPS = ("seen", "unseen", *(f"unseen{n}" for n in UNSEEN_SESSIONS))


def summary(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per split (and MoE held out, each held-out batch, the fully stated held-out rows, the held-out rows with a
    steady-state figure): n, mean and max |error| in percent, mean signed error."""
    out = {}
    groups = {split: [r for r in rows if r.run.split == split] for split in SPLITS}
    groups["heldout_moe"] = [r for r in groups["heldout"] if model_is_moe(r.run)]
    groups["heldout_seen"] = [r for r in groups["heldout"] if group_of(r.run) == "seen"]
    for g in GROUPS[1:]:  # unseen, unseen4, ... in the order the batches were added
        groups[f"heldout_{g}"] = [r for r in groups["heldout"] if group_of(r.run) == g]
    # held-out rows whose layout and measured figure the source states in full (no 'assumed' field; session 11,
    # branch audit16): the same rows' errors without the ones that also measure an earlier session's guess
    groups["heldout_stated"] = [r for r in groups["heldout"] if is_fully_stated(r.run)]
    # held-out rows whose figure is a steady-state step: without the rows the data file's 'unsteady_figures' lists
    # by its rule (a first iteration after a start or restart, or a CUDA-graph capture, inside the measured window;
    # session 13, branch audit13)
    groups["heldout_steady"] = [r for r in groups["heldout"] if is_steady(r.run)]
    for name, group in groups.items():
        errs = [r.error_pct for r in group]
        if errs:
            out[name] = {"n": len(errs), "mean_abs": statistics.fmean(abs(e) for e in errs),
                         "max_abs": max(abs(e) for e in errs), "mean": statistics.fmean(errs)}
    return out


def is_fully_stated(run: Run) -> bool:
    """Every layout field and the measured figure stated by the row's source (its 'assumed' list is empty)."""
    return not run.assumed


def is_steady(run: Run, path: Path = DATA) -> bool:
    """The row's figure is not known to hold one-time start-up work (it is not under the data file's
    'unsteady_figures')."""
    return run.id not in _data(str(path)).get("unsteady_figures", {}).get("rows", {})


def model_is_moe(run: Run) -> bool:
    return "n_experts" in _data(str(DATA))["models"][run.model]


def layout_text(run: Run) -> str:
    """The row's layout as the tables print it: ``tp2 pp4x7 ep8 etp1 zero1 mbs1 none``."""
    lay = run.layout()
    etp = expert_tp_of(run)
    return f"tp{lay.tp} pp{lay.pp}" + (f"x{lay.vpp}" if lay.vpp > 1 else "") + \
        (f" ep{lay.ep}" if lay.ep > 1 else "") + (f" etp{etp}" if etp else "") + \
        f" {lay.sharding} mbs{lay.mbs} {lay.recompute}"


def table(rows: list[Row], markdown: bool = False) -> str:
    head = ("run", "split", "group", "source", "GPUs", "layout", "measured s", "predicted s", "error")
    lines = []
    for r in rows:
        lines.append((r.run.id, r.run.split, group_of(r.run), r.run.source, str(r.run.gpus), layout_text(r.run),
                      f"{r.run.measured_step_s:.3f}", f"{r.estimate.step_time_s:.3f}", f"{r.error_pct:+.1f}%"))
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


# Where the time could go wrong, each a rule on the row (a row can be in several).
CATEGORIES: dict[str, Callable[[Run, cm.Estimate], bool]] = {
    "MoE (all-to-all, imbalance, grouped GEMM)": lambda r, e: model_is_moe(r),
    "ZeRO-3, one micro-batch, no recompute (small step)": lambda r, e: (
        r.sharding == "zero3" and e.microbatches == 1 and r.recompute == "none"),
    "ZeRO-3 with recompute, pp1 (GEMM efficiency by shape)": lambda r, e: (
        r.sharding == "zero3" and r.pp == 1 and r.recompute != "none" and not model_is_moe(r)),
    "sequence >= 4096 (attention)": lambda r, e: r.seq_len >= 4096 and not model_is_moe(r),
    "tensor parallel (tp > 1, dense)": lambda r, e: r.tp > 1 and not model_is_moe(r),
    "pipeline (pp > 1: bubble, p2p)": lambda r, e: r.pp > 1,
    "data-parallel traffic > 5% of the step": lambda r, e: (
        e.breakdown["dp_comm_total_s"] > 0.05 * e.step_time_s),
    "A100": lambda r, e: system_of(r).node.device.name.startswith("A100"),
    "H100": lambda r, e: system_of(r).node.device.name.startswith("H100"),
    "Intel Max 1550 (Aurora)": lambda r, e: system_of(r).node.device.name.startswith("Max1550"),
}
SHARES = ("compute_s", "recompute_s", "tp_comm_s", "ep_comm_s", "host_wait_s", "dp_comm_exposed_s", "pp_comm_s", "bubble_s",
          "optimizer_s")


def group_of(run: Run) -> str:
    """fit, seen (held out, looked at before a structural change), unseen (added held out in session 3),
    unseen4 (added held out in session 4), unseen5 (session 5), unseen6 (session 5, second batch), unseen7
    (session 6: NVIDIA's DGX Cloud benchmarking recipes), unseen8 (session 6, second batch: ALCF's Aurora runs), unseen9
    (session 6, third batch: BigScience's BLOOM-176B runs on Jean Zay), unseen10 (session 7: Nemotron-4 recipes,
    Automodel's Llama 3.1 70B, a token-drop Mixtral 8x22B) or unseen11 (session 7, second batch: the Megatron-LM
    README's H100 weak scaling, MT-NLG 530B, GPT-NeoX-20B), unseen12 (session 8: Megatron-LM's release tests of
    Mixtral 8x7B and 8x22B on DGX H100) or unseen13 (session 8, second batch: the FlashAttention-2 paper's GPT3-1.3B
    and 2.7B training runs on 8 A100s; second part: the Zero Bubble paper's Megatron-LM 1F1B baseline) or unseen14
    (session 9: Narayanan et al. 2021 Table 2's PTD rows; Megatron-Bridge's model-verification cards on H100) or
    unseen15 (session 10: llm-foundry's H100 large-scale table, MPT 7B-70B on 128 and 512 GPUs; BAAI FlagPerf's
    Megatron-Core 0.6 H100 rows, Llama 3 8B / 70B and Mixtral 8x7B; the MoE Parallel Folding paper's Table 3 MoE rows) or
    unseen16 (session 11: the MoE Parallel Folding paper's Table 4 strong-scaling MoE rows at 256 and 1024 H100; NVIDIA's
    DGX Cloud benchmarking v25.04 Llama 3.1 405B rows under NeMo 2, 32-2048 H100)."""
    if run.split == "fit":
        return "fit"
    data = _data(str(DATA))
    for session in reversed(UNSEEN_SESSIONS):
        if run.id in set(data.get(f"unseen_rows_session{session}", ())):
            return f"unseen{session}"
    return "unseen" if run.id in set(data.get("unseen_rows", ())) else "seen"


def breakdown(rows: list[Row]) -> str:
    """Every row's predicted step split by term (percent of the prediction), then the error by category."""
    head = f"{'run':32s} {'grp':6s} {'err':>7s}  " + " ".join(f"{k[:-2][:8]:>8s}" for k in SHARES) + "  mb"
    out = [head]
    for r in rows:
        b, step = r.estimate.breakdown, r.estimate.step_time_s
        out.append(f"{r.run.id:32s} {group_of(r.run):6s} {r.error_pct:+6.1f}%  "
                   + " ".join(f"{100 * b[k] / step:7.1f}%" for k in SHARES) + f"  {r.estimate.microbatches}")
    out += ["", (f"{'category':54s} {'n':>3s} {'signed':>7s} {'|err|':>6s}   "
                 + " / ".join(("fit", *GROUPS)) + " mean |err| (n)")]
    for name, rule in CATEGORIES.items():
        sel = [r for r in rows if rule(r.run, r.estimate)]
        if not sel:
            continue
        parts = []
        for g in ("fit", *GROUPS):
            e = [abs(r.error_pct) for r in sel if group_of(r.run) == g]
            parts.append(f"{statistics.fmean(e):5.1f}% ({len(e)})" if e else "   -  (0)")
        out.append(f"{name:54s} {len(sel):3d} {statistics.fmean(r.error_pct for r in sel):+6.1f}% "
                   f"{statistics.fmean(abs(r.error_pct) for r in sel):5.1f}%   " + " / ".join(parts))
    return "\n".join(out)


# ------------------------------------------------------------ what a plan shows
# ``alphaexa plan`` prints, under its table, how far this validation has found the cost model from published
# runs on the plan's device: the rows whose device has the plan's device name, predicted by ``predict`` as the
# table above is (nothing copied from the docs: it follows the model and the data).  Computed on first use
# for that device only, and cached.
DOCS_POINTER = "docs/planner.md section 10"
TIME_FIELDS_IGNORED = ("name", "source", "memory_gib")  # what a device may differ in without changing a step time


@dataclass(frozen=True)
class SplitRecord:
    """One split's (predicted - measured) / measured, in percent, over the rows of one device."""

    split: str  # heldout | fit
    n: int
    mean_pct: float
    min_pct: float
    max_pct: float
    mean_ratio: float  # measured / predicted, averaged over the rows

    @property
    def ratio_range(self) -> tuple[float, float]:
        """(least, most) measured / predicted: the shortest and the longest a run took against the prediction."""
        return 100.0 / (100.0 + self.max_pct), 100.0 / (100.0 + self.min_pct)

    def to_dict(self) -> dict:
        lo, hi = self.ratio_range
        return {"n": self.n, "mean_error_pct": round(self.mean_pct, 2), "min_error_pct": round(self.min_pct, 2),
                "max_error_pct": round(self.max_pct, 2),
                "measured_over_predicted": {"min": round(lo, 3), "max": round(hi, 3),
                                            "mean": round(self.mean_ratio, 3)}}


@dataclass(frozen=True)
class DeviceRecord:
    device: str
    systems: tuple[str, ...]  # the data file's systems those rows ran on
    splits: tuple[SplitRecord, ...]  # held out first, then fit; only splits with rows
    constants: tuple[tuple, ...]  # the device figures the rows were predicted with (see time_constants)

    @property
    def n(self) -> int:
        return sum(s.n for s in self.splits)

    def split(self, name: str) -> SplitRecord | None:
        return next((s for s in self.splits if s.split == name), None)


def time_constants(device) -> tuple:
    """A device's figures that enter a step time (its name, source and capacity left out)."""
    return tuple((f, getattr(device, f)) for f in device.__dataclass_fields__ if f not in TIME_FIELDS_IGNORED)


def device_record(device: str, path: Path | None = None) -> DeviceRecord:
    """Every row of the data file whose system's device is named ``device``, predicted and summed up by split."""
    return _device_record(device, str(DATA if path is None else path))


@cache
def _device_record(device: str, path: str) -> DeviceRecord:
    p = Path(path)
    systems: dict[str, System] = {}
    matched: list[Run] = []
    for run in load_runs(p):
        if run.system not in systems:
            systems[run.system] = system_of(run, p)
        if systems[run.system].node.device.name == device:
            matched.append(run)
    errors = {split: [] for split in SPLITS}
    for run in matched:
        errors[run.split].append(error_pct(run, predict(run, systems[run.system], p)))
    splits = tuple(SplitRecord(split, len(e), statistics.fmean(e), min(e), max(e),
                               statistics.fmean(100.0 / (100.0 + x) for x in e))
                   for split, e in ((s, errors[s]) for s in ("heldout", "fit")) if e)
    used = sorted({r.system for r in matched})
    return DeviceRecord(device, tuple(used), splits,
                        tuple(sorted({time_constants(systems[s].node.device) for s in used}, key=repr)))


def _pct(x: float) -> str:
    return f"{x:+.1f}%"


def plan_record(system: System, path: Path | None = None, calibrated: bool | None = None) -> dict:
    """The validation record of ``system``'s device as the plan shows it: the numbers and ``text``, its lines.

    ``calibrated``: the system carries a ``--profile``'s constants (default: read off the system, which
    ``profile.apply_profile`` marks)."""
    from .profile import is_calibrated

    device = system.node.device
    rec = device_record(device.name, path)
    calibrated = is_calibrated(system) if calibrated is None else calibrated
    out: dict = {"device": device.name, "runs": rec.n, "systems": list(rec.systems), "docs": DOCS_POINTER}
    if not rec.n:
        text = [(f"Validation: no published run on this device ({device.name}) in the validation set: the prediction "
                 f"is unvalidated ({DOCS_POINTER}).")]
        if device.name.startswith("H200"):
            text.append("The only H200 comparison is the trainer's own single-node runs of small models "
                        "(docs/planner.md section 9), no published or multi-node run.")
        return {**out, "calibrated": calibrated, "text": text}
    for s in rec.splits:
        out[s.split] = s.to_dict()
    parts = []
    for s in rec.splits:
        what = "held out" if s.split == "heldout" else "fit (in-sample)"
        parts.append(f"{s.n} {what}, mean {_pct(s.mean_pct)}, range {_pct(s.min_pct)}..{_pct(s.max_pct)}")
    runs = "run" if rec.n == 1 else "runs"
    text = [(f"Validation on {device.name}, (predicted - measured)/measured step of {rec.n} published {runs} "
             f"on {', '.join(rec.systems)}: " + "; ".join(parts) + ".")]
    ref = rec.split("heldout") or rec.splits[0]
    lo, hi = ref.ratio_range
    who = "Held-out runs" if ref.split == "heldout" and len(rec.splits) > 1 else "Published runs"
    if ref.split == "fit":
        who = "Published runs (all in the fit)"
    if ref.max_pct < 0:
        expect = ": expect longer steps"
    elif ref.min_pct > 0:
        expect = ": expect shorter steps"
    else:
        expect = ", some shorter, some longer"
    took = f"{lo:.2f}x the predicted step" if ref.n == 1 else \
        f"{lo:.2f}-{hi:.2f}x the predicted step ({ref.mean_ratio:.2f}x on average)"
    text.append(f"{who} on {device.name} took {took}{expect}. See {DOCS_POINTER}.")
    same = time_constants(device) in rec.constants
    if calibrated:
        text.append("Calibrated with --profile: this record is for the uncalibrated catalogue figures; the "
                    "calibrated prediction has no published-run record.")
    elif not same:
        text.append(f"This system's {device.name} figures differ from the catalogue's that the validation used: "
                    "the record is for the catalogue figures.")
    return {**out, "calibrated": calibrated, "catalogue_constants": same, "text": text}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="each row's step by term, and the error by category")
    args = ap.parse_args(argv)
    rows = evaluate()
    if args.breakdown:
        print(breakdown(rows))
        return 0
    print(table(rows, args.markdown))
    print()
    for name, s in summary(rows).items():
        print(f"{name:12s} n={s['n']:2d}  mean |error| {s['mean_abs']:.1f}%  max {s['max_abs']:.1f}%  "
              f"mean signed {s['mean']:+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
