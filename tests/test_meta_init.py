"""Meta-device build + sharded initialisation: every layout starts from the single-process weights, exactly.

Real gloo ranks build the model on the meta device, ``parallelize`` it, ``materialise`` their
shards, and gather every parameter with ``full_tensor``: each must equal, bit for bit, the same
parameter of ``build_model`` in one process with the same seed (and dtype: a float64 layout is
converted on meta, as the trainer does for ``train.dtype=fp64``, and compared with
``build_model(dtype=torch.float64)``).  Then a checkpoint written by one 4-rank layout is loaded
straight into the (uninitialised) shards of another and must hold the saved weights exactly, and
its next training step must give the loss the first layout gives.

The default run uses one process group per world size (2, 4, 8) with layouts that together cover
FSDP, TP, pipeline stages (an interleaved and a ZBV "V" placement), EP, HSDP and uneven shards;
``-m exhaustive`` checks every layout of the equivalence matrix (tests/test_parallel_equivalence.py).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import traceback
from pathlib import Path

import pytest
import torch
from rank_processes import run_ranks
from test_parallel_equivalence import JOBS, MATRIX, model_config

pytestmark = pytest.mark.multiproc

SEED = 3
# Dimensions no shard count divides: vocabulary 258 and FFN width 66 over tp 2 then FSDP 2 give
# local rows 65/64 and 17/16 (FSDP2 pads the last shard), experts' width 34 likewise.
UNEVEN = {"vocab_size": 258, "d_ff": 66, "moe_d_ff": 34}
# (name, layout, model changes, dtype) per world size.
REPRESENTATIVE = {
    2: [("pp2-zbv", {"pp": 2, "vpp": 2, "schedule": "zbv"}, {}, "float32"),
        ("ep2-fp64", {"dp_shard": 2, "ep": 2, "sharding": "zero2"}, {}, "float64")],
    4: [("hsdp2x2", {"dp_replicate": 2, "dp_shard": 2}, {}, "float32"),
        ("uneven-fsdp2-tp2", {"dp_shard": 2, "tp": 2}, UNEVEN, "float32")],
    8: [("pp2-fsdp4-ep2", {"pp": 2, "dp_shard": 4, "ep": 2, "schedule": "interleaved1f1b", "vpp": 2}, {},
         "float32")],
}
EVERY_MATRIX_LAYOUT = {world: [(j[0], j[1], {}, "float32") for j in jobs if (world, j[0]) in MATRIX]
                       for world, jobs in JOBS.items()}
SAVE_LAYOUT, LOAD_LAYOUT = {"dp_shard": 2, "tp": 2, "ep": 2}, {"pp": 2, "tp": 2, "schedule": "1f1b"}
GLOBAL_BATCH, SEQ, MICRO_STEPS = 8, 16, 2


def _meta_model(spec: dict, world: int, seed: int | None, cfg_changes: dict | None = None,
                dtype: torch.dtype = torch.float32):
    from alphaexa.model import Transformer
    from alphaexa.parallel import build_mesh, check_layout, materialise, parallelize
    from backends.device import get_backend
    from topology.layout import Layout, resolve_layout

    cfg = model_config(**(cfg_changes or {}))
    layout = Layout.from_dict(spec).resolve(world)
    layout = resolve_layout(layout.replace(mbs=GLOBAL_BATCH // (MICRO_STEPS * layout.dp)), world, cfg,
                            GLOBAL_BATCH, SEQ)
    check_layout(layout, cfg, "cpu")
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to(dtype)
    pmodel = parallelize(model, build_mesh(layout, get_backend("cpu")))
    materialise(pmodel, seed)
    return pmodel


def _full_weights(pmodel) -> dict[str, torch.Tensor]:
    return {name: param.full_tensor() for name, param in pmodel.named_parameters()}


def _differences(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n for n, t in got.items() if t.dtype != expected[n].dtype or not torch.equal(t, expected[n]))


def _compare_init(world: int, layouts: list, out: dict) -> None:
    from alphaexa.model import build_model

    for name, spec, cfg_changes, dtype in layouts:
        dtype = getattr(torch, dtype)
        reference = dict(build_model(model_config(**cfg_changes), seed=SEED, dtype=dtype).named_parameters())
        full = _full_weights(_meta_model(spec, world, SEED, cfg_changes, dtype))
        out[name] = {"checked": sorted(full), "different": _differences(full, reference),
                     "dtypes": sorted({str(t.dtype) for t in full.values()})}


def _train_steps(pmodel, steps: range) -> list[float]:
    from alphaexa.parallel import clip_grad_norm_, local_rows, make_train_step
    from alphaexa.parallel.equivalence import token_batches

    layout, dims = pmodel.layout, pmodel.dims
    n_micro = layout.n_microbatches(GLOBAL_BATCH)
    step = make_train_step(pmodel, n_micro)
    inputs, targets = token_batches(steps.stop, GLOBAL_BATCH, SEQ, model_config().vocab_size)
    rows = local_rows(GLOBAL_BATCH, n_micro, dims.dp_rank, layout.dp)
    optimizers = [torch.optim.AdamW(chunk.parameters(), lr=1e-2) for chunk in pmodel.chunks]
    losses = []
    for s in steps:
        losses.append(step(inputs[s][rows], targets[s][rows]).loss)
        clip_grad_norm_(pmodel.parameters(), 0.5, dims)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    return losses


def _resume_into_other_layout(world: int, out: dict, directory: str) -> None:
    from alphaexa.checkpoint import CheckpointManager, ModelOptimizerState

    saving = _meta_model(SAVE_LAYOUT, world, SEED)
    _train_steps(saving, range(2))
    with CheckpointManager(directory, model_config=model_config()) as manager:
        manager.save(2, {"model": ModelOptimizerState(saving.chunks)})
    saved = _full_weights(saving)
    next_loss = _train_steps(saving, range(2, 3))[0]

    loading = _meta_model(LOAD_LAYOUT, world, seed=None)  # allocated, never initialised
    with CheckpointManager(directory, model_config=model_config()) as manager:
        manager.load(2, {"model": ModelOptimizerState(loading.chunks)})
    loaded = _full_weights(loading)
    out["resume"] = {"checked": sorted(loaded), "different": _differences(loaded, saved),
                     "next_loss": next_loss, "next_loss_resumed": _train_steps(loading, range(2, 3))[0]}


def _worker(rank: int, world: int, port: int, layouts: list, resume: bool, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    out: dict = {}
    try:
        _compare_init(world, layouts, out)
        if resume:
            _resume_into_other_layout(world, out, str(Path(out_dir) / "checkpoints"))
    except Exception:  # noqa: BLE001 - reported by the test that reads the results
        out["error"] = traceback.format_exc()[-4000:]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def _run(world: int, layouts: list, resume: bool, tmp: Path) -> list[dict]:
    from backends.launch import free_port

    # The ranks fork from run_ranks' preloaded forkserver: starting 14 fresh interpreters that each
    # import torch and the package took most of this test's time on two cores.
    run_ranks(_worker, (world, free_port(), layouts, resume, str(tmp)), world, f"{world}-rank job", timeout=240)
    per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    errors = [f"rank {r}:\n{out['error']}" for r, out in enumerate(per_rank) if "error" in out]
    if errors:
        pytest.fail("\n".join(errors))
    return per_rank


def _check(world: int, layouts: list, resume: bool, tmp: Path) -> None:
    from alphaexa.model import build_model

    per_rank = _run(world, layouts, resume, tmp)
    for name, _, cfg_changes, dtype in layouts:
        assert all(not out[name]["different"] for out in per_rank), \
            f"{name}: {[out[name]['different'] for out in per_rank]} differ from the single-process build"
        assert all(out[name]["dtypes"] == [f"torch.{dtype}"] for out in per_rank), name
        # Pipeline ranks hold different stages: together they must cover the whole model.
        every_name = {n for n, _ in build_model(model_config(**cfg_changes), seed=SEED).named_parameters()}
        assert set().union(*(out[name]["checked"] for out in per_rank)) == every_name, name
    if resume:
        every_name = {n for n, _ in build_model(model_config(), seed=SEED).named_parameters()}
        resumed = per_rank[0]["resume"]
        assert all(not out["resume"]["different"] for out in per_rank), [out["resume"]["different"] for out in per_rank]
        assert set().union(*(out["resume"]["checked"] for out in per_rank)) == every_name
        # Only the order of float32 sums differs between the two layouts.
        assert math.isclose(resumed["next_loss_resumed"], resumed["next_loss"], rel_tol=1e-5)


@pytest.mark.parametrize("world", sorted(REPRESENTATIVE))
def test_meta_built_shards_equal_the_single_process_weights_exactly(world, tmp_path):
    _check(world, REPRESENTATIVE[world], resume=world == 4, tmp=tmp_path)


@pytest.mark.exhaustive
@pytest.mark.parametrize("world", sorted(EVERY_MATRIX_LAYOUT))
def test_every_matrix_layout_starts_from_the_single_process_weights(world, tmp_path):
    _check(world, EVERY_MATRIX_LAYOUT[world], resume=world == 4, tmp=tmp_path)


def test_single_process_build_draws_each_expert_from_its_own_generator():
    """An expert-parallel rank draws only its experts: expert e of a stacked weight must not depend
    on how many experts the weight holds."""
    from alphaexa.model import build_model

    four = build_model(model_config(n_experts=4), seed=SEED)
    eight = build_model(model_config(n_experts=8), seed=SEED)
    w4, w8 = four.layers["1"].moe.experts.w1, eight.layers["1"].moe.experts.w1
    assert torch.equal(w4, w8[:4])
    assert not torch.equal(w8[0], w8[1])
