"""The speed levers of docs/performance.md, each against its reference on CPU.

* fused head + cross-entropy (``alphaexa.model.loss``) equals ``F.cross_entropy`` on the full
  logits, value and gradients, in fp64/fp32 (and close under bf16 autocast);
* one rank alone trains a plain module (no FSDP2 wrapper), with or without the fused loss, the
  same steps as the single-process reference, as the FSDP2-wrapped size-1 mesh does;
* the whole model traces into one graph, no graph break (what ``compile_scope=auto`` compiles);
* ``train.compile=auto`` resolves per device, and ``checkpoint.enabled=false`` writes no checkpoint.
"""
from __future__ import annotations

import datetime
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from train_runs import train

from alphaexa.model import build_model
from alphaexa.model.loss import IGNORE_INDEX, fused_linear_cross_entropy
from topology.presets import get_preset


def _reference_and_fused(dtype: torch.dtype, autocast: bool, chunk: int):
    torch.manual_seed(0)
    hidden = torch.randn(3, 37, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 16, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 50, (3, 37))
    targets[0, :5] = IGNORE_INDEX
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = hidden @ weight.t()
        reference = F.cross_entropy(logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32)),
                                    targets.flatten(), reduction="sum", ignore_index=IGNORE_INDEX)
        fused = fused_linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk)
    expected = torch.autograd.grad(reference * 0.7, (hidden, weight))
    got = torch.autograd.grad(fused * 0.7, (hidden, weight))
    return reference, fused, expected, got


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("chunk", [16, 111, 4096])  # 111 = all tokens in one chunk; 16 does not divide 111
def test_fused_loss_equals_cross_entropy_on_the_full_logits(dtype, rtol, chunk):
    reference, fused, expected, got = _reference_and_fused(dtype, autocast=False, chunk=chunk)
    assert fused.dtype == reference.dtype
    torch.testing.assert_close(fused, reference, rtol=rtol, atol=0)
    for e, g in zip(expected, got):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * float(e.abs().max()))


def test_fused_loss_under_bf16_autocast_matches_within_bf16_rounding():
    reference, fused, expected, got = _reference_and_fused(torch.float32, autocast=True, chunk=16)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=0)  # same bf16 logits, fp32 loss
    for e, g in zip(expected, got):
        assert g.dtype == torch.float32
        assert float((g - e).abs().max()) < 2**-7 * float(e.abs().max())


def test_model_with_targets_returns_the_loss_of_its_logits_with_the_same_gradients():
    cfg = get_preset("debug")
    model = build_model(cfg, dtype=torch.float64, seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    reference = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="sum")
    expected = torch.autograd.grad(reference, list(model.parameters()))
    fused = model(inputs, targets=targets)
    got = torch.autograd.grad(fused, list(model.parameters()))
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=0)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("params, autocast", [(torch.bfloat16, False), (torch.float32, True)])
def test_whole_model_traces_into_one_graph_without_breaks(params, autocast):
    """bf16 weights (FSDP's mixed precision) or fp32 masters under bf16 autocast (one plain rank):
    grouped GEMM experts (whose compiled shape function takes bf16 only), no host sync anywhere."""
    cfg = get_preset("debug")  # dense and (dropless) MoE blocks
    model = build_model(cfg, seed=0, dtype=params)
    tokens = torch.randint(0, cfg.vocab_size, (2, 33))
    for kwargs in ({}, {"targets": tokens[:, 1:]}):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            explained = torch._dynamo.explain(model)(tokens[:, :-1], **kwargs)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


