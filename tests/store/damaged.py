"""The malformed store entries the adversarial run used (issue 20, item 7), written for real:
manifests that do not parse as Ollama's, a layer whose blob is gone, GGUFs with ill-typed metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np

from backend.store import manifest as mf


def odd_gguf(path: Path, **metadata) -> Path:
    """A small llama GGUF whose listed metadata is as given: str, float or int values are
    written with exactly that GGUF type, so `context_length="abc"` is a string in the file."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        key = key.replace("__", ".")
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _manifest(root: Path, name: str, doc) -> Path:
    path = mf.manifest_path(root, mf.parse_name(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def write_damaged(root: Path, good_gguf: Path) -> dict[str, str]:
    """Every kind of damaged entry from the report, next to nothing else; returns name -> a
    phrase the reason must contain."""
    model = {"mediaType": mf.MEDIA_MODEL, **mf.write_blob(root, good_gguf.read_bytes())}
    _manifest(root, "list-manifest", [])
    _manifest(root, "numbered-layers", {"schemaVersion": 2, "layers": [1, 2, 3]})
    _manifest(root, "string-size", {"schemaVersion": 2, "layers": [{**model, "size": "12"}]})
    gone = {"mediaType": mf.MEDIA_SYSTEM, "digest": "sha256:" + "ab" * 32, "size": 3}
    _manifest(root, "missing-blob", {"schemaVersion": 2, "layers": [model, gone]})
    _manifest(root, "missing-model", {"schemaVersion": 2, "layers": [{**gone, "mediaType": mf.MEDIA_MODEL}]})
    _manifest(root, "cut-short", {"schemaVersion": 2, "layers": [model]})
    path = mf.manifest_path(root, mf.parse_name("cut-short"))
    path.write_bytes(path.read_bytes()[:20])
    odd_gguf(root / "ctx-string.gguf", llama__context_length="abc")
    odd_gguf(root / "ctx-inf.gguf", llama__context_length=math.inf)
    odd_gguf(root / "int-template.gguf", tokenizer__chat_template=5)
    return {
        "list-manifest:latest": "manifest is a JSON list, not an object",
        "numbered-layers:latest": "manifest layer 0 is int, not an object",
        "string-size:latest": "size '12' is not a byte count",
        "missing-blob:latest": f"the system file sha256-{'ab' * 32} is missing",
        "missing-model:latest": f"the model file sha256-{'ab' * 32} is missing",
        "cut-short:latest": "manifest is not JSON",
        "ctx-string:latest": "llama.context_length is 'abc'",
        "ctx-inf:latest": "llama.context_length is inf",
        "int-template:latest": "tokenizer.chat_template is int 5, not text",
    }
