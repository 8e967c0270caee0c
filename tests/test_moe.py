"""MoE routing against a naive per-token loop, capacity dropping, aux/z-loss values and injection."""
import math

import pytest
import torch
import torch.nn.functional as F

from alphaexa.model.moe import AuxLossInjector, GroupedExperts, MoE, grouped_mm_usable, moe_metrics
from topology.modelcfg import ModelConfig


def _moe(ffn_type="swiglu", n_experts=4, top_k=2, capacity_factor=0.0, shared=0, d=16, f=24, seed=0,
         aux=0.0, z=0.0, dtype=torch.float64):
    cfg = ModelConfig(n_layers=1, d_model=d, n_heads=2, ffn_type=ffn_type, moe_every=1, n_experts=n_experts,
                      top_k=top_k, moe_d_ff=f, capacity_factor=capacity_factor, n_shared_experts=shared,
                      aux_loss_coef=aux, z_loss_coef=z)
    torch.manual_seed(seed)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    return moe.to(dtype)


def _ffn(ffn_type, x, w1, w2, w3):
    up = x @ w1
    hidden = F.silu(x @ w3) * up if ffn_type == "swiglu" else F.gelu(up)
    return hidden @ w2


def reference_moe(moe: MoE, x: torch.Tensor, capacity: int | None):
    """Token by token: route, apply the priority rule (all k=0 choices in token order, then k=1, ...),
    sum the kept experts' outputs weighted by their (not renormalised) softmax probabilities."""
    tokens = x.reshape(-1, x.shape[-1])
    n, e, k = tokens.shape[0], moe.n_experts, moe.top_k
    probs = [torch.softmax((tokens[t] @ moe.gate.weight.t()).double(), dim=-1) for t in range(n)]
    choices = [torch.topk(p, k).indices.tolist() for p in probs]
    load = [0] * e
    kept = set()
    for rank in range(k):
        for t in range(n):
            expert = choices[t][rank]
            if capacity is None or load[expert] < capacity:
                load[expert] += 1
                kept.add((t, rank))
    ex = moe.experts
    rows = []
    for t in range(n):
        out = torch.zeros_like(tokens[t])
        for rank in range(k):
            if (t, rank) in kept:
                expert = choices[t][rank]
                w3 = ex.w3[expert] if ex.w3 is not None else None
                y = _ffn(ex.ffn_type, tokens[t:t + 1], ex.w1[expert], ex.w2[expert], w3)[0]
                out = out + probs[t][expert].to(y.dtype) * y
        if moe.shared_experts is not None:
            s = moe.shared_experts
            out = out + _ffn(ex.ffn_type, tokens[t:t + 1], s.w1.weight.t(), s.w2.weight.t(),
                             s.w3.weight.t() if s.w3 is not None else None)[0]
        rows.append(out)
    dropped = n * k - len(kept)
    return torch.stack(rows).view_as(x), probs, choices, dropped


def _grads(module, x):
    return [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]


def _zero(module, x):
    module.zero_grad()
    x.grad = None


