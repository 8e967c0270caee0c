"""Hugging Face ``transformers`` model directories (``config.json`` + safetensors) to and from AlphaExa weights.

Three ``transformers`` families compute exactly what an AlphaExa model computes, for the
configurations below; anything else is refused in one line rather than exported as an
approximation:

* ``llama`` (LlamaForCausalLM): dense SwiGLU blocks, RMSNorm, RoPE, optional GQA and tied
  embeddings.  AlphaExa's ``w1`` (up), ``w3`` (gate), ``w2`` (down) are Llama's ``up_proj``,
  ``gate_proj``, ``down_proj``.
* ``arcee`` (ArceeForCausalLM): the same with a non-gated FFN ``down(act(up x))``; this is the
  family of the GELU presets (``125m``).
* ``qwen2_moe`` (Qwen2MoeForCausalLM): SwiGLU MoE blocks every ``moe_every`` blocks
  (``mlp_only_layers`` lists the dense ones), softmax router with the top-k weights not
  renormalised (``norm_topk_prob=false``), no q/k/v biases (``qkv_bias=false``).  The family
  always has a sigmoid-gated shared expert; AlphaExa models without shared experts get one of
  width 0, which adds exactly zero.  Shared experts themselves have no gate in AlphaExa, so a
  model with ``n_shared_experts > 0`` has no exact counterpart and is refused.

RoPE: both sides rotate the two halves of each head (``rotate_half``), so q/k weights need no
permutation.  ``rope_scaling="ntk"`` is a raised base, exported as ``rope_theta``; YaRN is
refused (transformers rounds the ramp bounds to whole dimensions, AlphaExa does not).
Experts are written one tensor per expert (``mlp.experts.E.gate_proj.weight``), the layout of
the published Qwen2-MoE checkpoints, which transformers 4 and 5 both load.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from topology.modelcfg import ModelConfig

from ..errors import UserError

CONFIG_NAME = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# AlphaExa's own tokenizer directory travels with an export, so an import gets the same ids back.
TOKENIZER_DIR = "alphaexa_tokenizer"
SENTENCEPIECE_FILE = "tokenizer.model"
DEFAULT_SHARD_BYTES = 4 << 30
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "arcee": "ArceeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
_ACTIVATION = {"swiglu": "silu", "gelu": "gelu"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_family(cfg: ModelConfig) -> str:
    """The ``transformers`` model_type that computes exactly what ``cfg`` does; UserError naming why there is none."""
    why = None
    if cfg.pos_encoding != "rope":
        why = f"{cfg.pos_encoding} positions (the Llama-like families use RoPE)"
    elif cfg.norm != "rmsnorm":
        why = "LayerNorm (the Llama-like families use RMSNorm)"
    elif cfg.rope_scaling == "yarn" and cfg.rope_scaling_factor != 1.0:
        why = "YaRN RoPE scaling (transformers rounds its ramp to whole dimensions; AlphaExa does not)"
    elif cfg.sliding_window:
        why = "sliding-window attention"
    elif cfg.is_moe and cfg.ffn_type != "swiglu":
        why = "GELU experts (Qwen2-MoE, the only family with interleaved dense/MoE blocks, has SwiGLU experts)"
    elif cfg.is_moe and cfg.n_shared_experts:
        why = "shared experts (Qwen2-MoE gates its shared expert with a sigmoid; AlphaExa's are ungated)"
    if why:
        raise UserError(f"model {cfg.name!r} has no exactly matching transformers family: {why}")
    if cfg.is_moe:
        return "qwen2_moe"
    return "llama" if cfg.ffn_type == "swiglu" else "arcee"


def _rope_theta(cfg: ModelConfig) -> float:
    if cfg.rope_scaling == "ntk" and cfg.rope_scaling_factor != 1.0:
        return cfg.rope_theta * cfg.rope_scaling_factor ** (cfg.head_dim / (cfg.head_dim - 2))
    return cfg.rope_theta


def hf_config(cfg: ModelConfig, dtype: str = "float32", bos_id: int | None = None,
              eos_id: int | None = None) -> dict[str, Any]:
    family = hf_family(cfg)
    theta = _rope_theta(cfg)
    config: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[family]], "model_type": family,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": _ACTIVATION[cfg.ffn_type],
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
        # transformers 5 reads rope_parameters, 4 reads rope_theta and rope_scaling.
        "rope_theta": theta, "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": None,
        "dtype": dtype, "torch_dtype": dtype, "use_cache": True,
    }
    if family == "qwen2_moe":
        moe = set(cfg.moe_layer_indices())
        config.update(qkv_bias=False, num_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k,
                      moe_intermediate_size=cfg.moe_d_ff, shared_expert_intermediate_size=0,
                      norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=[i for i in range(cfg.n_layers) if i not in moe],
                      use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers,
                      router_aux_loss_coef=cfg.aux_loss_coef, output_router_logits=False)
    return config


def _plain_pairs(cfg: ModelConfig) -> Iterator[tuple[str, str]]:
    """(AlphaExa name, transformers name) of every tensor copied unchanged."""
    yield "tok_embeddings.weight", "model.embed_tokens.weight"
    yield "norm.weight", "model.norm.weight"
    if not cfg.tie_embeddings:
        yield "output.weight", "lm_head.weight"
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        yield ours + "attention_norm.weight", theirs + "input_layernorm.weight"
        yield ours + "ffn_norm.weight", theirs + "post_attention_layernorm.weight"
        for a, h in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            yield f"{ours}attention.{a}.weight", f"{theirs}self_attn.{h}.weight"
        if cfg.is_moe_layer(i):
            yield ours + "moe.gate.weight", theirs + "mlp.gate.weight"
            continue
        yield ours + "feed_forward.w1.weight", theirs + "mlp.up_proj.weight"
        yield ours + "feed_forward.w2.weight", theirs + "mlp.down_proj.weight"
        if cfg.ffn_type == "swiglu":
            yield ours + "feed_forward.w3.weight", theirs + "mlp.gate_proj.weight"


# AlphaExa's stacked expert weights (E, in, out) against transformers' per-expert (out, in) matrices.
_EXPERT_PAIRS = (("w1", "up_proj"), ("w3", "gate_proj"), ("w2", "down_proj"))


def to_hf_state(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """AlphaExa's full (unsharded) model state dict in transformers' names and layouts."""
    family = hf_family(cfg)
    out = {theirs: state[ours] for ours, theirs in _plain_pairs(cfg)}
    for i in cfg.moe_layer_indices():
        theirs = f"model.layers.{i}.mlp."
        for a, h in _EXPERT_PAIRS:
            stacked = state[f"layers.{i}.moe.experts.{a}"]
            for e in range(cfg.n_experts):
                out[f"{theirs}experts.{e}.{h}.weight"] = stacked[e].t()
        if family == "qwen2_moe":
            d = cfg.d_model
            empty = state[f"layers.{i}.moe.gate.weight"].new_zeros
            out.update({f"{theirs}shared_expert.gate_proj.weight": empty(0, d),
                        f"{theirs}shared_expert.up_proj.weight": empty(0, d),
                        f"{theirs}shared_expert.down_proj.weight": empty(d, 0),
                        f"{theirs}shared_expert_gate.weight": empty(1, d)})
    return {k: v.detach().contiguous() for k, v in out.items()}


def from_hf_state(cfg: ModelConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' tensors back into AlphaExa's names; UserError naming a missing tensor."""
    def take(name: str) -> Tensor:
        if name not in tensors:
            raise UserError(f"the Hugging Face weights lack {name}")
        return tensors[name]

    state = {ours: take(theirs) for ours, theirs in _plain_pairs(cfg)}
    for i in cfg.moe_layer_indices():
        for a, h in _EXPERT_PAIRS:
            state[f"layers.{i}.moe.experts.{a}"] = torch.stack(
                [take(f"model.layers.{i}.mlp.experts.{e}.{h}.weight").t() for e in range(cfg.n_experts)])
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


