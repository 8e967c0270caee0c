"""`alphaexa train` with parallel.engine=deepspeed: real runs of the debug config on DeepSpeed's CPU accelerator.

ZeRO-3 with parameters and optimizer state on NVMe (a local directory) trains like ZeRO-3 without
offload and like the native engine; a checkpoint of the NVMe run resumes bitwise with NVMe offload (its
optimizer state swapped to the disk or kept in host memory, 1 and 2 ranks); what the engine
cannot do is one line before any work; a plan from `alphaexa plan --offload nvme` runs as planned.

Tolerance RTOL (1e-5, relative): the three runs use three AdamW implementations (DeepSpeed's CPU
Adam when the optimizer is offloaded, torch's AdamW on DeepSpeed's flat fp32 partitions, torch's
foreach AdamW on the native engine's parameters) and DeepSpeed sums gradients in its own flat
buckets, so the fp32 runs agree to rounding (measured: within 2e-7 over 5 steps on the debug model, 6.3e-7 on
the SWAPPING model, whose optimizer state the NVMe run swaps to the disk), not bitwise.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from train_runs import DEBUG_CONFIG, REPO, copy_checkpoint_run, run_env, steps, train

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.usefixtures("deepspeed_ops_built")  # compiled once, outside the hang guard

STEPS = 5
RTOL = 1e-5
SHORT = (f"train.steps={STEPS}", "checkpoint.every=3", "train.eval_batches=0")
ZERO3 = ("parallel.engine=deepspeed", "parallel.sharding=zero3")


def _nvme(tmp) -> tuple[str, ...]:
    return (*ZERO3, "parallel.offload=nvme", f"parallel.nvme_path={tmp / 'nvme'}")


def _history(run_dir) -> list[tuple[float, float]]:
    return [(r["loss"], r["grad_norm"]) for _, r in sorted(steps(run_dir).items())]


# A model whose weight-decay sub-group swaps to NVMe on each of one or two ranks (DeepSpeed swaps a
# sub-group of at least 1 MiB, 262,144 fp32 elements; this one has 705,024) while the no-decay one (the
# norms, 640 elements) stays in host memory.
SWAPPING = ("model.d_model=128", "model.d_ff=512", "model.moe_d_ff=256")


@pytest.fixture(scope="module")
def nvme_run(tmp_path_factory):
    """One uninterrupted NVMe-offloaded run of the SWAPPING model (optimizer state on the disk), shared by the
    comparison with ZeRO-3 and the native engine and, as the run to equal, by the bitwise resume on one rank."""
    tmp = tmp_path_factory.mktemp("ds-nvme")
    train(tmp / "run", *SHORT, *_nvme(tmp), *SWAPPING, cache_dir=tmp / "cache")
    return tmp


@pytest.fixture(scope="module")
def debug_nvme_run(tmp_path_factory):
    """One uninterrupted NVMe-offloaded run of the debug model (nothing swapped: see the test that uses it)."""
    tmp = tmp_path_factory.mktemp("ds-nvme-debug")
    train(tmp / "run", *SHORT, *_nvme(tmp), cache_dir=tmp / "cache")
    return tmp


@pytest.mark.multiproc
def test_nvme_offload_trains_like_zero3_and_the_native_engine(nvme_run, tmp_path):
    cache = nvme_run / "cache"
    train(tmp_path / "zero3", *SHORT, *ZERO3, *SWAPPING, cache_dir=cache)
    train(tmp_path / "native", *SHORT, "parallel.sharding=zero3", *SWAPPING, cache_dir=cache)
    offloaded = _history(nvme_run / "run")
    assert len(offloaded) == STEPS
    for name in ("zero3", "native"):
        for step, (got, want) in enumerate(zip(offloaded, _history(tmp_path / name), strict=True), start=1):
            assert all(math.isclose(g, w, rel_tol=RTOL) for g, w in zip(got, want)), (name, step, got, want)
    # The same run directory as the native engine: config, tokenizer, metrics, checkpoints with `latest`.
    run = nvme_run / "run"
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert (start["engine"], start["offload"]) == ("deepspeed", "nvme")
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:06d}"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000003", "step_000005"]
    assert (run / "tokenizer").is_dir() and 'engine = "deepspeed"' in (run / "config.toml").read_text()


# test_optimizer_state_swapped_to_nvme_resumes_bitwise covers both restore paths (a swapped sub-group and one
# kept in memory) by default; this debug-model variant (nothing swaps, plus a resume with offload=cpu) is long.
@pytest.mark.exhaustive
@pytest.mark.multiproc
def test_checkpoint_of_the_nvme_run_resumes_bitwise(debug_nvme_run, tmp_path):
    """The debug model's optimizer sub-groups are all under DeepSpeed's 1 MiB swap minimum, so their state
    stays in host memory and only the ``*_optim_states.pt`` holds it; DeepSpeed 0.19.8's NVMe load never
    reads that file (fresh weights after a resume without ``restore_swapped_optimizer``)."""
    cache = debug_nvme_run / "cache"
    resumed = tmp_path / "resumed"
    train(resumed, *SHORT, *_nvme(tmp_path), stop_at=3, cache_dir=cache)
    copy_checkpoint_run(resumed, tmp_path / "on_cpu", 3)
    train(resumed, resume=True, config=None, cache_dir=cache)
    assert _history(resumed) == _history(debug_nvme_run / "run")
    # Nothing was swapped, so the same files also continue exactly with the optimizer in host memory.
    train(tmp_path / "on_cpu", "parallel.offload=cpu", resume=True, config=None, cache_dir=cache)
    assert _history(tmp_path / "on_cpu") == _history(debug_nvme_run / "run")[3:]


def _swapped(run, step: int) -> list[str]:
    """What the checkpoint's NVMe swap files hold, per rank: ``exp_avg-<id>.tensor.swp``, ``<id>.tensor.swp``."""
    offloaded = run / "checkpoints" / f"step_{step:06d}" / "zero" / "offloaded_tensors"
    return sorted(p.name.split("-")[0] if "-" in p.name else "master" for p in offloaded.rglob("*.tensor.swp"))


