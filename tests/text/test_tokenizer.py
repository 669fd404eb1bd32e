"""Tokenizer built from GGUF metadata vs transformers' GGUF tokenizer and llama.cpp goldens, on real models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from backend.text.tokenizer import BYTE, CONTROL, Tokenizer, TokenizerError

GOLDEN = Path(__file__).parent.parent / "data" / "golden"
CORPUS: list[str] = json.loads((GOLDEN / "corpus.json").read_text(encoding="utf-8"))["texts"]


def _hf_differs(model: str, text: str, parse_special: bool = True) -> bool:
    """Where transformers' GGUF tokenizer is known to differ from llama.cpp; those texts are
    checked against the llama.cpp goldens only.

    - transformers ignores `tokenizer.ggml.pre` for byte-level BPE and always pre-tokenizes with
      the GPT-2 regex. 'smollm' isolates every \\p{N} char first in llama.cpp (as SmolLM2's own
      tokenizer.json does), which shows on non-ASCII numerals: GPT-2's regex merges ' ½'.
    - llama.cpp makes '</s>' an end-of-generation, hence control, token in any vocabulary that
      has it (Gemma 3 has it as an HTML tag), so with parse_special off it is plain text there;
      transformers keeps it a user-defined token that always matches."""
    if model == "smollm2":
        return any(ch in text for ch in "½¼¾²³¹")
    return not parse_special and "</s>" in text


@pytest.fixture(scope="module")
def hf_tokenizers(real_gguf_paths):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return {
        name: AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        for name, path in real_gguf_paths.items()
    }


@pytest.fixture(scope="module")
def ours(smollm2_tokenizer, gemma3_tokenizer) -> dict[str, Tokenizer]:
    return {"smollm2": smollm2_tokenizer, "gemma3": gemma3_tokenizer}


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("add_special", [True, False])
def test_encode_matches_transformers(model, add_special, ours, hf_tokenizers):
    tok, hf = ours[model], hf_tokenizers[model]
    compared = 0
    for text in CORPUS:
        if _hf_differs(model, text):
            continue
        expected = hf(text, add_special_tokens=add_special)["input_ids"]
        if tok.add_bos and expected[:2] == [tok.bos_id, tok.bos_id]:
            expected = expected[1:]  # text that spells out the BOS: we do not add a second (see encode)
        assert tok.encode(text, add_special=add_special, parse_special=True) == expected, text
        compared += 1
    assert compared >= len(CORPUS) - 2


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_special_strings_as_text_match_transformers(model, ours, hf_tokenizers):
    """parse_special=False: control-token strings are plain text (transformers' split_special_tokens)."""
    tok, hf = ours[model], hf_tokenizers[model]
    for text in CORPUS:
        if _hf_differs(model, text, parse_special=False):
            continue
        expected = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tok.encode(text, add_special=False, parse_special=False) == expected, text


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_encode_matches_llama_cpp_goldens(model, ours):
    golden = json.loads((GOLDEN / f"{model}.json").read_text(encoding="utf-8"))
    tok = ours[model]
    assert golden["corpus"] == CORPUS, "corpus.json changed: rerun tools/make_goldens.py"
    for text, parsed, plain in zip(CORPUS, golden["tokens"]["parse_special"], golden["tokens"]["no_parse_special"]):
        if tok.add_bos and parsed[:2] == [tok.bos_id, tok.bos_id]:
            parsed = parsed[1:]  # text that spells out the BOS: we do not add a second (see encode)
        assert tok.encode(text, add_special=True, parse_special=True) == parsed, text
        assert tok.encode(text, add_special=False, parse_special=False) == plain, text


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_special_ids_match_transformers(model, ours, hf_tokenizers):
    tok, hf = ours[model], hf_tokenizers[model]
    assert tok.vocab_size == len(hf)
    assert tok.bos_id == hf.bos_token_id
    assert tok.eos_id == hf.eos_token_id
    assert tok.is_eog(tok.eos_id)
    assert tok.eot_id is not None and tok.is_eog(tok.eot_id)
    # The turn-end token the chat template writes must stop generation.
    turn_end = "<|im_end|>" if model == "smollm2" else "<end_of_turn>"
    assert tok.is_eog(hf.convert_tokens_to_ids(turn_end))
    assert not tok.is_eog(tok.encode("Hello", add_special=False)[0])


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_decode_round_trips_and_matches_transformers(model, ours, hf_tokenizers):
    tok, hf = ours[model], hf_tokenizers[model]
    for text in CORPUS:
        ids = tok.encode(text, add_special=False, parse_special=True)
        assert tok.decode(ids) == text
        with_bos = tok.encode(text, add_special=True, parse_special=False)
        assert tok.decode(with_bos, skip_special=True) == hf.decode(with_bos, skip_special_tokens=True)


def test_token_bytes_of_byte_fallback_and_control(gemma3_tokenizer):
    tok = gemma3_tokenizer
    ids = tok.encode("🦙", add_special=False)
    assert all(tok.token_types[i] == BYTE for i in ids)
    assert b"".join(tok.token_bytes(i) for i in ids) == "🦙".encode()
    assert tok.token_types[tok.eos_id] == CONTROL
    assert tok.token_bytes(tok.eos_id) == tok.tokens[tok.eos_id].encode()
    assert tok.decode([tok.bos_id, *ids], skip_special=True) == "🦙"


def test_bos_follows_gguf_flags(smollm2_metadata, gemma3_tokenizer, smollm2_tokenizer):
    gemma = gemma3_tokenizer
    assert gemma.encode("hi")[0] == gemma.bos_id
    assert gemma.encode("hi", add_special=False)[0] != gemma.bos_id
    assert gemma.encode("<bos>hi") == gemma.encode("hi")  # a template's own BOS is not doubled
    as_text = gemma.encode("<bos>hi", add_special=False, parse_special=False)
    assert gemma.bos_id not in as_text
    assert gemma.encode("<bos>hi", parse_special=False) == [gemma.bos_id, *as_text]
    assert smollm2_tokenizer.encode("hi") == smollm2_tokenizer.encode("hi", add_special=False)
    forced = Tokenizer.from_metadata({**smollm2_metadata, "tokenizer.ggml.add_bos_token": True,
                                      "tokenizer.ggml.add_eos_token": True})  # fmt: skip
    ids = forced.encode("hi")
    assert ids[0] == forced.bos_id and ids[-1] == forced.eos_id
    assert ids[1:-1] == smollm2_tokenizer.encode("hi")


def test_missing_or_unknown_tokenizer_is_one_line_error(smollm2_metadata):
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer.from_metadata({"general.architecture": "llama"})
    with pytest.raises(TokenizerError, match="pre-tokenizer.*'nonesuch'"):
        Tokenizer.from_metadata({**smollm2_metadata, "tokenizer.ggml.pre": "nonesuch"})
    with pytest.raises(TokenizerError, match="tokenizer model.*'wordpiece'"):
        Tokenizer.from_metadata({**smollm2_metadata, "tokenizer.ggml.model": "wordpiece"})


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_golden_prompts_and_continuations_round_trip(model, ours):
    """The prompts llama.cpp generated from tokenize as it did, and its output decodes as it did."""
    golden = json.loads((GOLDEN / f"{model}.json").read_text(encoding="utf-8"))
    tok = ours[model]
    for runs in golden["completions"].values():
        for run in runs:
            prompt = run["prompt_tokens"]
            if prompt[:2] == [tok.bos_id, tok.bos_id]:
                prompt = prompt[1:]
            assert tok.encode(run["prompt"]) == prompt
            text = tok.decode([t for t in run["greedy_tokens"] if not tok.is_eog(t)], skip_special=True)
            assert text == run["greedy_text"]


def test_encoding_lets_other_threads_run(smollm2_tokenizer):
    """The engine thread runs while a prompt is tokenized beside it: the crate works with the
    GIL released (plain encode held it: a 1 MB prompt froze every thread for 0.5 s)."""
    import threading
    import time

    text = "the quick brown fox jumps over the lazy dog. " * 60_000  # 2.7 MB
    gaps, done = [], threading.Event()

    def ticker():
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=ticker)
    thread.start()
    start = time.perf_counter()
    ids = smollm2_tokenizer.encode(text)
    elapsed = time.perf_counter() - start
    done.set()
    thread.join()
    assert len(ids) > 500_000 and ids[:10] == smollm2_tokenizer.encode(text[:450])[:10]
    assert max(gaps) < elapsed / 4, f"a {max(gaps):.3f} s pause in a {elapsed:.3f} s encode"
