"""Torch-free layer: model shapes, hardware catalogue, cost model, planner, placement.

Importing this package (or anything in it) must never import torch: it runs on
login nodes with no GPU stack.
"""
from .costmodel import Estimate, Request, estimate
from .hardware import System, load_system, system_names
from .layout import Layout, resolve_layout
from .modelcfg import ConfigError, ModelConfig, ParamCounts, flops_per_token, param_counts
from .placement import Placement, place
from .planner import Plan, PlanResult, plan, resolve_system
from .presets import get_preset, preset_names, resolve_model

__all__ = ["ConfigError", "Estimate", "Layout", "ModelConfig", "ParamCounts", "Placement", "Plan", "PlanResult",
           "Request", "System", "estimate", "flops_per_token", "get_preset", "load_system", "param_counts",
           "place", "plan", "preset_names", "resolve_layout", "resolve_model", "resolve_system", "system_names"]
