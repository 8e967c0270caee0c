"""The decoder-only transformer built from a ``ModelConfig``.

No parallel code lives here: tensor/sequence, FSDP, pipeline and expert
parallelism are applied from outside (``alphaexa.parallel``), which relies on
the module names below.  A pipeline stage deletes entries of ``layers`` (names
are kept, so checkpoints line up) and sets ``tok_embeddings`` / ``norm`` /
``output`` to None: the forward then takes and returns hidden states.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from topology.modelcfg import ModelConfig

from .attention import Attention, KVCache
from .layers import NORM_TYPES, FeedForward, build_norm
from .loss import LOSS_CHUNK_TOKENS, fused_linear_cross_entropy
from .moe import GroupedExperts, MoE
from .positions import rope_tables, sinusoidal_table


@dataclass(frozen=True)
class ParamInit:
    """How one parameter starts: ``constant`` (std None), or normal(0, std) drawn from a
    generator seeded by (seed, name); with ``per_expert`` (a stacked (E, ...) expert weight)
    expert e draws from its own generator, seeded by (seed, "name.e")."""

    name: str
    std: float | None = None
    constant: float = 0.0
    seed: int = 0
    per_expert: bool = False

    def write_(self, out: Tensor, expert: int | None = None) -> Tensor:
        """Write the initial values of the whole parameter, or of one expert's slice, into ``out``."""
        if self.std is None:
            return out.fill_(self.constant)
        name = self.name if expert is None else f"{self.name}.{expert}"
        generator = torch.Generator(device=out.device).manual_seed(_param_seed(self.seed, name))
        return out.normal_(0.0, self.std, generator=generator)

    def write_whole_(self, param: Tensor) -> None:
        if self.per_expert and self.std is not None:
            for expert in range(param.shape[0]):
                self.write_(param[expert], expert)
        else:
            self.write_(param)


