"""DeepSpeed as the alternative engine for the dense / data-parallel part: ZeRO 1-3 and ZeRO-Infinity.

Where it is the better tool: offloading optimizer state and parameters to CPU
memory or to NVMe (ZeRO-Infinity), and sites whose users already run
Megatron-DeepSpeed.  The FSDP2 path (``parallelize``) is the default and the
only one with tensor, pipeline and expert parallelism.

Mapping: every rank is a data-parallel rank; ``sharding`` gives the ZeRO stage
(none -> 0, zero1 -> 1, zero2 -> 2, zero3 -> 3); ``offload_optimizer`` /
``offload_params`` = "cpu" or "nvme" (``nvme_path``: a local directory) turn on
ZeRO-Infinity (parameter offload needs stage 3, as in DeepSpeed).

Limits, enforced before DeepSpeed (or any process group) starts, one line each:
* tp, cp, ep > 1 and pp > 1 are not supported on this engine path; in
  particular DeepSpeed's pipeline engine itself accepts only ZeRO stage 0/1
  (it rejects ZeRO-2/3), and DeepSpeed's native MoE (its expert parallelism)
  does not combine with ZeRO-3.  Our MoE layers run under DeepSpeed as plain
  data-parallel modules (ep = 1), which every ZeRO stage supports.
* dp_replicate > 1 with a ZeRO stage: DeepSpeed shards over all data ranks.

Loss normalisation as in ``train_step``: DeepSpeed divides gradients by the
data-parallel size and the micro-batch loss by the accumulation steps, so the
micro-batch loss handed to it is ``summed CE / global tokens * dp * steps``
and the MoE auxiliary gradient is injected with weight ``dp / steps``: the
gradient is again that of the single-process global mean.
"""
from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from alphaexa.checkpoint import CheckpointManager, ModelOptimizerState
from alphaexa.model.moe import moe_layers, set_stats_reduce_hook
from alphaexa.model.transformer import Transformer
from topology.layout import Layout
from topology.modelcfg import ConfigError

from .deepspeed_ops import check_writable, prepare_ops, required_ops
from .expert_parallel import stats_reduce_hook
from .train_step import IGNORE_INDEX, StepResult, summed_cross_entropy

ZERO_STAGE = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3}
OFFLOAD_DEVICES = (None, "cpu", "nvme")


@dataclass(frozen=True)
class DeepSpeedOptions:
    offload_optimizer: str | None = None  # None, "cpu" or "nvme"
    offload_params: str | None = None  # None, "cpu" or "nvme" (stage 3 only)
    nvme_path: str | None = None  # local directory for "nvme"
    # offload_params="nvme": elements of parameters DeepSpeed keeps in host memory instead (its
    # offload_param.max_in_cpu; None: its default 1e9, the first 1e9 elements in group order)
    nvme_params_in_cpu: int | None = None
    max_norm: float = 1.0
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8


def check_deepspeed_layout(layout: Layout, options: DeepSpeedOptions) -> int:
    """The ZeRO stage for ``layout``; ConfigError (one line) for what this engine path cannot run."""
    stage = ZERO_STAGE[layout.sharding]
    if layout.pp > 1:
        if stage >= 2:
            raise ConfigError(f"pp={layout.pp} with sharding={layout.sharding}: DeepSpeed's pipeline engine "
                              "supports ZeRO stage 0 or 1 only")
        raise ConfigError(f"pp={layout.pp}: the DeepSpeed engine path runs data parallelism only; use the "
                          "FSDP2 engine for pipeline parallelism")
    if layout.ep > 1:
        detail = " (and DeepSpeed's native MoE does not combine with ZeRO-3)" if stage == 3 else ""
        raise ConfigError(f"ep={layout.ep}: expert parallelism is not available on the DeepSpeed engine path"
                          f"{detail}; use the FSDP2 engine")
    for name in ("tp", "cp"):
        if getattr(layout, name) > 1:
            raise ConfigError(f"{name}={getattr(layout, name)}: not supported on the DeepSpeed engine path; "
                              "use the FSDP2 engine")
    if layout.dp_replicate > 1 and stage > 0:
        raise ConfigError(f"dp_replicate={layout.dp_replicate} with sharding={layout.sharding}: DeepSpeed "
                          "shards over all data ranks; put them in dp_shard")
    for what in ("offload_optimizer", "offload_params"):
        device = getattr(options, what)
        if device not in OFFLOAD_DEVICES:
            raise ConfigError(f"{what}={device!r}: must be cpu, nvme or unset")
        if device is not None and stage == 0:
            raise ConfigError(f"{what}={device} needs ZeRO (sharding=zero1|zero2|zero3)")
        if device == "nvme" and not options.nvme_path:
            raise ConfigError(f"{what}=nvme needs nvme_path, a local directory")
        if device == "nvme":
            check_writable(Path(options.nvme_path))
    if options.offload_params is not None and stage != 3:
        raise ConfigError(f"offload_params={options.offload_params} needs sharding=zero3 (ZeRO-Infinity)")
    return stage


