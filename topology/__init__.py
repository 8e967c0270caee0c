"""Torch-free layer: model shapes, hardware catalogue, cost model, planner, placement.

Importing this package (or anything in it) must never import torch: it runs on
login nodes with no GPU stack.
"""
from .modelcfg import ConfigError, ModelConfig, ParamCounts, flops_per_token, param_counts
from .presets import get_preset, preset_names, resolve_model

__all__ = ["ConfigError", "ModelConfig", "ParamCounts", "flops_per_token", "param_counts",
           "get_preset", "preset_names", "resolve_model"]
