"""Offload: ZeRO-Infinity to an NVMe (disk) directory through DeepSpeed, and FSDP2's CPU offload policy.

Each offloaded run trains the same model on the same batches as its non-offloaded twin, 5 AdamW
steps, and must give the same losses and gradient norms; the offload must be shown to be in
effect (swap files written, the FSDP policy set).  A checkpoint of an offloaded trainer run
resumes bitwise, and what offload needs (libaio, a writable nvme_path, the DeepSpeed engine)
is a one-line error before any work.
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
from train_runs import copy_checkpoint_run, losses, steps, train

from alphaexa.train.config import load_run_config
from alphaexa.train.metrics import read_metrics
from topology.modelcfg import ConfigError, ModelConfig

STEPS, GLOBAL_BATCH, SEQ, MICRO_STEPS = 5, 8, 16, 2
LR, MAX_NORM, WEIGHT_DECAY = 1e-2, 0.5, 0.01
# torch's AdamW (the non-offloaded run) and DeepSpeed's CPU Adam (the offloaded one) are two
# implementations of one update, so the runs agree to rounding, not bitwise.
RTOL = 1e-5
MODEL = ModelConfig(name="offload-test", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64,
                    ffn_type="swiglu", vocab_size=256, max_seq_len=32, moe_every=2, n_experts=4, top_k=2,
                    moe_d_ff=32, aux_loss_coef=0.01, z_loss_coef=0.001)


def _init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))


def _spawn(worker, world: int, out_dir: Path, *args) -> list[dict]:
    from backends.launch import free_port

    # 600 s: includes compiling DeepSpeed's ops when setup has not
    run_ranks(worker, (world, free_port(), str(out_dir), *args), world, "offload job", timeout=600)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]


def _record(out_dir: str, rank: int, run) -> None:
    try:
        result = run()
    except Exception:  # noqa: BLE001 - the test reading the result reports it
        result = {"error": traceback.format_exc()[-4000:]}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _assert_same_history(got: list, expected: list, rtol: float, n_steps: int = STEPS) -> None:
    assert len(got) == len(expected) == n_steps
    for step, ((loss, norm), (ref_loss, ref_norm)) in enumerate(zip(got, expected), start=1):
        assert math.isclose(loss, ref_loss, rel_tol=rtol), (step, loss, ref_loss)
        assert math.isclose(norm, ref_norm, rel_tol=rtol), (step, norm, ref_norm)


# ------------------------------------------------------------------ DeepSpeed ZeRO-Infinity to NVMe
def _deepspeed_train(model: ModelConfig, options, world: int, n_steps: int):
    """``n_steps`` DeepSpeed steps of ``model`` on the shared batches: [(loss, grad norm)] and the step."""
    from alphaexa.model import build_model
    from alphaexa.parallel.deepspeed_engine import DeepSpeedTrainStep
    from alphaexa.parallel.equivalence import token_batches
    from topology.layout import Layout

    inputs, targets = token_batches(n_steps, GLOBAL_BATCH, SEQ, model.vocab_size)
    layout = Layout(dp_shard=world, sharding="zero3", mbs=GLOBAL_BATCH // (MICRO_STEPS * world))
    step = DeepSpeedTrainStep(build_model(model), layout, options, n_microbatches=MICRO_STEPS)
    history = []
    for s in range(n_steps):
        result = step(inputs[s], targets[s])
        history.append((result.loss, step.last_grad_norm))
    return history, step


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())  # 0 when it does not exist


DS_BASE = {"max_norm": MAX_NORM, "lr": LR, "weight_decay": WEIGHT_DECAY, "betas": (0.9, 0.999)}


def _train_each(runs: dict, model: ModelConfig, world: int, n_steps: int, figures) -> dict:
    """Each named DeepSpeed run's history, plus ``figures(step)`` as ``NAME-KEY`` while its engine lives."""
    out = {}
    for name, options in runs.items():
        out[name], step = _deepspeed_train(model, options, world, n_steps)
        out.update({f"{name}-{key}": value for key, value in figures(step).items()})
    return out


