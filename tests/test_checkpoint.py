"""CheckpointManager: exact round trips, atomicity, corruption fallback, model mismatch, async, resharding.

Single-process tests run DCP without a process group; the multiproc tests spawn real
gloo ranks: 4 FSDP2 ranks save, 2 FSDP2 ranks load them back (resharding), and 2
pipeline-style ranks owning disjoint layer chunks save a checkpoint that one process loads.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from rank_processes import run_ranks
from torch import nn

from alphaexa.checkpoint import (
    CheckpointManager,
    ManifestError,
    ModelOptimizerState,
    RNGState,
    read_manifest,
    resolve_checkpoint,
)
from alphaexa.config import ModelConfig
from alphaexa.errors import UserError

SEED = 1234
# DCP warns when used without a process group; single-process checkpoints are intended here.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


# --------------------------------------------------------------------------- helpers
class LayerNet(nn.Module):
    """Layers in a ModuleDict so a pipeline chunk can drop the others and keep the original names."""

    def __init__(self, n_layers: int = 4, width: int = 8):
        super().__init__()
        self.layers = nn.ModuleDict({str(i): nn.Linear(width, width) for i in range(n_layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = torch.tanh(layer(x))
        return x


def make_training(seed: int, n_layers: int = 4, width: int = 8):
    torch.manual_seed(seed)
    model = LayerNet(n_layers, width)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0 / (1 + s))
    return model, optim, sched


def train_steps(model, optim, sched, steps: int, start: int) -> list[float]:
    losses = []
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(4, model.layers["0"].in_features, generator=gen)
        loss = (model(x) ** 2).mean() + 1e-3 * torch.rand(())  # the global RNG enters the loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        sched.step()
        losses.append(loss.item())
    return losses


def one_line_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "alphaexa.checkpoint" and r.levelno == logging.WARNING]


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ single process
def test_round_trip_resumes_bit_exactly(tmp_path):
    model, optim, sched = make_training(SEED)
    sampler = {"epoch": 0, "consumed": 0}
    counters = {"step": 0, "skipped": 0}
    app = {"model": ModelOptimizerState(model, optim), "scheduler": sched, "rng": RNGState(SEED),
           "sampler": sampler, "counters": counters}
    train_steps(model, optim, sched, 3, start=0)
    sampler.update(epoch=1, consumed=96)
    counters.update(step=3, skipped=1)
    with CheckpointManager(tmp_path) as manager:
        manager.save(3, app, {"layout": {"dp_shard": 1}})
    reference = train_steps(model, optim, sched, 3, start=3)

    model2, optim2, sched2 = make_training(SEED + 1)  # different weights, empty optimizer state
    sampler2, counters2 = {"epoch": 0, "consumed": 0}, {"step": 0, "skipped": 0}
    app2 = {"model": ModelOptimizerState(model2, optim2), "scheduler": sched2, "rng": RNGState(SEED),
            "sampler": sampler2, "counters": counters2}
    with CheckpointManager(tmp_path) as manager:
        assert manager.load_latest(app2) == 3
    assert sampler2 == {"epoch": 1, "consumed": 96} and counters2 == {"step": 3, "skipped": 1}
    assert sched2.last_epoch == 3
    resumed = train_steps(model2, optim2, sched2, 3, start=3)
    assert resumed == reference  # bitwise: Python floats compared exactly
    assert params_equal(model, model2)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optim.state[p][name], optim2.state[p2][name])


def test_rng_restore_reproduces_next_random_numbers(tmp_path):
    rng = RNGState(SEED)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, {"rng": rng})
        expected = (random.random(), np.random.rand(), torch.rand(4))
        random.random(), np.random.rand(), torch.rand(4)  # move every generator on
        assert manager.load_latest({"rng": rng}) == 1
    got = (random.random(), np.random.rand(), torch.rand(4))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


KILL_BEFORE_RENAME = """
import os, signal, sys
from alphaexa.checkpoint import CheckpointManager

real_rename = os.rename
def rename_or_die(src, dst):
    if str(dst).endswith("step_000002"):  # data and manifest are written, the rename is next
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(src, dst)

with CheckpointManager(sys.argv[1]) as manager:
    manager.save(1, {"counters": {"step": 1}})
    os.rename = rename_or_die
    manager.save(2, {"counters": {"step": 2}})
