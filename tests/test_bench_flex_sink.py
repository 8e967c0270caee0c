"""bench/flex_sink_attention_vs_model.py's sink arithmetic on the CPU (the GPU timing itself needs CUDA)."""
import pytest

torch = pytest.importorskip("torch")
flex_mod = pytest.importorskip("torch.nn.attention.flex_attention")

from bench.flex_sink_attention_vs_model import reference, sink_rescale, visible_pairs


@pytest.mark.parametrize("window", [0, 32])
def test_sink_rescale_of_flex_output_equals_softmax_with_an_explicit_sink_logit(window):
    # NeMo Automodel applies GPT-OSS's learnable sinks after the kernel: out * sigmoid(lse - sink[h]); that must be
    # attention whose softmax has one extra logit per head, or the bench would time the wrong thing
    torch.manual_seed(0)
    b, h, kvh, s, d = 1, 4, 2, 128, 32
    q, k, v = torch.randn(b, h, s, d), torch.randn(b, kvh, s, d), torch.randn(b, kvh, s, d)
    sinks = 2 * torch.randn(h)

    def keep(_b, _h, qi, ki):
        ok = ki <= qi
        return ok & (qi - ki < window) if window else ok
    mask = flex_mod.create_block_mask(keep, None, None, s, s, device="cpu")
    out, lse = flex_mod.flex_attention(q, k, v, block_mask=mask, enable_gqa=True, return_lse=True)
    got = sink_rescale(out, lse, sinks)
    want = reference(q, k.repeat_interleave(h // kvh, dim=1), v.repeat_interleave(h // kvh, dim=1), sinks, window)
    assert (got - want).norm() / want.norm() < 1e-5
    plain = reference(q, k.repeat_interleave(h // kvh, dim=1), v.repeat_interleave(h // kvh, dim=1),
                      torch.full((h,), -1e4), window)
    assert (out - plain).norm() / plain.norm() < 1e-5  # a sink of -inf weight is no sink


def test_visible_pairs_counts_the_causal_triangle_and_the_window_band():
    assert visible_pairs(4, 0) == 10 and visible_pairs(4, 8) == 10
    assert visible_pairs(6, 2) == 3 + 4 * 2
    assert visible_pairs(4096, 128) == 128 * 129 // 2 + (4096 - 128) * 128
