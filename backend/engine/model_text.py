"""A model's text side, read without its weights: tokenizer, chat template, and prompts turned into
token ids off the engine thread, checked against the vocabulary and bounded by the context."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..gguf_model import open_gguf
from ..interface import GenerateRequest, InvalidRequest, ModelInfo
from ..text.chat_template import TemplateSource
from ..text.thinking import prompt_opens_thinking
from ..text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

THINK_OPEN = "<think>"
# Rope turns float32 positions into angles, and float32 holds every integer only up to 2^24:
# past that position neighbouring tokens would share an angle. The most this engine can address.
MAX_POSITIONS = 2**24
# Tokens kept beyond what a cut prompt needs: they absorb the word a cut splits differently.
_MARGIN = 64


def context_size(num_ctx: int, train_ctx: int, warn: bool = True) -> int:
    """num_ctx within the model's limits: as Ollama, a request past the training context gets the
    training context (with a warning); a GGUF claiming more than this engine can address
    (2^40 tokens) gets MAX_POSITIONS."""
    known = isinstance(train_ctx, int) and train_ctx > 0
    limit = min(train_ctx, MAX_POSITIONS) if known else MAX_POSITIONS
    if num_ctx > limit:
        if warn:
            log.warning("requested context size too large for model: num_ctx %d, n_ctx_train %s; using %d",
                        num_ctx, train_ctx, limit)  # fmt: skip
        return limit
    return max(8, num_ctx)


def truncated(tokens: list[int], limit: int, num_keep: int, allowed: bool) -> list[int]:
    """At most `limit` tokens by Ollama's rule: the first num_keep (BOS, the system prompt's
    start) and the tail. Without `allowed` (truncate: false) a longer input is an error."""
    if len(tokens) <= limit:
        return tokens
    if not allowed:
        raise InvalidRequest("the input length exceeds the context length")
    keep = min(max(0, num_keep), limit // 2)
    return tokens[:keep] + tokens[len(tokens) - (limit - keep) :]


@dataclass(frozen=True)
class ModelText:
    tokenizer: Tokenizer
    template: TemplateSource
    can_think: bool  # R1-style models: "<think>" is one special token of the vocabulary
    max_token_chars: int  # the most characters of text one token can stand for

    @classmethod
    def load(cls, info: ModelInfo) -> ModelText:
        metadata = open_gguf(info.paths[0]).metadata
        tokenizer = Tokenizer.from_metadata(metadata)
        template = TemplateSource.from_metadata(metadata, override=info.template or None)
        # Byte-level vocabularies spell one byte per character, SentencePiece ones one character
        # per character (byte tokens "<0x0A>" stand for less than their length): a token never
        # covers more text characters than its vocabulary entry has.
        longest = max((len(t) for t in tokenizer.tokens), default=1)
        return cls(tokenizer, template, THINK_OPEN in tokenizer.tokens, max(1, longest))

    def check_ids(self, ids: Sequence[int]) -> None:
        """Token ids from a client (/api/generate "context") must name tokens of this vocabulary:
        one past it failed the forward pass of every sequence batched with it."""
        n = self.tokenizer.vocab_size
        try:
            if not ids or (0 <= min(ids) and max(ids) < n):
                return
        except TypeError:
            pass
        bad = next(t for t in ids if not (isinstance(t, int) and 0 <= t < n))
        raise InvalidRequest(f"invalid token id {bad!r} in context: this model's vocabulary has ids 0 to {n - 1}")

    def prompt_text(self, request: GenerateRequest) -> str:
        """The prompt, with reasoning forced open when thinking was asked for: DeepSeek-R1 skips
        "<think>" on some prompts and then answers without reasoning (KTransformers' force_think);
        the parser starts in reasoning either way (TextOutput builds it opened)."""
        if request.think and self.can_think and not prompt_opens_thinking(request.prompt):
            return request.prompt + THINK_OPEN + "\n"
        return request.prompt

    def prompt_tokens(self, request: GenerateRequest, num_ctx: int) -> list[int]:
        """request.context, then the prompt's tokens, at most num_ctx - 1 of them (room for one
        generated token). A prompt too long for any num_ctx - 1 tokens to cover it is cut to its
        head and tail before tokenizing, so a 10 MB prompt costs what its kept part costs."""
        context = list(request.context)
        self.check_ids(context)
        text = self.prompt_text(request)
        limit = num_ctx - 1
        keep = min(max(0, request.sampling.num_keep), limit // 2)
        # A rendered template usually spells out the BOS token itself; encode() adds one only
        # when the model asks for it and the text does not already start with it.
        add_special = not context
        head_chars, tail_chars = self._chars(keep), self._chars(limit - keep)
        if len(text) > head_chars + tail_chars:
            if not request.truncate:  # it has more than limit tokens, whatever they are
                raise InvalidRequest("the input length exceeds the context length")
            head = self._encode(text[:head_chars], add_special) if keep > len(context) else []
            tail = self._encode(text[len(text) - tail_chars :], False)
            tokens = context + head[: max(0, keep - len(context))] + tail[len(tail) - (limit - keep) :]
        else:
            tokens = context + self._encode(text, add_special)
        if not tokens:
            raise InvalidRequest("prompt is empty after tokenization")
        return truncated(tokens, limit, request.sampling.num_keep, request.truncate)

    def input_tokens(self, text: str, num_ctx: int, truncate: bool) -> list[int]:
        """An embedding input's tokens: its first num_ctx (or an error without `truncate`)."""
        if len(text) > self._chars(num_ctx):
            if not truncate:
                raise InvalidRequest("the input length exceeds the context length")
            text = text[: self._chars(num_ctx)]
        tokens = self._encode(text, True)
        if len(tokens) > num_ctx:
            if not truncate:
                raise InvalidRequest("the input length exceeds the context length")
            tokens = tokens[:num_ctx]
        if not tokens:
            raise InvalidRequest("input is empty after tokenization")
        return tokens

    def _chars(self, num_tokens: int) -> int:
        """Characters that surely hold more than num_tokens tokens, plus the margin."""
        return (num_tokens + _MARGIN) * self.max_token_chars

    def _encode(self, text: str, add_special: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=True)
