"""torchtitan 0.2.x train specs at an AlphaExa shape, for ``bench/vs_peers.py``.

Why 0.2.x: torchtitan 0.3.0 is released against torch 2.14 (its docs/release.md pins
torch 2.14.0 / torchao 0.18.0; its wheel declares no torch requirement) and already fails
at import on torch 2.11 (``torch.distributed.fsdp.DataParallelMeshDims`` does not exist
there, and every model package imports it through its parallelize module).  0.2.2
(2026-02-20, tested against that month's nightlies, i.e. torch 2.11) is the newest
release whose code imports on torch 2.11.

Importing this module registers two train specs with torchtitan's own registry
(``register_train_spec``), each with one flavor, ``at_shape``, built from
``$VS_PEERS_TITAN`` (JSON written by vs_peers: the model fields of an AlphaExa
ModelConfig plus the batch):

* ``alphaexa_llama3``: torchtitan's Llama-3 model and its ``parallelize_llama``;
* ``alphaexa_qwen3``: its MoE family, Qwen3 blocks without qk-norm (softmax top-k router
  without renormalisation, no shared expert, grouped-GEMM experts) and
  ``parallelize_qwen3``; blocks the AlphaExa model has dense stay dense SwiGLU blocks.

Both read uniform random token ids (``RandomTokens``; AlphaExa reads a byte-tokenized
corpus; both keep data loading off the critical path), need no tokenizer and no state-dict
adapter.  The rest (trainer, optimizer, schedule, compile, mixed precision, metrics) is
torchtitan's own, set on its command line by vs_peers.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.models.llama3 import Transformer as Llama3Transformer
from torchtitan.models.llama3 import TransformerModelArgs
from torchtitan.models.moe import MoEArgs
from torchtitan.models.qwen3.model.args import Qwen3ModelArgs
from torchtitan.models.qwen3.model.model import Qwen3Model, TransformerBlock
from torchtitan.protocols import train_spec as registry

FLAVOR = "at_shape"


def shape() -> dict:
    return json.loads(os.environ["VS_PEERS_TITAN"])


class RandomTokens(BaseDataLoader):
    """Uniform random token ids, generated on the host, ``({"input": x}, labels)`` per batch."""

    def __init__(self, vocab_size: int, batch: int, seq_len: int, seed: int = 0):
        self.vocab_size, self.batch, self.seq_len = vocab_size, batch, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        while True:
            tokens = torch.randint(0, self.vocab_size, (self.batch, self.seq_len + 1), generator=self.generator)
            yield {"input": tokens[:, :-1]}, tokens[:, 1:]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


def build_random_tokens(*, job_config, **_dp) -> RandomTokens:
    return RandomTokens(shape()["vocab_size"], job_config.training.local_batch_size, job_config.training.seq_len)


def llama3_args(s: dict) -> TransformerModelArgs:
    args = TransformerModelArgs(dim=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                                n_kv_heads=s["n_kv_heads"], vocab_size=s["vocab_size"], multiple_of=256,
                                norm_eps=s["norm_eps"], rope_theta=s["rope_theta"], max_seq_len=s["max_seq_len"],
                                attn_type="sdpa", attn_mask_type="causal")
    # Llama-3 derives its FFN width: 256 * ceil((8 d / 3) / 256) must be the preset's d_ff.
    width = 256 * -(-int(8 * s["d_model"] / 3) // 256)
    if width != s["d_ff"] or s["head_dim"] * s["n_heads"] != s["d_model"] or s["tie_embeddings"]:
        raise ValueError(f"torchtitan's Llama-3 cannot take this shape (FFN {width} vs {s['d_ff']}, "
                         f"head_dim {s['head_dim']}, tied {s['tie_embeddings']})")
    return args


def qwen3_args(s: dict) -> Qwen3ModelArgs:
    moe = MoEArgs(num_experts=s["n_experts"], num_shared_experts=0, score_func="softmax", route_norm=False,
                  top_k=s["top_k"], use_grouped_mm=True, load_balance_coeff=None)
    return Qwen3ModelArgs(dim=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"], n_kv_heads=s["n_kv_heads"],
                          vocab_size=s["vocab_size"], head_dim=s["head_dim"], hidden_dim=s["d_ff"],
                          norm_eps=s["norm_eps"], rope_theta=s["rope_theta"], qk_norm=False,
                          max_seq_len=s["max_seq_len"], attn_type="sdpa", attn_mask_type="causal",
                          enable_weight_tying=s["tie_embeddings"], moe_enabled=True, moe_inter_dim=s["moe_d_ff"],
                          moe_args=moe)


class MixedQwen3Model(Qwen3Model):
    """Qwen3 with MoE blocks only at the AlphaExa model's MoE layers, dense SwiGLU blocks elsewhere."""

    def __init__(self, model_args: Qwen3ModelArgs):
        super().__init__(model_args)
        dense = dataclasses.replace(model_args, moe_enabled=False)
        moe_layers = set(shape()["moe_layers"])
        for layer_id in range(model_args.n_layers):
            if layer_id not in moe_layers:
                self.layers[str(layer_id)] = TransformerBlock(layer_id, dense)


def register() -> None:
    s = shape()
    llama = registry.get_train_spec("llama3")
    registry.register_train_spec("alphaexa_llama3", dataclasses.replace(
        llama, model_cls=Llama3Transformer, model_args={FLAVOR: llama3_args(s)} if not s["moe_layers"] else {},
        build_dataloader_fn=build_random_tokens, build_tokenizer_fn=None, build_validator_fn=None,
        state_dict_adapter=None, pipelining_fn=None))
    qwen = registry.get_train_spec("qwen3")
    registry.register_train_spec("alphaexa_qwen3", dataclasses.replace(
        qwen, model_cls=MixedQwen3Model, model_args={FLAVOR: qwen3_args(s)} if s["moe_layers"] else {},
        build_dataloader_fn=build_random_tokens, build_tokenizer_fn=None, build_validator_fn=None,
        state_dict_adapter=None, pipelining_fn=None))


register()
