"""Attention kernels behind one call, ``attend``, with a per-device priority order.

Every kernel computes the same function: scaled dot-product attention with
optional causal masking, a sliding window, grouped-query attention (GQA) and a
query offset for KV-cache decoding.  The ``math`` kernel is the reference that
every other kernel is tested against.

Positions: query ``i`` sits at absolute position ``p = q_offset + i``; key ``j``
at position ``j``.  Query ``p`` may see key ``j`` when
  * causal:     ``j <= p``
  * window > 0: ``j > p - window`` (and, when not causal, ``j < p + window``)
GQA: key/value head ``h`` serves query heads ``h*g ... h*g + g-1`` with
``g = Hq // Hkv`` (the convention of SDPA's ``enable_gqa`` and of flash-attn).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import BackendError


@dataclass(frozen=True)
class AttentionCall:
    """The shape of one ``attend`` call, which a kernel inspects to say whether it can serve it."""

    device_type: str
    dtype: torch.dtype
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool
    window: int
    q_offset: int

    @property
    def masked(self) -> bool:
        return self.causal or self.window > 0


@dataclass(frozen=True)
class AttentionKernel:
    """One registered implementation.

    ``unsupported(call)`` returns None when the kernel can compute ``call``, else the
    reason it cannot (used for errors when a kernel is forced by name).
    """

    name: str
    device_types: tuple[str, ...]
    requires_module: str | None
    unsupported: Callable[[AttentionCall], str | None]
    compute: Callable[..., Tensor]
    requires_entry: str = ""  # the function ``requires_module`` must provide (checked once, see _provides)

    def installed(self) -> bool:
        return self.requires_module is None or _module_installed(self.requires_module, self.requires_entry)


# Whether each kernel's module is installed, looked up once per module.  A plain dict, filled
# for every registered kernel when this module is imported: inside a compiled model the lookup
# is a constant, where a call into importlib (through functools.cache, which Dynamo traces
# through) broke the graph at every ``attend`` on CUDA: ~7 graphs per transformer block, with
# the attention run eagerly between them (H200 trace, torch 2.11).
_INSTALLED: dict[str, bool] = {}


def _module_installed(module: str, entry: str = "") -> bool:
    key = f"{module}:{entry}"
    found = _INSTALLED.get(key)
    if found is None:
        found = _INSTALLED[key] = _provides(module, entry)
    return found


def _provides(module: str, entry: str) -> bool:
    """Whether ``module`` is installed and, if ``entry`` is named, imports and provides it.

    Finding the module is not enough: flash-attn-4 installs its CuTe kernels as ``flash_attn.cute``
    inside a ``flash_attn`` namespace package, which ``find_spec`` finds without FlashAttention-2's
    ``flash_attn_func`` (a run with flash-attn-4 installed failed with ImportError in its first
    forward on an H100, session 12).  A build that does not load serves nothing, with a warning.
    """
    if importlib.util.find_spec(module) is None:
        return False
    if not entry:
        return True
    try:
        provided = callable(getattr(importlib.import_module(module), entry, None))
    # an ABI or driver mismatch of a compiled extension (ImportError, OSError, RuntimeError), a wheel built for
    # another torch (AttributeError, TypeError, ...): imported when this module is, so nothing may escape here
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"attention: {module!r} is installed but does not import ({exc}); its kernel is not used")
        return False
    return provided


def visibility_mask(
    q_len: int, kv_len: int, *, causal: bool, window: int, q_offset: int, device: torch.device | str = "cpu"
) -> Tensor | None:
    """Boolean (q_len, kv_len) mask, True where a query may see a key; None when all may."""
    if not causal and window <= 0:
        return None
    query_pos = torch.arange(q_offset, q_offset + q_len, device=device).unsqueeze(1)
    key_pos = torch.arange(kv_len, device=device).unsqueeze(0)
    visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        visible &= key_pos <= query_pos
    if window > 0:
        visible &= key_pos > query_pos - window
        if not causal:
            visible &= key_pos < query_pos + window
    return visible


# --- math: the reference -----------------------------------------------------------------------


def _math_attention(q: Tensor, k: Tensor, v: Tensor, call: AttentionCall) -> Tensor:
    group = call.q_heads // call.kv_heads
    k = k.repeat_interleave(group, dim=1) if group > 1 else k
    v = v.repeat_interleave(group, dim=1) if group > 1 else v
    # Scores and softmax in at least fp32 so the reference is not limited by bf16/fp16
    # rounding (float64 inputs stay float64, for tests).
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(compute_dtype) @ k.to(compute_dtype).transpose(-2, -1)) / math.sqrt(call.head_dim)
    mask = _call_mask(call, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs @ v.to(compute_dtype)).to(q.dtype)


def _call_mask(call: AttentionCall, device: torch.device) -> Tensor | None:
    """The boolean visibility mask of ``call`` (None when every key is visible)."""
    return visibility_mask(call.q_len, call.kv_len, causal=call.causal, window=call.window,
                           q_offset=call.q_offset, device=device)


def _math_unsupported(call: AttentionCall) -> str | None:
    return None


# --- torch.nn.functional.scaled_dot_product_attention ------------------------------------------


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor, call: AttentionCall) -> Tensor:
    gqa = call.q_heads != call.kv_heads
    # SDPA's is_causal aligns the mask top-left, which is our mask only for a square
    # call without offset or window; everything else gets an explicit boolean mask.
    if call.causal and call.window == 0 and call.q_offset == 0 and call.q_len == call.kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = _call_mask(call, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _sdpa_unsupported(call: AttentionCall) -> str | None:
    return None


# --- SDPA with one backend forced (measured against SDPA's own choice; never picked unasked) ---


def _cuda_half_unsupported(call: AttentionCall, max_head_dim: int) -> str | None:
    """What the fused CUDA kernels share: CUDA, fp16/bf16, head_dim a multiple of 8 up to a bound."""
    if call.device_type != "cuda":
        return f"needs a CUDA tensor, got {call.device_type}"
    if call.dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16, got {call.dtype}"
    if call.head_dim > max_head_dim or call.head_dim % 8:
        return f"needs head_dim a multiple of 8 and <= {max_head_dim}, got {call.head_dim}"
    return None


def _sdpa_backend_unsupported(call: AttentionCall) -> str | None:
    reason = _cuda_half_unsupported(call, 128)
    if reason:
        return reason
    # Only SDPA's own causal mask: an explicit boolean mask would send flash to an error.
    if call.masked and (call.window or call.q_offset or call.q_len != call.kv_len):
        return "serves full or square causal attention only (no window, no offset)"
    return None


def _forced_sdpa(backend_name: str) -> Callable[..., Tensor]:
    def compute(q: Tensor, k: Tensor, v: Tensor, call: AttentionCall) -> Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            return _sdpa_attention(q, k, v, call)

    return compute


# --- flash-attn (FlashAttention-2, and FlashAttention-3 on Hopper) ------------------------------


def _flash_window(call: AttentionCall) -> tuple[int, int]:
    # flash-attn's window_size=(left, right) counts keys on each side of the query's
    # diagonal, inclusive of the diagonal itself; -1 means unbounded.
    if call.window <= 0:
        return (-1, -1)
    return (call.window - 1, 0 if call.causal else call.window - 1)


def _flash_unsupported(call: AttentionCall) -> str | None:
    reason = _cuda_half_unsupported(call, 256)
    if reason:
        return reason
    # flash-attn aligns causal/window masks bottom-right (query i at position
    # kv_len - q_len + i), which equals ours exactly when kv_len == q_offset + q_len.
    if call.masked and call.kv_len != call.q_offset + call.q_len:
        return (
            "aligns masks bottom-right, needs kv_len == q_offset + q_len "
            f"({call.kv_len} != {call.q_offset + call.q_len})"
        )
    return None


def _call_flash(flash_attn_func, q: Tensor, k: Tensor, v: Tensor, call: AttentionCall) -> Tensor:
    """FlashAttention 2 and 3 take and return (batch, seq, heads, head_dim); ours is (batch, heads, seq, head_dim)."""
    out = flash_attn_func(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        causal=call.causal,
        window_size=_flash_window(call),
    )
    # Some FlashAttention-3 releases return (out, softmax_lse), later ones only out.
    if isinstance(out, tuple):
        out = out[0]
    return out.transpose(1, 2)


def _flash2_attention(q: Tensor, k: Tensor, v: Tensor, call: AttentionCall) -> Tensor:
    from flash_attn import flash_attn_func

    return _call_flash(flash_attn_func, q, k, v, call)


_CUDA_MAJOR: dict[int, int] = {}  # device index -> compute capability major, read once (see _INSTALLED)


def _flash3_unsupported(call: AttentionCall) -> str | None:
    reason = _flash_unsupported(call)
    if reason is None:
        index = torch.cuda.current_device()
        if index not in _CUDA_MAJOR:
            _CUDA_MAJOR[index] = torch.cuda.get_device_capability(index)[0]
        if _CUDA_MAJOR[index] != 9:
            reason = "FlashAttention-3 needs a Hopper GPU (compute capability 9.x)"
    return reason


def _flash3_attention(q: Tensor, k: Tensor, v: Tensor, call: AttentionCall) -> Tensor:
    from flash_attn_interface import flash_attn_func

    return _call_flash(flash_attn_func, q, k, v, call)


# --- FlexAttention: sliding windows without a materialised mask ---------------------------------
#
# SDPA serves a window only through an explicit (q_len x kv_len) boolean mask, which its fused
# kernels refuse or run slowly: at 32k tokens a 4096-token window trained 2.6x slower than full
# causal attention on an H200 (docs/performance.md).  FlexAttention compiles the mask into a
# block-sparse kernel that skips the blocks no query sees.  Its backward runs on accelerators
# only, so it is registered for them, and only for windowed calls (where SDPA needs a mask).


def _visibility_mod(call: AttentionCall) -> Callable:
    """The mask rule of the module docstring as a FlexAttention ``mask_mod``."""
    causal, window, offset = call.causal, call.window, call.q_offset

    def visible(batch, head, q_idx, kv_idx):
        position = q_idx + offset
        seen = kv_idx > position - window
        if causal:
            seen = seen & (kv_idx <= position)
        else:
            seen = seen & (kv_idx < position + window)
        return seen

    return visible


_EAGER_BLOCK_MASKS: dict[tuple, object] = {}


def _flex_block_mask(call: AttentionCall, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    if torch.compiler.is_compiling():  # traced into the caller's graph, computed on the device
        return create_block_mask(_visibility_mod(call), None, None, call.q_len, call.kv_len, device=device)
    key = (call.q_len, call.kv_len, call.causal, call.window, call.q_offset, str(device))
    if key not in _EAGER_BLOCK_MASKS:  # eager: once per shape, not per layer; compiled, so that no
        # (q_len x kv_len) mask is ever materialised (16 GiB of booleans at 128k tokens)
        _EAGER_BLOCK_MASKS[key] = torch.compile(create_block_mask)(
            _visibility_mod(call), None, None, call.q_len, call.kv_len, device=device
        )
    return _EAGER_BLOCK_MASKS[key]


@cache
def _compiled_flex() -> Callable:
    # FlexAttention is a fused kernel only when compiled; inside a compiled model the call is
    # traced into the model's graph either way.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_unsupported(call: AttentionCall) -> str | None:
    if call.device_type not in ("cuda", "xpu"):
        return f"needs an accelerator (FlexAttention has no backward on {call.device_type})"
    if call.window <= 0:
        return "serves windowed attention only (SDPA's own kernels serve the rest without a mask)"
    if call.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"needs float32, float16 or bfloat16, got {call.dtype}"
    return None


def flex_attention_call(q: Tensor, k: Tensor, v: Tensor, call: AttentionCall) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    flex = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    return flex(q, k, v, block_mask=_flex_block_mask(call, q.device), enable_gqa=call.q_heads != call.kv_heads)


# --- the registry -------------------------------------------------------------------------------

# Registration order is the priority order: the first installed kernel that supports a
# call serves it when no kernel is forced.  ``flex`` takes only windowed calls on
# accelerators; ``sdpa`` serves every call, so the two forced-backend SDPA entries after it
# run only when named (benchmarks, the kernel tests): SDPA's own choice measured fastest on
# an H200 (docs/performance.md).
KERNELS: dict[str, AttentionKernel] = {
    k.name: k
    for k in (
        AttentionKernel(
            "flash_attn3", ("cuda",), "flash_attn_interface", _flash3_unsupported, _flash3_attention, "flash_attn_func"
        ),
        AttentionKernel(
            "flash_attn", ("cuda",), "flash_attn", _flash_unsupported, _flash2_attention, "flash_attn_func"
        ),
        AttentionKernel("flex", ("cuda", "xpu"), None, _flex_unsupported, flex_attention_call),
        AttentionKernel("sdpa", ("cpu", "cuda", "xpu"), None, _sdpa_unsupported, _sdpa_attention),
        AttentionKernel("sdpa_cudnn", ("cuda",), None, _sdpa_backend_unsupported, _forced_sdpa("CUDNN_ATTENTION")),
        AttentionKernel("sdpa_flash", ("cuda",), None, _sdpa_backend_unsupported, _forced_sdpa("FLASH_ATTENTION")),
        AttentionKernel("math", ("cpu", "cuda", "xpu"), None, _math_unsupported, _math_attention),
    )
}


for _kernel in KERNELS.values():
    if _kernel.requires_module is not None:
        _module_installed(_kernel.requires_module, _kernel.requires_entry)


def available_kernels(device_type: str) -> list[str]:
    """Names of the installed kernels for ``device_type``, best first."""
    return [k.name for k in KERNELS.values() if device_type in k.device_types and k.installed()]


def describe_call(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, window: int, q_offset: int
) -> AttentionCall:
    """Validate shapes and options and summarise them; raises ValueError on a malformed call."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attend expects 4-D (B, H, S, D) tensors, "
            f"got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
        )
    batch, q_heads, q_len, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} in batch or head_dim")
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
    if window < 0 or q_offset < 0:
        raise ValueError(f"window and q_offset must be >= 0, got window={window} q_offset={q_offset}")
    if (causal or window > 0) and q_offset + q_len > kv_len:
        raise ValueError(f"queries reach position {q_offset + q_len - 1} but only {kv_len} keys were given")
    return AttentionCall(
        q.device.type, q.dtype, batch, q_heads, kv_heads, q_len, kv_len, head_dim, causal, window, q_offset
    )


