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

The names below are imported on first use (PEP 562): ``alphaexa.checkpoint.files`` (paths and manifests, no torch)
is what a process that only inspects a run directory needs (the parent of ``alphaexa train --nproc``, before it
starts the ranks), and the manager's torch.distributed.checkpoint costs over a second on two cores.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .files import ManifestError, read_manifest, resolve_checkpoint
    from .manager import CheckpointManager
    from .state import ModelOptimizerState, RNGState

_EXPORTS = {"ManifestError": ".files", "read_manifest": ".files", "resolve_checkpoint": ".files",
            "CheckpointManager": ".manager", "ModelOptimizerState": ".state", "RNGState": ".state"}
__all__ = ["CheckpointManager", "ManifestError", "ModelOptimizerState", "RNGState", "read_manifest",
           "resolve_checkpoint"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
