"""Sharded, asynchronous, atomic and verified checkpoints (torch.distributed.checkpoint underneath).

Typical use in a trainer (every call on every rank)::

    manager = CheckpointManager(run_dir / "checkpoints", keep_last=3, async_save=True, model_config=cfg)
    app_state = {"model": ModelOptimizerState(model_chunks, optimizers), "scheduler": scheduler,
                 "rng": RNGState(seed), "sampler": sampler, "counters": counters}
    start = manager.load_latest(app_state) or 0
    ...
    manager.save(step, app_state, {"config": resolved_config, "layout": layout.to_dict()})
    ...
    manager.close()

See docs/checkpoints.md for the layout on disk and what is restored on a world-size change.
"""
from .files import ManifestError, read_manifest, resolve_checkpoint
from .manager import CheckpointManager
from .state import ModelOptimizerState, RNGState

__all__ = ["CheckpointManager", "ManifestError", "ModelOptimizerState", "RNGState", "read_manifest",
           "resolve_checkpoint"]