CASES = [
    {"ffn_type": "swiglu", "top_k": 2},
    {"ffn_type": "gelu", "top_k": 1},
    {"ffn_type": "swiglu", "top_k": 3, "n_experts": 5, "shared": 1},
    {"ffn_type": "swiglu", "top_k": 2, "capacity_factor": 0.75},
    {"ffn_type": "gelu", "top_k": 2, "capacity_factor": 1.0, "shared": 2},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_moe_matches_per_token_reference_outputs_and_gradients(case):
    moe = _moe(**case).train()
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(3, 7, 16, dtype=torch.float64)
    out = moe(x)
    (out * grad_out).sum().backward()
    got = _grads(moe, x)
    _zero(moe, x)
    ref, _, _, dropped = reference_moe(moe, x, moe.capacity(21))
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(got, _grads(moe, x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert int(moe.dropped_tokens) == dropped
    if case.get("capacity_factor"):
        assert dropped > 0, "the capacity case should exercise dropping"


def test_capacity_drops_exactly_the_reference_rule_on_skewed_routing():
    # A router biased towards expert 0 overflows it; which assignments survive must follow the rule.
    moe = _moe(n_experts=4, top_k=2, capacity_factor=1.0).train()
    with torch.no_grad():
        moe.gate.weight[0] += 1.0
    x = torch.randn(40, 16, dtype=torch.float64) + 0.5
    capacity = moe.capacity(40)
    assert capacity == math.ceil(1.0 * 40 * 2 / 4)
    ref, _, choices, dropped = reference_moe(moe, x, capacity)
    out = moe(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert int(moe.dropped_tokens) == dropped > 0
    routed = torch.bincount(torch.tensor(choices).flatten(), minlength=4)
    assert torch.equal(moe.tokens_per_expert, routed)
    # Per token: the output is exactly the kept experts' sum, so a token whose every
    # assignment was dropped comes out as zero.
    load, kept_any = [0] * 4, [False] * 40
    for rank in range(2):
        for t in range(40):
            if load[choices[t][rank]] < capacity:
                load[choices[t][rank]] += 1
                kept_any[t] = True
    for t in range(40):
        assert bool(out[t].abs().sum() > 0) == kept_any[t]


def test_dropless_and_eval_drop_nothing():
    moe = _moe(capacity_factor=0.0).train()
    with torch.no_grad():
        moe.gate.weight[0] += 2.0  # heavy imbalance
    x = torch.randn(64, 16, dtype=torch.float64) + 0.5
    out = moe(x)
    assert int(moe.dropped_tokens) == 0
    torch.testing.assert_close(out, reference_moe(moe, x, None)[0], rtol=1e-10, atol=1e-10)
    capped = _moe(capacity_factor=0.5).eval()
    capped.load_state_dict(moe.state_dict())
    torch.testing.assert_close(capped(x), out, rtol=1e-10, atol=1e-10)
    assert int(capped.dropped_tokens) == 0


def _hand_example(capacity_factor=0.0):
    """Gate = identity on 4 features, so the router logits are the inputs themselves."""
    moe = _moe(n_experts=4, top_k=2, d=4, f=8, capacity_factor=capacity_factor, aux=1.0, z=1.0).train()
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(4, dtype=torch.float64))
    # softmax rows: [1/2, 1/4, 1/8, 1/8], [1/8, 1/8, 1/4, 1/2], [1/4, 1/2, 1/8, 1/8] (logsumexp ln 8, ln 8, ln 16)
    x = torch.log(torch.tensor([[4.0, 2, 1, 1], [1, 1, 2, 4], [4, 8, 2, 2]], dtype=torch.float64))
    return moe, x


def test_aux_and_z_loss_hand_computed():
    moe, x = _hand_example()
    moe(x)
    # choices: token0 -> e0, e1; token1 -> e3, e2; token2 -> e1, e0  => counts [2, 2, 1, 1] of 6
    # f = [2, 2, 1, 1] / 6; P = [0.875, 0.875, 0.5, 0.75] / 3
    # aux = 4 * (2*0.875 + 2*0.875 + 0.5 + 0.75) / 18 = 4 * 4.75 / 18 = 19/18
    assert moe.tokens_per_expert.tolist() == [2, 2, 1, 1]
    assert float(moe.aux_loss) == pytest.approx(19 / 18, rel=1e-12)
    # z = ((3 ln2)^2 + (3 ln2)^2 + (4 ln2)^2) / 3 = 34/3 ln2^2
    assert float(moe.z_loss) == pytest.approx(34 / 3 * math.log(2) ** 2, rel=1e-12)
    assert int(moe.dropped_tokens) == 0


def test_capacity_priority_hand_example():
    # capacity = ceil(0.5 * 3 tokens * 2 / 4) = 1.  First choices in token order take e0, e3, e1;
    # second choices: token0 -> e1 (full: dropped), token1 -> e2 (kept), token2 -> e0 (full: dropped).
    moe, x = _hand_example(capacity_factor=0.5)
    assert moe.capacity(3) == 1
    out = moe(x)
    assert int(moe.dropped_tokens) == 2
    assert moe.tokens_per_expert.tolist() == [2, 2, 1, 1]  # routed, before dropping
    ex = moe.experts
    probs = torch.softmax(x, dim=-1)

    def expert(e, t):
        return _ffn("swiglu", x[t:t + 1], ex.w1[e], ex.w2[e], ex.w3[e])[0] * probs[t, e]

    expected = torch.stack([expert(0, 0), expert(3, 1) + expert(2, 1), expert(1, 2)])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_aux_loss_injection_equals_explicit_loss_term():
    coef_aux, coef_z, scale = 0.3, 0.2, 0.25
    moe = _moe(aux=coef_aux, z=coef_z, capacity_factor=1.0).train()
    x = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(30, 16, dtype=torch.float64)
    MoE.aux_loss_scale = scale
    try:
        (moe(x) * grad_out).sum().backward()
    finally:
        MoE.aux_loss_scale = 1.0
    injected = _grads(moe, x)
    _zero(moe, x)
    ref, probs, choices, _ = reference_moe(moe, x, moe.capacity(30))
    probs = torch.stack(probs)
    counts = torch.bincount(torch.tensor(choices).flatten(), minlength=4).double()
    aux = 4 * ((counts / (30 * 2)) * probs.mean(0)).sum()
    z = torch.logsumexp(x @ moe.gate.weight.t(), dim=-1).square().mean()
    ((ref * grad_out).sum() + scale * (coef_aux * aux + coef_z * z)).backward()
    explicit = _grads(moe, x)
    for a, b in zip(injected, explicit):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # The penalty must actually move the router: without it the gate gradient differs.
    _zero(moe, x)
    (reference_moe(moe, x, moe.capacity(30))[0] * grad_out).sum().backward()
    assert not torch.allclose(moe.gate.weight.grad, explicit[0])


def test_injector_is_identity_forward_and_sends_scale():
    a = torch.randn(5, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    out = AuxLossInjector.apply(a * 1.0, (w ** 2).sum(), 0.5)
    assert torch.equal(out, a)
    out.sum().backward()
    torch.testing.assert_close(a.grad, torch.ones(5))
    torch.testing.assert_close(w.grad, 0.5 * 2 * w.detach())


def test_stats_hook_sees_packed_stats_and_changes_the_loss():
    moe, x = _hand_example()
    seen = []

    def doubled_other_rank(stats):
        seen.append(stats.clone())
        return stats * 2  # another rank with identical statistics

    moe.stats_reduce_hook = doubled_other_rank
    moe(x)
    assert seen[0].shape == (2 * 4 + 2,)
    assert seen[0][:4].tolist() == [2, 2, 1, 1] and seen[0][-1] == 3
    # Two identical ranks: fractions and means unchanged, so the losses are the same.
    assert float(moe.aux_loss) == pytest.approx(19 / 18, rel=1e-12)
    moe.stats_reduce_hook = lambda s: torch.cat([s[:4] + torch.tensor([0, 0, 0, 6.0], dtype=s.dtype), s[4:8],
                                                 s[8:9], s[9:] + 0])
    moe(x)
    # counts [2, 2, 1, 7] with 3 tokens * 2 = 6 assignments -> f no longer sums to 1: aux changes.
    assert float(moe.aux_loss) != pytest.approx(19 / 18)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_mm_path_equals_loop(dtype):
    experts = GroupedExperts(4, 32, 48, "swiglu").to(dtype)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(23, 32, dtype=dtype, requires_grad=True)
    counts = torch.tensor([5, 0, 11, 7])
    assert grouped_mm_usable(x, experts.w1)
    out = experts(x, counts)
    out.float().square().sum().backward()
    grads = [p.grad.clone() for p in experts.parameters()] + [x.grad.clone()]
    experts.zero_grad()
    x.grad = None
    GroupedExperts.use_grouped_mm = False
    try:
        ref = experts(x, counts)
        ref.float().square().sum().backward()
    finally:
        GroupedExperts.use_grouped_mm = True
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out, ref, **tol)
    for a, b in zip(grads, [p.grad for p in experts.parameters()] + [x.grad]):
        torch.testing.assert_close(a, b, **tol)


def test_grouped_mm_refuses_misaligned_shapes():
    experts = GroupedExperts(2, 6, 10, "gelu")  # 6 floats = 24 bytes: not 16-byte aligned
    assert not grouped_mm_usable(torch.randn(3, 6), experts.w1)
    assert not grouped_mm_usable(torch.randn(3, 8, dtype=torch.float64), torch.randn(2, 8, 8, dtype=torch.float64))


def test_router_jitter_only_in_training_and_metrics():
    moe = _moe(dtype=torch.float32)
    moe.router_jitter = 0.5
    x = torch.randn(50, 16)
    moe.eval()
    torch.testing.assert_close(moe(x), moe(x))
    moe.train()
    torch.manual_seed(1)
    a = moe(x).detach()
    torch.manual_seed(2)
    assert not torch.allclose(a, moe(x).detach())

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = moe

    metrics = moe_metrics(Holder())
    assert set(metrics) == {"moe_aux_loss", "moe_z_loss", "moe_dropped_fraction", "moe_max_load"}
    assert metrics["moe_dropped_fraction"] == 0.0 and metrics["moe_max_load"] >= 1.0

