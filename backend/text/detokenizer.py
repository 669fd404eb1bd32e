"""Token ids -> text for streaming: whole UTF-8 characters only, even when one spans several tokens."""

from __future__ import annotations

import codecs
from functools import lru_cache
from typing import Protocol


class _Vocab(Protocol):
    def token_bytes(self, token: int) -> bytes: ...

    def is_control(self, token: int) -> bool: ...


@lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte<->printable-char table, inverted: byte-level BPE tokens spell raw bytes with
    printable stand-ins (space is 'Ġ', newline 'Ċ') so the vocabulary file holds no control chars."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[str, int] = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class IncrementalDetokenizer:
    """push(id) returns the text that became complete with this token; a character whose bytes
    are split over byte-fallback tokens (emoji, CJK) is held back until its last byte arrives.
    Control tokens (e.g. <|im_end|>) are dropped unless skip_special is False."""

    def __init__(self, tokenizer: _Vocab, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        # The stdlib incremental decoder keeps an unfinished multi-byte sequence across calls and
        # turns bytes that can never form a character into U+FFFD instead of raising.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        if self.skip_special and self.tokenizer.is_control(token):
            return ""
        return self._decoder.decode(self.tokenizer.token_bytes(token))

    def flush(self) -> str:
        """Whatever is still held back, with an incomplete trailing sequence as U+FFFD."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
