"""float8 training through torchao (``train.float8``): the blocks' linear layers compute in float8
with dynamic tensor-wise scales; the LM head and the MoE router stay in bf16 (as torchtitan does).

Parameters, their names, checkpoints and exports are unchanged (``Float8Linear`` keeps the fp32
master ``weight``); only the GEMMs and their casts differ.  Needs a CUDA GPU with float8 tensor
cores (compute capability 8.9+: Ada, Hopper, Blackwell) and torchao.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

KEEP_IN_BF16 = ("head", "gate")  # the last module name of layers float8 leaves alone


def check_float8(device: torch.device) -> None:
    """A one-line error where float8 training cannot run here."""
    if device.type != "cuda":
        raise UserError(f"train.float8=true needs a CUDA GPU with float8 tensor cores (compute capability 8.9+), "
                        f"this run is on {device.type}")
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        raise UserError(f"train.float8=true needs compute capability 8.9+ (float8 tensor cores); "
                        f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        raise UserError(f"train.float8=true needs torchao (pip install torchao): {e}") from None


def float8_layer(module: nn.Module, name: str) -> bool:
    """Which linear layers compute in float8: not the head or the router, and only shapes whose
    dimensions float8 GEMMs take (multiples of 16)."""
    return (isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in KEEP_IN_BF16
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def apply_float8(chunk: nn.Module) -> int:
    """Swap the chunk's eligible ``nn.Linear`` layers for torchao's ``Float8Linear``; returns how many."""
    from torchao.float8 import convert_to_float8_training

    eligible = sum(float8_layer(m, n) for n, m in chunk.named_modules())
    convert_to_float8_training(chunk, module_filter_fn=float8_layer)
    return eligible