def deepspeed_config(layout: Layout, options: DeepSpeedOptions, *, n_microbatches: int,
                     compute_dtype: torch.dtype, largest_param: int = 0,
                     swap_buffers: int = 0) -> dict:
    """``largest_param``: elements of the model's largest parameter (sizes the NVMe parameter swap buffers);
    ``swap_buffers``: ``nvme_param_buffers(model)`` (how many of them, see there)."""
    stage = check_deepspeed_layout(layout, options)
    zero: dict = {"stage": stage}
    if options.offload_optimizer:
        zero["offload_optimizer"] = _offload(options.offload_optimizer, options.nvme_path, "optimizer")
    if options.offload_params:
        zero["offload_param"] = _offload(options.offload_params, options.nvme_path, "params")
        if options.offload_params == "nvme":
            # Each parameter swaps in through one pinned buffer of buffer_size elements (DeepSpeed's
            # default 1e8 is less than a 7B model's 131M-element embedding: an assertion mid-step).
            zero["offload_param"]["buffer_size"] = max(NVME_PARAM_BUFFER, largest_param)
            zero["offload_param"]["buffer_count"] = max(NVME_PARAM_BUFFERS_MIN, swap_buffers)
            # A parameter keeps its swap buffer from its fetch until its release.  DeepSpeed's default
            # reuse distance (1e9 elements) keeps every parameter whose next use is that close, from the
            # second micro-step on (the first records the trace): ~5 blocks of a 7B model, far more than
            # buffer_count, so "Not enough buffers 0 for swapping 1" (the H200 run of 2026-12-04).  With
            # 0 nothing is held past its module's release; the invariant is in nvme_param_buffers.
            zero["stage3_max_reuse_distance"] = 0
            if options.nvme_params_in_cpu is not None:
                zero["offload_param"]["max_in_cpu"] = int(options.nvme_params_in_cpu)
    config = {
        "train_micro_batch_size_per_gpu": layout.mbs,
        "gradient_accumulation_steps": n_microbatches,
        "train_batch_size": layout.mbs * n_microbatches * layout.dp,
        "gradient_clipping": options.max_norm,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if compute_dtype == torch.bfloat16:
        config["bf16"] = {"enabled": True}
    elif compute_dtype == torch.float16:
        config["fp16"] = {"enabled": True}
    return config


def _offload(device: str, nvme_path: str | None, what: str) -> dict:
    if device == "cpu":
        return {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    path = Path(nvme_path) / what
    path.mkdir(parents=True, exist_ok=True)
    return {"device": "nvme", "nvme_path": str(path), "pin_memory": torch.cuda.is_available()}


def _partition_for_nvme(model: torch.nn.Module, config: dict) -> None:
    """Partition ``model``'s parameters for ZeRO-3 with NVMe offload before ``deepspeed.initialize`` does.

    Inside ``initialize`` DeepSpeed (0.19.8) converts the model with ``zero.Init(dtype=<the parameters'
    dtype>, ...)``, whose ``_set_dtype`` reads ``dtype or float16 if accelerator.is_fp16_supported() else
    bfloat16``: where the accelerator has no fp16 (a CPU without oneDNN fp16, e.g. an AMD EPYC) the given dtype is
    dropped and the NVMe swapper is sized for 2-byte bfloat16 elements whatever the parameters are.  An fp32
    parameter then swaps only from 2**19 elements up (DeepSpeed's 1 MiB minimum read at 2 bytes an element, not 4)
    and swaps into a bfloat16 buffer.  Converted here from the config alone (no dtype given), ``Init`` takes the
    config's precision (fp32 here: called only where neither bf16 nor fp16 is on), the parameters' own;
    ``initialize`` then finds the parameters converted and leaves them."""
    from deepspeed import zero

    offload = config["zero_optimization"]["offload_param"]
    zero.Init(module=model, config_dict_or_path=config, remote_device=offload["device"],
              pin_memory=offload.get("pin_memory", False))


NVME_PARAM_BUFFER = 10**8  # DeepSpeed's default buffer_size, elements
NVME_PARAM_BUFFERS_MIN = 5  # DeepSpeed's default buffer_count; room for its NVMe read-ahead
SWAP_CANDIDATE_NUMEL = 10**5  # DeepSpeed's stage3_param_persistence_threshold: smaller ones never swap
_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)


def _units(module: torch.nn.Module):
    """The modules that run one after another under ``module``: its children, containers opened."""
    for child in module.children():
        if isinstance(child, _CONTAINERS):
            yield from _units(child)
        else:
            yield child


def nvme_param_buffers(model: torch.nn.Module) -> int:
    """Swap buffers (DeepSpeed's offload_param.buffer_count) that parameter offload to NVMe needs.

    Invariant, with ``stage3_max_reuse_distance`` = 0 (set by ``deepspeed_config``): a parameter's
    partition holds a buffer only from its module's fetch to that module's release, plus DeepSpeed's
    NVMe read-ahead, which takes at most the buffers free at that moment and takes them in the order
    the parameters will be needed (so it never holds one that a fetch before it needs).  The model's
    units (the root's children, ModuleList/ModuleDict/Sequential opened) run one after another; in the
    forward only one is active, in the backward a unit's release can come after the next unit's fetch
    (and a unit whose inputs need no gradient, the embedding, is released only at the end of the
    backward, while the unit after it in the forward is the one running).  So at most the root's own
    parameters plus two units' parameters hold buffers at once, and this count never runs out:
    ``root + 2 * max(unit)``, counting only parameters that can swap (above the persistence
    threshold; DeepSpeed also keeps anything under 1 MiB in memory, so this over-counts safely).
    Pinned memory: this count x ``buffer_size`` (the largest parameter, >= 1e8 elements) x dtype bytes.
    """
    def swappable(params) -> int:
        return sum(1 for p in params if p.numel() > SWAP_CANDIDATE_NUMEL)

    root = swappable(model.parameters(recurse=False))
    largest_unit = max((swappable(unit.parameters()) for unit in _units(model)), default=0)
    return max(NVME_PARAM_BUFFERS_MIN, root + 2 * largest_unit)


class DeepSpeedTrainStep:
    """``step(inputs, targets)`` like ``TrainStep``, then clip + optimizer step inside DeepSpeed.

    ``inputs``/``targets``: this rank's rows (``local_rows`` with dp = world size).
    ``parameters``: what the optimizer gets (parameter groups with their own weight decay);
    default all of the model's parameters with ``options.weight_decay``.
    """

    def __init__(self, model: Transformer, layout: Layout, options: DeepSpeedOptions, *, n_microbatches: int,
                 compute_dtype: torch.dtype = torch.float32, parameters: list | None = None):
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        self.config = deepspeed_config(layout, options, n_microbatches=n_microbatches, compute_dtype=compute_dtype,
                                       largest_param=max(p.numel() for p in model.parameters()),
                                       swap_buffers=nvme_param_buffers(model))
        # Compiled here with a line each, not silently inside deepspeed.initialize (deepspeed_ops).
        prepare_ops(required_ops(offload_optimizer=options.offload_optimizer, offload_params=options.offload_params,
                                 device_type=get_accelerator().device_name()),
                    log=print if dist.get_rank() == 0 else lambda _line: None)
        self.n_microbatches = n_microbatches
        self.dp = layout.dp
        if self.dp > 1:
            set_stats_reduce_hook(model, stats_reduce_hook(dist.group.WORLD))
        for moe in moe_layers(model).values():
            moe.aux_loss_scale = self.dp / n_microbatches
        if options.offload_params == "nvme" and not ("bf16" in self.config or "fp16" in self.config):
            _partition_for_nvme(model, self.config)  # fp32 parameters (bf16/fp16 runs keep DeepSpeed's own path)
        optimizer = _client_optimizer(options, self.config)
        import_muon_compiling_lazily()
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=parameters if parameters is not None else model.parameters(),
            optimizer=optimizer, config=self.config)
        self.last_grad_norm: float | None = None

    def load_weights(self, manager: CheckpointManager, step_or_path: int | str | Path) -> int:
        """Load the model weights of a DCP checkpoint (saved by any layout and world size) into this
        engine's model in place; returns its step.  The optimizer state starts fresh.

        Up to ZeRO-2 every rank holds the whole parameters anyway, and DCP reads into them.  ZeRO-3
        partitions each parameter as a flat 1-D slice, which DCP cannot address (it reads boxes of
        the saved tensor's shape), so each parameter is gathered whole on its own
        (``deepspeed.zero.GatheredParameters``), read, and partitioned again: one parameter at a
        time is whole, never the model.  The checksums are verified by the first read only.
        """
        from deepspeed import zero

        model = self.engine.module
        if self.config["zero_optimization"]["stage"] < 3:
            step = manager.load(step_or_path, {"model": ModelOptimizerState(model)})
        else:
            verify_checksums = manager.verify_checksums
            try:
                for name, param in model.named_parameters():
                    with zero.GatheredParameters([param], modifier_rank=0):
                        step = manager.load(step_or_path, {"model": {"model": {name: param.data}}})
                    manager.verify_checksums = False
            finally:
                manager.verify_checksums = verify_checksums
        # ZeRO keeps its own fp32 master partitions: copy the loaded weights into them.
        if hasattr(self.optimizer, "refresh_fp32_params"):
            self.optimizer.refresh_fp32_params()
        return step

    def __call__(self, inputs: Tensor, targets: Tensor) -> StepResult:
        device = self.engine.device
        inputs, targets = inputs.to(device), targets.to(device)
        count = (targets != IGNORE_INDEX).sum().to(torch.float32)
        dist.all_reduce(count)
        scale = self.dp * self.n_microbatches
        loss_sum = torch.zeros((), device=device)
        for x, y in zip(inputs.chunk(self.n_microbatches), targets.chunk(self.n_microbatches)):
            loss = summed_cross_entropy(self.engine(x), y) / count
            self.engine.backward(loss * scale)
            self.engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            loss_sum += loss.detach().float()
        dist.all_reduce(loss_sum)
        self.last_grad_norm = float(self.engine.get_global_grad_norm())
        return StepResult(loss=float(loss_sum), tokens=int(count))