"""


@pytest.mark.multiproc
def test_sigkill_just_before_the_rename_leaves_the_previous_checkpoint_in_use(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, str(tmp_path)], check=False, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    leftover = tmp_path / "step_000002.tmp"
    assert (leftover / "manifest.json").is_file() and (tmp_path / "latest").read_text() == "step_000001\n"
    counters = {"step": 0}
    with CheckpointManager(tmp_path) as manager:
        assert manager.load_latest({"counters": counters}) == 1
        assert counters == {"step": 1}
        manager.save(2, {"counters": {"step": 2}})
    assert not leftover.exists() and read_manifest(tmp_path / "step_000002")["step"] == 2


def test_keep_last_n_and_latest_pointer(tmp_path):
    counters = {"step": 0}
    with CheckpointManager(tmp_path, keep_last=2) as manager:
        for step in range(1, 6):
            counters["step"] = step
            manager.save(step, {"counters": counters})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000004", "step_000005"]
    assert (tmp_path / "latest").read_text().strip() == "step_000005"
    assert read_manifest(tmp_path / "step_000005")["step"] == 5
    assert resolve_checkpoint(tmp_path) == tmp_path / "step_000005"


def test_tmp_directory_and_missing_manifest_are_never_used(tmp_path, caplog):
    counters = {"step": 1}
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, {"counters": counters})
    # A save killed mid-way: a newer .tmp directory with data files but no rename.
    partial = tmp_path / "step_000002.tmp"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"partial")
    counters["step"] = 0
    with CheckpointManager(tmp_path) as manager:
        assert manager.load_latest({"counters": counters}) == 1
    assert counters["step"] == 1 and not one_line_warnings(caplog)
    # A step directory without manifest, newest, with no latest pointer to prefer the good one.
    (tmp_path / "step_000003").mkdir()
    (tmp_path / "latest").unlink()
    with CheckpointManager(tmp_path) as manager:
        assert manager.load_latest({"counters": counters}) == 1
        assert one_line_warnings(caplog) == [
            "checkpoint step_000003 is corrupt (no manifest.json); using step_000001"]
        manager.save(4, {"counters": counters})  # cleans the leftover .tmp directory
    assert not partial.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_file_is_reported_in_one_line_and_previous_checkpoint_used(tmp_path, caplog, damage):
    model, optim, sched = make_training(SEED)
    app = {"model": ModelOptimizerState(model, optim)}
    with CheckpointManager(tmp_path) as manager:
        train_steps(model, optim, sched, 1, start=0)
        manager.save(100, app)
        at_100 = copy.deepcopy(model)
        train_steps(model, optim, sched, 1, start=1)
        manager.save(200, app)
    data = tmp_path / "step_000200" / "__0_0.distcp"
    size = data.stat().st_size
    if damage == "truncate":
        os.truncate(data, size // 2)
        why = f"file __0_0.distcp: size {size // 2} != {size}"
    else:
        raw = bytearray(data.read_bytes())
        raw[size // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        why = "file __0_0.distcp: sha256 mismatch"

    fresh, fresh_optim, _ = make_training(SEED + 7)
    with CheckpointManager(tmp_path) as manager:
        assert manager.load_latest({"model": ModelOptimizerState(fresh, fresh_optim)}) == 100
        assert one_line_warnings(caplog) == [f"checkpoint step_000200 is corrupt ({why}); using step_000100"]
        assert params_equal(fresh, at_100)
        with pytest.raises(UserError, match=re.escape(f"step_000200 is corrupt ({why})")):
            manager.load(200, {"model": ModelOptimizerState(fresh, fresh_optim)})


def test_every_checkpoint_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, {"counters": {"step": 1}})
    os.remove(tmp_path / "step_000001" / ".metadata")
    with CheckpointManager(tmp_path) as manager, pytest.raises(UserError) as err:
        manager.load_latest({"counters": {"step": 0}})
    assert str(err.value) == (f"no usable checkpoint in {tmp_path}: checkpoint step_000001 is corrupt "
                              "(file .metadata: missing)")
    with CheckpointManager(tmp_path / "empty") as manager:
        assert manager.load_latest({"counters": {"step": 0}}) is None


def test_checkpoint_of_another_model_is_a_one_line_user_error(tmp_path):
    small = ModelConfig(n_layers=2, d_model=64, n_heads=4)
    model, optim, _ = make_training(SEED)
    with CheckpointManager(tmp_path / "cfg", model_config=small) as manager:
        manager.save(1, {"model": ModelOptimizerState(model, optim)})
    wider = small.replace(d_model=128, name="other")
    with CheckpointManager(tmp_path / "cfg", model_config=wider) as manager, pytest.raises(UserError) as err:
        manager.load_latest({"model": ModelOptimizerState(model, optim)})
    assert str(err.value) == (f"checkpoint {tmp_path / 'cfg' / 'step_000001'} is from a different model: "
                              "model.d_model is 64 there, 128 here")
    # Same blocks written differently is the same model; a renamed run is too.
    same = small.replace(name="renamed", aux_loss_coef=0.5)
    with CheckpointManager(tmp_path / "cfg", model_config=same) as manager:
        assert manager.load_latest({"model": ModelOptimizerState(model, optim)}) == 1

    # Without configs the parameter shapes still decide, before anything is loaded.
    with CheckpointManager(tmp_path / "shapes") as manager:
        manager.save(1, {"model": ModelOptimizerState(model)})
    other, _, _ = make_training(SEED, width=16)
    before = copy.deepcopy(other)
    with CheckpointManager(tmp_path / "shapes") as manager, pytest.raises(UserError) as err:
        manager.load_latest({"model": ModelOptimizerState(other)})
    assert str(err.value) == (f"checkpoint {tmp_path / 'shapes' / 'step_000001'} is from a different model: "
                              "model.model.layers.0.weight has shape [8, 8] there, [16, 16] here")
    assert params_equal(other, before)
    deeper, _, _ = make_training(SEED, n_layers=5)
    with CheckpointManager(tmp_path / "shapes") as manager, pytest.raises(UserError, match="it has no "
                                                                          "'model.model.layers.4.weight'"):
        manager.load_latest({"model": ModelOptimizerState(deeper)})


def test_async_save_writes_the_same_checkpoint_as_sync(tmp_path):
    model, optim, sched = make_training(SEED)
    train_steps(model, optim, sched, 1, start=0)
    app = {"model": ModelOptimizerState(model, optim), "rng": RNGState(SEED)}
    with CheckpointManager(tmp_path / "sync") as manager:
        manager.save(1, app)
    with CheckpointManager(tmp_path / "async", async_save=True) as manager:
        manager.save(1, app)
        train_steps(model, optim, sched, 1, start=1)  # the staged copy is what gets written
        manager.wait()
        sync, asyn = (read_manifest(tmp_path / d / "step_000001") for d in ("sync", "async"))
        assert sorted(sync["files"]) == sorted(asyn["files"]) == [".metadata", "__0_0.distcp"]
        assert sync["files"]["__0_0.distcp"] == asyn["files"]["__0_0.distcp"]  # byte-identical data
        # .metadata also records the directory and a random save id; what it says about the data is equal.
        index = [dcp.FileSystemReader(tmp_path / d / "step_000001").read_metadata().state_dict_metadata
                 for d in ("sync", "async")]
        assert index[0] == index[1]
        assert asyn["save"]["mode"] == "async-thread" and sync["save"]["mode"] == "sync"
        manager.save(2, app)  # the next save may start while nothing is pending
    assert read_manifest(tmp_path / "async" / "step_000002")["step"] == 2


PLAIN_VALUES = (bool, int, float, str, bytes, type(None))


def non_plain_leaves(tree, path: str = "") -> list[str]:
    """Every value below plain dicts, lists and tuples that is neither a tensor nor a plain scalar."""
    if type(tree) in (dict, list, tuple):
        items = tree.items() if type(tree) is dict else enumerate(tree)
        return [bad for k, v in items for bad in non_plain_leaves(v, f"{path}.{k}" if path else str(k))]
    if isinstance(tree, torch.Tensor) or type(tree) in PLAIN_VALUES:
        return []
    return [f"{path}: {type(tree).__module__}.{type(tree).__qualname__}"]


def test_async_saves_survive_dcp_closing_the_stager_and_stage_only_plain_values(tmp_path, monkeypatch):
    # On torch 2.11 a second save through a reused stager failed; the manager hands DCP a new
    # stager per save. Closing the previous save's stager (as 2.11's async_save may) must not
    # matter, and every save must get its own.
    real_async_save, handed_over = dcp.async_save, []

    def async_save_closing_its_stager(state_dict, **kwargs):
        if handed_over:
            handed_over[-1][1].close()
        handed_over.append((state_dict, kwargs["async_stager"]))
        return real_async_save(state_dict, **kwargs)

    monkeypatch.setattr(dcp, "async_save", async_save_closing_its_stager)
    model, optim, sched = make_training(SEED)
    counters = {"step": 0}
    app = {"model": ModelOptimizerState(model, optim), "scheduler": sched, "rng": RNGState(SEED),
           "sampler": {"epoch": 0, "consumed": 0}, "counters": counters}
    with CheckpointManager(tmp_path, async_save=True) as manager:
        for step in (1, 2, 3):
            train_steps(model, optim, sched, 1, start=step - 1)
            counters["step"] = step
            manager.save(step, app)
            if step == 3:
                expected = copy.deepcopy(model.state_dict())
            train_steps(model, optim, sched, 1, start=step)  # changes nothing in the staged copy
    assert len(handed_over) == 3
    assert len({id(stager) for _, stager in handed_over}) == 3
    for state, _ in handed_over:  # what DCP's stager deep-copies: nothing it must reduce generically
        assert non_plain_leaves(state) == []
    restored, optim2, sched2 = make_training(SEED + 1)
    counters2 = {"step": 0}
    with CheckpointManager(tmp_path) as manager:
        assert manager.load_latest({"model": ModelOptimizerState(restored, optim2), "scheduler": sched2,
                                    "counters": counters2}) == 3
    assert counters2 == {"step": 3}
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in expected.items())


def test_manifest_records_config_layout_world_and_checksums(tmp_path):
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4)
    with CheckpointManager(tmp_path, model_config=cfg) as manager:
        manager.save(7, {"counters": {"step": 7}}, {"config": {"train": {"steps": 10}}, "layout": {"tp": 1}})
        with pytest.raises(ValueError, match="manifest_extra may not set step"):
            manager.save(8, {"counters": {"step": 8}}, {"step": 3})
    manifest = read_manifest(tmp_path / "step_000007")
    assert manifest["model"] == cfg.to_dict() and manifest["layout"] == {"tp": 1}
    assert manifest["config"] == {"train": {"steps": 10}} and manifest["world_size"] == 1
    assert manifest["torch_version"] == torch.__version__
    for name, entry in manifest["files"].items():
        raw = (tmp_path / "step_000007" / name).read_bytes()
        assert entry == {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (tmp_path / "step_000007" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ManifestError, match="not an alphaexa-checkpoint manifest"):
        read_manifest(tmp_path / "step_000007")


# ------------------------------------------------------------------------ multiproc
# One spawn serves all multi-rank checks (starting processes dominates their cost on 2 cores):
# phase 1 on 4 ranks, then ranks 0 and 1 start a fresh 2-rank job in the same processes.
def _spawn(fn, world: int, tmp: Path, timeout: float = 180.0) -> None:
    """Run ``fn(rank, world, tmp)`` on ``world`` processes; fail (not hang) on an error or a timeout."""
    run_ranks(fn, (world, str(tmp)), world, f"{fn.__name__} on {world} ranks", timeout)


def _init(rank: int, world: int, store: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))


def _fsdp_training(seed: int):
    """LayerNet sharded by FSDP2 over all ranks."""
    from torch.distributed.fsdp import fully_shard

    model, _, _ = make_training(seed, n_layers=4, width=12)
    for layer in model.layers.values():
        fully_shard(layer)
    fully_shard(model)
    return model, *_optimizer(model)


def _tp_fsdp_training(seed: int, world: int):
    """LayerNet with tensor parallelism over pairs of ranks and FSDP2 over the pairs (a 2-D mesh)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
    model, _, _ = make_training(seed, n_layers=4, width=12)
    parallelize_module(model, mesh["tp"], {"layers.0": ColwiseParallel(), "layers.1": RowwiseParallel(),
                                           "layers.2": ColwiseParallel(), "layers.3": RowwiseParallel()})
    for layer in model.layers.values():
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model, *_optimizer(model)