class Block(nn.Module):
    """Pre-norm block: ``h + attention(norm(h))``, then ``h + ffn(norm(h))`` (dense or MoE)."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attention_norm = build_norm(cfg)
        self.attention = Attention(cfg, str(layer_id))
        self.ffn_norm = build_norm(cfg)
        self.is_moe = cfg.is_moe_layer(layer_id)
        if self.is_moe:
            self.moe = MoE(cfg)
        else:
            self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, cfg.ffn_type)

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None = None) -> Tensor:
        h = h + self.attention(self.attention_norm(h), rope, cache)
        ffn = self.moe if self.is_moe else self.feed_forward
        return h + ffn(self.ffn_norm(h))


class Transformer(nn.Module):
    # Tokens per chunk of the fused head + loss (train.loss_chunk_tokens): a chunk's logits, softmax and
    # their gradient are the loss's temporaries, on top of every saved activation at the end of the forward.
    loss_chunk_tokens: int = LOSS_CHUNK_TOKENS

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embeddings = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos_encoding == "learned" else None
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.n_layers)})
        self.norm = build_norm(cfg)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()
        # Position tables are derived, not learned: non-persistent, rebuilt by init_buffers().
        if cfg.pos_encoding == "rope":
            self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
            self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        if cfg.pos_encoding == "sinusoidal":
            self.register_buffer("sinusoid", torch.empty(cfg.max_seq_len, cfg.d_model), persistent=False)
        if self.tok_embeddings.weight.device.type != "meta":
            self.init_buffers()

    # ----------------------------------------------------------- initialisation
    def tie_weights(self) -> None:
        """Share the LM head with the embedding (``to_empty`` unties them; init_weights re-ties)."""
        if self.cfg.tie_embeddings and self.output is not None and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the float32 position tables on ``device`` (default: that of the parameters)."""
        cfg = self.cfg
        device = device or next(self.parameters()).device
        if cfg.pos_encoding == "rope":
            original_len = max(1, round(cfg.max_seq_len / cfg.rope_scaling_factor))
            self.rope_cos, self.rope_sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta,
                                                       cfg.rope_scaling, cfg.rope_scaling_factor,
                                                       original_len, device=device)
        if cfg.pos_encoding == "sinusoidal":
            self.sinusoid = sinusoidal_table(cfg.max_seq_len, cfg.d_model, device=device)

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Deterministic initialisation of every parameter as ``param_inits`` describes."""
        self.tie_weights()
        self.init_buffers()
        params = dict(self.named_parameters())
        for name, init in self.param_inits(seed).items():
            init.write_whole_(params[name])

    def param_inits(self, seed: int = 0) -> dict[str, ParamInit]:
        """How each parameter (by its global name) starts: normal(0, init_std) for matrices and
        embeddings, with the projections that write into the residual stream (attention ``wo``,
        FFN/expert ``w2``) scaled by 1/sqrt(2 n_layers); norms to one (and zero bias).

        Each parameter draws from its own generator seeded by ``seed`` and its name, and a
        stacked expert weight from one generator per expert: whoever holds a parameter, or
        some experts of it (a pipeline stage, an expert-parallel rank), can draw exactly the
        values the whole model has without drawing the rest.
        """
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        inits: dict[str, ParamInit] = {}
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    continue
                seen.add(id(param))
                name = f"{module_name}.{param_name}" if module_name else param_name
                if isinstance(module, NORM_TYPES):
                    inits[name] = ParamInit(name, constant=1.0 if param_name == "weight" else 0.0)
                    continue
                writes_residual = name.endswith(("attention.wo.weight", "w2.weight", "experts.w2"))
                inits[name] = ParamInit(name, std=residual_std if writes_residual else std, seed=seed,
                                        per_expert=isinstance(module, GroupedExperts))
        return inits

    def set_attention_kernel(self, kernel: str | None) -> None:
        """Force a backend attention kernel by name for every layer (None: best available)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.kernel = kernel

    def new_kv_cache(self, batch: int, capacity: int, dtype: torch.dtype | None = None) -> KVCache:
        reference = next(iter(self.layers.values())).attention.wk.weight
        return KVCache(list(self.layers.keys()), batch, capacity, self.cfg.n_kv_heads, self.cfg.head_dim,
                       dtype or reference.dtype, reference.device)

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: Tensor, cache: KVCache | None = None, targets: Tensor | None = None) -> Tensor:
        """Token ids (B, S) -> logits (B, S, vocab); on a pipeline stage without embedding or
        head, hidden states (B, S, d) in and/or out.  With ``cache``, the S tokens continue
        each row's cached sequence and the cache advances by S.  With ``targets`` (B, S) (and
        the head on this stage), the summed token cross-entropy instead of the logits, through
        the fused head + loss that never holds the whole fp32 logits (``loss``)."""
        seq = inputs.shape[1]
        device = inputs.device
        positions = cache.positions(seq, device) if cache is not None else None
        last = seq if positions is None else int(positions.max()) + 1
        if last > self.cfg.max_seq_len:
            raise ValueError(f"position {last - 1} is beyond max_seq_len={self.cfg.max_seq_len}")
        if positions is None:
            positions = torch.arange(seq, device=device).unsqueeze(0)

        if self.tok_embeddings is not None:
            h = self.tok_embeddings(inputs)
            if self.cfg.pos_encoding == "sinusoidal":
                # Vaswani et al. scale the embedding by sqrt(d) so the fixed table does not drown it.
                h = h * math.sqrt(self.cfg.d_model) + self.sinusoid[positions].to(h.dtype)
            elif self.pos_embeddings is not None:
                h = h + self.pos_embeddings(positions)
        else:
            h = inputs

        rope = None
        if self.cfg.pos_encoding == "rope":
            # (B or 1, S, 1, D/2): broadcast over heads.
            rope = (self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2))
        for layer in self.layers.values():
            h = layer(h, rope, cache)
        if self.norm is not None:
            h = self.norm(h)
        if self.output is not None and targets is not None:
            return fused_linear_cross_entropy(h, self.output.weight, targets, self.loss_chunk_tokens)
        if self.output is not None:
            h = self.output(h)
        if cache is not None:
            cache.advance(seq)
        return h


def _param_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int | None = 0) -> Transformer:
    """Construct on the meta device, allocate on ``device`` in ``dtype``, initialise with ``seed``
    (None: leave the weights uninitialised, for a checkpoint to fill)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.to(dtype)
    if seed is None:
        model.tie_weights()
        model.init_buffers()
    else:
        model.init_weights(seed)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """numel per component (works on the meta device; shared weights counted once)."""
    categories = {k: 0 for k in ("embedding", "positions", "attention", "dense_ffn", "experts",
                                 "shared_experts", "router", "norms", "lm_head")}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        categories[_category(name)] += param.numel()
    return categories


def _category(name: str) -> str:
    if name.startswith("tok_embeddings."):
        return "embedding"
    if name.startswith("pos_embeddings."):
        return "positions"
    if name.startswith("output."):
        return "lm_head"
    if name.startswith("norm.") or "_norm." in name:
        return "norms"
    if ".attention." in name:
        return "attention"
    if ".feed_forward." in name:
        return "dense_ffn"
    if ".moe.experts." in name:
        return "experts"
    if ".moe.shared_experts." in name:
        return "shared_experts"
    if ".moe.gate." in name:
        return "router"
    raise ValueError(f"parameter {name!r} belongs to no known component")
