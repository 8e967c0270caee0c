"""torchtitan 0.3.0 configs at an AlphaExa shape, for ``bench/vs_peers.py``.

torchtitan 0.3.0 has no TOML configs any more: a run is named by a config-registry
function (``--module M --config F``).  This module is such a registry, read by
torchtitan's own ``ConfigManager``:

    torchrun ... -m torchtitan.train --module bench.titan_configs --config llama3_at_shape

The shape comes from ``$VS_PEERS_TITAN`` (JSON written by vs_peers: the model
fields of an AlphaExa ModelConfig plus batch, seq_len, steps, compile, attention
backend, dump folder).  ``llama3_at_shape`` builds torchtitan's Llama-3 model
(``Llama3Model``, dense blocks) and ``qwen3_moe_at_shape`` its MoE family (Qwen3
blocks without qk-norm, softmax top-k router without renormalisation, grouped
experts; dense blocks where the AlphaExa model has them), so both frameworks
multiply the same matrices.  Tokens are random ids from ``RandomTokens`` (the
AlphaExa run reads its byte-tokenized corpus: data loading is off the critical
path in both, through prefetching), and a throw-away word-level tokenizer
satisfies the trainer's tokenizer step.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC
from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
from torchtitan.models.common.config_utils import (
    get_attention_config,
    make_ffn_config,
    make_gqa_config,
    make_moe_config,
    make_routed_experts_config,
    make_router_config,
)
from torchtitan.models.llama3 import Llama3Model, parallelize_llama
from torchtitan.models.llama3.model import Llama3TransformerBlock
from torchtitan.models.qwen3 import Qwen3Model, parallelize_qwen3
from torchtitan.models.qwen3.model import Qwen3TransformerBlock
from torchtitan.protocols.model_spec import ModelSpec
from torchtitan.trainer import Trainer

_INIT = {"weight": partial(nn.init.normal_, std=0.02), "bias": nn.init.zeros_}
_NORM_INIT = {"weight": nn.init.ones_}
_EXPERTS_INIT = {"w1_EFD": _INIT["weight"], "w2_EDF": _INIT["weight"], "w3_EFD": _INIT["weight"]}


def _shape() -> dict:
    return json.loads(os.environ["VS_PEERS_TITAN"])


class RandomTokens(BaseDataLoader):
    """Uniform random token ids, one document per row, generated on the host."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        vocab_size: int = 32000
        seed: int = 0

    def __init__(self, config: Config, *, local_batch_size: int, seq_len: int, **_runtime):
        self.config = config
        self.batch, self.seq_len = local_batch_size, seq_len
        self.generator = torch.Generator().manual_seed(config.seed)

    def __iter__(self):
        positions = torch.arange(self.seq_len).expand(self.batch, -1)
        while True:
            tokens = torch.randint(0, self.config.vocab_size, (self.batch, self.seq_len + 1), generator=self.generator)
            yield {"input": tokens[:, :-1], "positions": positions}, tokens[:, 1:]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


def _tokenizer_dir(folder: Path) -> str:
    from tokenizers import Tokenizer, models

    folder.mkdir(parents=True, exist_ok=True)
    Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>")).save(
        str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return str(folder)


def _attention(s: dict, layer_id: int):
    return make_gqa_config(
        dim=s["d_model"], n_heads=s["n_heads"], n_kv_heads=s["n_kv_heads"], head_dim=s["head_dim"],
        wqkv_param_init=_INIT, wo_param_init=_INIT, inner_attention=get_attention_config(s["attention"]),
        fuse_qkv=True, rope=ComplexRoPE.Config(dim=s["head_dim"], max_seq_len=s["seq_len"], theta=s["rope_theta"]))


def _dense_ffn(s: dict):
    return make_ffn_config(dim=s["d_model"], hidden_dim=s["d_ff"], w1_param_init=_INIT, w2w3_param_init=_INIT)


