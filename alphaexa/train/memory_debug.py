"""``debug.memory_snapshot``: the CUDA caching allocator's record of every allocation in a run.

torch.cuda.memory._record_memory_history keeps each allocation and free with its Python and C++
stack; _dump_snapshot writes them as a pickle that https://pytorch.org/memory_viz draws and
``bench/memory_peak.py`` reads to list what is live at the run's peak.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

MAX_ENTRIES = 2_000_000  # allocation events kept (a ring): enough for a few dozen compiled steps of `1b`


def start_memory_history(device: torch.device) -> None:
    if device.type != "cuda":
        raise UserError(f"debug.memory_snapshot=true records the CUDA caching allocator; this run's device "
                        f"is {device.type}: turn it off, or run on a CUDA device")
    torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES)


def write_memory_history(path: Path) -> None:
    """Write the record (if recording started) and stop recording."""
    if not torch.cuda.is_initialized():  # recording never started (no CUDA, or the run stopped before it)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.cuda.memory._dump_snapshot(str(path))
    torch.cuda.memory._record_memory_history(enabled=None)
