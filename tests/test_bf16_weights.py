"""bf16 compute weights with fp32 masters (``train.bf16_weights``, alphaexa.train.master_weights) on CPU.

* the bf16 copies give the autocast loss and gradients bit for bit (dense and MoE), and the module's state dict
  shows the fp32 masters (checkpoints as without the option);
* ``MasterWeightAdamW`` updates the masters as torch's AdamW updates fp32 weights, with the folded clip
  (``grad_scale``) and the device-side skip (``found_inf``), and keeps its moments fp32 through a state dict; its
  compiled update takes a fixed number of graphs whatever the parameters' shapes, and a graph refused at torch's
  recompile limit falls back to the eager update;
* the trainer: the same losses as the fp32-weight run (the first two steps bit for bit), an exact resume, and a
  checkpoint any run can load; one-line errors where the option cannot run.
"""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
from train_runs import copy_checkpoint_run, losses, steps, train

from alphaexa.model import build_model
from alphaexa.train.master_weights import MasterWeightAdamW, compute_weight_modules, to_compute_weights
from alphaexa.train.metrics import read_metrics
from alphaexa.train.optim import parameter_groups
from topology.presets import get_preset


def _loss_and_grads(model, inputs, targets):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(inputs, targets=targets)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("preset", ["debug", "tiny-moe"])
def test_bf16_copies_give_the_autocast_loss_and_gradients_bit_for_bit(preset):
    cfg = get_preset(preset)
    reference = build_model(cfg, seed=3)
    model = copy.deepcopy(reference)
    masters = to_compute_weights(model)
    converted = {name for name, p in model.named_parameters() if p in masters}
    # every block matrix (attention, FFN or experts, router) and nothing else: embedding, norms and head stay fp32
    assert converted == {name for name, p in model.named_parameters() if name.startswith("layers.") and p.ndim > 1}
    assert all(p.dtype == torch.bfloat16 for p in masters) and all(m.dtype == torch.float32 for m in masters.values())
    assert {n for n, p in model.named_parameters() if p.dtype == torch.float32} >= {"tok_embeddings.weight",
                                                                                   "output.weight", "norm.weight"}
    if preset == "tiny-moe":
        assert any(n.endswith("experts.w1") for n in converted) and any(n.endswith("gate.weight") for n in converted)
    torch.manual_seed(0)
    inputs = torch.randint(0, cfg.vocab_size, (2, 24))
    targets = torch.randint(0, cfg.vocab_size, (2, 24))
    expected_loss, expected = _loss_and_grads(reference, inputs, targets)
    loss, got = _loss_and_grads(model, inputs, targets)
    assert torch.equal(loss, expected_loss)
    for name, grad in got.items():
        assert grad.dtype == (torch.bfloat16 if name in converted else torch.float32), name
        assert torch.equal(grad.float(), expected[name]), name
    # the state dict holds the fp32 masters: the very values the reference holds
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_loading_a_state_dict_writes_the_masters_and_their_rounded_copies():
    cfg = get_preset("debug")
    model = build_model(cfg, seed=0)
    masters = to_compute_weights(model)
    other = build_model(cfg, seed=1).state_dict()
    model.load_state_dict(other)
    for name, p in model.named_parameters():
        if p in masters:
            assert torch.equal(masters[p], other[name]), name
            assert torch.equal(p.detach(), other[name].to(torch.bfloat16)), name
        else:
            assert torch.equal(p.detach(), other[name]), name
    assert not compute_weight_modules(torch.nn.Linear(2, 2))  # only blocks' layers are converted


