"""Parameter counts of every preset (independent arithmetic, closed form, meta-device module) and
the model's structure: meta construction, deterministic init, tying, pipeline-stage forward."""
import pytest
import torch

from alphaexa.model import Transformer, build_model, count_parameters
from topology.modelcfg import ModelConfig, param_counts
from topology.presets import get_preset, preset_names

# Written out from each preset's shapes, independently of param_counts:
# embedding + LM head (x1 when tied) + per-block attention (q, k, v, o) + dense FFNs
# (2 matrices gelu, 3 swiglu) + MoE blocks (router d x E + E experts) + norms ((2L+1) x d for
# RMSNorm).  Active: routed experts counted top_k instead of E times.
EXPECTED = {
    # 2 blocks, d 64, 4 heads of 16, 2 KV heads (kv dim 32), swiglu 128, block 1 MoE 4 experts top-2.
    "debug": (2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32) + 3 * 64 * 128
              + (64 * 4 + 4 * 3 * 64 * 128) + 5 * 64,
              2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32) + 3 * 64 * 128
              + (64 * 4 + 2 * 3 * 64 * 128) + 5 * 64),
    # 4 blocks, d 128, 4 heads of 32, 2 KV heads (64), swiglu 384, blocks 1 and 3 MoE: 4 experts of 256, top-2.
    "tiny-moe": (2 * 2048 * 128 + 4 * (2 * 128 * 128 + 2 * 128 * 64) + 2 * 3 * 128 * 384
                 + 2 * (128 * 4 + 4 * 3 * 128 * 256) + 9 * 128,
                 2 * 2048 * 128 + 4 * (2 * 128 * 128 + 2 * 128 * 64) + 2 * 3 * 128 * 384
                 + 2 * (128 * 4 + 2 * 3 * 128 * 256) + 9 * 128),
    # 12 blocks, d 768, gelu 3072, 32000 vocab tied.
    "125m": (32000 * 768 + 12 * 4 * 768 * 768 + 12 * 2 * 768 * 3072 + 25 * 768,) * 2,
    # as 125m, blocks 1,3,..,11 MoE: 8 gelu experts of 3072, top-2.
    "125m-moe": (32000 * 768 + 12 * 4 * 768 * 768 + 6 * 2 * 768 * 3072 + 6 * (768 * 8 + 8 * 2 * 768 * 3072)
                 + 25 * 768,
                 32000 * 768 + 12 * 4 * 768 * 768 + 6 * 2 * 768 * 3072 + 6 * (768 * 8 + 2 * 2 * 768 * 3072)
                 + 25 * 768),
    # 22 blocks, d 2048, 32 heads of 64, 4 KV heads (256), swiglu 5632, untied 32000.
    "1b": (2 * 32000 * 2048 + 22 * (2 * 2048 * 2048 + 2 * 2048 * 256) + 22 * 3 * 2048 * 5632 + 45 * 2048,) * 2,
    # 16 blocks, d 2048, 16 heads of 128, 4 KV heads (512); 8 dense swiglu 5632; 8 MoE: 8 experts of 1408, top-2.
    "1b-moe": (2 * 32000 * 2048 + 16 * (2 * 2048 * 2048 + 2 * 2048 * 512) + 8 * 3 * 2048 * 5632
               + 8 * (2048 * 8 + 8 * 3 * 2048 * 1408) + 33 * 2048,
               2 * 32000 * 2048 + 16 * (2 * 2048 * 2048 + 2 * 2048 * 512) + 8 * 3 * 2048 * 5632
               + 8 * (2048 * 8 + 2 * 3 * 2048 * 1408) + 33 * 2048),
    # LLaMA-7B shapes: 6,738,415,616.
    "7b": (2 * 32000 * 4096 + 32 * 4 * 4096 * 4096 + 32 * 3 * 4096 * 11008 + 65 * 4096,) * 2,
    "30b": (2 * 32000 * 6656 + 60 * 4 * 6656 * 6656 + 60 * 3 * 6656 * 17920 + 121 * 6656,) * 2,
    # 24 blocks all MoE, d 4096, 8 KV heads of 128 (1024), 8 swiglu experts of 14336, top-2.
    "30b-moe": (2 * 32000 * 4096 + 24 * (2 * 4096 * 4096 + 2 * 4096 * 1024) + 24 * (4096 * 8 + 8 * 3 * 4096 * 14336)
                + 49 * 4096,
                2 * 32000 * 4096 + 24 * (2 * 4096 * 4096 + 2 * 4096 * 1024) + 24 * (4096 * 8 + 2 * 3 * 4096 * 14336)
                + 49 * 4096),
    # 120 blocks, d 16384, 128 x 128 heads, gelu 65536, 250000 vocab; blocks 5, 11, .. (20) MoE, 32 experts top-2.
    "alphaexa-250b-spec": (2 * 250000 * 16384 + 120 * 4 * 16384**2 + 100 * 2 * 16384 * 65536
                           + 20 * (16384 * 32 + 32 * 2 * 16384 * 65536) + 241 * 16384,
                           2 * 250000 * 16384 + 120 * 4 * 16384**2 + 100 * 2 * 16384 * 65536
                           + 20 * (16384 * 32 + 2 * 2 * 16384 * 65536) + 241 * 16384),
    # 42 blocks (7 MoE), experts of width 16384.
    "alphaexa-250b": (2 * 250000 * 16384 + 42 * 4 * 16384**2 + 35 * 2 * 16384 * 65536
                      + 7 * (16384 * 32 + 32 * 2 * 16384 * 16384) + 85 * 16384,
                      2 * 250000 * 16384 + 42 * 4 * 16384**2 + 35 * 2 * 16384 * 65536
                      + 7 * (16384 * 32 + 2 * 2 * 16384 * 16384) + 85 * 16384),
    # 96 blocks all MoE, d 12288 (96 x 128), 8 gelu experts of 24576, top-2, byte vocabulary.
    "xenarc-600b-moe": (2 * 256 * 12288 + 96 * 4 * 12288**2 + 96 * (12288 * 8 + 8 * 2 * 12288 * 24576) + 193 * 12288,
                        2 * 256 * 12288 + 96 * 4 * 12288**2 + 96 * (12288 * 8 + 2 * 2 * 12288 * 24576) + 193 * 12288),
    # 48 dense blocks, d 12288, gelu 49152, byte vocabulary, sinusoidal positions (no parameters).
    "xenarc-600b-dense": (2 * 256 * 12288 + 48 * 4 * 12288**2 + 48 * 2 * 12288 * 49152 + 97 * 12288,) * 2,
}


