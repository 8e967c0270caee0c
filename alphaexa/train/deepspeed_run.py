"""``parallel.engine = "deepspeed"`` inside the trainer: the model, its step, evaluation and checkpoints.

The step is ``alphaexa.parallel.deepspeed_engine.DeepSpeedTrainStep`` (ZeRO 0-3, ZeRO-Offload to
host memory, ZeRO-Infinity to NVMe); this module adapts it to the trainer's loop.  Gradient
clipping and the optimizer step happen inside DeepSpeed at the end of the step's micro-batches,
so a step cannot be skipped after the fact: a non-finite loss or gradient norm ends the run in
one line (resume from the last checkpoint), whatever ``train.skip_nonfinite`` says.  What the
engine cannot do is refused by ``check_deepspeed_run`` before any work.

Checkpoints are DeepSpeed's own (``save_checkpoint``: each rank's ZeRO partitions, with the NVMe
swap files of the optimizer state copied in; a resume into an optimizer that swaps to NVMe is
completed by ``parallel/deepspeed_resume.py``) in the native manager's directory scheme: written into
``step_N.tmp/``, with each rank's trainer state (data position, RNG, counters) beside them, then
rank 0 writes the manifest, renames the directory into place, repoints ``latest`` and drops the
checkpoints beyond ``checkpoint.keep_last``.  A resume needs the same world size.
"""
from __future__ import annotations

import datetime
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import alphaexa
from topology.layout import Layout

from ..checkpoint import CheckpointManager
from ..checkpoint.files import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    TMP_SUFFIX,
    ManifestError,
    candidate_dirs,
    publish,
    read_manifest,
    remove_leftovers,
    step_dir_name,
)
from ..checkpoint.manager import WEIGHTS_ONLY_KEY
from ..errors import UserError
from ..model import build_model
from ..parallel.deepspeed_engine import DeepSpeedOptions, DeepSpeedTrainStep, check_deepspeed_layout
from ..parallel.deepspeed_ops import check_buildable, required_ops
from ..parallel.deepspeed_resume import restore_swapped_optimizer, swaps_optimizer
from ..parallel.train_step import IGNORE_INDEX, StepResult, summed_cross_entropy
from .config import RunConfig
from .optim import learning_rate, parameter_groups

ENGINE = "deepspeed"
ENGINE_TAG = "zero"  # DeepSpeed's tag directory inside a checkpoint directory
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def deepspeed_options(cfg: RunConfig) -> DeepSpeedOptions:
    offload = None if cfg.engine_options.offload == "none" else cfg.engine_options.offload
    return DeepSpeedOptions(offload_optimizer=offload, offload_params=offload,
                            nvme_path=cfg.engine_options.nvme_path or None, max_norm=cfg.train.clip,
                            lr=learning_rate(1, cfg.train), weight_decay=cfg.train.weight_decay,
                            betas=tuple(cfg.train.betas), eps=cfg.train.eps)


def check_deepspeed_run(cfg: RunConfig, layout: Layout, device_type: str) -> None:
    """One-line UserError for what the DeepSpeed engine cannot run; before any process group or data.

    The layout rules are ``topology.support``'s (checked by preflight's ``check_layout``); here
    the trainer options it has no counterpart for, DeepSpeed's own layout and offload checks
    (a writable ``nvme_path``), and whether the C++ ops it needs can be built (libaio).
    """
    from .preflight import check_deepspeed_options

    # The checks that need no DeepSpeed first: its import takes seconds.
    check_deepspeed_options(cfg)
    check_deepspeed_layout(layout, deepspeed_options(cfg))
    # DeepSpeed picks its accelerator once, at the first use; the one this run's backend chose.
    os.environ.setdefault("DS_ACCELERATOR", device_type)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UserError("parallel.engine=deepspeed needs the deepspeed package (pip install 'alphaexa[deepspeed]')") \
            from None
    offload = None if cfg.engine_options.offload == "none" else cfg.engine_options.offload
    check_buildable(required_ops(offload_optimizer=offload, offload_params=offload, device_type=device_type))