def _deepspeed_worker(rank: int, world: int, port: int, out_dir: str, nvme_dir: str) -> None:
    _init(rank, world, port)
    from alphaexa.parallel.deepspeed_engine import DeepSpeedOptions

    runs = {"zero3": DeepSpeedOptions(**DS_BASE),
            "zero3-nvme": DeepSpeedOptions(offload_optimizer="nvme", offload_params="nvme", nvme_path=nvme_dir,
                                           **DS_BASE)}

    def figures(_step):  # swap files as they are while the engine lives (DeepSpeed removes them when it ends)
        return {"swap-bytes": {what: _dir_bytes(Path(nvme_dir, what)) for what in ("params", "optimizer")}}

    _record(out_dir, rank, lambda: _train_each(runs, MODEL, world, STEPS, figures))


@pytest.mark.multiproc
@pytest.mark.usefixtures("deepspeed_ops_built")
def test_zero3_with_params_and_optimizer_on_nvme_trains_like_zero3(tmp_path):
    pytest.importorskip("deepspeed")
    nvme = tmp_path / "nvme"
    (result,) = _spawn(_deepspeed_worker, 1, tmp_path, str(nvme))
    assert "error" not in result, result["error"]
    _assert_same_history(result["zero3-nvme"], result["zero3"], RTOL)
    # The swap directories exist; files stay empty for this tiny model (DeepSpeed keeps tensors below its
    # 1e5-element persistence threshold in memory), so NVMe traffic itself is shown by bench/gpu_offload.py.
    assert set(result["zero3-nvme-swap-bytes"]) == {"params", "optimizer"} and (nvme / "optimizer").is_dir()


# Parameters that really swap: >= 1 MiB each (DeepSpeed keeps smaller tensors in memory), none kept in
# host memory (nvme_params_in_cpu=0): 14 swappable matrices, 6 swap buffers by nvme_param_buffers.
SWAP_MODEL = ModelConfig(name="swap-test", n_layers=4, d_model=256, n_heads=4, n_kv_heads=2, d_ff=1024,
                         ffn_type="swiglu", vocab_size=1024, max_seq_len=32)
SWAP_STEPS = 3


def _nvme_swap_worker(rank: int, world: int, port: int, out_dir: str, nvme_dir: str) -> None:
    _init(rank, world, port)
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum

    from alphaexa.parallel.deepspeed_engine import DeepSpeedOptions

    runs = {"zero3": DeepSpeedOptions(offload_optimizer="cpu", **DS_BASE),
            "nvme": DeepSpeedOptions(offload_optimizer="cpu", offload_params="nvme", nvme_path=nvme_dir,
                                     nvme_params_in_cpu=0, **DS_BASE)}

    def figures(step):
        return {"on-nvme": sum(p.ds_tensor.final_location == OffloadDeviceEnum.nvme
                               for p in step.engine.module.parameters()),
                "buffers": step.config["zero_optimization"].get("offload_param", {}).get("buffer_count"),
                "swap-bytes": _dir_bytes(Path(nvme_dir, "params"))}

    _record(out_dir, rank, lambda: _train_each(runs, SWAP_MODEL, world, SWAP_STEPS, figures))


@pytest.mark.multiproc
@pytest.mark.usefixtures("deepspeed_ops_built")
def test_nvme_parameters_that_swap_train_several_steps_within_the_buffers(tmp_path):
    # The H200 run of 2026-12-04: step 1 ran, then "Not enough buffers 0 for swapping 1" (DeepSpeed's
    # reuse distance kept more parameters in swap buffers than buffer_count).  Here 14 matrices swap
    # through 6 buffers for 3 optimizer steps of 2 micro-steps and train as the same run without it.  On a CPU
    # without oneDNN fp16 DeepSpeed's own conversion sized the swapper for 2-byte elements and none swapped
    # (session 9's CI machine): the engine partitions for NVMe itself (_partition_for_nvme).
    pytest.importorskip("deepspeed")
    nvme = tmp_path / "nvme"
    (result,) = _spawn(_nvme_swap_worker, 1, tmp_path, str(nvme))
    assert "error" not in result, result["error"]
    assert result["nvme-on-nvme"] == 14 and result["nvme-buffers"] == 6
    assert result["nvme-swap-bytes"] >= 14 * 256 * 1024 * 4
    _assert_same_history(result["nvme"], result["zero3"], RTOL, SWAP_STEPS)


