"""DeepSeek expert routing: softmax or sigmoid scores, optional bias, group-limited top-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels

# Shape alphabet: T tokens, E routed experts, G expert groups, A active experts per token.


def routing_of(num_experts: int, *, top_k: int, scoring_func: str, topk_method: str, n_group: int, topk_group: int,
               norm_topk_prob: bool, routed_scaling_factor: float,
               e_score_correction_bias: torch.Tensor | None = None) -> kernels.MoeRouting:  # fmt: skip
    """route_grouped's arguments as the kernels' MoeRouting (the bias tensor must stay alive)."""
    bias = None if e_score_correction_bias is None else e_score_correction_bias.float().contiguous()
    return kernels.MoeRouting.make(
        num_experts, top_k, scoring=scoring_func, n_group=n_group, topk_group=topk_group,
        group_top2=topk_method == "noaux_tc", norm_topk=norm_topk_prob, norm_eps=1e-20,
        scale=routed_scaling_factor, bias=bias,
    )  # fmt: skip


def route_grouped(router_logits: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> weights [T, A] float32, expert ids [T, A]: route_reference's
    choice, through the routing kernel on the CPU (the native decode step's, so its bits)."""
    if router_logits.device.type == "cpu":
        bias = kwargs.get("e_score_correction_bias")
        bias = None if bias is None else bias.float().contiguous()  # held for the call
        routing = routing_of(router_logits.shape[-1], **{**kwargs, "e_score_correction_bias": bias})
        return kernels.route(router_logits.float(), routing)
    return route_reference(router_logits, **kwargs)


def route_reference(
    router_logits: torch.Tensor,
    *,
    top_k: int,
    scoring_func: str,
    topk_method: str,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
    e_score_correction_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> weights [T, A] float32, expert ids [T, A].

    scoring_func "softmax" (V2) or "sigmoid" (V3/R1). The correction bias (V3's exp_probs_b) only
    steers the choice; weights come from the unbiased scores. With n_group > 1 only the best
    topk_group groups compete: a group scores by its best expert for V2's "group_limited_greedy"
    and by the sum of its best two (biased) scores for V3's "noaux_tc". llama.cpp applies the
    top-2 sum to every grouped file; that differs only for DeepSeek-V2 (236B), and we follow
    DeepSeek's own definition there.
    """
    logits = router_logits.float()
    scores = torch.sigmoid(logits) if scoring_func == "sigmoid" else F.softmax(logits, dim=-1)  # [T, E]
    choice = scores if e_score_correction_bias is None else scores + e_score_correction_bias.float()
    if n_group > 1 and topk_group < n_group:
        T, E = choice.shape
        grouped = choice.view(T, n_group, E // n_group)  # [T, G, E/G]
        if topk_method == "noaux_tc":
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
        else:
            group_scores = grouped.amax(dim=-1)  # [T, G]
        kept = group_scores.topk(topk_group, dim=-1).indices  # [T, topk_group]
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)  # [T, G]
        choice = choice.masked_fill(~mask.repeat_interleave(E // n_group, dim=1), float("-inf"))
    ids = choice.topk(top_k, dim=-1).indices  # [T, A]
    weights = scores.gather(1, ids)  # [T, A]
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, ids
