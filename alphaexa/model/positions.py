"""Position encodings: rotary (with NTK / YaRN context extension) and sinusoidal.

RoPE rotates the two halves of each head's vector (``x[:D/2]``, ``x[D/2:]``) by
an angle ``position * inv_freq[i]`` per pair ``i``; the score ``q . k`` then
depends only on the offset between the two positions.

Context extension (``cfg.rope_scaling``, factor ``s = cfg.rope_scaling_factor``):
``cfg.max_seq_len`` is the *extended* length and ``cfg.max_seq_len / s`` the
length the model is trained at (the "original" length of the YaRN paper).  The
scaled frequencies are used at every length, in training and inference alike,
so a model trained at ``max_seq_len / s`` runs at ``max_seq_len`` with the
frequencies it was trained with.

* ``ntk``: raise the base, ``theta' = theta * s ** (D / (D - 2))``: the lowest
  frequency is divided by exactly ``s`` (interpolated) while the highest barely
  moves (extrapolated).
* ``yarn``: per frequency band.  With ``r_i = original_len / wavelength_i`` the
  number of full turns pair ``i`` makes over the trained length, pairs with
  ``r_i > BETA`` keep their frequency, pairs with ``r_i < ALPHA`` are divided
  by ``s``, and a linear ramp blends the two in between.  Both q and k are
  multiplied by ``0.1 * ln(s) + 1`` (the attention temperature), which scales
  the logits by its square.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .layers import at_least_float32

# YaRN ramp bounds (turns over the trained length), the values the YaRN paper uses for LLaMA.
YARN_ALPHA = 1.0
YARN_BETA = 32.0


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 1.0,
                             original_len: int | None = None) -> tuple[Tensor, float]:
    """Per-pair angular frequencies (float64, ``head_dim / 2``) and the q/k magnitude scale."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    if scaling == "none" or factor == 1.0:
        return theta ** -exponents, 1.0
    if scaling == "ntk":
        return (theta * factor ** (head_dim / (head_dim - 2))) ** -exponents, 1.0
    if scaling == "yarn":
        if original_len is None:
            raise ValueError("yarn scaling needs the trained (original) context length")
        inv_freq = theta ** -exponents
        turns = original_len * inv_freq / (2 * math.pi)
        keep = ((turns - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA)).clamp(0.0, 1.0)
        return inv_freq / factor * (1 - keep) + inv_freq * keep, 0.1 * math.log(factor) + 1.0
    raise ValueError(f"unknown rope scaling {scaling!r}")


def rope_tables(n_positions: int, head_dim: int, theta: float, scaling: str = "none", factor: float = 1.0,
                original_len: int | None = None, device: torch.device | str | None = None
                ) -> tuple[Tensor, Tensor]:
    """cos and sin tables, float32 ``(n_positions, head_dim / 2)``, the magnitude scale folded in."""
    inv_freq, magnitude = rope_inverse_frequencies(head_dim, theta, scaling, factor, original_len)
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float64), inv_freq)
    cos = (angles.cos() * magnitude).to(torch.float32)
    sin = (angles.sin() * magnitude).to(torch.float32)
    return cos.to(device), sin.to(device)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (B, S, H, D) by per-position tables broadcastable to (B, S, 1, D/2); at least fp32 math."""
    half = x.shape[-1] // 2
    xf = at_least_float32(x)
    x1, x2 = xf[..., :half], xf[..., half:]
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.to(x.dtype)


def sinusoidal_table(n_positions: int, dim: int, device: torch.device | str | None = None) -> Tensor:
    """Vaswani et al.'s fixed encoding, float32 ``(n_positions, dim)``: sin on even, cos on odd features."""
    positions = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)
    inv_freq = 10000.0 ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(positions * inv_freq)
    table[:, 1::2] = torch.cos(positions * inv_freq[: dim // 2])
    return table.to(device=device, dtype=torch.float32)