def test_unwritable_nvme_path_is_one_line(tmp_path):
    from alphaexa.parallel.deepspeed_engine import DeepSpeedOptions, check_deepspeed_layout
    from topology.layout import Layout

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    options = DeepSpeedOptions(offload_optimizer="nvme", offload_params="nvme", nvme_path=str(blocker / "nvme"))
    with pytest.raises(ConfigError) as error:
        check_deepspeed_layout(Layout(dp_shard=1, sharding="zero3"), options)
    assert "is not a writable directory" in str(error.value) and "\n" not in str(error.value)


def test_an_op_that_is_not_prebuilt_is_one_line_when_compiling_is_off(monkeypatch):
    pytest.importorskip("deepspeed")
    from alphaexa.parallel import deepspeed_ops

    monkeypatch.setenv(deepspeed_ops.NO_JIT_ENV, "1")
    monkeypatch.setattr(deepspeed_ops, "prebuilt", lambda builder: False)  # whatever this install holds
    with pytest.raises(ConfigError) as error:
        deepspeed_ops.prepare_ops([deepspeed_ops.CPU_ADAM], log=lambda line: pytest.fail(f"compiling: {line}"))
    message = str(error.value)
    assert "cpu_adam op is not prebuilt" in message and "ALPHAEXA_DS_NO_JIT=1" in message and "\n" not in message


def test_each_environment_builds_its_ops_in_its_own_folder(tmp_path):
    # torch's default folder is one per op name for all of a user's environments: a second checkout's ops,
    # compiled against its own headers, made this one's recompile inside a 300 s-guarded training run (session 10).
    # Importing the ops module points TORCH_EXTENSIONS_DIR at the running environment, and leaves a user's choice.
    import subprocess
    import sys

    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a virtual environment")
    probe = ("import os, sys; import alphaexa.parallel.deepspeed_ops as d; "
             "print(os.environ['TORCH_EXTENSIONS_DIR']); print(d._build_directory('async_io'))")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    folder, build = out.stdout.split()
    assert Path(folder) == Path(sys.prefix) / "torch_extensions"
    assert Path(build) == Path(folder) / "async_io"
    chosen = tmp_path / "mine"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**env, "TORCH_EXTENSIONS_DIR": str(chosen)})
    assert out.stdout.split() == [str(chosen), str(chosen / "async_io")]