def test_master_weight_adamw_updates_like_torch_adamw_with_the_clip_and_the_skip():
    cfg = get_preset("tiny-moe")
    reference = build_model(cfg, seed=0)
    model = copy.deepcopy(reference)
    masters = to_compute_weights(model)
    theirs = torch.optim.AdamW(parameter_groups([reference], 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    ours = MasterWeightAdamW(parameter_groups([model], 0.1), masters, theirs.defaults, compiled=False)
    pairs = list(zip(model.parameters(), reference.parameters()))
    generator = torch.Generator().manual_seed(0)
    for step, (scale, skip) in enumerate([(None, False), (2.5, False), (1.0, True), (None, False)]):
        for p, r in pairs:
            grad = torch.randn(p.shape, generator=generator).to(p.dtype)
            p.grad, r.grad = grad, grad.float() / (scale or 1.0)
        ours.grad_scale = None if scale is None else torch.tensor(scale)
        ours.found_inf = torch.tensor(float(skip))
        ours.step()
        if not skip:  # torch's foreach AdamW has no found_inf: the skipped step is simply not taken
            theirs.step()
        for p, r in pairs:
            master = masters.get(p, p)
            torch.testing.assert_close(master, r.detach(), rtol=2e-6, atol=1e-7, msg=f"step {step}")
            if p in masters:
                assert torch.equal(p.detach(), master.to(torch.bfloat16))
    del ours.grad_scale, ours.found_inf
    # AdamW's state-dict keys, fp32 moments, step count 3 (one skipped); loading keeps them fp32
    state = ours.state_dict()
    assert state["param_groups"] == theirs.state_dict()["param_groups"]  # AdamW's settings, key for key
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in state["state"].values())
    assert all(float(s["step"]) == 3 for s in state["state"].values())
    fresh = MasterWeightAdamW(parameter_groups([model], 0.1), masters, theirs.defaults, compiled=False)
    fresh.load_state_dict(copy.deepcopy(state))
    for p in model.parameters():
        assert fresh.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(fresh.state[p]["exp_avg_sq"], ours.state[p]["exp_avg_sq"])
    assert state["param_groups"][0]["lr"] == 1e-2 and fresh.param_groups[0]["lr"] == 1e-2
    # the groups' settings come from the state dict (an lr of 0.5 saved reaches the loaded optimizer)
    state["param_groups"][0]["lr"] = 0.5
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.param_groups[0]["lr"] == 0.5


def test_update_follows_adamw_in_double_precision_where_beta2_is_near_one():
    """The bias corrections are -expm1(step * log(beta)) from the betas in double.  ``1 - beta2 ** step`` in fp32
    cancels three digits at beta2 = 0.999: fp32's 0.999 alone is 1.3e-5 off in ``1 - beta2`` (the update was 3.5e-6
    of itself off AdamW in double at step 2, against < 3e-7 now), and an fp32 ``pow`` one ulp off (inductor's CUDA
    kernel) adds 3e-5, on which the CUDA test of the compiled update failed.  Each step's change of the master
    against AdamW's formula in float64, to within a few fp32 roundings of the update, after steps 1, 2, 3 and 1000."""
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4096, generator=generator))
    settings = torch.optim.AdamW([torch.zeros(1)], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0).defaults
    optimizer = MasterWeightAdamW([param], {}, settings, compiled=False)
    m, v = torch.zeros(4096, dtype=torch.float64), torch.zeros(4096, dtype=torch.float64)
    for step in (1, 2, 3, 1000):
        grad = torch.randn(4096, generator=generator)
        if step == 1000:  # the state of 999 steps: the moments AdamW would hold, and its step count
            optimizer.state[param]["step"].fill_(999)
            optimizer.state[param]["exp_avg"].copy_(m.float())
            optimizer.state[param]["exp_avg_sq"].copy_(v.float())
            m, v = m.float().double(), v.float().double()
        param.grad = grad
        before = param.detach().clone().double()
        optimizer.step()
        g = grad.double()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        update = 1e-2 / (1 - 0.9 ** step) * m / ((v / (1 - 0.999 ** step)).sqrt() + 1e-8)
        got = before - param.detach().double()
        relative = ((got - update).abs() - 4 * torch.finfo(torch.float32).eps * before.abs()) / update.abs()
        assert relative.max() < 2e-6, (step, relative.max().item())


def _started(run_dir):
    """The run's last start or resume event."""
    return [e for e in read_metrics(run_dir)[2] if e.get("event") in ("start", "resume")][-1]


_COMMON = ("train.dtype=bf16", "parallel.mbs=8", "train.steps=6", "train.eval_every=3", "checkpoint.every=3")


