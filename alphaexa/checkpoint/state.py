"""Stateful wrappers that put training state into a DCP checkpoint.

``ModelOptimizerState`` goes through ``torch.distributed.checkpoint.state_dict``
(get/set_model_state_dict, get/set_optimizer_state_dict), so the same code saves plain
modules, FSDP2/DTensor-sharded ones and pipeline chunks. Keys are the parameters'
original fully qualified names and the optimizer state is flattened per parameter
("state.<fqn>.exp_avg", "param_groups.<fqn>.lr"): a rank that holds only some layers
(a pipeline stage, several virtual stages) saves only those keys, and any other layout
can load them back, which is what makes resharding between layouts work.

``RNGState`` holds one entry per rank because every rank draws different numbers
(dropout, router jitter); the manager restores it only when the world size is unchanged.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, Sequence):
        return list(x)
    return [x]


class ModelOptimizerState(Stateful):
    """One or more model chunks and their optimizers as a single Stateful.

    ``models``: an ``nn.Module`` or a list of them (the pipeline chunks this rank owns,
    each keeping the original FQNs of its parameters). ``optimizers``: None (weights
    only, e.g. for generation), one optimizer per chunk, or, with a single model, any
    number of optimizers over its parameters.
    """

    def __init__(self, models: nn.Module | Sequence[nn.Module],
                 optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None):
        self.models = _as_list(models)
        optims = _as_list(optimizers)
        if not self.models:
            raise ValueError("ModelOptimizerState needs at least one model")
        if len(self.models) == 1:
            self._optims_per_model = [optims]
        elif not optims:
            self._optims_per_model = [[] for _ in self.models]
        elif len(optims) == len(self.models):
            self._optims_per_model = [[o] for o in optims]
        else:
            raise ValueError(f"{len(self.models)} model chunks need one optimizer each, got {len(optims)}")
        self.has_optimizer = bool(optims)

    def state_dict(self) -> dict[str, Any]:
        model_sd: dict[str, Any] = {}
        optim_sd: dict[str, Any] = {}
        for model, optims in zip(self.models, self._optims_per_model):
            part = get_model_state_dict(model, options=_OPTIONS)
            clash = model_sd.keys() & part.keys()
            if clash:
                raise ValueError(f"two model chunks both hold '{min(clash)}': chunks must own disjoint parameters")
            model_sd.update(part)
            if optims:
                optim_sd.update(get_optimizer_state_dict(model, optims, options=_OPTIONS))
        return {"model": model_sd, "optim": optim_sd} if self.has_optimizer else {"model": model_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for model, optims in zip(self.models, self._optims_per_model):
            own_keys = get_model_state_dict(model, options=_OPTIONS).keys()
            set_model_state_dict(model, {k: state_dict["model"][k] for k in own_keys}, options=_OPTIONS)
            if optims:
                # Each optimizer picks the flattened entries of its own parameters.
                set_optimizer_state_dict(model, optims, state_dict["optim"], options=_OPTIONS)


def _numpy_state() -> tuple[str, list[int], int, int, float]:
    """NumPy's legacy generator state with its key as a list of ints instead of an ndarray.

    The state handed to DCP holds only tensors and plain Python values, so DCP's stager copies it
    with its plain-container paths; ``np.random.set_state`` takes either form (older checkpoints
    hold the ndarray).
    """
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return name, key.tolist(), int(pos), int(has_gauss), float(cached_gaussian)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class RNGState(Stateful):
    """This rank's Python, NumPy, torch CPU and accelerator generator states.

    The state dict is ``{"rank_<r>": {...}}`` so ranks never overwrite each other in the
    checkpoint (DCP keeps one copy of identical keys). ``seed`` is the run's base seed,
    used by ``reseed`` when a resume on a different world size cannot restore the states.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    @property
    def key(self) -> str:
        return f"rank_{_rank()}"

    def state_dict(self) -> dict[str, Any]:
        states: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch_cpu": torch.get_rng_state(),
        }
        if torch.accelerator.is_available():
            accel = torch.accelerator.current_accelerator()
            states[f"torch_{accel.type}"] = torch.get_device_module(accel).get_rng_state()
        return {self.key: states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict[self.key]
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.set_rng_state(states["torch_cpu"])
        for name, value in states.items():
            if name.startswith("torch_") and name != "torch_cpu":
                torch.get_device_module(name.removeprefix("torch_")).set_rng_state(value)

    def reseed(self, step: int) -> int:
        """Seed every generator of this rank from (seed, step, rank); returns the derived seed.

        Deterministic for a given world size and step, and different on every rank.
        """
        derived = int(np.random.SeedSequence([self.seed, int(step), _rank()]).generate_state(1)[0])
        random.seed(derived)
        np.random.seed(derived)
        torch.manual_seed(derived)  # seeds the accelerator generators too
        return derived