# ------------------------------------------------------------------ native: FSDP2's CPUOffloadPolicy
def _native_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _init(rank, world, port)
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule

    from alphaexa.model import build_model
    from alphaexa.parallel import build_mesh, clip_grad_norm_, local_rows, make_train_step, parallelize
    from alphaexa.parallel.equivalence import token_batches
    from backends.device import get_backend
    from topology.layout import Layout

    def run():
        layout = Layout(dp_shard=world, sharding="zero3", mbs=GLOBAL_BATCH // (MICRO_STEPS * world))
        inputs, targets = token_batches(STEPS, GLOBAL_BATCH, SEQ, MODEL.vocab_size)
        rows = local_rows(GLOBAL_BATCH, MICRO_STEPS, rank, world)
        dims = build_mesh(layout, get_backend())
        out = {}
        for offload in (False, True):
            pmodel = parallelize(build_model(MODEL), dims, cpu_offload=offload)
            # The policy each FSDP module holds (FSDP2 has no public getter for it).
            policies = {type(m._get_fsdp_state()._fsdp_param_group.offload_policy).__name__
                        for m in pmodel.chunks[0].modules() if isinstance(m, FSDPModule)}
            step = make_train_step(pmodel, MICRO_STEPS)
            optimizer = torch.optim.AdamW(pmodel.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
            history = []
            for s in range(STEPS):
                result = step(inputs[s][rows], targets[s][rows])
                norm = clip_grad_norm_(pmodel.parameters(), MAX_NORM, dims)
                optimizer.step()
                optimizer.zero_grad()
                history.append((result.loss, float(norm)))
            out["offload" if offload else "plain"] = {"history": history, "policies": sorted(policies)}
        assert CPUOffloadPolicy.__name__ in out["offload"]["policies"]
        return out

    _record(out_dir, rank, run)


@pytest.mark.multiproc
def test_fsdp2_cpu_offload_trains_like_no_offload(tmp_path):
    results = _spawn(_native_worker, 2, tmp_path)
    for rank, result in enumerate(results):
        assert "error" not in result, f"rank {rank}: {result['error']}"
        assert result["offload"]["policies"] == ["CPUOffloadPolicy"]
        assert result["plain"]["policies"] == ["OffloadPolicy"]  # FSDP2's "no offload"
        # Same kernels on the same (host) memory here: the runs agree exactly.
        assert result["offload"]["history"] == result["plain"]["history"]


@pytest.mark.multiproc
def test_cpu_offloaded_run_resumes_bitwise(tmp_path):
    """The uninterrupted run's checkpoint of step 4, alone in a run directory, continues to its steps 5-8
    bitwise (stopping a run with --stop-at and resuming it is test_resume's)."""
    cache = tmp_path / "cache"
    offload = ("parallel.offload=cpu", "parallel.sharding=zero3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, *offload, cache_dir=cache)
    copy_checkpoint_run(straight, resumed, 4)
    train(resumed, resume=True, config=None, cache_dir=cache)
    assert sorted(steps(resumed)) == [5, 6, 7, 8]
    start = [e for e in read_metrics(resumed)[2] if e["event"] in ("start", "resume")]
    assert [(e["event"], e["step"], e["offload"]) for e in start] == [("resume", 4, "cpu")]
    assert losses(resumed) == {s: loss for s, loss in losses(straight).items() if s > 4}
    assert [r["grad_norm"] for r in steps(resumed).values()] == [steps(straight)[s]["grad_norm"] for s in range(5, 9)]


# ------------------------------------------------------------------ the run config
@pytest.mark.parametrize("sets,message", [
    (["parallel.offload=nvme", "parallel.sharding=zero3", "parallel.nvme_path=/tmp/x"],
     "parallel.offload=nvme needs parallel.engine=deepspeed"),
    (["parallel.offload=nvme", "parallel.engine=deepspeed", "parallel.sharding=zero3"], "needs parallel.nvme_path"),
    (["parallel.offload=cpu", "parallel.sharding=zero2"], "parallel.offload=cpu needs parallel.sharding=zero3"),
    (["parallel.offload=disk"], "parallel.offload='disk': must be one of none, cpu, nvme"),
    (["parallel.engine=megatron"], "parallel.engine='megatron': must be one of native, deepspeed"),
])
def test_offload_settings_are_one_line_errors(sets, message):
    with pytest.raises(ConfigError) as error:
        load_run_config(Path(__file__).parents[1] / "configs" / "debug.toml", sets)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_offload_keys_round_trip_and_come_from_a_plan(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plans": [{"layout": {"dp_shard": 1, "sharding": "zero3"},
                                           "engine": "deepspeed", "offload": "nvme", "nvme_path": "/scratch/x"}]}))
    cfg = load_run_config(Path(__file__).parents[1] / "configs" / "debug.toml", plan=plan)
    assert (cfg.engine_options.engine, cfg.engine_options.offload) == ("deepspeed", "nvme")
    cfg.save(tmp_path / "config.toml")
    again = load_run_config(tmp_path / "config.toml")
    assert again.engine_options == cfg.engine_options and again.parallel == cfg.parallel

