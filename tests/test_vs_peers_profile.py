"""bench/vs_peers.py's profiler window over the trainer's steps (``_profile_trainer_steps``): it
holds exactly the profiled steps' work, and setting the profiler up (a device synchronisation and
the profiler's start, CUPTI's initialisation on a GPU) lands in no step that is timed before it.

The trainer may launch step N+1 before it reads step N (``train.overlap_steps``): a profiler
started at the launch of the first profiled step would then start inside the last timed step's
wall time (its record is written after that launch), and inflate the mean step time of every
profiled contender against the unprofiled ones (the ``no-overlap`` ablation among them)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_runs import DEBUG_CONFIG, HANG_GUARD_S, REPO, run_env

# Runs in its own process: the wrapper patches the Trainer class, and a run initialises torch.distributed.
SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/bench")
import vs_peers
from alphaexa.cli import main
from alphaexa.train.metrics import MetricsLogger
from torch.autograd import DeviceType

first, count, sets = int(sys.argv[2]), int(sys.argv[3]), sys.argv[6:]
into, order, window = {}, [], {}
vs_peers._profile_trainer_steps(first, count, into)
start, stop, record = vs_peers._StepProfiler.start, vs_peers._StepProfiler.stop, MetricsLogger.step

def profiler_start(self):
    order.append("profiler start")
    start(self)

def profiler_stop(self):
    summary = stop(self)
    order.append("profiler stop")
    # torch.optim annotates each optimizer step on the host (on CUDA the device gets a copy of the range too)
    window["optimizer_steps"] = sum(e.device_type == DeviceType.CPU and e.name.startswith("Optimizer.step#")
                                    for e in self.profile.events())
    return summary

def step_record(self, r):
    order.append(f"record {r['step']} overlapped {r['overlapped']}")
    record(self, r)

vs_peers._StepProfiler.start, vs_peers._StepProfiler.stop, MetricsLogger.step = profiler_start, profiler_stop, step_record
argv = ["train", "--config", sys.argv[4], "--run-dir", sys.argv[5]]
code = main(argv + [a for s in sets for a in ("--set", s)])
print("RESULT " + json.dumps({"code": code, "order": order, "profiled": "profile" in into, **window}))
"""


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "one-step-at-a-time"])
def test_profiler_window_holds_exactly_its_steps_and_starts_after_the_timed_ones(tmp_path, overlap):
    first, count, steps = 4, 2, 6  # steps 1-3 timed (as warm-up + timed), 4-5 profiled, 6 after the window
    sets = ["train.optimizer_impl=fused", f"train.overlap_steps={str(overlap).lower()}", f"train.steps={steps}",
            "train.eval_every=0", "train.eval_batches=0", "checkpoint.enabled=false", "logging.progress=false",
            f"data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), str(first), str(count), str(DEBUG_CONFIG),
                           str(tmp_path / "run"), *sets], capture_output=True, text=True, env=run_env(), cwd=REPO,
                          timeout=HANG_GUARD_S, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["code"] == 0 and result["profiled"]
    assert result["optimizer_steps"] == count
    order = result["order"]
    started, stopped = order.index("profiler start"), order.index("profiler stop")
    records = {int(item.split()[1]): i for i, item in enumerate(order) if item.startswith("record ")}
    assert sorted(records) == list(range(1, steps + 1))
    # every step before the window is timed and written before the profiler starts
    assert all(records[s] < started for s in range(1, first)), order
    assert all(started < records[s] for s in range(first, steps + 1)), order
    # the window closes before any step after it is read
    assert stopped < records[first + count], order
    overlapped = {int(item.split()[1]) for item in order if item.endswith("overlapped 1")}
    if overlap:  # the trainer still overlaps everywhere else (not the last step, not just before the window)
        assert overlapped == {1, 2, 4, 5}, order
    else:
        assert not overlapped


@pytest.mark.parametrize("kernel, category", [
    # kernel names from the H100 profile of session 12 (Mixtral-like shape)
    ("triton_poi_fused__grouped_mm__to_copy_14", "elementwise/norm"),  # the expert weights' bf16 cast
    ("triton_per_fused__fused_rms_norm_backward__to_copy_add_view_19", "elementwise/norm"),
    ("triton_poi_fused__to_copy_add_index_put_8", "routing/permute/index/sort"),
    ("_ZN7cutlass13device_kernelIN2at4cuda6detail25enable_3x_kernel_for_sm9xINS_4gemm6kernel13GemmUniversal", "GEMM"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "GEMM"),
    ("triton_tem_fused_mm_0", "GEMM"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention bwd"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata", "optimizer + clip"),
    # session 13, H200: train.bf16_weights' compiled AdamW update
    ("triton_poi_fused__to_copy_add_copy_copy__div_eq_lerp_mul_pow_rsub_sqrt_sub_where_5", "optimizer + clip"),
])
def test_profile_categories_put_inductor_casts_named_after_a_gemm_outside_the_gemms(kernel, category):
    sys.path.insert(0, str(REPO / "bench"))
    import vs_peers

    assert vs_peers.kernel_category(kernel) == category


def test_a_combined_ablation_turns_every_named_lever_in_one_run_and_an_unknown_part_is_refused(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import vs_peers

    both = vs_peers.ablation_options("fused-projections+coordinate-descent+bf16-weights")
    assert both["sets"] == ["train.fused_projections=true", "train.bf16_weights=true"]
    assert both["env"] == {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"}
    assert "env" not in vs_peers.ablation_options("fused-projections")
    assert vs_peers.ablation_timeout_s("fused-projections+coordinate-descent") == 360  # the slowest part's
    run = subprocess.run([sys.executable, str(REPO / "bench" / "vs_peers.py"), str(tmp_path / "out"), "--ablations",
                          "fused-projections+no-such-lever"], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "fused-projections+no-such-lever: unknown lever(s) 'no-such-lever'" in run.stderr
    assert "unknown lever(s) ''" in vs_peers.ablation_error("fused-projections+")
    assert "set train.bf16_weights more than once" in vs_peers.ablation_error("bf16-weights+no-bf16-weights")
    assert vs_peers.ablation_error("fused-projections+coordinate-descent") is None
