"""Generic catalogue systems take any node count; --print-system writes an entry --system reads back."""
import pytest

from topology.cli import main as topology_main
from topology.hardware import load_system
from topology.modelcfg import ConfigError
from topology.planner import plan


@pytest.mark.parametrize("system", ["dgx-a100-80gb", "dgx-h100", "dgx-h200"])
def test_generic_clusters_take_any_node_count(system):
    result = plan("7b", system, 1000, 8000, 4096, top=1)
    assert result.best.estimate.layout.world == 8000


def test_real_machines_keep_their_real_sizes():
    with pytest.raises(ConfigError, match="at most 560 node"):
        plan("7b", "polaris", 561, 2244, 4096)
    with pytest.raises(ConfigError, match="at most 1 node"):
        plan("7b", "h200-x8", 2, 64, 4096)


def test_print_system_writes_an_editable_file_that_plans_the_same(tmp_path, capsys):
    out = tmp_path / "cluster.yaml"
    assert topology_main(["plan", "--system", "dgx-h200", "--print-system", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# NVIDIA DGX/HGX H200") and "gemm_efficiency" in text
    out.write_text(text.replace("memory_gib: 141.0", "memory_gib: 96.0", 1))
    edited = load_system(str(out))
    assert edited.node.device.memory_gib == 96.0 and edited.ranks_per_node == 8
    a = plan("7b", "dgx-h200", 4, 256, 4096, top=1).best.estimate
    b = plan("7b", load_system(str(tmp_path / "cluster.yaml")), 4, 256, 4096, top=1).best.estimate
    assert b.memory["capacity"] == 96.0 and a.step_time_s == pytest.approx(b.step_time_s, rel=0.2)


def test_plan_without_model_says_what_is_missing(capsys):
    assert topology_main(["plan", "--system", "dgx-h100", "--global-batch", "8"]) == 2
    assert "--model, --seq-len required" in capsys.readouterr().err
