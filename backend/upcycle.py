"""A dense llama GGUF -> an equivalent Mixtral-style MoE GGUF, so the MoE path runs a model that writes
real text. `python -m backend.upcycle dense.gguf moe.gguf --experts 4`

The FFN's hidden units are split into E experts; the router is all zeros, so every expert gets
softmax weight exactly 1/E and, with expert_used_count = E, all are selected. Each expert's down
projection is scaled by E by multiplying its blocks' fp16 scales (and mins) by E: a power of
two, so exact. Then sum_e (1/E) * E * down_e(h_e) = down(h): the same function, with only the
summation order of the down projection changed. Every other tensor is copied byte for byte.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

# Byte offsets of the fp16 fields that scale a block linearly (d and, where present, the min).
_SCALE_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_XS": (0,),
}  # fmt: skip
_FFN = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.weight$")


class UpcycleError(ValueError):
    pass


def _scaled(raw: np.ndarray, qtype: GGMLQuantizationType, factor: int) -> np.ndarray:
    """Blocks of `raw` [rows, row_bytes] with every scale multiplied by `factor` (a power of two)."""
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        dtype = np.float32 if qtype == GGMLQuantizationType.F32 else np.float16
        values = raw.view(dtype) * dtype(factor)
        if not np.isfinite(values).all():
            raise UpcycleError("scaling the down projection overflowed")
        return values.view(np.uint8)
    fields = _SCALE_FIELDS.get(qtype.name)
    if fields is None:
        raise UpcycleError(f"cannot rescale {qtype.name} blocks exactly")
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(-1, type_size).copy()
    for offset in fields:
        half = blocks[:, offset : offset + 2].copy().view(np.float16)
        scaled = half * np.float16(factor)
        if not np.isfinite(scaled).all() or np.any((scaled / np.float16(factor)) != half):
            raise UpcycleError(f"an fp16 scale cannot be multiplied by {factor} exactly")
        blocks[:, offset : offset + 2] = scaled.view(np.uint8)
    return blocks.reshape(raw.shape)


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, experts: int) -> None:
    arch = reader.fields["general.architecture"].contents()
    ffn = f"{arch}.feed_forward_length"
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if field.name == ffn:  # for an MoE it is the length of one expert's FFN
            writer.add_uint32(ffn, int(field.contents()) // experts)
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub)
    writer.add_uint32(f"{arch}.expert_count", experts)
    writer.add_uint32(f"{arch}.expert_used_count", experts)


def upcycle(src: str, dst: str, experts: int) -> None:
    if experts < 2 or experts & (experts - 1):
        raise UpcycleError("--experts must be a power of two (the rescaling must be exact)")
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise UpcycleError(f"{src}: architecture {arch!r}; only dense llama models can be upcycled")
    if any(t.name.endswith("_exps.weight") for t in reader.tensors):
        raise UpcycleError(f"{src} is already a mixture of experts")
    writer = GGUFWriter(dst, arch)
    _copy_metadata(reader, writer, experts)
    for t in reader.tensors:
        m = _FFN.match(t.name)
        qtype = GGMLQuantizationType(t.tensor_type)
        raw = np.asarray(t.data)
        if m is None:
            writer.add_tensor(t.name, raw, raw_dtype=qtype)
            continue
        layer, kind = m.groups()
        rows, cols = (int(x) for x in reversed(t.shape.tolist()))  # numpy order
        block = GGML_QUANT_SIZES[qtype][0]
        byte_rows = raw.view(np.uint8).reshape(rows, -1)
        if kind == "gate":
            embed = cols
            router = np.zeros((experts, embed), dtype=np.float32)
            writer.add_tensor(f"blk.{layer}.ffn_gate_inp.weight", router)
        if kind in ("gate", "up"):  # split the hidden units (rows)
            if rows % experts:
                raise UpcycleError(f"{t.name}: {rows} hidden units do not split into {experts} experts")
            stacked = byte_rows.reshape(experts, rows // experts, -1)
        else:  # down: split the hidden units (columns, whole blocks), scale by E
            if cols % (experts * block):
                raise UpcycleError(f"{t.name}: {cols} columns do not split into {experts} whole-block experts")
            per = byte_rows.shape[1] // experts
            stacked = np.stack([_scaled(np.ascontiguousarray(byte_rows[:, e * per : (e + 1) * per]), qtype, experts)
                                for e in range(experts)])  # fmt: skip
        writer.add_tensor(f"blk.{layer}.ffn_{kind}_exps.weight", np.ascontiguousarray(stacked), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.upcycle", description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--experts", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        upcycle(args.src, args.dst, args.experts)
    except (UpcycleError, OSError) as e:
        print(f"upcycle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