def _moe(s: dict):
    experts = make_routed_experts_config(dim=s["d_model"], hidden_dim=s["moe_d_ff"], num_experts=s["n_experts"],
                                         top_k=s["top_k"], param_init=_EXPERTS_INIT, comm_backend="standard")
    router = make_router_config(dim=s["d_model"], num_experts=s["n_experts"], gate_param_init=_INIT,
                                top_k=s["top_k"], score_func="softmax", route_norm=False)
    return make_moe_config(num_experts=s["n_experts"], router=router, routed_experts=experts)


def _decoder_parts(s: dict) -> dict:
    d, vocab = s["d_model"], s["vocab_size"]
    return {"dim": d, "vocab_size": vocab, "enable_weight_tying": s["tie_embeddings"],
            "tok_embeddings": Embedding.Config(num_embeddings=vocab, embedding_dim=d, param_init=_INIT),
            "norm": RMSNorm.Config(normalized_shape=d, eps=s["norm_eps"], param_init=_NORM_INIT),
            "lm_head": Linear.Config(in_features=d, out_features=vocab, param_init=_INIT)}


def _trainer(s: dict, model_spec: ModelSpec) -> Trainer.Config:
    dump = Path(s["dump_folder"])
    return Trainer.Config(
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=s["vocab_size"])),
        hf_assets_path=_tokenizer_dir(dump / "tokenizer"),
        dump_folder=str(dump),
        model_spec=model_spec,
        optimizer=default_adamw(lr=3e-4),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=2),
        training=TrainingConfig(local_batch_size=s["batch"], seq_len=s["seq_len"], steps=s["steps"],
                                disable_cuda_graphs=not s["cuda_graphs"]),
        dataloader=RandomTokens.Config(vocab_size=s["vocab_size"]),
        metrics=MetricsProcessor.Config(log_freq=1, enable_tensorboard=True),
        parallelism=ParallelismConfig(data_parallel_shard_degree=-1),
        checkpoint=CheckpointManager.Config(enable=False),
        compile=CompileConfig(enable=s["compile"]),
        **({"activation_checkpoint": FullAC.Config()} if s["recompute"] == "full" else {}),
    )


def llama3_at_shape() -> Trainer.Config:
    s = _shape()
    layers = [Llama3TransformerBlock.Config(
        attention_norm=RMSNorm.Config(normalized_shape=s["d_model"], eps=s["norm_eps"], param_init=_NORM_INIT),
        ffn_norm=RMSNorm.Config(normalized_shape=s["d_model"], eps=s["norm_eps"], param_init=_NORM_INIT),
        attention=_attention(s, i), feed_forward=_dense_ffn(s)) for i in range(s["n_layers"])]
    model = Llama3Model.Config(**_decoder_parts(s), layers=layers)
    spec = ModelSpec(name="llama3", flavor="alphaexa-shape", model=model, parallelize_fn=parallelize_llama,
                     pipelining_fn=None, post_optimizer_build_fn=None, state_dict_adapter=None)
    return _trainer(s, spec)


def qwen3_moe_at_shape() -> Trainer.Config:
    from torchtitan.components.optimizer import register_moe_load_balancing_hook

    s = _shape()
    layers = []
    for i in range(s["n_layers"]):
        moe_layer = i in s["moe_layers"]
        layers.append(Qwen3TransformerBlock.Config(
            attention_norm=RMSNorm.Config(normalized_shape=s["d_model"], eps=s["norm_eps"], param_init=_NORM_INIT),
            ffn_norm=RMSNorm.Config(normalized_shape=s["d_model"], eps=s["norm_eps"], param_init=_NORM_INIT),
            attention=_attention(s, i), **({"moe": _moe(s)} if moe_layer else {"feed_forward": _dense_ffn(s)})))
    model = Qwen3Model.Config(**_decoder_parts(s), layers=layers)
    spec = ModelSpec(name="qwen3", flavor="alphaexa-shape", model=model, parallelize_fn=parallelize_qwen3,
                     pipelining_fn=None, post_optimizer_build_fn=register_moe_load_balancing_hook,
                     state_dict_adapter=None)
    return _trainer(s, spec)