class DeepSpeedRun:
    """This rank's DeepSpeed engine, shaped like what the trainer uses of the native one."""

    wrapped = True

    def __init__(self, cfg: RunConfig, layout: Layout, n_microbatches: int, local_rank: int):
        # DeepSpeed insists on LOCAL_RANK, which a one-process run or an MPI launcher may not set.
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        model = build_model(cfg.model, seed=cfg.train.seed)  # the weights one native process initialises
        model.loss_chunk_tokens = cfg.train.loss_chunk_tokens  # where its step uses the fused loss
        self.step_fn = DeepSpeedTrainStep(model, layout, deepspeed_options(cfg), n_microbatches=n_microbatches,
                                          compute_dtype=DTYPES[cfg.train.dtype],
                                          parameters=parameter_groups([model], cfg.train.weight_decay))
        self.engine = self.step_fn.engine
        self.chunks = [self.engine.module]
        self.n_microbatches = n_microbatches

    def set_learning_rate(self, lr: float) -> None:
        for group in self.step_fn.optimizer.param_groups:
            group["lr"] = lr

    def step(self, step: int, inputs: Tensor, targets: Tensor) -> tuple[StepResult, float]:
        """Forward, backward, clip and optimizer step of one global batch; (result, gradient norm)."""
        result = self.step_fn(inputs, targets)
        grad_norm = self.step_fn.last_grad_norm
        if not (math.isfinite(result.loss) and math.isfinite(grad_norm)):
            raise UserError(f"step {step}: loss {result.loss} / gradient norm {grad_norm} is not finite and the "
                            "DeepSpeed engine has already applied the update (it cannot skip a step); resume "
                            "from the last checkpoint, e.g. with a lower train.lr")
        return result, grad_norm

    def evaluate(self, inputs: Tensor, targets: Tensor) -> tuple[float, int]:
        """(summed token cross-entropy, target tokens) of the global batch, forward only."""
        device = self.engine.device
        inputs, targets = inputs.to(device), targets.to(device)
        count = (targets != IGNORE_INDEX).sum().to(torch.float64)
        dist.all_reduce(count)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        with torch.no_grad():
            for x, y in zip(inputs.chunk(self.n_microbatches), targets.chunk(self.n_microbatches)):
                loss_sum += summed_cross_entropy(self.engine(x), y).to(torch.float64)
        dist.all_reduce(loss_sum)
        return float(loss_sum), int(count)

    def train(self) -> None:
        self.engine.module.train()

    def eval(self) -> None:
        self.engine.module.eval()


class DeepSpeedCheckpoints:
    """The trainer's checkpoint manager for the DeepSpeed engine (``save`` / ``load_latest`` / ``wait``).

    ``app_state``: the trainer's own stateful parts (data, RNG, progress); the model and the
    optimizer are the engine's and travel in DeepSpeed's files.
    """

    def __init__(self, root: Path, run: DeepSpeedRun, keep_last: int, model_config: Any):
        self.root, self.run, self.keep_last, self.model_config = root, run, keep_last, model_config
        self.engine = run.engine
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def save(self, step: int, app_state: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        tmp = self.root / f"{step_dir_name(step)}{TMP_SUFFIX}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.root)
        dist.barrier()
        self.engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
        torch.save({name: part.state_dict() for name, part in app_state.items()}, tmp / _trainer_file(self.rank))
        dist.barrier()  # every rank's files are written
        if self.rank == 0:
            self._publish(step, tmp, dict(extra))
        dist.barrier()

    def _publish(self, step: int, tmp: Path, extra: dict[str, Any]) -> None:
        files = {str(p.relative_to(tmp)): {"size": p.stat().st_size} for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": step, "engine": ENGINE,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "world_size": self.world, "torch_version": torch.__version__, "alphaexa_version": alphaexa.__version__,
            "model": self.model_config.to_dict(), "files": files, **extra,
        }
        publish(self.root, tmp, step, manifest, self.keep_last)

    def load_latest(self, app_state: Mapping[str, Any], weights_only_state: Any = None) -> int | None:
        """Load the newest complete checkpoint (None when there is none); one-line UserError when it
        is not one this engine and world size can resume."""
        for path in candidate_dirs(self.root):
            try:
                manifest = read_manifest(path)
            except ManifestError:
                continue
            if manifest.get(WEIGHTS_ONLY_KEY):  # an imported model: its weights, a fresh optimizer and data
                return self.run.step_fn.load_weights(CheckpointManager(self.root, keep_last=None), path)
            if manifest.get("engine") != ENGINE:
                raise UserError(f"checkpoint {path} was written by the native engine; parallel.engine=deepspeed "
                                "resumes only its own checkpoints")
            if manifest["world_size"] != self.world:
                raise UserError(f"checkpoint {path} was written by {manifest['world_size']} ranks; the DeepSpeed "
                                f"engine resumes it on as many, not {self.world}")
            loaded, _ = self.engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_optimizer_states=True,
                                                    load_lr_scheduler_states=False)
            if loaded is None:
                raise UserError(f"checkpoint {path}: DeepSpeed found no checkpoint under {path / ENGINE_TAG}")
            if swaps_optimizer(self.engine):  # what DeepSpeed 0.19.8's NVMe load drops (deepspeed_resume)
                restore_swapped_optimizer(self.engine, path, ENGINE_TAG)
            state = torch.load(path / _trainer_file(self.rank), weights_only=False)
            for name, part in app_state.items():
                part.load_state_dict(state[name])
            return int(manifest["step"])
        return None

    def wait(self) -> None:
        """Saves are synchronous: nothing to wait for."""

    def close(self) -> None:
        """Nothing is held open between saves."""


def _trainer_file(rank: int) -> str:
    return f"trainer_state_rank{rank:05d}.pt"


__all__ = ["DeepSpeedCheckpoints", "DeepSpeedRun", "check_deepspeed_run", "deepspeed_options"]
