"""Every attention kernel against the math reference, and the reference against a naive loop."""

import dataclasses
import math
import warnings

import pytest
import torch

from backends.attention import KERNELS, attend, available_kernels, describe_call, select_kernel
from backends.errors import BackendError


def _devices():
    devices = [pytest.param("cpu", id="cpu")]
    for device_type in ("cuda", "xpu"):
        module = getattr(torch, device_type, None)
        if module is not None and module.is_available():
            devices.append(pytest.param(device_type, id=device_type, marks=pytest.mark.gpu))
    return devices


DEVICES = _devices()

# (name, batch, q_heads, kv_heads, q_len, kv_len, head_dim, causal, window, q_offset)
CASES = [
    ("causal", 2, 4, 4, 16, 16, 16, True, 0, 0),
    ("noncausal", 2, 4, 4, 16, 16, 16, False, 0, 0),
    ("noncausal_cross", 1, 2, 2, 5, 11, 16, False, 0, 0),
    ("gqa2", 2, 4, 2, 16, 16, 16, True, 0, 0),
    ("mqa", 1, 4, 1, 16, 16, 16, True, 0, 0),
    ("window", 2, 4, 2, 16, 16, 16, True, 5, 0),
    ("window_noncausal", 1, 2, 2, 16, 16, 16, False, 4, 0),
    ("decode_one", 2, 4, 2, 1, 12, 16, True, 0, 11),
    ("decode_chunk", 2, 4, 2, 4, 12, 16, True, 0, 8),
    ("decode_window", 1, 4, 2, 4, 12, 16, True, 3, 8),
]

# Against a float64 reference; accelerator kernels accumulate in a different order than
# the CPU's, hence the looser float32 bound there.  A wrong mask or head mapping shows
# up as errors of order 0.1-1.
TOLERANCE = {
    ("cpu", torch.float32): 2e-5,
    ("accelerator", torch.float32): 1e-4,
    ("cpu", torch.bfloat16): 3e-2,
    ("accelerator", torch.bfloat16): 3e-2,
    ("accelerator", torch.float16): 1e-2,
}


def _dtypes(device_type):
    return (
        [torch.float32, torch.bfloat16]
        if device_type == "cpu"
        else [torch.float32, torch.bfloat16, torch.float16]
    )


def _inputs(case, device, dtype, seed=0):
    _, b, hq, hkv, sq, sk, d, *_ = case
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, hq, sq, d), (b, hkv, sk, d), (b, hkv, sk, d), (b, hq, sq, d)]
    q, k, v, grad_out = (torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes)
    return q, k, v, grad_out


