"""Resume a ZeRO-3 checkpoint into an engine whose optimizer state swaps to NVMe, exactly.

What DeepSpeed 0.19.8 does (``DeepSpeedEngine.load_checkpoint``): when the optimizer swaps to NVMe
(``zero_nvme_offload_optimizer()``) it skips ``_load_zero_checkpoint`` altogether, copies the
checkpoint's ``offloaded_tensors/rankN`` back into the swap folder and calls the optimizer's
``reset_swap_buffers`` (each sub-group swapped in, its fp32 master copied into the low-precision
partition, swapped out).  Two things are lost on the way:

* the Adam moments and step count of every sub-group.  A freshly built optimizer has no state yet
  (DeepSpeed's CPU Adam creates ``exp_avg``/``exp_avg_sq`` at its first step), so the swapper does
  not know those tensors exist and never reads the copied ``exp_avg-*``/``exp_avg_sq-*`` swap files;
  the first step after the resume starts the moments from zero and its bias correction from step 1,
  then overwrites the files;
* all state of the sub-groups too small to swap (under the swapper's 1 MiB ``min_aio_bytes``): their
  fp32 master weights and moments stay in host memory, are saved only in the
  ``*_optim_states.pt`` file that this path never reads, and keep the fresh model's values (with a
  small model every sub-group is such a one: the whole resume starts from fresh weights).

``restore_swapped_optimizer`` puts both back after ``load_checkpoint``, from the files the save
wrote, through DeepSpeed's own structures: each sub-group's saved partition comes from the
``.pt`` file where it was kept in memory (master weights and moments copied in), or from the swap
files where it was swapped (the moments registered with the swapper, then swapped in and out once so
it reads them); then the low-precision partitions are rewritten from the restored masters.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from topology.modelcfg import ConfigError

# Keys of DeepSpeed's ZeRO-3 optimizer checkpoint (deepspeed.checkpoint.constants; stable since 0.3).
_OPTIMIZER_STATE_DICT = "optimizer_state_dict"
_FP32_FLAT_GROUPS = "fp32_flat_groups"
_MOMENTS = ("exp_avg", "exp_avg_sq")


def swaps_optimizer(engine) -> bool:
    """Whether ``engine``'s optimizer state swaps to NVMe (DeepSpeed's ZeRO-3 optimizer swapper)."""
    return bool(getattr(engine.optimizer, "swap_optimizer", False))


def restore_swapped_optimizer(engine, load_dir: str | Path, tag: str) -> None:
    """After ``engine.load_checkpoint(load_dir, tag)`` on an engine whose optimizer swaps to NVMe:
    restore every sub-group's fp32 master partition and Adam state (moments, step) that the load
    dropped, and the low-precision partitions derived from them (see the module docstring)."""
    opt = engine.optimizer
    if not swaps_optimizer(engine) or not hasattr(opt, "fp32_partitioned_groups_flat"):
        raise ConfigError("restoring swapped optimizer state needs ZeRO-3 with offload_optimizer=nvme")
    name = engine._get_zero_ckpt_name(str(load_dir), tag)
    saved = torch.load(name, map_location="cpu", weights_only=False)[_OPTIMIZER_STATE_DICT]
    masters, state_dict = saved[_FP32_FLAT_GROUPS], saved[_OPTIMIZER_STATE_DICT]
    n_sub = len(opt.fp32_partitioned_groups_flat)
    if len(masters) != n_sub:
        raise ConfigError(f"{name}: {len(masters)} optimizer sub-groups saved, this engine has {n_sub} "
                          "(another model, world size or sub_group_size)")
    # torch's Optimizer.state_dict numbers parameters group by group; ZeRO-3 appends each sub-group's
    # flat fp32 partition to its parameter group in sub-group order (_set_fp32_optimizer_param_groups).
    index_of: dict[int, int] = {}
    for group_id, group in enumerate(state_dict["param_groups"]):
        subs = [i for i in range(n_sub) if opt.sub_group_to_group_id[i] == group_id]
        if len(subs) != len(group["params"]):
            raise ConfigError(f"{name}: parameter group {group_id} holds {len(group['params'])} sub-groups "
                              f"there, {len(subs)} here")
        index_of.update(zip(subs, group["params"]))
    swapper = opt.optimizer_swapper
    opt.checkpoint_event_prologue()  # every parameter partitioned, as load_checkpoint leaves them
    for i in range(n_sub):
        master = opt.fp32_partitioned_groups_flat[i]
        numel = int(opt.fp16_partitioned_groups_flat_numel[i])
        state = state_dict["state"].get(index_of[i], {})
        if state and set(state) != {"step", *_MOMENTS}:
            raise ConfigError(f"{name}: sub-group {i}'s optimizer state holds {sorted(state)}; restoring swapped "
                              f"state knows DeepSpeed's Adam only ({', '.join(['step', *_MOMENTS])})")
        if opt._swappable_optimizer_subgroup(i):
            # load_checkpoint read the master from the copied swap file; the moments are in theirs.
            if state:
                missing = [m for m in _MOMENTS
                           if not os.path.isfile(os.path.join(swapper.swap_folder, f"{m}-{master.ds_id}.tensor.swp"))]
                if missing:
                    raise ConfigError(f"{name}: sub-group {i}'s swapped {', '.join(missing)} is not among the "
                                      f"checkpoint's offloaded tensors (now in {swapper.swap_folder})")
                # Placeholders of the right size (never touched: the swap-in replaces their storage with
                # its pinned buffers), so that the swapper registers and reads the moments' files.
                opt.optimizer.state[master] = {"step": state["step"],
                                               **{m: torch.empty(numel, dtype=master.dtype) for m in _MOMENTS}}
                opt._optimizer_states_and_gradient_swap_in(i)
                opt._optimizer_states_and_gradient_swap_out(i)
            continue
        if masters[i].numel() != numel:
            raise ConfigError(f"{name}: sub-group {i} holds {masters[i].numel()} master elements, this engine "
                              f"{numel} (a checkpoint written with its optimizer state swapped, or another layout)")
        master.data.copy_(masters[i])
        if state:
            opt.optimizer.state[master] = {"step": state["step"],
                                           **{m: state[m].to(master.dtype).clone() for m in _MOMENTS}}
        else:
            opt.optimizer.state.pop(master, None)
        opt._reassign_or_swap_out_partitioned_parameters(i)  # low-precision partition := restored master
    opt.checkpoint_event_epilogue()  # re-gathers the persistent (never partitioned) parameters


__all__ = ["restore_swapped_optimizer", "swaps_optimizer"]
