"""Load a trained model from a training checkpoint into one process (for ``alphaexa generate``).

A checkpoint saved by any number of ranks and any layout loads here: DCP reads each tensor
straight into the allocated (never randomly initialised) model, so one copy of the weights
exists.  The model config comes from the checkpoint's manifest and the tokenizer
from the run directory (``RUN_DIR/tokenizer``, copied there when the run started), so a
run directory alone is enough to generate from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from topology.modelcfg import ModelConfig

from ..checkpoint import CheckpointManager, ModelOptimizerState
from ..checkpoint.files import MANIFEST_NAME, ManifestError, read_manifest
from ..checkpoint.manager import WEIGHTS_ONLY_KEY
from ..data import Tokenizer, load_tokenizer
from ..errors import UserError
from ..model import Transformer, build_model
from .preflight import CHECKPOINT_DIR, newest_checkpoint


@dataclass
class TrainedModel:
    model: Transformer
    config: ModelConfig
    tokenizer: Tokenizer | None
    step: int
    checkpoint: Path
    tokenizer_dir: Path | None = None


def is_training_checkpoint(path: str | Path) -> bool:
    """A run directory, a checkpoint root or one checkpoint directory written by the trainer."""
    p = Path(path)
    return p.is_dir() and any((q / MANIFEST_NAME).is_file() or (q / "latest").is_file()
                              for q in (p, p / CHECKPOINT_DIR))


def _locate(path: Path) -> Path:
    if (path / MANIFEST_NAME).is_file():
        return path
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    checkpoint, _ = newest_checkpoint(root)
    if checkpoint is None:
        raise UserError(f"{path} holds no complete checkpoint")
    return checkpoint


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """The weights of the checkpoint at ``path`` (newest good one for a run directory or root), in eval mode."""
    checkpoint = _locate(Path(path))
    try:
        manifest = read_manifest(checkpoint)
    except ManifestError as e:
        raise UserError(f"checkpoint {checkpoint}: {e}") from None
    if manifest.get("engine") == "deepspeed":
        raise UserError(f"checkpoint {checkpoint} holds DeepSpeed ZeRO files, which only `alphaexa train "
                        f"--resume` reads (its zero_to_fp32.py writes a plain state dict from them)")
    if not manifest.get("model"):
        raise UserError(f"checkpoint {checkpoint} records no model config; pass --model")
    cfg = ModelConfig.from_dict(manifest["model"], where=f"{checkpoint / MANIFEST_NAME} model")
    model = build_model(cfg, device=device, seed=None)  # allocated only: the checkpoint fills every weight
    manager = CheckpointManager(checkpoint.parent, model_config=cfg)
    step = manager.load(checkpoint, {"model": ModelOptimizerState(model)})
    manager.close()
    tokenizer_dir = _run_tokenizer_dir(checkpoint, manifest)
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    return TrainedModel(model.eval(), cfg, tokenizer, step, checkpoint, tokenizer_dir)


def _run_tokenizer_dir(checkpoint: Path, manifest: dict) -> Path | None:
    candidates = [checkpoint.parent.parent / "tokenizer"]
    if manifest.get("dataset"):
        candidates.append(Path(manifest["dataset"]) / "tokenizer")
    return next((c for c in candidates if c.is_dir()), None)


def import_hf_dir(source: Path, run_dir: Path, name: str | None = None) -> Path:
    """A run directory made from a Hugging Face model directory: a weights-only checkpoint of step 0
    (which ``--resume`` starts from with a fresh optimizer), the tokenizer and a config.toml."""
    from ..checkpoint.huggingface import from_hf_state, model_config_from_hf, read_hf_dir, tokenizer_source
    from .config import RunConfig

    if (run_dir / CHECKPOINT_DIR).exists():
        raise UserError(f"{run_dir} already holds checkpoints; import into a new --run-dir")
    config, tensors = read_hf_dir(source)
    tokenizer_file = tokenizer_source(source)
    tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file is not None else None
    cfg = model_config_from_hf(config, name or source.resolve().name,
                               tokenizer.kind if tokenizer is not None else "sentencepiece")
    if tokenizer is not None:
        tokenizer.check_fits(cfg.vocab_size)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(from_hf_state(cfg, tensors), strict=False)
    if missing or unexpected:
        raise UserError(f"{source}: weights do not fit the model of its config.json "
                        f"({'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]})")
    run = RunConfig(model=cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(run_dir / "tokenizer")
        run.data.tokenizer = str((run_dir / "tokenizer").resolve())
    run.save(run_dir / "config.toml")
    with CheckpointManager(run_dir / CHECKPOINT_DIR, keep_last=None, model_config=cfg) as manager:
        manager.save(0, {"model": ModelOptimizerState(model)},
                     {WEIGHTS_ONLY_KEY: True, "imported_from": str(source.resolve())})
    return run_dir / CHECKPOINT_DIR / "step_000000"
