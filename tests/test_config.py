"""ModelConfig validation (errors name the field) and TOML/YAML/JSON round trips."""
import pytest

from alphaexa.cli import main
from topology.modelcfg import ConfigError, ModelConfig
from topology.presets import get_preset, preset_names, resolve_model

BAD = [
    ({"d_model": 64, "n_heads": 5}, "model.n_heads=5"),
    ({"n_kv_heads": 3}, "model.n_kv_heads=3"),
    ({"moe_every": 1, "n_experts": 4, "top_k": 5}, "model.top_k=5"),
    ({"moe_every": 1, "n_experts": 4, "top_k": 0}, "model.top_k=0"),
    ({"moe_every": 1}, "model.n_experts=0"),
    ({"d_model": -64}, "model.d_model=-64"),
    ({"n_layers": 0}, "model.n_layers=0"),
    ({"d_ff": -1}, "model.d_ff=-1"),
    ({"vocab_size": 2.5}, "model.vocab_size=2.5"),
    ({"max_seq_len": True}, "model.max_seq_len=True"),
    ({"sliding_window": -1}, "model.sliding_window=-1"),
    ({"n_experts": -2}, "model.n_experts=-2"),
    ({"head_dim": 7}, "model.head_dim=7"),
    ({"ffn_type": "relu"}, "model.ffn_type='relu'"),
    ({"norm": "batchnorm"}, "model.norm='batchnorm'"),
    ({"pos_encoding": "alibi"}, "model.pos_encoding='alibi'"),
    ({"rope_scaling": "linear"}, "model.rope_scaling='linear'"),
    ({"rope_scaling_factor": 0.5}, "model.rope_scaling_factor=0.5"),
    ({"capacity_factor": -1.0}, "model.capacity_factor=-1.0"),
    ({"capacity_factor": "big"}, "model.capacity_factor='big'"),
    ({"router_jitter": 1.5}, "model.router_jitter=1.5"),
    ({"aux_loss_coef": -0.1}, "model.aux_loss_coef=-0.1"),
    ({"init_std": 0.0}, "model.init_std=0.0"),
    ({"tie_embeddings": "yes"}, "model.tie_embeddings='yes'"),
    ({"moe_layers": [5], "n_experts": 2}, "model.moe_layers=[5]"),
    ({"moe_layers": [0, 0], "n_experts": 2}, "model.moe_layers=[0, 0]"),
    ({"moe_every": 3, "n_experts": 2}, "model.moe_every=3"),
    ({"tokenizer": "byte", "vocab_size": 100}, "model.vocab_size=100"),
    ({"tokenizer": "wordpiece"}, "model.tokenizer='wordpiece'"),
    ({"nlayers": 4}, "unknown key(s) nlayers"),
]


@pytest.mark.parametrize(("values", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
@pytest.mark.parametrize("name", ["debug", "alphaexa-250b-spec", "xenarc-600b-dense"])
def test_round_trip(tmp_path, suffix, name):
    cfg = get_preset(name)
    path = tmp_path / f"model{suffix}"
    cfg.save(path)
    assert ModelConfig.load(path) == cfg
    assert resolve_model(str(path)) == cfg


def test_round_trip_explicit_moe_layers_and_gqa(tmp_path):
    cfg = ModelConfig(n_layers=5, d_model=48, n_heads=6, n_kv_heads=2, moe_layers=[4, 1], n_experts=3, top_k=1,
                      n_shared_experts=1, capacity_factor=1.5, sliding_window=16, rope_scaling="ntk",
                      rope_scaling_factor=2.0, stated_params=1e6)
    assert cfg.moe_layer_indices() == [1, 4]
    for suffix in (".toml", ".yaml", ".json"):
        cfg.save(tmp_path / f"c{suffix}")
        assert ModelConfig.load(tmp_path / f"c{suffix}") == cfg


def test_file_can_start_from_a_preset(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[model]\npreset = "tiny-moe"\nn_layers = 6\ncapacity_factor = 1.25\n')
    cfg = resolve_model(str(path))
    assert (cfg.n_layers, cfg.capacity_factor, cfg.d_model) == (6, 1.25, 128)
    path.write_text('[model]\npreset = "tiny-moe"\nn_layer = 6\n')
    with pytest.raises(ConfigError, match="n_layer"):
        resolve_model(str(path))


def test_unknown_format_and_unparsable_file(tmp_path):
    (tmp_path / "m.ini").write_text("x")
    with pytest.raises(ConfigError, match="unknown config format"):
        ModelConfig.load(tmp_path / "m.ini")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot parse"):
        ModelConfig.load(tmp_path / "m.json")


def test_every_preset_validates():
    for name in preset_names():
        assert get_preset(name).name == name


def test_cli_reports_a_bad_config_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 64\n  n_heads: 5\n")
    assert main(["describe", "--model", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.n_heads=5" in err[0]
