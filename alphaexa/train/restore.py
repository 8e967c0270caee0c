"""Load a trained model from a training checkpoint into one process (for ``alphaexa generate``).

A checkpoint saved by any number of ranks and any layout loads here: DCP reassembles the
full tensors.  The model config comes from the checkpoint's manifest and the tokenizer
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
    if not manifest.get("model"):
        raise UserError(f"checkpoint {checkpoint} records no model config; pass --model")
    cfg = ModelConfig.from_dict(manifest["model"], where=f"{checkpoint / MANIFEST_NAME} model")
    model = build_model(cfg, device=device)
    manager = CheckpointManager(checkpoint.parent, model_config=cfg)
    step = manager.load(checkpoint, {"model": ModelOptimizerState(model)})
    manager.close()
    return TrainedModel(model.eval(), cfg, _run_tokenizer(checkpoint, manifest), step, checkpoint)


def _run_tokenizer(checkpoint: Path, manifest: dict) -> Tokenizer | None:
    candidates = [checkpoint.parent.parent / "tokenizer"]
    if manifest.get("dataset"):
        candidates.append(Path(manifest["dataset"]) / "tokenizer")
    for candidate in candidates:
        if candidate.is_dir():
            return load_tokenizer(candidate)
    return None