def _forward_backward(q, k, v, grad_out, kernel, case):
    *_, causal, window, q_offset = case
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attend(q, k, v, causal=causal, window=window, q_offset=q_offset, kernel=kernel)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("device_type", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_kernel_matches_math_reference(device_type, case):
    *_, causal, window, q_offset = case
    for kernel in available_kernels(device_type):
        if kernel == "math":
            continue
        for dtype in _dtypes(device_type):
            q, k, v, grad_out = _inputs(case, device_type, dtype)
            call = describe_call(q, k, v, causal=causal, window=window, q_offset=q_offset)
            if KERNELS[kernel].unsupported(call) is not None:
                with pytest.raises(BackendError, match=kernel):
                    attend(q, k, v, causal=causal, window=window, q_offset=q_offset, kernel=kernel)
                continue
            got = _forward_backward(q, k, v, grad_out, kernel, case)
            # The reference runs in float64 on the same (already rounded) inputs.
            want = _forward_backward(q.double(), k.double(), v.double(), grad_out.double(), "math", case)
            assert got[0].dtype == dtype
            tol = TOLERANCE["cpu" if device_type == "cpu" else "accelerator", dtype]
            for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
                torch.testing.assert_close(
                    g.double(),
                    w,
                    atol=tol,
                    rtol=tol,
                    msg=lambda m, label=f"{kernel} {dtype} {name}": f"{label}: {m}",
                )


def _naive_attention(q, k, v, causal, window, q_offset):
    """Per-element loops over Python floats: an independent check of the math kernel."""
    b_n, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(b_n):
        for h in range(hq):
            kv_h = h // (hq // hkv)
            for i in range(sq):
                p = q_offset + i
                visible = [
                    j
                    for j in range(sk)
                    if (not causal or j <= p)
                    and (window <= 0 or (j > p - window and (causal or j < p + window)))
                ]
                scores = [
                    sum(float(q[b, h, i, c]) * float(k[b, kv_h, j, c]) for c in range(d)) / math.sqrt(d)
                    for j in visible
                ]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for c in range(d):
                    out[b, h, i, c] = (
                        sum(w * float(v[b, kv_h, j, c]) for w, j in zip(weights, visible)) / total
                    )
    return out


@pytest.mark.parametrize(
    "causal,window,q_offset,q_len",
    [
        (True, 0, 0, 5),
        (False, 0, 0, 5),
        (True, 2, 0, 5),
        (False, 2, 0, 5),
        (True, 0, 2, 3),
        (True, 2, 3, 2),
    ],
)
def test_math_kernel_matches_naive_loops(causal, window, q_offset, q_len):
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, q_len, 3, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 5, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 5, 3, generator=gen, dtype=torch.float64)
    got = attend(q, k, v, causal=causal, window=window, q_offset=q_offset, kernel="math")
    torch.testing.assert_close(
        got, _naive_attention(q, k, v, causal, window, q_offset), atol=1e-12, rtol=1e-12
    )


def test_cpu_kernel_priority_and_default_choice():
    assert available_kernels("cpu") == ["sdpa", "math"]
    q = torch.randn(1, 2, 4, 8)
    assert select_kernel(describe_call(q, q, q, causal=True, window=0, q_offset=0)).name == "sdpa"


# The three ways a `flash_attn` package can sit on sys.path.  flash-attn-4 ships its kernels as
# `flash_attn.cute` inside a `flash_attn` namespace package (no __init__.py, no flash_attn_func at the
# top): an H100 run with it installed picked FlashAttention-2 and failed in its first forward.
FLASH_ATTN_LAYOUTS = {
    "flash-attn-4 (namespace package)": ({"flash_attn/cute/__init__.py": "def flash_attn_func(q, k, v):\n    return q\n"},
                                         False),
    "flash-attn-2": ({"flash_attn/__init__.py": "def flash_attn_func(q, k, v, **kw):\n    return q\n"}, True),
    "a build that does not load": ({"flash_attn/__init__.py": "raise ImportError('undefined symbol: _ZN3c10')\n"},
                                   False),
    # a wheel built for another torch fails on a missing torch attribute, not an ImportError: it must not stop
    # `import backends.attention` (every run, sdpa included, imports it; the modules are imported there)
    "a build for another torch": ({"flash_attn/__init__.py": "raise AttributeError('torch.library has no wrap_triton')\n"},
                                  False),
}
BROKEN_BUILD_WARNINGS = {
    "a build that does not load": "undefined symbol: _ZN3c10",
    "a build for another torch": "torch.library has no wrap_triton",
}