def test_compiled_model_under_the_autocast_wrapper_equals_eager():
    """What parallelize does on one plain rank: the autocast forward wrapper, then ``compile`` of the
    whole model (AOT autograd traced through the fused loss's autograd.Function; the eager backend
    stands in for inductor, which needs a GPU or a C++ toolchain)."""
    from alphaexa.parallel.data_parallel import apply_autocast

    cfg = get_preset("debug")
    tokens = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    results = []
    for compiled in (False, True):
        model = build_model(cfg, seed=0)
        apply_autocast(model, torch.bfloat16, "cpu")
        if compiled:
            model.compile(backend="aot_eager")
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (eager_loss, eager_grads), (loss, grads) = results
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
    for e, g in zip(eager_grads, grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    yield
    dist.destroy_process_group()


def _one_rank_history(fsdp_on_one_rank: bool, fused_loss: bool, steps: int = 3) -> tuple[list, list]:
    from alphaexa.model import Transformer
    from alphaexa.parallel import build_mesh, clip_grad_norm_, make_train_step, materialise, parallelize
    from alphaexa.parallel.equivalence import token_batches
    from backends.device import get_backend
    from topology.layout import Layout, resolve_layout

    cfg = get_preset("debug")
    layout = resolve_layout(Layout(mbs=2).resolve(1), 1, cfg, 4, 16)
    with torch.device("meta"):
        model = Transformer(cfg).to(torch.float64)
    pmodel = parallelize(model, build_mesh(layout, get_backend(), torch.device("cpu")),
                         compute_dtype=torch.float64, fsdp_on_one_rank=fsdp_on_one_rank)
    materialise(pmodel, seed=0)
    step = make_train_step(pmodel, 2, fused_loss=fused_loss)
    optimizer = torch.optim.AdamW(pmodel.chunks[0].parameters(), lr=1e-2)
    inputs, targets = token_batches(steps, 4, 16, cfg.vocab_size)
    history = []
    for s in range(steps):
        loss = step(inputs[s], targets[s]).loss
        history.append((loss, float(clip_grad_norm_(pmodel.parameters(), 0.5, pmodel.dims))))
        optimizer.step()
        optimizer.zero_grad()
    return history, [p for p in pmodel.parameters()]


def test_one_rank_plain_module_and_fsdp_wrapper_train_the_reference_steps(one_rank_group):
    from alphaexa.parallel.equivalence import reference_history, token_batches

    cfg = get_preset("debug")
    model = build_model(cfg, dtype=torch.float64, seed=0)
    inputs, targets = token_batches(3, 4, 16, cfg.vocab_size)
    reference = reference_history(model, torch.optim.AdamW(model.parameters(), lr=1e-2), inputs, targets, 2, 0.5)
    for fsdp, fused in ((False, True), (False, False), (True, True)):
        history, params = _one_rank_history(fsdp, fused)
        assert {isinstance(p, DTensor) for p in params} == {fsdp}
        for (loss, norm), (ref_loss, ref_norm) in zip(history, reference):
            assert math.isclose(loss, ref_loss, rel_tol=1e-10), (fsdp, fused, history, reference)
            assert math.isclose(norm, ref_norm, rel_tol=1e-9), (fsdp, fused, history, reference)


def test_compile_auto_is_on_for_cuda_without_tp_or_selective_recompute_and_bad_values_are_one_line_errors():
    from alphaexa.train.config import load_run_config
    from topology.layout import Layout
    from topology.modelcfg import ConfigError

    auto, one = load_run_config(None, ["model.preset=debug"]).train, Layout().resolve(1)
    assert auto.compile == "auto" and auto.compile_on("cuda", one) and not auto.compile_on("cpu", one)
    # compile with tp: wrong gradients on CPU, unverified on GPUs; selective recompute fails under compile
    assert not auto.compile_on("cuda", Layout(tp=2).resolve(2))
    assert not auto.compile_on("cuda", Layout(recompute="selective").resolve(1))
    assert auto.compile_on("cuda", Layout(recompute="full").resolve(1))
    assert load_run_config(None, ["model.preset=debug", "train.compile=true"]).train.compile_on("cpu", one)
    assert not load_run_config(None, ["model.preset=debug", "train.compile=false"]).train.compile_on("cuda", one)
    with pytest.raises(ConfigError, match=r"train.compile='sometimes': must be auto, true or false"):
        load_run_config(None, ["model.preset=debug", "train.compile=sometimes"])
    with pytest.raises(ConfigError, match="train.compile_scope"):
        load_run_config(None, ["model.preset=debug", "train.compile_scope=layer"])


def test_disabled_checkpoints_and_evaluation_leave_neither(tmp_path):
    from alphaexa.train.metrics import read_metrics

    run = tmp_path / "run"
    train(run, "train.steps=2", "train.warmup=1", "train.eval_every=0", "train.eval_batches=0",
          "checkpoint.enabled=false", cache_dir=tmp_path / "cache")
    records, evaluations, _ = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2] and evaluations == []
    assert not list(run.rglob("step_*"))