# DeepSpeed's ZeRO optimizers import its Muon optimizer inside ``deepspeed.initialize`` (to tell whether the client
# optimizer is one).  That module applies ``torch.compile`` to three functions at import, and torch.compile imports
# torch's inductor when it wraps a function: 3.3 s of every ZeRO process on a 2-core CPU machine (profiled), for
# functions that only a Muon optimizer calls, and this engine never passes one (``_client_optimizer``: AdamW,
# DeepSpeed's CPU Adam).
MUON_MODULES = ("deepspeed.runtime.zero.muon.original_muon", "deepspeed.runtime.zero.muon.muon_optimizer")


def import_muon_compiling_lazily() -> None:
    """Import DeepSpeed's Muon modules (unless imported already) with each ``@compiler.compile()`` function compiled
    by ``torch.compile`` on its first call instead of at import; the same compiled function once called."""
    if all(name in sys.modules for name in MUON_MODULES):
        return
    from deepspeed.runtime import compiler

    eager = compiler.compile

    def compile_on_first_call():
        decorate = eager()

        def lazily(fn):
            compiled = []

            @functools.wraps(fn)
            def call(*args, **kwargs):
                if not compiled:
                    compiled.append(decorate(fn))
                return compiled[0](*args, **kwargs)
            return call
        return lazily

    compiler.compile = compile_on_first_call
    try:
        for name in MUON_MODULES:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:  # a DeepSpeed without them (the extra is not pinned): nothing to defer
                if exc.name is None or not name.startswith(exc.name):
                    raise
    finally:
        compiler.compile = eager


def _client_optimizer(options: DeepSpeedOptions, config: dict):
    """DeepSpeed's own Adam when optimizer state is offloaded (it needs its CPU/NVMe Adam), else torch AdamW."""
    adam = {"lr": options.lr, "betas": list(options.betas), "eps": options.eps, "weight_decay": options.weight_decay}
    if "offload_optimizer" in config["zero_optimization"]:
        config["optimizer"] = {"type": "AdamW", "params": adam}
        return None
    return lambda params: torch.optim.AdamW(params, lr=options.lr, betas=options.betas, eps=options.eps,
                                            weight_decay=options.weight_decay)