@pytest.mark.multiproc
@pytest.mark.parametrize("nproc", [None, pytest.param(2, marks=pytest.mark.exhaustive)])
def test_optimizer_state_swapped_to_nvme_resumes_bitwise(nvme_run, tmp_path, nproc):
    """Master weights and Adam moments on NVMe (the swap files copied into the checkpoint) and in host
    memory (the .pt file) both come back: the uninterrupted run's checkpoint of step 3, alone in a run
    directory and resumed with an empty NVMe directory of its own (so only the checkpoint's copies can
    hold the state), continues to the uninterrupted run's steps 4-5 bitwise (a checkpoint that later
    steps changed in place would fail too).  On one rank the uninterrupted run is the module's
    ``nvme_run`` (the same settings)."""
    cache = nvme_run / "cache"
    if nproc is None:
        straight = nvme_run / "run"
    else:
        straight = tmp_path / "straight"
        train(straight, *SHORT, *_nvme(tmp_path), *SWAPPING, nproc=nproc, cache_dir=cache)
    resumed = tmp_path / "resumed"
    copy_checkpoint_run(straight, resumed, 3)
    # One swapped sub-group on each rank: its master weights, exp_avg and exp_avg_sq.
    assert _swapped(resumed, 3) == sorted(["exp_avg", "exp_avg_sq", "master"] * (nproc or 1))
    # DeepSpeed's own load cannot put swapped state into an optimizer in host memory: one line, no work.
    refused = train(resumed, "parallel.offload=cpu", resume=True, config=None, nproc=nproc, cache_dir=cache,
                    check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--set parallel.offload=nvme" in refused.stderr
    fresh_nvme = tmp_path / "nvme-of-the-resumed-run"
    fresh_nvme.mkdir()
    train(resumed, f"parallel.nvme_path={fresh_nvme}", resume=True, config=None, nproc=nproc, cache_dir=cache)
    assert any(fresh_nvme.rglob("*.tensor.swp"))  # the resumed run swapped there, not in the first run's
    assert sorted(steps(resumed)) == [4, 5]
    assert _history(resumed) == _history(straight)[3:]


def test_offloads_that_deepspeed_cannot_resume_are_one_line(tmp_path):
    """preflight's check on the checkpoint's files, before any process group: an NVMe run needs the
    checkpoint's offloaded optimizer files; swapped ones need an NVMe run."""
    from alphaexa.errors import UserError
    from alphaexa.train.config import load_run_config
    from alphaexa.train.preflight import check_offload_resume

    manifest = {"engine": "deepspeed"}
    checkpoint = tmp_path / "step_000003"
    (checkpoint / "zero").mkdir(parents=True)

    def config(offload: str):
        return load_run_config(DEBUG_CONFIG, [*ZERO3, f"parallel.offload={offload}", f"parallel.nvme_path={tmp_path}"])

    with pytest.raises(UserError, match="written without parallel.offload=nvme"):
        check_offload_resume(config("nvme"), checkpoint, manifest)
    check_offload_resume(config("cpu"), checkpoint, manifest)
    rank = checkpoint / "zero" / "offloaded_tensors" / "rank00"
    rank.mkdir(parents=True)  # an NVMe run whose sub-groups all stayed in host memory
    for offload in ("nvme", "cpu", "none"):
        check_offload_resume(config(offload), checkpoint, manifest)
    (rank / "exp_avg-0_21.tensor.swp").write_bytes(b"\0" * 4096)
    check_offload_resume(config("nvme"), checkpoint, manifest)
    for offload in ("cpu", "none"):
        with pytest.raises(UserError, match=f"resume it with --set parallel.offload=nvme, not {offload}") as error:
            check_offload_resume(config(offload), checkpoint, manifest)
        assert "\n" not in str(error.value)


def test_a_plan_that_offloads_to_nvme_runs_on_the_deepspeed_engine(tmp_path):
    plan = tmp_path / "plan.json"
    subprocess.run([sys.executable, "-m", "alphaexa", "plan", "--model", "debug", "--system", "h200-x1",
                    "--global-batch", "8", "--seq-len", "32", "--offload", "nvme", "--nvme-path",
                    str(tmp_path / "nvme"), "--out", str(plan)], check=True, capture_output=True, env=run_env(),
                   cwd=REPO)
    best = json.loads(plan.read_text())["plans"][0]
    assert (best["engine"], best["offload"]) == ("deepspeed", "nvme")
    run = tmp_path / "run"
    train(run, "train.steps=3", "train.warmup=1", "train.eval_batches=0", cache_dir=tmp_path / "cache", plan=plan)
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert (start["engine"], start["offload"], start["layout"]["sharding"]) == ("deepspeed", "nvme", "zero3")
    assert sorted(steps(run)) == [1, 2, 3] and (run / "plan.json").is_file()


@pytest.mark.parametrize("sets,nproc,message", [
    (("parallel.tp=2",), 2, "the DeepSpeed engine runs data parallelism only"),
    (("parallel.offload=nvme", "parallel.nvme_path=/proc/alphaexa-nvme"), None, "is not a writable directory"),
    (("debug.nan_at_step=2",), None, "debug.nan_at_step=2 is not available with parallel.engine=deepspeed"),
    (("train.dtype=fp64",), None, "train.dtype=fp64 is not available with parallel.engine=deepspeed"),
])
def test_what_the_deepspeed_engine_cannot_do_is_one_line_before_any_work(tmp_path, sets, nproc, message):
    run = tmp_path / "run"
    done = train(run, *ZERO3, *sets, cache_dir=tmp_path / "cache", check=False, nproc=nproc)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not run.exists() and not (tmp_path / "cache").exists()


def test_missing_libaio_is_one_line(monkeypatch):
    """This machine has libaio, so its absence is simulated where DeepSpeed reports it (is_compatible)."""
    from deepspeed.ops.op_builder.cpu.async_io import AsyncIOBuilder

    from alphaexa.parallel.deepspeed_ops import ASYNC_IO, PIN_MEMORY, check_buildable
    from topology.modelcfg import ConfigError

    monkeypatch.setattr(AsyncIOBuilder, "is_compatible", lambda self, verbose=False: False)
    with pytest.raises(ConfigError) as error:
        check_buildable([PIN_MEMORY, ASYNC_IO])
    assert "apt-get install libaio-dev" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.multiproc
@pytest.mark.exhaustive
def test_two_ranks_match_the_native_engine_and_resume_bitwise(tmp_path):
    """--nproc 2: ZeRO-3 partitions on two ranks, NVMe offload (resumed with it).  Compared with the native engine on two
    ranks (one rank groups the MoE statistics into other micro-batches, so its losses differ by design)."""
    cache = tmp_path / "cache"
    train(tmp_path / "straight", *SHORT, *_nvme(tmp_path), nproc=2, cache_dir=cache)
    train(tmp_path / "native", *SHORT, "parallel.sharding=zero3", nproc=2, cache_dir=cache)
    for got, want in zip(_history(tmp_path / "straight"), _history(tmp_path / "native"), strict=True):
        assert all(math.isclose(g, w, rel_tol=RTOL) for g, w in zip(got, want)), (got, want)
    resumed = tmp_path / "resumed"
    train(resumed, *SHORT, *_nvme(tmp_path), nproc=2, stop_at=3, cache_dir=cache)
    train(resumed, resume=True, config=None, nproc=2, cache_dir=cache)
    assert _history(resumed) == _history(tmp_path / "straight")


def test_muon_modules_import_lazily_and_a_missing_one_is_skipped(monkeypatch, tmp_path):
    """import_muon_compiling_lazily: a DeepSpeed without one of the Muon modules (the extra is not pinned) starts as
    before, a module that is there but misses one of its own imports still fails, and DeepSpeed's
    ``compiler.compile`` is restored either way."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime import compiler

    from alphaexa.parallel import deepspeed_engine

    before = compiler.compile
    monkeypatch.setattr(deepspeed_engine, "MUON_MODULES", (*deepspeed_engine.MUON_MODULES, "deepspeed.runtime.zero.gone"))
    deepspeed_engine.import_muon_compiling_lazily()
    assert compiler.compile is before
    (tmp_path / "muon_needing_more.py").write_text("import alphaexa_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(deepspeed_engine, "MUON_MODULES", ("muon_needing_more",))
    with pytest.raises(ModuleNotFoundError, match="alphaexa_no_such_dependency"):
        deepspeed_engine.import_muon_compiling_lazily()
    assert compiler.compile is before
