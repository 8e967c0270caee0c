"""Rotary embeddings: rotation math, relative-position property, NTK / YaRN frequencies, 8x extension."""
import math

import pytest
import torch

from alphaexa.model import build_model
from alphaexa.model.positions import (
    YARN_ALPHA,
    YARN_BETA,
    apply_rope,
    rope_inverse_frequencies,
    rope_tables,
    sinusoidal_table,
)
from topology.modelcfg import ModelConfig

SCALINGS = [("none", 1.0), ("ntk", 8.0), ("yarn", 8.0)]


def test_apply_rope_is_complex_multiplication_of_the_two_halves():
    cos, sin = rope_tables(10, 8, 10000.0)
    x = torch.randn(2, 10, 3, 8)
    got = apply_rope(x, cos[None, :, None], sin[None, :, None])
    angles = torch.outer(torch.arange(10, dtype=torch.float64), 10000.0 ** -(torch.arange(0, 8, 2) / 8.0))
    z = torch.complex(x[..., :4].double(), x[..., 4:].double()) * torch.polar(torch.ones_like(angles), angles)[None, :, None]
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("scaling", "factor"), SCALINGS)
def test_scores_depend_only_on_the_offset(scaling, factor):
    head_dim, n = 32, 512
    cos, sin = rope_tables(n, head_dim, 10000.0, scaling, factor, original_len=n // 8)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m, j):
        qm = apply_rope(q.view(1, 1, 1, -1), cos[m], sin[m]).flatten()
        kj = apply_rope(k.view(1, 1, 1, -1), cos[j], sin[j]).flatten()
        return float(qm @ kj)

    for offset in (0, 1, 7, 100):
        reference = score(offset, 0)
        for shift in (1, 50, 300, n - 1 - offset):
            assert score(offset + shift, shift) == pytest.approx(reference, rel=1e-4, abs=1e-4)
    assert score(5, 0) != pytest.approx(score(9, 0), rel=1e-3)  # and it does depend on the offset


def test_ntk_divides_the_lowest_frequency_by_the_factor_and_keeps_the_highest():
    head_dim, factor = 64, 8.0
    plain, _ = rope_inverse_frequencies(head_dim, 10000.0)
    ntk, magnitude = rope_inverse_frequencies(head_dim, 10000.0, "ntk", factor)
    assert ntk[0] == plain[0] == 1.0
    assert float(ntk[-1]) == pytest.approx(float(plain[-1]) / factor, rel=1e-12)
    assert magnitude == 1.0
    assert torch.all(ntk <= plain)


def test_yarn_bands_ramp_and_temperature():
    head_dim, factor, original = 128, 8.0, 1024
    plain, _ = rope_inverse_frequencies(head_dim, 10000.0)
    yarn, magnitude = rope_inverse_frequencies(head_dim, 10000.0, "yarn", factor, original_len=original)
    turns = original * plain / (2 * math.pi)
    high, low = turns > YARN_BETA, turns < YARN_ALPHA
    middle = ~high & ~low
    assert high.any() and low.any() and middle.any()
    torch.testing.assert_close(yarn[high], plain[high], rtol=0, atol=0)
    torch.testing.assert_close(yarn[low], plain[low] / factor, rtol=1e-12, atol=0)
    assert torch.all((yarn[middle] < plain[middle]) & (yarn[middle] > plain[middle] / factor))
    assert magnitude == pytest.approx(0.1 * math.log(8) + 1)
    cos, sin = rope_tables(16, head_dim, 10000.0, "yarn", factor, original_len=original)
    torch.testing.assert_close(cos.square() + sin.square(), torch.full_like(cos, magnitude ** 2))


@pytest.mark.parametrize("scaling", ["ntk", "yarn"])
def test_scaled_rotation_at_8x_stays_within_the_trained_angle_range(scaling):
    """The slowest pair is what runs out of range past the trained length; with the scaling its
    angle at 8x the trained length equals the unscaled angle at the trained length."""
    head_dim, trained, factor = 64, 256, 8.0
    plain, _ = rope_inverse_frequencies(head_dim, 10000.0)
    scaled, _ = rope_inverse_frequencies(head_dim, 10000.0, scaling, factor, original_len=trained)
    assert float(scaled[-1] * (factor * trained)) == pytest.approx(float(plain[-1] * trained), rel=1e-9)
    assert float(plain[-1] * (factor * trained)) > 7 * float(plain[-1] * trained)  # unscaled: out of range


def _last_row_attention_entropy(model, tokens):
    """Mean entropy of layer 0's attention rows, per query position (recomputed from wq/wk)."""
    layer = model.layers["0"]
    h = layer.attention_norm(model.tok_embeddings(tokens))
    cfg = model.cfg
    seq = tokens.shape[1]
    q = layer.attention.wq(h).view(1, seq, cfg.n_heads, cfg.head_dim)
    k = layer.attention.wk(h).view(1, seq, cfg.n_kv_heads, cfg.head_dim)
    rope = (model.rope_cos[:seq][None, :, None], model.rope_sin[:seq][None, :, None])
    q, k = apply_rope(q, *rope).transpose(1, 2), apply_rope(k, *rope).transpose(1, 2)
    k = k.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim)
    scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    p = scores.softmax(-1)
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(dim=(0, 1))


@pytest.mark.parametrize(("scaling", "factor"), [("ntk", 8.0), ("yarn", 8.0)])
def test_model_runs_finite_and_stable_at_8x_the_trained_length(scaling, factor):
    trained = 32
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_type="swiglu", max_seq_len=8 * trained,
                      rope_scaling=scaling, rope_scaling_factor=factor, init_std=0.1)
    model = build_model(cfg, seed=3).eval()
    tokens = torch.randint(0, 256, (1, 8 * trained), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens)
        entropy = _last_row_attention_entropy(model, tokens)
    assert torch.isfinite(logits).all()
    # Logits at the far end are on the same scale as inside the trained window.
    inside, far = logits[0, trained // 2:trained].std(), logits[0, -trained:].std()
    assert 0.5 < float(far / inside) < 2.0
    # Attention neither collapses onto one key nor turns uniform far past the trained length:
    # its entropy, relative to the uniform maximum log(n_keys), stays in the range seen inside.
    relative = entropy / torch.log(torch.arange(1, 8 * trained + 1, dtype=entropy.dtype))
    assert 0.3 < float(relative[-trained:].mean()) < 0.995
    assert abs(float(relative[-trained:].mean() - relative[trained // 2:trained].mean())) < 0.15


def test_sinusoidal_table_formula():
    table = sinusoidal_table(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert float(table[pos, 2 * i]) == pytest.approx(math.sin(angle), abs=1e-6)
            assert float(table[pos, 2 * i + 1]) == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned"])
def test_absolute_position_models_depend_on_position(pos_encoding):
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=2, max_seq_len=16, pos_encoding=pos_encoding)
    model = build_model(cfg).eval()
    same = torch.full((1, 4), 65)
    with torch.no_grad():
        logits = model(same)
    assert torch.isfinite(logits).all()
    # Four identical tokens attend to identical values; only the positions can tell them apart.
    assert not torch.allclose(logits[0, 1], logits[0, 3])
