"""The planner offloads only when nothing fits without it, says why, and the trainer accepts the plan."""
import json

import pytest

from alphaexa.parallel import check_layout
from alphaexa.parallel.deepspeed_engine import DeepSpeedOptions, check_deepspeed_layout
from topology.cli import main as topology_main
from topology.planner import plan
from topology.presets import get_preset


def test_30b_on_one_h200_fits_only_with_offload_and_the_plan_says_why():
    assert plan("30b", "h200-x1", 1, 16, 4096, offload="none").plans == []
    # Unasked, the planner offloads with what `alphaexa train` runs: 485 GiB of state is more than the
    # host's share (cpu), so DeepSpeed's ZeRO-Infinity to NVMe is the plan, and it says why.
    unasked = plan("30b", "h200-x1", 1, 16, 4096)
    assert (unasked.best.engine, unasked.best.offload) == ("deepspeed", "nvme")
    assert unasked.offload_reason and not unasked.offload_reason.startswith("Offload pinned")
    result = plan("30b", "h200-x1", 1, 16, 4096, offload="nvme", nvme_path="/nvme/alphaexa")
    best = result.best
    assert best.offload == "nvme" and best.engine == "deepspeed"
    assert best.estimate.memory["total"] <= best.estimate.memory["capacity"]
    assert result.offload_reason.startswith("Offload pinned: with offload=nvme (deepspeed engine)")
    first = json.loads(result.to_json())["plans"][0]
    assert (first["engine"], first["offload"], first["nvme_path"]) == ("deepspeed", "nvme", "/nvme/alphaexa")
    # what the trainer and the DeepSpeed engine check before any work
    lay = best.estimate.layout
    check_layout(lay, get_preset("30b"), "cuda", engine="deepspeed", offload="nvme")
    options = DeepSpeedOptions(offload_optimizer="nvme", offload_params="nvme", nvme_path="/nvme/alphaexa")
    assert check_deepspeed_layout(lay, options) == 3


def test_host_memory_offload_when_the_state_fits_the_host():
    result = plan("30b", "h200-x1", 1, 16, 4096, offload="cpu")
    assert result.plans == []  # 485 GiB of state, 256 GiB of host memory per GPU
    result = plan("30b", "h200-x4", 1, 32, 4096, offload="cpu", top=20)
    assert {p.engine for p in result.plans} == {"native", "deepspeed"}
    for p in result.plans:
        assert p.offload == "cpu" and p.estimate.layout.sharding == "zero3"
        assert p.estimate.memory["offloaded_per_node"] <= 0.8 * p.estimate.memory["offload_capacity"]
        check_layout(p.estimate.layout, get_preset("30b"), "cuda", engine=p.engine, offload="cpu")


def test_no_offload_when_a_plan_fits_without_it():
    result = plan("7b", "h200-x1", 1, 16, 4096)
    assert result.best.offload == "none" and not result.offload_reason


