"""Checks that run before any process group, spawn or tokenization: each failure is one line.

``preflight`` validates the config against the world size (layout), the data inputs, the
logging options and the run directory: a fresh run may not reuse a directory holding
checkpoints, and ``--resume`` needs the newest complete checkpoint to be of this model.
The layout check is ``alphaexa.parallel.check_layout``'s (``topology.support``: which rules this
implementation adds, e.g. no context parallelism on CPU), called without importing ``alphaexa.parallel``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topology.layout import Layout
from topology.modelcfg import ModelConfig

from ..errors import UserError
from .config import RunConfig
from .dataset import check_data_inputs
from .metrics import tensorboard_available

CHECKPOINT_DIR = "checkpoints"
# ModelConfig fields that decide whether saved weights fit a model (the rest, such as loss
# coefficients, capacity or the name, may change between runs).  Mirrors the checkpoint
# manager's check, which repeats it on load.
ARCHITECTURE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "ffn_type",
                       "vocab_size", "pos_encoding", "norm", "moe_layers", "n_experts", "moe_d_ff",
                       "n_shared_experts", "tie_embeddings", "tokenizer")


@dataclass
class Preflight:
    layout: Layout
    resume_from: Path | None  # the checkpoint a --resume will start from (None: a fresh start)
    resume_manifest: dict[str, Any] | None


def check_deepspeed_options(cfg: RunConfig) -> None:
    """One-line UserError for a trainer option the DeepSpeed engine has no counterpart for (config only)."""
    refused = {
        "train.dtype=fp64": cfg.train.dtype == "fp64",
        "train.compile=true": cfg.train.compile is True,
        "train.loss_spike_rollback=true": cfg.train.loss_spike_factor > 0 and cfg.train.loss_spike_rollback,
        f"debug.nan_at_step={cfg.debug.nan_at_step}": cfg.debug.nan_at_step > 0,
        f"debug.spike_at_step={cfg.debug.spike_at_step}": cfg.debug.spike_at_step > 0,
    }
    for setting, configured in refused.items():
        if configured:
            raise UserError(f"{setting} is not available with parallel.engine=deepspeed (native engine only)")


def preflight(cfg: RunConfig, world: int, run_dir: Path, resume: bool) -> Preflight:
    from backends.device import get_backend
    from topology.support import check_supported

    layout = cfg.layout_for(world)
    device_type = get_backend().device_type
    engine = cfg.engine_options.engine
    # alphaexa.parallel.check_layout's rules, without importing alphaexa.parallel (DTensor, FSDP: over a second on
    # two cores, which the parent of an --nproc run would spend before it starts the ranks).
    check_supported(layout, cfg.model, device_type, compile=engine == "native" and cfg.train.compile_on(device_type, layout),
                    engine=engine, offload=cfg.engine_options.offload)
    if cfg.debug.memory_snapshot and device_type != "cuda":  # the trainer's own check, without its imports
        raise UserError(f"debug.memory_snapshot=true records the CUDA caching allocator; this run's device "
                        f"is {device_type}: turn it off, or run on a CUDA device")
    if engine == "deepspeed":
        check_deepspeed_options(cfg)  # before .deepspeed_run, which imports torch and DeepSpeed (seconds)
        from .deepspeed_run import check_deepspeed_run

        check_deepspeed_run(cfg, layout, device_type)
    check_data_inputs(cfg.data, cfg.model)
    if cfg.logging.tensorboard and not tensorboard_available():
        raise UserError("logging.tensorboard=true needs the tensorboard package (pip install tensorboard)")
    root = run_dir / CHECKPOINT_DIR
    checkpoint, manifest = newest_checkpoint(root)
    if not resume:
        if checkpoint is not None or (run_dir / "metrics.jsonl").exists():
            raise UserError(f"run directory {run_dir} already holds a run; pass --resume to continue it "
                            f"or choose another --run-dir")
        return Preflight(layout, None, None)
    if checkpoint is not None:
        check_same_model(checkpoint, manifest, cfg.model)
        check_same_engine(checkpoint, manifest, engine)
        check_offload_resume(cfg, checkpoint, manifest)
    return Preflight(layout, checkpoint, manifest)


def check_same_engine(checkpoint: Path, manifest: dict[str, Any], engine: str) -> None:
    """Each engine resumes its own checkpoints (DCP shards vs DeepSpeed's ZeRO files); an imported
    weights-only checkpoint starts either."""
    from ..checkpoint.manager import WEIGHTS_ONLY_KEY

    saved = manifest.get("engine", "native")
    if saved != engine and not manifest.get(WEIGHTS_ONLY_KEY):
        raise UserError(f"checkpoint {checkpoint} was written by the {saved} engine; resume it with "
                        f"parallel.engine={saved}")


def check_offload_resume(cfg: RunConfig, checkpoint: Path, manifest: dict[str, Any]) -> None:
    """A DeepSpeed checkpoint resumes with parallel.offload=nvme exactly (``parallel/deepspeed_resume.py``
    restores what DeepSpeed 0.19.8's NVMe load drops) when it was written with offload=nvme; one line for
    the two combinations DeepSpeed's own load cannot do.

    * Written without NVMe (no ``zero/offloaded_tensors``): DeepSpeed's NVMe load copies that folder
      into the swap directory and stops on its absence (FileNotFoundError).
    * Written with optimizer sub-groups swapped to NVMe (their master weights and moments are only in
      ``zero/offloaded_tensors``; the ``*_optim_states.pt`` holds empty tensors for them), resumed with
      offload=cpu or none: DeepSpeed's load copies those empty tensors and stops ("The size of tensor
      a (N) must match the size of tensor b (0)").  A checkpoint whose sub-groups all stayed in host
      memory (each under DeepSpeed's 1 MiB swap minimum) loads exactly with any offload.
    """
    from ..checkpoint.manager import WEIGHTS_ONLY_KEY
    from .deepspeed_run import ENGINE, ENGINE_TAG

    if cfg.engine_options.engine != ENGINE or manifest.get("engine") != ENGINE or manifest.get(WEIGHTS_ONLY_KEY):
        return
    offloaded = checkpoint / ENGINE_TAG / "offloaded_tensors"
    offload = cfg.engine_options.offload
    if offload == "nvme" and not offloaded.is_dir():
        raise UserError(f"checkpoint {checkpoint} was written without parallel.offload=nvme (it has no "
                        f"{ENGINE_TAG}/offloaded_tensors, which DeepSpeed's NVMe load reads); resume it with "
                        "the parallel.offload it was written with")
    swapped = [p for p in offloaded.rglob("*.tensor.swp") if "_gradient_" not in p.name] if offloaded.is_dir() else []
    if offload != "nvme" and swapped:
        raise UserError(f"checkpoint {checkpoint} holds optimizer state swapped to NVMe ({len(swapped)} files "
                        f"under {ENGINE_TAG}/offloaded_tensors), which DeepSpeed loads only into an optimizer "
                        f"that swaps too; resume it with --set parallel.offload=nvme, not {offload}")


def newest_checkpoint(root: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint with a readable manifest (checksums are verified when it is loaded)."""
    from ..checkpoint.files import ManifestError, candidate_dirs, read_manifest

    for candidate in candidate_dirs(root):
        try:
            return candidate, read_manifest(candidate)
        except ManifestError:
            continue
    return None, None


def _architecture(cfg: ModelConfig, name: str) -> Any:
    return cfg.moe_layer_indices() if name == "moe_layers" else getattr(cfg, name)


def check_same_model(checkpoint: Path, manifest: dict[str, Any], model: ModelConfig) -> None:
    saved_dict = manifest.get("model")
    if saved_dict is None:
        return
    try:
        saved = ModelConfig.from_dict(saved_dict)
    except Exception as e:  # noqa: BLE001 - any unreadable model config is reported in one line
        raise UserError(f"checkpoint {checkpoint}: its model config is not usable ({e})") from None
    for name in ARCHITECTURE_FIELDS:
        there, here = _architecture(saved, name), _architecture(model, name)
        if there != here:
            raise UserError(f"checkpoint {checkpoint} is from a different model: model.{name} is {there!r} there, "
                            f"{here!r} here")