def test_every_preset_has_an_expected_count():
    assert set(EXPECTED) == set(preset_names())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_parameter_counts(name):
    total, active = EXPECTED[name]
    cfg = get_preset(name)
    counts = param_counts(cfg)
    assert (counts.total, counts.active) == (total, active)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == total  # parameters() yields a tied weight once
    by_component = count_parameters(model)
    assert by_component == {k: v for k, v in counts.as_dict().items() if k in by_component}
    assert all(p.is_meta for p in model.parameters())


def test_stated_250b_variant_is_within_5_percent():
    assert abs(EXPECTED["alphaexa-250b"][0] / 250e9 - 1) < 0.05
    assert EXPECTED["alphaexa-250b-spec"][0] > 1.7e12


def test_structure_names():
    model = build_model(get_preset("debug"))
    assert list(model.layers.keys()) == ["0", "1"]
    dense, moe = model.layers["0"], model.layers["1"]
    for block in (dense, moe):
        assert {"attention_norm", "attention", "ffn_norm"} <= set(dict(block.named_children()))
        assert {"wq", "wk", "wv", "wo"} <= set(dict(block.attention.named_children()))
        assert all(lin.bias is None for lin in (block.attention.wq, block.attention.wo))
    assert set(dict(dense.feed_forward.named_children())) == {"w1", "w2", "w3"}
    assert moe.moe.experts.w1.shape == (4, 64, 128) and moe.moe.experts.w2.shape == (4, 128, 64)
    assert moe.moe.gate.weight.shape == (4, 64) and moe.moe.gate.bias is None
    assert "rope_cos" not in model.state_dict()  # derived tables are not checkpointed


def test_meta_build_then_init_is_deterministic_and_ties_weights():
    cfg = get_preset("debug").replace(tie_embeddings=True, n_shared_experts=1)
    a, b = build_model(cfg, seed=5), build_model(cfg, seed=5)
    c = build_model(cfg, seed=6)
    assert a.output.weight is a.tok_embeddings.weight
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
        assert "norm" in name or not torch.equal(p, r), name
    std = cfg.init_std
    assert float(a.layers["0"].attention.wq.weight.detach().std()) == pytest.approx(std, rel=0.1)
    assert float(a.layers["0"].attention.wo.weight.detach().std()) == pytest.approx(std / 2, rel=0.1)  # 1/sqrt(2*2)
    assert torch.equal(a.layers["1"].ffn_norm.weight, torch.ones(64))
    eager = Transformer(cfg)  # built directly on CPU: tables ready without init_weights
    torch.testing.assert_close(eager.rope_cos, a.rope_cos)


def test_pipeline_stages_compose_to_the_whole_model():
    cfg = get_preset("debug").replace(n_layers=4)
    whole = build_model(cfg, seed=1).eval()
    first, last = build_model(cfg, seed=1).eval(), build_model(cfg, seed=1).eval()
    del first.layers["2"], first.layers["3"]
    first.norm = first.output = None
    del last.layers["0"], last.layers["1"]
    last.tok_embeddings = None
    # Per-name seeding: a stage holds exactly the whole model's weights for its layers.
    assert torch.equal(last.layers["3"].attention.wq.weight, whole.layers["3"].attention.wq.weight)
    tokens = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        hidden = first(tokens)
        assert hidden.shape == (2, 10, 64)
        torch.testing.assert_close(last(hidden), whole(tokens))


def test_causal_and_kernel_independent():
    model = build_model(get_preset("debug").replace(sliding_window=4), seed=2).eval()
    tokens = torch.randint(0, 256, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
        model.set_attention_kernel("math")
        c = model(tokens)
    torch.testing.assert_close(a[0, :8], b[0, :8])
    assert not torch.allclose(a[0, 8:], b[0, 8:])
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_bf16_forward_backward_and_aux_metrics():
    model = build_model(get_preset("debug"), dtype=torch.bfloat16).train()
    assert model.rope_cos.dtype == torch.float32  # tables stay fp32
    tokens = torch.randint(0, 256, (2, 16))
    logits = model(tokens)
    assert logits.dtype == torch.bfloat16
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.layers["1"].moe.aux_loss is not None


def test_positions_beyond_max_seq_len_are_refused():
    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2, max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
