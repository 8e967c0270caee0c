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
