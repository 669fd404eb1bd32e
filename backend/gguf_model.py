"""GGUF files (single or split) opened memory-mapped: metadata, tensor table, validation; no math."""

from __future__ import annotations

import math
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, Keys
from gguf.gguf_reader import ReaderField
from gguf.constants import GGUF_MAGIC

_REQUIRED = object()
# llama.cpp's shard names: "<stem>-00001-of-00003.gguf" (gguf.constants.SHARD_NAME_FORMAT).
_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFError(Exception):
    """One line naming the file and what is wrong with it."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int  # gguf.GGMLQuantizationType value
    shape: tuple[int, ...]  # numpy order: GGUF's ne reversed, e.g. (rows, cols), (n_expert, rows, cols)
    data: np.ndarray  # raw bytes, a uint8 view into the file's memmap (never copied)
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.ggml_type).name


# GGUF scalar value types: struct format and numpy dtype (little-endian files).
_SCALARS = {
    GGUFValueType.UINT8: ("<B", np.uint8),
    GGUFValueType.INT8: ("<b", np.int8),
    GGUFValueType.UINT16: ("<H", np.uint16),
    GGUFValueType.INT16: ("<h", np.int16),
    GGUFValueType.UINT32: ("<I", np.uint32),
    GGUFValueType.INT32: ("<i", np.int32),
    GGUFValueType.FLOAT32: ("<f", np.float32),
    GGUFValueType.BOOL: ("<?", np.bool_),
    GGUFValueType.UINT64: ("<Q", np.uint64),
    GGUFValueType.INT64: ("<q", np.int64),
    GGUFValueType.FLOAT64: ("<d", np.float64),
}


def _read_str(buf, offs: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, offs)
    raw = bytes(buf[offs + 8 : offs + 8 + n])
    if len(raw) != n:
        raise ValueError("string runs past the end of the file")
    return raw.decode("utf-8"), offs + 8 + n


def _read_value(buf, offs: int, vtype: int) -> tuple[Any, int]:
    if vtype == GGUFValueType.STRING:
        return _read_str(buf, offs)
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype][0]
        return struct.unpack_from(fmt, buf, offs)[0], offs + struct.calcsize(fmt)
    if vtype != GGUFValueType.ARRAY:
        raise ValueError(f"unknown metadata value type {vtype}")
    sub, n = struct.unpack_from("<IQ", buf, offs)
    offs += 12
    if sub in _SCALARS:  # numeric arrays in one go: token types, scores
        arr = np.frombuffer(buf, dtype=_SCALARS[sub][1], count=n, offset=offs)
        return arr.tolist(), offs + arr.nbytes
    out = []
    for _ in range(n):
        value, offs = _read_value(buf, offs, sub)
        out.append(value)
    return out, offs


class _CheckedReader(GGUFReader):
    """GGUFReader that validates each tensor's type and byte range before slicing the memmap.

    The stock reader slices past the end of a truncated file and then fails in a reshape with
    a message that names neither the tensor nor the file.
    """

    def __init__(self, path: Path):
        self._path = path
        self.values: dict[str, Any] | None = None  # metadata as Python values, when parsed fast
        super().__init__(path, "r")

    def _build_fields(self, offs: int, count: int) -> int:
        """Metadata parsed with struct straight from the map, as plain Python values.

        The stock parser builds numpy arrays per string: 6 s for a 152k-token vocabulary
        (Qwen, Llama 3), paid on every model listing and load. This loop takes ~0.3 s.
        Big-endian files keep the stock path.
        """
        if self.byte_order != "I" or sys.byteorder != "little":
            return super()._build_fields(offs, count)
        buf, self.values = self.data, {}
        for _ in range(count):
            start = offs
            key, offs = _read_str(buf, offs)
            (vtype,) = struct.unpack_from("<I", buf, offs)
            value, offs = _read_value(buf, offs + 4, vtype)
            self.values[key] = value
            # The reader itself only consults general.alignment (types and parts[-1][0]).
            parts = [np.array([value], dtype=_SCALARS[vtype][1])] if vtype in _SCALARS else []
            self.fields[key] = ReaderField(start, key, parts, [0], [GGUFValueType(vtype)])
        return offs

    def _build_tensors(self, start_offs: int, fields) -> None:
        file_size = len(self.data)
        for field in fields:
            _, name_data, _, dims, raw_dtype, offset_tensor = field.parts
            name = bytes(name_data).decode("utf-8", "replace")
            try:
                qtype = GGMLQuantizationType(int(raw_dtype[0]))
            except ValueError:
                raise GGUFError(f"{self._path.name}: tensor {name} has unsupported quant type {int(raw_dtype[0])}") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            # Python integers: a product of absurd dims wraps around in int64 (2^32 x 2^32 -> 0)
            # and would pass the extent check below.
            n_elems = math.prod(int(d) for d in dims)
            if int(dims[0]) % block:
                raise GGUFError(
                    f"{self._path.name}: tensor {name} row length {int(dims[0])} is not a multiple of "
                    f"the {qtype.name} block size {block}"
                )
            n_bytes = n_elems // block * type_size
            start = int(start_offs + offset_tensor[0])
            if start + n_bytes > file_size:
                have = max(0, file_size - start)
                raise GGUFError(
                    f"{self._path.name}: tensor {name} is truncated: expected {n_bytes} bytes, file has {have}"
                )
        super()._build_tensors(start_offs, fields)


def _read_part(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4 or int.from_bytes(head, "little") != GGUF_MAGIC:
        raise GGUFError(f"{path.name}: not a GGUF file (bad magic)")
    try:
        reader = _CheckedReader(path)
    except GGUFError:
        raise
    except Exception as e:  # the reader's own errors: header past EOF, bad version, bad alignment
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GGUFError(f"{path.name}: corrupt or truncated GGUF header ({detail})") from None
    if reader.values is not None:
        metadata = reader.values
    else:  # the reader's bookkeeping fields (GGUF.version, counts) are not file metadata
        metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors: dict[str, TensorInfo] = {}
    for t in reader.tensors:
        # A uint8 slice of the reader's memmap: no bytes are read until someone touches them.
        raw = reader.data[t.data_offset : t.data_offset + t.n_bytes]
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = TensorInfo(t.name, int(t.tensor_type), shape, raw, int(t.n_bytes))
    return metadata, tensors


def _split_parts(path: Path) -> list[Path]:
    m = _SPLIT_RE.match(path.name)
    if m is None:
        return [path]
    count = int(m["count"])
    return [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


class GGUFFile:
    """Merged metadata and tensor table of one model, possibly split over several files."""

    def __init__(self, paths: tuple[Path, ...], metadata: dict[str, Any], tensors: dict[str, TensorInfo]):
        self.paths = paths
        self.metadata = metadata
        self.tensors = tensors
        self.architecture: str = self.get(Keys.General.ARCHITECTURE)

    @property
    def name(self) -> str:
        return self.paths[0].name

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        if key in self.metadata:
            return self.metadata[key]
        if default is _REQUIRED:
            raise GGUFError(f"{self.name}: missing metadata key '{key}'")
        return default

    def arch_get(self, suffix: str, default: Any = _REQUIRED) -> Any:
        return self.get(f"{self.architecture}.{suffix}", default)

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors

    def tensor(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.name}: missing tensor {name}")
        return info

    def expect_shape(self, name: str, shape: tuple[int, ...]) -> TensorInfo:
        info = self.tensor(name)
        if info.shape != tuple(shape):
            raise GGUFError(f"{self.name}: tensor {name} has shape {info.shape}, expected {tuple(shape)}")
        return info


def open_gguf(path: str | Path) -> GGUFFile:
    """Opens a GGUF file, or all parts of a split one when given any part's name."""
    path = Path(path)
    parts = _split_parts(path)
    metadata, tensors = _read_part(parts[0])
    declared_parts = metadata.get(Keys.Split.LLM_KV_SPLIT_COUNT, 1)
    if len(parts) == 1 and declared_parts > 1:
        raise GGUFError(
            f"{path.name}: part of a {declared_parts}-file split model, but the name does not follow "
            f"llama.cpp's <name>-00001-of-{declared_parts:05d}.gguf pattern, so the other parts cannot be found"
        )
    if len(parts) > 1:
        declared = metadata.get(Keys.Split.LLM_KV_SPLIT_COUNT)
        if declared != len(parts):
            raise GGUFError(f"{path.name}: split.count is {declared}, file name says {len(parts)} parts")
        for i, part in enumerate(parts[1:], start=1):
            if not part.is_file():
                raise GGUFError(f"{part.name}: missing part {i + 1} of {len(parts)} of a split model")
            part_meta, part_tensors = _read_part(part)
            if part_meta.get(Keys.Split.LLM_KV_SPLIT_NO) != i:
                raise GGUFError(f"{part.name}: split.no is {part_meta.get(Keys.Split.LLM_KV_SPLIT_NO)}, expected {i}")
            for name in part_tensors:
                if name in tensors:
                    raise GGUFError(f"{part.name}: tensor {name} appears in more than one part")
            tensors.update(part_tensors)
        expected = metadata.get(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
        if expected is not None and expected != len(tensors):
            raise GGUFError(f"{path.name}: split.tensors.count is {expected}, the parts hold {len(tensors)}")
    return GGUFFile(tuple(parts), metadata, tensors)
