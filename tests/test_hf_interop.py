"""Hugging Face interop: export loads in transformers with AlphaExa's logits; import gives the same weights back."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alphaexa.checkpoint import CheckpointManager, ModelOptimizerState
from alphaexa.cli import main
from alphaexa.config import ModelConfig
from alphaexa.data import PackedSamples, PackedTokens
from alphaexa.data.tokenizer import ByteTokenizer
from alphaexa.model import build_model
from alphaexa.train.restore import load_trained_model
from tests.train_runs import train

transformers = pytest.importorskip("transformers")

SHAPE = {"n_layers": 4, "d_model": 64, "n_heads": 4, "d_ff": 96, "vocab_size": 300, "max_seq_len": 64,
         "init_std": 0.1, "norm_eps": 1e-6, "rope_theta": 500.0}
FAMILIES = {
    "LlamaForCausalLM": {"ffn_type": "swiglu", "n_kv_heads": 2},
    "ArceeForCausalLM": {"ffn_type": "gelu", "tie_embeddings": True},
    "Qwen2MoeForCausalLM": {"ffn_type": "swiglu", "n_kv_heads": 2, "moe_every": 2, "n_experts": 4, "top_k": 2,
                            "moe_d_ff": 48},
}


def _checkpointed_run(run_dir, cfg, seed=3):
    """A run directory with one real DCP checkpoint of ``cfg`` (norm weights randomised too) and a tokenizer."""
    model = build_model(cfg, seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    with CheckpointManager(run_dir / "checkpoints", model_config=cfg) as manager:
        manager.save(7, {"model": ModelOptimizerState(model)})
    ByteTokenizer().save(run_dir / "tokenizer")
    return model.eval()


@pytest.mark.parametrize("architecture", list(FAMILIES))
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, architecture):
    cfg = ModelConfig(name="m", **SHAPE, **FAMILIES[architecture])
    model = _checkpointed_run(tmp_path / "run", cfg)
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")]) == 0
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32,
                                                                 output_loading_info=True)
    assert type(hf).__name__ == architecture
    assert not any(info.values()), info  # nothing missing, unexpected or freshly initialised
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(tokens), hf.eval()(tokens).logits
    assert ours.abs().max() > 1  # logits of a model that is not near-uniform
    assert (ours - theirs).abs().max().item() < 1e-5


def test_import_gives_the_same_weights_loss_and_a_run_that_trains(tmp_path):
    cfg = ModelConfig(name="m", tokenizer="byte", **{**SHAPE, "vocab_size": 256, "max_seq_len": 64},
                      **FAMILIES["LlamaForCausalLM"])
    model = _checkpointed_run(tmp_path / "run", cfg)
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--to", "hf", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == ByteTokenizer.eos_id
    assert main(["import", "--from", "hf", str(tmp_path / "hf"), "--run-dir", str(tmp_path / "imported")]) == 0
    back = load_trained_model(tmp_path / "imported")
    assert back.config.to_dict() == {**cfg.to_dict(), "name": "hf"} and back.tokenizer.kind == "byte"
    for (name, ours), theirs in zip(model.state_dict().items(), back.model.state_dict().values()):
        assert torch.equal(ours, theirs), name

    # The imported run trains: its first step's loss is the original weights' loss on that batch.
    cache = tmp_path / "cache"
    train(tmp_path / "imported", "train.steps=1", "train.warmup=0", "train.global_batch=4", "train.seq_len=32",
          "train.eval_every=0", "train.eval_batches=1", "data.corpus=demo", "data.tokenizer=byte",
          "checkpoint.async=false", "logging.progress=false", "debug.record_samples=true",
          cache_dir=cache, resume=True, config=None)
    record = json.loads((tmp_path / "imported" / "samples" / "rank_0.jsonl").read_text().splitlines()[0])
    metrics = [json.loads(line) for line in (tmp_path / "imported" / "metrics.jsonl").read_text().splitlines()]
    dataset = next(p.parent for p in cache.rglob("index.json"))
    batch = torch.from_numpy(PackedSamples(PackedTokens(dataset), 32).batch(np.array(record["sample_ids"])))
    with torch.no_grad():
        logits = model(batch[:, :-1])
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item()
    step_1 = next(m for m in metrics if m.get("step") == 1 and "loss" in m)
    assert step_1["loss"] == pytest.approx(expected, abs=1e-5)


def test_refusals_are_one_line(tmp_path, capsys):
    layernorm = ModelConfig(name="ln", **SHAPE, norm="layernorm")
    _checkpointed_run(tmp_path / "ln", layernorm)
    assert main(["export", "--checkpoint", str(tmp_path / "ln"), "--to", "hf", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("alphaexa export: error: model 'ln' has no exactly matching transformers family: "
                   "LayerNorm (the Llama-like families use RMSNorm)")
    assert not (tmp_path / "out").exists()
    shared = ModelConfig(name="sh", **SHAPE, ffn_type="swiglu", moe_every=2, n_experts=4, n_shared_experts=1)
    _checkpointed_run(tmp_path / "sh", shared)
    assert main(["export", "--checkpoint", str(tmp_path / "sh"), "--to", "hf", str(tmp_path / "out")]) == 2
    assert "shared experts" in capsys.readouterr().err
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["import", "--from", "hf", str(tmp_path / "hf"), "--run-dir", str(tmp_path / "x")]) == 2
    assert "model_type 'gpt2' cannot be imported" in capsys.readouterr().err