def _optimizer(model):
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # over the sharded parameters
    return optim, torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0 / (1 + s))


def _full_state(model, optim) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    model_sd, optim_sd = get_state_dict(model, optim, options=opts)
    # Unsharded entries (the step counters) are the live tensors: copy them.
    return copy.deepcopy({"model": model_sd, "optim": optim_sd})


def _assert_same_state(got: dict, expected: dict) -> None:
    for part in ("model", "optim"):
        assert got[part].keys() == expected[part].keys(), part
        for key, value in expected[part].items():
            assert torch.equal(got[part][key], value) if isinstance(value, torch.Tensor) \
                else got[part][key] == value, key


def _fsdp_app(model, optim, sched, sampler) -> dict:
    return {"model": ModelOptimizerState(model, optim), "scheduler": sched, "rng": RNGState(SEED),
            "sampler": sampler}


def _save_on_four_tp_fsdp_ranks(rank: int, world: int, tmp: Path) -> dict:
    model, optim, sched = _tp_fsdp_training(SEED, world)
    torch.manual_seed(SEED + rank)  # every rank's generator differs, as with dropout
    train_steps(model, optim, sched, 2, start=10 * (rank // 2))  # different data per data-parallel rank
    app = _fsdp_app(model, optim, sched, {"epoch": 0, "consumed": 64})
    reference = _full_state(model, optim)
    with CheckpointManager(tmp / "sync") as manager:
        manager.save(2, app, {"layout": {"tp": 2, "dp_shard": world // 2}})
    with CheckpointManager(tmp / "async", async_save=True) as manager:
        manager.save(2, app, {"layout": {"tp": 2, "dp_shard": world // 2}})
        next_numbers = torch.rand(5)
        train_steps(model, optim, sched, 1, start=99)  # training goes on while the save is written
        manager.wait()
    # Same world size: every rank gets its own generator state back, and the model its shards.
    with CheckpointManager(tmp / "sync") as manager:
        assert manager.load_latest(app) == 2
    assert torch.equal(torch.rand(5), next_numbers)
    _assert_same_state(_full_state(model, optim), reference)
    return reference


def _load_on_two_fsdp_ranks(tmp: Path, reference: dict) -> list[str]:
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("alphaexa.checkpoint").addHandler(handler)
    model, optim, sched = _fsdp_training(SEED + 99)  # different init, no optimizer state yet
    sampler = {"epoch": 0, "consumed": 0}
    app = _fsdp_app(model, optim, sched, sampler)
    with CheckpointManager(tmp / "async") as manager:  # the async copy: written while training went on
        assert manager.load_latest(app) == 2
    _assert_same_state(_full_state(model, optim), reference)
    assert sampler == {"epoch": 0, "consumed": 64} and sched.last_epoch == 2
    # 4 -> 2 ranks: generator states are not restored but re-seeded, deterministically per rank.
    drawn = torch.rand(3)
    app["rng"].reseed(2)
    assert torch.equal(torch.rand(3), drawn)
    logging.getLogger("alphaexa.checkpoint").removeHandler(handler)
    return messages


PIPELINE_CHUNKS = {0: [[0], [2]], 1: [[1], [3]]}  # interleaved: two virtual stages per rank


def _pipeline_chunk(full: LayerNet, owned: list[int]) -> LayerNet:
    chunk = copy.deepcopy(full)
    for name in [n for n in chunk.layers if int(n) not in owned]:
        del chunk.layers[name]
    return chunk


def _save_pipeline_chunks(rank: int, tmp: Path) -> None:
    full, _, _ = make_training(SEED)
    chunks = [_pipeline_chunk(full, owned) for owned in PIPELINE_CHUNKS[rank]]
    optims = [torch.optim.AdamW(c.parameters(), lr=1e-2) for c in chunks]
    for step, (chunk, optim) in enumerate(zip(chunks, optims)):
        chunk(torch.randn(2, 8, generator=torch.Generator().manual_seed(rank * 10 + step))).sum().backward()
        optim.step()
    with CheckpointManager(tmp / "pipeline") as manager:
        manager.save(5, {"model": ModelOptimizerState(chunks, optims)})
    torch.save([(c.state_dict(), o.state_dict()) for c, o in zip(chunks, optims)], tmp / f"chunks_{rank}.pt")


def _four_then_two_ranks(rank: int, world: int, tmp: str) -> None:
    tmp = Path(tmp)
    _init(rank, world, tmp / "store4")
    reference = _save_on_four_tp_fsdp_ranks(rank, world, tmp)
    dist.destroy_process_group()
    if rank >= 2:
        return
    _init(rank, 2, tmp / "store2")  # a new, smaller job with another layout resumes the 4-rank checkpoint
    messages = _load_on_two_fsdp_ranks(tmp, reference)
    _save_pipeline_chunks(rank, tmp)
    if rank == 0:
        (tmp / "messages.json").write_text(json.dumps(messages))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def multirank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multirank")
    _spawn(_four_then_two_ranks, 4, tmp)
    return tmp


@pytest.mark.multiproc
def test_tp_fsdp2_four_ranks_save_sync_and_async_identically_and_restore(multirank_run):
    sync, asyn = (read_manifest(multirank_run / d / "step_000002") for d in ("sync", "async"))
    assert sync["layout"] == {"tp": 2, "dp_shard": 2}
    assert sorted(sync["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp"]
    assert {n: e for n, e in sync["files"].items() if n != ".metadata"} == \
           {n: e for n, e in asyn["files"].items() if n != ".metadata"}
    assert sync["world_size"] == asyn["world_size"] == 4
    assert sync["save"]["mode"] == "sync" and asyn["save"]["mode"] == "async-thread"


@pytest.mark.multiproc
def test_tp_fsdp2_checkpoint_of_four_ranks_loads_into_fsdp2_on_two(multirank_run):
    # The two ranks compared the full model and optimizer state with the 4-rank original themselves.
    assert json.loads((multirank_run / "messages.json").read_text()) == [
        ("checkpoint step_000002 was saved by 4 ranks, this run has 2: random states re-seeded from "
         f"seed {SEED}, step 2 and rank (not restored)")]


@pytest.mark.multiproc
def test_pipeline_chunks_on_two_ranks_load_into_one_whole_model(multirank_run):
    manifest = read_manifest(multirank_run / "pipeline" / "step_000005")
    assert sorted(manifest["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    whole, _, _ = make_training(SEED + 3)
    optim = torch.optim.AdamW(whole.parameters(), lr=1e-2)
    with CheckpointManager(multirank_run / "pipeline") as manager:
        assert manager.load_latest({"model": ModelOptimizerState(whole, optim)}) == 5
    for rank, owned_chunks in PIPELINE_CHUNKS.items():
        saved = torch.load(multirank_run / f"chunks_{rank}.pt", weights_only=False)
        for owned, (chunk_sd, optim_sd) in zip(owned_chunks, saved):
            (layer,) = owned
            for index, p_name in enumerate(("weight", "bias")):
                param = getattr(whole.layers[str(layer)], p_name)
                assert torch.equal(param, chunk_sd[f"layers.{layer}.{p_name}"])
                for name in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(optim.state[param][name], optim_sd["state"][index][name])


def _process_mode_saves(rank: int, world: int, tmp: str) -> None:
    tmp = Path(tmp)
    _init(rank, world, tmp / "store")
    model, optim, sched = _fsdp_training(SEED)
    train_steps(model, optim, sched, 1, start=rank)
    app = {"model": ModelOptimizerState(model, optim), "scheduler": sched}
    reference = _full_state(model, optim)
    with CheckpointManager(tmp / "sync") as manager:
        manager.save(1, app)
    with CheckpointManager(tmp / "process", async_save=True, async_mode="process") as manager:
        for step in (1, 2):  # the second save reuses the writer process and the shared staging buffers
            manager.save(step, app)
            train_steps(model, optim, sched, 1, start=10 + step)
    fresh, fresh_optim, fresh_sched = _fsdp_training(SEED + 5)
    with CheckpointManager(tmp / "process") as manager:
        manager.load(1, {"model": ModelOptimizerState(fresh, fresh_optim), "scheduler": fresh_sched})
    _assert_same_state(_full_state(fresh, fresh_optim), reference)
    if rank == 0:
        sync, proc = (read_manifest(tmp / d / "step_000001") for d in ("sync", "process"))
        assert {n: e for n, e in sync["files"].items() if n != ".metadata"} == \
               {n: e for n, e in proc["files"].items() if n != ".metadata"}
        assert proc["save"]["mode"] == "async-process"
    dist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.exhaustive
def test_process_based_async_save_matches_sync(tmp_path):
    _spawn(_process_mode_saves, 2, tmp_path)
