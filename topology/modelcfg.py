"""ModelConfig: the single, torch-free description of a model's shape.

It lives in ``topology`` (the torch-free bottom layer) because the planner reads
it and ``topology`` may not import ``alphaexa``; ``alphaexa.config`` re-exports it.

Architecture the counts below describe (and ``alphaexa.model`` builds):
token embedding [+ learned positions] -> n_layers x pre-norm block
(norm -> attention (q, k, v, o projections, no biases) -> residual,
 norm -> dense FFN or MoE FFN -> residual) -> final norm -> LM head
(shared with the embedding when ``tie_embeddings``).
FFN: gelu = up + down (2 matrices), swiglu = gate + up + down (3 matrices).
MoE: router (d_model x n_experts, no bias) + n_experts routed experts of width
``moe_d_ff`` + ``n_shared_experts`` always-on experts of the same width.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


FFN_TYPES = ("gelu", "swiglu")
NORMS = ("rmsnorm", "layernorm")
POS_ENCODINGS = ("rope", "sinusoidal", "learned")
ROPE_SCALINGS = ("none", "ntk", "yarn")


@dataclass
class ModelConfig:
    name: str = "custom"
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int | None = None  # None -> n_heads (multi-head); fewer -> GQA
    head_dim: int | None = None  # None -> d_model // n_heads
    d_ff: int | None = None  # None -> 4 * d_model
    ffn_type: str = "gelu"
    vocab_size: int = 256
    max_seq_len: int = 256
    pos_encoding: str = "rope"
    rope_theta: float = 10000.0
    # Extended context: "ntk" raises the RoPE base, "yarn" interpolates per
    # frequency band; factor = target length / trained length.
    rope_scaling: str = "none"
    rope_scaling_factor: float = 1.0
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    sliding_window: int = 0  # 0 = full causal attention
    moe_every: int = 0  # 0 = dense; k -> blocks k, 2k, ... (1-based) are MoE
    moe_layers: list[int] | None = None  # explicit 0-based MoE block indices, overrides moe_every
    n_experts: int = 0
    top_k: int = 2
    moe_d_ff: int | None = None  # None -> d_ff
    n_shared_experts: int = 0
    capacity_factor: float = 0.0  # 0 = dropless; > 0 = per-expert capacity, overflow dropped
    router_jitter: float = 0.0
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    tie_embeddings: bool = False
    init_std: float = 0.02
    tokenizer: str = "byte"  # "byte" (256 symbols) or "sentencepiece"
    stated_params: float | None = None  # what a source document claims; describe warns on mismatch
    notes: str = ""

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None and self.n_heads > 0:
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.moe_d_ff is None:
            self.moe_d_ff = self.d_ff
        if isinstance(self.moe_layers, (list, tuple)) and all(_is_int(i) for i in self.moe_layers):
            self.moe_layers = sorted(self.moe_layers)
        self.validate()

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        def bad(fld: str, why: str) -> ConfigError:
            return ConfigError(f"model.{fld}={getattr(self, fld)!r}: {why}")

        for fld in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size",
                    "max_seq_len", "moe_d_ff"):
            v = getattr(self, fld)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise bad(fld, "must be a positive integer")
        for fld in ("moe_every", "n_experts", "top_k", "n_shared_experts", "sliding_window"):
            v = getattr(self, fld)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(fld, "must be a non-negative integer")
        # (field, lower bound, bound inclusive?)
        for fld, low, inclusive in (("rope_theta", 1.0, False), ("rope_scaling_factor", 1.0, True),
                                    ("norm_eps", 0.0, False), ("init_std", 0.0, False),
                                    ("capacity_factor", 0.0, True), ("router_jitter", 0.0, True),
                                    ("aux_loss_coef", 0.0, True), ("z_loss_coef", 0.0, True)):
            v = getattr(self, fld)
            if not _is_number(v) or v < low or (v == low and not inclusive):
                raise bad(fld, f"must be a number {'>=' if inclusive else '>'} {low:g}")
        if self.router_jitter >= 1:
            raise bad("router_jitter", "must be < 1 (router input is scaled by uniform(1 - jitter, 1 + jitter))")
        if self.stated_params is not None and (not _is_number(self.stated_params) or self.stated_params <= 0):
            raise bad("stated_params", "must be a positive number (or absent)")
        if not isinstance(self.tie_embeddings, bool):
            raise bad("tie_embeddings", "must be true or false")
        if not isinstance(self.name, str) or not isinstance(self.notes, str):
            raise bad("name" if not isinstance(self.name, str) else "notes", "must be a string")
        if self.moe_layers is not None:
            layers = self.moe_layers
            if not isinstance(layers, list) or not all(_is_int(i) for i in layers):
                raise bad("moe_layers", "must be a list of block indices")
            if len(set(layers)) != len(layers):
                raise bad("moe_layers", "lists a block twice")
        if self.ffn_type not in FFN_TYPES:
            raise bad("ffn_type", f"must be one of {', '.join(FFN_TYPES)}")
        if self.norm not in NORMS:
            raise bad("norm", f"must be one of {', '.join(NORMS)}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise bad("pos_encoding", f"must be one of {', '.join(POS_ENCODINGS)}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise bad("rope_scaling", f"must be one of {', '.join(ROPE_SCALINGS)}")
        if self.head_dim * self.n_heads != self.d_model and self.d_model % self.n_heads != 0:
            raise bad("n_heads", f"does not divide d_model={self.d_model} and head_dim is not set")
        if self.n_heads % self.n_kv_heads != 0:
            raise bad("n_kv_heads", f"must divide n_heads={self.n_heads}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise bad("head_dim", "must be even for RoPE")
        if self.tokenizer not in ("byte", "sentencepiece"):
            raise bad("tokenizer", "must be 'byte' or 'sentencepiece'")
        if self.tokenizer == "byte" and self.vocab_size < 256:
            raise bad("vocab_size", "must be >= 256 for the byte tokenizer")
        is_moe = bool(self.moe_every) or bool(self.moe_layers)
        if is_moe:
            if self.n_experts < 1:
                raise bad("n_experts", "must be >= 1 when MoE blocks are placed (moe_every/moe_layers)")
            if self.top_k < 1 or self.top_k > self.n_experts:
                raise bad("top_k", f"must be between 1 and n_experts={self.n_experts}")
        if self.moe_layers is not None:
            for i in self.moe_layers:
                if not 0 <= i < self.n_layers:
                    raise bad("moe_layers", f"index {i} outside 0..{self.n_layers - 1}")
        elif self.moe_every > self.n_layers:
            raise bad("moe_every", f"exceeds n_layers={self.n_layers}: no block would be MoE")

    # ------------------------------------------------------------- structure
    @property
    def is_moe(self) -> bool:
        return bool(self.moe_layer_indices())

    def moe_layer_indices(self) -> list[int]:
        if self.moe_layers is not None:
            return list(self.moe_layers)
        if self.moe_every <= 0:
            return []
        return [i for i in range(self.n_layers) if (i + 1) % self.moe_every == 0]

    def is_moe_layer(self, i: int) -> bool:
        return i in set(self.moe_layer_indices())

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    # ------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return ModelConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: str | Path) -> None:
        save_mapping({"model": self.to_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        data = load_mapping(path)
        section = data.get("model", data)
        return cls.from_dict(section, where=f"{path}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON file into a dict (by extension)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    suffix = p.suffix.lower()
    if suffix == ".toml":
        import tomllib

        parse, errors = tomllib.loads, (tomllib.TOMLDecodeError,)
    elif suffix in (".yaml", ".yml"):
        import yaml

        parse, errors = yaml.safe_load, (yaml.YAMLError,)
    elif suffix == ".json":
        parse, errors = json.loads, (json.JSONDecodeError,)
    else:
        raise ConfigError(f"{p}: unknown config format {suffix!r} (use .toml, .yaml or .json)")
    try:
        data = parse(text)
    except errors as e:
        raise ConfigError(f"{p}: cannot parse: {e}") from None
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def save_mapping(data: dict[str, Any], path: str | Path) -> None:
    p = Path(path)
    clean = _drop_none(data)
    suffix = p.suffix.lower()
    if suffix == ".toml":
        import tomli_w

        p.write_text(tomli_w.dumps(clean))
    elif suffix in (".yaml", ".yml"):
        import yaml

        p.write_text(yaml.safe_dump(clean, sort_keys=False))
    elif suffix == ".json":
        p.write_text(json.dumps(clean, indent=2) + "\n")
    else:
        raise ConfigError(f"{p}: unknown config format {suffix!r} (use .toml, .yaml or .json)")


def _drop_none(obj: Any) -> Any:
    # TOML has no null; a missing key means "use the default", which is what None means here.
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_drop_none(v) for v in obj]
    return obj


# --------------------------------------------------------------- parameters
@dataclass
class ParamCounts:
    embedding: int
    positions: int
    attention: int
    dense_ffn: int
    experts: int
    shared_experts: int
    router: int
    norms: int
    lm_head: int
    active_experts: int = field(default=0)

    @property
    def total(self) -> int:
        return (self.embedding + self.positions + self.attention + self.dense_ffn + self.experts
                + self.shared_experts + self.router + self.norms + self.lm_head)

    @property
    def active(self) -> int:
        """Parameters touched per token (routed experts counted top_k times, not n_experts)."""
        return self.total - self.experts + self.active_experts

    def as_dict(self) -> dict[str, int]:
        d = dataclasses.asdict(self)
        d["total"] = self.total
        d["active"] = self.active
        return d


def ffn_params(cfg: ModelConfig, width: int) -> int:
    return (3 if cfg.ffn_type == "swiglu" else 2) * cfg.d_model * width


def norm_params(cfg: ModelConfig) -> int:
    return (2 if cfg.norm == "layernorm" else 1) * cfg.d_model


def param_counts(cfg: ModelConfig) -> ParamCounts:
    d = cfg.d_model
    n_moe = len(cfg.moe_layer_indices())
    n_dense = cfg.n_layers - n_moe
    attn = d * cfg.q_dim + 2 * d * cfg.kv_dim + cfg.q_dim * d
    expert = ffn_params(cfg, cfg.moe_d_ff)
    return ParamCounts(
        embedding=cfg.vocab_size * d,
        positions=cfg.max_seq_len * d if cfg.pos_encoding == "learned" else 0,
        attention=cfg.n_layers * attn,
        dense_ffn=n_dense * ffn_params(cfg, cfg.d_ff),
        experts=n_moe * cfg.n_experts * expert,
        shared_experts=n_moe * cfg.n_shared_experts * expert,
        router=n_moe * d * cfg.n_experts,
        norms=(2 * cfg.n_layers + 1) * norm_params(cfg),
        lm_head=0 if cfg.tie_embeddings else cfg.vocab_size * d,
        active_experts=n_moe * cfg.top_k * expert,
    )


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, float]:
    """Training FLOPs per token: 6 x (active matmul parameters) + the attention term.

    Matmul parameters exclude the embedding lookup (no FLOPs) but include the LM
    head.  The attention term is 6 * n_layers * 2 * q_dim * S_eff / 2 for causal
    attention (QK^T and AV, forward 2 FLOPs per MAC, x3 for fwd+bwd, halved by
    the causal mask); S_eff is capped by the sliding window.
    """
    s = seq_len or cfg.max_seq_len
    pc = param_counts(cfg)
    matmul = pc.active - pc.embedding - pc.positions - pc.norms + cfg.vocab_size * cfg.d_model * cfg.tie_embeddings
    s_eff = min(s, cfg.sliding_window) if cfg.sliding_window else s
    attn = 6 * cfg.n_layers * cfg.q_dim * s_eff  # = 6 * L * 2 * q_dim * S / 2
    return {"matmul": 6.0 * matmul, "attention": float(attn), "total": 6.0 * matmul + attn}


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
