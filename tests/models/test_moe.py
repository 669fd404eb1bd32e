"""MoE routing and the reference expert loop, against per-token float64 arithmetic."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.layers.moe import Experts, route


def test_route_picks_top_k_of_the_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 6, generator=g)  # [T, E]
    weights, ids = route(logits, 2, norm_topk_prob=False)
    probs = F.softmax(logits.double(), dim=-1)
    for t in range(9):
        order = probs[t].argsort(descending=True)[:2]
        assert ids[t].tolist() == order.tolist()
        assert torch.allclose(weights[t].double(), probs[t, order], atol=1e-7)
    renormed, ids2 = route(logits, 2, norm_topk_prob=True)
    assert torch.equal(ids, ids2)
    assert torch.allclose(renormed.sum(-1), torch.ones(9))


def test_experts_match_per_token_float64():
    g = torch.Generator().manual_seed(1)
    E, D, I, T, A = 5, 16, 24, 11, 3
    gate, up = torch.randn(E, I, D, generator=g), torch.randn(E, I, D, generator=g)
    down = torch.randn(E, D, I, generator=g)
    x = torch.randn(T, D, generator=g)
    weights, ids = route(torch.randn(T, E, generator=g), A, norm_topk_prob=True)
    got = Experts.from_tensors(gate, up, down)(x, weights, ids)  # [T, D]
    want = torch.zeros(T, D, dtype=torch.float64)
    for t in range(T):
        for a in range(A):
            e = ids[t, a]
            h = F.silu(gate[e].double() @ x[t].double()) * (up[e].double() @ x[t].double())  # [I]
            want[t] += weights[t, a].double() * (down[e].double() @ h)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4 * want.abs().max().item())
