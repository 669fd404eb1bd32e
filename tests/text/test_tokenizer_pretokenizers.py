"""Every supported `tokenizer.ggml.pre` regex family against llama.cpp on the same (SmolLM2) vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.text.tokenizer import Tokenizer

GOLDEN = json.loads((Path(__file__).parent.parent / "data" / "golden" / "pretokenizers.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("pre", sorted(GOLDEN["tokens"]))
def test_pretokenizer_family_matches_llama_cpp(pre, smollm2_metadata):
    tok = Tokenizer.from_metadata({**smollm2_metadata, "tokenizer.ggml.pre": pre})
    for text, expected in zip(GOLDEN["corpus"], GOLDEN["tokens"][pre], strict=True):
        assert tok.encode(text, add_special=False, parse_special=True) == expected, text


def test_families_really_differ():
    """The goldens would not test the regexes if the families tokenized the corpus alike. Only
    digit grouping (\\p{N} vs \\p{N}{1,3}) can coincide: SmolLM2 has no multi-digit tokens, so
    llama-bpe, qwen2 and deepseek-v3 may agree; every other family must stand apart."""
    distinct = {json.dumps(v) for v in GOLDEN["tokens"].values()}
    assert len(distinct) >= len(GOLDEN["tokens"]) - 2


def test_llama3_family_ignores_merges_and_adds_bos(smollm2_metadata):
    meta = {k: v for k, v in smollm2_metadata.items() if k != "tokenizer.ggml.add_bos_token"}
    tok = Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "llama-bpe"})
    assert tok.add_bos and tok.encode("hi")[0] == tok.bos_id


def test_sentencepiece_space_prefix_matches_llama_cpp(gemma3_metadata):
    """add_space_prefix (llama-2-era SPM GGUFs): a space before the text and after each special."""
    golden = json.loads((Path(__file__).parent.parent / "data" / "golden" / "spm_space_prefix.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_metadata({**gemma3_metadata, **golden["overrides"]})
    assert tok.add_space_prefix
    tokens = golden["tokens"]
    for text, parsed, plain in zip(golden["corpus"], tokens["parse_special"], tokens["no_parse_special"], strict=True):
        if parsed[:2] == [tok.bos_id, tok.bos_id]:
            parsed = parsed[1:]  # text that spells out the BOS: we do not add a second (see encode)
        assert tok.encode(text, add_special=True, parse_special=True) == parsed, text
        assert tok.encode(text, add_special=False, parse_special=False) == plain, text