@pytest.mark.parametrize("layout", FLASH_ATTN_LAYOUTS)
def test_flash_attn_kernel_is_installed_only_where_its_function_imports(tmp_path, monkeypatch, layout):
    import sys

    from backends import attention

    files, serves = FLASH_ATTN_LAYOUTS[layout]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.delitem(attention._INSTALLED, "flash_attn:flash_attn_func", raising=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert KERNELS["flash_attn"].installed() is serves
        assert ("flash_attn" in available_kernels("cuda")) is serves
    finally:  # the layout's module must not outlive the test (monkeypatch then restores a real one, if any)
        for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
            del sys.modules[name]
    assert [str(w.message) for w in caught if "does not import" in str(w.message)] == (
        [(f"attention: 'flash_attn' is installed but does not import ({BROKEN_BUILD_WARNINGS[layout]}); its kernel "
          "is not used")] if layout in BROKEN_BUILD_WARNINGS else [])


def test_forcing_a_kernel_that_cannot_serve_the_call_is_a_clear_error():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(BackendError, match=r"unknown attention kernel 'nope'; choices: .*sdpa.*math"):
        attend(q, q, q, kernel="nope")
    with pytest.raises(BackendError, match="'flash_attn' does not run on cpu"):
        attend(q, q, q, kernel="flash_attn")


def test_malformed_calls_are_rejected():
    q = torch.randn(1, 3, 4, 8)
    kv = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attend(q, kv, kv)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="only 4 keys"):
        attend(q, kv, kv, q_offset=1)


@pytest.mark.parametrize("case", [c for c in CASES if c[8] > 0], ids=[c[0] for c in CASES if c[8] > 0])
def test_flex_mask_rule_equals_the_visibility_mask(case):
    """FlexAttention's mask_mod, evaluated on every (query, key) pair, is the registry's mask."""
    from backends.attention import _visibility_mod, visibility_mask

    _, b, hq, hkv, sq, sk, d, causal, window, q_offset = case
    q, kv = torch.zeros(b, hq, sq, d), torch.zeros(b, hkv, sk, d)
    call = describe_call(q, kv, kv, causal=causal, window=window, q_offset=q_offset)
    q_idx, kv_idx = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
    got = _visibility_mod(call)(0, 0, q_idx, kv_idx)
    want = visibility_mask(sq, sk, causal=causal, window=window, q_offset=q_offset)
    assert torch.equal(got.expand(sq, sk), want)


def test_flex_kernel_forward_matches_math_on_cpu():
    """The compiled FlexAttention path (forward: its backward runs on accelerators only) on a window
    that is not a multiple of its 128-token blocks, with GQA, against the float64 reference."""
    from backends.attention import flex_attention_call

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 300, 16, generator=gen)
    k, v = torch.randn(2, 1, 2, 300, 16, generator=gen)
    call = describe_call(q, k, v, causal=True, window=37, q_offset=0)
    got = flex_attention_call(q, k, v, call)
    want = attend(q.double(), k.double(), v.double(), causal=True, window=37, kernel="math")
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


def test_flex_is_picked_for_windows_on_accelerators_only():
    flex = KERNELS["flex"]
    q = torch.zeros(1, 2, 8, 16, dtype=torch.bfloat16)
    windowed = describe_call(q, q, q, causal=True, window=4, q_offset=0)
    assert "accelerator" in flex.unsupported(windowed)
    assert "flex" not in available_kernels("cpu")
    on_gpu = dataclasses.replace(windowed, device_type="cuda")
    assert flex.unsupported(on_gpu) is None
    assert "windowed attention only" in flex.unsupported(dataclasses.replace(on_gpu, window=0))


def test_kernel_choice_under_compile_is_a_constant_without_importlib(monkeypatch):
    """Inside a compiled model the registry's installed-module check must not reach importlib:
    on the H200 (torch 2.11) tracing through it broke the model's graph at every attention call."""
    import dataclasses
    import importlib.util

    from backends.attention import describe_call, select_kernel

    def choose(q):
        call = dataclasses.replace(describe_call(q, q, q, causal=True, window=0, q_offset=0), device_type="cuda")
        return q * len(select_kernel(call).name)

    real_find_spec = importlib.util.find_spec
    kernel_modules = {k.requires_module for k in KERNELS.values() if k.requires_module}

    def find_spec(name, *args, **kwargs):
        if name in kernel_modules:
            raise AssertionError(f"importlib.util.find_spec({name!r}) reached while tracing")
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    torch._dynamo.reset()
    q = torch.ones(1, 2, 4, 8)
    assert torch.equal(torch.compile(choose, backend="eager", fullgraph=True)(q), q * len("sdpa"))