def test_forced_sdpa_backends_run_only_when_named():
    from backends.attention import AttentionCall, available_kernels, select_kernel
    from backends.errors import BackendError

    cuda_call = AttentionCall("cuda", torch.bfloat16, 8, 32, 4, 2048, 2048, 64, True, 0, 0)
    assert available_kernels("cuda").index("sdpa") < available_kernels("cuda").index("sdpa_cudnn")
    assert select_kernel(cuda_call).name in ("flash_attn3", "flash_attn", "sdpa")
    assert select_kernel(cuda_call, "sdpa_cudnn").name == "sdpa_cudnn"
    windowed = AttentionCall("cuda", torch.bfloat16, 8, 32, 4, 2048, 2048, 64, True, 256, 0)
    with pytest.raises(BackendError, match="sdpa_flash.*no window"):
        select_kernel(windowed, "sdpa_flash")
    cpu_call = AttentionCall("cpu", torch.float32, 1, 2, 2, 4, 4, 8, True, 0, 0)
    with pytest.raises(BackendError, match="'sdpa_cudnn' does not run on cpu"):
        select_kernel(cpu_call, "sdpa_cudnn")


def _fuse_projections(model: torch.nn.Module) -> int:
    from alphaexa.model.attention import Attention
    from alphaexa.model.layers import FeedForward

    fused = [m for m in model.modules() if isinstance(m, (Attention, FeedForward))]
    for module in fused:
        module.fused_projections = True
    return len(fused)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fused_projections_give_the_separate_projections_loss_and_gradients(dtype, rtol):
    """One GEMM over the concatenated q/k/v (and SwiGLU up/gate) weights: same loss, same gradient for
    every separate parameter (the MoE block's shared expert is a FeedForward too)."""
    cfg = get_preset("debug").replace(n_shared_experts=1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    results = []
    for fused in (False, True):
        model = build_model(cfg, seed=0, dtype=dtype)
        if fused:
            assert _fuse_projections(model) == 2 * cfg.n_layers  # attention + dense FFN or shared expert
        loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (loss, grads), (fused_loss, fused_grads) = results
    torch.testing.assert_close(fused_loss, loss, rtol=rtol, atol=0)
    for g, f in zip(grads, fused_grads):
        torch.testing.assert_close(f, g, rtol=rtol, atol=rtol * float(g.abs().max()))


def test_fused_projections_trace_into_one_graph_and_are_refused_with_tensor_parallelism():
    from alphaexa.train.config import load_run_config
    from topology.modelcfg import ConfigError

    cfg = get_preset("debug")
    model = build_model(cfg, seed=0)
    _fuse_projections(model)
    tokens = torch.randint(0, cfg.vocab_size, (2, 33))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(tokens[:, :-1], targets=tokens[:, 1:])
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    assert load_run_config(None, ["model.preset=debug", "train.fused_projections=true"]).train.fused_projections
    with pytest.raises(ConfigError, match=r"train.fused_projections=true with parallel.tp=2"):
        load_run_config(None, ["model.preset=debug", "train.fused_projections=true", "parallel.tp=2"])


def test_compile_mode_reaches_torch_compile_and_bad_values_are_one_line_errors(one_rank_group):
    """parallelize hands the mode to torch.compile (which rejects an unknown mode when called, before
    any compilation: so a bad mode proves the hand-over without compiling); the config refuses it first."""
    from alphaexa.model import Transformer
    from alphaexa.parallel import build_mesh, parallelize
    from alphaexa.train.config import load_run_config
    from backends.device import get_backend
    from topology.layout import Layout
    from topology.modelcfg import ConfigError

    assert load_run_config(None, ["model.preset=debug"]).train.compile_mode == "default"
    assert load_run_config(None, ["model.preset=debug", "train.compile_mode=reduce-overhead"]).train.compile_mode \
        == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"train.compile_mode='fastest': must be one of default, "):
        load_run_config(None, ["model.preset=debug", "train.compile_mode=fastest"])
    for recompute in ("none", "full"):  # the whole model, and each block
        with torch.device("meta"):
            model = Transformer(get_preset("debug"))
        dims = build_mesh(Layout(recompute=recompute).resolve(1), get_backend(), torch.device("cpu"))
        with pytest.raises(RuntimeError, match="fastest"):
            parallelize(model, dims, compile=True, compile_mode="fastest")