def _importable_family(config: dict[str, Any]) -> str:
    family = config.get("model_type")
    if family not in _ARCHITECTURES:
        raise UserError(f"model_type {family!r} cannot be imported; known: {', '.join(_ARCHITECTURES)}")
    return family


def model_config_from_hf(config: dict[str, Any], name: str, tokenizer: str) -> ModelConfig:
    """The ModelConfig of a transformers config.json; UserError for what AlphaExa cannot compute exactly."""
    family = _importable_family(config)
    expected_act = "gelu" if family == "arcee" else "silu"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    problems = [f"{key}=true" for key in ("attention_bias", "mlp_bias", "qkv_bias") if config.get(key)]
    if config.get("hidden_act", expected_act) != expected_act:
        problems.append(f"hidden_act={config.get('hidden_act')!r} (expected {expected_act!r})")
    if rope_type != "default":
        problems.append(f"RoPE scaling {rope_type!r}")
    if config.get("use_sliding_window") or (family != "qwen2_moe" and config.get("sliding_window")):
        problems.append("sliding-window attention")
    moe_fields: dict[str, Any] = {}
    n_layers = int(config["num_hidden_layers"])
    if family == "qwen2_moe":
        if config.get("shared_expert_intermediate_size", 0):
            problems.append("a gated shared expert (shared_expert_intermediate_size > 0)")
        if config.get("norm_topk_prob"):
            problems.append("renormalised top-k weights (norm_topk_prob=true)")
        step = int(config.get("decoder_sparse_step", 1))
        dense = set(config.get("mlp_only_layers") or [])
        moe_fields = {"moe_layers": [i for i in range(n_layers) if i not in dense and (i + 1) % step == 0],
                      "n_experts": int(config["num_experts"]), "top_k": int(config["num_experts_per_tok"]),
                      "moe_d_ff": int(config["moe_intermediate_size"]), "capacity_factor": 0.0}
    if problems:
        raise UserError(f"this {family} model differs from what AlphaExa computes: {'; '.join(problems)}")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    n_heads = int(config["num_attention_heads"])
    return ModelConfig(
        name=name, n_layers=n_layers, d_model=int(config["hidden_size"]), n_heads=n_heads,
        n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // n_heads),
        d_ff=int(config["intermediate_size"]), ffn_type="gelu" if family == "arcee" else "swiglu",
        vocab_size=int(config["vocab_size"]), max_seq_len=int(config["max_position_embeddings"]),
        rope_theta=float(theta), norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        init_std=float(config.get("initializer_range", 0.02)), tokenizer=tokenizer, **moe_fields)


