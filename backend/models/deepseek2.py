"""DeepSeek-V2, V2-Lite, V3 and R1 (GGUF arch deepseek2): MLA attention, shared + routed experts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import kernels
from ..engine.kv_cache import ForwardBatch
from ..gguf_model import GGUFError, GGUFFile
from ..layers.linear import Embedding, FeedForward, Linear, load
from ..layers.mla import MLAttention
from ..layers.moe import Experts
from ..layers.native_step import MlaBlockSpec
from ..layers.norm import RMSNorm
from ..layers.rope import rope_inv_freq, yarn_get_mscale, yarn_inv_freq
from ..layers.routing import route_grouped, routing_of
from .decoder import DecoderLM

# Shape alphabet: T tokens in the batch, D hidden, V vocab, E routed experts, A active experts.

_GATING_FUNCS = {1: "softmax", 2: "sigmoid"}  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE


@dataclass(frozen=True)
class YarnScaling:
    """rope_scaling of type yarn, HF names. GGUF keeps mscale_all_dim only (as yarn_log_multiplier)."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale_all_dim: float = 0.0


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense layers' FFN
    moe_intermediate_size: int  # one expert's FFN; shared experts use n_shared_experts times it
    num_hidden_layers: int
    num_attention_heads: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    first_k_dense_replace: int
    q_lora_rank: int  # 0: plain attn_q (V2-Lite)
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    scoring_func: str  # "softmax" (V2) or "sigmoid" (V3/R1)
    topk_method: str  # "greedy", "group_limited_greedy" (V2) or "noaux_tc" (V3/R1)
    n_group: int
    topk_group: int
    rope_theta: float
    rope_scaling: YarnScaling | None
    rms_norm_eps: float

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelArgs":
        R = f.arch_get("rope.dimension_count")
        # MLA-split files (attn_k_b/attn_v_b) describe the absorbed MQA view in key/value_length
        # (L + R and L) and the per-head sizes in *_length_mla; legacy attn_kv_b files only the latter
        # in key/value_length.
        if f.has_tensor("blk.0.attn_k_b.weight") or f.arch_get("attention.key_length_mla", None) is not None:
            key_length, v_head_dim = f.arch_get("attention.key_length_mla"), f.arch_get("attention.value_length_mla")
        else:
            key_length, v_head_dim = f.arch_get("attention.key_length"), f.arch_get("attention.value_length")
        gating = f.arch_get("expert_gating_func", 1)  # absent in early V2 files, which are softmax
        if gating not in _GATING_FUNCS:
            raise GGUFError(f"{f.name}: expert_gating_func {gating} is not supported for deepseek2")
        scoring = _GATING_FUNCS[gating]
        n_group = f.arch_get("expert_group_count", 1) or 1
        topk_method = "noaux_tc" if scoring == "sigmoid" else "group_limited_greedy" if n_group > 1 else "greedy"
        if f.arch_get("attention.temperature_scale", 0.0):
            raise GGUFError(f"{f.name}: attention temperature tuning (Mistral Large 3) is not supported for deepseek2")
        args = cls(
            vocab_size=f.tensor("token_embd.weight").shape[0],
            hidden_size=f.arch_get("embedding_length"),
            intermediate_size=f.arch_get("feed_forward_length"),
            moe_intermediate_size=f.arch_get("expert_feed_forward_length"),
            # Multi-token-prediction layers, when a file keeps them, sit after the trunk; plain
            # decoding never runs them.
            num_hidden_layers=f.arch_get("block_count") - f.arch_get("nextn_predict_layers", 0),
            num_attention_heads=f.arch_get("attention.head_count"),
            n_routed_experts=f.arch_get("expert_count"),
            n_shared_experts=f.arch_get("expert_shared_count", 0),
            num_experts_per_tok=f.arch_get("expert_used_count"),
            first_k_dense_replace=f.arch_get("leading_dense_block_count", 0),
            q_lora_rank=f.arch_get("attention.q_lora_rank", 0) or 0,
            kv_lora_rank=f.arch_get("attention.kv_lora_rank"),
            qk_nope_head_dim=key_length - R,
            qk_rope_head_dim=R,
            v_head_dim=v_head_dim,
            routed_scaling_factor=f.arch_get("expert_weights_scale", 1.0) or 1.0,
            norm_topk_prob=bool(f.arch_get("expert_weights_norm", False)),
            scoring_func=scoring,
            topk_method=topk_method,
            n_group=n_group,
            topk_group=f.arch_get("expert_group_used_count", n_group) or n_group,
            rope_theta=f.arch_get("rope.freq_base", 10000.0),
            rope_scaling=_yarn_scaling(f),
            rms_norm_eps=f.arch_get("attention.layer_norm_rms_epsilon"),
        )
        if args.n_group > 1 and args.n_routed_experts % args.n_group:
            raise GGUFError(f"{f.name}: {args.n_routed_experts} experts do not split into {args.n_group} groups")
        if args.topk_method == "noaux_tc" and args.n_group > 1 and args.n_routed_experts // args.n_group < 2:
            raise GGUFError(f"{f.name}: sigmoid group routing needs at least 2 experts per group")
        return args

    def attention_scales(self) -> tuple[torch.Tensor, float, float]:
        """(inv_freq [R/2], cos/sin factor, softmax scale), as DeepSeek and llama.cpp apply YaRN.

        With mscale_all_dim set (every DeepSeek config), the magnitude correction lands entirely on
        the softmax scale, mscale(factor, mscale_all_dim)^2: the rope's own factor is
        mscale(factor, mscale) / mscale(factor, mscale_all_dim) and DeepSeek sets mscale equal to
        mscale_all_dim, which llama.cpp assumes too since the GGUF keeps only the latter.
        """
        R = self.qk_rope_head_dim
        scale = (self.qk_nope_head_dim + R) ** -0.5
        ys = self.rope_scaling
        if ys is None:
            return rope_inv_freq(R, self.rope_theta), 1.0, scale
        inv_freq = yarn_inv_freq(R, self.rope_theta, ys.factor, ys.original_max_position_embeddings, ys.beta_fast, ys.beta_slow)
        if ys.mscale_all_dim:
            return inv_freq, 1.0, scale * yarn_get_mscale(ys.factor, ys.mscale_all_dim) ** 2
        return inv_freq, yarn_get_mscale(ys.factor), scale