def test_cli_table_names_engine_and_offload(capsys):
    assert topology_main(["plan", "--model", "30b", "--system", "h200-x1", "--global-batch", "16", "--seq-len",
                          "4096", "--offload", "nvme", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "Offload pinned" in out and "deepspeed     nvme" in out
    assert "offload (" in out  # what binds


@pytest.mark.parametrize("pins", [{"tp": 2}, {"pp": 2}])
def test_deepspeed_offload_respects_pins_that_rule_it_out(pins):
    assert plan("30b", "h200-x4", 1, 32, 4096, offload="nvme", pins=pins).plans == []


def test_the_offload_search_ranks_only_layouts_whose_state_fits_the_host():
    # 250b-spec on 64 Polaris nodes fits only offloaded; the search used to rank layouts by device memory
    # alone, so with --top 1 its one candidate could overflow the host memory and the result was "nothing fits"
    r = plan("alphaexa-250b-spec", "polaris", nodes=64, global_batch=2048, seq_len=8192, top=1)
    assert r.best is not None and r.best.offload == "cpu" and r.best.estimate.fits


# ------------------------------------------------------------------ the offload step time (issue 14)
def _h200(cores: int | None = None, disk_gbps: float | None = None):
    import dataclasses

    from topology.hardware import load_system

    system = load_system("h200-x1")
    node = system.node
    if cores is not None:
        node = dataclasses.replace(node, numa_cores=(f"0-{cores - 1}",))
    if disk_gbps is not None:
        node = dataclasses.replace(node, nvme_gbps=disk_gbps)
    return dataclasses.replace(system, node=node)


def _estimate(system, offload="nvme", optimizer="cpu", global_batch=4, n_layers=12):
    from topology.costmodel import Request, estimate
    from topology.layout import Layout

    cfg = get_preset("7b").replace(n_layers=n_layers)
    req = Request(cfg, system, 1, global_batch, 2048, offload=offload, engine="deepspeed",
                  offload_optimizer="" if optimizer == offload else optimizer)
    return req, estimate(req, Layout(dp_shard=1, sharding="zero3", mbs=4))


def test_nvme_parameter_traffic_reads_twice_a_micro_batch_and_writes_back_once_a_step():
    from topology.costmodel import offload_traffic
    from topology.modelcfg import param_counts

    req, _ = _estimate(_h200())
    n = param_counts(req.model).total
    t = offload_traffic(req, n)
    # the H200 run of 7b-12l: 5.01 GiB of bf16 parameters, 5.01 GiB written a step, 10.02 GiB read in step 1
    assert t["disk_write"] / 2**30 == pytest.approx(5.01, abs=0.01)
    assert t["disk_read"] == 2 * t["disk_write"] and t["disk_state"] == 0.0
    assert offload_traffic(_estimate(_h200(), optimizer="nvme")[0], n)["disk_state"] == 32 * n
    assert offload_traffic(_estimate(_h200(), offload="cpu")[0], n)["disk_read"] == 0.0
    # two micro-batches: the reads (offload_s) twice, the write-back (in optimizer_s) once
    _, one = _estimate(_h200(disk_gbps=1.0))
    _, two = _estimate(_h200(disk_gbps=1.0), global_batch=8)
    assert two.breakdown["offload_s"] == pytest.approx(2 * one.breakdown["offload_s"], rel=0.02)
    assert two.breakdown["optimizer_s"] == pytest.approx(one.breakdown["optimizer_s"])


def test_a_disk_bound_step_takes_at_least_its_disk_bytes_over_the_disk():
    from topology.costmodel import offload_traffic
    from topology.modelcfg import param_counts

    for disk in (0.5, 1.4, 3.0):
        req, est = _estimate(_h200(cores=16, disk_gbps=disk))
        t = offload_traffic(req, param_counts(req.model).total)
        assert est.step_time_s >= (t["disk_read"] + t["disk_write"]) / (disk * 1e9)


def test_the_write_back_overlaps_the_adam_of_the_next_sub_group_only():
    from topology.costmodel import DS_SUB_GROUP, cpu_adam_seconds, offload_traffic, overlapped_chunks
    from topology.modelcfg import param_counts

    disk = 1.4
    req, est = _estimate(_h200(cores=16, disk_gbps=disk))
    n = param_counts(req.model).total
    adam, write = cpu_adam_seconds(req, n), offload_traffic(req, n)["disk_write"] / (disk * 1e9)
    opt = est.breakdown["optimizer_s"]
    assert max(adam, write) < opt < adam + write  # 3 sub-groups of <= 1e9 parameters
    assert opt == pytest.approx(overlapped_chunks(adam, write, -(-n // int(DS_SUB_GROUP))))
    assert overlapped_chunks(2.0, 3.0, 1) == 5.0 and overlapped_chunks(2.0, 3.0, 10**6) == pytest.approx(3.0)


def test_cpu_adam_runs_on_the_hosts_cores_up_to_its_dram():
    from topology.costmodel import ADAM_UPDATE_BYTES, cpu_adam_seconds

    n = 1e9
    on = {c: cpu_adam_seconds(_estimate(_h200(cores=c), offload="cpu")[0], n) for c in (8, 16, 56, 112)}
    assert on[8] == pytest.approx(2 * on[16])  # core-bound: half the cores, twice the time
    # 56 cores and more: the catalogue's 75 GB/s of DRAM binds (half of it over 30 bytes a parameter)
    assert on[56] == on[112] == pytest.approx(n * ADAM_UPDATE_BYTES / (0.5 * 75e9))
    native = _estimate(_h200(cores=16), offload="cpu")[0]
    native = type(native)(native.model, native.system, 1, 4, 2048, offload="cpu", engine="native")
    assert cpu_adam_seconds(native, n) == pytest.approx(5 * on[16])  # torch's CPU AdamW: a fifth of cpu_adam


def test_the_stored_h200_offload_runs_are_predicted_within_15_percent():
    # bench/offload_vs_measured.py: nvme-12l fits the disk, cpu-6l the cpu_adam rate, nvme-24l is the check;
    # the model before issue 14's change was 39-58% short on all three
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "offload_vs_measured.py"
    spec = importlib.util.spec_from_file_location("offload_vs_measured", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks its module up
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    rows = {r["run"]: r for r in bench.rows()}
    assert set(rows) == {"nvme-12l", "cpu-6l", "nvme-24l"}
    for r in rows.values():
        assert abs(r["error"]) <= 0.15, r
        assert r["before_error"] < -0.35
        assert r["disk_written_gib"]["model"] == pytest.approx(r["disk_written_gib"]["measured"], rel=0.01)
    fitted = bench.fit()
    assert fitted["LENT_DISK_GBPS"] == pytest.approx(1.42, rel=0.02)
    assert fitted["CPU_ADAM_PARAMS_PER_CORE_S"] == pytest.approx(45e6, rel=0.02)


def test_offload_optimizer_needs_offloaded_parameters():
    from topology.costmodel import Request
    from topology.modelcfg import ConfigError

    with pytest.raises(ConfigError, match="offload_optimizer='cpu' needs offload=cpu or nvme"):
        Request(get_preset("7b"), _h200(), 1, 4, 2048, offload_optimizer="cpu")
    with pytest.raises(ConfigError, match="offload='disk'"):
        Request(get_preset("7b"), _h200(), 1, 4, 2048, offload="disk")