def test_trainer_with_bf16_weights_trains_like_fp32_weights_and_resumes_exactly(tmp_path):
    cache = tmp_path / "cache"
    base, bf16, resumed, loaded, from_base = (tmp_path / n for n in ("base", "bf16", "resumed", "loaded", "from_base"))
    train(base, *_COMMON, "train.bf16_weights=false", cache_dir=cache)
    train(bf16, *_COMMON, "train.bf16_weights=true", cache_dir=cache)
    # the option took (the losses below cannot tell: the first steps match bit for bit, the rest within 2e-5)
    assert _started(base)["bf16_weights"] is False and _started(bf16)["bf16_weights"] is True
    a, b = losses(base), losses(bf16)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert a[1] == b[1] and a[2] == b[2]  # the same forward and gradients; the updates differ in rounding only
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=2e-5), s
    assert steps(bf16)[1]["grad_norm"] == steps(base)[1]["grad_norm"]  # bf16 gradients' norm summed in fp32
    # stopped at the checkpoint and resumed: the uninterrupted run's losses, bit for bit
    train(resumed, *_COMMON, "train.bf16_weights=true", cache_dir=cache, stop_at=3)
    shutil.copytree(resumed, loaded)
    train(resumed, *_COMMON, "train.bf16_weights=true", cache_dir=cache, resume=True)
    assert losses(resumed) == b
    # its checkpoint is an ordinary one: a run without the option resumes from it (fp32 weights = the masters)
    train(loaded, *_COMMON, "train.bf16_weights=false", cache_dir=cache, resume=True)
    c = losses(loaded)
    assert sorted(c) == [1, 2, 3, 4, 5, 6]
    for s in (4, 5, 6):
        assert c[s] == pytest.approx(b[s], rel=2e-5), s
    # and the other way: a run with the option resumes from a run's checkpoint without it
    copy_checkpoint_run(base, from_base, 3)
    train(from_base, *_COMMON, "train.bf16_weights=true", cache_dir=cache, resume=True)
    assert _started(from_base)["bf16_weights"] is True
    d = losses(from_base)
    assert sorted(d) == [4, 5, 6] and d[4] == a[4]  # step 4's forward: the fp32 weights of step 3, bit for bit
    for s in (5, 6):
        assert d[s] == pytest.approx(a[s], rel=2e-5), s


