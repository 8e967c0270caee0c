"""The hybrid dense + MoE decoder-only transformer family (see docs/model.md)."""
from .attention import Attention, KVCache
from .layers import FeedForward, LayerNorm, RMSNorm
from .moe import GroupedExperts, MoE, moe_layers, moe_metrics, set_stats_reduce_hook
from .transformer import Block, Transformer, build_model, count_parameters

__all__ = ["Attention", "Block", "FeedForward", "GroupedExperts", "KVCache", "LayerNorm", "MoE", "RMSNorm",
           "Transformer", "build_model", "count_parameters", "moe_layers", "moe_metrics",
           "set_stats_reduce_hook"]
