"""Model configuration (re-exported from the torch-free ``topology`` layer)."""
from topology.modelcfg import ConfigError, ModelConfig, load_mapping, param_counts, save_mapping
from topology.presets import get_preset, preset_names, resolve_model

__all__ = [
           "ConfigError",
           "ModelConfig",
           "get_preset",
           "load_mapping",
           "param_counts",
           "preset_names",
           "resolve_model",
           "save_mapping",
]
