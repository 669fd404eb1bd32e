"""IncrementalDetokenizer: streamed pieces are whole UTF-8 characters and add up to decode()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.text.tokenizer import BYTE, IncrementalDetokenizer

CORPUS: list[str] = json.loads((Path(__file__).parent.parent / "data" / "golden" / "corpus.json").read_text(encoding="utf-8"))["texts"]


@pytest.fixture(params=["smollm2", "gemma3"])
def tok(request, smollm2_tokenizer, gemma3_tokenizer):
    return {"smollm2": smollm2_tokenizer, "gemma3": gemma3_tokenizer}[request.param]


def stream(tok, ids, **kw) -> list[str]:
    detok = IncrementalDetokenizer(tok, **kw)
    return [detok.push(i) for i in ids] + [detok.flush()]


def test_stream_equals_decode_and_never_splits_a_character(tok):
    held_back = 0
    for text in CORPUS:
        ids = tok.encode(text, add_special=True, parse_special=True)
        pieces = stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids, skip_special=True)
        assert all("\ufffd" not in p for p in pieces), text
        # Each piece must itself be what the bytes so far decode to, minus what came before.
        held_back += sum(1 for i, p in zip(ids, pieces) if p == "" and not tok.is_control(i))
    # Byte-level BPE (SmolLM2) and byte fallback (Gemma 3) both split characters in this corpus.
    assert held_back > 0


@pytest.mark.parametrize("char", ["🦙", "𠀀", "ꙮ", "𝔘"])
def test_byte_fallback_character_is_held_until_complete(gemma3_tokenizer, char):
    tok = gemma3_tokenizer
    ids = tok.encode(char, add_special=False)
    assert len(ids) > 1 and all(tok.token_types[i] == BYTE for i in ids)
    pieces = stream(tok, ids)
    assert pieces[:-2] == [""] * (len(ids) - 1)
    assert pieces[-2] == char and pieces[-1] == ""


def test_multi_token_emoji_in_byte_level_bpe(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = "ok 👨‍👩‍👧‍👦!"
    ids = tok.encode(text, add_special=False)
    pieces = stream(tok, ids)
    assert "".join(pieces) == text
    assert all(p.encode("utf-8").decode("utf-8") == p and "\ufffd" not in p for p in pieces)
    assert len([p for p in pieces if p]) < len(ids)  # some tokens carried only part of a character


def test_control_tokens_hidden_unless_asked(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok.encode("<|im_start|>assistant\nHi<|im_end|>")
    assert "".join(stream(tok, ids)) == "assistant\nHi"
    assert "".join(stream(tok, ids, skip_special=False)) == "<|im_start|>assistant\nHi<|im_end|>"


def test_truncated_sequence_is_flushed_as_replacement(gemma3_tokenizer):
    tok = gemma3_tokenizer
    ids = tok.encode("🦙", add_special=False)[:2]
    pieces = stream(tok, ids)
    assert pieces[:-1] == ["", ""] and pieces[-1] == "\ufffd"
