"""Structured output: Ollama's `format` ("json" or a JSON schema) as a per-token mask from llguidance."""

from __future__ import annotations

import json
from typing import Any

import torch

from ..interface import InvalidRequest
from .tokenizer import CONTROL, USER_DEFINED, Tokenizer

# One space after separators and no free whitespace: small models given a grammar that allows
# any run of blanks tend to emit newlines forever (llama.cpp bounds its `ws` rule for this).
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class _VocabView:
    """What llguidance's TokenizerWrapper reads: every token's bytes (specials marked with a
    leading 0xff, so grammar text can never produce them), EOS, and a plain-text tokenizer."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        eog = sorted(tokenizer.eog_ids)
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else (eog[0] if eog else 0)
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = []
        self.tokens = []
        for i, kind in enumerate(tokenizer.token_types):
            raw = tokenizer.token_bytes(i)
            if kind == CONTROL or (kind == USER_DEFINED and raw.startswith(b"<") and raw.endswith(b">")):
                self.special_token_ids.append(i)
                raw = b"\xff" + raw
            self.tokens.append(raw)

    def __call__(self, text: bytes) -> list[int]:
        return self._tokenizer.encode(text.decode("utf-8", "replace"), add_special=False, parse_special=False)


class GrammarCompiler:
    """One per loaded model: the llguidance view of the vocabulary is built on first use (a
    second or so for a 150k vocabulary), then every request's matcher shares it."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._lltokenizer = None

    def compile(self, fmt: str | dict | None) -> "TokenMask | None":
        if fmt is None or fmt == "":
            return None
        import llguidance

        if fmt == "json":
            schema: dict[str, Any] = {"type": "object"}  # Ollama's "json": any JSON object
        elif isinstance(fmt, dict):
            schema = fmt
        else:
            raise InvalidRequest(f'invalid format: {json.dumps(fmt)}; expected "json" or a JSON schema object')
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_LAYOUT)
        except ValueError as e:
            raise InvalidRequest(f"invalid format schema: {e}") from None
        error = llguidance.LLMatcher.validate_grammar(grammar)
        if error:
            raise InvalidRequest(f"invalid format schema: {error}")
        if self._lltokenizer is None:
            wrapper = llguidance.TokenizerWrapper(_VocabView(self._tokenizer))
            self._lltokenizer = llguidance.LLTokenizer(wrapper, eos_token=sorted(self._tokenizer.eog_ids) or None)
        matcher = llguidance.LLMatcher(self._lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"invalid format schema: {matcher.get_error()}")
        return TokenMask(matcher)


class TokenMask:
    """Masks the logits of one sequence to the tokens its grammar allows next."""

    def __init__(self, matcher):
        self._matcher = matcher

    @property
    def finished(self) -> bool:
        """The grammar is complete and admits nothing more (the answer is a whole JSON value)."""
        return self._matcher.is_stopped()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:  # [V] fp32 -> [V], disallowed -inf
        bits = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.uint8)
        allowed = ((bits[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).flatten().bool()  # [>=V]
        V = logits.shape[0]
        if allowed.shape[0] < V:  # padded output rows past the vocabulary are never allowed
            allowed = torch.cat([allowed, allowed.new_zeros(V - allowed.shape[0])])
        return logits.masked_fill(~allowed[:V], float("-inf"))

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"structured output: token {token} rejected: {self._matcher.get_error()}")