def test_float8_is_refused_where_it_cannot_run_with_one_line_errors():
    """float8 training runs only on a CUDA GPU with float8 tensor cores (checked on the GPU by the
    bench's float8 ablation, its loss against bf16); here: the config and device refusals."""
    from alphaexa.errors import UserError
    from alphaexa.parallel.float8 import check_float8
    from alphaexa.train.config import load_run_config
    from topology.modelcfg import ConfigError

    base = ["model.preset=debug", "train.dtype=bf16", "train.float8=true"]
    assert load_run_config(None, base).train.float8
    assert not load_run_config(None, ["model.preset=debug"]).train.float8
    with pytest.raises(ConfigError, match=r"train.float8=true with parallel.tp > 1: not supported"):
        load_run_config(None, [*base, "parallel.tp=2"])
    with pytest.raises(ConfigError, match=r"train.float8=true with train.fused_projections=true"):
        load_run_config(None, [*base, "train.fused_projections=true"])
    with pytest.raises(ConfigError, match=r"train.float8=true needs train.dtype=bf16"):
        load_run_config(None, [*base, "train.dtype=fp32"])
    with pytest.raises(UserError, match=r"needs a CUDA GPU with float8 tensor cores .* this run is on cpu"):
        check_float8(torch.device("cpu"))


def test_float8_swaps_the_block_linears_but_not_the_head_or_router_and_keeps_parameter_names():
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    from alphaexa.parallel.float8 import apply_float8

    cfg = get_preset("debug").replace(d_model=64, vocab_size=256)
    model = build_model(cfg, seed=0)
    names = [n for n, _ in model.named_parameters()]
    swapped = apply_float8(model)
    float8 = {n for n, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert swapped == len(float8) > 0
    assert not any(n.endswith(("head", "gate")) for n in float8)
    assert any(n.endswith("wq") for n in float8) and any(n.endswith("w2") for n in float8)
    assert [n for n, _ in model.named_parameters()] == names


def test_float8_loss_and_gradients_stay_near_bf16():
    """Where torchao is installed (torch's _scaled_mm has a CPU kernel too): one forward + backward of
    the debug model under bf16 autocast, float8 against bf16."""
    pytest.importorskip("torchao.float8")
    from alphaexa.parallel.float8 import apply_float8

    cfg = get_preset("debug")
    tokens = torch.randint(0, cfg.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    results = []
    for float8 in (False, True):
        model = build_model(cfg, seed=0)
        if float8:
            apply_float8(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        results.append((float(loss), torch.autograd.grad(loss, list(model.parameters()))))
    (loss, grads), (float8_loss, float8_grads) = results
    assert math.isclose(float8_loss, loss, rel_tol=1e-3)
    for g, f in zip(grads, float8_grads):  # gradients pass through e5m2 (2 mantissa bits): ~10% per element
        assert float((f - g).norm()) <= 0.25 * float(g.norm()) + 1e-6
        assert float(F.cosine_similarity(f.flatten(), g.flatten(), dim=0)) > 0.97


@pytest.mark.parametrize("max_norm", [0.05, 1e9])  # clipping on (the norm is ~1.3), and a bound never reached
def test_clip_folded_into_the_fused_step_updates_like_clipping_first(max_norm):
    """train.clip_in_optimizer: the fused AdamW kernel divides each gradient by ``clip_divisor(norm)`` as it
    loads it, which must update weights and moments as ``clip_grads_with_norm_`` followed by the plain fused
    step does (up to the last bit of the quotient), and leave the clipped gradients behind as clipping does."""
    from alphaexa.parallel import clip_divisor

    torch.manual_seed(0)
    shapes = [(33, 17), (17,), (5, 3, 7)]
    weights = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) * 0.5 for s in shapes] for _ in range(3)]  # three steps' gradients

    def run(clip: str):  # "fold": grad_scale; "first": clip_grads_with_norm_ then the step; "none": no clip
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=True)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if clip == "fold":
                opt.grad_scale = clip_divisor(norm, max_norm)
                opt.step()
                del opt.grad_scale
            else:
                if clip == "first":
                    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
                opt.step()
        state = [opt.state[p][k] for p in params for k in ("exp_avg", "exp_avg_sq")]
        return [p.detach() for p in params], state, [p.grad for p in params], float(norm)

    folded, folded_state, folded_grads, norm = run("fold")
    clipped, clipped_state, clipped_grads, _ = run("first")
    for a, b in zip(folded + folded_state + folded_grads, clipped + clipped_state + clipped_grads):
        torch.testing.assert_close(a, b, rtol=4e-7, atol=1e-9)
    if max_norm < norm:  # the clip changed the step: an unclipped fused run ends elsewhere
        unclipped = run("none")[0]
        assert not torch.allclose(unclipped[0], folded[0], rtol=1e-3, atol=0)
        assert float(torch.nn.utils.get_total_norm(folded_grads)) == pytest.approx(max_norm, rel=1e-5)