def _yarn_scaling(f: GGUFFile) -> YarnScaling | None:
    kind = f.arch_get("rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind != "yarn":
        raise GGUFError(f"{f.name}: rope scaling '{kind}' is not supported for deepseek2")
    return YarnScaling(
        factor=float(f.arch_get("rope.scaling.factor")),
        original_max_position_embeddings=int(f.arch_get("rope.scaling.original_context_length")),
        beta_fast=float(f.arch_get("rope.scaling.yarn_beta_fast", 32.0)),
        beta_slow=float(f.arch_get("rope.scaling.yarn_beta_slow", 1.0)),
        # convert_hf_to_gguf stores 0.1 * mscale_all_dim; llama.cpp divides the 0.1 back out.
        # Divided in float32 as llama.cpp does, so 0.1f * 1.0 comes back as exactly 1.0.
        mscale_all_dim=float(np.float32(f.arch_get("rope.scaling.yarn_log_multiplier", 0.0)) / np.float32(0.1)),
    )


class DeepseekMoE(nn.Module):
    """Routed experts (grouped top-k) plus always-on shared experts, summed."""

    def __init__(self, f: GGUFFile, prefix: str, args: ModelArgs):
        super().__init__()
        D, E, I = args.hidden_size, args.n_routed_experts, args.moe_intermediate_size
        self.args = args
        self.router = Linear.from_gguf(f, f"{prefix}.ffn_gate_inp", E, D)  # [E, D]
        bias_name = f"{prefix}.exp_probs_b.bias"
        self.register_buffer("e_score_correction_bias", load(f, bias_name, (E,)) if f.has_tensor(bias_name) else None)
        self.experts = Experts.from_gguf(f, prefix, E, D, I)
        self.shared_experts = FeedForward(f, prefix, "_shexp", D, I * args.n_shared_experts) if args.n_shared_experts else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> weights [T, A], expert ids [T, A]."""
        return route_grouped(self.router(x), **self._routing_args())

    def routing(self) -> kernels.MoeRouting:
        """The routing as the kernels take it (the native decode step's); this module keeps its bias."""
        return routing_of(self.args.n_routed_experts, **self._routing_args())

    def _routing_args(self) -> dict:
        a = self.args
        return dict(
            top_k=a.num_experts_per_tok, scoring_func=a.scoring_func, topk_method=a.topk_method, n_group=a.n_group,
            topk_group=a.topk_group, norm_topk_prob=a.norm_topk_prob, routed_scaling_factor=a.routed_scaling_factor,
            e_score_correction_bias=self.e_score_correction_bias,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, D] -> [T, D]
        weights, ids = self.route(x)  # [T, A], [T, A]
        return self.experts(x, weights, ids, shared=self.shared_experts)


class Block(nn.Module):
    def __init__(self, f: GGUFFile, args: ModelArgs, i: int, inv_freq: torch.Tensor, rope_scale: float, softmax_scale: float):
        super().__init__()
        p, D = f"blk.{i}", args.hidden_size
        self.attn_norm = RMSNorm(load(f, f"{p}.attn_norm.weight", (D,)), args.rms_norm_eps)
        self.attn = MLAttention(
            f, p, hidden_size=D, num_heads=args.num_attention_heads, q_lora_rank=args.q_lora_rank,
            kv_lora_rank=args.kv_lora_rank, qk_nope_head_dim=args.qk_nope_head_dim,
            qk_rope_head_dim=args.qk_rope_head_dim, v_head_dim=args.v_head_dim, rms_norm_eps=args.rms_norm_eps,
            inv_freq=inv_freq, rope_scale=rope_scale, softmax_scale=softmax_scale,
        )
        self.ffn_norm = RMSNorm(load(f, f"{p}.ffn_norm.weight", (D,)), args.rms_norm_eps)
        if i < args.first_k_dense_replace:
            self.ffn = FeedForward(f, p, "", D, args.intermediate_size)
        else:
            self.ffn = DeepseekMoE(f, p, args)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, i: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions, batch, i)  # [T, D]
        return x + self.ffn(self.ffn_norm(x))

    def native_spec(self) -> MlaBlockSpec:
        return MlaBlockSpec(self.attn, self.attn_norm, self.ffn_norm, self.ffn)


class Model(DecoderLM):
    """Each layer caches (latent [capacity, L], k_pe [capacity, R]): 576 floats a token for
    DeepSeek-V3 against 2 * 128 * 192 = 49k for the expanded per-head keys and values."""

    args_class = ModelArgs

    def __init__(self, f: GGUFFile, args: ModelArgs):
        super().__init__()
        self.args = args
        V, D = args.vocab_size, args.hidden_size
        self.embed = Embedding.from_gguf(f, "token_embd", V, D)  # [V, D], quantized
        inv_freq, rope_scale, softmax_scale = args.attention_scales()
        self.layers = nn.ModuleList(
            Block(f, args, i, inv_freq, rope_scale, softmax_scale) for i in range(args.num_hidden_layers)
        )
        self.norm = RMSNorm(load(f, "output_norm.weight", (D,)), args.rms_norm_eps)
        self.output = Linear.from_gguf(f, "output", V, D) if f.has_tensor("output.weight") else self.embed.tied_output()
