"""The training loop of one rank: setup, steps with guards, evaluation, checkpoints, resume.

Every rank runs ``Trainer(...).run()``; all decisions that change control flow (skip a
step, roll back, stop) are taken from values that were all-reduced first, so every rank
takes the same branch and the collectives stay matched.

Step ``s`` (1-based) consumes global batch ``s`` of the data stream, split into
``n_micro = global_batch / (mbs * dp)`` micro-batches per rank; gradients are the mean
over all ``global_batch`` sequences whatever the layout, so layouts differ only by
floating-point summation order.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from backends.launch import DistributedInfo, init_distributed
from topology.layout import Layout
from topology.modelcfg import flops_per_token

from ..checkpoint import CheckpointManager, ModelOptimizerState, RNGState
from ..errors import UserError
from ..model import Transformer, moe_layers
from ..parallel import (
    build_mesh,
    clip_divisor,
    clip_grad_norm_,
    global_grad_norm,
    local_rows,
    make_train_step,
    materialise,
    parallelize,
)
from ..parallel.float8 import check_float8
from .batches import eval_batches
from .config import RunConfig
from .dataset import open_training_data
from .deepspeed_run import DeepSpeedCheckpoints, DeepSpeedRun
from .memory_debug import start_memory_history, write_memory_history
from .metrics import MetricsLogger
from .optim import build_master_weight_optimizer, build_optimizer, learning_rate, set_learning_rate
from .preflight import CHECKPOINT_DIR

SPIKE_INJECTION = 1000.0
MOE_STATS_HEAD = 4  # aux, z, forwards, dropped; the expert counts follow


@dataclass
class _StepFigures:
    """A step's figures on their way to the host (``_queue_step_values``)."""

    host: Tensor  # float64: the MoE rows, the memory peak, then the step values
    done: Any  # torch.Event recorded after the copy; None where the copy was synchronous (CPU)
    moe_shape: tuple[int, int]


@dataclass
class _Launched:
    """A step queued on the device whose figures the host has not read yet (``_launch_step``)."""

    step: int
    lr: float
    queued: bool  # the optimizer step is queued on the device (the skip decided there)
    consumed_samples: int
    figures: _StepFigures
    grad_scale: Tensor | None = None  # the clip folded into a fused optimizer step (``_clip_in_optimizer``)


@dataclass
class TrainProgress:
    """Counters that travel in the checkpoint (identical on every rank)."""

    step: int = 0
    skipped_total: int = 0
    spikes_total: int = 0
    rollbacks: int = 0
    tokens_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in self.__dict__:
            setattr(self, key, int(state[key]))


class RollbackLimit(RuntimeError):
    pass


