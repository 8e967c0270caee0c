"""The planner and the trainer share one list of what is supported (topology.support)."""
import subprocess
import sys

import pytest

from alphaexa.parallel import check_layout
from topology.modelcfg import ConfigError
from topology.planner import plan
from topology.presets import get_preset


def test_every_plan_of_the_250b_spec_search_on_512_aurora_nodes_is_accepted_by_check_layout():
    result = plan("alphaexa-250b-spec", "aurora", 512, 1536, 8192, top=10)
    assert len(result.plans) == 10
    model = get_preset("alphaexa-250b-spec")
    for p in result.plans:
        check_layout(p.estimate.layout, model, "xpu")  # raises ConfigError if the trainer cannot run it
        assert p.estimate.layout.cp == 1


def test_a_pinned_unimplemented_dimension_is_refused_with_the_trainers_own_message():
    with pytest.raises(ConfigError, match="context parallelism is not implemented in this trainer"):
        plan("7b", "dgx-h100", 2, 64, 4096, pins={"cp": 2})


def test_support_rules_never_import_torch():
    code = "import sys, topology.support, topology.planner; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