# ---------------------------------------------------------------------------------------------- files
def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("Hugging Face export/import needs safetensors (pip install 'alphaexa[hf]')") from None
    return safetensors.torch


def write_hf_dir(out: Path, cfg: ModelConfig, state: dict[str, Tensor], *, dtype: str = "float32",
                 tokenizer_dir: Path | None = None, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """config.json and the weights (one file, or shards with an index past ``shard_bytes``); returns the files."""
    if dtype not in _DTYPES:
        raise UserError(f"--dtype {dtype!r}: must be one of {', '.join(_DTYPES)}")
    st = _safetensors()
    bos = eos = None
    if tokenizer_dir is not None:
        from ..data import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
    config = hf_config(cfg, dtype, bos, eos)
    tensors = {k: v.to(_DTYPES[dtype]).contiguous() for k, v in to_hf_state(cfg, state).items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    shards = _split(tensors, shard_bytes)
    written = [out / CONFIG_NAME]
    if len(shards) == 1:
        st.save_file(tensors, str(out / SINGLE_FILE), metadata={"format": "pt"})
        written.append(out / SINGLE_FILE)
    else:
        weight_map = {}
        for n, shard in enumerate(shards, 1):
            name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            st.save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            written.append(out / name)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=1) + "\n")
        written.append(out / INDEX_FILE)
    if tokenizer_dir is not None:
        target = out / TOKENIZER_DIR
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(tokenizer_dir, target)
        sentencepiece = next(tokenizer_dir.glob("*.model"), None)
        if sentencepiece is not None:  # what HF's own Llama tokenizers read
            shutil.copyfile(sentencepiece, out / SENTENCEPIECE_FILE)
        written.append(target)
    return written


def _split(tensors: dict[str, Tensor], shard_bytes: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def read_hf_dir(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, every tensor in float32) of a transformers model directory."""
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise UserError(f"{path} holds no {CONFIG_NAME}: not a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise UserError(f"{config_file}: not JSON ({e})") from None
    _importable_family(config)  # before reading gigabytes of weights of a model that cannot be imported
    st = _safetensors()
    if (path / INDEX_FILE).is_file():
        files = sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))
    elif (path / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise UserError(f"{path} holds neither {SINGLE_FILE} nor {INDEX_FILE} (only safetensors weights are read)")
    tensors: dict[str, Tensor] = {}
    for name in files:
        tensors.update({k: v.float() for k, v in st.load_file(str(path / name)).items()})
    return config, tensors


def tokenizer_source(path: Path) -> Path | None:
    """What of ``path`` AlphaExa can tokenize with: its own tokenizer copy, else a SentencePiece model."""
    if (path / TOKENIZER_DIR).is_dir():
        return path / TOKENIZER_DIR
    if (path / SENTENCEPIECE_FILE).is_file():
        return path / SENTENCEPIECE_FILE
    return None

