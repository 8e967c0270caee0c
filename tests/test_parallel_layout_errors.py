"""Bad layouts are rejected with one line each, before any process group exists."""
import pytest
import torch.distributed as dist

from alphaexa.parallel import check_layout
from alphaexa.parallel.pipeline import rank_of_stage, stage_ids_of_rank, stage_layer_counts
from topology.layout import Layout, resolve_layout
from topology.modelcfg import ConfigError, ModelConfig

MODEL = ModelConfig(name="m", n_layers=4, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, ffn_type="swiglu",
                    vocab_size=256, max_seq_len=32, moe_every=2, n_experts=4, top_k=2, moe_d_ff=32)


def validate(spec: dict, world: int, device: str = "cpu", model: ModelConfig = MODEL, global_batch: int = 8,
             seq: int = 16) -> Layout:
    """What the trainer does before init_distributed: resolve + topology rules, then ours."""
    layout = resolve_layout(Layout.from_dict(spec), world, model, global_batch, seq)
    check_layout(layout, model, device)
    return layout


@pytest.mark.parametrize("spec,world,device,model,message", [
    ({"tp": 3}, 3, "cpu", MODEL, "tp=3 does not divide n_heads=4"),
    ({"dp_shard": 3}, 4, "cpu", MODEL, "world size 4 != pp*dp_replicate*dp_shard*cp*tp = 3"),
    ({"ep": 3, "dp_shard": 3}, 3, "cpu", MODEL, "ep=3 does not divide n_experts=4"),
    ({"ep": 4}, 2, "cpu", MODEL, "ep=4 does not divide dp_replicate*dp_shard*cp = 2"),
    ({"pp": 2, "schedule": "zbv"}, 2, "cpu", MODEL, "schedule=zbv runs exactly 2 stages per rank"),
    ({"pp": 2, "vpp": 4, "schedule": "interleaved1f1b"}, 2, "cpu", MODEL, "pipeline stages exceed n_layers=4"),
    ({"cp": 2}, 2, "cpu", MODEL, "context parallelism needs an accelerator"),
    ({"pp": 2}, 2, "cpu", MODEL.replace(tie_embeddings=True), "cannot share one weight across pipeline ranks"),
    ({"tp": 2}, 2, "cpu", MODEL.replace(vocab_size=257, tokenizer="byte"), "tp=2 does not divide vocab_size=257"),
    ({"dp_shard": 2, "sharding": "none"}, 2, "cpu", MODEL, "sharding=none with dp_shard=2"),
])
def test_bad_layout_is_one_line_before_any_process_group(spec, world, device, model, message):
    with pytest.raises(ConfigError) as error:
        validate(spec, world, device, model)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not dist.is_initialized()


def test_good_layouts_pass():
    assert validate({"pp": 2, "tp": 2, "dp_shard": -1, "ep": 2}, 8).dp_shard == 2
    assert validate({"pp": 2, "vpp": 2, "schedule": "zbv"}, 2).n_microbatches(8) == 8


def test_compile_with_tensor_parallel_is_refused_on_cpu():
    layout = resolve_layout(Layout(tp=2), 2, MODEL, 8, 16)
    with pytest.raises(ConfigError, match="compile with tp=2 on CPU gives wrong gradients"):
        check_layout(layout, MODEL, "cpu", compile=True)
    check_layout(layout, MODEL, "cpu", compile=False)
    check_layout(layout, MODEL, "cuda", compile=True)


def test_cp_on_an_accelerator_is_refused_as_not_implemented():
    with pytest.raises(ConfigError, match="not implemented"):
        validate({"cp": 2}, 2, device="cuda")


def test_stage_split_and_placement():
    assert stage_layer_counts(10, 4) == [3, 3, 2, 2]
    assert stage_layer_counts(4, 2, [1, 3]) == [1, 3]
    with pytest.raises(ConfigError, match="summing to n_layers=4"):
        stage_layer_counts(4, 2, [2, 3])
    assert stage_ids_of_rank(4, 1, 2, "interleaved1f1b") == [1, 5]
    assert stage_ids_of_rank(4, 1, 2, "zbv") == [1, 6]
    assert [rank_of_stage(s, 4, "zbv") for s in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]
    assert [rank_of_stage(s, 2, "1f1b") for s in range(2)] == [0, 1]
