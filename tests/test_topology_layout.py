"""Layout: the parallel-dimension contract shared by the run config, the trainer and the planner."""
import pytest

from topology.layout import Layout, resolve_layout
from topology.modelcfg import ConfigError
from topology.presets import get_preset


def test_dp_shard_minus_one_takes_the_rest_of_the_world():
    layout = Layout(tp=2, pp=2, cp=2).resolve(48)
    assert layout.dp_shard == 6
    assert layout.mesh_shape == (2, 1, 6, 2, 2)
    assert layout.world == 48 and layout.dp == 6


@pytest.mark.parametrize("kwargs, world, model, message", [
    ({"tp": 3}, 12, "7b", "tp=3 does not divide n_heads=32"),
    ({"pp": 4}, 8, "debug", "pp=4 exceeds n_layers=2"),
    ({"pp": 2, "dp_shard": 3}, 8, None, "world size 8 != pp*dp_replicate*dp_shard*cp*tp = 6"),
    ({"tp": 3}, 8, None, "world size 8 is not divisible by pp*dp_replicate*cp*tp = 3"),
    ({"tp": 4}, 8, "debug", "tp=4 does not divide n_kv_heads=2"),
    ({"ep": 3, "dp_shard": 6}, 6, None, "ep=3 does not divide n_experts=4"),
    ({"ep": 4, "dp_shard": 2}, 2, None, "ep=4 does not divide dp_replicate*dp_shard*cp = 2"),
    ({"ep": 2, "dp_shard": 2}, 2, "7b", "ep=2 needs a MoE model; 7b has no MoE blocks"),
    ({"pp": 2, "vpp": 2, "schedule": "1f1b"}, 2, None, ("schedule=1f1b runs one stage per rank; vpp=2 needs "
                                                  "interleaved1f1b or zbv")),
    ({"pp": 2, "vpp": 3, "schedule": "zbv"}, 2, None, "schedule=zbv runs exactly 2 stages per rank (V shape); got vpp=3"),
    ({"pp": 2, "schedule": "interleaved1f1b"}, 2, None, "schedule=interleaved1f1b needs vpp >= 2 stages per rank"),
    ({"vpp": 2}, 2, None, "vpp=2 needs pipeline parallelism (pp=1)"),
    ({"dp_shard": 4, "sharding": "none"}, 4, None, ("sharding=none with dp_shard=4: a sharded data-parallel "
                                                 "dimension needs zero1|zero2|zero3 (put plain replicas in dp_replicate)")),
    ({"sharding": "zero4"}, 4, None, "parallel.sharding='zero4': must be one of none, zero1, zero2, zero3"),
    ({"mbs": 0}, 4, None, "parallel.mbs=0: must be >= 1"),
])
def test_invalid_layouts_fail_with_one_line(kwargs, world, model, message):
    cfg = get_preset(model or "debug")
    with pytest.raises(ConfigError) as err:
        Layout(**kwargs).validate(world=world, model=cfg)
    assert str(err.value) == message


def test_batch_and_sequence_rules():
    layout = Layout(tp=2, pp=2, dp_shard=2, mbs=2).resolve(8)
    assert layout.n_microbatches(64) == 16
    with pytest.raises(ConfigError, match=r"global_batch=6 is not divisible by mbs\*dp_replicate\*dp_shard = 2\*1\*2 = 4"):
        layout.validate(global_batch=6)
    with pytest.raises(ConfigError, match="1 micro-batches per step is fewer than pp=2"):
        layout.validate(global_batch=4)
    inter = Layout(pp=2, vpp=2, schedule="interleaved1f1b", dp_shard=1).resolve(2)
    with pytest.raises(ConfigError, match=r"interleaved1f1b needs the number of micro-batches \(3\) to be a multiple of pp=2"):
        inter.validate(global_batch=3)
    with pytest.raises(ConfigError, match="cp=2 needs seq_len=6 divisible by 2\\*cp = 4"):
        Layout(cp=2).validate(world=2, seq_len=6)
    with pytest.raises(ConfigError, match="seq_len=4096 exceeds the model's max_seq_len=128"):
        Layout().validate(world=1, model=get_preset("debug"), seq_len=4096)


def test_from_dict_converts_cli_strings_and_rejects_unknown_keys():
    layout = Layout.from_dict({"tp": "2", "pp": "1", "sharding": "zero1"})
    assert layout.tp == 2 and layout.sharding == "zero1"
    with pytest.raises(ConfigError, match="parallel: unknown key\\(s\\) tensor_parallel"):
        Layout.from_dict({"tensor_parallel": 2})
    with pytest.raises(ConfigError, match="parallel.tp='two': must be an integer"):
        Layout.from_dict({"tp": "two"})
    assert Layout.from_dict(layout.to_dict()) == layout


def test_resolve_layout_accepts_a_mapping_and_checks_everything():
    cfg = get_preset("debug")
    layout = resolve_layout({"ep": 2}, 4, model=cfg, global_batch=8, seq_len=64)
    assert layout.dp_shard == 4 and layout.expert_dp == 2
    assert Layout().dp_shard == -1
    with pytest.raises(ConfigError, match="dp_shard=-1 is not resolved yet"):
        _ = Layout().dp
