"""Shared GGUF-writing helpers for the tiny test models: tokenizer section, quantized tensors."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    RopeScalingType,
    TokenType,
    quants,
)

# Types gguf-py can quantize from float; everything else is written as random blocks.
QUANTIZABLE = {"BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
# Byte offsets of the fp16 scale fields inside one block, per random-block type. Dequantization
# is linear in these fields, which is what lets `random_blocks` calibrate them.
_FP16_FIELDS = {
    "Q2_K": (80, 82),  # scales[16] qs[64] d dmin
    "Q3_K": (108,),  # hmask[32] qs[64] scales[12] d
    "Q4_K": (0, 2),  # d dmin scales[12] qs[128]
    "Q5_K": (0, 2),
    "Q6_K": (208,),  # ql[128] qh[64] scales[16] d
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
    "IQ1_S": (0,),
    "IQ2_XXS": (0,),
    "IQ2_XS": (0,),
    "IQ2_S": (0,),
    "IQ3_XXS": (0,),
    "IQ3_S": (0,),
}
RANDOM_BLOCK_TYPES = set(_FP16_FIELDS) | {"IQ1_M"}
SUPPORTED_QTYPES = {"F32", "F16"} | QUANTIZABLE | RANDOM_BLOCK_TYPES

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = (
    "the quick brown fox jumps over the lazy dog. a mixture of experts routes every token "
    "to the experts that fit it best; attention reads the cache and the router picks two. "
    "hello world! in the beginning there was the token, and the token was in the vocabulary."
)


def qtype_of(name: str) -> GGMLQuantizationType:
    if name not in SUPPORTED_QTYPES:
        raise ValueError(f"unsupported qtype {name!r}; choose from {sorted(SUPPORTED_QTYPES)}")
    return GGMLQuantizationType[name]


def block_size(qtype: str) -> int:
    """Row lengths must be multiples of this for the type."""
    return GGML_QUANT_SIZES[qtype_of(qtype)][0]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the base of every byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def bpe_vocab(vocab_size: int) -> tuple[list[str], list[str]]:
    """A valid byte-level BPE: 256 byte tokens, merges learned on a fixed text, specials last."""
    n_merges = vocab_size - 256 - len(SPECIAL_TOKENS)
    if n_merges < 0:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}")
    byte_map = _bytes_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    known = set(tokens)
    words = [[byte_map[b] for b in (" " + w if i else w).encode()] for i, w in enumerate(_CORPUS.split(" "))]
    merges: list[str] = []
    # Once the text is exhausted, merge existing tokens with single bytes, shortest first, so
    # big vocabularies stay valid BPEs of short tokens.
    fallback = ((a, b) for i in itertools.count() for a in [tokens[i]] for b in tokens[:256])
    while len(merges) < n_merges:
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:]) if a + b not in known)
        if pairs:
            (a, b), _ = pairs.most_common(1)[0]
        else:
            words = []
            a, b = next((a, b) for a, b in fallback if a + b not in known)
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        known.add(a + b)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i : i + 2] = [a + b]
                i += 1
    return tokens + list(SPECIAL_TOKENS), merges


def add_tokenizer(writer: GGUFWriter, vocab_size: int, pre: str = "default") -> None:
    """A gpt2-style tokenizer section, as convert_hf_to_gguf writes for byte-level BPE models."""
    tokens, merges = bpe_vocab(vocab_size)
    types = [TokenType.NORMAL] * (len(tokens) - len(SPECIAL_TOKENS)) + [TokenType.CONTROL] * len(SPECIAL_TOKENS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def random_blocks(shape: tuple[int, ...], qtype: str, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for a K/IQ type, with fp16 scales set so the weights have about `std` RMS.

    Random bytes in the scale fields could be inf/NaN; instead every scale is set to 1, the
    blocks dequantized once, and each block's scales divided by its RMS (dequantization is
    linear in them), so values are finite and sized like a trained layer's.
    """
    gtype = qtype_of(qtype)
    blk, type_size = GGML_QUANT_SIZES[gtype]
    if shape[-1] % blk:
        raise ValueError(f"{qtype} needs rows that are multiples of {blk}, got {shape[-1]}")
    n_blocks = int(np.prod(shape)) // blk
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    _set_scales(raw, qtype, np.ones(n_blocks, np.float16))
    rms = np.sqrt(np.mean(np.square(quants.dequantize(raw, gtype).reshape(n_blocks, blk)), axis=1, dtype=np.float64))
    scale = (std / np.maximum(rms, 1e-3)) * rng.uniform(0.5, 1.5, n_blocks)
    _set_scales(raw, qtype, np.clip(scale, 6e-8, 6e4).astype(np.float16))
    return raw.reshape(*shape[:-1], shape[-1] // blk * type_size)


def _set_scales(raw: np.ndarray, qtype: str, d: np.ndarray) -> None:
    if qtype == "IQ1_M":
        # IQ1_M has no fp16 field: the scale's 16 bits sit in the top nibbles of the four
        # uint16 block scales at bytes 48..55 (ggml's iq1m_scale_t).
        sc = raw[:, 48:56].copy().view("<u2")
        bits = d.view(np.uint16).astype(np.uint16)
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
        raw[:, 48:56] = sc.view(np.uint8)
        return
    for off in _FP16_FIELDS[qtype]:
        raw[:, off : off + 2] = d.view(np.uint8).reshape(-1, 2)


def add_tensor(
    writer: GGUFWriter, name: str, array: np.ndarray, qtype: str, rng: np.random.Generator
) -> None:
    """Writes `array` (float32, numpy order) as `qtype`; 1-D tensors always stay F32 like llama.cpp.

    For random-block types the array's values are replaced by random blocks of the same RMS:
    gguf-py cannot quantize K/IQ types, and tests only need the file's own dequantized values.
    """
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or qtype == "F32":
        writer.add_tensor(name, array)
    elif qtype == "F16":
        writer.add_tensor(name, array.astype(np.float16))
    elif qtype in QUANTIZABLE:
        gtype = qtype_of(qtype)
        writer.add_tensor(name, quants.quantize(array, gtype), raw_dtype=gtype)
    else:
        std = float(np.sqrt(np.mean(np.square(array, dtype=np.float64))))
        writer.add_tensor(name, random_blocks(array.shape, qtype, std, rng), raw_dtype=qtype_of(qtype))


def finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def file_type(qtype: str) -> int:
    """general.file_type as llama.cpp's quantizer labels a file mostly in `qtype`."""
    if qtype == "F32":
        return int(LlamaFileType.ALL_F32)
    return int(getattr(LlamaFileType, f"MOSTLY_{qtype}", LlamaFileType.GUESSED))


def start_writer(path: Path, gguf_arch: str, qtype: str, split_max_tensors: int = 0) -> GGUFWriter:
    """A writer with the general.* keys llama.cpp writes; split into shards when asked."""
    writer = GGUFWriter(path, gguf_arch, split_max_tensors=split_max_tensors)
    writer.add_name(f"tiny-random-{gguf_arch}")
    writer.add_file_type(file_type(qtype))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    return writer


class TensorWriter:
    """Random weights for one model: matrices in `qtype`, norms, biases and routers in F32."""

    def __init__(self, writer: GGUFWriter, qtype: str, rng: np.random.Generator):
        self.writer, self.qtype, self.rng = writer, qtype, rng
        qtype_of(qtype)

    def matrix(self, name: str, shape: tuple[int, ...], std: float | None = None) -> None:
        # 1/sqrt(fan_in) keeps activations O(1) through the layers, so logits are not flat.
        std = 1.0 / np.sqrt(shape[-1]) if std is None else std
        add_tensor(self.writer, name, self.rng.standard_normal(shape, dtype=np.float32) * std, self.qtype, self.rng)

    def f32(self, name: str, shape: tuple[int, ...], std: float) -> None:
        """Kept in F32 whatever the file type, as llama.cpp does for routers (ffn_gate_inp*)."""
        self.writer.add_tensor(name, self.rng.standard_normal(shape, dtype=np.float32) * std)

    def norm(self, name: str, dim: int) -> None:
        self.writer.add_tensor(name, 1.0 + 0.1 * self.rng.standard_normal(dim, dtype=np.float32))

    def array(self, name: str, values: np.ndarray) -> None:
        self.writer.add_tensor(name, np.ascontiguousarray(values, dtype=np.float32))


def tn(tensor: MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    """llama.cpp's tensor name from gguf's own table, e.g. blk.3.attn_q.weight."""
    return f"{TENSOR_NAMES[tensor].format(bid=bid)}.{suffix}"


def add_rope_scaling(writer: GGUFWriter, cfg: dict) -> None:
    """rope.scaling.* keys as convert_hf_to_gguf writes them for linear scaling (llama3 uses rope_freqs)."""
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rs["factor"])


# HF module name inside model.layers.{i} of each per-layer GGUF tensor ("blk.{i}." prefix and
# ".weight"/".bias" suffix stripped), as transformers' llama-style decoders name them.
HF_DECODER_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
