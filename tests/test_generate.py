"""Generation: KV-cache logits equal full-forward logits at every step; padding, sampling, EOS, CLI."""
import pytest
import torch

from alphaexa.cli import main
from alphaexa.model import build_model
from alphaexa.model.generate import generate, load_model_for_generation, prompt_rows, sample_next
from topology.modelcfg import ModelConfig

CONFIGS = {
    "gqa-moe": {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_type": "swiglu", "max_seq_len": 64,
                    "moe_every": 2, "n_experts": 4, "top_k": 2, "capacity_factor": 1.0},
    "window-yarn": {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 1, "ffn_type": "gelu", "max_seq_len": 64,
                        "sliding_window": 5, "rope_scaling": "yarn", "rope_scaling_factor": 4.0, "norm": "layernorm"},
    "learned-tied": {"n_layers": 2, "d_model": 32, "n_heads": 2, "max_seq_len": 64, "pos_encoding": "learned",
                         "tie_embeddings": True},
    "sinusoidal-window": {"n_layers": 1, "d_model": 32, "n_heads": 2, "max_seq_len": 64, "pos_encoding": "sinusoidal",
                              "sliding_window": 3},
}


def _model(name, seed=0):
    # A larger init than the default makes the logits (and so greedy choices) clearly distinct.
    return build_model(ModelConfig(name=name, init_std=0.2, **CONFIGS[name]), seed=seed).eval()


PROMPTS = [[5, 17, 3, 99, 42, 7, 8], [200, 1], [9, 9, 9, 9]]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_logits_equal_full_forward_at_every_step(name):
    model = _model(name)
    result = generate(model, PROMPTS, 8, temperature=0, return_logits=True)
    with torch.no_grad():
        for b, prompt in enumerate(PROMPTS):
            sequence = torch.tensor([prompt + result.tokens[b]])
            full = model(sequence)[0]
            for step, logits in enumerate(result.logits):
                torch.testing.assert_close(logits[b], full[len(prompt) - 1 + step], rtol=1e-4, atol=1e-4)
            # greedy: each token is the argmax of the full forward at the previous position
            assert result.tokens[b] == full[len(prompt) - 1:-1].argmax(-1).tolist()
    # Long enough to slide the window past the prompt, and rows are ragged.
    assert len(result.logits) == 8


def test_batched_rows_equal_single_rows_with_left_and_right_padding():
    model = _model("gqa-moe")
    alone = [generate(model, [p], 6, temperature=0).tokens[0] for p in PROMPTS]
    width = max(map(len, PROMPTS))
    right = torch.zeros(3, width, dtype=torch.long)
    left = torch.zeros(3, width, dtype=torch.long)
    right_mask = torch.zeros(3, width, dtype=torch.long)
    left_mask = torch.zeros(3, width, dtype=torch.long)
    for b, p in enumerate(PROMPTS):
        right[b, :len(p)] = torch.tensor(p)
        right_mask[b, :len(p)] = 1
        left[b, width - len(p):] = torch.tensor(p)
        left_mask[b, width - len(p):] = 1
    assert prompt_rows(left, left_mask) == PROMPTS == prompt_rows(right, right_mask)
    assert generate(model, right, 6, attention_mask=right_mask, temperature=0).tokens == alone
    assert generate(model, left, 6, attention_mask=left_mask, temperature=0).tokens == alone
    assert generate(model, PROMPTS, 6, temperature=0).tokens == alone


def test_eos_stops_each_row():
    model = _model("gqa-moe")
    free = generate(model, PROMPTS, 8, temperature=0).tokens
    eos = free[0][2]
    stopped = generate(model, PROMPTS, 8, temperature=0, eos_id=eos).tokens
    for row, full_row in zip(stopped, free):
        cut = full_row.index(eos) + 1 if eos in full_row else len(full_row)
        assert row == full_row[:cut]
    assert stopped[0][-1] == eos and len(stopped[0]) <= 3


def test_sampling_filters():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[3.0, 2.5, 2.0, 0.0, -1.0, -5.0]]).repeat(400, 1)
    assert sample_next(logits, temperature=0).unique().tolist() == [0]
    assert sample_next(logits, 1.0, top_k=1, generator=gen).unique().tolist() == [0]
    top3 = sample_next(logits, 1.0, top_k=3, generator=gen)
    assert set(top3.tolist()) == {0, 1, 2}
    # probabilities ~ [0.45, 0.27, 0.17, ...]: top-p 0.5 keeps the first two (0.45 < 0.5 <= 0.72)
    nucleus = sample_next(logits, 1.0, top_p=0.5, generator=gen)
    assert set(nucleus.tolist()) == {0, 1}
    assert sample_next(logits, 1.0, top_p=0.01, generator=gen).unique().tolist() == [0]
    everything = sample_next(logits, 5.0, generator=gen)  # high temperature reaches the tail
    assert len(set(everything.tolist())) >= 5
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, 1.0, top_p=0.0)


def test_seeded_sampling_is_reproducible():
    model = _model("window-yarn")
    a = generate(model, PROMPTS, 6, temperature=1.0, top_k=50, seed=7).tokens
    b = generate(model, PROMPTS, 6, temperature=1.0, top_k=50, seed=7).tokens
    c = generate(model, PROMPTS, 6, temperature=1.0, top_k=50, seed=8).tokens
    assert a == b != c


def test_bad_requests():
    model = _model("gqa-moe")
    with pytest.raises(ValueError, match="max_seq_len=64"):
        generate(model, [[1] * 60], 10)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match="contiguous"):
        prompt_rows(torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 0, 1, 1]]))


def test_checkpoint_round_trip_and_cli(tmp_path, capsys):
    cfg = ModelConfig(name="tiny", init_std=0.2, **CONFIGS["learned-tied"])
    model = build_model(cfg, seed=11)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = load_model_for_generation(tmp_path, cfg)
    assert loaded.output.weight is loaded.tok_embeddings.weight
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model.eval()(tokens))
    cfg.save(tmp_path / "tiny.toml")
    argv = ["generate", "--model", str(tmp_path / "tiny.toml"), "--checkpoint", str(tmp_path / "model.pt"),
            "--prompt", "ab", "--max-new-tokens", "5", "--temperature", "0", "--no-eos"]
    assert main(argv) == 0
    expected = generate(model, [[97, 98]], 5, temperature=0).tokens[0]
    out = capsys.readouterr().out
    assert out.startswith("ab") and len(out.encode("utf-8", "surrogateescape")) > 2
    from alphaexa.data.tokenizer import ByteTokenizer
    assert out.rstrip("\n") == "ab" + ByteTokenizer().decode(expected)
    other = ModelConfig(name="other", n_layers=1, d_model=32, n_heads=2, max_seq_len=64)
    with pytest.raises(Exception, match="does not fit model 'other'"):
        load_model_for_generation(tmp_path / "model.pt", other)


def test_cli_errors_are_one_line(capsys):
    assert main(["generate", "--model", "debug", "--prompt", "x", "--max-new-tokens", "500"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("alphaexa generate: error:") and "max_seq_len=128" in err[-1]
    assert main(["generate", "--model", "debug", "--prompt", "x", "--checkpoint", "/nonexistent/ckpt.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