class Trainer:
    def __init__(self, config: RunConfig, run_dir: str | Path, resume: bool = False, stop_at: int | None = None):
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.stop_at = stop_at
        self._nan_injected = False
        self._spike_injected = False
        self._created = time.perf_counter()

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.train.deterministic:  # before the first cuBLAS handle: the workspace setting is read then
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.dist: DistributedInfo = init_distributed(timeout_s=cfg.train.collective_timeout_s)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = self.dist.device
        self.backend = self.dist.backend
        if cfg.debug.memory_snapshot:  # before the model exists: its parameters are in the record too
            start_memory_history(self.device)
        self.layout: Layout = cfg.layout_for(self.world)
        if cfg.train.float8:
            check_float8(self.device)
        self.rng = RNGState(cfg.train.seed)
        self.rng.reseed(0)

        self.data = open_training_data(cfg, progress=self.rank == 0)
        self.dataset_dir = self.data.source
        self.tokenizer = self.data.tokenizer
        self.tokenizer.check_fits(cfg.model.vocab_size)
        self.val_samples = self.data.val_samples
        if cfg.train.eval_batches and len(self.val_samples) < cfg.train.global_batch:
            # Found now, not at the first evaluation after hours of training.
            raise UserError(f"the held-out split of {self.dataset_dir} has {len(self.val_samples)} samples of "
                            f"{cfg.train.seq_len + 1} tokens, fewer than one evaluation batch of train.global_batch="
                            f"{cfg.train.global_batch}: raise data.val_fraction or lower the batch")

        self.n_micro = self.layout.n_microbatches(cfg.train.global_batch)
        cfg.train.check_cudagraphs(self.device.type, self.layout, self.n_micro)
        self.dims = build_mesh(self.layout, self.backend, self.device)
        self.deepspeed: DeepSpeedRun | None = None
        self.bf16_weights = False  # train.bf16_weights resolved (_setup_native)
        if cfg.engine_options.engine == "deepspeed":
            # Model, ZeRO optimizer (clip and step inside DeepSpeed) and checkpoints are the engine's.
            self.deepspeed = DeepSpeedRun(cfg, self.layout, self.n_micro, self.dist.local_rank)
            self.model = self.step_fn = self.deepspeed
            self.optimizers = []
        else:
            self._setup_native()
        self.rows = local_rows(cfg.train.global_batch, self.n_micro, self.dims.dp_rank, self.layout.dp).numpy()
        self.loader = self.data.loader(self.rows, pin_memory=self.device.type == "cuda")
        self.progress = TrainProgress()
        self._loss_scale = 1.0
        self.n_experts = cfg.model.n_experts if cfg.model.is_moe else 0
        # Row of each MoE block in the per-layer statistics (a pipeline stage fills only its own rows).
        self.moe_layer_ids = cfg.model.moe_layer_indices()
        # Per MoE layer [aux, z, forwards, dropped, counts (E)], summed on the device over the step's
        # micro-batches: the hooks add tensors (no host sync, no graph break under compile) and the
        # step reads them once, in _read_step_values.
        self._moe_stats = torch.zeros(len(self.moe_layer_ids), MOE_STATS_HEAD + self.n_experts,
                                      dtype=torch.float64, device=self.device)
        for chunk in self.model.chunks:
            for name, layer in moe_layers(chunk).items():
                row = self.moe_layer_ids.index(int(re.search(r"layers\.(\d+)", name)[1]))
                layer.register_forward_hook(functools.partial(self._collect_moe_stats, row))
        self.app_state = {"rng": self.rng, "data": self.loader, "progress": self.progress}
        if self.deepspeed is not None:
            self.checkpoints = DeepSpeedCheckpoints(self.run_dir / CHECKPOINT_DIR, self.deepspeed,
                                                    cfg.checkpoint.keep_last, cfg.model)
        else:
            # The checkpoint's own collectives get the same timeout as training's.
            timeout = datetime.timedelta(seconds=cfg.train.collective_timeout_s)
            self.checkpoints = CheckpointManager(
                self.run_dir / CHECKPOINT_DIR, keep_last=cfg.checkpoint.keep_last, async_save=cfg.checkpoint.async_,
                process_group=dist.new_group(backend="gloo", timeout=timeout), model_config=cfg.model,
                compress=cfg.checkpoint.compress)
            self.app_state["model"] = ModelOptimizerState(self.model.chunks, self.optimizers)
        self.flops_per_token = flops_per_token(cfg.model, cfg.train.seq_len)["total"]
        self.peak_flops = self._job_peak_flops()
        self.metrics = None
        if self.rank == 0:
            self._write_run_files()
            self.metrics = MetricsLogger(self.run_dir, cfg.train.steps, cfg.logging.progress,
                                         cfg.logging.tensorboard, cfg.train.log_every)
        self.sample_log = None
        if cfg.debug.record_samples:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            self.sample_log = open(self.run_dir / "samples" / f"rank_{self.rank}.jsonl", "a", buffering=1)  # noqa: SIM115

    def _setup_native(self) -> None:
        cfg = self.cfg
        # Built on meta, laid out, then only this rank's shards are allocated, holding the values one
        # process would initialise (a resume then loads the checkpoint straight into these shards).
        with torch.device("meta"):
            model = Transformer(cfg.model)
        model.loss_chunk_tokens = cfg.train.loss_chunk_tokens
        compute_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}[cfg.train.dtype]
        if compute_dtype == torch.float64:  # master weights too: exact comparisons between layouts
            model.to(torch.float64)
        offloaded = cfg.engine_options.offload == "cpu"  # FSDP2's CPUOffloadPolicy: state in host memory
        # Read by the partitioner when the graphs compile; a process-wide setting, so it is set for every Trainer
        # (a second Trainer in one process must not inherit the first's budget).
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = cfg.train.memory_budget()
        self.model = parallelize(model, self.dims, compute_dtype=compute_dtype,
                                 compile=cfg.train.compile_on(self.device.type, self.layout),
                                 compile_scope=cfg.train.compile_scope, cpu_offload=offloaded,
                                 fsdp_on_one_rank=cfg.engine_options.fsdp_on_one_rank,
                                 compile_mode=cfg.train.compile_mode, fused_projections=cfg.train.fused_projections,
                                 float8=cfg.train.float8)
        materialise(self.model, seed=cfg.train.seed)
        # The debug scale reaches the gradient and the reported loss, as a real bad batch would.
        self.step_fn = make_train_step(self.model, self.n_micro, fused_loss=cfg.train.fused_loss,
                                       loss_scale=lambda: self._loss_scale)
        # One optimizer per model chunk (pipeline ranks with several stages hold several chunks).
        # Offloaded parameters are host tensors, so their optimizer steps on the CPU.
        optimizer_device = "cpu" if offloaded else self.device.type
        self.bf16_weights = cfg.train.bf16_weights_on(self.device.type, self.layout, self.n_micro,
                                                      wrapped=self.model.wrapped)
        if self.bf16_weights:  # bf16 compute weights, fp32 masters updated in one pass (train/master_weights.py)
            self.optimizers = [build_master_weight_optimizer(chunk, cfg.train, compiled=self.device.type != "cpu")
                               for chunk in self.model.chunks]
        else:
            self.optimizers = [build_optimizer([chunk], cfg.train, optimizer_device) for chunk in self.model.chunks]

    def _job_peak_flops(self) -> float:
        """Peak FLOP/s of the devices this job runs on, the denominator of MFU.

        Accelerators: the datasheet figure per device times the ranks.  CPU: rank 0 times a
        matmul with its threads; the host offers that per rank for as many ranks as there are
        cores for their threads (ranks beyond the cores share them, they add no peak).
        """
        if self.device.type != "cpu":
            return self.backend.peak_bf16_flops() * self.world
        box = [self.backend.peak_bf16_flops() if self.rank == 0 else 0.0]
        dist.broadcast_object_list(box, src=0)
        threads = torch.get_num_threads()
        cores = os.cpu_count() or 1
        return box[0] * max(1, min(self.world, cores // threads))

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.run_dir / "config.toml")
        tokenizer_copy = self.run_dir / "tokenizer"
        if not tokenizer_copy.exists():
            self.tokenizer.save(tokenizer_copy)

    # ----------------------------------------------------------------- run
    def run(self) -> int:
        self._setup()
        try:
            return self._train()
        finally:
            if self.cfg.debug.memory_snapshot:
                write_memory_history(self.run_dir / f"memory_snapshot_rank_{self.rank}.pickle")
            self.loader.close()
            self.checkpoints.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.sample_log is not None:
                self.sample_log.close()

    def _train(self) -> int:
        cfg = self.cfg
        start = 0
        loading = time.perf_counter()
        if self.resume:
            # An imported checkpoint (weights only) starts the optimizer and the data afresh.
            start = self.checkpoints.load_latest(
                self.app_state, weights_only_state={"model": ModelOptimizerState(self.model.chunks)}) or 0
        load_s = time.perf_counter() - loading
        if self.metrics is not None:
            self.metrics.event("resume" if start else "start", step=start, world_size=self.world,
                               layout=self.layout.to_dict(), layout_short=self.layout.short(),
                               fsdp_wrapped=self.model.wrapped, engine=cfg.engine_options.engine,
                               bf16_weights=self.bf16_weights,
                               offload=cfg.engine_options.offload,
                               compiled=self.deepspeed is None and cfg.train.compile_on(self.device.type, self.layout),
                               consumed_samples=self.loader.consumed_samples, dataset=str(self.dataset_dir),
                               setup_s=loading - self._created, load_s=load_s)
            where = f"resumed from {CHECKPOINT_DIR}/step_{start:06d}" if start else "starting"
            self.metrics.note(f"{where}: {cfg.model.name} on {self.world} {self.device.type} rank(s), layout "
                              f"{self.layout.short()}, {self.n_micro} micro-batch(es) of {self.layout.mbs} x "
                              f"{cfg.train.seq_len} tokens per rank per step")
        last = min(cfg.train.steps, self.stop_at) if self.stop_at else cfg.train.steps
        losses: list[float] = []
        saved_step = start if start else None
        step_started = time.perf_counter()
        # Step N+1 is launched before step N's figures are read where nothing between the two needs
        # them (see _overlaps): the host then waits for step N while the device already runs N+1.
        pending: _Launched | None = None
        while pending is not None or self.progress.step < last:
            following = (pending.step if pending is not None else self.progress.step) + 1
            launched = None
            if following <= last and (pending is None or self._overlaps(pending.step, last)):
                try:
                    launched = self._launch_step(following)
                except BaseException:
                    if pending is not None:  # the step before the failure keeps its record if it can be read
                        with contextlib.suppress(Exception):  # the device may be what failed: keep the first error
                            self._log_step(self._finish_step(pending, losses), step_started, overlapped=True)
                    raise
            if pending is None:
                pending = launched
                continue
            step, record = pending.step, self._finish_step(pending, losses)
            pending = launched
            if record.get("rollback"):  # never overlapped: a rollback needs the loss before any update
                saved_step = self._rollback(step, record)
                losses.clear()
                step_started = time.perf_counter()
                continue
            step_started = self._log_step(record, step_started, overlapped=launched is not None)
            if self._evaluates_after(step, last):
                self._evaluate(step)
                step_started = time.perf_counter()
            if self._saves_after(step, last):
                self._save(step)
                saved_step = step
                step_started = time.perf_counter()
        if cfg.train.eval_batches and (last == cfg.train.steps or cfg.train.eval_every == 0):
            self._evaluate(last)
        if cfg.checkpoint.enabled and saved_step != last:
            self._save(last)
        self.checkpoints.wait()
        if self.metrics is not None:
            self.metrics.event("end", step=last, skipped_total=self.progress.skipped_total,
                               spikes_total=self.progress.spikes_total, rollbacks=self.progress.rollbacks)
        return 0

    def _log_step(self, record: dict[str, Any], step_started: float, overlapped: bool) -> float:
        """Complete a step's record with its timing and write it (rank 0); returns when the step ended."""
        now = time.perf_counter()
        record["overlapped"] = int(overlapped)
        record["step_time_s"] = now - step_started
        record["tokens_per_s"] = self.cfg.train.global_batch * self.cfg.train.seq_len / record["step_time_s"]
        record["mfu"] = record["tokens_per_s"] * self.flops_per_token / self.peak_flops
        record["time"] = time.time()
        if self.metrics is not None:
            self.metrics.step(record)
        return now

    # ---------------------------------------------------------------- step
    def _evaluates_after(self, step: int, last: int) -> bool:
        train = self.cfg.train
        return bool(train.eval_batches and train.eval_every and step % train.eval_every == 0 and step != last)

    def _saves_after(self, step: int, last: int) -> bool:
        checkpoint = self.cfg.checkpoint
        return bool(checkpoint.enabled and checkpoint.every and step % checkpoint.every == 0 and step != last)

    def _overlaps(self, step: int, last: int) -> bool:
        """Whether step ``step + 1`` may be launched before step ``step``'s figures are read.

        Only where nothing in between needs them: the optimizer step is queued on the device (its
        skip of a non-finite step decided there), no rollback can undo the step, and no evaluation
        or checkpoint follows it (those must see the weights of exactly ``step`` steps).
        """
        return (self.cfg.train.overlap_steps and self.deepspeed is None and self._device_side_skip
                and step < last and not self._evaluates_after(step, last) and not self._saves_after(step, last))

    def _launch_step(self, step: int) -> _Launched:
        """Queue step ``step`` on the device: batch, forward and backward, clipping, the optimizer
        step where it can be queued, and the copy of the step's figures to the host."""
        cfg = self.cfg
        lr = learning_rate(step, cfg.train)
        for optimizer in self.optimizers:
            set_learning_rate(optimizer, lr)
        if self.deepspeed is not None:
            self.deepspeed.set_learning_rate(lr)
        if cfg.debug.fail_at_step == step:
            raise RuntimeError(f"debug.fail_at_step={step}: injected failure at the launch of step {step}")
        self.backend.reset_peak_memory()
        batch = next(self.loader)
        if self.sample_log is not None:
            self.sample_log.write(json.dumps({"step": step, "dp_rank": self.dims.dp_rank,
                                              "sample_ids": batch.sample_ids.tolist(),
                                              "consumed_samples": batch.consumed_samples}) + "\n")
        self._loss_scale = 1.0
        if cfg.debug.nan_at_step == step and not self._nan_injected:
            self._loss_scale, self._nan_injected = float("nan"), True
        if cfg.debug.spike_at_step == step and not self._spike_injected:
            self._loss_scale, self._spike_injected = SPIKE_INJECTION, True
        self._moe_stats.zero_()
        grad_scale = None  # the clip folded into the fused step (_clip_in_optimizer)
        if self.deepspeed is not None:  # clipped and stepped inside DeepSpeed (self.optimizers is empty)
            result, grad_norm = self.deepspeed.step(step, batch.inputs, batch.targets)
            figures = self._queue_step_values(torch.tensor([result.loss, grad_norm, result.tokens],
                                                           dtype=torch.float64, device=self.device))
            queued = False
        else:
            # Nothing here waits for the device: the step's figures are read once, in _finish_step,
            # with the optimizer step already queued behind the backward where it can be.
            loss_t, tokens_t = self.step_fn.launch(batch.inputs, batch.targets)
            if self._clip_in_optimizer:
                norm_t = global_grad_norm(self.model.parameters(), self.dims)
                grad_scale = clip_divisor(norm_t, cfg.train.clip)
            else:
                norm_t = clip_grad_norm_(self.model.parameters(), cfg.train.clip or float("inf"), self.dims)
            queued = self._device_side_skip
            if queued:
                self._queue_optimizer_step(loss_t, norm_t, grad_scale)
                self._zero_grad()  # the next launch's backward must start from no gradients
            figures = self._queue_step_values(torch.stack([t.to(self.device, torch.float64)
                                                           for t in (loss_t, norm_t, tokens_t)]))
        self._loss_scale = 1.0
        return _Launched(step, lr, queued, self.loader.consumed_samples, figures,
                         None if queued else grad_scale)

    def _finish_step(self, launched: _Launched, recent_losses: list[float]) -> dict[str, Any]:
        """Read step ``launched.step``'s figures (the step's one wait for the device), take the host's
        decisions (count a skip or a spike, roll back, step an optimizer that could not be queued)
        and return the step's record."""
        cfg, step = self.cfg, launched.step
        reduced = self._read_step_values(launched.figures)
        loss, grad_norm, tokens = reduced["step"][0], reduced["step"][1], int(reduced["step"][2])
        # The step's loss is the global mean, identical on every rank: every rank decides alike.
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        spike = False
        if finite and cfg.train.loss_spike_factor and len(recent_losses) >= cfg.train.loss_spike_window:
            mean = sum(recent_losses[-cfg.train.loss_spike_window:]) / cfg.train.loss_spike_window
            spike = loss > cfg.train.loss_spike_factor * mean
        record: dict[str, Any] = {"step": step, "loss": loss, "lr": launched.lr, "grad_norm": grad_norm}
        if spike:
            self.progress.spikes_total += 1
            if cfg.train.loss_spike_rollback and self._has_checkpoint():
                self._zero_grad()
                return {**record, "rollback": True}
        skipped = not finite and cfg.train.skip_nonfinite
        if skipped:
            self.progress.skipped_total += 1
        else:
            if not launched.queued:
                self._step_optimizers(None, launched.grad_scale)
            recent_losses.append(loss)
        if not launched.queued:
            self._zero_grad()
        self.progress.step = step
        self.progress.tokens_seen += tokens
        record.update({
            "mem_gib": reduced["mem_bytes"] / 2**30,
            "aux_loss": reduced.get("aux_loss"), "z_loss": reduced.get("z_loss"),
            "expert_load": reduced.get("expert_load"), "dropped_fraction": reduced.get("dropped_fraction"),
            "expert_load_per_layer": reduced.get("expert_load_per_layer"),
            "dropped_fraction_per_layer": reduced.get("dropped_fraction_per_layer"),
            "skipped": int(skipped), "skipped_total": self.progress.skipped_total, "spike": int(spike),
            "consumed_samples": launched.consumed_samples,
        })
        return record

    @functools.cached_property
    def _device_side_skip(self) -> bool:
        """Whether the optimizer step can be queued before the host has seen the step's loss and norm.

        Fused AdamW takes a ``found_inf`` tensor and leaves parameters, moments and step count
        untouched where it is nonzero: the skip of a non-finite step is then decided on the device,
        exactly as the host-side skip decides it.  A spike rollback must see the loss before any
        update, and the foreach / single-tensor kernels take no ``found_inf``: those steps wait.
        """
        train = self.cfg.train
        if train.loss_spike_factor and train.loss_spike_rollback:
            return False
        return self._fused_optimizers

    @functools.cached_property
    def _fused_optimizers(self) -> bool:
        """Whether there are optimizers and every one runs torch's fused kernel or another step that reads
        ``found_inf`` and ``grad_scale`` as it does (``MasterWeightAdamW``)."""
        return bool(self.optimizers) and all(o.defaults.get("fused") or getattr(o, "takes_found_inf", False)
                                             for o in self.optimizers)

    @functools.cached_property
    def _clip_in_optimizer(self) -> bool:
        """Whether the clip is folded into the optimizer step (``train.clip_in_optimizer``): every optimizer
        fused (torch's fused Adam/AdamW divide the gradients by ``grad_scale``), clipping on, and float32
        master gradients (the kernels read a float32 factor; fp64 runs keep the exact separate clip)."""
        train = self.cfg.train
        return train.clip_in_optimizer and bool(train.clip) and train.dtype != "fp64" and self._fused_optimizers

    def _queue_optimizer_step(self, loss: Tensor, grad_norm: Tensor, grad_scale: Tensor | None) -> None:
        found_inf = None
        if self.cfg.train.skip_nonfinite:
            finite = torch.isfinite(loss.to(grad_norm.device)) & torch.isfinite(grad_norm)
            found_inf = (~finite).to(torch.float32)
        self._step_optimizers(found_inf, grad_scale)

    def _step_optimizers(self, found_inf: Tensor | None, grad_scale: Tensor | None) -> None:
        """Step every optimizer; a fused one reads ``found_inf`` (nonzero: leave everything untouched) and
        ``grad_scale`` (divide the gradients by it: the folded clip) from its attributes."""
        for optimizer in self.optimizers:
            if found_inf is None and grad_scale is None:
                optimizer.step()
                continue
            device = optimizer.param_groups[0]["params"][0].device
            optimizer.found_inf = None if found_inf is None else found_inf.to(device)
            optimizer.grad_scale = None if grad_scale is None else grad_scale.to(device)
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf, optimizer.grad_scale

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _collect_moe_stats(self, row: int, layer: torch.nn.Module, _inputs: Any, _output: Any) -> None:
        """Forward hook of MoE layer ``row``: its routing figures of each training micro-batch."""
        if not layer.training or layer.aux_loss is None or layer.inferring_shapes:  # not a micro-batch of the step
            return
        figures = torch.stack([layer.aux_loss, layer.z_loss, torch.ones_like(layer.aux_loss),
                               layer.dropped_tokens.to(layer.aux_loss.dtype)])
        self._moe_stats[row] += torch.cat([figures, layer.tokens_per_expert.to(figures.dtype)]).to(torch.float64)

    def _queue_step_values(self, step_values: Tensor) -> _StepFigures:
        """One SUM all-reduce of the per-layer [aux, z, forwards, dropped, counts...] and one MAX of memory,
        queued with one copy to the host together with ``step_values`` (float64 on the device, already
        reduced; read back as the list ``out["step"]``).  Nothing here waits: ``_read_step_values``
        does, once per step.

        MoE figures are summed over every layer forward of every rank: each rank routes its own
        tokens (data, sequence shards), and every layer is counted by the same number of ranks,
        so the shares are those of all tokens of the step.
        """
        packed = self._moe_stats.clone()
        # torch.full fills on the device: a host tensor copied in (torch.tensor(..., device=)) would
        # wait for the whole queued step before the copy.  The allocator's peak is host-side
        # bookkeeping of what was queued so far, so it is this step's peak even before the step ran.
        memory = torch.full((1,), float(self.backend.max_memory_allocated()), dtype=torch.float64,
                            device=self.device)
        if packed.numel():  # a dense model has no rows
            dist.all_reduce(packed)
        dist.all_reduce(memory, op=dist.ReduceOp.MAX)
        on_device = self.device.type != "cpu"
        # non_blocking: the copy lands in pinned memory behind the queued step; the event says when.
        host = torch.cat([packed.flatten(), memory, step_values]).to("cpu", non_blocking=on_device)
        done = None
        if on_device:
            done = torch.Event(device=self.device)
            done.record()
        return _StepFigures(host, done, tuple(packed.shape))

    def _read_step_values(self, figures: _StepFigures) -> dict[str, Any]:
        """Wait for a step's queued figures (the step's only wait for the device) and unpack them."""
        if figures.done is not None:
            figures.done.synchronize()
        host, rows = figures.host, figures.moe_shape[0] * figures.moe_shape[1]
        per_layer = host[:rows].view(figures.moe_shape)
        out: dict[str, Any] = {"mem_bytes": float(host[rows]), "step": host[rows + 1:].tolist()}
        aux, z, forwards = (float(per_layer[:, i].sum()) for i in range(3))
        if forwards:
            dropped, counts = per_layer[:, 3], per_layer[:, MOE_STATS_HEAD:]
            routed = counts.sum(dim=1).clamp(min=1.0)
            out.update(aux_loss=aux / forwards, z_loss=z / forwards,
                       expert_load=[round(float(c) / float(routed.sum()), 6) for c in counts.sum(dim=0)],
                       dropped_fraction=float(dropped.sum() / routed.sum()),
                       expert_load_per_layer={str(i): [round(float(c), 6) for c in row]
                                              for i, row in zip(self.moe_layer_ids, counts / routed[:, None])},
                       dropped_fraction_per_layer={str(i): float(d) for i, d in
                                                   zip(self.moe_layer_ids, dropped / routed)})
        return out

    def _has_checkpoint(self) -> bool:
        self.checkpoints.wait()
        return (self.run_dir / CHECKPOINT_DIR / "latest").is_file()

    def _rollback(self, step: int, record: dict[str, Any]) -> int:
        """Reload weights, optimizer and counters of the last checkpoint but keep the data position,
        so the batches that led to the spike are not replayed."""
        self.progress.rollbacks += 1
        rollbacks = self.progress.rollbacks
        if rollbacks > self.cfg.train.max_rollbacks:
            raise RollbackLimit(f"the loss spiked at step {step} after {rollbacks - 1} rollbacks "
                                f"(train.max_rollbacks={self.cfg.train.max_rollbacks}); stopping")
        consumed = self.loader.consumed_samples
        spikes = self.progress.spikes_total
        state = {k: v for k, v in self.app_state.items() if k != "data"}
        restored = self.checkpoints.load_latest(state)
        self.progress.rollbacks, self.progress.spikes_total = rollbacks, spikes
        if self.metrics is not None:
            self.metrics.event("rollback", step=step, to_step=restored, loss=record["loss"],
                               consumed_samples=consumed)
            self.metrics.note(f"loss spike at step {step} ({record['loss']:.4f}): rolled back to step {restored}, "
                              f"data continues after the spike")
        return restored

    # ----------------------------------------------------------- eval/save
    def _evaluate(self, step: int) -> None:
        cfg = self.cfg
        self.model.eval()
        loss_sum, tokens = 0.0, 0
        started = time.perf_counter()
        for batch in eval_batches(self.val_samples, cfg.train.global_batch, self.rows, cfg.train.eval_batches):
            batch_sum, batch_tokens = self.step_fn.evaluate(batch.inputs, batch.targets)
            loss_sum, tokens = loss_sum + batch_sum, tokens + batch_tokens
        self.model.train()
        loss = loss_sum / tokens
        if self.metrics is not None:
            self.metrics.eval({"step": step, "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                               "tokens": tokens, "eval_time_s": time.perf_counter() - started, "time": time.time()})

    def _save(self, step: int) -> None:
        extra = {"config": self.cfg.to_dict(), "layout": self.layout.to_dict(),
                 "consumed_samples": self.loader.consumed_samples, "dataset": str(self.dataset_dir)}
        started = time.perf_counter()
        self.checkpoints.save(step, self.app_state, _json_clean(extra))
        if self.metrics is not None:
            self.metrics.event("checkpoint", step=step, blocking_s=time.perf_counter() - started,
                               path=str(self.run_dir / CHECKPOINT_DIR))


def _json_clean(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


__all__ = ["RollbackLimit", "TrainProgress", "Trainer"]
