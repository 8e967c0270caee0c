"""Norms (computed in at least fp32 whatever the activation dtype) and the dense feed-forward block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from topology.modelcfg import ModelConfig


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in fp32 if it is a narrower float, else as it is: bf16/fp16 math is widened, while
    float64 (the CPU equivalence tests) keeps its precision instead of being rounded to fp32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def matmul_dtype(t: Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` multiplies ``t`` in here: autocast's when it is on, else ``t``'s own."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(at_least_float32(x), (x.shape[-1],), at_least_float32(self.weight), self.eps).to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(at_least_float32(x), (x.shape[-1],), at_least_float32(self.weight),
                            at_least_float32(self.bias),
                            self.eps).to(x.dtype)


NORM_TYPES = (RMSNorm, LayerNorm)


def build_norm(cfg: ModelConfig) -> nn.Module:
    return (LayerNorm if cfg.norm == "layernorm" else RMSNorm)(cfg.d_model, cfg.norm_eps)


def activate(ffn_type: str, up: Tensor, gate: Tensor | None) -> Tensor:
    """GELU of the up projection, or SwiGLU: silu(gate) * up."""
    if ffn_type == "swiglu":
        return F.silu(gate) * up
    return F.gelu(up)


class FeedForward(nn.Module):
    """``w2(act(w1 x))``; for SwiGLU ``w2(silu(w3 x) * w1 x)`` (w1 up, w3 gate, w2 down)."""

    def __init__(self, d_model: int, hidden: int, ffn_type: str):
        super().__init__()
        self.ffn_type = ffn_type
        # True: SwiGLU's up and gate from one GEMM over the concatenated weights (``parallelize(fused_projections=)``).
        self.fused_projections = False
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False) if ffn_type == "swiglu" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_projections and self.w3 is not None:
            up, gate = F.linear(x, torch.cat([self.w1.weight, self.w3.weight])).chunk(2, dim=-1)
        else:
            up, gate = self.w1(x), (self.w3(x) if self.w3 is not None else None)
        return self.w2(activate(self.ffn_type, up, gate))