# Imported first by every Python process of a run (through PYTHONPATH): AdamW.step writes one line a call, the
# divisor it reads from ``grad_scale`` (the folded clip) or "none".  Losses alone cannot tell the fold from the
# separate clip: on this run both are the same to the bit.
_GRAD_SCALE_PROBE = """
import os

import torch

_step = torch.optim.AdamW.step


def step(self, *args, **kwargs):
    scale = getattr(self, "grad_scale", None)
    with open(os.environ["ALPHAEXA_TEST_GRAD_SCALE_LOG"], "a") as log:
        log.write(("none" if scale is None else repr(float(scale))) + "\\n")
    return _step(self, *args, **kwargs)


torch.optim.AdamW.step = step
"""


def test_trainer_folds_the_clip_into_the_fused_step_and_trains_as_clipping_first(tmp_path, monkeypatch):
    """The trainer's fused step with the clip folded in (the default with fused AdamW) logs the same losses
    and pre-clip norms as the separate clip (train.clip_in_optimizer=false), within float32 rounding; the
    small clip bound makes every step clip.  The folded run hands every AdamW step the divisor norm / 0.05
    as ``grad_scale``, the separate one none."""
    import os

    from train_runs import steps

    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(_GRAD_SCALE_PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "probe"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    common = ("train.optimizer_impl=fused", "train.clip=0.05", "train.steps=4", "train.eval_batches=0",
              "checkpoint.enabled=false")
    folded, separate = tmp_path / "folded", tmp_path / "separate"
    scales = {}
    for run, sets in ((folded, ()), (separate, ("train.clip_in_optimizer=false",))):
        monkeypatch.setenv("ALPHAEXA_TEST_GRAD_SCALE_LOG", str(tmp_path / f"{run.name}.log"))
        train(run, *common, *sets, cache_dir=tmp_path / "cache", fresh=True)  # the probe is a sitecustomize
        scales[run.name] = (tmp_path / f"{run.name}.log").read_text().split()
    a, b = steps(folded), steps(separate)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert scales["separate"] == ["none"] * 4 and len(scales["folded"]) == 4 and "none" not in scales["folded"]
    assert [float(x) for x in scales["folded"]] == pytest.approx([a[s]["grad_norm"] / 0.05 for s in sorted(a)], rel=1e-5)
    assert all(a[s]["grad_norm"] > 0.05 for s in a)  # every step clipped
    for s in a:
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], rel=1e-5), s
        assert a[s]["grad_norm"] == pytest.approx(b[s]["grad_norm"], rel=1e-4), s


def test_no_clip_bound_leaves_every_gradient_as_it_is_even_beside_an_infinite_one(one_rank_group):
    """train.clip=0 clips with an infinite bound: the norm is still returned (the log shows it), but no gradient is
    scaled. Scaling by torch's clamped coefficient would multiply every gradient by inf / inf = NaN as soon as one
    gradient holds an inf, so the finite ones would be lost too."""
    from alphaexa.model import Transformer
    from alphaexa.parallel import build_mesh, clip_grad_norm_
    from backends.device import get_backend
    from topology.layout import Layout

    torch.manual_seed(0)
    model = Transformer(get_preset("debug"))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    params[0].grad[0, 0] = float("inf")
    before = [p.grad.clone() for p in params]
    dims = build_mesh(Layout().resolve(1), get_backend(), torch.device("cpu"))
    assert clip_grad_norm_(params, float("inf"), dims) == float("inf")
    for p, b in zip(params, before):
        assert torch.equal(p.grad, b)