def select_kernel(call: AttentionCall, kernel: str | None = None) -> AttentionKernel:
    """The kernel that will serve ``call``: the forced one (checked) or the best available."""
    if kernel is not None:
        if kernel not in KERNELS:
            raise BackendError(f"unknown attention kernel {kernel!r}; choices: {', '.join(KERNELS)}")
        chosen = KERNELS[kernel]
        if call.device_type not in chosen.device_types:
            raise BackendError(
                f"attention kernel {kernel!r} does not run on {call.device_type} "
                f"(available there: {', '.join(available_kernels(call.device_type))})"
            )
        if not chosen.installed():
            raise BackendError(
                f"attention kernel {kernel!r} needs the {chosen.requires_module!r} module, "
                "which is not installed"
            )
        reason = chosen.unsupported(call)
        if reason is not None:
            raise BackendError(f"attention kernel {kernel!r} cannot serve this call: {reason}")
        return chosen
    for name in available_kernels(call.device_type):
        if KERNELS[name].unsupported(call) is None:
            return KERNELS[name]
    return KERNELS["math"]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    window: int = 0,
    q_offset: int = 0,
    kernel: str | None = None,
) -> Tensor:
    """Scaled dot-product attention; q (B, Hq, Sq, D), k/v (B, Hkv, Sk, D) -> (B, Hq, Sq, D) in q's dtype.

    ``kernel`` forces a registered kernel by name (BackendError if it cannot serve the
    call); None picks the best available kernel for the tensors' device.
    """
    call = describe_call(q, k, v, causal=causal, window=window, q_offset=q_offset)
    return select_kernel(call, kernel).compute(q, k, v, call)
