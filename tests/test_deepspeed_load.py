"""The DeepSpeed engine loads a DCP checkpoint written by the FSDP2 path (2 gloo ranks, sharded):
ZeRO-1 reads into its whole parameters, ZeRO-3 into its partitions one gathered parameter at a
time.  The loaded weights must equal the saved ones exactly, and training from them must follow
the single-process run from the same weights (so ZeRO's fp32 master copies were refreshed too).
"""
from __future__ import annotations

import datetime
import json
import os
import traceback
from pathlib import Path

import pytest
import torch
from rank_processes import run_ranks
from test_parallel_equivalence import (
    FP32_ADAM_RTOL,
    GLOBAL_BATCH,
    MAX_NORM,
    MICRO_STEPS,
    SEQ,
    STEPS,
    assert_history_matches,
    make_optimizer,
    model_config,
)

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.usefixtures("deepspeed_ops_built")  # compiled once, outside the hang guard

WORLD, SAVED_SEED, OTHER_SEED = 2, 5, 0


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    from deepspeed import zero
    from test_deepspeed_engine import OPTIONS

    from alphaexa.checkpoint import CheckpointManager, ModelOptimizerState
    from alphaexa.model import Transformer, build_model
    from alphaexa.parallel import build_mesh, local_rows, materialise, parallelize
    from alphaexa.parallel.deepspeed_engine import DeepSpeedTrainStep
    from alphaexa.parallel.equivalence import token_batches
    from backends.device import get_backend
    from topology.layout import Layout

    results: dict = {}
    try:
        with torch.device("meta"):
            meta = Transformer(model_config())
        fsdp = parallelize(meta, build_mesh(Layout(dp_shard=world).resolve(world), get_backend("cpu")))
        materialise(fsdp, seed=SAVED_SEED)
        manager = CheckpointManager(Path(out_dir) / "checkpoints", model_config=model_config())
        manager.save(1, {"model": ModelOptimizerState(fsdp.chunks)})
        expected = dict(build_model(model_config(), seed=SAVED_SEED).named_parameters())
        inputs, targets = token_batches(STEPS, GLOBAL_BATCH, SEQ, model_config().vocab_size)
        rows = local_rows(GLOBAL_BATCH, MICRO_STEPS, rank, world)
        for sharding in ("zero1", "zero3"):
            layout = Layout(dp_shard=world, sharding=sharding, mbs=GLOBAL_BATCH // (MICRO_STEPS * world))
            step = DeepSpeedTrainStep(build_model(model_config(), seed=OTHER_SEED), layout, OPTIONS,
                                      n_microbatches=MICRO_STEPS)
            loaded_step = step.load_weights(manager, 1)
            params = dict(step.engine.module.named_parameters())
            with zero.GatheredParameters(list(params.values()), enabled=sharding == "zero3"):
                different = sorted(n for n, p in params.items() if not torch.equal(p.data, expected[n]))
            history = []
            for s in range(STEPS):
                result = step(inputs[s][rows], targets[s][rows])
                history.append((result.loss, step.last_grad_norm))
            results[sharding] = {"step": loaded_step, "different": different, "checked": len(params),
                                 "history": history}
    except Exception:  # noqa: BLE001 - the test reading the results reports it
        results["error"] = traceback.format_exc()[-4000:]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.mark.multiproc
def test_deepspeed_loads_an_fsdp_checkpoint_into_zero1_and_zero3(tmp_path):
    from alphaexa.model import build_model
    from alphaexa.parallel.equivalence import reference_history, token_batches
    from backends.launch import free_port

    run_ranks(_worker, (WORLD, free_port(), str(tmp_path)), WORLD, "DeepSpeed job")
    per_rank = [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(WORLD)]
    for rank, results in enumerate(per_rank):
        assert "error" not in results, f"rank {rank}: {results['error']}"
    model = build_model(model_config(), seed=SAVED_SEED)
    inputs, targets = token_batches(STEPS, GLOBAL_BATCH, SEQ, model_config().vocab_size)
    expected = reference_history(model, make_optimizer(model.parameters(), "adamw"), inputs, targets,
                                 MICRO_STEPS, MAX_NORM)
    for rank, results in enumerate(per_rank):
        for sharding in ("zero1", "zero3"):
            result = results[sharding]
            assert result["step"] == 1
            assert result["checked"] == len(dict(model.named_parameters()))
            assert not result["different"], f"rank {rank} {sharding}: {result['different']} differ from the saved"
            assert_history_matches(result["history"], expected, rtol=FP32_ADAM_RTOL)