def test_bf16_weights_are_refused_where_they_cannot_run_with_one_line_errors():
    from alphaexa.train.config import load_run_config
    from topology.layout import Layout
    from topology.modelcfg import ConfigError

    one = Layout().resolve(1)

    def resolved(*sets, device="cpu", n_micro=1, wrapped=False):
        train_cfg = load_run_config(None, ["model.preset=debug", "train.dtype=bf16", *sets]).train
        return train_cfg.bf16_weights_on(device, one, n_micro, wrapped=wrapped)

    assert not resolved() and resolved(device="cuda")  # auto by default: compiled CUDA runs only
    assert resolved("train.bf16_weights=true")
    assert not resolved("train.bf16_weights=auto")  # auto: compiled CUDA runs only
    assert resolved("train.bf16_weights=auto", device="cuda")
    assert not resolved("train.bf16_weights=auto", device="cuda", wrapped=True)
    assert not resolved("train.bf16_weights=auto", "train.compile=false", device="cuda")
    assert not resolved("train.bf16_weights=auto", device="cuda", n_micro=2)
    for sets, kwargs, message in [
        (("train.dtype=fp32",), {}, r"train.dtype=fp32 \(the copies are bf16"),
        ((), {"n_micro": 4}, r"4 micro-batches a step"),
        ((), {"wrapped": True}, r"FSDP2 wraps the model"),
        (("train.optimizer_impl=foreach",), {}, r"train.optimizer_impl=foreach"),
        (("train.clip_in_optimizer=false",), {}, r"train.clip_in_optimizer=false"),
        (("train.float8=true",), {}, r"train.float8=true"),
    ]:
        with pytest.raises(ConfigError, match=r"^train.bf16_weights=true cannot run here: " + message):
            resolved("train.bf16_weights=true", *sets, **kwargs)
    # DeepSpeed keeps its own master weights: true is refused when the config is read, not silently ignored
    with pytest.raises(ConfigError, match=r"^train.bf16_weights=true cannot run here: engine=deepspeed"):
        load_run_config(None, ["model.preset=debug", "train.dtype=bf16", "train.bf16_weights=true",
                               "parallel.engine=deepspeed"])
    assert load_run_config(None, ["model.preset=debug", "train.dtype=bf16", "train.bf16_weights=auto",
                                  "parallel.engine=deepspeed"]).train.bf16_weights == "auto"
    with pytest.raises(ConfigError, match=r"train.bf16_weights='sometimes': must be auto, true or false"):
        load_run_config(None, ["model.preset=debug", "train.bf16_weights=sometimes"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_update_on_cuda_equals_the_eager_one():
    """The compiled update (one kernel per tensor, symbolic sizes) against the same update run eagerly, on CUDA,
    with the clip's grad_scale and a skipped step; every master, moment and bf16 copy."""
    cfg = get_preset("tiny-moe")
    models = [build_model(cfg, device="cuda", seed=0) for _ in range(2)]
    masters = [to_compute_weights(m) for m in models]
    settings = torch.optim.AdamW([torch.zeros(1, device="cuda")], lr=1e-2, fused=True).defaults
    optimizers = [MasterWeightAdamW(parameter_groups([m], 0.1), ms, settings, compiled=c)
                  for m, ms, c in zip(models, masters, (True, False))]
    generator = torch.Generator(device="cuda").manual_seed(0)
    for scale, skip in [(1.0, False), (3.0, False), (1.0, True), (1.0, False)]:
        for pair in zip(*(m.parameters() for m in models)):
            grad = torch.randn(pair[0].shape, device="cuda", generator=generator).to(pair[0].dtype)
            for p in pair:
                p.grad = grad.clone()
        for optimizer in optimizers:
            optimizer.grad_scale = torch.tensor(scale, device="cuda")
            optimizer.found_inf = torch.tensor(float(skip), device="cuda")
            optimizer.step()
    # the fp32 masters (a bf16 copy may round the other way where its master moved by one fp32 ulp)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(masters[0].get(a, a), masters[1].get(b, b), rtol=1e-5, atol=1e-7,
                                   msg=lambda m, name=name: f"{name}: {m}")
        state_a, state_b = optimizers[0].state[a], optimizers[1].state[b]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state_a[key], state_b[key], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, name=name, key=key: f"{name} {key}: {m}")
    for model, model_masters in zip(models, masters):
        for p in model.parameters():
            if p in model_masters:
                assert torch.equal(p.detach(), model_masters[p].to(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trainer_on_cuda_with_auto_bf16_weights_trains_like_a_run_without_them(tmp_path):
    """The trainer on CUDA, compiled, one micro-batch a step: ``auto`` turns bf16 weights on (the compiled update
    inside the trainer, with the clip folded in and the overlapped steps), and the run trains like one with them
    off to rounding (compiled kernels need not round as autocast's casts do); a run resumed from its checkpoint
    gives the uninterrupted run's losses to 1e-5 (the kernels run again need not be bitwise the same on the device)."""
    cache = tmp_path / "cache"
    common = (*_COMMON, "train.optimizer_impl=fused", "train.deterministic=true")  # the MoE combine's atomics
    off, on, resumed = (tmp_path / name for name in ("off", "on", "resumed"))
    train(off, *common, "train.bf16_weights=false", cache_dir=cache)
    train(on, *common, "train.bf16_weights=auto", cache_dir=cache)
    assert _started(off)["bf16_weights"] is False and _started(on)["bf16_weights"] is True
    a, b = losses(off), losses(on)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert b[1] == pytest.approx(a[1], rel=1e-3)
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=2e-2), (s, a, b)
    train(resumed, *common, "train.bf16_weights=auto", cache_dir=cache, stop_at=3)
    train(resumed, *common, "train.bf16_weights=auto", cache_dir=cache, resume=True)
    c = losses(resumed)  # the masters restored with the bf16 copies
    assert sorted(c) == sorted(b) and all(c[s] == pytest.approx(b[s], rel=1e-5) for s in b), (b, c)


def test_compiled_update_equals_the_eager_one_for_copies_and_plain_fp32_parameters():
    """The compiled update on CPU (inductor) against the eager one: bf16 copies (2-D and 3-D) with their masters in a
    decayed group and a plain fp32 parameter in an undecayed one, with the clip's grad_scale and a skipped step; two
    graphs (with a copy and without), the 3-D copy none of its own.  With python float hyperparameters, torch 2.13's
    ``dynamic=True`` compile moved the second group's parameter several times too far (the update's scalars are
    tensors since)."""
    from torch._dynamo.utils import counters

    results = []
    for compiled in (True, False):
        torch.manual_seed(0)
        torch._dynamo.reset()
        counters.clear()
        copies = [torch.nn.Parameter(torch.randn(shape).bfloat16()) for shape in ((64, 32), (2, 16, 8))]
        masters = {p: torch.randn(p.shape) for p in copies}
        plain = torch.nn.Parameter(torch.randn(32))
        settings = torch.optim.AdamW([torch.zeros(1)], lr=1e-2, foreach=True).defaults
        groups = [{"params": copies, "weight_decay": 0.1}, {"params": [plain], "weight_decay": 0.0}]
        optimizer = MasterWeightAdamW(groups, masters, settings, compiled=compiled)
        for scale, skip in [(1.0, False), (3.0, False), (1.0, True)]:
            for p in copies:
                p.grad = torch.randn(p.shape).bfloat16()
            plain.grad = torch.randn(32)
            optimizer.grad_scale, optimizer.found_inf = torch.tensor(scale), torch.tensor(float(skip))
            optimizer.step()
        assert counters["stats"]["unique_graphs"] == (2 if compiled else 0)
        results.append(([masters[p] for p in copies], [p.detach() for p in copies], plain.detach(),
                        [float(s["step"]) for s in optimizer.state.values()]))
    (m1, c1, p1, s1), (m2, c2, p2, s2) = results
    assert s1 == s2 == [2.0, 2.0, 2.0]
    for a, b in zip(m1, m2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(c, m.to(torch.bfloat16)) for c, m in zip(c1 + c2, m1 + m2))


# 1-D, square, non-square, 3-D (both ways), size-1 dims, one element: each as a bf16 copy and as a plain fp32 parameter
_SHAPES = [(6,), (5,), (4, 4), (3, 5), (5, 3), (2, 3, 4), (2, 4, 3), (1, 6), (6, 1), (2, 1, 3), (1,), (1, 1)]


def _step_shaped_parameters(compiled, backend=None):
    """Three steps (the clip's grad_scale, then a skipped step) of a ``MasterWeightAdamW`` over ``_SHAPES`` twice:
    bf16 copies with fp32 masters in a decayed group, plain fp32 parameters in an undecayed one.  Returns every
    master, bf16 copy and moment after the steps."""
    generator = torch.Generator().manual_seed(0)
    copies = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in _SHAPES]
    plain = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in _SHAPES]
    masters = {p: p.detach().clone() for p in copies}
    for p in copies:
        p.data = p.data.to(torch.bfloat16)
    settings = torch.optim.AdamW([torch.zeros(1)], lr=1e-2, foreach=True).defaults
    optimizer = MasterWeightAdamW([{"params": copies, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
                                  masters, settings, compiled=compiled, backend=backend)
    for scale, skip in [(1.0, False), (3.0, False), (1.0, True)]:
        for p in copies + plain:
            p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        optimizer.grad_scale, optimizer.found_inf = torch.tensor(scale), torch.tensor(float(skip))
        optimizer.step()
    return [t for p in copies + plain for t in (masters.get(p, p), p.detach(), optimizer.state[p]["exp_avg"],
                                                 optimizer.state[p]["exp_avg_sq"], optimizer.state[p]["step"])]


def test_compiled_update_takes_a_fixed_number_of_graphs_whatever_the_parameters_shapes():
    """The flattened tensors reach dynamo without their differently shaped bases: one graph with a bf16 copy, one
    without, and one of each for one-element tensors (sizes 0 and 1 are specialised), not one per shape family
    (9 here before: past torch's recompile limit of 8, a hard error under fullgraph).  A counting backend runs the
    graphs as traced: the results are the eager update's bit for bit."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()  # graphs of the update that earlier tests compiled would count against the limit
    counter = CompileCounter()
    compiled = _step_shaped_parameters(True, counter)
    assert counter.frame_count == 4
    eager = _step_shaped_parameters(False)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))


def test_a_graph_refused_at_the_recompile_limit_falls_back_to_the_eager_update(caplog):
    """Past torch's recompile limit (1 here) the refused tensors take the eager update: the run goes on, one
    warning line says so, and the values are the eager update's."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    with torch._dynamo.config.patch(recompile_limit=1), caplog.at_level("WARNING", logger="alphaexa.train"):
        compiled = _step_shaped_parameters(True, counter)
    assert counter.frame_count == 1
    ours = [r for r in caplog.records if r.name == "alphaexa.train"]
    assert len(ours) == 1 and "recompile limit" in ours[0].getMessage()
    assert all(torch.equal(a, b) for a, b in zip(compiled, _step_shaped_parameters(False)))
